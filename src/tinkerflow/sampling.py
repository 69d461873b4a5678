"""Sampling records: parameters of a sampling request and what comes back."""

from __future__ import annotations

from typing import Literal, TypeAlias, cast

import attrs
import numpy as np

from tinkerflow._validate import check_items, in_range, int_items, logprobs, require_type, str_or_items, token_ids
from tinkerflow.arrays import Float32_T, Float32_T_K, Int64_T, Int64_T_K
from tinkerflow.datum import arrays_equal
from tinkerflow.errors import ConfigError, ShapeError, ValidationError

__all__ = ["SampleResponse", "SampledSequence", "SamplingParams", "StopReason", "check_stops"]

StopReason: TypeAlias = Literal["length", "stop"]

_ARRAY_EQ = attrs.cmp_using(eq=arrays_equal)


@attrs.frozen
class SamplingParams:
    """Parameters of a sampling request (Tinker's ``SamplingParams``).

    Attributes:
        max_tokens: most tokens to generate (``None``: the backend's limit).
        temperature: 0 for greedy decoding, else the softmax temperature.
        top_p: nucleus mass in (0, 1].
        top_k: keep the k most likely tokens; -1 for all.
        stop_strings: stop when the decoded text produces one of these (exclusive with ``stop_tokens``).
        stop_tokens: stop after sampling one of these token ids.
        seed: makes sampling reproducible where the backend supports it.
    """

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop_strings: tuple[str, ...] = attrs.field(default=(), converter=str_or_items)
    stop_tokens: tuple[int, ...] = attrs.field(default=(), converter=int_items)
    seed: int | None = None

    def __attrs_post_init__(self) -> None:
        where = "SamplingParams"
        if self.max_tokens is not None:
            require_type(self.max_tokens, int, where, "max_tokens")
            if self.max_tokens <= 0:
                raise ConfigError(where, "max_tokens", f"must be positive, got {self.max_tokens}.")
        in_range(self.temperature, where, "temperature", low=0.0)
        in_range(self.top_p, where, "top_p", low=0.0, high=1.0, low_open=True)
        require_type(self.top_k, int, where, "top_k")
        if self.top_k == 0 or self.top_k < -1:
            raise ConfigError(where, "top_k", f"must be -1 (all tokens) or >= 1, got {self.top_k}.")
        check_stops(self.stop_strings, self.stop_tokens, where)
        if self.stop_strings and self.stop_tokens:
            raise ConfigError(
                where,
                "stop_tokens",
                "both stop_strings and stop_tokens are set; Tinker takes one kind.",
                "convert the strings to token ids with the tokenizer, or use strings only.",
            )
        if self.seed is not None:
            require_type(self.seed, int, where, "seed")


def check_stops(stop_strings: object, stop_tokens: object, where: str) -> None:
    """Stop strings (a list of non-empty strings) and stop tokens (a list of token ids ``>= 0``), as converted by
    :func:`~tinkerflow._validate.str_or_items` / :func:`~tinkerflow._validate.int_items`; ``ValidationError`` for
    a value of the wrong type, ``ConfigError`` for an empty string or a negative id (naming ``field[index]``)."""
    for index, text in enumerate(check_items(stop_strings, str, where, "stop_strings")):
        if not text:
            raise ConfigError(where, f"stop_strings[{index}]", "is empty.", "remove it.")
    for index, token in enumerate(check_items(stop_tokens, int, where, "stop_tokens")):
        if cast("int", token) < 0:
            raise ConfigError(where, f"stop_tokens[{index}]", f"must be a token id >= 0, got {token}.")


def _tokens(value: object) -> np.ndarray:
    return token_ids(value, "SampledSequence", "tokens_T")


def _seq_logprobs(value: object) -> np.ndarray | None:
    return None if value is None else logprobs(value, "SampledSequence", "logprobs_T")


def _seq_topk_ids(value: object) -> np.ndarray | None:
    return None if value is None else token_ids(value, "SampledSequence", "topk_token_ids_T_K", ndim=2)


def _seq_topk_logprobs(value: object) -> np.ndarray | None:
    return None if value is None else logprobs(value, "SampledSequence", "topk_logprobs_T_K", ndim=2)


def _prompt_logprobs(value: object) -> np.ndarray | None:
    return None if value is None else logprobs(value, "SampleResponse", "prompt_logprobs_T", allow_nan=True)


def _prompt_topk_ids(value: object) -> np.ndarray | None:
    return None if value is None else token_ids(value, "SampleResponse", "topk_prompt_token_ids_T_K", ndim=2)


def _prompt_topk_logprobs(value: object) -> np.ndarray | None:
    return None if value is None else logprobs(value, "SampleResponse", "topk_prompt_logprobs_T_K", ndim=2)


def _sequences(value: object) -> tuple[SampledSequence, ...]:
    return tuple(cast("list[SampledSequence]", value))


def _check_topk(where: str, ids: np.ndarray | None, logprobs: np.ndarray | None, length: int, name: str) -> None:
    if (ids is None) != (logprobs is None):
        raise ValidationError(
            where, f"{name}_token_ids_T_K", "top-k token ids and logprobs must be given together.", "give both or none."
        )
    if ids is not None and logprobs is not None:
        if ids.shape != logprobs.shape:
            raise ShapeError(where, f"{name}_logprobs_T_K", f"shape {logprobs.shape} differs from ids {ids.shape}.")
        if ids.shape[0] != length:
            raise ShapeError(where, f"{name}_token_ids_T_K", f"has {ids.shape[0]} rows, expected {length}.")


@attrs.frozen
class SampledSequence:
    """One generated sequence: its tokens, their sampling logprobs, and why generation stopped.

    ``topk_token_ids_T_K`` / ``topk_logprobs_T_K`` hold the k most likely alternatives at each position when
    asked for (Tinker's padding: id 0, logprob -99999). Token ids are ints (booleans are refused, ``DTypeError``);
    logprobs are ``<= 0`` (up to :data:`tinkerflow._validate.LOGPROB_TOLERANCE` of rounding, ``ValidationError``).
    """

    tokens_T: Int64_T = attrs.field(converter=_tokens, eq=_ARRAY_EQ, hash=False)
    stop_reason: StopReason
    logprobs_T: Float32_T | None = attrs.field(default=None, converter=_seq_logprobs, eq=_ARRAY_EQ, hash=False)
    sequence_id: str = ""
    topk_token_ids_T_K: Int64_T_K | None = attrs.field(default=None, converter=_seq_topk_ids, eq=_ARRAY_EQ, hash=False)
    topk_logprobs_T_K: Float32_T_K | None = attrs.field(
        default=None, converter=_seq_topk_logprobs, eq=_ARRAY_EQ, hash=False
    )

    def __attrs_post_init__(self) -> None:
        where = "SampledSequence"
        if self.stop_reason not in ("length", "stop"):
            raise ValidationError(where, "stop_reason", f"must be 'length' or 'stop', got {self.stop_reason!r}.")
        require_type(self.sequence_id, str, where, "sequence_id")
        length = self.tokens_T.shape[0]
        if self.logprobs_T is not None and self.logprobs_T.shape[0] != length:
            raise ShapeError(where, "logprobs_T", f"has length {self.logprobs_T.shape[0]}, tokens_T has {length}.")
        _check_topk(where, self.topk_token_ids_T_K, self.topk_logprobs_T_K, length, "topk")


@attrs.frozen
class SampleResponse:
    """The answer to one sampling request: ``num_samples`` sequences and, when asked, prompt logprobs.

    ``prompt_logprobs_T`` has one entry per prompt token; NaN marks positions with no logprob (the first). Logprobs
    are ``<= 0`` and token ids ints, as in :class:`SampledSequence`.
    """

    sequences: tuple[SampledSequence, ...] = attrs.field(converter=_sequences)
    prompt_logprobs_T: Float32_T | None = attrs.field(
        default=None, converter=_prompt_logprobs, eq=_ARRAY_EQ, hash=False
    )
    topk_prompt_token_ids_T_K: Int64_T_K | None = attrs.field(
        default=None,
        converter=_prompt_topk_ids,
        eq=_ARRAY_EQ,
        hash=False,
    )
    topk_prompt_logprobs_T_K: Float32_T_K | None = attrs.field(
        default=None, converter=_prompt_topk_logprobs, eq=_ARRAY_EQ, hash=False
    )

    def __attrs_post_init__(self) -> None:
        for index, sequence in enumerate(self.sequences):
            require_type(sequence, SampledSequence, "SampleResponse", f"sequences[{index}]")
        if self.topk_prompt_token_ids_T_K is not None:
            length = (
                self.prompt_logprobs_T.shape[0]
                if self.prompt_logprobs_T is not None
                else self.topk_prompt_token_ids_T_K.shape[0]
            )
            _check_topk(
                "SampleResponse", self.topk_prompt_token_ids_T_K, self.topk_prompt_logprobs_T_K, length, "topk_prompt"
            )
        elif self.topk_prompt_logprobs_T_K is not None:
            raise ValidationError(
                "SampleResponse", "topk_prompt_token_ids_T_K", "top-k logprobs given without token ids.", "give both."
            )
