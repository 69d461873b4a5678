"""RL pure steps: advantages, assembly, KL penalty, loss inputs and metrics (properties, golden examples, typed
errors, serde round trips). The differential tests against tinker-cookbook are in ``test_rl_cookbook.py``."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkerflow import ImageChunk, ModelInput, TokenChunk
from tinkerflow.datum import LOSS_INPUT_FIELDS, Datum
from tinkerflow.errors import ConfigError, NonFiniteError, ShapeError, ValidationError
from tinkerflow.losses import LOSS_CONFIG_DEFAULTS, LOSS_INPUTS, resolve_loss_config
from tinkerflow.rl import testing as rlt
from tinkerflow.rl.advantages import (
    AdvantageConfig,
    AdvantageResult,
    GroupAdvantages,
    compute_advantages,
    group_advantages,
)
from tinkerflow.rl.assembly import RLBatch, assemble_batch, trajectory_datums
from tinkerflow.rl.kl import discounted_future_sum, kl_penalty, reference_prompts
from tinkerflow.rl.loss_inputs import CISPOLoss, DROLoss, ImportanceSamplingLoss, LossConfig, PPOLoss, loss_datums
from tinkerflow.rl.metrics import rollout_metrics
from tinkerflow.rl.types import RolloutFailure, Trajectory, TrajectoryGroup, Transition
from tinkerflow.serde import from_json, to_json

# ---------------------------------------------------------------------------------------------------- helpers


def transition(
    observation: list[int] | ModelInput,
    action: list[int],
    logprobs: list[float] | None = None,
    *,
    reward: float = 0.0,
    done: bool = True,
    mask_turn: bool = False,
) -> Transition:
    ob = observation if isinstance(observation, ModelInput) else ModelInput.from_tokens(observation)
    lps = logprobs if logprobs is not None else [-0.5] * len(action)
    return Transition(ob, action, lps, reward, done, mask_turn=mask_turn)


def group(group_id: str, rewards: list[float], *, tags: tuple[str, ...] = (), failures: int = 0) -> TrajectoryGroup:
    trajectories = tuple(Trajectory((transition([1, 2, 3], [10 + k, 11]),)) for k in range(len(rewards)))
    return TrajectoryGroup(
        group_id=group_id,
        trajectories=trajectories,
        member_indices=tuple(range(len(rewards))),
        group_rewards_G=tuple(rewards),
        metrics_G=tuple({} for _ in rewards),
        failures=tuple(RolloutFailure(len(rewards) + k, "timeout", "slow") for k in range(failures)),
        tags=tags,
    )


WORKED_EXAMPLE = Trajectory(
    transitions=(
        transition([1, 2, 3], [10, 11], [-0.5, -0.6], done=False),
        transition([1, 2, 3, 10, 11, 20], [30], [-0.7], reward=1.0),
    )
)

# no empty observations or actions: every trajectory assembles
GROUP_LISTS = rlt.trajectory_group_lists(max_groups=4, images=True)


# ---------------------------------------------------------------------------------------------------- golden


def test_cookbook_worked_example() -> None:
    (datum,) = trajectory_datums(WORKED_EXAMPLE, 0.25)
    assert datum.model_input.to_tokens().tolist() == [1, 2, 3, 10, 11, 20]
    assert datum.target_tokens_T.tolist() == [2, 3, 10, 11, 20, 30]
    assert datum.logprobs_T is not None
    np.testing.assert_array_equal(datum.logprobs_T, np.float32([0, 0, -0.5, -0.6, 0, -0.7]))
    assert datum.advantages_T is not None
    assert datum.advantages_T.tolist() == [0, 0, 0.25, 0.25, 0, 0.25]
    assert datum.mask_T is not None
    assert datum.mask_T.tolist() == [0, 0, 1, 1, 0, 1]
    assert datum.weights_T is None


def test_cookbook_advantage_example() -> None:
    result = compute_advantages([group("g", [1.0, 0.0, 0.0, 1.0])])
    assert result.kept[0].advantages_G.tolist() == [0.5, -0.5, -0.5, 0.5]
    assert result.kept[0].rewards_G.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert result.by_trajectory() == {"g/0": 0.5, "g/1": -0.5, "g/2": -0.5, "g/3": 0.5}


def test_prefix_break_starts_a_new_datum_and_masked_turn_carries_no_advantage() -> None:
    trajectory = Trajectory(
        transitions=(
            transition([1, 2], [10], done=False),
            transition([1, 2, 10, 5], [11], done=False, mask_turn=True),
            transition([7, 8], [12, 13]),  # not an extension of [1, 2, 10, 5, 11]
        )
    )
    first, second = trajectory_datums(trajectory, 2.0)
    assert first.target_tokens_T.tolist() == [2, 10, 5, 11]
    assert first.mask_T is not None
    assert first.mask_T.tolist() == [0, 1, 0, 0]
    assert first.advantages_T is not None
    assert first.advantages_T.tolist() == [0, 2, 0, 0]
    assert first.logprobs_T is not None
    assert first.logprobs_T.tolist() == [0, -0.5, 0, -0.5]  # a masked turn keeps its sampling logprobs
    assert second.model_input.to_tokens().tolist() == [7, 8, 12]
    assert second.target_tokens_T.tolist() == [8, 12, 13]


def test_images_occupy_their_positions_and_target_zero() -> None:
    image = ImageChunk(b"img", "png", 3)
    observation = ModelInput(chunks=(TokenChunk([1]), image, TokenChunk([2])))
    again = ModelInput(chunks=(TokenChunk([1]), image, TokenChunk([2, 9, 4])))
    trajectory = Trajectory((transition(observation, [9], done=False), transition(again, [5])))
    (datum,) = trajectory_datums(trajectory, 1.0)
    assert datum.model_input.chunks == (TokenChunk([1]), image, TokenChunk([2, 9, 4]))
    assert datum.target_tokens_T.tolist() == [0, 0, 0, 2, 9, 4, 5]
    assert datum.mask_T is not None
    assert datum.mask_T.tolist() == [0, 0, 0, 0, 1, 0, 1]


def test_constant_groups_keep_drop_and_skip() -> None:
    groups = [group("a", [1.0, 1.0]), group("b", [0.1, 0.1, 0.1]), group("c", [])]
    kept = compute_advantages(groups)
    assert kept.kept_group_ids == ("a", "b")
    assert kept.dropped_group_ids == ("c",)  # no finished member
    assert all(np.all(g.advantages_G == 0) for g in kept.kept)  # exactly zero, even for 0.1 (mean != 0.1)
    assert not kept.has_signal
    dropped = compute_advantages(groups, AdvantageConfig(constant_groups="drop"))
    assert dropped.is_empty  # the loop must skip the step (the cookbook would train on one constant group)
    assert dropped.dropped_group_ids == ("a", "b", "c")
    assert assemble_batch(groups, dropped).is_empty


def test_std_normalization() -> None:
    rewards = np.array([1.0, 0.0, 0.0, 0.0])
    config = AdvantageConfig(normalize_std=True, std_eps=1e-6)
    expected = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
    np.testing.assert_allclose(group_advantages(rewards, config), expected.astype(np.float32))
    result = compute_advantages([group("g", rewards.tolist())], config)
    assert float(np.std(result.kept[0].advantages_G)) == pytest.approx(1.0, rel=1e-5)


def test_float64_centering_keeps_close_rewards_apart() -> None:
    """Rewards closer than float32 resolves at their magnitude still get distinct advantages (deliberate)."""
    result = compute_advantages([group("g", [1000.0001, 1000.0002])])
    advantages = result.kept[0].advantages_G
    assert advantages[0] < 0 < advantages[1]
    np.testing.assert_allclose(advantages, [-5e-5, 5e-5], rtol=1e-4)


# ---------------------------------------------------------------------------------------------------- properties


@given(GROUP_LISTS, st.booleans(), st.sampled_from(["keep", "drop"]))
def test_advantages_sum_to_zero_per_group(groups: list[TrajectoryGroup], normalize: bool, policy: str) -> None:
    config = AdvantageConfig(normalize_std=normalize, constant_groups=policy)  # type: ignore[arg-type]  # drawn
    result = compute_advantages(groups, config)
    for kept in result.kept:
        total_G = {g.group_id: g for g in groups}[kept.group_id].total_rewards_G()
        scale = float(np.max(np.abs(total_G)))
        if normalize:
            scale = float(np.max(np.abs(kept.advantages_G)))
        assert abs(float(np.sum(kept.advantages_G, dtype=np.float64))) <= 1e-6 * max(scale, 1e-30) * len(total_G)
        assert kept.trajectory_ids == {g.group_id: g for g in groups}[kept.group_id].trajectory_ids
    ids = {g.group_id for g in groups}
    assert set(result.kept_group_ids) | set(result.dropped_group_ids) == ids
    assert not set(result.kept_group_ids) & set(result.dropped_group_ids)


def _action_positions(trajectory: Trajectory, datums: tuple[Datum, ...]) -> None:
    """mask == 1 exactly at the action tokens of unmasked turns, in order, with their logprobs."""
    expected_tokens = [t.action_tokens_T for t in trajectory.transitions if not t.mask_turn]
    expected_logprobs = [t.action_logprobs_T for t in trajectory.transitions if not t.mask_turn]
    got_tokens: list[np.ndarray] = []
    got_logprobs: list[np.ndarray] = []
    for datum in datums:
        assert datum.mask_T is not None
        assert datum.logprobs_T is not None
        on = datum.mask_T == 1
        got_tokens.append(datum.target_tokens_T[on])
        got_logprobs.append(datum.logprobs_T[on])
    np.testing.assert_array_equal(np.concatenate([*got_tokens, []]), np.concatenate([*expected_tokens, []]))
    np.testing.assert_array_equal(np.concatenate([*got_logprobs, []]), np.concatenate([*expected_logprobs, []]))


@given(rlt.trajectories(images=True), st.floats(-10, 10, allow_nan=False))
def test_assembly_properties(trajectory: Trajectory, advantage: float) -> None:
    before = to_json(trajectory)
    datums = trajectory_datums(trajectory, advantage)
    assert to_json(trajectory) == before  # never mutates its input
    _action_positions(trajectory, datums)
    advantage32 = np.float32(advantage)
    for datum in datums:
        length = datum.model_input.length
        assert datum.length == length
        for name in ("target_tokens_T", "logprobs_T", "advantages_T", "mask_T"):
            array = getattr(datum, name)
            assert array.shape == (length,)  # every array has the same length
            assert not array.flags.writeable
        assert datum.advantages_T is not None
        assert datum.mask_T is not None
        np.testing.assert_array_equal(datum.advantages_T, np.where(datum.mask_T == 1, advantage32, 0))
        # the arrays are fresh, not views of the trajectory's
        for t in trajectory.transitions:
            assert not np.shares_memory(datum.target_tokens_T, t.action_tokens_T)
            assert not np.shares_memory(datum.logprobs_T, t.action_logprobs_T)
        # the fast construction makes exactly what the validating constructor makes
        rebuilt = Datum(
            model_input=datum.model_input,
            target_tokens_T=datum.target_tokens_T,
            logprobs_T=datum.logprobs_T,
            advantages_T=datum.advantages_T,
            mask_T=datum.mask_T,
        )
        assert rebuilt == datum
    # one datum per run of extensions: more datums only when an observation breaks the prefix
    assert 1 <= len(datums) <= len(trajectory.transitions)


@given(GROUP_LISTS, st.sampled_from(["keep", "drop"]))
def test_assemble_batch_keys_by_id_and_never_mutates(groups: list[TrajectoryGroup], policy: str) -> None:
    result = compute_advantages(groups, AdvantageConfig(constant_groups=policy))  # type: ignore[arg-type]  # drawn
    before = [to_json(g) for g in groups]
    result_before = to_json(result)
    batch = assemble_batch(groups, result)
    assert [to_json(g) for g in groups] == before
    assert to_json(result) == result_before
    by_trajectory = result.by_trajectory()
    expected = [
        (g.group_id, trajectory_id, len(trajectory_datums(trajectory, by_trajectory[trajectory_id])))
        for g in groups
        if g.group_id in result.kept_group_ids
        for trajectory_id, trajectory in zip(g.trajectory_ids, g.trajectories, strict=True)
    ]
    assert batch.group_ids_D == tuple(gid for gid, _, n in expected for _ in range(n))
    assert batch.trajectory_ids_D == tuple(tid for _, tid, n in expected for _ in range(n))
    # matched by id: reversing the order of the kept records changes nothing
    reordered = AdvantageResult(kept=tuple(reversed(result.kept)), dropped_group_ids=result.dropped_group_ids)
    assert assemble_batch(groups, reordered) == batch
    for datum, trajectory_id in zip(batch.datums, batch.trajectory_ids_D, strict=True):
        assert datum.advantages_T is not None
        assert set(np.unique(datum.advantages_T).tolist()) <= {0.0, float(np.float32(by_trajectory[trajectory_id]))}


def test_assembly_refuses_what_the_cookbook_refuses() -> None:
    one_position = Trajectory((transition([], [7]),))
    with pytest.raises(ValidationError, match="at least 2"):
        trajectory_datums(one_position, 1.0)
    image_last = Trajectory((transition(ModelInput(chunks=(TokenChunk([1]), ImageChunk(b"i", "png", 2))), []),))
    with pytest.raises(ValidationError, match="image"):
        trajectory_datums(image_last, 1.0)
    assert trajectory_datums(Trajectory(()), 1.0) == ()
    assert trajectory_datums(Trajectory((transition([], []),)), 1.0) == ()


# ---------------------------------------------------------------------------------------------------- KL


def _naive_discounted(values: np.ndarray, gamma: float) -> np.ndarray:
    out = np.zeros(len(values))
    running = 0.0
    for t in range(len(values) - 1, -1, -1):
        running = values[t] + gamma * running
        out[t] = running
    return out


@given(
    st.integers(0, 400).flatmap(lambda n: st.lists(st.floats(-5, 5), min_size=n, max_size=n)),
    st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
)
def test_discounted_future_sum_matches_loop(values: list[float], gamma: float) -> None:
    array = np.asarray(values, dtype=np.float64)
    np.testing.assert_allclose(discounted_future_sum(array, gamma), _naive_discounted(array, gamma), atol=1e-9)


@given(GROUP_LISTS, st.sampled_from([None, 0.0, 0.9]), st.floats(0, 2), st.data())
def test_kl_penalty_is_pure_and_masked(
    groups: list[TrajectoryGroup], discount: float | None, coef: float, data: st.DataObject
) -> None:
    batch = assemble_batch(groups, compute_advantages(groups))
    reference_D = [
        np.asarray(data.draw(st.lists(st.floats(-10, 0, width=32), min_size=d.length, max_size=d.length)), np.float32)
        for d in batch.datums
    ]
    before = to_json(batch)
    new, metrics = kl_penalty(batch, reference_D, coef, discount)
    assert to_json(batch) == before  # pure: the input batch is untouched
    assert new.trajectory_ids_D == batch.trajectory_ids_D
    assert new.group_ids_D == batch.group_ids_D
    assert math.isfinite(metrics["kl_policy_base"])
    for old, datum in zip(batch.datums, new.datums, strict=True):
        assert datum.advantages_T is not None
        assert datum.mask_T is not None
        assert old.advantages_T is not None
        np.testing.assert_array_equal(datum.advantages_T[datum.mask_T == 0], 0)  # only action positions move
        np.testing.assert_array_equal(datum.target_tokens_T, old.target_tokens_T)
    if coef == 0:
        assert new == batch
    prompts = reference_prompts(batch)
    for datum, prompt in zip(batch.datums, prompts, strict=True):
        assert prompt.length == datum.length + 1


def test_kl_penalty_worked_example() -> None:
    (datum,) = trajectory_datums(WORKED_EXAMPLE, 0.0)
    batch = RLBatch((datum,), ("g/0",), ("g",))
    reference = np.float32([-9, -9, -1.0, -0.6, -9, -0.2])
    new, metrics = kl_penalty(batch, [reference], coef=0.5)
    # diffs on actions: -0.5+1.0=0.5, 0, -0.7+0.2=-0.5 -> avg 0; penalty = 0.5 * (0 - diff)
    assert metrics["kl_policy_base"] == pytest.approx(0.0, abs=1e-7)
    assert new.datums[0].advantages_T is not None
    np.testing.assert_allclose(new.datums[0].advantages_T, [0, 0, -0.25, 0, 0, 0.25], atol=1e-7)
    discounted, _ = kl_penalty(batch, [reference], coef=0.5, discount=0.5)
    assert discounted.datums[0].advantages_T is not None
    # future sums of [0,0,-.25,0,0,.25] at gamma .5, then masked: pos2 = -.25 + .5**3 * .25, pos3 = .5**2 * .25
    np.testing.assert_allclose(discounted.datums[0].advantages_T, [0, 0, -0.21875, 0.0625, 0, 0.25], atol=1e-7)
    assert [p.to_tokens().tolist() for p in reference_prompts(batch)] == [[1, 2, 3, 10, 11, 20, 30]]


# ---------------------------------------------------------------------------------------------------- loss inputs

LOSSES: list[LossConfig] = [ImportanceSamplingLoss(), PPOLoss(), CISPOLoss(0.5, 2.0), DROLoss(beta=0.1)]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: loss.loss_fn)
def test_loss_configs_and_datums(loss: LossConfig) -> None:
    assert set(loss.config()) == set(LOSS_CONFIG_DEFAULTS[loss.loss_fn])
    assert dict(resolve_loss_config(loss.loss_fn, loss.config())) == loss.config()
    batch = assemble_batch([group("g", [1.0, 0.0])], compute_advantages([group("g", [1.0, 0.0])]))
    datums = loss_datums(batch, loss)
    assert len(datums) == batch.size
    for new, old in zip(datums, batch.datums, strict=True):
        assert set(new.loss_inputs()) == set(LOSS_INPUTS[loss.loss_fn])
        assert new.mask_T is None
        for key in LOSS_INPUTS[loss.loss_fn]:
            name = LOSS_INPUT_FIELDS[key]
            assert np.array_equal(getattr(new, name), getattr(old, name))
        assert new == Datum(
            model_input=new.model_input, **{LOSS_INPUT_FIELDS[k]: v for k, v in new.loss_inputs().items()}
        )
    assert PPOLoss().config() == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}


# ---------------------------------------------------------------------------------------------------- metrics


def test_rollout_metrics_values() -> None:
    groups = [
        group("a", [1.0, 0.0], tags=("math",)),
        group("b", [1.0, 1.0], tags=("math", "hard"), failures=2),
        group("c", []),
    ]
    result = compute_advantages(groups, AdvantageConfig(constant_groups="drop"))
    metrics = rollout_metrics(groups, result)
    assert metrics["reward/mean"] == pytest.approx(0.75)
    assert metrics["reward/min"] == 0.0
    assert metrics["reward/max"] == 1.0
    assert metrics["env/math/reward_mean"] == pytest.approx(0.75)
    assert metrics["env/hard/reward_mean"] == 1.0
    assert metrics["env/hard/trajectories"] == 2.0
    assert metrics["groups/total"] == 3.0
    assert metrics["groups/kept"] == 1.0
    assert metrics["groups/dropped"] == 2.0
    assert metrics["groups/constant_frac"] == pytest.approx(1 / 3)  # "c" has no member: not constant
    assert metrics["failures/timeout"] == 2.0
    assert metrics["failures/exception"] == 0.0
    assert metrics["failures/total"] == 2.0
    assert metrics["tokens/action_total"] == 8.0
    assert metrics["episode/action_tokens_mean"] == 2.0
    assert metrics["advantage/abs_mean"] == 0.5
    assert metrics["turns/masked_frac"] == 0.0


@given(GROUP_LISTS, st.randoms(use_true_random=False))
def test_rollout_metrics_do_not_depend_on_group_order(groups: list[TrajectoryGroup], random: object) -> None:
    result = compute_advantages(groups, AdvantageConfig(constant_groups="drop"))
    metrics = rollout_metrics(groups, result)
    shuffled = list(groups)
    random.shuffle(shuffled)  # type: ignore[attr-defined]  # a hypothesis Random
    other = rollout_metrics(shuffled, result)
    assert metrics.keys() == other.keys()
    for key, value in metrics.items():
        assert other[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert all(math.isfinite(value) for value in metrics.values())


# ---------------------------------------------------------------------------------------------------- serde


@given(GROUP_LISTS)
def test_serde_round_trips(groups: list[TrajectoryGroup]) -> None:
    result = compute_advantages(groups, AdvantageConfig(constant_groups="drop"))
    assert from_json(to_json(result), AdvantageResult) == result
    for kept in result.kept:
        assert from_json(to_json(kept), GroupAdvantages) == kept
    batch = assemble_batch(groups, result)
    assert from_json(to_json(batch), RLBatch) == batch


@pytest.mark.parametrize(
    "record",
    [
        AdvantageConfig(),
        AdvantageConfig(normalize_std=True, constant_groups="drop", std_eps=1e-3),
        *LOSSES,
        RLBatch((), (), ()),
    ],
    ids=repr,
)
def test_serde_round_trips_of_configs(record: object) -> None:
    assert from_json(to_json(record), type(record)) == record


# ---------------------------------------------------------------------------------------------------- typed errors


def test_advantage_config_errors() -> None:
    with pytest.raises(ConfigError, match="constant_groups"):
        AdvantageConfig(constant_groups="never")  # type: ignore[arg-type]  # the error under test
    with pytest.raises(ConfigError, match="std_eps"):
        AdvantageConfig(std_eps=0.0)
    with pytest.raises(ConfigError, match="std_eps"):
        AdvantageConfig(std_eps=math.inf)
    with pytest.raises(ValidationError, match="normalize_std"):
        AdvantageConfig(normalize_std=1)  # type: ignore[arg-type]  # the error under test


def test_group_advantages_errors() -> None:
    with pytest.raises(ShapeError, match="advantages_G"):
        GroupAdvantages("g", ("g/0", "g/1"), [0.5], [1.0, 0.0])
    with pytest.raises(ShapeError, match="rewards_G"):
        GroupAdvantages("g", ("g/0",), [0.5], [1.0, 0.0])
    with pytest.raises(ValidationError, match="repeats"):
        GroupAdvantages("g", ("g/0", "g/0"), [0.5, -0.5], [1.0, 0.0])
    with pytest.raises(NonFiniteError):
        GroupAdvantages("g", ("g/0",), [math.nan], [1.0])
    with pytest.raises(ValidationError, match="not a trajectory"):
        GroupAdvantages("g", ("g/0",), [0.0], [1.0]).advantage_of("g/9")


def test_advantage_result_errors() -> None:
    kept = GroupAdvantages("g", ("g/0",), [0.0], [1.0])
    with pytest.raises(ValidationError, match="twice"):
        AdvantageResult(kept=(kept,), dropped_group_ids=("g",))
    with pytest.raises(ValidationError, match=r"kept\[0\]"):
        AdvantageResult(kept=("g",))  # type: ignore[arg-type]  # the error under test


def test_compute_advantages_errors() -> None:
    with pytest.raises(ValidationError, match="appears twice"):
        compute_advantages([group("g", [1.0]), group("g", [0.0])])
    with pytest.raises(ValidationError, match=r"groups\[0\]"):
        compute_advantages(["g"])  # type: ignore[list-item]  # the error under test
    with pytest.raises(ValidationError, match="config"):
        compute_advantages([], {"normalize_std": True})  # type: ignore[arg-type]  # the error under test


def test_trajectory_datums_errors() -> None:
    with pytest.raises(NonFiniteError, match="advantage"):
        trajectory_datums(WORKED_EXAMPLE, math.nan)
    with pytest.raises(ValidationError, match="advantage"):
        trajectory_datums(WORKED_EXAMPLE, "1")  # type: ignore[arg-type]  # the error under test
    with pytest.raises(ValidationError, match="trajectory"):
        trajectory_datums(WORKED_EXAMPLE.transitions, 1.0)  # type: ignore[arg-type]  # the error under test


def test_rl_batch_errors() -> None:
    (datum,) = trajectory_datums(WORKED_EXAMPLE, 1.0)
    with pytest.raises(ShapeError, match="trajectory_ids_D"):
        RLBatch((datum,), (), ("g",))
    with pytest.raises(ShapeError, match="group_ids_D"):
        RLBatch((datum,), ("g/0",), ())
    with pytest.raises(ValidationError, match=r"datums\[0\]"):
        RLBatch(("datum",), ("g/0",), ("g",))  # type: ignore[arg-type]  # the error under test


def test_assemble_batch_errors() -> None:
    a, b = group("a", [1.0, 0.0]), group("b", [0.0, 1.0])
    result = compute_advantages([a])
    with pytest.raises(ValidationError, match="neither kept nor dropped"):
        assemble_batch([a, b], result)
    with pytest.raises(ValidationError, match="lacks the kept groups"):
        assemble_batch([], result)
    with pytest.raises(ValidationError, match="appears twice"):
        assemble_batch([a, a], result)
    other = attrs.evolve(a, member_indices=(0, 5))
    with pytest.raises(ValidationError, match="trajectories"):
        assemble_batch([other], result)
    with pytest.raises(ValidationError, match="advantages"):
        assemble_batch([a], {"a": 1.0})  # type: ignore[arg-type]  # the error under test


def test_kl_penalty_errors() -> None:
    (datum,) = trajectory_datums(WORKED_EXAMPLE, 1.0)
    batch = RLBatch((datum,), ("g/0",), ("g",))
    good = [np.zeros(datum.length, dtype=np.float32)]
    with pytest.raises(ShapeError, match="1 datums"):
        kl_penalty(batch, [], 1.0)
    with pytest.raises(ShapeError, match="targets"):
        kl_penalty(batch, [np.zeros(datum.length + 1)], 1.0)
    with pytest.raises(NonFiniteError):
        kl_penalty(batch, [np.full(datum.length, np.nan)], 1.0)
    with pytest.raises(ConfigError, match="coef"):
        kl_penalty(batch, good, -1.0)
    with pytest.raises(NonFiniteError, match="coef"):
        kl_penalty(batch, good, math.inf)
    with pytest.raises(ConfigError, match="discount"):
        kl_penalty(batch, good, 1.0, discount=1.5)
    bare = RLBatch((Datum(datum.model_input, datum.target_tokens_T),), ("g/0",), ("g",))
    with pytest.raises(ValidationError, match="logprobs_T"):
        kl_penalty(bare, good, 1.0)
    with pytest.raises(ConfigError, match="discount"):
        discounted_future_sum(np.zeros(3), -0.1)
    with pytest.raises(ShapeError, match="1-D"):
        discounted_future_sum(np.zeros((2, 2)), 0.5)


def test_loss_config_errors() -> None:
    with pytest.raises(ConfigError, match="clip"):
        PPOLoss(clip_low=1.5, clip_high=1.2)
    with pytest.raises(ConfigError, match="clip"):
        CISPOLoss(clip_low=0.0, clip_high=1.2)
    with pytest.raises(ConfigError, match="beta"):
        DROLoss(beta=-1.0)
    with pytest.raises(ConfigError, match="clip_low_threshold"):
        PPOLoss(clip_low="0.8")  # type: ignore[arg-type]  # the error under test
    batch = RLBatch((), (), ())
    with pytest.raises(ValidationError, match="loss"):
        loss_datums(batch, "ppo")  # type: ignore[arg-type]  # the error under test
    (datum,) = trajectory_datums(WORKED_EXAMPLE, 1.0)
    bare = RLBatch((Datum(datum.model_input, datum.target_tokens_T),), ("g/0",), ("g",))
    with pytest.raises(ValidationError, match="logprobs_T"):
        loss_datums(bare, PPOLoss())


def test_rollout_metrics_errors() -> None:
    with pytest.raises(ValidationError, match="appears twice"):
        rollout_metrics([group("a", [1.0]), group("a", [0.0])], AdvantageResult(()))
    result = compute_advantages([group("a", [1.0, 0.0])])
    with pytest.raises(ValidationError, match="not in groups"):
        rollout_metrics([], result)
