"""The Datum record: one training example as the Tinker service takes it.

A datum is a model input of length ``T`` plus loss inputs, each an array of length ``T``: position ``i`` of
every loss input belongs to the prediction made *at* input position ``i`` (of token ``i + 1`` of the full
sequence). Which loss inputs a loss needs:

==================== ==========================================================
``cross_entropy``    ``target_tokens``, ``weights``
``importance_sampling``, ``ppo``, ``cispo``, ``dro``
                     ``target_tokens``, ``logprobs`` (sampling), ``advantages``
``gspo``             as above, plus ``sequence_ratio_mask``
``stable_reinforce`` as ``ppo``, plus provenance spans (below)
==================== ==========================================================

``mask`` is tinkerflow's bookkeeping of which positions are actions (RL); it is not sent to the service.

Provenance (Tinker's ``Datum.with_provenance``): ``model_input_spans`` tile the model input and
``loss_fn_input_spans`` tile the targets, each a run of consecutive positions that were either a prompt's tokens
(:class:`PromptSpan`) or a sampled sequence's tokens (:class:`SampledSpan`), named by the sampled sequence's
``sequence_id``. They come as a pair or not at all; ``stable_reinforce`` needs them on every datum.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, TypeAlias

import attrs
import numpy as np

from tinkerflow._validate import logprobs, require_type, token_ids
from tinkerflow.arrays import Float32_T, Int64_T, as_float32_1d
from tinkerflow.errors import ShapeError, ValidationError
from tinkerflow.model_input import ModelInput

__all__ = ["LOSS_INPUT_FIELDS", "Datum", "PromptSpan", "ProvenanceSpan", "SampledSpan", "arrays_equal"]

#: Tinker loss-input key -> Datum attribute.
LOSS_INPUT_FIELDS: Final[dict[str, str]] = {
    "target_tokens": "target_tokens_T",
    "weights": "weights_T",
    "logprobs": "logprobs_T",
    "advantages": "advantages_T",
    "mask": "mask_T",
    "sequence_ratio_mask": "sequence_ratio_mask_T",
}


def arrays_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Exact equality of two optional arrays (shape, dtype, values; NaN equals NaN; ``None`` only ``None``)."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


_ARRAY_EQ = attrs.cmp_using(eq=arrays_equal)


def _targets(value: object) -> np.ndarray:
    return token_ids(value, "Datum", "target_tokens_T")


def _weights(value: object) -> np.ndarray | None:
    return None if value is None else as_float32_1d(value, "Datum", "weights_T")


def _logprobs(value: object) -> np.ndarray | None:
    return None if value is None else logprobs(value, "Datum", "logprobs_T")


def _advantages(value: object) -> np.ndarray | None:
    return None if value is None else as_float32_1d(value, "Datum", "advantages_T")


def _mask(value: object) -> np.ndarray | None:
    return None if value is None else as_float32_1d(value, "Datum", "mask_T")


def _sequence_ratio_mask(value: object) -> np.ndarray | None:
    return None if value is None else as_float32_1d(value, "Datum", "sequence_ratio_mask_T")


def _span_int(value: object, where: str, field: str) -> None:
    require_type(value, int, where, field)
    assert isinstance(value, int)
    if value < 0:
        raise ValidationError(where, field, f"must be >= 0, got {value}.", "spans count positions from 0.")


@attrs.frozen(kw_only=True)
class _Span:
    """A run of ``length`` consecutive positions: positions ``[offset, offset + length)`` of sequence
    ``sequence_id`` (the ``SampledSequence.sequence_id`` the sampler returned; never empty)."""

    sequence_id: str
    length: int
    offset: int = 0

    def __attrs_post_init__(self) -> None:
        where = type(self).__name__
        require_type(self.sequence_id, str, where, "sequence_id")
        if not self.sequence_id:
            raise ValidationError(
                where, "sequence_id", "is empty.", "name the sampled sequence (SampledSequence.sequence_id)."
            )
        _span_int(self.length, where, "length")
        _span_int(self.offset, where, "offset")


@attrs.frozen(kw_only=True)
class PromptSpan(_Span):
    """Positions ``[offset, offset + length)`` of the prompt of the sampling request that returned ``sequence_id``
    (Tinker's ``PromptProvenanceSpan``)."""


@attrs.frozen(kw_only=True)
class SampledSpan(_Span):
    """Positions ``[offset, offset + length)`` of the tokens sampled as sequence ``sequence_id`` (Tinker's
    ``SampledProvenanceSpan``)."""


#: One run of a provenance tiling.
ProvenanceSpan: TypeAlias = PromptSpan | SampledSpan


def _spans(value: Iterable[ProvenanceSpan] | None, field: str) -> tuple[ProvenanceSpan, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValidationError("Datum", field, f"must be a sequence of spans or None, got {type(value).__name__}.")
    return tuple(value)


def _model_input_spans(value: Iterable[ProvenanceSpan] | None) -> tuple[ProvenanceSpan, ...] | None:
    return _spans(value, "model_input_spans")


def _loss_fn_input_spans(value: Iterable[ProvenanceSpan] | None) -> tuple[ProvenanceSpan, ...] | None:
    return _spans(value, "loss_fn_input_spans")


def _check_spans(spans: tuple[ProvenanceSpan, ...], field: str, length: int) -> None:
    for index, span in enumerate(spans):
        require_type(span, (PromptSpan, SampledSpan), "Datum", f"{field}[{index}]")
    covered = sum(span.length for span in spans)
    if covered != length:
        raise ShapeError(
            "Datum",
            field,
            f"covers {covered} positions but the datum has {length}.",
            "the spans must tile the field exactly (their lengths sum to the model-input length).",
        )


@attrs.frozen
class Datum:
    """One training example: a model input and its loss inputs, all of length ``model_input.length``.

    ``model_input_spans`` / ``loss_fn_input_spans`` (both or neither) tile the model input and the targets with
    :class:`PromptSpan` / :class:`SampledSpan` runs (their lengths sum to ``T``).

    Validated on construction: every array is 1-D with the model input's length, target tokens are
    non-negative int64 (never booleans), float inputs are finite float32, ``logprobs_T`` (sampling logprobs) are
    ``<= 0`` (up to :data:`tinkerflow._validate.LOGPROB_TOLERANCE`), and ``mask_T`` / ``sequence_ratio_mask_T`` hold
    only 0 and 1. Arrays are read-only copies.
    """

    model_input: ModelInput
    target_tokens_T: Int64_T = attrs.field(converter=_targets, eq=_ARRAY_EQ, hash=False)
    weights_T: Float32_T | None = attrs.field(default=None, converter=_weights, eq=_ARRAY_EQ, hash=False)
    logprobs_T: Float32_T | None = attrs.field(default=None, converter=_logprobs, eq=_ARRAY_EQ, hash=False)
    advantages_T: Float32_T | None = attrs.field(default=None, converter=_advantages, eq=_ARRAY_EQ, hash=False)
    mask_T: Float32_T | None = attrs.field(default=None, converter=_mask, eq=_ARRAY_EQ, hash=False)
    sequence_ratio_mask_T: Float32_T | None = attrs.field(
        default=None, converter=_sequence_ratio_mask, eq=_ARRAY_EQ, hash=False
    )
    model_input_spans: tuple[ProvenanceSpan, ...] | None = attrs.field(default=None, converter=_model_input_spans)
    loss_fn_input_spans: tuple[ProvenanceSpan, ...] | None = attrs.field(default=None, converter=_loss_fn_input_spans)

    def __attrs_post_init__(self) -> None:
        require_type(self.model_input, ModelInput, "Datum", "model_input")
        length = self.model_input.length
        for name in LOSS_INPUT_FIELDS.values():
            array: np.ndarray | None = getattr(self, name)
            if array is not None and array.shape[0] != length:
                raise ShapeError(
                    "Datum",
                    name,
                    f"has length {array.shape[0]} but model_input has length {length}.",
                    "give every loss input one entry per model-input position (targets are the inputs shifted by one).",
                )
        if self.target_tokens_T.size and int(self.target_tokens_T.min()) < 0:
            raise ValidationError("Datum", "target_tokens_T", "holds a negative token id.", "token ids are >= 0.")
        for name in ("mask_T", "sequence_ratio_mask_T"):
            mask: np.ndarray | None = getattr(self, name)
            if mask is not None and not bool(np.all((mask == 0) | (mask == 1))):
                raise ValidationError("Datum", name, "must hold only 0 and 1.", "use 1 for positions that count.")
        if (self.model_input_spans is None) != (self.loss_fn_input_spans is None):
            missing = "loss_fn_input_spans" if self.loss_fn_input_spans is None else "model_input_spans"
            raise ValidationError(
                "Datum", missing, "is missing; provenance comes as a pair.", "set both span tilings or neither."
            )
        if self.model_input_spans is not None and self.loss_fn_input_spans is not None:
            _check_spans(self.model_input_spans, "model_input_spans", length)
            _check_spans(self.loss_fn_input_spans, "loss_fn_input_spans", length)

    @property
    def has_provenance(self) -> bool:
        """Whether the datum carries provenance spans."""
        return self.loss_fn_input_spans is not None

    @property
    def length(self) -> int:
        """Number of model-input positions ``T``."""
        return self.model_input.length

    def loss_inputs(self) -> dict[str, np.ndarray]:
        """The loss inputs present, keyed by their Tinker names (``"target_tokens"``, ``"weights"``, ...)."""
        result: dict[str, np.ndarray] = {}
        for key, name in LOSS_INPUT_FIELDS.items():
            array: np.ndarray | None = getattr(self, name)
            if array is not None:
                result[key] = array
        return result
