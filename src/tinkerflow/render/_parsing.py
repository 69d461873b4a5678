"""Parsing helpers shared by renderer families (private): thinking/tool-call blocks and tool-call JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Final

from tinkerflow.chat import ContentPart, Message, TextPart, ThinkingPart, ToolCall, UnparsedToolCall
from tinkerflow.errors import ValidationError

__all__ = [
    "UNTERMINATED_TOOL_BLOCK",
    "assistant_message",
    "raw_object_members",
    "tool_call_from_json",
    "unterminated_block",
]

#: Prefix of the error of an :class:`UnparsedToolCall` made for a tool block that was opened and never closed.
UNTERMINATED_TOOL_BLOCK: Final[str] = "unterminated tool block"

_DECODER: Final[json.JSONDecoder] = json.JSONDecoder()
_WHITESPACE: Final[re.Pattern[str]] = re.compile(r"[ \t\n\r]*")


def _skip(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    return match.end() if match else index


def raw_object_members(text: str) -> dict[str, str] | None:
    """The exact source text of each top-level member value of a JSON object, or ``None`` if ``text`` is not
    one JSON object (surrounding whitespace allowed)."""
    try:
        index = _skip(text, 0)
        if text[index : index + 1] != "{":
            return None
        index = _skip(text, index + 1)
        members: dict[str, str] = {}
        if text[index : index + 1] == "}":
            index += 1
        else:
            while True:
                key, index = _DECODER.raw_decode(text, index)
                if not isinstance(key, str):
                    return None
                index = _skip(text, index)
                if text[index : index + 1] != ":":
                    return None
                index = _skip(text, index + 1)
                start = index
                _, index = _DECODER.raw_decode(text, index)
                members[key] = text[start:index]
                index = _skip(text, index)
                separator = text[index : index + 1]
                index += 1
                if separator == "}":
                    break
                if separator != ",":
                    return None
                index = _skip(text, index)
        if text[index:].strip(" \t\n\r"):
            return None
        return members
    except (json.JSONDecodeError, IndexError):
        return None


def tool_call_from_json(payload: str, raw_text: str) -> ToolCall | UnparsedToolCall:
    """A tool call from ``{"name": str, "arguments": object[, "id": str]}`` JSON text.

    The arguments keep their exact source text. Anything else becomes an :class:`UnparsedToolCall` with
    ``raw_text`` and the reason (the cookbook's wording).
    """
    try:
        parsed = json.loads(payload.strip())
    except json.JSONDecodeError as error:
        return UnparsedToolCall(raw_text=raw_text, error=f"Invalid JSON: {error}")
    if not isinstance(parsed, dict):
        return UnparsedToolCall(raw_text=raw_text, error="Tool call is not a JSON object")
    name = parsed.get("name")
    if not isinstance(name, str) or not name:
        return UnparsedToolCall(raw_text=raw_text, error="Missing or invalid 'name' field")
    if not isinstance(parsed.get("arguments"), dict):
        return UnparsedToolCall(raw_text=raw_text, error="Missing or invalid 'arguments' field")
    members = raw_object_members(payload)
    arguments = members["arguments"] if members is not None and "arguments" in members else None
    if arguments is None:  # duplicate keys and the like: fall back to a canonical serialization
        arguments = json.dumps(parsed["arguments"])
    call_id = parsed.get("id")
    try:
        return ToolCall(name=name, arguments=arguments, id=call_id if isinstance(call_id, str) else None)
    except ValidationError as error:
        return UnparsedToolCall(raw_text=raw_text, error=f"Invalid tool call: {error.problem}")


def unterminated_block(text: str, open_marker: str, close_marker: str) -> UnparsedToolCall | None:
    """An :class:`UnparsedToolCall` for a tool block opened more often than closed (raw text from the last
    unmatched opening marker), else ``None``."""
    opens = text.count(open_marker)
    if opens == 0 or opens <= text.count(close_marker):
        return None
    return UnparsedToolCall(
        raw_text=text[text.rfind(open_marker) :],
        error=f"{UNTERMINATED_TOOL_BLOCK}: '{open_marker}' opened without a matching '{close_marker}'",
    )


def merge_text_parts(parts: Sequence[ContentPart]) -> tuple[ContentPart, ...]:
    """Adjacent text parts joined, empty text and thinking parts dropped."""
    merged: list[ContentPart] = []
    for part in parts:
        if isinstance(part, TextPart):
            if not part.text:
                continue
            if merged and isinstance(merged[-1], TextPart):
                merged[-1] = TextPart(merged[-1].text + part.text)
                continue
        elif isinstance(part, ThinkingPart) and not part.thinking:
            continue
        merged.append(part)
    return tuple(merged)


def assistant_message(
    parts: Sequence[ContentPart],
    tool_calls: Sequence[ToolCall] = (),
    unparsed: Sequence[UnparsedToolCall] = (),
) -> Message:
    """The canonical parsed assistant message: content is a string when it is text only (``""`` when empty),
    else a tuple of parts (adjacent text merged, empty parts dropped)."""
    merged = merge_text_parts(parts)
    content: str | tuple[ContentPart, ...]
    if all(isinstance(part, TextPart) for part in merged):
        content = "".join(part.text for part in merged if isinstance(part, TextPart))
    else:
        content = merged
    return Message(role="assistant", content=content, tool_calls=tuple(tool_calls), unparsed_tool_calls=tuple(unparsed))
