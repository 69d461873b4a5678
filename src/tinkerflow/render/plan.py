"""Planning a supervised example: a conversation validated, prepared and rendered to *units* (the pieces of each
header and output, before tokenization) with one weight per unit, for a train-on mode.

Weights follow tinker-cookbook 0.6.1 (``renderers/base.py``): headers carry weight only under ``all_tokens``; an
output carries weight when its message is selected; the stop overlap takes the last output's weight. The
``last_assistant_message`` / ``last_assistant_turn`` modes also record the *boundary*: the message whose
generation prompt is zeroed after tokenization (:mod:`tinkerflow.render.packing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple, TypeAlias

from tinkerflow.chat import Conversation, ImagePart, Message, ToolSpec
from tinkerflow.render.records import Piece, RenderContext, RenderError, TrainOnWhat
from tinkerflow.render.renderer import Renderer

__all__ = [
    "ConversationLike",
    "Plan",
    "Unit",
    "last_user_index",
    "message_contexts",
    "plan_conversation",
    "resolve_train_on",
    "split_conversation",
    "suffix_context",
    "turn_start_of",
]

ConversationLike: TypeAlias = Conversation | Sequence[Message]
"""What the rendering functions accept: a :class:`~tinkerflow.chat.Conversation` or a sequence of messages."""

Unit: TypeAlias = tuple[Piece, ...]
"""The pieces of one header, output or stop overlap."""


def split_conversation(conversation: ConversationLike, where: str) -> tuple[tuple[Message, ...], tuple[ToolSpec, ...]]:
    """``(messages, tools)`` of a conversation or a sequence of messages (no tools); a typed error for anything
    else."""
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


def resolve_train_on(value: object, where: str) -> TrainOnWhat:
    """The :class:`TrainOnWhat` member ``value`` names (a member or its value); a typed error otherwise."""
    if isinstance(value, TrainOnWhat):
        return value
    if isinstance(value, str) and value in _TRAIN_ON_VALUES:
        return TrainOnWhat(value)
    raise RenderError(
        where, "train_on", f"unknown mode {value!r}.", f"use one of {', '.join(m.value for m in TrainOnWhat)}."
    )


_TRAIN_ON_VALUES: Final[frozenset[str]] = frozenset(mode.value for mode in TrainOnWhat)


def last_user_index(messages: Sequence[Message]) -> int:
    """Index of the last user message, -1 without one."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return index
    return -1


def turn_start_of(renderer: Renderer, messages: Sequence[Message]) -> int:
    """``renderer.turn_start(messages)``; the default rule computed here without a method call."""
    if type(renderer).turn_start is Renderer.turn_start:
        return last_user_index(messages) + 1
    return renderer.turn_start(messages)


def message_contexts(
    messages: tuple[Message, ...], turn_start: int, tools: tuple[ToolSpec, ...], last_user: int | None = None
) -> list[RenderContext]:
    """The :class:`RenderContext` of every message; messages from ``turn_start`` on are in the last assistant
    turn (``last_user``: :func:`last_user_index` of ``messages``, computed when not given)."""
    if last_user is None:
        last_user = last_user_index(messages)
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


def suffix_context(messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> RenderContext:
    """The context of the message to be sampled after ``messages`` (what ``generation_suffix`` receives)."""
    return RenderContext(
        idx=len(messages),
        is_last=True,
        prev_message=messages[-1] if messages else None,
        next_message=None,
        last_user_index=last_user_index(messages),
        in_last_assistant_turn=True,
        tools=tools,
    )


def _output_trained(mode: TrainOnWhat, role: str, message: Message, is_last: bool, in_last_turn: bool) -> bool:
    """Whether ``mode`` weights the output of a message with this (train) role and position."""
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
    """``trainable`` flags on every message under ``customized``, on none under the other modes."""
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
        boundary = last_user_index(messages) + 1
    else:
        return None
    if not 0 <= boundary < len(messages):
        return None
    return boundary if messages[boundary].role == "assistant" else None


class Plan(NamedTuple):
    """A conversation rendered to pieces, before tokenization (internal)."""

    messages: tuple[Message, ...]
    contexts: list[RenderContext] | None  # None when the renderer's render_units fast path made the units
    turn_start: int  # renderer.turn_start(messages[:-1]): the first message of the last assistant turn
    last_user: int  # last_user_index(messages)
    tools: tuple[ToolSpec, ...]
    units: list[Unit]  # BOS (when the renderer has one), then header and output of each message, then the overlap
    weights: list[float]
    first: int  # units before the first message's header: message i's header is units[first + 2 * i]
    boundary: int | None
    images: bool


_ROLE_MODES: Final[dict[TrainOnWhat, frozenset[str] | None]] = {
    TrainOnWhat.ALL_ASSISTANT_MESSAGES: frozenset({"assistant"}),
    TrainOnWhat.ALL_USER_AND_SYSTEM_MESSAGES: frozenset({"user", "system"}),
    TrainOnWhat.ALL_MESSAGES: None,
    TrainOnWhat.ALL_TOKENS: None,
}
"""Modes whose output weights depend on the (train) role only: the roles trained, ``None`` for every role."""


def _output_weights(
    renderer: Renderer, messages: tuple[Message, ...], mode: TrainOnWhat, turn_start: int
) -> list[float]:
    """The weight of each message's output under ``mode``."""
    count = len(messages)
    if mode in _ROLE_MODES and type(renderer).train_role is Renderer.train_role:
        trained_roles = _ROLE_MODES[mode]
        if trained_roles is None:
            return [1.0] * count
        return [1.0 if message.role in trained_roles else 0.0 for message in messages]
    train_role = renderer.train_role
    last = count - 1
    return [
        1.0 if _output_trained(mode, train_role(message), message, index == last, index >= turn_start) else 0.0
        for index, message in enumerate(messages)
    ]


def plan_conversation(renderer: Renderer, conversation: ConversationLike, mode: TrainOnWhat, where: str) -> Plan:
    """``conversation`` validated, prepared and rendered to units (BOS, then header and output of each message,
    then the stop overlap), with one weight per unit for ``mode``. Raises :class:`RenderError`."""
    # runs once per conversation of a dataset: the common case (a Conversation, the default turn rule, the
    # family's render_units fast path, last_assistant_message) takes few calls and builds few objects
    if type(conversation) is Conversation:
        original, tools = conversation.messages, conversation.tools
    else:
        original, tools = split_conversation(conversation, where)
    renderer.validate(original, tools)
    messages = renderer.prepare(original, tools)
    if mode is TrainOnWhat.CUSTOMIZED:
        _check_trainable(original, mode, where)
    else:
        for message in original:
            if message.trainable is not None:
                _check_trainable(original, mode, where)  # raises, naming the first flagged message
    count = len(messages)
    last = count - 1
    last_user = last_user_index(messages)
    contexts: list[RenderContext] | None = None
    message_units: list[Unit] | None = None
    if type(renderer).turn_start is Renderer.turn_start:
        # after the last user message of messages[:-1]; only the default rule has the render_units fast path
        turn_start = (last_user if last_user < last else last_user_index(messages[:-1])) + 1
        message_units = renderer.render_units(messages, last_user, tools)
    else:
        turn_start = renderer.turn_start(messages[:-1])
    last_overlap: Unit = ()
    if message_units is None:
        contexts = message_contexts(messages, turn_start, tools, last_user)
        rendered = list(map(renderer.render_message, messages, contexts))
        message_units = [unit for header, output, _ in rendered for unit in (header, output)]
        last_overlap = rendered[-1].stop_overlap if rendered else ()
    bos = renderer.bos_tokens()
    first = 1 if bos else 0
    units: list[Unit] = [(bos,), *message_units] if bos else message_units
    if mode is TrainOnWhat.LAST_ASSISTANT_MESSAGE:  # the last output only, when it is (trained as) an assistant's
        weights = [0.0] * (first + 2 * count)
        last_weight = 1.0 if count and renderer.train_role(messages[-1]) == "assistant" else 0.0
        if count:
            weights[-1] = last_weight
    else:
        output_weights = _output_weights(renderer, messages, mode, turn_start)
        header_weight = 1.0 if mode is TrainOnWhat.ALL_TOKENS else 0.0
        weights = [0.0] if bos else []
        weights += [weight for output_weight in output_weights for weight in (header_weight, output_weight)]
        last_weight = output_weights[-1] if count else 0.0
    if last_overlap:
        units.append(last_overlap)
        weights.append(last_weight)
    # image pieces come from part content only, so text-only conversations skip the scan of every piece
    images = False
    if renderer.supports_images:
        for message in messages:
            if type(message.content) is not str:
                images = any(type(piece) is ImagePart for unit in units for piece in unit)
                break
    boundary = _prompt_boundary(messages, mode)
    # Plan(...) without the keyword handling of a NamedTuple's __new__
    return _new_tuple(Plan, (messages, contexts, turn_start, last_user, tools, units, weights, first, boundary, images))
