"""Rollouts (failure policies, concurrency, timeouts) and completers (token, batching, message)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TypeVar

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.fakes import RecordingSampler, StubSampler

from tinkerflow.errors import ConfigError, NonFiniteError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.render import get_renderer
from tinkerflow.rl.envs import arithmetic, stop_condition_for
from tinkerflow.rl.types import Env, Metrics, StepResult, StopCondition, Trajectory
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.backends.protocol import APIFuture
from tinkerflow.shell.completers import (
    BatchingTokenCompleter,
    SamplerTokenCompleter,
    TokenCompleter,
)
from tinkerflow.shell.io.tokenizers import offline_tokenizer
from tinkerflow.shell.rollouts import RolloutError, RolloutPolicy, rollout_batch, rollout_group, run_episode

T = TypeVar("T")


def run(coroutine: Coroutine[object, object, T], limit: float = 30.0) -> T:
    """Run with a hard limit, so a deadlock fails the test instead of hanging the suite."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, limit)

    return asyncio.run(bounded())


def action(n: int = 2) -> SampledSequence:
    return SampledSequence(tokens_T=np.arange(10, 10 + n), stop_reason="stop", logprobs_T=np.full(n, -0.5))


class Tracker:
    """Counts episodes in flight (between the first completer call and the env's final step); thread-safe, as
    environment calls run on worker threads."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._cancelled = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1

    def cancel(self) -> None:
        with self._lock:
            self._cancelled += 1

    @property
    def cancelled(self) -> int:
        with self._lock:
            return self._cancelled


class ScriptedEnv:
    """``turns`` steps of reward ``reward``; observations grow by the action and one token per turn."""

    def __init__(self, reward: float = 1.0, turns: int = 1, delay: float = 0.0, tracker: Tracker | None = None) -> None:
        self.reward, self.turns, self.delay, self.tracker = reward, turns, delay, tracker
        self.observation = ModelInput.from_tokens([1, 2, 3])
        self.steps = 0

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        if self.tracker:
            self.tracker.enter()
        return self.observation, StopCondition(stop_tokens=(7,), max_tokens=4)

    async def step(self, sampled: SampledSequence) -> StepResult:
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            if self.tracker:
                self.tracker.cancel()
            raise
        self.steps += 1
        done = self.steps >= self.turns
        if done and self.tracker:
            self.tracker.leave()
        self.observation = self.observation.append_tokens([*sampled.tokens_T.tolist(), 5])
        return StepResult(
            reward=self.reward,
            done=done,
            next_observation=ModelInput.empty() if done else self.observation,
            next_stop=StopCondition(stop_tokens=(7,), max_tokens=3),
            metrics={"turn": float(self.steps)},
        )


class RaisingEnv(ScriptedEnv):
    async def step(self, sampled: SampledSequence) -> StepResult:
        raise RuntimeError("env exploded")


class HangingEnv(ScriptedEnv):
    async def step(self, sampled: SampledSequence) -> StepResult:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if self.tracker:
                self.tracker.cancel()
            raise
        raise AssertionError("unreachable")


class NaNEnv(ScriptedEnv):
    async def step(self, sampled: SampledSequence) -> StepResult:
        return StepResult(reward=math.nan, done=True)  # raises NonFiniteError, in the env's code


class OwnTimeoutEnv(ScriptedEnv):
    async def step(self, sampled: SampledSequence) -> StepResult:
        raise TimeoutError("the env's own HTTP call timed out")


@attrs.define
class Builder:
    """Member ``i`` is made by ``factories[i]``; group rewards from ``group_rewards`` (zeros by default)."""

    factories: list[Callable[[], Env]]
    group_rewards: Callable[[Sequence[Trajectory]], Sequence[tuple[float, Metrics]]] | None = None
    make_calls: int = 0
    fail_make: bool = False
    fail_make_after: int | None = None
    seen_by_group_rewards: list[int] = attrs.field(factory=list)

    async def make_envs(self) -> Sequence[Env]:
        self.make_calls += 1
        if self.fail_make or (self.fail_make_after is not None and self.make_calls > self.fail_make_after):
            raise OSError("sandbox unavailable")
        return [factory() for factory in self.factories]

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        self.seen_by_group_rewards.append(len(trajectories))
        if self.group_rewards is None:
            return [(0.0, {}) for _ in trajectories]
        return self.group_rewards(trajectories)

    def tags(self) -> tuple[str, ...]:
        return ("fake",)


def completer_for(tracker: Tracker | None = None, delay: float = 0.0) -> TokenCompleter:
    async def complete(observation: ModelInput, stop: StopCondition) -> SampledSequence:
        if delay:
            await asyncio.sleep(delay)
        return action()

    return complete


# -- run_episode --------------------------------------------------------------------------------------------------


def test_run_episode_records_every_turn() -> None:
    env = ScriptedEnv(reward=0.5, turns=3)
    seen: list[tuple[list[int], StopCondition]] = []

    async def complete(observation: ModelInput, stop: StopCondition) -> SampledSequence:
        seen.append((observation.to_tokens().tolist(), stop))
        return action()

    trajectory = run(run_episode(env, complete))
    assert [t.reward for t in trajectory.transitions] == [0.5, 0.5, 0.5]
    assert [t.done for t in trajectory.transitions] == [False, False, True]
    assert seen[0] == ([1, 2, 3], StopCondition(stop_tokens=(7,), max_tokens=4))
    assert seen[1] == ([1, 2, 3, 10, 11, 5], StopCondition(stop_tokens=(7,), max_tokens=3))
    assert [t.observation.to_tokens().tolist() for t in trajectory.transitions] == [s[0] for s in seen]
    assert all(t.metrics["parse_error"] == 0.0 for t in trajectory.transitions)
    assert trajectory.transitions[1].metrics["turn"] == 2.0
    np.testing.assert_array_equal(trajectory.transitions[0].action_logprobs_T, [-0.5, -0.5])
    assert trajectory.final_observation.length == 0


# -- failure policies ---------------------------------------------------------------------------------------------


def mixed_builder(tracker: Tracker | None = None) -> Builder:
    """Members: 0 ok, 1 raises, 2 hangs, 3 returns NaN, 4 ok."""
    return Builder(
        [
            lambda: ScriptedEnv(reward=1.0, tracker=tracker),
            lambda: RaisingEnv(),
            lambda: HangingEnv(tracker=tracker),
            lambda: NaNEnv(),
            lambda: ScriptedEnv(reward=0.0, turns=2, tracker=tracker),
        ]
    )


def test_drop_counts_each_failure_and_keeps_the_others() -> None:
    builder = mixed_builder()
    policy = RolloutPolicy(max_concurrency=8, episode_timeout_s=0.2, on_failure="drop")
    group = run(rollout_group(builder, completer_for(), policy, "step0/0"))
    assert group.member_indices == (0, 4)
    assert group.trajectory_ids == ("step0/0/0", "step0/0/4")
    assert [(f.index, f.kind) for f in group.failures] == [(1, "exception"), (2, "timeout"), (3, "non_finite_reward")]
    assert "env exploded" in group.failures[0].message
    assert group.total_rewards_G().tolist() == [1.0, 0.0]
    assert builder.make_calls == 1
    assert builder.seen_by_group_rewards == [2]  # only finished members are graded
    assert group.tags == ("fake",)


def test_retry_replays_on_fresh_envs_then_drops() -> None:
    attempts = {"flaky": 0}

    def flaky() -> Env:
        attempts["flaky"] += 1
        return RaisingEnv() if attempts["flaky"] == 1 else ScriptedEnv(reward=2.0)

    builder = Builder([lambda: ScriptedEnv(), flaky, lambda: RaisingEnv()])
    policy = RolloutPolicy(max_concurrency=4, on_failure="retry", max_retries=2)
    group = run(rollout_group(builder, completer_for(), policy, "g"))
    assert group.member_indices == (0, 1)
    assert group.total_rewards_G().tolist() == [1.0, 2.0]
    assert [m["rollout/retries"] for m in group.metrics_G] == [0.0, 1.0]
    assert [(f.index, f.kind) for f in group.failures] == [(2, "exception")]
    assert "after 3 attempts" in group.failures[0].message
    assert builder.make_calls == 1 + 1 + 2  # the first call, one retry of member 1, two of member 2


def test_retry_with_a_failing_make_envs_drops_the_member() -> None:
    builder = Builder([lambda: RaisingEnv(), lambda: ScriptedEnv()], fail_make_after=1)
    group = run(rollout_group(builder, completer_for(), RolloutPolicy(on_failure="retry"), "g"))
    assert group.member_indices == (1,)
    assert group.failures[0].index == 0
    assert "make_envs for a retry failed" in group.failures[0].message


@pytest.mark.parametrize(("member", "kind"), [(RaisingEnv, "exception"), (NaNEnv, "non_finite_reward")])
def test_fail_fast_raises_a_typed_error_and_cancels_the_rest(member: type[ScriptedEnv], kind: str) -> None:
    tracker = Tracker()
    builders = [
        Builder([lambda: HangingEnv(tracker=tracker)] * 3),
        Builder([lambda: ScriptedEnv(), lambda: member()]),
    ]
    policy = RolloutPolicy(max_concurrency=8, episode_timeout_s=0.2, on_failure="fail_fast")
    with pytest.raises(RolloutError) as caught:
        run(rollout_batch(builders, completer_for(), policy, "step3"))
    error = caught.value
    assert (error.group_id, error.member, error.kind, error.stage) == ("step3/1", 1, kind, "episode")
    assert "step3/1" in str(error)
    assert "member 1" in str(error)
    assert error.__cause__ is not None
    assert tracker.cancelled == 3  # the other group's hanging episodes were cancelled, not leaked
    if kind == "non_finite_reward":
        assert isinstance(error.__cause__, NonFiniteError)


def test_fail_fast_on_a_timeout() -> None:
    builders = [Builder([lambda: ScriptedEnv(delay=0.01)] * 2), Builder([ScriptedEnv, HangingEnv])]
    policy = RolloutPolicy(episode_timeout_s=0.1)
    with pytest.raises(RolloutError) as caught:
        run(rollout_batch(builders, completer_for(), policy, "step3"))
    assert (caught.value.group_id, caught.value.member, caught.value.kind) == ("step3/1", 1, "timeout")
    assert "the episode ran past its 0.1 s" in str(caught.value)


def test_an_envs_own_timeout_error_is_an_exception_not_a_policy_timeout() -> None:
    group = run(rollout_group(Builder([OwnTimeoutEnv]), completer_for(), RolloutPolicy(on_failure="drop"), "g"))
    assert group.failures[0].kind == "exception"


def test_a_batch_with_broken_envs_completes_and_counts_them() -> None:
    tracker = Tracker()
    builders = [mixed_builder(tracker) for _ in range(4)]
    policy = RolloutPolicy(max_concurrency=6, episode_timeout_s=0.2, on_failure="drop")
    groups = run(rollout_batch(builders, completer_for(delay=0.001), policy, "step1"))
    assert [g.group_id for g in groups] == [f"step1/{k}" for k in range(4)]
    assert all(g.member_indices == (0, 4) for g in groups)
    counts: dict[str, int] = {}
    for group in groups:
        for failure in group.failures:
            counts[failure.kind] = counts.get(failure.kind, 0) + 1
    assert counts == {"exception": 4, "timeout": 4, "non_finite_reward": 4}


# -- group-level stages -------------------------------------------------------------------------------------------


def test_make_envs_failure_fails_the_group() -> None:
    builder = Builder([ScriptedEnv], fail_make=True)
    group = run(rollout_group(builder, completer_for(), RolloutPolicy(on_failure="drop"), "g"))
    assert group.trajectories == ()
    assert [(f.index, f.kind) for f in group.failures] == [(-1, "exception")]
    assert group.failures[0].message.startswith("make_envs: OSError")
    with pytest.raises(RolloutError) as caught:
        run(rollout_group(builder, completer_for(), RolloutPolicy(), "g"))
    assert (caught.value.member, caught.value.stage) == (None, "make_envs")


def test_group_rewards_are_added_and_a_non_finite_one_drops_its_member() -> None:
    def rewards(trajectories: Sequence[Trajectory]) -> list[tuple[float, Metrics]]:
        return [(0.5, {"bonus": 1.0}), (math.inf, {}), (-0.5, {})][: len(trajectories)]

    builder = Builder([ScriptedEnv, ScriptedEnv, ScriptedEnv], group_rewards=rewards)
    group = run(rollout_group(builder, completer_for(), RolloutPolicy(on_failure="drop"), "g"))
    assert group.member_indices == (0, 2)
    assert group.group_rewards_G == (0.5, -0.5)
    assert group.total_rewards_G().tolist() == [1.5, 0.5]
    assert group.metrics_G[0] == {"bonus": 1.0}
    assert [(f.index, f.kind) for f in group.failures] == [(1, "non_finite_reward")]
    with pytest.raises(RolloutError) as caught:
        run(rollout_group(builder, completer_for(), RolloutPolicy(), "g"))
    assert (caught.value.member, caught.value.kind) == (1, "non_finite_reward")


def test_wrong_number_of_group_rewards_fails_the_group() -> None:
    builder = Builder([ScriptedEnv, ScriptedEnv], group_rewards=lambda trajectories: [(0.0, {})])
    group = run(rollout_group(builder, completer_for(), RolloutPolicy(on_failure="drop"), "g"))
    assert group.trajectories == ()
    assert group.failures[-1].index == -1
    assert "returned 1 rewards for 2" in group.failures[-1].message


# -- concurrency and timeouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 7])
def test_concurrency_limit_holds_across_the_batch(limit: int) -> None:
    tracker = Tracker()
    builders = [Builder([lambda: ScriptedEnv(turns=2, delay=0.002, tracker=tracker)] * 4) for _ in range(5)]
    policy = RolloutPolicy(max_concurrency=limit, on_failure="fail_fast")
    groups = run(rollout_batch(builders, completer_for(delay=0.001), policy, "s"))
    assert sum(len(g.trajectories) for g in groups) == 20
    assert tracker.peak == limit  # reached, never exceeded


def test_waiting_for_a_slot_does_not_count_against_the_timeout() -> None:
    builder = Builder([lambda: ScriptedEnv(delay=0.02)] * 12)
    policy = RolloutPolicy(max_concurrency=1, episode_timeout_s=0.15, on_failure="drop")
    group = run(rollout_group(builder, completer_for(), policy, "g"))  # 12 x 0.02 s > 0.15 s in all
    assert len(group.trajectories) == 12
    assert group.failures == ()


def test_sampling_time_counts_against_the_episode_timeout() -> None:
    builder = Builder([lambda: ScriptedEnv(turns=3)] * 2)
    slow_sampler = completer_for(delay=0.06)  # 3 turns: 0.18 s of sampling
    group = run(rollout_group(builder, slow_sampler, RolloutPolicy(episode_timeout_s=2.0), "g"))
    assert len(group.trajectories) == 2
    group = run(rollout_group(builder, slow_sampler, RolloutPolicy(episode_timeout_s=0.1, on_failure="drop"), "g"))
    assert [(f.kind, f.message) for f in group.failures] == [("timeout", "the episode ran past its 0.1 s")] * 2
    policy = RolloutPolicy(episode_timeout_s=2.0, sample_timeout_s=0.03, on_failure="drop")
    group = run(rollout_group(builder, slow_sampler, policy, "g"))
    assert [(f.kind, f.message) for f in group.failures] == [("timeout", "sampling ran past 0.03 s")] * 2


def test_the_episode_timeout_sums_the_environment_calls() -> None:
    builder = Builder([lambda: ScriptedEnv(turns=4, delay=0.03)])
    policy = RolloutPolicy(episode_timeout_s=0.08, on_failure="drop")  # each step fits, four do not
    group = run(rollout_group(builder, completer_for(), policy, "g"))
    assert [f.kind for f in group.failures] == ["timeout"]
    assert (
        len(run(rollout_group(builder, completer_for(), RolloutPolicy(episode_timeout_s=0.5), "g")).trajectories) == 1
    )


def test_cancelling_a_batch_cancels_its_episodes() -> None:
    tracker = Tracker()

    async def go() -> None:
        task = asyncio.ensure_future(
            rollout_batch(
                [Builder([lambda: HangingEnv(tracker=tracker)] * 2)] * 2, completer_for(), RolloutPolicy(), "s"
            )
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert tracker.cancelled == 4


class ThreadSampler(StubSampler):
    """A sampler computing on one worker thread (like the local backend), ``latency`` seconds per request."""

    base_model = "thread-sampler"

    def __init__(self, latency: float = 0.005) -> None:
        self.latency = latency
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.requests: list[tuple[list[int], int, SamplingParams]] = []
        self.busy = threading.Event()

    def respond(
        self, prompt: ModelInput, num_samples: int, sampling_params: SamplingParams
    ) -> APIFuture[SampleResponse]:
        self.requests.append((prompt.to_tokens().tolist(), num_samples, sampling_params))
        first = len(self.requests) * 100

        def job() -> SampleResponse:
            self.busy.set()
            time.sleep(self.latency)
            self.busy.clear()
            return SampleResponse(
                sequences=[
                    SampledSequence([first + row, 7], "stop", [-0.1, -0.2], sequence_id=str(first + row))
                    for row in range(num_samples)
                ]
            )

        return APIFuture(self.executor.submit(job))


class OverlapEnv(ScriptedEnv):
    """Notes whether the sampler thread was busy while this env was working."""

    overlapped = 0

    def __init__(self, sampler: ThreadSampler) -> None:
        super().__init__(turns=2)
        self.sampler = sampler

    async def step(self, sampled: SampledSequence) -> StepResult:
        for _ in range(10):
            if self.sampler.busy.is_set():
                OverlapEnv.overlapped += 1
                break
            await asyncio.sleep(0.001)
        return await super().step(sampled)


@pytest.mark.parametrize("batching", [False, True])
def test_threaded_sampler_overlaps_env_work_without_deadlock(batching: bool) -> None:
    sampler = ThreadSampler()
    completer = BatchingTokenCompleter(sampler) if batching else SamplerTokenCompleter(sampler)
    OverlapEnv.overlapped = 0
    builders = [Builder([lambda: OverlapEnv(sampler)] * 4) for _ in range(4)]
    groups = run(rollout_batch(builders, completer, RolloutPolicy(max_concurrency=8), "s"))
    assert sum(len(g.trajectories) for g in groups) == 16
    assert OverlapEnv.overlapped > 0  # environments ran while the sampler computed
    if batching:  # the first turn of each group's members shares a prompt: merged requests
        assert any(num_samples > 1 for _, num_samples, _ in sampler.requests)
        assert len(sampler.requests) < 32


# -- RolloutPolicy ------------------------------------------------------------------------------------------------


def test_rollout_policy_validation_and_serde() -> None:
    policy = RolloutPolicy(max_concurrency=4, episode_timeout_s=1.5, on_failure="retry", max_retries=3)
    assert from_json(to_json(policy), RolloutPolicy) == policy
    assert policy.retries == 3
    assert RolloutPolicy(on_failure="drop", max_retries=3).retries == 0
    for bad in (
        {"max_concurrency": 0},
        {"episode_timeout_s": 0.0},
        {"episode_timeout_s": math.inf},
        {"sample_timeout_s": -1.0},
        {"on_failure": "ignore"},
        {"max_retries": -1},
    ):
        with pytest.raises(ConfigError):
            RolloutPolicy(**bad)  # type: ignore[arg-type]


# -- completers ---------------------------------------------------------------------------------------------------


@given(
    own=st.one_of(st.none(), st.integers(1, 50)),
    stop_limit=st.one_of(st.none(), st.integers(1, 50)),
    strings=st.booleans(),
    seed=st.one_of(st.none(), st.integers(0, 2**40)),
)
def test_token_completer_passes_the_stop_condition(
    own: int | None, stop_limit: int | None, strings: bool, seed: int | None
) -> None:
    sampler = RecordingSampler()
    completer = SamplerTokenCompleter(sampler, temperature=0.7, max_tokens=own, seed=seed)
    stop = (
        StopCondition(stop_strings=("END",), max_tokens=stop_limit)
        if strings
        else StopCondition(stop_tokens=(3, 4), max_tokens=stop_limit)
    )
    prompt = ModelInput.from_tokens([1, 2])
    first = run(completer(prompt, stop))
    run(completer(prompt, stop))
    assert first.tokens_T.tolist() == [1]
    (_, n0, p0), (_, n1, p1) = sampler.requests
    assert n0 == n1 == 1
    limits = [limit for limit in (own, stop_limit) if limit is not None]
    assert p0.max_tokens == (min(limits) if limits else None)
    assert p0.temperature == 0.7
    assert (p0.stop_strings, p0.stop_tokens) == ((("END",), ()) if strings else ((), (3, 4)))
    if seed is None:
        assert p0.seed is None
        assert p1.seed is None
    else:
        assert (p0.seed, p1.seed) == (seed, seed + 1)


def test_token_completer_checks_the_response_and_the_context() -> None:
    with pytest.raises(ValidationError, match="logprobs"):
        run(SamplerTokenCompleter(RecordingSampler(logprobs=False))(ModelInput.from_tokens([1]), StopCondition()))
    sampler = RecordingSampler()
    completer = SamplerTokenCompleter(sampler, max_tokens=100, context_window=10)
    run(completer(ModelInput.from_tokens([1, 2, 3, 4]), StopCondition()))
    assert sampler.requests[0][2].max_tokens == 6
    with pytest.raises(ValidationError, match="context window"):
        run(completer(ModelInput.from_tokens(list(range(10))), StopCondition()))
    with pytest.raises(ConfigError):
        SamplerTokenCompleter(sampler, temperature=-1.0)


def test_batching_completer_merges_identical_requests() -> None:
    sampler = RecordingSampler()
    completer = BatchingTokenCompleter(sampler, max_batch=4, seed=10)
    a, b = ModelInput.from_tokens([1]), ModelInput.from_tokens([2])
    stop = StopCondition(stop_tokens=(9,))

    async def go() -> list[SampledSequence]:
        calls = [completer(a, stop) for _ in range(6)] + [completer(b, stop) for _ in range(2)]
        calls.append(completer(a, StopCondition(stop_tokens=(8,))))
        return list(await asyncio.gather(*calls))

    results = run(go())
    assert len(results) == 9
    shapes = sorted((prompt.to_tokens().tolist(), n) for prompt, n, _ in sampler.requests)
    assert shapes == [([1], 1), ([1], 2), ([1], 4), ([2], 2)]  # 6 split by max_batch; a new stop is a new request
    assert sorted(params.seed for _, _, params in sampler.requests) == [10, 11, 12, 13]


def test_batching_completer_failure_and_cancellation() -> None:
    class Failing(RecordingSampler):
        def sample(self, *args: object, **kwargs: object) -> APIFuture[SampleResponse]:
            self.requests.append(args)  # type: ignore[arg-type]
            return APIFuture.failed(RuntimeError("sampler down"))

    failing = BatchingTokenCompleter(Failing())
    prompt, stop = ModelInput.from_tokens([1]), StopCondition()

    async def both_fail() -> list[object]:
        return list(await asyncio.gather(failing(prompt, stop), failing(prompt, stop), return_exceptions=True))

    errors = run(both_fail())
    assert all(isinstance(error, RuntimeError) for error in errors)

    sampler = RecordingSampler()
    completer = BatchingTokenCompleter(sampler, window_s=0.05)

    async def one_cancelled() -> SampledSequence:
        doomed = asyncio.ensure_future(completer(prompt, stop))
        kept = asyncio.ensure_future(completer(prompt, stop))
        await asyncio.sleep(0.01)
        doomed.cancel()
        return await kept

    run(one_cancelled())
    assert [n for _, n, _ in sampler.requests] == [1]  # the cancelled caller was left out


def test_arithmetic_end_to_end_with_a_scripted_sampler() -> None:
    renderer = get_renderer("smollm2", offline_tokenizer("smollm2"))
    answer = [*renderer.tokenizer.encode("Answer: 5"), renderer.stop_sequences().tokens[0]]
    sampler = RecordingSampler(answer)
    data = arithmetic.dataset(renderer, batch_size=2, group_size=3, n_batches=1, seed=0)
    groups = run(rollout_batch(data.get_batch(0), BatchingTokenCompleter(sampler), RolloutPolicy(), "step0"))
    assert [len(g.trajectories) for g in groups] == [3, 3]
    assert [n for _, n, _ in sampler.requests] == [3, 3]  # one request per group
    assert all(params.stop_tokens == stop_condition_for(renderer).stop_tokens for _, _, params in sampler.requests)
    for group in groups:
        assert group.tags == ("arithmetic",)
        assert len(set(group.total_rewards_G().tolist())) == 1  # identical answers, identical rewards
