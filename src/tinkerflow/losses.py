"""Tinker's built-in losses: which datum fields each needs, its configuration, and numpy reference formulas.

Pure (numpy only, no torch, no I/O). Backends validate a request with :func:`check_loss_fn`,
:func:`resolve_loss_config` and :func:`check_loss_inputs` *before* they touch any weights; tests compare a backend's
loss value and gradient against :func:`reference_loss`.

Notation (as in the Tinker docs, one term per token, summed over tokens and datums, never normalized):
``lp`` = the learner's logprobs of ``target_tokens`` (what the forward pass computes), ``q`` = the sampling
logprobs (the ``logprobs`` input), ``A`` = ``advantages``, ``w`` = ``weights``, ``r = exp(lp - q)`` the importance
ratio, ``sg`` = stop-gradient, ``clip(r) = min(max(r, lo), hi)`` with ``lo = clip_low_threshold`` (default 0.8) and
``hi = clip_high_threshold`` (default 1.2).

==================== ============================================== ===========================================
loss                 per-token loss                                 d loss / d lp
==================== ============================================== ===========================================
cross_entropy        ``-w * lp``                                    ``-w``
importance_sampling  ``-r * A``                                     ``-r * A``
ppo                  ``-min(r * A, clip(r) * A)``                   ``-r * A`` where the unclipped term is the
                                                                    minimum or ``lo <= r <= hi``, else ``0``
cispo                ``-sg(clip(r)) * lp * A``                      ``-clip(r) * A``
dro                  ``-(lp * A - beta / 2 * (lp - q) ** 2)``       ``-(A - beta * (lp - q))``
gspo                 ``-min(s * A, clip(s) * A)``                   ``-s * A`` where the unclipped term is the
                                                                    minimum or ``lo <= s <= hi``, else ``0``
==================== ============================================== ===========================================

``gspo`` (GSPO, Zheng et al. 2025, as Tinker documents it): ``s = exp(mean(lp - q))`` is the datum's
sequence-level ratio, the mean taken over the positions where ``sequence_ratio_mask`` is 1 (``s = 1`` when there
are none), applied to each token as ``sg(s) * exp(lp - sg(lp))``: its value is ``s`` and its derivative in a
token's ``lp`` is ``s``, inside PPO's token-wise min/clip. Tokens whose advantage is 0 contribute nothing.

``stable_reinforce`` is accepted and validated (its inputs are ``target_tokens``, ``logprobs``, ``advantages``,
its only setting the optional ``kl_coeff``) and needs provenance spans on every datum, with nonzero advantages only
at sampled positions (:func:`check_provenance`); Tinker has not published its formula (it reads stability
information the sampler recorded per sequence), so there is no reference formula and no local implementation.

Every loss reports ``loss:sum``, the sum of the per-token losses over all tokens of all datums.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from typing import Final, Literal, TypeAlias, get_args

import attrs
import numpy as np
from jaxtyping import Float

from tinkerflow.arrays import checked
from tinkerflow.datum import LOSS_INPUT_FIELDS, Datum, SampledSpan
from tinkerflow.errors import ConfigError, ShapeError, ValidationError

__all__ = [
    "BUILTIN_LOSSES",
    "LOSS_CONFIG_DEFAULTS",
    "LOSS_CONFIG_OPTIONAL",
    "LOSS_INPUTS",
    "PROVENANCE_LOSSES",
    "REFERENCE_LOSSES",
    "LossFnType",
    "LossTerms",
    "check_datums",
    "check_loss_fn",
    "check_loss_inputs",
    "check_provenance",
    "cispo_loss",
    "cross_entropy_loss",
    "dro_loss",
    "gspo_loss",
    "importance_sampling_loss",
    "ppo_loss",
    "reference_batch_loss",
    "reference_loss",
    "resolve_loss_config",
]

#: The built-in losses of Tinker's ``forward_backward`` that tinkerflow knows. ``stable_reinforce`` is validated
#: (inputs, config, provenance) and passed through by the Tinker backend, but its formula is not published: it has
#: no reference formula here and no local implementation. ``custom`` is not accepted (use
#: ``forward_backward_custom``).
LossFnType: TypeAlias = Literal[
    "cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce"
]

BUILTIN_LOSSES: Final[tuple[LossFnType, ...]] = get_args(LossFnType)

#: The losses with a reference formula (:func:`reference_loss`), which the local backend implements.
REFERENCE_LOSSES: Final[tuple[LossFnType, ...]] = tuple(loss for loss in BUILTIN_LOSSES if loss != "stable_reinforce")

#: The losses that need provenance spans on every datum (:func:`check_provenance`).
PROVENANCE_LOSSES: Final[tuple[LossFnType, ...]] = ("stable_reinforce",)

#: A 1-D float array of any float dtype (the reference formulas compute in float64).
AnyFloat_T = Float[np.ndarray, "T"]

_POLICY_INPUTS: Final = ("target_tokens", "logprobs", "advantages")

#: Loss inputs (Tinker names) each loss needs; the datum field of each is ``LOSS_INPUT_FIELDS[name]``.
LOSS_INPUTS: Final[Mapping[LossFnType, tuple[str, ...]]] = types.MappingProxyType(
    {
        "cross_entropy": ("target_tokens", "weights"),
        "importance_sampling": _POLICY_INPUTS,
        "ppo": _POLICY_INPUTS,
        "cispo": _POLICY_INPUTS,
        "dro": _POLICY_INPUTS,
        "gspo": (*_POLICY_INPUTS, "sequence_ratio_mask"),
        "stable_reinforce": _POLICY_INPUTS,
    }
)

_CLIP_DEFAULTS: Final = types.MappingProxyType({"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})

#: The ``loss_fn_config`` keys each loss accepts and their defaults. ``None`` marks a required key: Tinker
#: documents no default ``beta`` for ``dro``, so tinkerflow makes you choose one.
LOSS_CONFIG_DEFAULTS: Final[Mapping[LossFnType, Mapping[str, float | None]]] = types.MappingProxyType(
    {
        "cross_entropy": types.MappingProxyType({}),
        "importance_sampling": types.MappingProxyType({}),
        "ppo": _CLIP_DEFAULTS,
        "cispo": _CLIP_DEFAULTS,
        "dro": types.MappingProxyType({"beta": None}),
        "gspo": _CLIP_DEFAULTS,
        "stable_reinforce": types.MappingProxyType({}),
    }
)

#: ``loss_fn_config`` keys a loss accepts that have no default: sent only when given (``stable_reinforce``'s
#: ``kl_coeff``, whose default Tinker does not document; tinkerflow checks it is finite and ``>= 0``).
LOSS_CONFIG_OPTIONAL: Final[Mapping[LossFnType, tuple[str, ...]]] = types.MappingProxyType(
    {"stable_reinforce": ("kl_coeff",)}
)


def check_loss_fn(loss_fn: object, where: str = "forward_backward") -> LossFnType:
    """Return ``loss_fn`` as a known built-in loss name, or raise :class:`ConfigError` naming the choices."""
    if isinstance(loss_fn, str) and loss_fn in BUILTIN_LOSSES:
        return loss_fn
    fix = f"use one of {', '.join(BUILTIN_LOSSES)}"
    if loss_fn == "custom":
        fix = "pass a loss function to forward_backward_custom instead"
    raise ConfigError(where, "loss_fn", f"unknown loss {loss_fn!r}.", fix + ".")


def resolve_loss_config(
    loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None, where: str = "forward_backward"
) -> Mapping[str, float]:
    """The loss's full configuration: ``loss_fn_config`` over the defaults, validated.

    Raises:
        ConfigError: an unknown key, a missing required key (``dro``'s ``beta``), a non-finite value, clip
            thresholds that are not ``0 < clip_low_threshold <= clip_high_threshold``, or a negative ``beta`` /
            ``kl_coeff``. Optional keys (:data:`LOSS_CONFIG_OPTIONAL`) appear in the result only when given.
    """
    defaults = LOSS_CONFIG_DEFAULTS[loss_fn]
    optional = LOSS_CONFIG_OPTIONAL.get(loss_fn, ())
    given = dict(loss_fn_config or {})
    resolved: dict[str, float] = {}
    for key in given:
        if key not in defaults and key not in optional:
            accepted = ", ".join((*defaults, *optional)) or "no keys"
            raise ConfigError(
                where, f"loss_fn_config[{key!r}]", f"is not a setting of loss {loss_fn!r}.", f"it accepts {accepted}."
            )
    present: dict[str, float | None] = {**defaults, **{key: given[key] for key in optional if key in given}}
    for key, default in present.items():
        value = given.get(key, default)
        if value is None:
            raise ConfigError(
                where,
                f"loss_fn_config[{key!r}]",
                f"is required by loss {loss_fn!r}.",
                f"pass loss_fn_config={{{key!r}: ...}}.",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(where, f"loss_fn_config[{key!r}]", f"must be a finite number, got {value!r}.")
        resolved[key] = float(value)
    if "clip_low_threshold" in resolved:
        low, high = resolved["clip_low_threshold"], resolved["clip_high_threshold"]
        if not 0.0 < low <= high:
            raise ConfigError(
                where,
                "loss_fn_config",
                f"clip thresholds must satisfy 0 < clip_low_threshold <= clip_high_threshold, got {low} and {high}.",
                "they bound the ratio p/q, e.g. 0.8 and 1.2.",
            )
    for key in ("beta", "kl_coeff"):
        if resolved.get(key, 0.0) < 0.0:
            raise ConfigError(where, f"loss_fn_config[{key!r}]", f"must be >= 0, got {resolved[key]}.")
    return types.MappingProxyType(resolved)


def check_datums(data: Sequence[Datum], where: str = "forward_backward") -> None:
    """Raise :class:`ValidationError` unless ``data`` is a non-empty sequence of non-empty datums."""
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise ValidationError(where, "data", f"expected a sequence of Datum, got {type(data).__name__}.")
    if len(data) == 0:
        raise ValidationError(where, "data", "is empty.", "pass at least one datum.")
    for index, datum in enumerate(data):
        if not isinstance(datum, Datum):
            kind = f"{type(datum).__module__}.{type(datum).__qualname__}"
            raise ValidationError(
                where,
                f"data[{index}]",
                f"expected a tinkerflow.Datum, got {kind}.",
                "convert a tinker.types.Datum with tinkerflow.interop.datum_from_tinker.",
            )
        if datum.length == 0:
            raise ValidationError(where, f"data[{index}].model_input", "is empty.", "drop empty datums.")


def check_loss_inputs(loss_fn: LossFnType, data: Sequence[Datum], where: str = "forward_backward") -> None:
    """Raise unless ``data`` is a non-empty sequence of datums that each carry every input ``loss_fn`` needs.

    Raises:
        ValidationError: ``data`` is empty or holds a non-``Datum``, or a datum has no positions, or lacks an input.
        ShapeError: a datum's loss inputs disagree in length with its model input.
    """
    check_datums(data, where)
    needed = LOSS_INPUTS[loss_fn]
    for index, datum in enumerate(data):
        length = datum.length
        for key in needed:
            field = LOSS_INPUT_FIELDS[key]
            array: np.ndarray | None = getattr(datum, field)
            if array is None:
                raise ValidationError(
                    where,
                    f"data[{index}].{field}",
                    f"is missing; loss {loss_fn!r} needs {', '.join(needed)}.",
                    f"set {field} on every datum (or choose a loss whose inputs you have).",
                )
            if array.shape != (length,):
                raise ShapeError(
                    where,
                    f"data[{index}].{field}",
                    f"has shape {array.shape} but the model input has {length} positions.",
                    "give one entry per model-input position.",
                )
    check_provenance(loss_fn, data, where)


def check_provenance(loss_fn: LossFnType, data: Sequence[Datum], where: str = "forward_backward") -> None:
    """Raise unless every datum carries the provenance ``loss_fn`` needs (only ``stable_reinforce`` needs any).

    ``stable_reinforce`` needs ``loss_fn_input_spans`` on every datum (as tinker-cookbook checks before sending),
    and a nonzero advantage only at positions that a :class:`~tinkerflow.datum.SampledSpan` covers (the service
    refuses others; the cookbook forbids the discounted KL penalty with it for that reason).

    Raises:
        ValidationError: a datum has no provenance, or a nonzero advantage at a prompt position.
    """
    if loss_fn not in PROVENANCE_LOSSES:
        return
    for index, datum in enumerate(data):
        spans = datum.loss_fn_input_spans
        if spans is None:
            raise ValidationError(
                where,
                f"data[{index}].loss_fn_input_spans",
                f"is missing; loss {loss_fn!r} needs provenance spans on every datum.",
                "sample with a client that returns sequence ids and assemble with include_provenance=True (a datum "
                "gets none when an action lacks a sequence_id or no target is a sampled token), or use another loss.",
            )
        if datum.advantages_T is None:
            continue
        sampled = np.repeat([isinstance(span, SampledSpan) for span in spans], [span.length for span in spans])
        outside = np.flatnonzero((datum.advantages_T != 0) & ~sampled.astype(bool))
        if outside.size:
            raise ValidationError(
                where,
                f"data[{index}].advantages_T",
                f"is nonzero at position {int(outside[0])}, which is not a sampled token; loss {loss_fn!r} takes "
                "advantages on sampled tokens only.",
                "keep advantages (and KL penalties) on action tokens, or use another loss.",
            )


@attrs.frozen(eq=False)
class LossTerms:
    """Per-token loss and its derivative with respect to the learner's target logprobs (float64, length T)."""

    loss_T: np.ndarray
    dloss_dlogprobs_T: np.ndarray

    @property
    def loss(self) -> float:
        """The summed loss (what ``loss:sum`` reports)."""
        return float(self.loss_T.sum())


def _f64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


@checked
def cross_entropy_loss(logprobs_T: AnyFloat_T, weights_T: AnyFloat_T) -> LossTerms:
    """``-w * lp`` per token (weighted negative log-likelihood)."""
    weights = _f64(weights_T)
    return LossTerms(loss_T=-weights * _f64(logprobs_T), dloss_dlogprobs_T=-weights)


@checked
def importance_sampling_loss(
    logprobs_T: AnyFloat_T,
    sampling_logprobs_T: AnyFloat_T,
    advantages_T: AnyFloat_T,
) -> LossTerms:
    """``-r * A`` per token, ``r = exp(lp - q)`` (REINFORCE with an importance-sampling correction)."""
    ratio = np.exp(_f64(logprobs_T) - _f64(sampling_logprobs_T))
    advantages = _f64(advantages_T)
    return LossTerms(loss_T=-ratio * advantages, dloss_dlogprobs_T=-ratio * advantages)


def _clipped_surrogate(ratio: np.ndarray, advantages: np.ndarray, low: float, high: float) -> LossTerms:
    """``-min(r * A, clip(r, lo, hi) * A)`` per token, for a ratio ``r`` whose derivative in ``lp`` is ``r``."""
    clipped_term = np.clip(ratio, low, high) * advantages
    unclipped_term = ratio * advantages
    objective = np.minimum(unclipped_term, clipped_term)
    # The gradient flows through the unclipped term where it is the minimum, and through the clipped one only
    # where the clip is inactive (lo <= r <= hi, where both terms are equal).
    inside = (ratio >= low) & (ratio <= high)
    flows = inside | (unclipped_term < clipped_term)
    return LossTerms(loss_T=-objective, dloss_dlogprobs_T=np.where(flows, -unclipped_term, 0.0))


@checked
def ppo_loss(
    logprobs_T: AnyFloat_T,
    sampling_logprobs_T: AnyFloat_T,
    advantages_T: AnyFloat_T,
    clip_low_threshold: float = 0.8,
    clip_high_threshold: float = 1.2,
) -> LossTerms:
    """``-min(r * A, clip(r, lo, hi) * A)`` per token (PPO's clipped surrogate, token-wise)."""
    ratio = np.exp(_f64(logprobs_T) - _f64(sampling_logprobs_T))
    return _clipped_surrogate(ratio, _f64(advantages_T), clip_low_threshold, clip_high_threshold)


@checked
def gspo_loss(
    logprobs_T: AnyFloat_T,
    sampling_logprobs_T: AnyFloat_T,
    advantages_T: AnyFloat_T,
    sequence_ratio_mask_T: AnyFloat_T,
    clip_low_threshold: float = 0.8,
    clip_high_threshold: float = 1.2,
) -> LossTerms:
    """``-min(s * A, clip(s, lo, hi) * A)`` per token with the sequence-level ratio
    ``s = exp(mean(lp - q))`` over the positions where ``sequence_ratio_mask`` is 1 (``s = 1`` if none), applied
    token-wise as ``sg(s) * exp(lp - sg(lp))`` (value ``s``, derivative ``s`` in each token's ``lp``)."""
    mask = _f64(sequence_ratio_mask_T)
    count = float(mask.sum())
    log_ratio = float((mask * (_f64(logprobs_T) - _f64(sampling_logprobs_T))).sum()) / count if count else 0.0
    ratio = np.full(mask.shape, math.exp(log_ratio), dtype=np.float64)
    return _clipped_surrogate(ratio, _f64(advantages_T), clip_low_threshold, clip_high_threshold)


@checked
def cispo_loss(
    logprobs_T: AnyFloat_T,
    sampling_logprobs_T: AnyFloat_T,
    advantages_T: AnyFloat_T,
    clip_low_threshold: float = 0.8,
    clip_high_threshold: float = 1.2,
) -> LossTerms:
    """``-sg(clip(r, lo, hi)) * lp * A`` per token (the clipped ratio is a constant weight)."""
    logprobs = _f64(logprobs_T)
    ratio = np.exp(logprobs - _f64(sampling_logprobs_T))
    weight = np.clip(ratio, clip_low_threshold, clip_high_threshold) * _f64(advantages_T)
    return LossTerms(loss_T=-weight * logprobs, dloss_dlogprobs_T=-weight)


@checked
def dro_loss(
    logprobs_T: AnyFloat_T,
    sampling_logprobs_T: AnyFloat_T,
    advantages_T: AnyFloat_T,
    beta: float,
) -> LossTerms:
    """``-(lp * A - beta / 2 * (lp - q)^2)`` per token (DRO's quadratic penalty on the log-ratio)."""
    logprobs = _f64(logprobs_T)
    advantages = _f64(advantages_T)
    log_ratio = logprobs - _f64(sampling_logprobs_T)
    loss = -(logprobs * advantages - 0.5 * beta * log_ratio**2)
    return LossTerms(loss_T=loss, dloss_dlogprobs_T=-(advantages - beta * log_ratio))


def reference_loss(
    loss_fn: LossFnType,
    logprobs_T: np.ndarray,
    datum: Datum,
    loss_fn_config: Mapping[str, float] | None = None,
) -> LossTerms:
    """The per-token loss of one datum given the learner's target logprobs ``logprobs_T`` (numpy, float64).

    Validates the datum's inputs and the config as a backend would (same typed errors).
    """
    loss_fn = check_loss_fn(loss_fn, "reference_loss")
    if loss_fn not in REFERENCE_LOSSES:
        raise ConfigError(
            "reference_loss", "loss_fn", f"{loss_fn} has no reference formula: Tinker has not published it."
        )
    config = resolve_loss_config(loss_fn, loss_fn_config, "reference_loss")
    check_loss_inputs(loss_fn, [datum], "reference_loss")
    if np.shape(logprobs_T) != (datum.length,):
        raise ShapeError(
            "reference_loss", "logprobs_T", f"has shape {np.shape(logprobs_T)}, the datum has {datum.length} positions."
        )
    if loss_fn == "cross_entropy":
        assert datum.weights_T is not None
        return cross_entropy_loss(logprobs_T, datum.weights_T)
    assert datum.logprobs_T is not None
    assert datum.advantages_T is not None
    q, advantages = datum.logprobs_T, datum.advantages_T
    if loss_fn == "importance_sampling":
        return importance_sampling_loss(logprobs_T, q, advantages)
    if loss_fn == "ppo":
        return ppo_loss(logprobs_T, q, advantages, config["clip_low_threshold"], config["clip_high_threshold"])
    if loss_fn == "cispo":
        return cispo_loss(logprobs_T, q, advantages, config["clip_low_threshold"], config["clip_high_threshold"])
    if loss_fn == "gspo":
        assert datum.sequence_ratio_mask_T is not None
        low, high = config["clip_low_threshold"], config["clip_high_threshold"]
        return gspo_loss(logprobs_T, q, advantages, datum.sequence_ratio_mask_T, low, high)
    return dro_loss(logprobs_T, q, advantages, config["beta"])


def reference_batch_loss(
    loss_fn: LossFnType,
    logprobs_D: Sequence[np.ndarray],
    data: Sequence[Datum],
    loss_fn_config: Mapping[str, float] | None = None,
) -> float:
    """``loss:sum`` of a batch: the per-token losses summed over every token of every datum."""
    if len(logprobs_D) != len(data):
        raise ShapeError("reference_batch_loss", "logprobs_D", f"has {len(logprobs_D)} entries for {len(data)} datums.")
    return float(
        sum(reference_loss(loss_fn, lp, datum, loss_fn_config).loss for lp, datum in zip(logprobs_D, data, strict=True))
    )
