"""Time bounds (issue 15): no episode, environment or backend call runs unbounded.

* rollouts: an episode's wall clock covers sampling and environment calls; an environment that never ends or
  that blocks (a synchronous ``time.sleep``) is stopped within ``episode_timeout_s`` + slack and counted a
  ``timeout`` failure, never a success; ``max_turns`` truncates (``turn_cap``); an RL run with such environments
  and ``on_failure="drop"`` finishes;
* RLConfig refuses settings that cannot learn or have no effect (``group_size=1``, ``max_staleness`` in sync
  mode) and values of the wrong type (a bool or a float for an int);
* TinkerBackend: a closed port, a server that hangs or refuses the key, a malformed key and a call that never
  answers each end in a typed error within the configured bound; the happy path runs against ``tinkerflow serve``.

The only wall-clock assertions are bounds of the form "finished within the configured limit + slack".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import http.server
import io
import json
import logging
import math
import pathlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fakes import RecordingSampler

from tinkerflow.errors import ConfigError, NonFiniteError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.types import Env, Metrics, StepResult, StopCondition, Trajectory
from tinkerflow.sampling import SampledSequence
from tinkerflow.shell.completers import BatchingTokenCompleter
from tinkerflow.shell.rollouts import ENV_INLINE_WAIT_S, RolloutPolicy, rollout_batch, rollout_group, run_episode

T = TypeVar("T")

#: Allowance above a configured limit for thread hand-offs, the unwind grace and a busy machine.
SLACK_S = 2.5
PROMPT = (256, 72, 105, 58)  # BOS "Hi:" for the tiny byte-level model


def run(coroutine: Coroutine[object, object, T], limit: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, limit)

    return asyncio.run(bounded())


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    value = fn()
    return value, time.monotonic() - started


# -- environments -------------------------------------------------------------------------------------------------


class Env1:
    """``turns`` turns (``None``: never done) of reward 1; ``block_s`` of synchronous sleep in each step."""

    def __init__(self, turns: int | None = 1, block_s: float = 0.0, block_first: float = 0.0) -> None:
        self.turns, self.block_s, self.block_first = turns, block_s, block_first
        self.steps = 0

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        if self.block_first:
            time.sleep(self.block_first)  # blocks whatever thread runs it: the point of the test
        return ModelInput.from_tokens(PROMPT), StopCondition(max_tokens=4)

    async def step(self, action: SampledSequence) -> StepResult:
        if self.block_s:
            time.sleep(self.block_s)
        self.steps += 1
        done = self.turns is not None and self.steps >= self.turns
        # the observation stays the same every turn: a never-ending episode never outgrows a context window
        return StepResult(reward=1.0, done=done, next_observation=ModelInput.from_tokens(PROMPT))


@attrs.define
class Builder:
    factories: list[Callable[[], Env]]

    async def make_envs(self) -> Sequence[Env]:
        return [factory() for factory in self.factories]

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        return [(0.0, {}) for _ in trajectories]

    def tags(self) -> tuple[str, ...]:
        return ("bounds",)


async def instant(observation: ModelInput, stop: StopCondition) -> SampledSequence:
    return SampledSequence(tokens_T=np.array([65, 66]), stop_reason="stop", logprobs_T=np.array([-0.1, -0.2]))


# -- rollouts -----------------------------------------------------------------------------------------------------


@pytest.mark.hostile("environments")
@pytest.mark.parametrize("env_threads", [True, False])
def test_an_episode_that_never_ends_times_out(env_threads: bool) -> None:
    policy = RolloutPolicy(episode_timeout_s=0.4, on_failure="drop", env_threads=env_threads)
    group, took = timed(lambda: run(rollout_group(Builder([lambda: Env1(turns=None)]), instant, policy, "g")))
    assert took < 0.4 + SLACK_S
    assert group.trajectories == ()
    assert [(f.index, f.kind, f.message) for f in group.failures] == [(0, "timeout", "the episode ran past its 0.4 s")]


@pytest.mark.hostile("environments")
@pytest.mark.parametrize("where", ["step", "initial_observation"])
def test_a_blocking_environment_is_stopped_within_the_timeout(where: str) -> None:
    def blocking() -> Env:
        return Env1(block_s=10.0) if where == "step" else Env1(block_first=10.0)

    builder = Builder([blocking, lambda: Env1(turns=2), lambda: Env1()])
    policy = RolloutPolicy(episode_timeout_s=1.0, on_failure="drop")
    group, took = timed(lambda: run(rollout_group(builder, instant, policy, "g")))
    assert took < 1.0 + SLACK_S  # not the 10 s the environment sleeps: its thread was abandoned
    assert group.member_indices == (1, 2)  # the healthy members of the group are kept
    assert [(f.index, f.kind) for f in group.failures] == [(0, "timeout")]


@pytest.mark.hostile("environments")
def test_a_blocking_environment_on_the_rollout_loop_is_never_a_success() -> None:
    # without worker threads the call cannot be interrupted, but returning past the deadline is a timeout
    builder = Builder([lambda: Env1(block_s=0.6), lambda: Env1()])
    policy = RolloutPolicy(episode_timeout_s=0.3, on_failure="drop", env_threads=False)
    group = run(rollout_group(builder, instant, policy, "g"))
    assert group.member_indices == (1,)
    assert [(f.index, f.kind) for f in group.failures] == [(0, "timeout")]


@pytest.mark.parametrize("groups", [1, 3])
def test_environment_threads_keep_a_groups_first_turn_in_one_request(groups: int) -> None:
    # calls that finish within ENV_INLINE_WAIT_S resume their episodes as on the loop: the members of a group
    # reach the batching completer together, so each group's first turn is one request (reproducible seeds)
    sampler = RecordingSampler(tokens=[65, 66])
    completer = BatchingTokenCompleter(sampler, seed=7)
    builders = [Builder([Env1] * 5) for _ in range(groups)]
    policy = RolloutPolicy(episode_timeout_s=30.0)
    results = run(rollout_batch(builders, completer, policy, "s"))
    assert [len(group.trajectories) for group in results] == [5] * groups
    assert [n for _, n, _ in sampler.requests] == [5 * groups]  # same prompt everywhere: merged into one
    assert ENV_INLINE_WAIT_S >= 0.1


MEMBER: contextvars.ContextVar[int] = contextvars.ContextVar("member")


class ContextEnv(Env1):
    """Passes its member number to the completer through a context variable, set in its first call."""

    def __init__(self, member: int) -> None:
        super().__init__()
        self.member = member

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        MEMBER.set(self.member)
        return await super().initial_observation()


@pytest.mark.parametrize("env_threads", [True, False])
def test_context_variables_an_environment_sets_reach_its_episode(env_threads: bool) -> None:
    seen: list[int] = []

    async def reading(observation: ModelInput, stop: StopCondition) -> SampledSequence:
        seen.append(MEMBER.get(-1))
        return await instant(observation, stop)

    builder = Builder([lambda k=k: ContextEnv(k) for k in range(4)])  # type: ignore[misc]
    run(rollout_group(builder, reading, RolloutPolicy(env_threads=env_threads), "g"))
    assert sorted(seen) == [0, 1, 2, 3]


@pytest.mark.hostile("environments")
def test_a_run_with_on_failure_drop_goes_on_past_a_blocking_member() -> None:
    # the next groups of the batch are rolled out normally: the abandoned thread holds no slot
    builders = [Builder([lambda: Env1(block_s=10.0), Env1]), Builder([Env1, Env1])]
    policy = RolloutPolicy(max_concurrency=2, episode_timeout_s=0.8, on_failure="drop")

    async def both() -> list[int]:
        groups = [await rollout_group(builder, instant, policy, f"g{k}") for k, builder in enumerate(builders)]
        return [len(group.trajectories) for group in groups]

    counts, took = timed(lambda: run(both()))
    assert counts == [1, 2]
    assert took < 0.8 + SLACK_S


@settings(max_examples=30, deadline=None)
@given(turns=st.one_of(st.none(), st.integers(1, 6)), cap=st.one_of(st.none(), st.integers(1, 6)))
def test_max_turns_truncates_and_marks_the_last_transition(turns: int | None, cap: int | None) -> None:
    if turns is None and cap is None:
        return  # never ends, no cap: the timeout's business (above)
    trajectory = run(run_episode(Env1(turns=turns), instant, max_turns=cap, env_threads=False))
    ended_by_env = turns if turns is not None else math.inf
    expected_turns = int(min(ended_by_env, cap if cap is not None else math.inf))
    assert len(trajectory.transitions) == expected_turns
    last = trajectory.transitions[-1].metrics
    if cap is None:
        assert "turn_cap" not in last
    else:
        assert last["turn_cap"] == (1.0 if ended_by_env > cap else 0.0)
        assert all("turn_cap" not in t.metrics for t in trajectory.transitions[:-1])


def test_max_turns_in_a_group_keeps_the_truncated_episode() -> None:
    policy = RolloutPolicy(max_turns=3, episode_timeout_s=5.0, on_failure="drop")
    group = run(rollout_group(Builder([lambda: Env1(turns=None), lambda: Env1(turns=2)]), instant, policy, "g"))
    assert group.member_indices == (0, 1)
    assert [len(t.transitions) for t in group.trajectories] == [3, 2]
    assert [t.transitions[-1].metrics["turn_cap"] for t in group.trajectories] == [1.0, 0.0]
    assert group.failures == ()


BAD_POLICIES: list[tuple[dict[str, object], str]] = [
    ({"max_turns": 0}, "max_turns"),
    ({"max_turns": -3}, "max_turns"),
    ({"max_turns": True}, "max_turns"),
    ({"max_turns": 2.5}, "max_turns"),
    ({"max_turns": "3"}, "max_turns"),
    ({"env_threads": 1}, "env_threads"),
    ({"env_threads": "yes"}, "env_threads"),
    ({"episode_timeout_s": True}, "episode_timeout_s"),
    ({"episode_timeout_s": -1.0}, "episode_timeout_s"),
    ({"episode_timeout_s": math.nan}, "episode_timeout_s"),
    ({"sample_timeout_s": 0}, "sample_timeout_s"),
    ({"max_concurrency": 1.0}, "max_concurrency"),
    ({"max_retries": False}, "max_retries"),
]


@pytest.mark.hostile("configs")
@pytest.mark.parametrize(("changes", "field"), BAD_POLICIES, ids=[f"{f}={c[f]!r}" for c, f in BAD_POLICIES])
def test_rollout_policy_refuses_bad_bounds(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RolloutPolicy(**changes)  # type: ignore[arg-type]  # deliberately wrong values
    assert (caught.value.where, caught.value.field) == ("RolloutPolicy", field)


# -- an RL run on the local backend -------------------------------------------------------------------------------


@attrs.frozen
class BoundsDataset:
    """One group per batch: member behaviours ``ok`` (one turn), ``block`` (sleeps 10 s), ``forever``."""

    behaviours: tuple[str, ...]

    def __len__(self) -> int:
        return 100

    def get_batch(self, index: int) -> Sequence[Builder]:
        made = {"ok": Env1, "block": lambda: Env1(block_s=10.0), "forever": lambda: Env1(turns=None)}
        return [Builder([made[name] for name in self.behaviours])]


def _rl_run(tmp_path: pathlib.Path, name: str, **changes: object) -> list[dict[str, object]]:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from tinkerflow.shell.backends.local.backend import LocalBackend
    from tinkerflow.shell.io.run_dir import MetricsLog
    from tinkerflow.shell.recipes.rl import run_rl

    fields: dict[str, object] = {
        "env": "bounds",
        "base_model": "tiny-llama",
        "run_dir": str(tmp_path / name),
        "steps": 2,
        "groups_per_batch": 1,
        "group_size": 4,
        "learning_rate": 1e-2,
        "lora_rank": 4,
        "max_tokens": 4,
        "eval_every": 0,
        "eval_groups": 0,
        "save_every": 0,
        "on_failure": "drop",
        "seed": 5,
    }
    fields.update(changes)
    config = RLConfig(**fields)  # type: ignore[arg-type]  # RLConfig's own fields, checked by its validators
    dataset = BoundsDataset(("ok", "block", "forever", "ok"))
    backend = LocalBackend(checkpoint_dir=tmp_path / name / "checkpoints", device="cpu")
    result = run_rl(config, backend, dataset, decode=str, out=io.StringIO(), sinks=())  # type: ignore[arg-type]
    assert result.steps == 2
    return MetricsLog.read(tmp_path / name / "metrics.jsonl")


@pytest.mark.hostile("environments")
def test_an_rl_run_with_a_blocking_and_a_never_ending_environment_finishes(tmp_path: pathlib.Path) -> None:
    rows = _rl_run(tmp_path, "bounded", episode_timeout_s=1.0)
    assert len(rows) == 2
    for row in rows:
        assert row["failures/timeout"] == 2.0  # the blocking and the never-ending member, every step
        assert row["datums"] == 2
        assert float(row["sampling_s"]) < 1.0 + SLACK_S  # type: ignore[arg-type]


@pytest.mark.hostile("environments")
def test_an_rl_run_with_max_turns_truncates_the_never_ending_environment(tmp_path: pathlib.Path) -> None:
    rows = _rl_run(tmp_path, "capped", episode_timeout_s=1.0, max_turns=3)
    for row in rows:
        assert row["failures/timeout"] == 1.0  # only the blocking member now
        assert row["step/turn_cap"] == pytest.approx(1 / 3)  # 1 of the 3 finished episodes was capped
        assert row["datums"] == 5  # 1 + 3 + 1: the capped episode's turns do not extend each other


# -- RLConfig ------------------------------------------------------------------------------------------------------

INT_FIELDS = (
    "group_size", "groups_per_batch", "steps", "max_tokens", "substeps", "concurrency", "max_retries", "eval_groups",
    "lora_rank", "seed", "eval_every", "save_every",
)  # fmt: skip

BAD_CONFIGS: list[tuple[dict[str, object], type[Exception], str]] = [
    ({"group_size": 1}, ConfigError, "group_size"),
    ({"group_size": 1, "constant_groups": "keep"}, ConfigError, "group_size"),
    ({"group_size": 1, "constant_groups": "drop"}, ConfigError, "group_size"),
    ({"mode": "sync", "max_staleness": 2}, ConfigError, "max_staleness"),
    ({"mode": "sync", "max_staleness": 0}, ConfigError, "max_staleness"),
    ({"mode": "async", "max_staleness": 0}, ConfigError, "max_staleness"),
    ({"max_staleness": True}, ValidationError, "max_staleness"),
    ({"mode": "async", "max_staleness": 2.0}, ValidationError, "max_staleness"),
    ({"max_turns": 0}, ConfigError, "max_turns"),
    ({"max_turns": True}, ConfigError, "max_turns"),
    ({"max_turns": 4.0}, ConfigError, "max_turns"),
    ({"episode_timeout_s": True}, ValidationError, "episode_timeout_s"),
    ({"episode_timeout_s": -5.0}, ConfigError, "episode_timeout_s"),
    ({"episode_timeout_s": math.inf}, NonFiniteError, "episode_timeout_s"),
    ({"temperature": True}, ValidationError, "temperature"),
    ({"learning_rate": False}, ValidationError, "learning_rate"),
    ({"kl_discount": True}, ValidationError, "kl_discount"),
    ({"normalize_advantages": 0}, ValidationError, "normalize_advantages"),
    *[({field: True}, ConfigError, field) for field in INT_FIELDS],
    *[({field: 2.5}, ConfigError, field) for field in INT_FIELDS],
    *[({field: 3.0}, ConfigError, field) for field in INT_FIELDS],  # integral, but a float: no coercion either
]


@pytest.mark.hostile("configs")
@pytest.mark.parametrize(
    ("changes", "error", "field"), BAD_CONFIGS, ids=[f"{f}:{list(c.values())}" for c, _, f in BAD_CONFIGS]
)
def test_rl_config_refuses_settings_that_cannot_work(changes: dict[str, object], error: type, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RLConfig(**changes)  # type: ignore[arg-type]  # deliberately wrong values
    assert type(caught.value) is error
    assert (caught.value.where, caught.value.field) == ("RLConfig", field)


@pytest.mark.hostile("configs")
def test_rl_config_group_size_and_staleness_messages_say_why() -> None:
    with pytest.raises(ConfigError, match="nothing is learned"):
        RLConfig(group_size=1)
    with pytest.raises(ConfigError, match="no effect in sync mode"):
        RLConfig(mode="sync", max_staleness=3)
    assert RLConfig(mode="sync").staleness == 0  # the default (1) is accepted in sync mode: it is not a choice
    assert RLConfig(mode="async", max_staleness=3).staleness == 3
    assert RLConfig(max_turns=5).max_turns == 5


@pytest.mark.hostile("configs")
@given(field=st.sampled_from(INT_FIELDS), value=st.one_of(st.booleans(), st.floats(allow_nan=True)))
def test_rl_config_never_coerces_an_int_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        RLConfig(**{field: value})  # type: ignore[arg-type]  # deliberately wrong values
    assert caught.value.field == field


# -- TinkerBackend -------------------------------------------------------------------------------------------------

tinker = pytest.importorskip("tinker")

from tinkerflow.shell.backends.tinker import (  # noqa: E402
    CONNECT_TIMEOUT_ENV,
    TinkerBackend,
    TinkerServiceError,
    TinkerTimeoutError,
)


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    for name in ("TINKER_API_KEY", "TINKER_BASE_URL", "TINKERFLOW_CONNECT_TIMEOUT_S", "TINKERFLOW_CALL_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the probe is closed


class Stub:
    """A tiny HTTP server on 127.0.0.1: ``healthz`` and ``other`` say how each kind of request is answered
    (``"ok"``, ``"401"``, ``"hang"``: held until the server stops, at most 20 s). Counts the requests."""

    def __init__(self, healthz: str, other: str) -> None:
        self.healthz, self.other = healthz, other
        self.requests: list[str] = []
        self.release = threading.Event()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                stub.requests.append(self.path)
                how = stub.healthz if self.path.endswith("/healthz") else stub.other
                if how == "hang":
                    stub.release.wait(20)
                code, body = (401, {"detail": "wrong API key"}) if how == "401" else (200, {"status": "ok"})
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (it timed out): expected
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory() -> Iterator[Callable[[str, str], Stub]]:
    stubs: list[Stub] = []

    def make(healthz: str, other: str) -> Stub:
        stubs.append(Stub(healthz, other))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.stop()


@pytest.mark.hostile("backends")
def test_an_unreachable_service_fails_within_the_connect_timeout(caplog: pytest.LogCaptureFixture) -> None:
    import tinker.lib.base_url  # noqa: F401  # imported before the clock starts: the bound is on waiting

    url = closed_port_url()
    backend = TinkerBackend(base_url=url, api_key="tml-test", connect_timeout_s=1.5)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError) as caught:
        backend.create_lora_training_client("tiny-llama")
    assert time.monotonic() - started < 1.5 + SLACK_S
    error = caught.value
    assert (error.where, error.field) == ("TinkerBackend", "base_url")
    assert url in error.problem
    assert "within 1.5 s" in error.problem
    assert "tinkerflow serve" in error.fix
    assert any(f"waiting for the Tinker service at {url}" in record.getMessage() for record in caplog.records)


@pytest.mark.hostile("backends")
def test_the_connect_bound_holds(stub_factory: Callable[[str, str], Stub]) -> None:
    import tinker.lib.base_url  # noqa: F401

    for url in (closed_port_url(), stub_factory("hang", "hang").url):
        backend = TinkerBackend(base_url=url, api_key="tml-test", connect_timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(ConfigError) as caught:
            backend.create_sampling_client(base_model="tiny-llama")
        assert time.monotonic() - started < 1.0 + SLACK_S
        assert caught.value.field == "base_url"


@pytest.mark.hostile("backends")
@pytest.mark.parametrize("url", ["localhost:8000", "127.0.0.1", "ftp://127.0.0.1:1", "http://", "http://[::1"])
def test_a_url_no_retry_can_reach_fails_at_once(url: str) -> None:
    backend = TinkerBackend(base_url=url, api_key="tml-test", connect_timeout_s=30.0)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        backend.create_lora_training_client("m")
    assert time.monotonic() - started < SLACK_S  # not the 30 s of retries
    assert (caught.value.where, caught.value.field) == ("TinkerBackend", "base_url")
    assert "http://host:port" in caught.value.fix


@pytest.mark.hostile("backends")
def test_a_refused_key_fails_at_once(stub_factory: Callable[[str, str], Stub]) -> None:
    stub = stub_factory("401", "401")
    backend = TinkerBackend(base_url=stub.url, api_key="tml-wrong", connect_timeout_s=10.0)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        backend.create_lora_training_client("m")
    assert time.monotonic() - started < SLACK_S  # no retrying a refusal for the whole connect timeout
    assert (caught.value.where, caught.value.field) == ("TinkerBackend", "api_key")
    assert stub.requests == ["/api/v1/healthz"]


@pytest.mark.hostile("backends")
def test_a_key_refused_by_the_sdk_calls_is_a_config_error(stub_factory: Callable[[str, str], Stub]) -> None:
    stub = stub_factory("ok", "401")  # the health check passes, every SDK request is refused
    backend = TinkerBackend(base_url=stub.url, api_key="tml-wrong", connect_timeout_s=5.0, call_timeout_s=20.0)
    with pytest.raises(ConfigError) as caught:
        backend.create_lora_training_client("m").result(timeout=30)
    assert (caught.value.where, caught.value.field) == ("TinkerBackend", "api_key")
    assert stub.url in caught.value.problem
    backend.close("errored")


@pytest.mark.hostile("backends")
def test_a_call_that_never_answers_times_out_and_says_what_it_waits_for(
    stub_factory: Callable[[str, str], Stub], caplog: pytest.LogCaptureFixture
) -> None:
    stub = stub_factory("ok", "hang")
    backend = TinkerBackend(
        base_url=stub.url, api_key="tml-test", connect_timeout_s=1.0, call_timeout_s=1.0, progress_every_s=0.3
    )
    with caplog.at_level(logging.WARNING):
        future = backend.create_lora_training_client("tiny-llama")
        started = time.monotonic()
        with pytest.raises(TinkerTimeoutError) as caught:
            future.result(timeout=30)
        assert time.monotonic() - started < 1.0 + SLACK_S
    assert caught.value.what == "create_lora_training_client('tiny-llama')"
    assert stub.url in str(caught.value)
    assert any("still waiting for create_lora_training_client" in r.getMessage() for r in caplog.records)
    _, took = timed(lambda: backend.close("errored"))
    assert took < 1.0 + SLACK_S  # closing does not wait for the hung session either


MALFORMED_KEYS: list[object] = [
    "garbage", "tml-", "eyJ", "TML-abc", " tml-abc", "tml-abc\n", "tml-a b", "tml-\x00x", "tml-é", "", 12345,
]  # fmt: skip
#: The same keys as TINKER_API_KEY, where a value is a string without NUL and an empty one means unset.
MALFORMED_ENV_KEYS = [key for key in MALFORMED_KEYS if isinstance(key, str) and key and "\x00" not in key]
KEY_CASES = [("api_key", key) for key in MALFORMED_KEYS] + [("TINKER_API_KEY", key) for key in MALFORMED_ENV_KEYS]


@pytest.fixture(scope="module")
def healthy_stub() -> Iterator[Stub]:
    stub = Stub("ok", "ok")
    yield stub
    stub.stop()


@pytest.mark.hostile("backends")
@pytest.mark.parametrize(("field", "key"), KEY_CASES, ids=[f"{f}={k!r}" for f, k in KEY_CASES])
def test_a_malformed_key_is_a_config_error_before_any_request(
    field: str, key: object, healthy_stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    healthy_stub.requests.clear()
    if field == "TINKER_API_KEY":
        monkeypatch.setenv("TINKER_API_KEY", str(key))
        backend = TinkerBackend(base_url=healthy_stub.url)
    else:
        backend = TinkerBackend(base_url=healthy_stub.url, api_key=key)  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(ConfigError) as caught:
        backend.create_lora_training_client("m")
    assert (caught.value.where, caught.value.field) == ("TinkerBackend", field)
    if isinstance(key, str) and len(key) > 4:
        assert key not in str(caught.value)  # a key is never shown
    assert healthy_stub.requests == []  # refused before anything is sent


@pytest.mark.hostile("backends")
def test_no_key_at_all_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tinkerflow.shell.backends import tinker_bounds as module

    monkeypatch.setattr(module, "_stored_key", lambda: False)
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)
    with pytest.raises(ConfigError, match="no Tinker API key") as caught:
        TinkerBackend(base_url=closed_port_url()).create_lora_training_client("m")
    assert caught.value.field == "api_key"


BAD_TIMEOUTS: list[tuple[str, object]] = [
    ("connect_timeout_s", 0), ("connect_timeout_s", -1.0), ("connect_timeout_s", math.nan),
    ("connect_timeout_s", math.inf), ("connect_timeout_s", True), ("connect_timeout_s", "30"),
    ("call_timeout_s", 0.0), ("call_timeout_s", False), ("call_timeout_s", [1]), ("progress_every_s", 0),
]  # fmt: skip


@pytest.mark.hostile("backends")
@pytest.mark.parametrize(("field", "value"), BAD_TIMEOUTS, ids=[f"{f}={v!r}" for f, v in BAD_TIMEOUTS])
def test_bad_timeouts_are_config_errors(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        TinkerBackend(**{field: value})  # type: ignore[arg-type]  # deliberately wrong values
    assert (caught.value.where, caught.value.field) == ("TinkerBackend", field)


@pytest.mark.hostile("backends")
@pytest.mark.parametrize("text", ["abc", "0", "-2", "nan", "inf"])
def test_bad_timeout_environment_variables_are_config_errors(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, text)
    with pytest.raises(ConfigError) as caught:
        TinkerBackend()
    assert caught.value.field == CONNECT_TIMEOUT_ENV
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "7.5")
    assert TinkerBackend().connect_timeout_s == 7.5
    assert TinkerBackend(connect_timeout_s=2).connect_timeout_s == 2.0  # an argument wins


# fakes of the SDK's objects: futures that never finish, or fail with the SDK's own errors


class Pending:
    """An SDK future that finishes only when told to (``finish``)."""

    def __init__(self) -> None:
        self._future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def future(self) -> concurrent.futures.Future[Any]:
        return self._future

    def result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout)


class FakeTraining:
    def __init__(self) -> None:
        self.pending: list[Pending] = []

    def optim_step(self, params: object) -> Pending:
        self.pending.append(Pending())
        return self.pending[-1]


class FakeService:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    def create_lora_training_client(self, **kwargs: object) -> Pending:
        done = Pending()
        if isinstance(self.answer, BaseException):
            done.future().set_exception(self.answer)
        else:
            done.future().set_result(self.answer)
        return done


@pytest.mark.hostile("backends")
def test_every_client_call_is_bounded_and_a_late_answer_is_dropped() -> None:
    from tinkerflow.training import AdamParams

    training = FakeTraining()
    backend = TinkerBackend(FakeService(training), call_timeout_s=0.5, progress_every_s=10.0)
    client = backend.create_lora_training_client("m").result(timeout=10)
    future = client.optim_step(AdamParams(learning_rate=1e-3))
    started = time.monotonic()
    with pytest.raises(TinkerTimeoutError) as caught:
        future.result(timeout=30)
    assert time.monotonic() - started < 0.5 + SLACK_S
    assert caught.value.what == "optim_step"
    training.pending[0].future().set_result(None)  # the answer comes late: nobody sees it, nothing raises
    assert isinstance(future.future().exception(), TinkerTimeoutError)


def _request() -> Any:
    import httpx

    return httpx.Request("POST", "http://127.0.0.1:1/api/v1/create_model")


@pytest.mark.hostile("backends")
@pytest.mark.parametrize(
    ("sdk_error", "typed", "field"),
    [
        (lambda: tinker.APIConnectionError(request=_request()), TinkerServiceError, None),
        (
            lambda: tinker.AuthenticationError(
                "no", response=__import__("httpx").Response(401, request=_request()), body=None
            ),
            ConfigError,
            "api_key",
        ),
        (lambda: RuntimeError("quota exceeded"), RuntimeError, None),  # anything else reaches the caller as it is
    ],
    ids=["connection", "authentication", "other"],
)
def test_sdk_errors_after_its_retries_are_typed(
    sdk_error: Callable[[], BaseException], typed: type, field: str | None
) -> None:
    backend = TinkerBackend(FakeService(sdk_error()), call_timeout_s=10.0)
    with pytest.raises(typed) as caught:
        backend.create_lora_training_client("m").result(timeout=10)
    if field is not None:
        assert caught.value.field == field  # type: ignore[attr-defined]


def test_the_happy_path_against_tinkerflow_serve(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("torch")
    from tinkerflow import ModelInput, SamplingParams
    from tinkerflow.shell.serve.server import DEFAULT_KEY, ServerConfig, ServerThread

    server = ServerThread(ServerConfig(store=tmp_path / "store", device="cpu"))
    backend = TinkerBackend(base_url=server.base_url, api_key=DEFAULT_KEY, connect_timeout_s=5, call_timeout_s=120)
    with server, caplog.at_level(logging.WARNING), backend:
        sampler = backend.create_sampling_client(base_model="tiny-llama").result(timeout=120)
        response = sampler.sample(ModelInput.from_tokens([1, 2, 3]), 2, SamplingParams(max_tokens=3, seed=1))
        assert [len(s.tokens_T) for s in response.result(timeout=120).sequences] == [3, 3]
        client = backend.create_lora_training_client("tiny-llama", rank=4).result(timeout=120)
        assert client.get_info().lora_rank == 4
    assert not [r for r in caplog.records if r.name.startswith("tinkerflow.shell.backends.tinker")]


@pytest.mark.hostile("cli")
def test_the_cli_fails_within_the_bound_against_an_unreachable_service(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tinker.lib.base_url  # noqa: F401

    from tinkerflow.cli import main

    config = tmp_path / "rl.json"
    config.write_text(
        json.dumps({"env": "arithmetic", "backend": "tinker", "steps": 1, "run_dir": str(tmp_path / "r")})
    )
    url = closed_port_url()
    monkeypatch.setenv("TINKER_BASE_URL", url)
    monkeypatch.setenv("TINKER_API_KEY", "tml-test")
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "1.5")
    assert main(["rl", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"error: TinkerBackend.base_url: no Tinker service answers at {url} within 1.5 s" in err
    assert "Traceback" not in err
    monkeypatch.setenv("TINKER_API_KEY", "tml-has a space")
    assert main(["rl", str(config)]) == 2
    err = capsys.readouterr().err
    assert "error: TinkerBackend.TINKER_API_KEY: holds whitespace" in err
