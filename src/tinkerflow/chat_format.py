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

Errors are :class:`ChatFormatError` naming the row's source (``file.jsonl:17``) and the field
(``messages[2].role``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, Literal, TypeVar, cast

import attrs

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
    "ChatFormatError",
    "SourcedRow",
    "collect_rows",
    "conversation_from_json",
    "conversation_to_json",
    "decode_json_line",
    "parse_chat_line",
]

T = TypeVar("T")


class ChatFormatError(ValidationError):
    """A chat row that does not describe a valid conversation. ``where`` is the row's source position."""


def _fail(where: str, field: str, problem: str, fix: str = "") -> ChatFormatError:
    return ChatFormatError(where, field, problem, fix)


def _content(value: object, where: str, field: str) -> str | tuple[ContentPart, ...]:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _fail(where, field, f"must be a string, a list of parts or null, got {type(value).__name__}.")
    parts: list[ContentPart] = []
    for index, raw in enumerate(cast("list[object]", value)):
        part_field = f"{field}[{index}]"
        if not isinstance(raw, dict):
            raise _fail(where, part_field, "each content part must be an object with a 'type'.")
        part = cast("dict[str, object]", raw)
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(TextPart(cast("str", part["text"])))
        elif kind == "thinking" and isinstance(part.get("thinking"), str):
            parts.append(ThinkingPart(cast("str", part["thinking"])))
        elif kind == "image" and isinstance(part.get("data"), str):
            try:
                data = base64.b64decode(cast("str", part["data"]), validate=True)
            except binascii.Error as error:
                raise _fail(where, f"{part_field}.data", f"is not valid base64 ({error}).") from error
            image_format = part.get("format", "png")
            if image_format not in ("png", "jpeg"):
                raise _fail(where, f"{part_field}.format", f"must be 'png' or 'jpeg', got {image_format!r}.")
            parts.append(ImagePart(data=data, format=image_format))
        else:
            raise _fail(
                where,
                part_field,
                f"unknown or malformed part {json.dumps(part)[:80]}.",
                "use {'type': 'text', 'text': ...}, {'type': 'thinking', 'thinking': ...} or an image part.",
            )
    return tuple(parts)


def _function_object(
    value: object, where: str, field: str, what: str, body_problem: str
) -> tuple[dict[str, object], dict[str, object]]:
    """An OpenAI-style ``{"type": "function", "function": {...}}`` object (or the bare function object) as
    ``(outer, function body)``; anything else is a :class:`ChatFormatError` naming ``field``."""
    if not isinstance(value, dict):
        raise _fail(where, field, f"{what} must be an object.")
    outer = cast("dict[str, object]", value)
    function = outer.get("function", outer)
    if not isinstance(function, dict):
        raise _fail(where, f"{field}.function", body_problem)
    return outer, cast("dict[str, object]", function)


def _tool_call(value: object, where: str, field: str) -> ToolCall:
    call, body = _function_object(value, where, field, "a tool call", "must be an object with 'name' and 'arguments'.")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(where, f"{field}.function.name", "is missing or empty.")
    arguments = body.get("arguments", "{}")
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        raise _fail(where, f"{field}.function.arguments", "must be a JSON object or its text.")
    call_id = call.get("id")
    if call_id is not None and not isinstance(call_id, str):
        raise _fail(where, f"{field}.id", "must be a string.")
    try:
        return ToolCall(name=name, arguments=arguments, id=call_id)
    except ValidationError as error:
        raise _fail(where, f"{field}.function.{error.field}", error.problem, error.fix) from error


def _message(value: object, where: str, field: str) -> Message:
    if not isinstance(value, dict):
        raise _fail(where, field, f"each message must be an object, got {type(value).__name__}.")
    raw = cast("dict[str, object]", value)
    role = raw.get("role")
    if role not in ROLES:
        raise _fail(where, f"{field}.role", f"unknown role {role!r}.", f"use one of {', '.join(sorted(ROLES))}.")
    content = _content(raw.get("content"), where, f"{field}.content")
    thinking = raw.get("thinking", raw.get("reasoning_content"))
    if thinking is not None:
        if not isinstance(thinking, str):
            raise _fail(where, f"{field}.thinking", "must be a string.")
        text_parts: tuple[ContentPart, ...] = (TextPart(content),) if isinstance(content, str) else content
        content = (ThinkingPart(thinking), *text_parts)
    calls_raw = raw.get("tool_calls") or []
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
    _, body = _function_object(value, where, field, "a tool", "must be an object.")
    parameters = body.get("parameters", {"type": "object", "properties": {}})
    try:
        return ToolSpec(
            name=cast("str", body.get("name")),
            description=cast("str", body.get("description", "")),
            parameters=parameters if isinstance(parameters, str) else json.dumps(parameters, ensure_ascii=False),
        )
    except ValidationError as error:
        raise _fail(where, f"{field}.{error.field}", error.problem, error.fix) from error


def conversation_from_json(row: object, where: str = "row") -> Conversation:
    """A :class:`Conversation` from a parsed JSON row (see the module docstring for the layout).

    ``where`` names the row's source for errors, e.g. ``"train.jsonl:17"``.
    """
    if isinstance(row, list):
        row = {"messages": row}
    if not isinstance(row, Mapping):
        raise _fail(where, "messages", f"a row must be an object with 'messages', got {type(row).__name__}.")
    mapping = cast("Mapping[str, object]", row)
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


def decode_json_line(line: bytes | str, where: str, error_type: type[ChatFormatError] = ChatFormatError) -> object:
    """The JSON value of one JSONL line (bytes or text); invalid UTF-8 or JSON raises ``error_type`` naming
    ``where`` (``file:line``)."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise error_type(
                where, "line", f"is not valid UTF-8 (byte {error.start}).", "re-encode the file as UTF-8."
            ) from error
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise error_type(where, "line", f"is not valid JSON ({error.msg} at column {error.colno}).") from error


def parse_chat_line(line: bytes | str, where: str) -> Conversation:
    """One JSONL line (bytes or text) -> :class:`Conversation`; invalid UTF-8 or JSON is a :class:`ChatFormatError`."""
    return conversation_from_json(decode_json_line(line, where), where)


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
