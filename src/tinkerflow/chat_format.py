"""The common JSON chat format (OpenAI-style ``messages``) <-> tinkerflow chat records. Pure.

Accepted row layout (one JSON object, e.g. a JSONL line)::

    {"messages": [
        {"role": "system" | "developer" | "user" | "assistant" | "tool",
         "content": "text" | [{"type": "text", "text": ...}, {"type": "thinking", "thinking": ...},
                              {"type": "image", "data": <base64>, "format": "png" | "jpeg"}] | null,
         "thinking": "...",                      # optional, assistant only (alias: "reasoning_content")
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": "{...}" | {...}}}],
         "tool_call_id": "c1", "name": "f", "trainable": true | false},
        ...],
     "tools": [{"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}]}

Rows are read strictly: a key the layout above does not list (a message's ``"contnet"``, OpenAI fine-tuning's
``"weight"``, a row's ``"id"``) is an error naming it and the closest known key, never silently dropped; a key
holding ``null`` counts as absent. A message with no ``content`` key, no tool calls and no thinking says nothing
and is an error (write ``"content": ""`` for an intentionally empty one); text holding a lone surrogate and JSON
nested too deeply to read are errors too.

Errors are :class:`ChatFormatError` naming the row's source (``file.jsonl:17``) and the field
(``messages[2].role``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final, Generic, Literal, ParamSpec, TypeVar, cast

import attrs

from tinkerflow._validate import JsonTextError, check_text, read_json_text, unknown_key_fix
from tinkerflow.chat import (
    ROLES,
    ContentPart,
    Conversation,
    ImagePart,
    Message,
    Role,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolSpec,
)
from tinkerflow.errors import TinkerflowError, ValidationError

__all__ = [
    "MESSAGE_KEYS",
    "ROW_KEYS",
    "ChatFormatError",
    "SourcedRow",
    "chat_row_from_json",
    "check_keys",
    "collect_rows",
    "conversation_from_json",
    "conversation_to_json",
    "decode_json_line",
    "parse_chat_line",
]

T = TypeVar("T")
_P = ParamSpec("_P")


class ChatFormatError(ValidationError):
    """A chat row that does not describe a valid conversation. ``where`` is the row's source position."""


#: The keys a chat row may hold (with ``other_keys`` a caller allows more: see :func:`conversation_from_json`).
ROW_KEYS: Final[frozenset[str]] = frozenset({"messages", "tools"})
#: The keys a message may hold.
MESSAGE_KEYS: Final[frozenset[str]] = frozenset(
    {"role", "content", "thinking", "reasoning_content", "tool_calls", "tool_call_id", "name", "trainable"}
)
_PART_KEYS: Final[dict[str, frozenset[str]]] = {
    "text": frozenset({"type", "text"}),
    "thinking": frozenset({"type", "thinking"}),
    "image": frozenset({"type", "data", "format"}),
}
_CALL_KEYS: Final = frozenset({"id", "type", "function"})
_CALL_FUNCTION_KEYS: Final = frozenset({"name", "arguments"})
_TOOL_KEYS: Final = frozenset({"type", "function"})
_TOOL_FUNCTION_KEYS: Final = frozenset({"name", "description", "parameters"})

#: Keys that other chat formats use and this one refuses by name, with the reason and the fix.
_REFUSED_KEYS: Final[dict[str, tuple[str, str]]] = {
    "weight": (
        "is OpenAI fine-tuning's per-message loss weight; tinkerflow does not read it (a turn meant to be masked "
        "would be trained on).",
        'write "trainable": false (or true) on every message instead and set train_on=customized.',
    ),
}


def _fail(where: str, field: str, problem: str, fix: str = "") -> ChatFormatError:
    return ChatFormatError(where, field, problem, fix)


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def check_keys(
    mapping: Mapping[str, object],
    known: Collection[str],
    where: str,
    field: str,
    what: str,
    error_type: type[ChatFormatError] = ChatFormatError,
) -> None:
    """Raise ``error_type`` naming the first key of ``mapping`` that is not in ``known`` (``field.key``), with the
    closest known keys as the fix. ``what`` names the object in the message (``a message``). A key holding ``null``
    counts as absent (a Hugging Face dataset gives every row every column, ``None`` where a row has none)."""
    for key, value in mapping.items():
        if key in known or value is None:
            continue
        name = key if isinstance(key, str) else repr(key)
        if name in _REFUSED_KEYS:
            problem, fix = _REFUSED_KEYS[name]
            raise error_type(where, _join(field, name), problem, fix)
        raise error_type(where, _join(field, name), f"is not a known key of {what}.", unknown_key_fix(name, known))


def _json_text(value: object, where: str, field: str) -> str:
    """``value`` as JSON text; a value JSON cannot hold (or nested too deeply to write) is a ChatFormatError."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as error:
        kind = "is nested too deeply" if isinstance(error, RecursionError) else f"holds a non-JSON value ({error})"
        raise _fail(where, field, f"{kind} to be written as JSON text.", "give plain JSON data.") from error


def _describe(value: object) -> str:
    """A short description of a value for a message (never raises)."""
    try:
        return json.dumps(value, ensure_ascii=False)[:80]
    except (TypeError, ValueError, RecursionError):
        return f"{type(value).__name__} value"


def _record(where: str, field: str, build: Callable[_P, T], *args: _P.args, **kwargs: _P.kwargs) -> T:
    """``build(*args, **kwargs)``, its validation error renamed to the row (``where``) and ``field.<its field>``."""
    try:
        return build(*args, **kwargs)
    except ValidationError as error:
        raise _fail(where, _join(field, error.field), error.problem, error.fix) from error


def _content(value: object, where: str, field: str) -> str | tuple[ContentPart, ...]:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            return check_text(value, "Message", "content")
        except ValidationError as error:
            raise _fail(where, field, error.problem, error.fix) from error
    if not isinstance(value, list):
        raise _fail(where, field, f"must be a string, a list of parts or null, got {type(value).__name__}.")
    parts: list[ContentPart] = []
    for index, raw in enumerate(cast("list[object]", value)):
        part_field = f"{field}[{index}]"
        if not isinstance(raw, dict):
            raise _fail(where, part_field, "each content part must be an object with a 'type'.")
        part = cast("dict[str, object]", raw)
        kind = part.get("type")
        if isinstance(kind, str) and kind in _PART_KEYS:
            check_keys(part, _PART_KEYS[kind], where, part_field, f"a {kind!r} content part")
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(_record(where, part_field, TextPart, cast("str", part["text"])))
        elif kind == "thinking" and isinstance(part.get("thinking"), str):
            parts.append(_record(where, part_field, ThinkingPart, cast("str", part["thinking"])))
        elif kind == "image" and isinstance(part.get("data"), str):
            try:
                data = base64.b64decode(cast("str", part["data"]), validate=True)
            except (binascii.Error, ValueError) as error:
                raise _fail(where, f"{part_field}.data", f"is not valid base64 ({error}).") from error
            image_format = part.get("format", "png")
            if image_format not in ("png", "jpeg"):
                raise _fail(where, f"{part_field}.format", f"must be 'png' or 'jpeg', got {image_format!r:.40}.")
            parts.append(_record(where, part_field, ImagePart, data=data, format=image_format))
        else:
            raise _fail(
                where,
                part_field,
                f"unknown or malformed part {_describe(part)}.",
                "use {'type': 'text', 'text': ...}, {'type': 'thinking', 'thinking': ...} or an image part.",
            )
    return tuple(parts)


def _function_object(
    value: object, where: str, field: str, what: str, body_problem: str, keys: tuple[frozenset[str], frozenset[str]]
) -> tuple[dict[str, object], dict[str, object]]:
    """An OpenAI-style ``{"type": "function", "function": {...}}`` object (or the bare function object) as
    ``(outer, function body)``; anything else, or a key outside ``keys`` (outer, body), is a
    :class:`ChatFormatError` naming ``field``."""
    if not isinstance(value, dict):
        raise _fail(where, field, f"{what} must be an object.")
    outer = cast("dict[str, object]", value)
    kind = outer.get("type", "function")
    if kind != "function":
        raise _fail(where, f"{field}.type", f"must be 'function', got {kind!r:.40}.", "only function tools exist.")
    if "function" not in outer:  # the bare function object
        check_keys(outer, keys[0] | keys[1] - {"function"}, where, field, what)
        return outer, outer
    check_keys(outer, keys[0], where, field, what)
    function = outer["function"]
    if not isinstance(function, dict):
        raise _fail(where, f"{field}.function", body_problem)
    body = cast("dict[str, object]", function)
    check_keys(body, keys[1], where, f"{field}.function", f"the function of {what}")
    return outer, body


def _tool_call(value: object, where: str, field: str) -> ToolCall:
    call, body = _function_object(
        value,
        where,
        field,
        "a tool call",
        "must be an object with 'name' and 'arguments'.",
        (_CALL_KEYS, _CALL_FUNCTION_KEYS),
    )
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(where, f"{field}.function.name", "is missing or empty.")
    arguments = body.get("arguments", "{}")
    if isinstance(arguments, dict):
        arguments = _json_text(arguments, where, f"{field}.function.arguments")
    if not isinstance(arguments, str):
        raise _fail(where, f"{field}.function.arguments", "must be a JSON object or its text.")
    call_id = call.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise _fail(where, f"{field}.id", "must be a string.")
    text = arguments
    try:
        return ToolCall(name=name, arguments=text, id=call_id)
    except ValidationError as error:
        inner = f"{field}.id" if error.field == "id" else f"{field}.function.{error.field}"
        raise _fail(where, inner, error.problem, error.fix) from error


def _message(value: object, where: str, field: str) -> Message:
    if not isinstance(value, dict):
        raise _fail(where, field, f"each message must be an object, got {type(value).__name__}.")
    raw = cast("dict[str, object]", value)
    check_keys(raw, MESSAGE_KEYS, where, field, "a message")
    role = raw.get("role")
    if role not in ROLES:
        raise _fail(where, f"{field}.role", f"unknown role {role!r:.40}.", f"use one of {', '.join(sorted(ROLES))}.")
    if "thinking" in raw and "reasoning_content" in raw:
        raise _fail(
            where,
            f"{field}.reasoning_content",
            "is given together with 'thinking' (they are two spellings of one field).",
            "keep one of them.",
        )
    calls_raw = raw.get("tool_calls") or []
    thinking = raw.get("thinking", raw.get("reasoning_content"))
    if "content" not in raw and not calls_raw and thinking is None:
        raise _fail(
            where,
            f"{field}.content",
            "is missing: the message says nothing.",
            'give "content" (null or "" for an intentionally empty message).',
        )
    content = _content(raw.get("content"), where, f"{field}.content")
    if thinking is not None:
        if not isinstance(thinking, str):
            raise _fail(where, f"{field}.thinking", "must be a string.")
        thought = _record(where, field, ThinkingPart, thinking)
        text_parts: tuple[ContentPart, ...] = (TextPart(content),) if isinstance(content, str) else content
        content = (thought, *text_parts)
    if not isinstance(calls_raw, list):
        raise _fail(where, f"{field}.tool_calls", "must be a list.")
    calls = tuple(
        _tool_call(call, where, f"{field}.tool_calls[{index}]")
        for index, call in enumerate(cast("list[object]", calls_raw))
    )
    try:
        return Message(
            role=cast("Role", role),
            content=content,
            tool_calls=calls,
            tool_call_id=cast("str | None", raw.get("tool_call_id")),
            name=cast("str | None", raw.get("name")),
            trainable=cast("bool | None", raw.get("trainable")),
        )
    except ValidationError as error:
        raise _fail(where, f"{field}.{error.field}", error.problem, error.fix) from error


def _tool_spec(value: object, where: str, field: str) -> ToolSpec:
    _, body = _function_object(value, where, field, "a tool", "must be an object.", (_TOOL_KEYS, _TOOL_FUNCTION_KEYS))
    parameters = body.get("parameters", {"type": "object", "properties": {}})
    name = body.get("name")
    if not isinstance(name, str):
        raise _fail(where, f"{field}.name", f"must be a string, got {type(name).__name__}.", "name the tool.")
    text = parameters if isinstance(parameters, str) else _json_text(parameters, where, f"{field}.parameters")
    try:
        return ToolSpec(name=name, description=cast("str", body.get("description", "")), parameters=text)
    except ValidationError as error:
        raise _fail(where, f"{field}.{error.field}", error.problem, error.fix) from error


def conversation_from_json(
    row: object, where: str = "row", *, other_keys: Collection[str] | None = None
) -> Conversation:
    """A :class:`Conversation` from a parsed JSON row (see the module docstring for the layout).

    ``where`` names the row's source for errors, e.g. ``"train.jsonl:17"``. Every key of a message (and of its
    content parts, tool calls and tools) must be one the format knows: an unknown key is an error naming it and the
    closest known key. ``other_keys``: the keys a row may hold besides ``messages`` and ``tools`` (``()``: none, as
    the data loaders read rows); ``None`` (the default) leaves the row's other keys to the caller (an evaluation row
    also holds its reference).

    Raises:
        ChatFormatError: naming ``where`` and the field (``messages[2].contnet``).
    """
    if isinstance(row, list):
        row = {"messages": row}
    if not isinstance(row, Mapping):
        raise _fail(where, "messages", f"a row must be an object with 'messages', got {type(row).__name__}.")
    mapping = cast("Mapping[str, object]", row)
    if other_keys is not None:
        check_keys(mapping, ROW_KEYS | frozenset(other_keys), where, "", "a chat row")
    messages_raw = mapping.get("messages")
    if not isinstance(messages_raw, list):
        raise _fail(where, "messages", "is missing or not a list.", 'write rows as {"messages": [...]}.')
    if not messages_raw:
        raise _fail(where, "messages", "is empty.", "drop the row or give it messages.")
    messages = tuple(
        _message(message, where, f"messages[{index}]")
        for index, message in enumerate(cast("list[object]", messages_raw))
    )
    tools_raw = mapping.get("tools") or []
    if not isinstance(tools_raw, list):
        raise _fail(where, "tools", "must be a list.")
    tools = tuple(
        _tool_spec(tool, where, f"tools[{index}]") for index, tool in enumerate(cast("list[object]", tools_raw))
    )
    try:
        return Conversation(messages=messages, tools=tools)
    except ValidationError as error:
        raise _fail(where, error.field, error.problem, error.fix) from error


def chat_row_from_json(row: object, where: str = "row") -> Conversation:
    """:func:`conversation_from_json` of a data row: it holds only ``messages`` and ``tools`` (or is a bare list of
    messages); any other key is an error naming it."""
    return conversation_from_json(row, where, other_keys=())


def decode_json_line(line: bytes | str, where: str, error_type: type[ChatFormatError] = ChatFormatError) -> object:
    """The JSON value of one JSONL line (bytes or text); invalid UTF-8 or JSON (a key written twice in one object,
    a number too long or nesting too deep to read: :func:`read_json_text`) raises ``error_type`` naming ``where``
    (``file:line``) and ``line`` (or the duplicated key)."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise error_type(
                where, "line", f"is not valid UTF-8 (byte {error.start}).", "re-encode the file as UTF-8."
            ) from error
    try:
        return read_json_text(line)
    except JsonTextError as error:
        raise error_type(where, error.field, error.problem, error.fix) from error


def parse_chat_line(line: bytes | str, where: str) -> Conversation:
    """One JSONL line (bytes or text) -> :class:`Conversation` (:func:`chat_row_from_json`: only ``messages`` and
    ``tools``); invalid UTF-8 or JSON is a :class:`ChatFormatError`."""
    return chat_row_from_json(decode_json_line(line, where), where)


def _content_to_json(content: str | tuple[ContentPart, ...]) -> object:
    if isinstance(content, str):
        return content
    parts: list[dict[str, str]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ThinkingPart):
            parts.append({"type": "thinking", "thinking": part.thinking})
        else:
            parts.append({"type": "image", "data": base64.b64encode(part.data).decode("ascii"), "format": part.format})
    return parts


def conversation_to_json(conversation: Conversation) -> dict[str, object]:
    """The inverse of :func:`conversation_from_json` (the common format; unparsed tool calls are not part of it)."""
    messages: list[dict[str, object]] = []
    for index, message in enumerate(conversation.messages):
        if message.unparsed_tool_calls:
            raise TinkerflowError(
                f"messages[{index}]: unparsed tool calls have no place in the common chat format; drop them first."
            )
        item: dict[str, object] = {"role": message.role, "content": _content_to_json(message.content)}
        if message.tool_calls:
            item["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in message.tool_calls
            ]
        for key in ("tool_call_id", "name", "trainable"):
            value = getattr(message, key)
            if value is not None:
                item[key] = value
        messages.append(item)
    row: dict[str, object] = {"messages": messages}
    if conversation.tools:
        row["tools"] = [
            {
                "type": "function",
                "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters_dict()},
            }
            for tool in conversation.tools
        ]
    return row


@attrs.frozen
class SourcedRow(Generic[T]):
    """A parsed row and where it came from (``file.jsonl:17``, ``hf:org/name[train][4]``, ``<memory>[3]``)."""

    where: str
    value: T


def collect_rows(
    rows: Iterable[tuple[str, Callable[[], T]]], policy: Literal["raise", "skip"]
) -> tuple[list[SourcedRow[T]], int]:
    """Parse every row (``(where, thunk)``; a thunk raises :class:`ChatFormatError` for a bad row) under the
    bad-row policy: ``raise`` re-raises the first error, ``skip`` counts it. Returns the parsed rows and the count
    of skipped ones."""
    kept: list[SourcedRow[T]] = []
    skipped = 0
    for where, parse in rows:
        try:
            kept.append(SourcedRow(where, parse()))
        except ChatFormatError:
            if policy == "raise":
                raise
            skipped += 1
    return kept, skipped
