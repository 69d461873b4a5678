"""The Datum record: one training example as the Tinker service takes it.

A datum is a model input of length ``T`` plus loss inputs, each an array of length ``T``: position ``i`` of
every loss input belongs to the prediction made *at* input position ``i`` (of token ``i + 1`` of the full
sequence). Which loss inputs a loss needs:

==================== ==========================================================
``cross_entropy``    ``target_tokens``, ``weights``
``importance_sampling``, ``ppo``, ``cispo``, ``dro``
                     ``target_tokens``, ``logprobs`` (sampling), ``advantages``
``gspo``             as above, plus ``sequence_ratio_mask``
==================== ==========================================================

``mask`` is tinkerflow's bookkeeping of which positions are actions (RL); it is not sent to the service.
"""

from __future__ import annotations

from typing import Final

import attrs
import numpy as np

from tinkerflow._validate import logprobs, require_type, token_ids
from tinkerflow.arrays import Float32_T, Int64_T, as_float32_1d
from tinkerflow.errors import ShapeError, ValidationError
from tinkerflow.model_input import ModelInput

__all__ = ["LOSS_INPUT_FIELDS", "Datum", "arrays_equal"]

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


@attrs.frozen
class Datum:
    """One training example: a model input and its loss inputs, all of length ``model_input.length``.

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
