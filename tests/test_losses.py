"""The numpy reference formulas of Tinker's losses: hand computations, gradients, config and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tinkerflow import Datum, ModelInput
from tinkerflow import losses as lf
from tinkerflow.errors import ConfigError, ShapeError, ValidationError


def _policy_datum(q: list[float], advantages: list[float]) -> Datum:
    n = len(q)
    return Datum(
        model_input=ModelInput.from_tokens(list(range(n))),
        target_tokens_T=list(range(1, n + 1)),
        logprobs_T=q,
        advantages_T=advantages,
    )


# ---- hand computations -----------------------------------------------------------------------------------------


def test_cross_entropy_by_hand() -> None:
    terms = lf.cross_entropy_loss(np.array([-1.0, -2.0, -0.5]), np.array([0.0, 1.0, 0.5]))
    np.testing.assert_allclose(terms.loss_T, [0.0, 2.0, 0.25])
    assert terms.loss == pytest.approx(2.25)
    np.testing.assert_allclose(terms.dloss_dlogprobs_T, [0.0, -1.0, -0.5])


def test_importance_sampling_by_hand() -> None:
    # r = exp(lp - q) = [1, e, e^-1]
    terms = lf.importance_sampling_loss(
        np.array([-1.0, -1.0, -2.0]), np.array([-1.0, -2.0, -1.0]), np.array([2.0, 1.0, -1.0])
    )
    np.testing.assert_allclose(terms.loss_T, [-2.0, -math.e, math.exp(-1)])
    np.testing.assert_allclose(terms.dloss_dlogprobs_T, terms.loss_T)


def test_ppo_by_hand() -> None:
    # ratios: 1.0 (inside), 1.5 (above), 0.5 (below); advantages chosen to hit each branch of min
    lp = np.log(np.array([1.0, 1.5, 1.5, 0.5, 0.5]))
    q = np.zeros(5)
    advantages = np.array([1.0, 1.0, -1.0, 1.0, -1.0])
    terms = lf.ppo_loss(lp, q, advantages, 0.8, 1.2)
    # objective: min(rA, clip(r)A): [1, min(1.5,1.2)=1.2, min(-1.5,-1.2)=-1.5, min(.5,.8)=.5, min(-.5,-.8)=-.8]
    np.testing.assert_allclose(terms.loss_T, [-1.0, -1.2, 1.5, -0.5, 0.8])
    # gradient flows where the unclipped term is the minimum (or the clip is inactive): -r*A there, else 0
    np.testing.assert_allclose(terms.dloss_dlogprobs_T, [-1.0, 0.0, 1.5, -0.5, 0.0])


def test_cispo_by_hand() -> None:
    lp = np.log(np.array([1.0, 1.5, 0.5]))
    terms = lf.cispo_loss(lp, np.zeros(3), np.array([1.0, 2.0, -1.0]), 0.8, 1.2)
    weights = np.array([1.0, 1.2 * 2.0, 0.8 * -1.0])
    np.testing.assert_allclose(terms.loss_T, -weights * lp)
    np.testing.assert_allclose(terms.dloss_dlogprobs_T, -weights)


def test_dro_by_hand() -> None:
    terms = lf.dro_loss(np.array([-1.0, -3.0]), np.array([-2.0, -1.0]), np.array([1.0, -2.0]), 0.5)
    # -(lp*A - beta/2 (lp-q)^2) = -(-1 - .25*1), -(6 - .25*4)
    np.testing.assert_allclose(terms.loss_T, [1.25, -5.0])
    np.testing.assert_allclose(terms.dloss_dlogprobs_T, [-(1.0 - 0.5 * 1.0), -(-2.0 - 0.5 * -2.0)])


# ---- properties ------------------------------------------------------------------------------------------------

finite = st.floats(-3.0, 3.0, allow_nan=False)
logprob = st.floats(-6.0, 0.0, allow_nan=False)


@st.composite
def policy_arrays(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 12))
    lp = np.array(draw(st.lists(logprob, min_size=n, max_size=n)))
    q = np.array(draw(st.lists(logprob, min_size=n, max_size=n)))
    advantages = np.array(draw(st.lists(finite, min_size=n, max_size=n)))
    return lp, q, advantages


def _numeric_grad(fn, lp: np.ndarray, eps: float = 1e-6) -> np.ndarray:  # type: ignore[no-untyped-def]
    grad = np.zeros_like(lp)
    for index in range(lp.size):
        up, down = lp.copy(), lp.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (fn(up).loss - fn(down).loss) / (2 * eps)
    return grad


@given(policy_arrays(), st.sampled_from(["importance_sampling", "ppo", "cispo", "dro"]))
def test_reference_gradients_match_finite_differences(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray], loss: str
) -> None:
    lp, q, advantages = arrays
    ratio = np.exp(lp - q)
    assume(np.all(np.abs(ratio - 0.8) > 1e-3) and np.all(np.abs(ratio - 1.2) > 1e-3))  # away from PPO's kinks

    def fn(x: np.ndarray) -> lf.LossTerms:
        if loss == "importance_sampling":
            return lf.importance_sampling_loss(x, q, advantages)
        if loss == "ppo":
            return lf.ppo_loss(x, q, advantages, 0.8, 1.2)
        if loss == "dro":
            return lf.dro_loss(x, q, advantages, 0.3)
        # cispo's clip weight is a stop-gradient: differentiate with the weight held fixed
        weight = np.clip(ratio, 0.8, 1.2) * advantages
        return lf.LossTerms(loss_T=-weight * x, dloss_dlogprobs_T=-weight)

    np.testing.assert_allclose(fn(lp).dloss_dlogprobs_T, _numeric_grad(fn, lp), rtol=1e-5, atol=1e-6)


@given(policy_arrays())
def test_ppo_equals_importance_sampling_inside_the_clip(arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    lp, _, advantages = arrays
    q = lp - np.log(np.random.default_rng(0).uniform(0.85, 1.15, lp.size))  # every ratio inside [0.8, 1.2]
    ppo = lf.ppo_loss(lp, q, advantages)
    plain = lf.importance_sampling_loss(lp, q, advantages)
    np.testing.assert_allclose(ppo.loss_T, plain.loss_T, rtol=1e-12)
    np.testing.assert_allclose(ppo.dloss_dlogprobs_T, plain.dloss_dlogprobs_T, rtol=1e-12)


@given(policy_arrays())
def test_ppo_is_a_pessimistic_bound(arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    lp, q, advantages = arrays
    assert np.all(
        lf.ppo_loss(lp, q, advantages).loss_T >= lf.importance_sampling_loss(lp, q, advantages).loss_T - 1e-12
    )


@given(policy_arrays())
def test_dro_without_penalty_is_policy_gradient(arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    lp, q, advantages = arrays
    np.testing.assert_allclose(lf.dro_loss(lp, q, advantages, 0.0).loss_T, -lp * advantages)


@given(st.lists(st.tuples(logprob, st.floats(0.0, 2.0)), min_size=1, max_size=5))
def test_reference_batch_loss_sums_datums(items: list[tuple[float, float]]) -> None:
    data = [
        Datum(model_input=ModelInput.from_tokens([1]), target_tokens_T=[2], weights_T=[weight]) for _, weight in items
    ]
    logprobs = [np.array([lp]) for lp, _ in items]
    expected = sum(-lp * weight for lp, weight in items)
    assert lf.reference_batch_loss("cross_entropy", logprobs, data) == pytest.approx(expected, abs=1e-6)


def test_reference_loss_uses_config_and_defaults() -> None:
    datum = _policy_datum([0.0, 0.0], [1.0, 1.0])
    lp = np.log(np.array([1.5, 1.1]))
    default = lf.reference_loss("ppo", lp, datum)
    wide = lf.reference_loss("ppo", lp, datum, {"clip_high_threshold": 2.0})
    assert default.loss == pytest.approx(-(1.2 + 1.1))
    assert wide.loss == pytest.approx(-(1.5 + 1.1))


# ---- configuration and inputs ----------------------------------------------------------------------------------


def test_unknown_loss_names() -> None:
    with pytest.raises(ConfigError, match="unknown loss 'kl'"):
        lf.check_loss_fn("kl")
    with pytest.raises(ConfigError, match="forward_backward_custom"):
        lf.check_loss_fn("custom")
    assert lf.check_loss_fn("cispo") == "cispo"


def test_config_defaults_and_errors() -> None:
    assert dict(lf.resolve_loss_config("ppo", None)) == {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    assert dict(lf.resolve_loss_config("cispo", {"clip_low_threshold": 0.5})) == {
        "clip_low_threshold": 0.5,
        "clip_high_threshold": 1.2,
    }
    assert dict(lf.resolve_loss_config("cross_entropy", {})) == {}
    with pytest.raises(ConfigError, match="beta"):
        lf.resolve_loss_config("dro", None)
    assert dict(lf.resolve_loss_config("dro", {"beta": 0.05})) == {"beta": 0.05}
    with pytest.raises(ConfigError, match="not a setting"):
        lf.resolve_loss_config("cross_entropy", {"beta": 1.0})
    with pytest.raises(ConfigError, match="clip thresholds"):
        lf.resolve_loss_config("ppo", {"clip_low_threshold": 1.3})
    with pytest.raises(ConfigError, match="finite"):
        lf.resolve_loss_config("ppo", {"clip_low_threshold": math.nan})
    with pytest.raises(ConfigError, match=">= 0"):
        lf.resolve_loss_config("dro", {"beta": -1.0})


def test_missing_loss_input_names_datum_and_field() -> None:
    datum = Datum(model_input=ModelInput.from_tokens([1, 2]), target_tokens_T=[2, 3], weights_T=[1.0, 1.0])
    lf.check_loss_inputs("cross_entropy", [datum])
    with pytest.raises(ValidationError) as caught:
        lf.check_loss_inputs("ppo", [datum, datum])
    assert caught.value.field == "data[0].logprobs_T"
    assert "ppo" in caught.value.problem
    with pytest.raises(ValidationError, match="empty"):
        lf.check_loss_inputs("cross_entropy", [])
    with pytest.raises(ValidationError, match=r"expected a tinkerflow\.Datum, got builtins\.str") as caught:
        lf.check_loss_inputs("cross_entropy", [datum, "text"])  # type: ignore[list-item]
    assert "datum_from_tinker" in caught.value.fix


def test_misaligned_datum_cannot_exist() -> None:
    with pytest.raises(ShapeError):
        Datum(model_input=ModelInput.from_tokens([1, 2, 3]), target_tokens_T=[2, 3, 4], weights_T=[1.0, 1.0])


def test_every_builtin_loss_lists_its_inputs() -> None:
    assert set(lf.LOSS_INPUTS) == set(lf.BUILTIN_LOSSES) == set(lf.LOSS_CONFIG_DEFAULTS)
    assert all(inputs[0] == "target_tokens" for inputs in lf.LOSS_INPUTS.values())
