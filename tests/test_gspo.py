"""GSPO (Zheng et al. 2025, as Tinker documents ``gspo``): the numpy reference formula by hand and by its identities,
the torch implementation of the local backend against it (value and gradient, on padded ``[D, T]`` batches), and
the RL loss config that sends it. ``stable_reinforce``: accepted and validated, refused where it would be computed."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tinkerflow import Datum, ModelInput
from tinkerflow import losses as lf
from tinkerflow.datum import PromptSpan, SampledSpan
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.rl.advantages import compute_advantages
from tinkerflow.rl.assembly import RLBatch, assemble_batch
from tinkerflow.rl.loss_inputs import GSPOLoss, PPOLoss, StableReinforceLoss, loss_datums
from tinkerflow.rl.types import Trajectory, TrajectoryGroup, Transition

torch = pytest.importorskip("torch")

from tinkerflow.shell.backends.local.losses import builtin_loss_elementwise  # noqa: E402  (needs torch)

logprob = st.floats(-6.0, 0.0, allow_nan=False)
advantage = st.floats(-3.0, 3.0, allow_nan=False)


@st.composite
def gspo_arrays(draw: st.DrawFn, min_size: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(min_size, 12))
    lp = np.array(draw(st.lists(logprob, min_size=n, max_size=n)))
    q = np.array(draw(st.lists(logprob, min_size=n, max_size=n)))
    advantages = np.array(draw(st.lists(advantage, min_size=n, max_size=n)))
    mask = np.array(draw(st.lists(st.sampled_from([0.0, 1.0, 1.0]), min_size=n, max_size=n)))
    return lp, q, advantages, mask


def _sequence_ratio(lp: np.ndarray, q: np.ndarray, mask: np.ndarray) -> float:
    return math.exp(float((mask * (lp - q)).sum() / mask.sum())) if mask.sum() else 1.0


def test_gspo_by_hand() -> None:
    # masked log-ratios 0.5 and -0.1 (the third position is not in the mask): s = exp(0.2)
    lp = np.array([-1.0, -2.0, -0.5, -1.0])
    q = np.array([-1.5, -1.9, -3.0, -1.0])
    mask = np.array([1.0, 1.0, 0.0, 0.0])
    advantages = np.array([1.0, -1.0, 2.0, 0.0])
    s = math.exp(0.2)  # 1.2214 > 1.2: clipped to 1.2 where A > 0, unclipped where A < 0
    terms = lf.gspo_loss(lp, q, advantages, mask, 0.8, 1.2)
    np.testing.assert_allclose(terms.loss_T, [-1.2, s, -2.4, 0.0])
    np.testing.assert_allclose(terms.dloss_dlogprobs_T, [0.0, s, 0.0, 0.0])
    wide = lf.gspo_loss(lp, q, advantages, mask, 0.8, 1.5)
    np.testing.assert_allclose(wide.loss_T, [-s, s, -2 * s, 0.0])
    np.testing.assert_allclose(wide.dloss_dlogprobs_T, [-s, s, -2 * s, 0.0])


def test_gspo_with_an_empty_mask_has_ratio_one() -> None:
    lp, q = np.array([-1.0, -3.0]), np.array([-2.0, -1.0])
    terms = lf.gspo_loss(lp, q, np.array([0.5, -1.0]), np.zeros(2))
    np.testing.assert_allclose(terms.loss_T, [-0.5, 1.0])
    np.testing.assert_allclose(terms.dloss_dlogprobs_T, [-0.5, 1.0])


@given(gspo_arrays(), st.sampled_from([(0.8, 1.2), (0.5, 2.0), (1.0, 1.0)]))
def test_gspo_is_ppo_with_the_sequence_ratio(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], clip: tuple[float, float]
) -> None:
    """Token-wise, GSPO is PPO whose ratio is ``s * exp(lp - sg(lp))``: PPO with sampling logprobs ``lp - log s``."""
    lp, q, advantages, mask = arrays
    s = _sequence_ratio(lp, q, mask)
    gspo = lf.gspo_loss(lp, q, advantages, mask, *clip)
    ppo = lf.ppo_loss(lp, lp - math.log(s), advantages, *clip)
    np.testing.assert_allclose(gspo.loss_T, ppo.loss_T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gspo.dloss_dlogprobs_T, ppo.dloss_dlogprobs_T, rtol=1e-12, atol=1e-12)


@given(gspo_arrays())
def test_gspo_gradient_is_the_finite_difference_with_the_ratio_held(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """``sg(s) * exp(lp - sg(lp))``: differentiate in each token's ``lp`` with the sequence ratio held fixed."""
    lp, q, advantages, mask = arrays
    s = _sequence_ratio(lp, q, mask)
    assume(abs(s - 0.8) > 1e-3 and abs(s - 1.2) > 1e-3)
    eps = 1e-6

    def total(x: np.ndarray) -> float:
        ratio = s * np.exp(x - lp)
        return float(-np.minimum(ratio * advantages, np.clip(ratio, 0.8, 1.2) * advantages).sum())

    numeric = np.array([(total(lp + eps * e) - total(lp - eps * e)) / (2 * eps) for e in np.eye(lp.size)])
    np.testing.assert_allclose(lf.gspo_loss(lp, q, advantages, mask).dloss_dlogprobs_T, numeric, rtol=1e-5, atol=1e-6)


@given(gspo_arrays())
def test_gspo_equals_ppo_when_every_token_has_the_same_log_ratio(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    lp, _, advantages, _ = arrays
    q = lp - 0.15  # every ratio exp(0.15), so the sequence ratio equals each token's
    gspo = lf.gspo_loss(lp, q, advantages, np.ones(lp.size))
    ppo = lf.ppo_loss(lp, q, advantages)
    np.testing.assert_allclose(gspo.loss_T, ppo.loss_T, rtol=1e-12)
    np.testing.assert_allclose(gspo.dloss_dlogprobs_T, ppo.dloss_dlogprobs_T, rtol=1e-12)


def _gspo_datum(q: np.ndarray, advantages: np.ndarray, mask: np.ndarray) -> Datum:
    n = q.size
    return Datum(
        model_input=ModelInput.from_tokens(np.arange(n)),
        target_tokens_T=np.arange(1, n + 1),
        logprobs_T=q.astype(np.float32),
        advantages_T=advantages.astype(np.float32),
        sequence_ratio_mask_T=mask.astype(np.float32),
    )


@given(st.lists(gspo_arrays(), min_size=1, max_size=4), st.sampled_from([(0.8, 1.2), (0.7, 1.4)]))
def test_torch_gspo_equals_reference_on_packed_datums(
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], clip: tuple[float, float]
) -> None:
    """Datums packed one after another (``[N]`` values and their offsets, as the local backend packs a micro-batch):
    the torch loss and its autograd gradient equal the reference per datum (each datum its own sequence ratio)."""
    data = [_gspo_datum(q, a, m) for _, q, a, m in rows]
    config = lf.resolve_loss_config("gspo", {"clip_low_threshold": clip[0], "clip_high_threshold": clip[1]})
    references = [lf.reference_loss("gspo", lp, d, config) for (lp, *_), d in zip(rows, data, strict=True)]
    for lp, q, _, m in rows:
        s = _sequence_ratio(lp, q.astype(np.float32).astype(np.float64), m)
        assume(abs(s - clip[0]) > 1e-9 and abs(s - clip[1]) > 1e-9)  # clamp's gradient at the boundary is a tie
    offsets = (0, *np.cumsum([d.length for d in data]).tolist())
    logprobs = torch.tensor(np.concatenate([lp for lp, *_ in rows]), requires_grad=True)
    inputs = {
        key: torch.tensor(np.concatenate([d.loss_inputs()[key] for d in data]).astype(np.float64))
        for key in ("logprobs", "advantages", "sequence_ratio_mask")
    }
    elementwise = builtin_loss_elementwise("gspo", logprobs, inputs, config, offsets=offsets)
    elementwise.sum().backward()
    assert logprobs.grad is not None
    for start, end, reference in zip(offsets[:-1], offsets[1:], references, strict=True):
        np.testing.assert_allclose(elementwise.detach()[start:end].numpy(), reference.loss_T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            logprobs.grad[start:end].numpy(), reference.dloss_dlogprobs_T, rtol=1e-10, atol=1e-12
        )


def test_torch_gspo_needs_the_datum_offsets() -> None:
    logprobs = torch.zeros(3)
    inputs = {key: torch.zeros(3) for key in ("logprobs", "advantages", "sequence_ratio_mask")}
    config = lf.resolve_loss_config("gspo", None)
    with pytest.raises(ValidationError, match="offsets"):
        builtin_loss_elementwise("gspo", logprobs, inputs, config)
    with pytest.raises(ValidationError, match="offsets"):
        builtin_loss_elementwise("gspo", logprobs, inputs, config, offsets=(0, 2))
    assert float(builtin_loss_elementwise("gspo", logprobs, inputs, config, offsets=(0, 1, 3)).abs().sum()) == 0.0


def test_reference_loss_validates_gspo_inputs() -> None:
    datum = Datum(
        model_input=ModelInput.from_tokens([1, 2]), target_tokens_T=[2, 3], logprobs_T=[-1.0, -1.0], advantages_T=[1, 1]
    )
    with pytest.raises(ValidationError) as caught:
        lf.reference_loss("gspo", np.array([-1.0, -1.0]), datum)
    assert caught.value.field == "data[0].sequence_ratio_mask_T"


# ---- the RL loss config ----------------------------------------------------------------------------------------


def _batch(sequence_ids: tuple[str, str] = ("a", "b"), masked_second: bool = False) -> RLBatch:
    def trajectory(reward: float) -> Trajectory:
        return Trajectory(
            transitions=(
                Transition(
                    ModelInput.from_tokens([1, 2, 3]), [10, 11], [-0.5, -0.6], 0.0, False, sequence_id=sequence_ids[0]
                ),
                Transition(
                    ModelInput.from_tokens([1, 2, 3, 10, 11, 20]),
                    [30],
                    [-0.7],
                    reward,
                    True,
                    mask_turn=masked_second,
                    sequence_id=sequence_ids[1],
                ),
            )
        )

    group = TrajectoryGroup("g", (trajectory(1.0), trajectory(0.0)), (0, 1), (0.0, 0.0), ({}, {}))
    return assemble_batch([group], compute_advantages([group]))


def test_gspo_loss_datums_take_the_ratio_over_trained_action_tokens() -> None:
    batch = _batch(masked_second=True)
    assert GSPOLoss().config() == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    datums = loss_datums(batch, GSPOLoss(0.7, 1.3))
    for new, old in zip(datums, batch.datums, strict=True):
        assert set(new.loss_inputs()) == {"target_tokens", "logprobs", "advantages", "sequence_ratio_mask"}
        np.testing.assert_array_equal(new.sequence_ratio_mask_T, old.mask_T)
        np.testing.assert_array_equal(new.sequence_ratio_mask_T, [0, 0, 1, 1, 0, 0])
        assert new.model_input_spans == old.model_input_spans is not None
        assert new.loss_fn_input_spans == old.loss_fn_input_spans is not None
    for datum in loss_datums(batch, PPOLoss()):
        assert datum.has_provenance  # spans are kept for every loss
    with pytest.raises(ConfigError):
        GSPOLoss(1.3, 0.7)


def test_stable_reinforce_needs_provenance() -> None:
    datums = loss_datums(_batch(), StableReinforceLoss())
    assert all(d.has_provenance for d in datums)
    lf.check_loss_inputs("stable_reinforce", datums)
    assert StableReinforceLoss().config() == {}
    assert StableReinforceLoss(kl_coeff=0.1).config() == {"kl_coeff": 0.1}
    with pytest.raises(ValidationError) as caught:
        loss_datums(_batch(("a", "")), StableReinforceLoss())
    assert caught.value.field == "data[0].loss_fn_input_spans"
    assert "sequence_id" in caught.value.fix
    with pytest.raises(ConfigError):
        StableReinforceLoss(kl_coeff=-1.0)


def test_stable_reinforce_takes_advantages_on_sampled_tokens_only() -> None:
    datum = Datum(
        model_input=ModelInput.from_tokens([1, 2, 3]),
        target_tokens_T=[2, 3, 4],
        logprobs_T=[0.0, -0.5, -0.5],
        advantages_T=[0.0, 1.0, 1.0],
        model_input_spans=[PromptSpan(sequence_id="a", length=2), SampledSpan(sequence_id="a", length=1)],
        loss_fn_input_spans=[PromptSpan(sequence_id="a", offset=1, length=1), SampledSpan(sequence_id="a", length=2)],
    )
    lf.check_provenance("stable_reinforce", [datum])
    bad = attrs.evolve(datum, advantages_T=[0.5, 1.0, 1.0])
    with pytest.raises(ValidationError) as caught:
        lf.check_loss_inputs("stable_reinforce", [datum, bad])
    assert caught.value.field == "data[1].advantages_T"
    lf.check_provenance("ppo", [bad])  # other losses need no provenance


def test_stable_reinforce_config_and_refusals() -> None:
    assert dict(lf.resolve_loss_config("stable_reinforce", None)) == {}
    assert dict(lf.resolve_loss_config("stable_reinforce", {"kl_coeff": 0.05})) == {"kl_coeff": 0.05}
    with pytest.raises(ConfigError, match="kl_coeff"):
        lf.resolve_loss_config("stable_reinforce", {"beta": 0.1})
    with pytest.raises(ConfigError, match=">= 0"):
        lf.resolve_loss_config("stable_reinforce", {"kl_coeff": -0.1})
    with pytest.raises(ConfigError, match="finite"):
        lf.resolve_loss_config("stable_reinforce", {"kl_coeff": math.inf})
    with pytest.raises(ConfigError, match="not published"):
        lf.reference_loss(
            "stable_reinforce", np.zeros(1), Datum(model_input=ModelInput.from_tokens([1]), target_tokens_T=[2])
        )
    logprobs = torch.zeros(1, 2)
    inputs = {key: torch.zeros(1, 2) for key in ("logprobs", "advantages")}
    with pytest.raises(ConfigError, match="not published"):
        builtin_loss_elementwise("stable_reinforce", logprobs, inputs, {})
    assert "stable_reinforce" not in lf.REFERENCE_LOSSES
    assert lf.PROVENANCE_LOSSES == ("stable_reinforce",)
