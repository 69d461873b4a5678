"""The renderer value type and the shared, pure rendering logic.

A renderer turns chat messages into tokens (and back). Each family (``qwen3``, ``llama3``, ...) is a small
frozen class deriving from :class:`Renderer` that says how *one* message looks, given its position
(:class:`RenderContext`): a header (the role marker), an output (content plus end-of-turn token) and, for
``role_colon`` only, a stop overlap. Everything else is shared and lives here:

* :func:`build_supervised_example`: tokens plus per-token weights for one conversation, for every
  :class:`TrainOnWhat` mode;
* :func:`build_supervised_examples`: one example per assistant message for renderers without the extension
  property;
* :func:`build_generation_prompt`: the prompt to sample the next message from, with an optional prefill;
* :func:`parse_response`: sampled tokens back into a message plus an explicit :class:`Termination`.

A message renders to *pieces*: ``str`` (ordinary text, always encoded as plain text: content can never forge a
control token), ``int`` (one token id, how control tokens are written), ``tuple[int, ...]`` (a run of ids, e.g. a
header encoded once when the renderer is built) and :class:`~tinkerflow.chat.ImagePart`.
The pieces of one header or output are concatenated; each ``str`` piece is encoded on its own, all of a
conversation's pieces in one batch call of the tokenizer.

Weights follow tinker-cookbook 0.6.1 (``renderers/base.py``): headers carry weight only under ``all_tokens``; an
output carries weight when its message is selected; the stop overlap takes the last output's weight; in the
``last_assistant_message`` / ``last_assistant_turn`` modes the prefix equal to the generation prompt of the
trained turn is zeroed (so a prefilled ``<think>`` is never trained).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import ClassVar, Final, Literal, NamedTuple, NoReturn, TypeAlias, cast

import attrs
import numpy as np

from tinkerflow.arrays import Float32_T, Int64_T, as_float32_1d, frozen_array
from tinkerflow.chat import (
    Conversation,
    ImagePart,
    Message,
    Role,
    TextPart,
    ThinkingPart,
    ToolSpec,
)
from tinkerflow.errors import ShapeError, TinkerflowError, ValidationError
from tinkerflow.model_input import Chunk, ImageChunk, ModelInput, TokenChunk
from tinkerflow.tokenizers import FastTokenizer, Tokenizer

__all__ = [
    "PackedBatch",
    "ParsedResponse",
    "Piece",
    "PieceList",
    "RenderContext",
    "RenderError",
    "RenderedMessage",
    "Renderer",
    "StopSequences",
    "SupervisedExample",
    "Termination",
    "TrainOn",
    "TrainOnWhat",
    "build_generation_prompt",
    "build_supervised_batch",
    "build_supervised_example",
    "build_supervised_examples",
    "control_pattern",
    "encode_control_text",
    "packed_batches",
    "parse_response",
    "split_control",
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


TrainOn: TypeAlias = (
    TrainOnWhat
    | Literal[
        "last_assistant_message",
        "last_assistant_turn",
        "all_assistant_messages",
        "all_messages",
        "all_tokens",
        "all_user_and_system_messages",
        "customized",
    ]
)


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
        in_last_assistant_turn: the message belongs to the turn being produced (after the last user message).
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


# ---------------------------------------------------------------------------------------------------------------
# The renderer value type
# ---------------------------------------------------------------------------------------------------------------

_CONTROL_CACHE_SIZE: Final[int] = 64


def control_pattern(tokenizer: Tokenizer) -> re.Pattern[str] | None:
    """A regex matching the spelling of any added token of ``tokenizer`` (longest first), or ``None``."""
    added = tokenizer.added_tokens
    if not added:
        return None
    return re.compile("|".join(re.escape(token) for token in sorted(added, key=len, reverse=True)))


def encode_control_text(tokenizer: Tokenizer, text: str, pattern: re.Pattern[str] | None = None) -> list[int]:
    """Encode model-output text in which control-token spellings *are* control tokens (prefills).

    Added tokens (``"<think>"``, ``"<|im_end|>"``) become their ids; the text between them is encoded as plain
    text. This is how Hugging Face tokenizers encode a string; use it only for text that stands for tokens the
    model itself produces, never for message content. ``pattern`` is :func:`control_pattern` of the tokenizer
    (computed when not given).
    """
    if pattern is None:
        pattern = control_pattern(tokenizer)
    if pattern is None or pattern.search(text) is None:
        return tokenizer.encode(text)
    added = tokenizer.added_tokens
    result: list[int] = []
    position = 0
    for match in pattern.finditer(text):
        if match.start() > position:
            result.extend(tokenizer.encode(text[position : match.start()]))
        result.append(added[match.group(0)])
        position = match.end()
    if position < len(text):
        result.extend(tokenizer.encode(text[position:]))
    return result


def split_control(tokenizer: Tokenizer, text: str) -> tuple[Piece, ...]:
    """Template text as pieces: spellings of added tokens become their ids, the rest stays text."""
    pattern = control_pattern(tokenizer)
    if pattern is None or pattern.search(text) is None:
        return (text,) if text else ()
    added = tokenizer.added_tokens
    pieces: list[Piece] = []
    position = 0
    for match in pattern.finditer(text):
        if match.start() > position:
            pieces.append(text[position : match.start()])
        pieces.append(added[match.group(0)])
        position = match.end()
    if position < len(text):
        pieces.append(text[position:])
    return tuple(pieces)


@attrs.frozen(eq=False)
class Renderer:
    """Base of every renderer: a frozen value holding the tokenizer, the family's options and its token ids.

    A family subclass sets the class-level flags and implements :meth:`render_message`,
    :meth:`generation_suffix` and :meth:`parse_response`; it may override :meth:`validate`,
    :meth:`prepare`, :meth:`bos_tokens` and :meth:`generation_prefill`. See ``docs/rendering.md`` ("Adding a
    renderer").

    Class-level flags:
        roles: the roles the family's format can write.
        supports_tools: tool specs, tool calls and tool results can be rendered.
        supports_thinking: thinking parts can be rendered.
        supports_images: image parts can be rendered.
        disables_thinking: the generation prompt closes the thinking block (a trained turn that reasoned is
            then an error).
    """

    tokenizer: Tokenizer = attrs.field(repr=False)
    _control: list[re.Pattern[str]] = attrs.field(init=False, repr=False, factory=list, eq=False)

    name: ClassVar[str] = "renderer"
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant"})
    supports_tools: ClassVar[bool] = False
    supports_thinking: ClassVar[bool] = False
    supports_images: ClassVar[bool] = False
    disables_thinking: ClassVar[bool] = False

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.tokenizer, Tokenizer):
            raise RenderError(
                f"render[{self.name}]",
                "tokenizer",
                f"expected a tinkerflow Tokenizer, got {type(self.tokenizer).__name__}.",
                "load one with tinkerflow.tokenizers.load_tokenizer() or wrap it in FastTokenizer.",
            )
        pattern = control_pattern(self.tokenizer)
        if pattern is not None:
            self._control.append(pattern)

    # -- flags that may depend on options -------------------------------------------------------------------

    @property
    def has_extension_property(self) -> bool:
        """Whether each generation prompt of a multi-turn conversation extends the previous full sequence."""
        return False

    # -- hooks ----------------------------------------------------------------------------------------------

    def bos_tokens(self) -> tuple[int, ...]:
        """Tokens written once before the first message (and before a generation prompt)."""
        return ()

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        """Raise :class:`RenderError` for anything this family cannot write. Indices refer to ``messages``."""
        where = f"render[{self.name}]"
        if tools and not self.supports_tools:
            raise RenderError(
                where, "tools", "this renderer has no tool-calling format.", "use a renderer with tool support."
            )
        roles = self.roles
        for index, message in enumerate(messages):
            if (
                type(message.content) is str
                and message.role in roles
                and message.role != "tool"
                and not message.tool_calls
                and not message.unparsed_tool_calls
            ):
                continue  # plain text in a known role: nothing below can fail
            field = f"messages[{index}]"
            if message.role not in self.roles:
                raise RenderError(
                    where,
                    f"{field}.role",
                    f"the {self.name} format has no {message.role!r} role.",
                    f"use one of {', '.join(sorted(self.roles))}.",
                )
            if message.tool_calls and not self.supports_tools:
                raise RenderError(
                    where,
                    f"{field}.tool_calls",
                    "this renderer has no tool-calling format; tool calls would be lost.",
                    "use a renderer with tool support, or remove the tool calls.",
                )
            if message.unparsed_tool_calls:
                raise RenderError(
                    where,
                    f"{field}.unparsed_tool_calls",
                    "unparsed tool calls cannot be rendered faithfully.",
                    "drop them, or turn them into text or valid tool calls first.",
                )
            if message.role == "tool" and not message.tool_call_id:
                raise RenderError(
                    where,
                    f"{field}.tool_call_id",
                    "a tool result must name the call it answers.",
                    "set tool_call_id to the id of the assistant's tool call.",
                )
            if isinstance(message.content, tuple):
                for part_index, part in enumerate(message.content):
                    if isinstance(part, ImagePart) and not self.supports_images:
                        raise RenderError(
                            where,
                            f"{field}.content[{part_index}]",
                            f"an image part, but {self.name} renders text only.",
                            "use a vision-language renderer (qwen3_vl), or remove the image.",
                        )
                    if isinstance(part, ThinkingPart) and not self.supports_thinking:
                        raise RenderError(
                            where,
                            f"{field}.content[{part_index}]",
                            f"a thinking part, but the {self.name} format has no thinking blocks.",
                            "use a reasoning renderer, or remove the thinking part.",
                        )

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        """The message list actually rendered (e.g. tools merged into a system message, a default system
        prompt added). Must be prefix-stable: ``prepare(m[:k])`` is a prefix of ``prepare(m)``."""
        return messages

    def train_role(self, message: Message) -> str:
        """The role ``train_on`` modes see for a (prepared) message; messages a renderer adds itself may differ."""
        return message.role

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        """Header, output and stop overlap of one (prepared, validated) message."""
        raise NotImplementedError(f"{type(self).__name__}.render_message")

    def render_units(
        self, messages: tuple[Message, ...], last_user_index: int, tools: tuple[ToolSpec, ...]
    ) -> list[tuple[Piece, ...]] | None:
        """Optional fast path of supervised rendering: ``[header_0, output_0, header_1, output_1, ...]``, exactly
        the pieces :meth:`render_message` gives for each (prepared, validated) message in its standard context,
        when they have no stop overlap; or ``None`` to render message by message (the default).

        A family implements it for its common case (plain text messages) to skip building a context and calling
        :meth:`render_message` per message; ``last_user_index`` is the index of the last user message (-1 without
        one). Tests compare it with :meth:`render_message`.
        """
        return None

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        """What follows the rendered messages in a generation prompt (the header of the message to sample)."""
        return self.render_message(Message(role=role, content=""), ctx).header

    def generation_prefill(self, messages: tuple[Message, ...], prefill: str | None) -> str | None:
        """Text the generation prompt ends with (after the suffix); the user's prefill by default."""
        return prefill

    def stop_sequences(self) -> StopSequences:
        """What ends sampling for this format."""
        raise NotImplementedError(f"{type(self).__name__}.stop_sequences")

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        """Sampled tokens (after the generation prompt) back into a message plus its termination."""
        raise NotImplementedError(f"{type(self).__name__}.parse_response")

    # -- helpers for families -------------------------------------------------------------------------------

    def _error(self, field: str, problem: str, fix: str = "") -> RenderError:
        return RenderError(f"render[{self.name}]", field, problem, fix)


# ---------------------------------------------------------------------------------------------------------------
# Shared logic
# ---------------------------------------------------------------------------------------------------------------

_ConversationLike: TypeAlias = Conversation | Sequence[Message]


def _split(conversation: _ConversationLike, where: str) -> tuple[tuple[Message, ...], tuple[ToolSpec, ...]]:
    if isinstance(conversation, Conversation):
        return conversation.messages, conversation.tools
    if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence):
        raise RenderError(
            where,
            "conversation",
            f"expected a Conversation or a sequence of Message, got {type(conversation).__name__}.",
        )
    messages = tuple(conversation)
    for index, message in enumerate(messages):
        if not isinstance(message, Message):
            raise RenderError(
                where,
                f"messages[{index}]",
                f"expected a Message, got {type(message).__name__}.",
                "build messages with tinkerflow.chat.Message (or parse JSON with tinkerflow.chat_format).",
            )
    return messages, ()


def _train_on(value: object, where: str) -> TrainOnWhat:
    if isinstance(value, TrainOnWhat):
        return value
    if isinstance(value, str) and value in _TRAIN_ON_VALUES:
        return TrainOnWhat(value)
    raise RenderError(
        where, "train_on", f"unknown mode {value!r}.", f"use one of {', '.join(m.value for m in TrainOnWhat)}."
    )


_TRAIN_ON_VALUES: Final[frozenset[str]] = frozenset(mode.value for mode in TrainOnWhat)


def _last_user_index(messages: Sequence[Message]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return index
    return -1


def _contexts(
    messages: tuple[Message, ...], turn_start: int, tools: tuple[ToolSpec, ...], last_user: int | None = None
) -> list[RenderContext]:
    if last_user is None:
        last_user = _last_user_index(messages)
    count = len(messages)
    last = count - 1
    previous = (None, *messages[:-1])
    following = (*messages[1:], None)
    # RenderContext(idx, is_last, prev_message, next_message, last_user_index, in_last_assistant_turn, tools)
    return [
        _new_tuple(
            RenderContext,
            (index, index == last, previous[index], following[index], last_user, index >= turn_start, tools),
        )
        for index in range(count)
    ]


_new_tuple = tuple.__new__


def _suffix_context(messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> RenderContext:
    return RenderContext(
        idx=len(messages),
        is_last=True,
        prev_message=messages[-1] if messages else None,
        next_message=None,
        last_user_index=_last_user_index(messages),
        in_last_assistant_turn=True,
        tools=tools,
    )


_Unit: TypeAlias = tuple[Piece, ...]
_Segment: TypeAlias = list[int] | ImagePart


def _encode_units(renderer: Renderer, units: Sequence[_Unit]) -> list[list[_Segment]] | list[list[int]]:
    """Encode every unit; text-only units come back as flat id lists, others as segment lists."""
    texts = [piece for unit in units for piece in unit if type(piece) is str and piece]
    encoded = iter(renderer.tokenizer.encode_batch(texts)) if texts else iter(())
    has_images = renderer.supports_images and any(type(piece) is ImagePart for unit in units for piece in unit)
    if not has_images:
        flat: list[list[int]] = []
        for unit in units:
            ids: list[int] = []
            for piece in unit:
                if isinstance(piece, int):
                    ids.append(piece)
                elif isinstance(piece, tuple):
                    ids.extend(piece)
                elif piece:
                    ids.extend(next(encoded))
            flat.append(ids)
        return flat
    segmented: list[list[_Segment]] = []
    for unit in units:
        segments: list[_Segment] = []
        current: list[int] = []
        for piece in unit:
            if isinstance(piece, int):
                current.append(piece)
            elif isinstance(piece, tuple):
                current.extend(piece)
            elif isinstance(piece, ImagePart):
                if current:
                    segments.append(current)
                    current = []
                segments.append(piece)
            elif piece:
                current.extend(next(encoded))
        if current:
            segments.append(current)
        segmented.append(segments)
    return segmented


def _image_tokens(renderer: Renderer, image: ImagePart) -> int:
    counter = getattr(renderer, "image_tokens", None)
    if counter is None:  # pragma: no cover - validate() rejects images for renderers without support
        raise renderer._error("content", "images are not supported.")
    return int(counter(image))


def _assemble(
    renderer: Renderer, encoded: list[list[_Segment]] | list[list[int]], unit_weights: Sequence[float]
) -> tuple[ModelInput, np.ndarray, list[int]]:
    """Chunks, weights and (for text-only inputs) the flat token list from encoded units; adjacent token runs
    merge into one chunk."""
    chunks: list[Chunk] = []
    tokens: list[int] = []
    lengths: list[int] = []
    for unit in encoded:
        if unit and not isinstance(unit[0], int):
            length = 0
            for segment in unit:
                if isinstance(segment, ImagePart):
                    if tokens:
                        chunks.append(TokenChunk(tokens_T=tokens))
                        tokens = []
                    count = _image_tokens(renderer, segment)
                    chunks.append(ImageChunk(data=segment.data, format=segment.format, expected_tokens=count))
                    length += count
                else:
                    tokens.extend(segment)
                    length += len(segment)
            lengths.append(length)
        else:
            tokens.extend(cast("list[int]", unit))
            lengths.append(len(unit))
    if tokens or not chunks:
        chunks.append(TokenChunk(tokens_T=tokens))
    weights = np.repeat(np.asarray(unit_weights, dtype=np.float32), np.asarray(lengths, dtype=np.int64))
    return ModelInput(chunks=tuple(chunks)), weights, tokens


def _output_trained(mode: TrainOnWhat, role: str, message: Message, is_last: bool, in_last_turn: bool) -> bool:
    if mode is TrainOnWhat.LAST_ASSISTANT_MESSAGE:
        return is_last and role == "assistant"
    if mode is TrainOnWhat.LAST_ASSISTANT_TURN:
        return role == "assistant" and in_last_turn
    if mode is TrainOnWhat.ALL_ASSISTANT_MESSAGES:
        return role == "assistant"
    if mode is TrainOnWhat.ALL_MESSAGES or mode is TrainOnWhat.ALL_TOKENS:
        return True
    if mode is TrainOnWhat.ALL_USER_AND_SYSTEM_MESSAGES:
        return role in ("user", "system")
    return message.trainable is True


def _check_trainable(messages: Sequence[Message], mode: TrainOnWhat, where: str) -> None:
    if mode is TrainOnWhat.CUSTOMIZED:
        for index, message in enumerate(messages):
            if message.trainable is None:
                raise RenderError(
                    where,
                    f"messages[{index}].trainable",
                    "is unset, but train_on='customized' reads it from every message.",
                    "set trainable=True or False on every message.",
                )
        return
    for index, message in enumerate(messages):
        if message.trainable is not None:
            raise RenderError(
                where,
                f"messages[{index}].trainable",
                f"is set, but train_on={mode.value!r} ignores it.",
                "use train_on='customized', or leave trainable unset.",
            )


def _prompt_boundary(messages: tuple[Message, ...], mode: TrainOnWhat) -> int | None:
    """Index of the message the generation prompt of the trained turn stops before (cookbook semantics)."""
    if mode is TrainOnWhat.LAST_ASSISTANT_MESSAGE:
        boundary = len(messages) - 1
    elif mode is TrainOnWhat.LAST_ASSISTANT_TURN:
        boundary = _last_user_index(messages) + 1
    else:
        return None
    if not 0 <= boundary < len(messages):
        return None
    return boundary if messages[boundary].role == "assistant" else None


def _prefill_units(renderer: Renderer, messages: tuple[Message, ...], prefill: str | None) -> list[int]:
    text = renderer.generation_prefill(messages, prefill)
    if not text:
        return []
    return encode_control_text(renderer.tokenizer, text, renderer._control[0] if renderer._control else None)


def _prepared(
    renderer: Renderer, conversation: _ConversationLike, where: str
) -> tuple[tuple[Message, ...], tuple[Message, ...], tuple[ToolSpec, ...]]:
    messages, tools = _split(conversation, where)
    renderer.validate(messages, tools)
    return messages, renderer.prepare(messages, tools), tools


class _Plan(NamedTuple):
    """A conversation rendered to pieces, before tokenization (internal)."""

    messages: tuple[Message, ...]
    contexts: list[RenderContext] | None  # None when the renderer's render_units fast path made the units
    tools: tuple[ToolSpec, ...]
    units: list[_Unit]
    weights: list[float]
    first_unit_of: list[int]
    boundary: int | None
    images: bool


_ROLE_MODES: Final[dict[TrainOnWhat, frozenset[str] | None]] = {
    TrainOnWhat.ALL_ASSISTANT_MESSAGES: frozenset({"assistant"}),
    TrainOnWhat.ALL_USER_AND_SYSTEM_MESSAGES: frozenset({"user", "system"}),
    TrainOnWhat.ALL_MESSAGES: None,
    TrainOnWhat.ALL_TOKENS: None,
}
"""Modes whose output weights depend on the (train) role only: the roles trained, ``None`` for every role."""


def _plan(renderer: Renderer, conversation: _ConversationLike, mode: TrainOnWhat, where: str) -> _Plan:
    original, messages, tools = _prepared(renderer, conversation, where)
    _check_trainable(original, mode, where)
    count = len(messages)
    last = count - 1
    last_user = _last_user_index(messages)
    # the last user message of messages[:-1] (the turn being trained starts after it)
    turn_start = (last_user if last_user < last else _last_user_index(messages[:-1])) + 1
    contexts: list[RenderContext] | None = None
    message_units = renderer.render_units(messages, last_user, tools)
    last_overlap: _Unit = ()
    if message_units is None:
        contexts = _contexts(messages, turn_start, tools, last_user)
        rendered = list(map(renderer.render_message, messages, contexts))
        message_units = [unit for header, output, _ in rendered for unit in (header, output)]
        last_overlap = rendered[-1].stop_overlap if rendered else ()
    trained_roles = _ROLE_MODES.get(mode)
    if mode in _ROLE_MODES and type(renderer).train_role is Renderer.train_role:
        output_weights = (
            [1.0] * count
            if trained_roles is None
            else [1.0 if message.role in trained_roles else 0.0 for message in messages]
        )
    else:
        train_role = renderer.train_role
        output_weights = [
            1.0 if _output_trained(mode, train_role(message), message, index == last, index >= turn_start) else 0.0
            for index, message in enumerate(messages)
        ]
    header_weight = 1.0 if mode is TrainOnWhat.ALL_TOKENS else 0.0
    bos = renderer.bos_tokens()
    first = 1 if bos else 0
    units: list[_Unit] = [(bos,), *message_units] if bos else message_units
    weights: list[float] = [0.0] if bos else []
    weights += [weight for output_weight in output_weights for weight in (header_weight, output_weight)]
    first_unit_of = list(range(first, first + 2 * count, 2))
    if last_overlap:
        units.append(last_overlap)
        weights.append(output_weights[-1])
    images = renderer.supports_images and any(type(piece) is ImagePart for unit in units for piece in unit)
    boundary = _prompt_boundary(messages, mode)
    return _Plan(messages, contexts, tools, units, weights, first_unit_of, boundary, images)


class PackedBatch(NamedTuple):
    """Supervised examples of several conversations, packed (what :func:`packed_batches` yields).

    Conversation ``i`` of the batch is ``tokens_N[offsets[i]:offsets[i + 1]]`` with weights
    ``weights_N[offsets[i]:offsets[i + 1]]`` (unshifted, 0 or 1), unless it holds an image: then its range is
    empty and ``images[i]`` is its example.
    """

    tokens_N: np.ndarray
    weights_N: np.ndarray
    offsets: np.ndarray
    images: dict[int, SupervisedExample]


def _pack(
    renderer: Renderer, plans: Sequence[_Plan], pieces: list[Piece], encoded: Sequence[Sequence[int]]
) -> PackedBatch:
    """Plans, the pieces of their text-only units (in order) and the encodings of those pieces' non-empty texts
    (in order) -> one packed token/weight array.

    Every piece becomes one part (a run of ids); numpy concatenates the ids in one pass, and per-unit lengths
    (for the weights) come from cumulative part lengths, so the Python work is one step per piece.
    """
    text_plans = [plan for plan in plans if not plan.images]
    units = [unit for plan in text_plans for unit in plan.units]
    next_encoding = iter(encoded).__next__
    parts: list[Sequence[int]] = [
        piece if type(piece) is tuple else (piece,) if type(piece) is int else next_encoding() if piece else ()
        for piece in pieces
    ]
    part_ends = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=part_ends[1:])
    tokens_N = np.fromiter(chain.from_iterable(parts), dtype=np.int64, count=int(part_ends[-1]))
    unit_ends = np.zeros(len(units) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, units), dtype=np.int64, count=len(units)), out=unit_ends[1:])
    unit_token_ends = part_ends[unit_ends]  # where each unit ends in tokens_N (a leading 0 first)
    unit_weights = np.fromiter(chain.from_iterable(plan.weights for plan in text_plans), dtype=np.float32)
    weights_N = np.repeat(unit_weights, np.diff(unit_token_ends))
    plan_unit_ends = np.zeros(len(plans) + 1, dtype=np.int64)
    np.cumsum([0 if plan.images else len(plan.units) for plan in plans], out=plan_unit_ends[1:])
    offsets = unit_token_ends[plan_unit_ends]
    images: dict[int, SupervisedExample] = {}
    for index, plan in enumerate(plans):
        if plan.images:
            segments = _encode_units(renderer, plan.units)
            model_input, weights_T, _ = _assemble(renderer, segments, plan.weights)
            images[index] = SupervisedExample(model_input=model_input, weights_T=frozen_array(weights_T))
        elif plan.boundary is not None:
            start, stop = int(offsets[index]), int(offsets[index + 1])
            first_unit = int(plan_unit_ends[index])
            lengths = np.diff(unit_token_ends[first_unit : first_unit + len(plan.units) + 1]).tolist()
            length = _generation_prompt_length(renderer, plan, tokens_N[start:stop].tolist(), lengths)
            if length:
                weights_N[start : start + length] = 0.0
    return PackedBatch(frozen_array(tokens_N), frozen_array(weights_N), frozen_array(offsets), images)


def packed_batches(
    renderer: Renderer,
    conversations: Sequence[_ConversationLike],
    train_on: TrainOn = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
    *,
    batch_size: int = 64,
    overlap: bool = True,
) -> Iterator[PackedBatch]:
    """The supervised examples of ``conversations``, ``batch_size`` at a time, packed (see :class:`PackedBatch`):
    the same tokens and weights as :func:`build_supervised_example`, without a record per conversation (for
    consumers that process a batch with array operations, e.g. :func:`tinkerflow.supervised.conversation_datums`).

    Each batch's text is tokenized in one call. With ``overlap`` (and more than one batch, and a
    :class:`~tinkerflow.tokenizers.FastTokenizer`, which is safe to share between threads) those calls run on one
    helper thread, up to two batches ahead, while this thread renders the next batches and packs (and the
    consumer processes) this one: the Rust tokenizer releases the GIL, so its work overlaps the Python work
    instead of following it. Results and errors are the same either way: an error is raised for the first
    conversation (in order) that has one.
    """
    where = f"render[{renderer.name}]"
    mode = _train_on(train_on, where)
    step = max(1, batch_size)
    starts = range(0, len(conversations), step)

    def rendered(start: int) -> tuple[list[_Plan], list[Piece], list[str]]:
        plans = [_plan(renderer, conversation, mode, where) for conversation in conversations[start : start + step]]
        pieces = [piece for plan in plans if not plan.images for unit in plan.units for piece in unit]
        return plans, pieces, [piece for piece in pieces if type(piece) is str and piece]

    encode = renderer.tokenizer.encode_batch
    if not overlap or len(starts) < 2 or not isinstance(renderer.tokenizer, FastTokenizer):
        for start in starts:
            plans, pieces, texts = rendered(start)
            yield _pack(renderer, plans, pieces, encode(texts) if texts else [])
        return
    from concurrent.futures import Future, ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinkerflow-tokenize") as pool:
        # batches rendered and queued for tokenization, in order; the next one is rendered while the tokenizer
        # works through the queue, so it never waits for Python (and Python rarely waits for it)
        queued: deque[tuple[list[_Plan], list[Piece], Future[list[list[int]]] | None]] = deque()
        upcoming = iter(starts)
        error: TinkerflowError | None = None

        def render_ahead() -> None:
            nonlocal error
            while error is None and len(queued) < _QUEUED_BATCHES:
                start = next(upcoming, None)
                if start is None:
                    return
                try:
                    plans, pieces, texts = rendered(start)
                except TinkerflowError as caught:
                    error = caught  # raised after the batches before it: an earlier conversation's error comes first
                    return
                queued.append((plans, pieces, pool.submit(encode, texts) if texts else None))

        render_ahead()
        while queued:
            plans, pieces, encoding = queued.popleft()
            render_ahead()
            yield _pack(renderer, plans, pieces, [] if encoding is None else encoding.result())
        if error is not None:
            raise error


_QUEUED_BATCHES: Final[int] = 2
"""Batches rendered ahead of the one being packed (each waiting for, or in, the tokenizer)."""


def build_supervised_example(
    renderer: Renderer,
    conversation: _ConversationLike,
    train_on: TrainOn = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
) -> SupervisedExample:
    """Render a conversation to a model input and one weight per position (unshifted).

    Args:
        renderer: the renderer (from :func:`tinkerflow.render.get_renderer`).
        conversation: a :class:`~tinkerflow.chat.Conversation` (messages plus tools) or a sequence of messages.
        train_on: which tokens carry weight 1 (:class:`TrainOnWhat`); every other token has weight 0.

    Raises:
        RenderError: the conversation has something this renderer cannot write (named by message index and
            field), ``trainable`` flags disagree with ``train_on``, or a thinking-disabled renderer is asked to
            train a turn that reasoned.
    """
    return build_supervised_batch(renderer, (conversation,), train_on)[0]


def build_supervised_batch(
    renderer: Renderer,
    conversations: Sequence[_ConversationLike],
    train_on: TrainOn = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
    *,
    batch_size: int = 64,
) -> tuple[SupervisedExample, ...]:
    """:func:`build_supervised_example` for many conversations, the text of ``batch_size`` conversations
    tokenized in one call (the fast way to render a dataset). Same results, in order."""
    results: list[SupervisedExample] = []
    for batch in packed_batches(renderer, conversations, train_on, batch_size=batch_size):
        bounds = batch.offsets.tolist()
        for index in range(len(bounds) - 1):
            example = batch.images.get(index)
            if example is None:
                start, stop = bounds[index], bounds[index + 1]
                model_input = ModelInput(chunks=(TokenChunk(tokens_T=batch.tokens_N[start:stop]),))
                example = SupervisedExample(model_input=model_input, weights_T=batch.weights_N[start:stop])
            results.append(example)
    return tuple(results)


def _encode_flat(tokenizer: Tokenizer, units: Sequence[_Unit]) -> tuple[list[int], list[int]]:
    """Text-only units encoded in one batch call: all tokens concatenated, and each unit's length."""
    texts = [piece for unit in units for piece in unit if type(piece) is str and piece]
    encoded = tokenizer.encode_batch(texts) if texts else []
    tokens: list[int] = []
    lengths: list[int] = []
    extend, append = tokens.extend, tokens.append
    position = 0
    for unit in units:
        start = len(tokens)
        for piece in unit:
            if type(piece) is tuple:
                extend(piece)
            elif type(piece) is int:
                append(piece)
            elif piece:
                extend(encoded[position])
                position += 1
        lengths.append(len(tokens) - start)
    return tokens, lengths


def _generation_prompt_length(renderer: Renderer, plan: _Plan, flat: list[int], lengths: list[int]) -> int:
    """Length of the prefix of ``flat`` equal to ``build_generation_prompt(messages[:boundary])``, or 0.

    The prompt renders messages ``0..boundary-2`` exactly as the full conversation does (their contexts are
    equal), so only message ``boundary-1`` (now last) and the suffix are rendered again, and their encodings
    are reused when their pieces did not change.
    """
    messages, contexts, units, first_unit_of = plan.messages, plan.contexts, plan.units, plan.first_unit_of
    if contexts is None:
        contexts = _contexts(messages, _last_user_index(messages[:-1]) + 1, plan.tools)
    boundary = plan.boundary
    assert boundary is not None
    prefix = messages[:boundary]
    shared_units = first_unit_of[boundary - 1] if boundary > 0 else first_unit_of[0]
    start = sum(lengths[:shared_units])
    pending: list[_Unit] = []
    reused = 0
    if boundary > 0:
        ctx = contexts[boundary - 1]._replace(is_last=True, next_message=None)
        rendered = renderer.render_message(messages[boundary - 1], ctx)
        index = first_unit_of[boundary - 1]
        if rendered.header == units[index] and rendered.output == units[index + 1]:
            reused = lengths[index] + lengths[index + 1]
        else:
            pending.extend((rendered.header, rendered.output))
    pending.append(renderer.generation_suffix("assistant", _suffix_context(prefix, plan.tools)))
    extra, _ = _encode_flat(renderer.tokenizer, pending)
    extra.extend(_prefill_units(renderer, prefix, None))
    middle = start + reused
    end = middle + len(extra)
    if flat[middle:end] != extra:
        if renderer.disables_thinking:
            raise renderer._error(
                f"messages[{boundary}].content",
                "this renderer's generation prompt closes the thinking block (thinking disabled), but the trained "
                "turn reasons, so the example would train reasoning after a prompt that forbids it.",
                "use the thinking variant of this renderer, or remove the thinking from the turn.",
            )
        return 0
    return end


def build_supervised_examples(
    renderer: Renderer,
    conversation: _ConversationLike,
    train_on: TrainOn = TrainOnWhat.LAST_ASSISTANT_TURN,
) -> tuple[SupervisedExample, ...]:
    """Supervised examples for a conversation: one when the renderer has the extension property, otherwise one
    per trained assistant message (each ending at that message, ``last_assistant_message`` weights), so every
    turn is trained on exactly the context it was sampled from.

    Without the extension property only the assistant-only modes (``last_assistant_message``,
    ``last_assistant_turn``, ``all_assistant_messages``) can be split; others raise :class:`RenderError`.
    """
    where = f"render[{renderer.name}]"
    mode = _train_on(train_on, where)
    if renderer.has_extension_property:
        return (build_supervised_example(renderer, conversation, mode),)
    messages, tools = _split(conversation, where)
    if mode is TrainOnWhat.LAST_ASSISTANT_MESSAGE:
        candidates = range(len(messages) - 1, len(messages))
    elif mode is TrainOnWhat.LAST_ASSISTANT_TURN:
        candidates = range(_last_user_index(messages) + 1, len(messages))
    elif mode is TrainOnWhat.ALL_ASSISTANT_MESSAGES:
        candidates = range(len(messages))
    else:
        raise RenderError(
            where,
            "train_on",
            f"{mode.value!r} cannot be split into one example per turn for a renderer without the extension "
            "property (it weights messages the model does not produce).",
            "use an assistant-only mode, or build_supervised_example for a single (inexact) sequence.",
        )
    return tuple(
        build_supervised_example(
            renderer, Conversation(messages=messages[: index + 1], tools=tools), TrainOnWhat.LAST_ASSISTANT_MESSAGE
        )
        for index in candidates
        if messages[index].role == "assistant"
    )


def build_generation_prompt(
    renderer: Renderer,
    conversation: _ConversationLike,
    *,
    prefill: str | None = None,
    role: Role = "assistant",
) -> ModelInput:
    """The prompt to sample the next ``role`` message from: BOS, every message, the next header, the prefill.

    ``conversation`` may be an empty sequence. ``prefill`` is text the sampled message starts with, written as
    the model would write it (control-token spellings in it become control tokens).
    """
    where = f"render[{renderer.name}]"
    if isinstance(conversation, Conversation):
        original, tools = conversation.messages, conversation.tools
    else:
        original, tools = _split(conversation, where) if len(conversation) else ((), ())
    renderer.validate(original, tools)
    messages = renderer.prepare(original, tools)
    contexts = _contexts(messages, _last_user_index(messages) + 1, tools)
    units: list[_Unit] = []
    bos = renderer.bos_tokens()
    if bos:
        units.append(bos)
    for message, ctx in zip(messages, contexts, strict=True):
        rendered = renderer.render_message(message, ctx)
        units.append(rendered.header)
        units.append(rendered.output)
    units.append(renderer.generation_suffix(role, _suffix_context(messages, tools)))
    encoded = _encode_units(renderer, units)
    model_input, _, _ = _assemble(renderer, encoded, [0.0] * len(units))
    tail = _prefill_units(renderer, messages, prefill)
    return model_input.append_tokens(tail) if tail else model_input


def parse_response(renderer: Renderer, tokens_T: Sequence[int] | np.ndarray) -> ParsedResponse:
    """Parse sampled tokens (what followed the generation prompt) into a message and a :class:`Termination`.

    Raises:
        RenderError: the tokens hold more than one stop token (sampling used the wrong stop sequences).
    """
    tokens = tokens_T.tolist() if isinstance(tokens_T, np.ndarray) else [int(token) for token in tokens_T]
    return renderer.parse_response(tokens)


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by families
# ---------------------------------------------------------------------------------------------------------------


class PieceList:
    """A builder of pieces: adjacent text is merged (so it is encoded as one string, as a chat template's text
    between two control tokens is), token ids and images are kept as they are."""

    __slots__ = ("_pieces",)

    def __init__(self, *pieces: Piece) -> None:
        self._pieces: list[Piece] = []
        for piece in pieces:
            self.add(piece)

    def add(self, piece: Piece) -> PieceList:
        if type(piece) is str:
            if not piece:
                return self
            last = self._pieces[-1] if self._pieces else None
            if isinstance(last, str):
                self._pieces[-1] = last + piece
                return self
        self._pieces.append(piece)
        return self

    def extend(self, pieces: Sequence[Piece]) -> PieceList:
        for piece in pieces:
            self.add(piece)
        return self

    def to_tuple(self) -> tuple[Piece, ...]:
        return tuple(self._pieces)


def text_of(message: Message) -> str:
    """Visible text of a message (text parts joined; thinking and images excluded)."""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content if isinstance(part, TextPart))


def split_at_stop_token(renderer: Renderer, tokens: list[int], stop_token: int) -> tuple[list[int], Termination]:
    """Tokens before the single stop token and ``STOP_SEQUENCE``; all tokens and ``MALFORMED`` without one.

    Raises :class:`RenderError` for two or more stop tokens.
    """
    count = tokens.count(stop_token)
    if count == 0:
        return tokens, Termination.MALFORMED
    if count > 1:
        raise renderer._error(
            "tokens_T",
            f"holds {count} stop tokens ({stop_token}); a sampled response ends at its first.",
            "sample with the renderer's stop_sequences().",
        )
    return tokens[: tokens.index(stop_token)], Termination.STOP_SEQUENCE
