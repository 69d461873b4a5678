"""The renderer's vocabulary: errors, train-on modes, terminations, pieces, message contexts and the records
rendering produces (stop sequences, parsed responses, supervised examples). Plain values, no logic beyond
validation."""

from __future__ import annotations

import enum
from typing import Literal, NamedTuple, NoReturn, TypeAlias

import attrs
import numpy as np

from tinkerflow.arrays import Float32_T, Int64_T, as_float32_1d
from tinkerflow.chat import ImagePart, Message, ToolSpec
from tinkerflow.errors import ShapeError, ValidationError
from tinkerflow.model_input import ModelInput

__all__ = [
    "ParsedResponse",
    "Piece",
    "RenderContext",
    "RenderError",
    "RenderedMessage",
    "StopSequences",
    "SupervisedExample",
    "Termination",
    "TrainOn",
    "TrainOnName",
    "TrainOnWhat",
]


class RenderError(ValidationError):
    """A conversation a renderer cannot render (or tokens it cannot parse).

    ``where`` is the renderer (``"render[qwen3]"``), ``field`` the offending input (``"messages[3].role"``).
    """


class TrainOnWhat(enum.StrEnum):
    """Which tokens of a supervised example carry weight (the cookbook's ``TrainOnWhat``).

    * ``last_assistant_message``: the final message's output, when it is an assistant message.
    * ``last_assistant_turn``: assistant outputs after the last user message of ``messages[:-1]``.
    * ``all_assistant_messages``: every assistant output.
    * ``all_messages``: every message's output (headers excluded).
    * ``all_tokens``: everything except the BOS token, headers included.
    * ``all_user_and_system_messages``: user and system outputs.
    * ``customized``: the outputs of messages with ``trainable=True`` (every message must set the flag; other
      modes forbid it).
    """

    LAST_ASSISTANT_MESSAGE = "last_assistant_message"
    LAST_ASSISTANT_TURN = "last_assistant_turn"
    ALL_ASSISTANT_MESSAGES = "all_assistant_messages"
    ALL_MESSAGES = "all_messages"
    ALL_TOKENS = "all_tokens"
    ALL_USER_AND_SYSTEM_MESSAGES = "all_user_and_system_messages"
    CUSTOMIZED = "customized"


TrainOnName: TypeAlias = Literal[
    "last_assistant_message",
    "last_assistant_turn",
    "all_assistant_messages",
    "all_messages",
    "all_tokens",
    "all_user_and_system_messages",
    "customized",
]
"""A :class:`TrainOnWhat` mode by its value (what configuration files write)."""

TrainOn: TypeAlias = TrainOnWhat | TrainOnName
"""A train-on mode: the enum member or its value."""


class Termination(enum.Enum):
    """How a sampled response ended. Compare explicitly; it has no truth value (``if termination:`` raises).

    * ``STOP_SEQUENCE``: the renderer's stop token or string ended the response.
    * ``EOS``: the tokenizer's end-of-sequence token ended it instead (``role_colon`` only).
    * ``MALFORMED``: neither: the response was cut off (max tokens) or is otherwise broken.
    """

    STOP_SEQUENCE = "stop_sequence"
    EOS = "eos"
    MALFORMED = "malformed"

    def __bool__(self) -> NoReturn:
        raise TypeError(
            "Termination has no truth value; compare it, e.g. `termination is Termination.STOP_SEQUENCE`, "
            "or use `termination.is_clean`."
        )

    @property
    def is_clean(self) -> bool:
        """``STOP_SEQUENCE`` or ``EOS``."""
        return self is not Termination.MALFORMED


Piece: TypeAlias = str | int | tuple[int, ...] | ImagePart
"""A piece of a rendered message: ordinary text, one token id, a run of token ids (e.g. a pre-encoded header),
or an image."""


class RenderedMessage(NamedTuple):
    """One message split for loss masking: header (role marker), output (what the model produces for this
    turn: content and end-of-turn token) and stop overlap (``role_colon``: ``"User:"`` after the last message)."""

    header: tuple[Piece, ...] = ()
    output: tuple[Piece, ...] = ()
    stop_overlap: tuple[Piece, ...] = ()


class RenderContext(NamedTuple):
    """Where a message sits in the conversation being rendered (an immutable tuple; ``_replace`` to change).

    Attributes:
        idx: position in the (prepared) message list.
        is_last: the final message of the list.
        prev_message / next_message: neighbours, ``None`` at the ends.
        last_user_index: index of the last user message of the list, -1 without one.
        in_last_assistant_turn: the message belongs to the turn being produced (from ``Renderer.turn_start``; by
            default after the last user message).
        tools: the conversation's tool specs (families that declare tools in the system prompt write them).
    """

    idx: int
    is_last: bool
    prev_message: Message | None
    next_message: Message | None
    last_user_index: int
    in_last_assistant_turn: bool
    tools: tuple[ToolSpec, ...] = ()


@attrs.frozen
class StopSequences:
    """What ends sampling: token ids or strings (a renderer uses one kind)."""

    tokens: tuple[int, ...] = ()
    strings: tuple[str, ...] = ()


@attrs.frozen
class ParsedResponse:
    """A parsed sample: the best-effort message and how the response ended."""

    message: Message
    termination: Termination

    @property
    def is_clean(self) -> bool:
        return self.termination.is_clean


def _weights_converter(value: object) -> np.ndarray:
    return as_float32_1d(value, "SupervisedExample", "weights_T")


@attrs.frozen
class SupervisedExample:
    """A rendered conversation: what the model reads, and one weight per position (unshifted).

    Shift with :func:`tinkerflow.supervised.supervised_datum` to get a training datum.
    """

    model_input: ModelInput
    weights_T: Float32_T = attrs.field(converter=_weights_converter, eq=attrs.cmp_using(eq=np.array_equal))

    def __attrs_post_init__(self) -> None:
        if self.weights_T.shape[0] != self.model_input.length:
            raise ShapeError(
                "SupervisedExample",
                "weights_T",
                f"has length {self.weights_T.shape[0]} but model_input has length {self.model_input.length}.",
                "give one weight per model-input position.",
            )

    @property
    def tokens_T(self) -> Int64_T:
        """All token ids (raises if the input holds an image)."""
        return self.model_input.to_tokens()

    @property
    def length(self) -> int:
        return self.model_input.length
