"""Direct Preference Optimization, pure core: pairs of datums, sequence logprobs, the loss, its gradient, metrics.

Numpy only (float64 arithmetic). The shell runs the forward passes; this module turns their per-token logprobs into
the DPO loss and the gradient to send back. Notation, per comparison ``i`` of a batch of ``B`` pairs (suffix ``B``):
``pi_c``/``pi_r`` the policy's sequence logprobs of the chosen/rejected completion, ``ref_c``/``ref_r`` the frozen
reference's, ``beta`` the KL coefficient::

    z_i    = beta * ((pi_c - ref_c) - (pi_r - ref_r))
    loss   = mean_i -log sigmoid(z_i) = mean_i softplus(-z_i)          (np.logaddexp(0, -z): stable for any z)
    d loss / d pi_c_i = -beta * sigmoid(-z_i) / B,   d loss / d pi_r_i = +beta * sigmoid(-z_i) / B
    pi_c   = sum_t w_t * logprob_t                 (a sequence logprob: the weighted sum of target logprobs)
    d loss / d logprob_t = (d loss / d pi_c) * w_t (per token, through that sum)

Metrics, with the names and definitions of tinker-cookbook 0.6.1's ``compute_dpo_loss``: ``dpo_loss`` (the loss),
``accuracy`` (fraction of pairs with ``pi_c - ref_c > pi_r - ref_r``, strictly), ``chosen_reward`` (mean of
``beta * (pi_c - ref_c)``), ``rejected_reward`` (mean of ``beta * (pi_r - ref_r)``) and ``margin`` (mean of their
difference). ``tests/conformance/test_dpo_cookbook.py`` checks loss, metrics and gradient against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
from jaxtyping import Float64
from numpy.typing import ArrayLike

from tinkerflow._validate import finite_float, require_type
from tinkerflow.arrays import frozen_array
from tinkerflow.datum import arrays_equal
from tinkerflow.errors import ConfigError, DTypeError, NonFiniteError, ShapeError, ValidationError
from tinkerflow.preference.pairs import EmptyBatchError

__all__ = [
    "DPOMetrics",
    "DPOOutput",
    "Float64_B",
    "Float64_D",
    "dpo_loss",
    "dpo_token_gradients",
    "sequence_logprobs",
    "token_gradients",
]

#: One float64 value per comparison (pair) of a batch.
Float64_B = Float64[np.ndarray, "B"]
#: One float64 value per sequence (datum) of a batch.
Float64_D = Float64[np.ndarray, "D"]


def _float_array(value: object, where: str, field: str) -> np.ndarray:
    """``value`` as a 1-D finite float64 array (a read-only copy)."""
    if isinstance(value, (str, bytes)):
        raise DTypeError(where, field, f"expected numbers, got {type(value).__name__}.")
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ShapeError(where, field, f"cannot be read as a flat numeric array ({error}).") from error
    if array.ndim != 1:
        raise ShapeError(where, field, f"expected a 1-D array, got shape {array.shape}.", "pass one value per item.")
    if array.size and array.dtype.kind not in "biuf":
        raise DTypeError(where, field, f"expected real numbers, got dtype {array.dtype}.")
    result = np.array(array, dtype=np.float64, copy=True)
    if not bool(np.isfinite(result).all()):
        index = int(np.flatnonzero(~np.isfinite(result))[0])
        raise NonFiniteError(where, field, f"holds {result[index]} at index {index}.", "pass finite values.")
    return frozen_array(result)


def _check_sequence(value: object, where: str, field: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise ShapeError(where, field, f"cannot be read as a flat numeric array ({error}).") from error
    if array.ndim != 1:
        raise ShapeError(where, field, f"expected a 1-D array, got shape {array.shape}.")
    if array.size and array.dtype.kind not in "biuf":
        raise DTypeError(where, field, f"expected real numbers, got dtype {array.dtype}.")
    return array


def _ragged(values: Sequence[ArrayLike], where: str, field: str) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of numbers -> (their concatenation, finite, in its natural dtype (float32 stays float32: half the
    memory to touch), their lengths); errors name ``field[d]``."""
    try:
        arrays = [value if type(value) is np.ndarray else np.asarray(value) for value in values]
    except (TypeError, ValueError):
        arrays = []
    if len(arrays) != len(values) or any(
        array.ndim != 1 or (array.dtype.kind not in "biuf" and array.size) for array in arrays
    ):  # the slow path, only to name the bad sequence
        arrays = [_check_sequence(value, where, f"{field}[{index}]") for index, value in enumerate(values)]
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    if not arrays:
        return np.zeros(0), lengths
    flat = np.concatenate(arrays)
    finite = np.isfinite(flat)
    if not bool(finite.all()):
        position = int(np.flatnonzero(~finite)[0])
        index = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
        raise NonFiniteError(where, f"{field}[{index}]", f"holds {flat[position]}.", "pass finite values.")
    return flat, lengths


def sequence_logprobs(logprobs_D: Sequence[ArrayLike], weights_D: Sequence[ArrayLike]) -> Float64_D:
    """``sum_t weights_D[d][t] * logprobs_D[d][t]`` for each sequence ``d``: float64, shape ``(D,)``.

    Vectorized over the batch (one concatenation and ``np.add.reduceat``). Zero-length sequences sum to 0.

    Raises:
        EmptyBatchError: no sequence.
        ShapeError: the two sequences disagree in count, or sequence ``d`` has logprobs and weights of different
            lengths (the error names ``weights_D[d]``).
        NonFiniteError: a NaN or infinity (named by sequence).
    """
    where = "sequence_logprobs"
    if len(logprobs_D) != len(weights_D):
        raise ShapeError(where, "weights_D", f"has {len(weights_D)} sequences for {len(logprobs_D)} logprob sequences.")
    if len(logprobs_D) == 0:
        raise EmptyBatchError(where, "logprobs_D", "is empty.", "pass at least one sequence.")
    logprobs, lengths = _ragged(logprobs_D, where, "logprobs_D")
    weights, weight_lengths = _ragged(weights_D, where, "weights_D")
    if not np.array_equal(lengths, weight_lengths):
        index = int(np.flatnonzero(lengths != weight_lengths)[0])
        raise ShapeError(
            where,
            f"weights_D[{index}]",
            f"has {weight_lengths[index]} weights for {lengths[index]} logprobs.",
            "give one weight per target token (a datum's weights_T and its forward logprobs).",
        )
    total = logprobs.shape[0]
    if total == 0:
        return np.zeros(lengths.shape[0])
    products = np.multiply(logprobs, weights, dtype=np.float64)  # float64 sums whatever the inputs' dtype
    starts = np.cumsum(lengths) - lengths
    inside = starts < total  # empty sequences at the end start past the last token
    sums = np.zeros(lengths.shape[0])
    sums[inside] = np.add.reduceat(products, starts[inside])
    sums[lengths == 0] = 0.0  # reduceat gives the element at the start for an empty segment
    return sums


def _float64_b(value: object) -> np.ndarray:
    return _float_array(value, "DPOOutput", "gradient")


_ARRAY_EQ = attrs.cmp_using(eq=arrays_equal)


@attrs.frozen
class DPOMetrics:
    """The cookbook's DPO metrics of a batch (see the module docstring for their definitions)."""

    dpo_loss: float
    accuracy: float
    chosen_reward: float
    rejected_reward: float
    margin: float

    def __attrs_post_init__(self) -> None:
        for name in ("dpo_loss", "accuracy", "chosen_reward", "rejected_reward", "margin"):
            finite_float(getattr(self, name), "DPOMetrics", name)
        if not 0.0 <= self.accuracy <= 1.0:
            raise ValidationError("DPOMetrics", "accuracy", f"must lie in [0, 1], got {self.accuracy}.")
        if self.dpo_loss < 0.0:
            raise ValidationError("DPOMetrics", "dpo_loss", f"must be >= 0, got {self.dpo_loss}.")

    def as_dict(self) -> dict[str, float]:
        """``{"dpo_loss": ..., "accuracy": ..., ...}``: the cookbook's metric keys."""
        return {
            "dpo_loss": self.dpo_loss,
            "accuracy": self.accuracy,
            "margin": self.margin,
            "chosen_reward": self.chosen_reward,
            "rejected_reward": self.rejected_reward,
        }


@attrs.frozen
class DPOOutput:
    """The DPO loss of a batch of ``B`` pairs, its gradient with respect to the policy's sequence logprobs, and
    the metrics.

    Attributes:
        loss: ``mean_i -log sigmoid(z_i)`` (non-negative).
        dloss_dchosen_B: ``d loss / d pi_c_i`` (float64; never positive).
        dloss_drejected_B: ``d loss / d pi_r_i`` (float64; the negation of ``dloss_dchosen_B``).
        metrics: :class:`DPOMetrics` (``metrics.dpo_loss == loss``).
    """

    loss: float
    dloss_dchosen_B: Float64_B = attrs.field(converter=_float64_b, eq=_ARRAY_EQ, hash=False)
    dloss_drejected_B: Float64_B = attrs.field(converter=_float64_b, eq=_ARRAY_EQ, hash=False)
    metrics: DPOMetrics

    def __attrs_post_init__(self) -> None:
        where = "DPOOutput"
        finite_float(self.loss, where, "loss")
        require_type(self.metrics, DPOMetrics, where, "metrics")
        if self.dloss_dchosen_B.shape != self.dloss_drejected_B.shape:
            raise ShapeError(
                where,
                "dloss_drejected_B",
                f"has {self.dloss_drejected_B.shape[0]} entries, dloss_dchosen_B has {self.dloss_dchosen_B.shape[0]}.",
                "give one gradient entry per pair in both.",
            )
        if self.dloss_dchosen_B.shape[0] == 0:
            raise EmptyBatchError(where, "dloss_dchosen_B", "is empty.", "a DPO output covers at least one pair.")

    @property
    def num_pairs(self) -> int:
        return int(self.dloss_dchosen_B.shape[0])


def dpo_loss(
    policy_chosen_B: ArrayLike,
    policy_rejected_B: ArrayLike,
    ref_chosen_B: ArrayLike,
    ref_rejected_B: ArrayLike,
    beta: float,
) -> DPOOutput:
    """The DPO loss ``-mean(logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))))``, its gradient and metrics.

    Arguments are sequence logprobs (:func:`sequence_logprobs`), one per pair, as 1-D arrays (any real dtype;
    computed in float64). ``beta`` is the KL coefficient (the cookbook's ``dpo_beta``, default there 0.1).

    Raises:
        EmptyBatchError: no pair.
        ShapeError: the four arrays disagree in length (the error names the first that differs from
            ``policy_chosen_B``).
        NonFiniteError: a NaN or infinity in an input, or ``beta`` times a log-ratio difference overflows.
        ConfigError: ``beta`` is not a finite positive number.
    """
    where = "dpo_loss"
    beta = finite_float(beta, where, "beta")
    if beta <= 0.0:
        raise ConfigError(where, "beta", f"must be > 0, got {beta}.", "use a small positive value such as 0.1.")
    arrays = {
        name: _float_array(value, where, name)
        for name, value in (
            ("policy_chosen_B", policy_chosen_B),
            ("policy_rejected_B", policy_rejected_B),
            ("ref_chosen_B", ref_chosen_B),
            ("ref_rejected_B", ref_rejected_B),
        )
    }
    size = arrays["policy_chosen_B"].shape[0]
    for name, array in arrays.items():
        if array.shape[0] != size:
            raise ShapeError(
                where, name, f"has {array.shape[0]} entries, policy_chosen_B has {size}.", "give one value per pair."
            )
    if size == 0:
        raise EmptyBatchError(where, "policy_chosen_B", "is empty.", "pass at least one pair.")
    with np.errstate(over="ignore", invalid="ignore"):
        chosen_ratio = arrays["policy_chosen_B"] - arrays["ref_chosen_B"]
        rejected_ratio = arrays["policy_rejected_B"] - arrays["ref_rejected_B"]
        chosen_reward = beta * chosen_ratio
        rejected_reward = beta * rejected_ratio
        z = beta * (chosen_ratio - rejected_ratio)
    if not bool(np.isfinite(z).all() and np.isfinite(chosen_reward).all() and np.isfinite(rejected_reward).all()):
        raise NonFiniteError(
            where, "beta", "times the log-ratios overflows float64.", "check the sequence logprobs (and beta)."
        )
    losses = np.logaddexp(0.0, -z)  # -log sigmoid(z), stable for any finite z
    sigmoid_minus_z = np.exp(-np.logaddexp(0.0, z))  # sigmoid(-z) = d(-log sigmoid(z)) / d(-z)
    dloss_dchosen = -beta * sigmoid_minus_z / size
    loss = float(losses.mean())
    metrics = DPOMetrics(
        dpo_loss=loss,
        accuracy=float((chosen_ratio > rejected_ratio).mean()),
        chosen_reward=float(chosen_reward.mean()),
        rejected_reward=float(rejected_reward.mean()),
        margin=float((chosen_reward - rejected_reward).mean()),
    )
    return DPOOutput(loss=loss, dloss_dchosen_B=dloss_dchosen, dloss_drejected_B=-dloss_dchosen, metrics=metrics)


def token_gradients(dloss_dsequence_D: ArrayLike, weights_D: Sequence[ArrayLike]) -> tuple[np.ndarray, ...]:
    """Per-token gradients of a loss of sequence logprobs: ``dloss_dsequence_D[d] * weights_D[d]`` (float64).

    Since ``seq_d = sum_t w_t * logprob_t``, ``d loss / d logprob_t = (d loss / d seq_d) * w_t``. Vectorized (one
    ``np.repeat`` over the concatenated weights).

    Raises:
        EmptyBatchError: no sequence.
        ShapeError: one gradient per sequence is not given.
    """
    where = "token_gradients"
    gradient = _float_array(dloss_dsequence_D, where, "dloss_dsequence_D")
    if gradient.shape[0] != len(weights_D):
        raise ShapeError(
            where, "weights_D", f"has {len(weights_D)} sequences for {gradient.shape[0]} sequence gradients."
        )
    if gradient.shape[0] == 0:
        raise EmptyBatchError(where, "weights_D", "is empty.", "pass at least one sequence.")
    weights, lengths = _ragged(weights_D, where, "weights_D")
    flat = np.multiply(np.repeat(gradient, lengths), weights, dtype=np.float64)
    return tuple(np.split(flat, np.cumsum(lengths)[:-1]))


def dpo_token_gradients(
    output: DPOOutput, chosen_weights_B: Sequence[ArrayLike], rejected_weights_B: Sequence[ArrayLike]
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """``(chosen, rejected)`` per-token gradients of the DPO loss with respect to the policy's target logprobs.

    ``chosen_weights_B[i]`` are the weights of pair ``i``'s chosen datum (``datum.weights_T``), likewise rejected.
    Interleave them as ``DPOPairs.interleaved`` does to match a batch sent as chosen/rejected pairs.
    """
    require_type(output, DPOOutput, "dpo_token_gradients", "output")
    for name, weights in (("chosen_weights_B", chosen_weights_B), ("rejected_weights_B", rejected_weights_B)):
        if len(weights) != output.num_pairs:
            raise ShapeError("dpo_token_gradients", name, f"has {len(weights)} sequences for {output.num_pairs} pairs.")
    return (
        token_gradients(output.dloss_dchosen_B, chosen_weights_B),
        token_gradients(output.dloss_drejected_B, rejected_weights_B),
    )
