"""On-policy distillation, pure parts: the reverse-KL advantages (properties, and equal to tinker-cookbook 0.6.1's
``distillation/train_on_policy.incorporate_kl_penalty`` on hypothesis-generated batches), the held-out KL measure,
prompt environments and datasets, and ``DistillConfig`` validation."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.byte_renderer import ByteRenderer

from tinkerflow.chat import Conversation, Message
from tinkerflow.errors import ConfigError, ShapeError, ValidationError
from tinkerflow.interop import datum_to_tinker
from tinkerflow.model_input import ModelInput
from tinkerflow.rl import testing as rlt
from tinkerflow.rl.advantages import compute_advantages
from tinkerflow.rl.assembly import RLBatch, assemble_batch
from tinkerflow.rl.distill import PromptEnv, prompt_dataset, prompt_messages, sequence_reverse_kl
from tinkerflow.rl.distill_config import DistillConfig
from tinkerflow.rl.kl import kl_penalty, reverse_kl_advantages
from tinkerflow.rl.types import Trajectory, TrajectoryGroup, Transition
from tinkerflow.sampling import SampledSequence
from tinkerflow.serde import from_json, to_json

SETTINGS = settings(
    max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None
)


def _group(group_id: str, rewards: list[float], actions: list[list[int]]) -> TrajectoryGroup:
    """One single-turn trajectory per reward, prompt ``[1, 2, 3]``, every action token with logprob -1."""
    trajectories = tuple(
        Trajectory(
            transitions=(Transition(ModelInput.from_tokens([1, 2, 3]), action, [-1.0] * len(action), reward, True),)
        )
        for reward, action in zip(rewards, actions, strict=True)
    )
    count = len(trajectories)
    return TrajectoryGroup(group_id, trajectories, tuple(range(count)), (0.0,) * count, ({},) * count)


def _batch_and_teacher(groups: list[TrajectoryGroup], data: st.DataObject) -> tuple[RLBatch, list[np.ndarray]]:
    batch = assemble_batch(groups, compute_advantages(groups))
    teacher = [
        np.asarray(data.draw(st.lists(st.floats(-20, 0, width=32), min_size=d.length, max_size=d.length)), np.float32)
        for d in batch.datums
    ]
    return batch, teacher


# -- reverse-KL advantages --------------------------------------------------------------------------------------


@SETTINGS
@given(
    rlt.trajectory_group_lists(min_groups=1, max_groups=3, min_size=1, max_size=4),
    st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    st.data(),
)
def test_reverse_kl_advantages_add_minus_coef_times_the_masked_difference(
    groups: list[TrajectoryGroup], coef: float, data: st.DataObject
) -> None:
    batch, teacher = _batch_and_teacher(groups, data)
    new, metrics = reverse_kl_advantages(batch, teacher, coef)
    assert new.trajectory_ids_D == batch.trajectory_ids_D
    total, positions = 0.0, 0.0
    for old, datum, teacher_T in zip(batch.datums, new.datums, teacher, strict=True):
        assert old.mask_T is not None
        assert old.logprobs_T is not None
        assert old.advantages_T is not None
        assert datum.advantages_T is not None
        diff = (old.logprobs_T.astype(np.float64) - teacher_T) * old.mask_T
        np.testing.assert_allclose(datum.advantages_T, old.advantages_T - coef * diff, rtol=1e-6, atol=1e-6)
        assert np.all(datum.advantages_T[old.mask_T == 0] == old.advantages_T[old.mask_T == 0])  # observations kept
        assert datum.model_input == old.model_input
        total, positions = total + float(diff.sum()), positions + float(old.mask_T.sum())
    assert metrics["teacher_kl"] == pytest.approx(total / positions if positions else 0.0, rel=1e-9, abs=1e-9)


@SETTINGS
@given(
    rlt.trajectory_group_lists(min_groups=1, max_groups=2, min_size=1, max_size=3),
    st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    st.data(),
)
def test_discounted_reverse_kl_stays_on_action_positions(
    groups: list[TrajectoryGroup], discount: float, data: st.DataObject
) -> None:
    batch, teacher = _batch_and_teacher(groups, data)
    plain = reverse_kl_advantages(batch, teacher, 1.0)[0]
    discounted = reverse_kl_advantages(batch, teacher, 1.0, discount)[0]
    for old, one, other in zip(batch.datums, plain.datums, discounted.datums, strict=True):
        assert old.mask_T is not None
        assert one.advantages_T is not None
        assert other.advantages_T is not None
        assert old.advantages_T is not None
        observation = old.mask_T == 0
        np.testing.assert_array_equal(other.advantages_T[observation], old.advantages_T[observation])
        if discount == 0.0:  # a zero discount is the per-token term
            np.testing.assert_allclose(other.advantages_T, one.advantages_T, rtol=1e-12, atol=1e-12)


def test_reverse_kl_has_no_baseline_unlike_the_penalty() -> None:
    """The penalty centres ``d`` on the batch mean (a constant offset vanishes); distillation does not."""
    groups = [_group("g", [1.0, 0.0], actions=[[5, 6], [7, 8]])]
    batch = assemble_batch(groups, compute_advantages(groups))
    teacher = [
        np.where(d.mask_T == 1, d.logprobs_T - 0.5, 0.0).astype(np.float32)  # type: ignore[operator]  # set by assembly
        for d in batch.datums
    ]
    distilled, metrics = reverse_kl_advantages(batch, teacher, 2.0)
    penalised, _ = kl_penalty(batch, teacher, 2.0)
    assert metrics["teacher_kl"] == pytest.approx(0.5)
    for old, d, p in zip(batch.datums, distilled.datums, penalised.datums, strict=True):
        assert old.mask_T is not None
        assert old.advantages_T is not None
        actions = old.mask_T == 1
        np.testing.assert_allclose(d.advantages_T[actions], old.advantages_T[actions] - 1.0, atol=1e-6)  # type: ignore[index]  # set
        np.testing.assert_allclose(p.advantages_T[actions], old.advantages_T[actions], atol=1e-6)  # type: ignore[index]  # set


def test_reverse_kl_refuses_bad_teacher_logprobs() -> None:
    groups = [_group("g", [1.0, 0.0], actions=[[5, 6], [7, 8]])]
    batch = assemble_batch(groups, compute_advantages(groups))
    good = [np.zeros(d.length, np.float32) for d in batch.datums]
    with pytest.raises(ShapeError) as caught:
        reverse_kl_advantages(batch, good[:1], 1.0)
    assert caught.value.field == "reference_logprobs_D"
    with pytest.raises(ShapeError):
        reverse_kl_advantages(batch, [np.zeros(1, np.float32) for _ in batch.datums], 1.0)
    with pytest.raises(ConfigError) as config_error:
        reverse_kl_advantages(batch, good, -1.0)
    assert config_error.value.field == "coef"
    with pytest.raises(ConfigError):
        reverse_kl_advantages(batch, good, 1.0, 1.5)


# -- differential: the cookbook's on-policy distillation --------------------------------------------------------

cookbook_distill = pytest.importorskip("tinker_cookbook.distillation.train_on_policy")


class _FakeTeacher:
    """``compute_logprobs(prompt).coroutine()`` answering the given prompt logprobs, in call order."""

    def __init__(self, answers: list[list[float | None]]) -> None:
        self.answers = iter(answers)

    def compute_logprobs(self, prompt: Any) -> Any:
        answer = next(self.answers)

        async def done() -> Any:
            return answer

        return SimpleNamespace(coroutine=done)


@SETTINGS
@given(
    rlt.trajectory_group_lists(min_groups=1, max_groups=3, min_size=1, max_size=4),
    st.sampled_from([None, 0.5, 0.9]),
    st.sampled_from([0.05, 1.0]),
    st.data(),
)
def test_reverse_kl_advantages_match_cookbook_distillation(
    groups: list[TrajectoryGroup], discount: float | None, coef: float, data: st.DataObject
) -> None:
    batch, teacher = _batch_and_teacher(groups, data)
    if batch.is_empty or not any(float(d.mask_T.sum()) for d in batch.datums if d.mask_T is not None):
        return
    cookbook_data = [datum_to_tinker(d, keep_mask=True) for d in batch.datums]
    fake = _FakeTeacher([[None, *t.tolist()] for t in teacher])
    theirs_metrics = asyncio.run(
        cookbook_distill.incorporate_kl_penalty(
            cookbook_data, [fake] * batch.size, [0] * batch.size, coef, 0.0 if discount is None else discount
        )
    )
    new, metrics = reverse_kl_advantages(batch, teacher, coef, discount)
    np.testing.assert_allclose(metrics["teacher_kl"], theirs_metrics["teacher_kl"], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(new.datums, cookbook_data, strict=True):
        expected = theirs.loss_fn_inputs["advantages"].to_numpy()
        assert ours.mask_T is not None
        assert ours.advantages_T is not None
        if discount:  # the cookbook spreads the discounted term onto mask-0 positions too; we do not
            expected = np.where(ours.mask_T == 1, expected, ours.advantages_T)
        scale = 1.0 + float(np.max(np.abs(expected), initial=0.0))
        np.testing.assert_allclose(ours.advantages_T, expected, rtol=0, atol=2e-5 * scale)


# -- the held-out measure, prompts and environments -------------------------------------------------------------


@given(st.lists(st.tuples(st.floats(-30, 0), st.floats(-30, 0)), max_size=20))
def test_sequence_reverse_kl_is_the_mean_difference(pairs: list[tuple[float, float]]) -> None:
    student = np.array([p[0] for p in pairs])
    teacher = np.array([p[1] for p in pairs])
    expected = float(np.mean(student - teacher)) if pairs else 0.0
    assert sequence_reverse_kl(student, teacher) == pytest.approx(expected, abs=1e-9)
    assert sequence_reverse_kl(student, student) == 0.0


def test_sequence_reverse_kl_refuses_mismatches() -> None:
    with pytest.raises(ValidationError, match="teacher_logprobs_T"):
        sequence_reverse_kl(np.zeros(3), np.zeros(2))
    with pytest.raises(ValidationError, match="NaN"):
        sequence_reverse_kl(np.zeros(2), np.array([0.0, np.nan]))


def _chat(*roles: str) -> Conversation:
    return Conversation(messages=tuple(Message(role=role, content=f"{role} {i}") for i, role in enumerate(roles)))  # type: ignore[arg-type]  # known roles


def test_prompt_messages_drop_the_final_answer_only() -> None:
    assert [m.role for m in prompt_messages(_chat("system", "user", "assistant"))] == ["system", "user"]
    assert [m.role for m in prompt_messages(_chat("user"))] == ["user"]
    assert [m.role for m in prompt_messages(_chat("user", "assistant", "user"))] == ["user", "assistant", "user"]
    for bad in (_chat("assistant"), _chat("system"), _chat("user", "assistant", "assistant")):
        with pytest.raises(ValidationError) as caught:
            prompt_messages(bad)
        assert caught.value.field == "conversation.messages"


class _Scorer:
    """A teacher that gives every token logprob ``value``."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.prompts: list[ModelInput] = []

    async def compute_logprobs(self, prompt: ModelInput) -> np.ndarray:
        self.prompts.append(prompt)
        return np.full(prompt.length, self.value, dtype=np.float32)


def test_prompt_env_rewards_zero_or_minus_the_kl_to_a_teacher() -> None:
    renderer = ByteRenderer()
    messages = prompt_messages(_chat("user", "assistant"))
    action = SampledSequence(tokens_T=[65, 66], stop_reason="length", logprobs_T=[-1.0, -2.0])

    async def one(env: PromptEnv) -> tuple[ModelInput, float, dict[str, float]]:
        observation, _ = await env.initial_observation()
        result = await env.step(action)
        assert result.done
        return observation, result.reward, dict(result.metrics)

    _, reward, _ = asyncio.run(one(PromptEnv(renderer, messages, max_tokens=4)))
    assert reward == 0.0
    scorer = _Scorer(-3.0)
    observation, reward, metrics = asyncio.run(one(PromptEnv(renderer, messages, max_tokens=4, teacher=scorer)))
    assert metrics["teacher_kl"] == pytest.approx(1.5)  # mean(-1 - -3, -2 - -3)
    assert reward == pytest.approx(-1.5)
    assert scorer.prompts[0].to_tokens().tolist() == [*observation.to_tokens().tolist(), 65, 66]


def test_prompt_dataset_batches_every_prompt_as_groups() -> None:
    prompts = [prompt_messages(_chat("user")) for _ in range(5)]
    dataset = prompt_dataset(prompts, ByteRenderer(), group_size=3, batch_size=2, steps=7, seed=0, max_tokens=4)
    assert len(dataset) >= 7
    builders = dataset.get_batch(0)
    assert len(builders) == 2
    envs = asyncio.run(builders[0].make_envs())
    assert len(envs) == 3
    assert all(isinstance(env, PromptEnv) for env in envs)
    assert builders[0].tags() == ("distill",)


# -- DistillConfig ----------------------------------------------------------------------------------------------

GOOD = {"teacher_model": "tiny-llama:seed=1", "prompts": "p.jsonl"}

BAD: list[tuple[dict[str, object], str]] = [
    ({"prompts": "p.jsonl"}, "teacher_model"),
    ({**GOOD, "prompts": ""}, "prompts"),
    ({**GOOD, "teacher_checkpoint": "runs/t"}, "teacher_checkpoint"),
    ({"teacher_model": "m", "prompts": None}, "prompts"),
    ({**GOOD, "env": "arithmetic"}, "env"),
    ({**GOOD, "teacher_model": " "}, "teacher_model"),
    ({"teacher_model": "m", "prompts": None, "env": "arithmetic", "test_prompts": "t.jsonl"}, "test_prompts"),
    ({**GOOD, "env_args": {"fewshot": 1}}, "env_args"),
    ({**GOOD, "kl_coef": 0.0}, "kl_coef"),
    ({**GOOD, "kl_discount": 2.0}, "kl_discount"),
    ({**GOOD, "group_size": 0}, "group_size"),
    ({**GOOD, "loss": "reinforce"}, "loss"),
    ({**GOOD, "temperature": -1.0}, "temperature"),
    ({**GOOD, "steps": 0}, "steps"),
]


@pytest.mark.parametrize(("changes", "field"), BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_distill_config_rules_name_their_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DistillConfig(**changes)  # type: ignore[arg-type]  # deliberately wrong values
    assert (caught.value.where, caught.value.field) == ("DistillConfig", field)


def test_distill_config_is_rl_with_the_teacher_as_kl_reference() -> None:
    config = DistillConfig(**GOOD, group_size=1, kl_coef=0.5, kl_discount=0.9)  # type: ignore[arg-type]  # typed
    rl = config.rl_config()
    assert (rl.kl_reference, rl.kl_reference_model, rl.kl_mode) == ("model", "tiny-llama:seed=1", "distillation")
    assert (rl.kl_coef, rl.kl_discount, rl.group_size, rl.constant_groups) == (0.5, 0.9, 1, "keep")
    assert rl.env == "distill"
    checkpoint = DistillConfig(
        teacher_checkpoint="runs/teacher", prompts=None, env="arithmetic", env_args={"fewshot": 1}
    )
    rl = checkpoint.rl_config()
    assert (rl.kl_reference, rl.kl_reference_path, rl.env, rl.env_args) == (
        "checkpoint", "runs/teacher", "arithmetic", {"fewshot": 1}
    )  # fmt: skip
    assert from_json(to_json(config), DistillConfig) == config
