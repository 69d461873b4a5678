"""The RL loop on the real local backend (a tiny random-init Llama over bytes): it raises the reward of a trivial
environment, survives environments that raise, hang or return NaN, skips steps with nothing to learn, and a run
killed mid-way (sync and async) and resumed ends with the same weights and metric rows as an uninterrupted run."""

from __future__ import annotations

import asyncio
import io
import json
import math
import pathlib
from collections.abc import Sequence

import attrs
import numpy as np
import pytest
from tests.helpers import KilledError, kill_after

from tinkerflow.errors import ConfigError
from tinkerflow.model_input import ModelInput
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.types import Metrics, StepResult, StopCondition, Trajectory
from tinkerflow.sampling import SampledSequence
from tinkerflow.shell.io.run_dir import MetricsLog

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.tiny_model import assert_same_params

from tinkerflow.shell.backends.local.backend import LocalBackend
from tinkerflow.shell.recipes.rl import RLResult, environment_datasets, run_rl

PROMPT = (256, 72, 105, 58)  # BOS "Hi:"
TIMING = ("sampling_s", "train_s")


class AsciiEnv:
    """One turn: reward = the fraction of action bytes below 128 (random init sits near 0.5)."""

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        return ModelInput.from_tokens(PROMPT), StopCondition(max_tokens=6)

    async def step(self, action: SampledSequence) -> StepResult:
        if self.behaviour == "raise":
            raise RuntimeError("broken environment")
        if self.behaviour == "hang":
            await asyncio.sleep(60)
        if self.behaviour == "nan":
            return StepResult(reward=math.nan, done=True)  # raises NonFiniteError inside the env
        if self.behaviour == "constant":
            return StepResult(reward=1.0, done=True)
        tokens = np.asarray(action.tokens_T)
        return StepResult(reward=float(np.mean(tokens < 128)) if tokens.size else 0.0, done=True)


@attrs.frozen
class AsciiBuilder:
    size: int
    behaviours: tuple[str, ...] = ()

    async def make_envs(self) -> Sequence[AsciiEnv]:
        return [AsciiEnv(self.behaviours[i] if i < len(self.behaviours) else "ok") for i in range(self.size)]

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        return [(0.0, {}) for _ in trajectories]

    def tags(self) -> tuple[str, ...]:
        return ("ascii",)


@attrs.frozen
class AsciiDataset:
    groups: int
    size: int
    behaviours: tuple[str, ...] = ()

    def __len__(self) -> int:
        return 1000

    def get_batch(self, index: int) -> Sequence[AsciiBuilder]:
        return [AsciiBuilder(self.size, self.behaviours) for _ in range(self.groups)]


def _config(tmp_path: pathlib.Path, name: str, **changes: object) -> RLConfig:
    base = RLConfig(
        env="ascii",
        base_model="tiny-llama",
        run_dir=str(tmp_path / name),
        steps=6,
        groups_per_batch=2,
        group_size=4,
        learning_rate=2e-2,
        lora_rank=4,
        max_tokens=6,
        eval_every=0,
        eval_groups=2,
        save_every=2,
        seed=3,
    )
    return attrs.evolve(base, **changes)


def _decode(tokens: np.ndarray) -> str:
    return bytes(int(t) for t in tokens if t < 256).decode("utf-8", errors="replace")


def _run(config: RLConfig, dataset: AsciiDataset | None = None, **kwargs: object) -> RLResult:
    data = dataset if dataset is not None else AsciiDataset(config.groups_per_batch, config.group_size)
    backend = LocalBackend(checkpoint_dir=pathlib.Path(config.run_dir) / "checkpoints")
    return run_rl(config, backend, data, decode=_decode, test_dataset=data, out=io.StringIO(), sinks=(), **kwargs)  # type: ignore[arg-type]  # kwargs are after_step only


def _rows(config: RLConfig) -> list[dict[str, object]]:
    rows = MetricsLog.read(pathlib.Path(config.run_dir) / "metrics.jsonl")
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _weights(config: RLConfig, result: RLResult) -> dict[str, np.ndarray]:
    backend = LocalBackend(checkpoint_dir=pathlib.Path(config.run_dir) / "checkpoints")
    client = backend.create_training_client_from_state(result.final_checkpoint, with_optimizer=False).result()
    return client.get_trainable_parameters().result()  # type: ignore[attr-defined, no-any-return]


def test_rl_raises_the_reward_of_a_trivial_environment(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "learn", steps=14, groups_per_batch=4, group_size=8, save_every=0)
    result = _run(config)
    rewards = [float(row["reward/mean"]) for row in _rows(config)]  # type: ignore[arg-type]
    assert len(rewards) == 14
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4]) + 0.1, rewards
    assert result.eval_reward_before is not None
    assert result.eval_reward_after is not None
    assert result.eval_reward_after > result.eval_reward_before
    run_dir = pathlib.Path(config.run_dir)
    page = (run_dir / "transcripts.html").read_text()
    assert "step0/0/0" in page
    assert "step13/3/7" in page
    assert "reward/mean" in (run_dir / "reward.html").read_text()


@pytest.mark.parametrize(("mode", "kill_at"), [("sync", 2), ("sync", 3), ("async", 3)])
def test_resume_continues_exactly(tmp_path: pathlib.Path, mode: str, kill_at: int) -> None:
    staleness = 2 if mode == "async" else 1  # max_staleness other than 1 in sync mode is refused
    reference_config = _config(tmp_path, "ref", mode=mode, max_staleness=staleness)
    reference = _run(reference_config)
    config = _config(tmp_path, "killed", mode=mode, max_staleness=staleness)
    with pytest.raises(KilledError):
        _run(config, after_step=kill_after(kill_at))
    state = json.loads((pathlib.Path(config.run_dir) / "state.json").read_text())
    assert state["step"] == 2  # the last checkpoint before the kill
    resumed = _run(config)
    assert _rows(config) == [{**row} for row in _rows(reference_config)]
    assert_same_params(_weights(config, resumed), _weights(reference_config, reference), rtol=1e-5, atol=1e-6)
    if mode == "async":
        assert max(int(row["staleness"]) for row in _rows(config)) == 2  # type: ignore[call-overload]


def test_broken_environments_are_dropped_and_counted(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "broken", steps=2, episode_timeout_s=2.0, on_failure="drop", save_every=0)
    dataset = AsciiDataset(2, 6, behaviours=("raise", "hang", "nan"))
    result = _run(config, dataset)
    rows = _rows(config)
    assert result.steps == 2
    assert len(rows) == 2
    for row in rows:
        assert row["failures/exception"] == 2.0
        assert row["failures/timeout"] == 2.0
        assert row["failures/non_finite_reward"] == 2.0
        assert row["datums"] == 6  # 3 healthy members in each of 2 groups


def test_fail_fast_stops_the_run_with_a_typed_error(tmp_path: pathlib.Path) -> None:
    from tinkerflow.shell.rollouts import RolloutError

    config = _config(tmp_path, "failfast", steps=2, on_failure="fail_fast", save_every=0)
    with pytest.raises(RolloutError, match="broken environment"):
        _run(config, AsciiDataset(2, 4, behaviours=("raise",)))


def test_a_step_with_only_constant_groups_is_skipped(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "constant", steps=3, constant_groups="drop", save_every=0)
    dataset = AsciiDataset(2, 4, behaviours=("constant",) * 4)
    result = _run(config, dataset)
    rows = _rows(config)
    assert [row["skipped_step"] for row in rows] == [1, 1, 1]
    weights = _weights(config, result)
    backend = LocalBackend(checkpoint_dir=tmp_path / "fresh")
    initial = (
        backend.create_lora_training_client("tiny-llama", rank=4, seed=config.seed)
        .result()
        .get_trainable_parameters()  # type: ignore[attr-defined]
        .result()
    )
    for name, value in initial.items():
        np.testing.assert_array_equal(weights[name], value)  # no Adam step moved them


def test_unknown_environment_and_bad_env_args_are_config_errors() -> None:
    from tinkerflow.render import get_renderer
    from tinkerflow.shell.io.tokenizers import offline_tokenizer

    renderer = get_renderer("qwen3", offline_tokenizer("qwen3"))
    with pytest.raises(ConfigError, match=r"RLConfig\.env"):
        environment_datasets(RLConfig(env="nope"), renderer)
    with pytest.raises(ConfigError, match=r"RLConfig\.env_args"):
        environment_datasets(RLConfig(env="arithmetic", env_args={"colour": "red"}), renderer)
    train, test = environment_datasets(RLConfig(env="arithmetic", steps=3, groups_per_batch=2), renderer)
    assert len(train) == 3
    assert len(train.get_batch(0)) == 2
    assert test is not None


def test_substeps_split_each_batch_into_that_many_optimizer_steps(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tinkerflow.shell.backends.local import backend as local

    calls: list[int] = []
    original_fb = local.LocalTrainingClient.forward_backward
    original_step = local.LocalTrainingClient.optim_step

    def forward_backward(
        self: local.LocalTrainingClient, data: Sequence[object], *args: object, **kw: object
    ) -> object:
        calls.append(len(data))
        return original_fb(self, data, *args, **kw)  # type: ignore[arg-type]

    steps: list[int] = []

    def optim_step(self: local.LocalTrainingClient, params: object) -> object:
        steps.append(1)
        return original_step(self, params)  # type: ignore[arg-type]

    monkeypatch.setattr(local.LocalTrainingClient, "forward_backward", forward_backward)
    monkeypatch.setattr(local.LocalTrainingClient, "optim_step", optim_step)
    config = _config(tmp_path, "substeps", steps=2, substeps=3, save_every=0, group_size=4, groups_per_batch=2)
    _run(config)
    assert len(steps) == 6  # 2 batches x 3 substeps
    assert calls == [3, 2, 3, 3, 2, 3]  # 8 datums per batch, in 3 nearly equal contiguous chunks


def test_kl_penalty_against_the_initial_weights_is_applied_and_logged(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "kl", steps=3, kl_coef=0.5, save_every=2)
    _run(config)
    rows = _rows(config)
    assert all("kl_policy_base" in row for row in rows)
    assert abs(float(rows[0]["kl_policy_base"])) < 1e-4  # type: ignore[arg-type]  # step 0: policy == reference
    assert abs(float(rows[-1]["kl_policy_base"])) > 1e-4  # type: ignore[arg-type]  # the policy has moved
    state = json.loads((pathlib.Path(config.run_dir) / "state.json").read_text())
    assert "reference" in json.loads(state["extra_json"])  # a resumed run keeps the same reference weights
