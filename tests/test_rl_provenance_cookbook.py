"""Provenance spans and parse-error masking against tinker-cookbook 0.6.1 (``rl/data_processing.py``).

On hypothesis-generated trajectory groups whose actions carry sampled-sequence ids (all of a trajectory's actions in
about 3 of 4 trajectories, some missing in the others) and whose turns set the cookbook's ``parse_error_masked``
metric to values on both sides of its 1.0 threshold (besides tinkerflow's own ``mask_turn``):

* ``trajectory_datums(t, a)`` (provenance on by default) equals the cookbook's ``trajectory_to_data(t, a)``
  (``include_provenance=True``, its default): every array exactly, and the spans: the datums the cookbook gives
  provenance have equal spans, the others none;
* the spans reach the SDK as the cookbook builds them: :func:`tinkerflow.shell.backends.tinker.sdk_datum` gives
  ``PromptProvenanceSpan`` / ``SampledProvenanceSpan`` lists equal to the cookbook's;
* ``include_provenance=False`` equals the cookbook's ``include_provenance=False`` (no spans at all);
* batches: ``assemble_batch`` equals ``assemble_training_data`` (spans included), datum for datum.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from tinkerflow.datum import Datum, PromptSpan, ProvenanceSpan, SampledSpan
from tinkerflow.errors import ValidationError
from tinkerflow.interop import datum_from_tinker, model_input_to_tinker
from tinkerflow.model_input import ModelInput
from tinkerflow.rl import testing as rlt
from tinkerflow.rl.advantages import compute_advantages
from tinkerflow.rl.assembly import assemble_batch, trajectory_datums
from tinkerflow.rl.types import PARSE_ERROR_MASKED_METRIC_KEY, Trajectory, TrajectoryGroup, Transition

cookbook_dp = pytest.importorskip("tinker_cookbook.rl.data_processing")
cookbook_types = pytest.importorskip("tinker_cookbook.rl.types")
tt = pytest.importorskip("tinker.types")
from tinker_cookbook.completers import TokensWithLogprobs  # noqa: E402
from tinker_cookbook.exceptions import DataValidationError  # noqa: E402

from tinkerflow.shell.backends.tinker import sdk_datum  # noqa: E402

CHECKED = {
    "groups": 0,
    "trajectories": 0,
    "datums": 0,
    "with_spans": 0,  # datums with provenance (equal to the cookbook's)
    "without_spans": 0,  # datums the cookbook gives none (an action without id, or no sampled target)
    "split": 0,
    "with_images": 0,
    "masked_by_metric": 0,  # turns masked only through the cookbook's metric (>= 1.0)
    "metric_below_threshold": 0,  # turns whose metric is set but < 1.0 (not masked by it)
    "refused": 0,
}

_SETTINGS = settings(
    max_examples=1000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None
)


def to_cookbook_transition(transition: Transition) -> Any:
    """The cookbook's record of ``transition``: same sequence id (``""`` -> ``None``) and metrics; tinkerflow's own
    ``mask_turn`` flag becomes the cookbook's metric (a metric the transition already holds is passed as it is)."""
    metrics = dict(transition.metrics)
    if transition.mask_turn and metrics.get(PARSE_ERROR_MASKED_METRIC_KEY, 0.0) < 1.0:
        metrics[PARSE_ERROR_MASKED_METRIC_KEY] = 1.0
    return cookbook_types.Transition(
        ob=model_input_to_tinker(transition.observation),
        ac=TokensWithLogprobs(
            tokens=transition.action_tokens_T.tolist(),
            maybe_logprobs=transition.action_logprobs_T.tolist(),
            stop_reason="stop",
            sequence_id=transition.sequence_id or None,
        ),
        reward=transition.reward,
        episode_done=transition.done,
        metrics=metrics,
    )


def to_cookbook_trajectory(trajectory: Trajectory) -> Any:
    return cookbook_types.Trajectory(
        transitions=[to_cookbook_transition(t) for t in trajectory.transitions],
        final_ob=model_input_to_tinker(trajectory.final_observation),
    )


def to_cookbook_group(group: TrajectoryGroup) -> Any:
    return cookbook_types.TrajectoryGroup(
        trajectories_G=[to_cookbook_trajectory(t) for t in group.trajectories],
        final_rewards_G=list(group.group_rewards_G),
        metrics_G=list(group.metrics_G),
    )


def spans_from_tinker(spans: list[Any] | None) -> tuple[ProvenanceSpan, ...] | None:
    if spans is None:
        return None
    return tuple(
        (PromptSpan if isinstance(s, tt.PromptProvenanceSpan) else SampledSpan)(
            sequence_id=s.sequence_id, offset=s.offset, length=s.length
        )
        for s in spans
    )


def from_cookbook(datum: Any) -> Datum:
    """The cookbook's datum as a tinkerflow one, spans included (validated: the spans must tile the datum)."""
    plain = datum_from_tinker(datum)
    return attrs.evolve(
        plain,
        model_input_spans=spans_from_tinker(datum.model_input_spans),
        loss_fn_input_spans=spans_from_tinker(datum.loss_fn_input_spans),
    )


def assert_same_datum(ours: Datum, theirs: Any, *, exact_advantages: bool = True) -> None:
    """``ours`` equals the cookbook's ``theirs``: arrays, spans, and the spans the SDK gets from ``ours``."""
    expected = from_cookbook(theirs)
    if exact_advantages:
        assert ours == expected
    else:
        assert attrs.evolve(ours, advantages_T=expected.advantages_T) == expected
        np.testing.assert_allclose(ours.advantages_T, expected.advantages_T, rtol=0, atol=1e-3)  # type: ignore[arg-type]
    sent = sdk_datum(ours)
    assert sent.model_input_spans == theirs.model_input_spans
    assert sent.loss_fn_input_spans == theirs.loss_fn_input_spans
    # a fresh validated Datum accepts the assembly's spans (they tile input and targets)
    assert Datum(**{field.name: getattr(ours, field.name) for field in attrs.fields(Datum)}) == ours


_GROUP = rlt.trajectory_groups(
    group_id="g", min_size=0, max_size=6, images=True, empty=True, sequence_ids=True, masked_metric=True
)


@_SETTINGS
@given(_GROUP)
def test_provenance_and_masking_match_cookbook(group: TrajectoryGroup) -> None:
    CHECKED["groups"] += 1
    result = compute_advantages([group])
    if not group.trajectories:
        return
    advantages = result.kept[0].advantages_G.tolist()
    for trajectory, advantage in zip(group.trajectories, advantages, strict=True):
        CHECKED["trajectories"] += 1
        CHECKED["with_images"] += any(t.observation.has_images for t in trajectory.transitions)
        for t in trajectory.transitions:
            metric = t.metrics.get(PARSE_ERROR_MASKED_METRIC_KEY)
            if metric is not None:
                CHECKED["masked_by_metric"] += metric >= 1.0
                CHECKED["metric_below_threshold"] += metric < 1.0
                assert t.mask_turn or metric < 1.0  # the cookbook's flag masks the turn in tinkerflow's record
        cookbook_trajectory = to_cookbook_trajectory(trajectory)
        try:
            expected = cookbook_dp.trajectory_to_data(cookbook_trajectory, advantage)
        except DataValidationError:
            CHECKED["refused"] += 1
            with pytest.raises(ValidationError):
                trajectory_datums(trajectory, advantage)
            continue
        ours = trajectory_datums(trajectory, advantage)
        assert len(ours) == len(expected)
        for datum, theirs in zip(ours, expected, strict=True):
            assert_same_datum(datum, theirs)
            CHECKED["datums"] += 1
            CHECKED["with_spans"] += theirs.loss_fn_input_spans is not None
            CHECKED["without_spans"] += theirs.loss_fn_input_spans is None
        CHECKED["split"] += len(ours) > 1
        # without provenance: the same datums, no spans, as the cookbook's include_provenance=False
        plain = trajectory_datums(trajectory, advantage, include_provenance=False)
        plain_expected = cookbook_dp.trajectory_to_data(cookbook_trajectory, advantage, include_provenance=False)
        assert plain == tuple(datum_from_tinker(d) for d in plain_expected)
        assert all(not d.has_provenance for d in plain)


def test_provenance_coverage() -> None:
    """The property above saw >= 1,000 groups, with datums with and without spans, masks set by the metric and
    metrics below its threshold. Run here when a parallel run put the property on another worker."""
    if CHECKED["groups"] == 0:
        test_provenance_and_masking_match_cookbook()
    print(CHECKED)
    assert CHECKED["groups"] >= 1000
    for key in ("with_spans", "without_spans", "split", "with_images", "masked_by_metric", "metric_below_threshold"):
        assert CHECKED[key] >= 100, key
    assert CHECKED["datums"] > CHECKED["refused"] > 0


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)
@given(rlt.trajectory_group_lists(min_groups=1, max_groups=4, min_size=1, max_size=4, sequence_ids=True))
def test_batch_provenance_matches_cookbook(groups: list[TrajectoryGroup]) -> None:
    result = compute_advantages(groups)
    kept = [group for group in groups if group.group_id in set(result.kept_group_ids)]
    cookbook_groups = [to_cookbook_group(group) for group in kept]
    expected_D, _ = cookbook_dp.assemble_training_data(cookbook_groups, cookbook_dp.compute_advantages(cookbook_groups))
    batch = assemble_batch(groups, result)
    assert batch.size == len(expected_D)
    for ours, theirs in zip(batch.datums, expected_D, strict=True):
        # advantages: tinkerflow centers in float64 (a deliberate difference, see test_rl_cookbook.py)
        assert_same_datum(ours, theirs, exact_advantages=False)


# ---- worked examples -------------------------------------------------------------------------------------------


def _worked(sequence_ids: tuple[str, str]) -> Trajectory:
    """The cookbook's worked example: observation [1,2,3] + action [10,11], then [1,2,3,10,11,20] + action [30]."""
    return Trajectory(
        transitions=(
            Transition(
                ModelInput.from_tokens([1, 2, 3]), [10, 11], [-0.5, -0.6], 0.0, False, sequence_id=sequence_ids[0]
            ),
            Transition(
                ModelInput.from_tokens([1, 2, 3, 10, 11, 20]), [30], [-0.7], 1.0, True, sequence_id=sequence_ids[1]
            ),
        )
    )


def test_worked_example_spans() -> None:
    (datum,) = trajectory_datums(_worked(("a", "b")), 0.25)
    # sequence 1 2 3 | 10 11 | 20 | 30: prompt of a (3), sampled a (2), prompt of b from offset 5 (1), sampled b (1)
    assert datum.model_input_spans == (
        PromptSpan(sequence_id="a", length=3),
        SampledSpan(sequence_id="a", length=2),
        PromptSpan(sequence_id="b", offset=5, length=1),
    )  # the input drops the last position (the final sampled token)
    assert datum.loss_fn_input_spans == (
        PromptSpan(sequence_id="a", offset=1, length=2),
        SampledSpan(sequence_id="a", length=2),
        PromptSpan(sequence_id="b", offset=5, length=1),
        SampledSpan(sequence_id="b", length=1),
    )  # the targets drop the first
    (theirs,) = cookbook_dp.trajectory_to_data(to_cookbook_trajectory(_worked(("a", "b"))), 0.25)
    assert_same_datum(datum, theirs)


def test_one_action_without_id_drops_the_datums_provenance() -> None:
    (datum,) = trajectory_datums(_worked(("a", "")), 0.25)
    assert datum.model_input_spans is None
    assert datum.loss_fn_input_spans is None


def test_parse_error_metric_masks_like_mask_turn() -> None:
    """The cookbook's metric at >= 1.0 masks the turn (mask 0, advantage 0 on its tokens); below 1.0 it does not."""
    observation = ModelInput.from_tokens([1, 2])
    for value, masked in ((1.0, True), (2.0, True), (0.999, False), (0.0, False)):
        metrics = {PARSE_ERROR_MASKED_METRIC_KEY: value}
        transition = Transition(observation, [5, 6], [-0.1, -0.2], 0.0, True, metrics=metrics)
        assert transition.mask_turn is masked
        (datum,) = trajectory_datums(Trajectory(transitions=(transition,)), 0.5)
        assert datum.mask_T is not None
        assert datum.advantages_T is not None
        expected = [0.0, 0.0, 0.0] if masked else [0.0, 1.0, 1.0]
        np.testing.assert_array_equal(datum.mask_T, expected)
        np.testing.assert_array_equal(datum.advantages_T, [0.5 * m for m in expected])
