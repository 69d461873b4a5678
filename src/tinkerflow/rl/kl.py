"""KL penalty against a reference policy, as a pure function over a batch (new datums; the inputs are untouched).

tinker-cookbook 0.6.1 (``rl/metrics.py``, ``incorporate_kl_penalty``) computes the same penalty but rewrites the
datums' advantages in place; here the batch is a value and a new one is returned. With ``d = (lp_sampled - lp_ref)
* mask`` per action position and ``avg = sum(d) / sum(mask)`` over the whole batch, each datum's advantages get
``coef * mask * (avg - d)`` added, or the discounted future sum of that term when ``discount`` is given
(``y[t] = sum_k discount**k * x[t + k]`` within the datum).

On-policy distillation (tinker-cookbook 0.6.1, ``distillation/train_on_policy.py``, also ``incorporate_kl_penalty``)
uses the same per-token difference with the reference (the teacher) but without the batch-mean baseline: each datum's
advantages get ``-coef * mask * d`` (the negative reverse KL ``log p_student - log p_teacher`` of each sampled
token), or its discounted future sum; :func:`reverse_kl_advantages` computes it, logged as ``teacher_kl``.

Deliberate difference: with a discount the cookbook also adds the discounted sum at observation positions and at
parse-error-masked turns (mask 0), which then carry a nonzero advantage and are trained with sampling logprob 0.
Here the discounted penalty is kept on action positions only (multiplied by the mask), so the mask stays exactly
where the advantages may be nonzero.

The shell obtains the reference logprobs: it asks a reference sampler for the logprobs of
:func:`reference_prompts` (each datum's full sequence: input plus last target) and passes, per datum, the logprobs
of the target positions (the prompt logprobs without their first entry).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np

from tinkerflow._validate import finite_float, require_type
from tinkerflow.arrays import as_float32_1d
from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, ShapeError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.rl.assembly import RLBatch

__all__ = ["discounted_future_sum", "kl_penalty", "reference_prompts", "reverse_kl_advantages"]

_BLOCK = 128


def _discount_matrix(discount: float, size: int) -> np.ndarray:
    """Upper-triangular ``M[i, j] = discount ** (j - i)`` for ``j >= i`` (float64)."""
    offsets = np.arange(size)[None, :] - np.arange(size)[:, None]
    with np.errstate(under="ignore"):
        return np.where(offsets >= 0, float(discount) ** np.maximum(offsets, 0).astype(np.float64), 0.0)


def discounted_future_sum(values_T: np.ndarray, discount: float) -> np.ndarray:
    """``y[t] = sum_{k >= 0} discount**k * values_T[t + k]`` (float64), computed block by block (no per-token loop).

    Within a block of 128 positions a triangular matrix product; across blocks the carried sum decays by
    ``discount ** distance``. Every power is at most 1, so nothing overflows.
    """
    where = "discounted_future_sum"
    gamma = finite_float(discount, where, "discount")
    if not 0.0 <= gamma <= 1.0:
        raise ConfigError(where, "discount", f"must lie in [0, 1], got {discount!r}.")
    values = np.asarray(values_T, dtype=np.float64)
    if values.ndim != 1:
        raise ShapeError(where, "values_T", f"expected a 1-D array, got shape {values.shape}.")
    size = values.shape[0]
    result = np.empty(size, dtype=np.float64)
    if size == 0:
        return result
    block = min(_BLOCK, size)
    matrix = _discount_matrix(gamma, block)
    with np.errstate(under="ignore"):
        decay = gamma ** np.arange(block, 0, -1, dtype=np.float64)  # distance from each row to the next block
    carry = 0.0
    for start in range((size - 1) // block * block, -1, -block):
        stop = min(start + block, size)
        width = stop - start
        local = matrix[:width, :width] @ values[start:stop]
        local += decay[block - width :] * carry
        result[start:stop] = local
        carry = float(local[0])
    return result


def reference_prompts(batch: RLBatch) -> list[ModelInput]:
    """Each datum's full sequence (its input plus its last target), whose logprobs the reference policy must give."""
    require_type(batch, RLBatch, "reference_prompts", "batch")
    prompts: list[ModelInput] = []
    for datum in batch.datums:
        targets = datum.target_tokens_T
        prompts.append(datum.model_input.append_tokens(targets[-1:]) if targets.shape[0] else datum.model_input)
    return prompts


def _kl_terms(
    where: str, batch: RLBatch, reference_logprobs_D: Sequence[np.ndarray], coef: float, discount: float | None
) -> tuple[list[np.ndarray], list[np.ndarray], float, float | None]:
    """Checked inputs: per datum ``d = (lp_sampled - lp_ref) * mask`` and the mask (float64), the coefficient and
    the discount."""
    require_type(batch, RLBatch, where, "batch")
    coefficient = finite_float(coef, where, "coef")
    if coefficient < 0:
        raise ConfigError(where, "coef", f"must be >= 0, got {coef!r}.", "use 0 to disable the penalty.")
    gamma: float | None = None
    if discount is not None:
        gamma = finite_float(discount, where, "discount")
        if not 0.0 <= gamma <= 1.0:
            raise ConfigError(where, "discount", f"must lie in [0, 1], got {discount!r}.", "or pass None.")
    if len(reference_logprobs_D) != batch.size:
        raise ShapeError(
            where,
            "reference_logprobs_D",
            f"has {len(reference_logprobs_D)} arrays for {batch.size} datums.",
            "give one array per datum, in the batch's order.",
        )
    diffs: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for index, (datum, reference) in enumerate(zip(batch.datums, reference_logprobs_D, strict=True)):
        for name in ("logprobs_T", "advantages_T", "mask_T"):
            if getattr(datum, name) is None:
                raise ValidationError(
                    where, f"batch.datums[{index}].{name}", "is missing.", "assemble the batch with assemble_batch."
                )
        reference_T = as_float32_1d(reference, where, f"reference_logprobs_D[{index}]")
        if reference_T.shape[0] != datum.length:
            raise ShapeError(
                where,
                f"reference_logprobs_D[{index}]",
                f"has length {reference_T.shape[0]} but datum {index} has {datum.length} targets.",
                "pass the reference logprobs of the target positions (prompt logprobs without the first entry).",
            )
        assert datum.logprobs_T is not None
        assert datum.mask_T is not None
        mask = datum.mask_T.astype(np.float64)
        diffs.append((datum.logprobs_T.astype(np.float64) - reference_T.astype(np.float64)) * mask)
        masks.append(mask)
    return diffs, masks, coefficient, gamma


def _average(diffs: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """``sum(d) / sum(mask)`` over the batch (0.0 without action positions, or when not finite)."""
    action_positions = float(sum(float(mask.sum()) for mask in masks))
    average = float(sum(float(diff.sum()) for diff in diffs)) / action_positions if action_positions else 0.0
    return average if math.isfinite(average) else 0.0


def _add_advantages(datum: Datum, term: np.ndarray, mask: np.ndarray, gamma: float | None) -> Datum:
    """``datum`` with ``term`` (or its discounted future sum, kept on action positions) added to its advantages."""
    if gamma is not None:
        term = discounted_future_sum(term, gamma) * mask  # only action positions may carry advantage
    assert datum.advantages_T is not None
    return attrs.evolve(datum, advantages_T=datum.advantages_T.astype(np.float64) + term)


def kl_penalty(
    batch: RLBatch, reference_logprobs_D: Sequence[np.ndarray], coef: float, discount: float | None = None
) -> tuple[RLBatch, dict[str, float]]:
    """A new batch whose advantages include a KL penalty towards the reference policy, and its metrics.

    Args:
        batch: datums with ``logprobs_T``, ``advantages_T`` and ``mask_T`` (as :func:`assemble_batch` makes them).
        reference_logprobs_D: per datum, the reference policy's logprobs of its target tokens (length ``T``).
        coef: penalty coefficient (>= 0; 0 leaves the advantages as they are).
        discount: ``None`` adds the per-token penalty; a value in [0, 1] adds its discounted future sum.

    Returns:
        The new batch (same ids, new datums) and ``{"kl_policy_base": avg}``: the mean over action positions of
        ``lp_sampled - lp_ref`` (0.0 when the batch has no action position).

    Raises:
        ConfigError: ``coef`` negative or not finite, ``discount`` outside [0, 1].
        ShapeError: not one reference array per datum, or one of the wrong length.
        NonFiniteError: a reference logprob is NaN or infinite.
        ValidationError: a datum lacks ``logprobs_T``, ``advantages_T`` or ``mask_T``.
    """
    diffs, masks, coefficient, gamma = _kl_terms("kl_penalty", batch, reference_logprobs_D, coef, discount)
    average = _average(diffs, masks)
    datums = []
    for datum, diff, mask in zip(batch.datums, diffs, masks, strict=True):
        datums.append(_add_advantages(datum, coefficient * mask * (average - diff), mask, gamma))
    return attrs.evolve(batch, datums=tuple(datums)), {"kl_policy_base": average}


def reverse_kl_advantages(
    batch: RLBatch, teacher_logprobs_D: Sequence[np.ndarray], coef: float, discount: float | None = None
) -> tuple[RLBatch, dict[str, float]]:
    """On-policy distillation: a new batch whose advantages include the negative reverse KL to the teacher.

    Each action token's advantage gets ``-coef * (lp_student - lp_teacher)`` (no baseline; the sampled tokens'
    logprobs stand for the student's), or the discounted future sum of that term when ``discount`` is given;
    observation and masked positions are left as they are. The environment's own (group-centered) advantages
    already in the batch are kept, so a reward mixes in by addition.

    Args:
        batch: datums with ``logprobs_T``, ``advantages_T`` and ``mask_T`` (as :func:`assemble_batch` makes them).
        teacher_logprobs_D: per datum, the teacher's logprobs of its target tokens (length ``T``).
        coef: weight of the KL term (>= 0).
        discount: ``None`` for the per-token term; a value in [0, 1] for its discounted future sum.

    Returns:
        The new batch and ``{"teacher_kl": avg}``: the mean over action positions of ``lp_student - lp_teacher``,
        a sampled estimate of the per-token reverse KL (0.0 when the batch has no action position).

    Raises:
        The errors of :func:`kl_penalty`, for the same inputs.
    """
    diffs, masks, coefficient, gamma = _kl_terms("reverse_kl_advantages", batch, teacher_logprobs_D, coef, discount)
    datums = tuple(
        _add_advantages(datum, -coefficient * diff, mask, gamma)
        for datum, diff, mask in zip(batch.datums, diffs, masks, strict=True)
    )
    return attrs.evolve(batch, datums=datums), {"teacher_kl": _average(diffs, masks)}
