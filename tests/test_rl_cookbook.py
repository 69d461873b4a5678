"""Differential tests of the RL pure steps against tinker-cookbook 0.6.1 (``rl/data_processing.py``,
``rl/metrics.py``) on hypothesis-generated trajectory groups: single- and multi-turn, prefix breaks (fresh, changed
and cut observations), parse-error-masked turns, image chunks, empty observations and actions.

What is compared:

* Assembly: for each trajectory, ``trajectory_datums(t, a)`` equals the cookbook's ``trajectory_to_data(t, a,
  include_provenance=False)`` converted with :func:`tinkerflow.interop.datum_from_tinker`: model input chunks,
  target tokens, logprobs, advantages and mask, exactly (dtype and values), given the same advantage. Provenance
  spans are not compared (tinkerflow's transitions carry no sampled-sequence ids, so there are none to produce).
  Where the cookbook refuses a sequence (fewer than 2 positions, or ending with an image), tinkerflow raises
  ``ValidationError``.
* Advantages: equal to the cookbook's within 2 float32 ulps of the group's largest |reward| (tinkerflow centers
  in float64 and rounds once; the cookbook rounds rewards to float32 and centers in float32).
* Batches: ``assemble_batch`` gives the cookbook's datums in the cookbook's order (advantages within the same
  tolerance, everything else exact), with ids matching the cookbook's (group_idx, traj_idx) metadata.
* Constant-group dropping matches ``remove_constant_reward_groups`` except when every group is constant (the
  cookbook keeps one and trains on zero advantages; tinkerflow keeps none: skip the step).
* KL penalty equals ``incorporate_kl_penalty`` (float32 tolerance), run with a fake reference sampler; with a
  discount, equal on action positions and zero elsewhere (deliberate difference, see ``tinkerflow.rl.kl``).
"""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinkerflow.datum import Datum
from tinkerflow.errors import ValidationError
from tinkerflow.interop import datum_from_tinker, datum_to_tinker, model_input_from_tinker, model_input_to_tinker
from tinkerflow.model_input import ModelInput, TokenChunk
from tinkerflow.rl import testing as rlt
from tinkerflow.rl.advantages import AdvantageConfig, compute_advantages
from tinkerflow.rl.assembly import RLBatch, assemble_batch, trajectory_datums
from tinkerflow.rl.kl import kl_penalty, reference_prompts
from tinkerflow.rl.types import Trajectory, TrajectoryGroup, Transition

cookbook_dp = pytest.importorskip("tinker_cookbook.rl.data_processing")
cookbook_types = pytest.importorskip("tinker_cookbook.rl.types")
cookbook_metrics = pytest.importorskip("tinker_cookbook.rl.metrics")
from tinker_cookbook.completers import TokensWithLogprobs  # noqa: E402
from tinker_cookbook.exceptions import DataValidationError  # noqa: E402

GROUPS_CHECKED = {
    "groups": 0,
    "trajectories": 0,
    "multi_turn": 0,
    "split": 0,  # trajectories whose sequence broke into several datums
    "masked_turns": 0,
    "with_images": 0,
    "datums": 0,
    "refused": 0,
}


def to_cookbook_group(group: TrajectoryGroup) -> Any:
    """The same group as tinker-cookbook records (``mask_turn`` -> the ``parse_error_masked`` metric)."""
    key = cookbook_types.PARSE_ERROR_MASKED_METRIC_KEY
    trajectories = []
    for trajectory in group.trajectories:
        transitions = [
            cookbook_types.Transition(
                ob=model_input_to_tinker(t.observation),
                ac=TokensWithLogprobs(
                    tokens=t.action_tokens_T.tolist(), maybe_logprobs=t.action_logprobs_T.tolist(), stop_reason="stop"
                ),
                reward=t.reward,
                episode_done=t.done,
                metrics={**t.metrics, **({key: 1.0} if t.mask_turn else {})},
            )
            for t in trajectory.transitions
        ]
        trajectories.append(
            cookbook_types.Trajectory(
                transitions=transitions, final_ob=model_input_to_tinker(trajectory.final_observation)
            )
        )
    return cookbook_types.TrajectoryGroup(
        trajectories_G=trajectories, final_rewards_G=list(group.group_rewards_G), metrics_G=list(group.metrics_G)
    )


def _tolerance(rewards: np.ndarray) -> float:
    scale = float(np.max(np.abs(rewards))) if rewards.size else 0.0
    return 2.0 * float(np.spacing(np.float32(max(scale, 1e-30))))


def _assert_same_except_advantages(ours: Datum, theirs: Datum, tolerance: float) -> None:
    assert ours.model_input == theirs.model_input
    assert ours.target_tokens_T.dtype == theirs.target_tokens_T.dtype
    np.testing.assert_array_equal(ours.target_tokens_T, theirs.target_tokens_T)
    for name in ("logprobs_T", "mask_T"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert ours.advantages_T is not None
    assert theirs.advantages_T is not None
    assert ours.advantages_T.dtype == theirs.advantages_T.dtype == np.float32
    np.testing.assert_allclose(ours.advantages_T, theirs.advantages_T, rtol=0, atol=tolerance)


_GROUP = rlt.trajectory_groups(group_id="g", min_size=0, max_size=6, images=True, empty=True)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
@given(_GROUP)
def test_advantages_and_datums_match_cookbook(group: TrajectoryGroup) -> None:
    GROUPS_CHECKED["groups"] += 1
    cookbook_group = to_cookbook_group(group)
    result = compute_advantages([group])
    if not group.trajectories:
        assert result.is_empty
        assert result.dropped_group_ids == ("g",)
        return
    (theirs_G,) = cookbook_dp.compute_advantages([cookbook_group])
    ours_G = result.kept[0].advantages_G
    assert ours_G.dtype == np.float32
    assert ours_G.shape == tuple(theirs_G.shape)
    np.testing.assert_allclose(ours_G, theirs_G.numpy(), rtol=0, atol=_tolerance(group.total_rewards_G()))
    for trajectory, cookbook_trajectory, advantage in zip(
        group.trajectories, cookbook_group.trajectories_G, theirs_G.tolist(), strict=True
    ):
        GROUPS_CHECKED["trajectories"] += 1
        GROUPS_CHECKED["multi_turn"] += len(trajectory.transitions) > 1
        GROUPS_CHECKED["masked_turns"] += sum(t.mask_turn for t in trajectory.transitions)
        GROUPS_CHECKED["with_images"] += any(t.observation.has_images for t in trajectory.transitions)
        try:
            expected = cookbook_dp.trajectory_to_data(cookbook_trajectory, advantage, include_provenance=False)
        except DataValidationError:
            GROUPS_CHECKED["refused"] += 1
            with pytest.raises(ValidationError):
                trajectory_datums(trajectory, advantage)
            continue
        ours = trajectory_datums(trajectory, advantage)
        assert ours == tuple(datum_from_tinker(datum) for datum in expected)
        GROUPS_CHECKED["datums"] += len(ours)
        GROUPS_CHECKED["split"] += len(ours) > 1


def test_differential_coverage() -> None:
    """The property above saw >= 1,000 groups and most made datums. It normally ran just before (file order);
    when a parallel run put it on another worker, it is run here, so this test never passes unchecked."""
    if GROUPS_CHECKED["groups"] == 0:
        test_advantages_and_datums_match_cookbook()
    print(GROUPS_CHECKED)
    assert GROUPS_CHECKED["groups"] >= 1000
    assert GROUPS_CHECKED["datums"] > GROUPS_CHECKED["refused"] > 0
    for key in ("multi_turn", "split", "masked_turns", "with_images"):
        assert GROUPS_CHECKED[key] >= 100, key


_BATCH = rlt.trajectory_group_lists(min_groups=1, max_groups=5, min_size=0, max_size=5, images=True)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
@given(_BATCH, st.booleans())
def test_batch_matches_cookbook(groups: list[TrajectoryGroup], drop: bool) -> None:
    cookbook_groups = [to_cookbook_group(group) for group in groups]
    config = AdvantageConfig(constant_groups="drop" if drop else "keep")
    result = compute_advantages(groups, config)
    if drop:
        survivors = cookbook_dp.remove_constant_reward_groups(cookbook_groups)
        kept_indices = [next(i for i, c in enumerate(cookbook_groups) if c is s) for s in survivors]
        if all(len(set(g.total_rewards_G().tolist())) <= 1 for g in groups):
            assert result.is_empty  # the cookbook keeps groups[0] and steps with zero gradient: we skip
            assert kept_indices == [0]
            return
        assert result.kept_group_ids == tuple(groups[i].group_id for i in kept_indices)
    else:
        kept_indices = [i for i, group in enumerate(groups) if group.trajectories]
        assert result.kept_group_ids == tuple(groups[i].group_id for i in kept_indices)
    kept_groups = [cookbook_groups[i] for i in kept_indices]
    advantages_P = cookbook_dp.compute_advantages(kept_groups)
    expected_D, metadata_D = cookbook_dp.assemble_training_data(kept_groups, advantages_P, include_provenance=False)
    batch = assemble_batch(groups, result)
    assert batch.size == len(expected_D)
    for d, (ours, theirs, meta) in enumerate(zip(batch.datums, expected_D, metadata_D, strict=True)):
        group = groups[kept_indices[meta["group_idx"]]]
        assert batch.group_ids_D[d] == group.group_id
        assert batch.trajectory_ids_D[d] == group.trajectory_ids[meta["traj_idx"]]
        _assert_same_except_advantages(ours, datum_from_tinker(theirs), _tolerance(group.total_rewards_G()))


def _flat(model_input: ModelInput) -> list[object]:
    out: list[object] = []
    for chunk in model_input.chunks:
        out.extend(chunk.tokens_T.tolist() if isinstance(chunk, TokenChunk) else [chunk])
    return out


class _FakeReferenceSampler:
    """Answers ``sample(prompt, ..., include_prompt_logprobs=True)`` with given prompt logprobs, in call order."""

    def __init__(self, prompt_logprobs: list[list[float | None]]) -> None:
        self.answers = iter(prompt_logprobs)
        self.prompts: list[Any] = []

    def sample(self, prompt: Any, num_samples: int, sampling_params: Any, include_prompt_logprobs: bool) -> Any:
        assert include_prompt_logprobs
        self.prompts.append(prompt)
        response = SimpleNamespace(prompt_logprobs=next(self.answers), prompt_cache_hit_tokens=0, sequences=[])

        async def done() -> Any:
            return response

        return SimpleNamespace(coroutine=done)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
@given(
    rlt.trajectory_group_lists(min_groups=1, max_groups=3, min_size=1, max_size=4),
    st.sampled_from([None, 0.0, 0.5, 0.9, 1.0]),
    st.sampled_from([0.0, 0.05, 1.0]),
    st.data(),
)
def test_kl_penalty_matches_cookbook(
    groups: list[TrajectoryGroup], discount: float | None, coef: float, data: st.DataObject
) -> None:
    batch = assemble_batch(groups, compute_advantages(groups))
    if batch.is_empty or not any(float(d.mask_T.sum()) for d in batch.datums if d.mask_T is not None):
        return
    reference_D = [
        np.asarray(data.draw(st.lists(st.floats(-20, 0, width=32), min_size=d.length, max_size=d.length)), np.float32)
        for d in batch.datums
    ]
    cookbook_data = [datum_to_tinker(d, keep_mask=True) for d in batch.datums]
    sampler = _FakeReferenceSampler([[None, *reference.tolist()] for reference in reference_D])
    cookbook_metrics_out, _ = asyncio.run(
        cookbook_metrics.incorporate_kl_penalty(cookbook_data, sampler, coef, 0.0 if discount is None else discount)
    )
    new_batch, metrics = kl_penalty(batch, reference_D, coef, discount)
    # same positions (the cookbook appends the last target as a chunk of its own; we merge it into the last chunk)
    assert [_flat(model_input_from_tinker(p)) for p in sampler.prompts] == [_flat(p) for p in reference_prompts(batch)]
    np.testing.assert_allclose(metrics["kl_policy_base"], cookbook_metrics_out["kl_policy_base"], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(new_batch.datums, cookbook_data, strict=True):
        expected = theirs.loss_fn_inputs["advantages"].to_numpy()
        assert ours.mask_T is not None
        assert ours.advantages_T is not None
        if discount:  # the cookbook also spreads the discounted penalty onto mask-0 positions; we do not
            expected = np.where(ours.mask_T == 1, expected, ours.advantages_T)
        scale = 1.0 + float(np.max(np.abs(expected), initial=0.0))
        np.testing.assert_allclose(ours.advantages_T, expected, rtol=0, atol=2e-5 * scale)
    assert isinstance(new_batch, RLBatch)


def test_discounted_kl_cookbook_spreads_penalty_onto_observations() -> None:
    """The documented difference, on the worked example: the cookbook's discounted penalty reaches mask-0 positions."""

    trajectory = Trajectory(
        transitions=(
            Transition(ModelInput.from_tokens([1, 2, 3]), [10, 11], [-0.5, -0.6], 0.0, False),
            Transition(ModelInput.from_tokens([1, 2, 3, 10, 11, 20]), [30], [-0.7], 1.0, True),
        )
    )
    datums = trajectory_datums(trajectory, 0.25)
    batch = RLBatch(datums=datums, trajectory_ids_D=("g/0",), group_ids_D=("g",))
    reference = [np.array([-1.0, -1.0, -0.1, -0.2, -1.0, -2.0], dtype=np.float32)]
    cookbook_data = [datum_to_tinker(d, keep_mask=True) for d in datums]
    sampler = _FakeReferenceSampler([[None, *reference[0].tolist()]])
    asyncio.run(cookbook_metrics.incorporate_kl_penalty(cookbook_data, sampler, 1.0, 0.9))
    theirs = cookbook_data[0].loss_fn_inputs["advantages"].to_numpy()
    ours = kl_penalty(batch, reference, 1.0, 0.9)[0].datums[0].advantages_T
    assert ours is not None
    observation = np.array([True, True, False, False, True, False])
    assert np.all(theirs[observation][1:] != 0)  # cookbook: observation positions before an action get advantage
    assert np.all(ours[observation] == 0)
    np.testing.assert_allclose(ours[~observation], theirs[~observation], rtol=1e-6)


def test_cookbook_trains_zero_gradient_when_all_groups_constant() -> None:
    """The cookbook fault we avoid: every group constant -> it keeps one; tinkerflow keeps none (skip the step)."""
    groups = [TrajectoryGroup(f"g{k}", (), (), (), ()) for k in range(2)]  # empty groups are constant for both
    constant = [to_cookbook_group(group) for group in groups]
    assert len(cookbook_dp.remove_constant_reward_groups(constant)) == 1
    assert compute_advantages(groups, AdvantageConfig(constant_groups="drop")).is_empty


def test_many_groups_one_batch_matches_cookbook() -> None:
    """A deterministic larger batch (200 groups from the strategy's examples) assembled in one call."""
    groups: list[TrajectoryGroup] = []

    @settings(max_examples=200, database=None, derandomize=True, deadline=None)
    @given(rlt.trajectory_groups(min_size=1, max_size=4))
    def collect(group: TrajectoryGroup) -> None:
        groups.append(group)

    collect()
    groups = [
        TrajectoryGroup(f"b/{k}", g.trajectories, g.member_indices, g.group_rewards_G, g.metrics_G, g.failures, g.tags)
        for k, g in enumerate(groups)
    ]
    cookbook_groups = [to_cookbook_group(g) for g in groups]
    expected_D, metadata_D = cookbook_dp.assemble_training_data(
        cookbook_groups, cookbook_dp.compute_advantages(cookbook_groups), include_provenance=False
    )
    batch = assemble_batch(groups, compute_advantages(groups))
    assert batch.size == len(expected_D)
    counts = {key: len(list(run)) for key, run in itertools.groupby(batch.group_ids_D)}
    assert sum(counts.values()) == len(metadata_D)
    for ours, theirs, meta in zip(batch.datums, expected_D, metadata_D, strict=True):
        group = groups[meta["group_idx"]]
        _assert_same_except_advantages(ours, datum_from_tinker(theirs), _tolerance(group.total_rewards_G()))
