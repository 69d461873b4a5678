"""The local backend's torch losses equal the numpy reference formulas: value and autograd gradient."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tinkerflow import Datum, ModelInput
from tinkerflow import losses as lf

torch = pytest.importorskip("torch")

from tinkerflow.shell.backends.local.losses import builtin_loss_elementwise  # noqa: E402  (needs torch)

CONFIGS = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3},
    "cispo": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
    "dro": {"beta": 0.25},
}


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, np.ndarray, Datum]:
    loss = draw(st.sampled_from(sorted(CONFIGS)))
    n = draw(st.integers(1, 16))
    floats = st.floats(-5.0, 0.0, allow_nan=False)
    lp = np.array(draw(st.lists(floats, min_size=n, max_size=n)))
    q = np.array(draw(st.lists(floats, min_size=n, max_size=n)), dtype=np.float32)
    advantages = np.array(draw(st.lists(st.floats(-2, 2, allow_nan=False), min_size=n, max_size=n)), dtype=np.float32)
    weights = np.array(draw(st.lists(st.floats(0, 2, allow_nan=False), min_size=n, max_size=n)), dtype=np.float32)
    datum = Datum(
        model_input=ModelInput.from_tokens(np.arange(n)),
        target_tokens_T=np.arange(1, n + 1),
        weights_T=weights,
        logprobs_T=q,
        advantages_T=advantages,
    )
    return loss, lp, datum


@given(cases())
def test_torch_loss_and_gradient_equal_reference(case: tuple[str, np.ndarray, Datum]) -> None:
    loss_name, lp, datum = case
    config = lf.resolve_loss_config(loss_name, CONFIGS[loss_name])  # type: ignore[arg-type]
    ratio = np.exp(lp - datum.logprobs_T.astype(np.float64))  # type: ignore[union-attr]
    if loss_name == "ppo":  # clamp's gradient at the exact clip boundary is a measure-zero tie
        assume(np.all(np.abs(ratio - 0.7) > 1e-9) and np.all(np.abs(ratio - 1.3) > 1e-9))
    reference = lf.reference_loss(loss_name, lp, datum, config)  # type: ignore[arg-type]
    logprobs = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    inputs = {key: torch.tensor(value, dtype=torch.float64) for key, value in datum.loss_inputs().items()}
    elementwise = builtin_loss_elementwise(loss_name, logprobs, inputs, config)  # type: ignore[arg-type]
    elementwise.sum().backward()
    np.testing.assert_allclose(elementwise.detach().numpy(), reference.loss_T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logprobs.grad.numpy(), reference.dloss_dlogprobs_T, rtol=1e-10, atol=1e-12)
