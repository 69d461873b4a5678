"""Chat records: messages, their content parts, tool calls, tool specs and conversations.

All records are frozen, slotted ``attrs`` classes validated on construction; change one with ``attrs.evolve``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final, Literal, TypeAlias, cast

import attrs

from tinkerflow._validate import check_text, require_type
from tinkerflow.errors import ValidationError

__all__ = [
    "ROLES",
    "Content",
    "ContentPart",
    "Conversation",
    "ImagePart",
    "JsonObject",
    "Message",
    "Role",
    "TextPart",
    "ThinkingPart",
    "ToolCall",
    "ToolSpec",
    "UnparsedToolCall",
]

Role: TypeAlias = Literal["system", "developer", "user", "assistant", "tool"]
ROLES: Final[frozenset[str]] = frozenset({"system", "developer", "user", "assistant", "tool"})
ImageFormat: TypeAlias = Literal["png", "jpeg"]

JsonObject: TypeAlias = Mapping[str, object]


def _json_object_text(value: object, where: str, field: str) -> str:
    """Validate that ``value`` is JSON text of an object; return it unchanged (its exact text is kept)."""
    text = check_text(value, where, field)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValidationError(
            where, field, f"is not valid JSON ({error.msg} at char {error.pos}).", "pass a JSON object as text."
        ) from error
    if not isinstance(parsed, dict):
        raise ValidationError(
            where, field, f"must be a JSON object, got JSON {type(parsed).__name__}.", 'wrap it, e.g. {"x": ...}.'
        )
    return text


def image_bytes_repr(data: bytes) -> str:
    """How an image's bytes show in a record's repr: their count, not their content."""
    return f"<{len(data)} bytes>"


def check_image(data: object, image_format: object, where: str) -> None:
    """An encoded image of a record (``ImagePart``, ``ImageChunk``): non-empty bytes in png or jpeg format."""
    require_type(data, bytes, where, "data")
    if not data:
        raise ValidationError(where, "data", "is empty.", "pass the encoded image bytes.")
    if image_format not in ("png", "jpeg"):
        raise ValidationError(where, "format", f"must be 'png' or 'jpeg', got {image_format!r}.")


@attrs.frozen
class TextPart:
    """Plain text inside a message."""

    text: str

    def __attrs_post_init__(self) -> None:
        check_text(self.text, "TextPart", "text")


@attrs.frozen
class ThinkingPart:
    """Model reasoning ("thinking") inside an assistant message."""

    thinking: str

    def __attrs_post_init__(self) -> None:
        check_text(self.thinking, "ThinkingPart", "thinking")


@attrs.frozen
class ImagePart:
    """An encoded image inside a message (for vision-language renderers)."""

    data: bytes = attrs.field(repr=image_bytes_repr)
    format: ImageFormat = "png"

    def __attrs_post_init__(self) -> None:
        check_image(self.data, self.format, "ImagePart")


ContentPart: TypeAlias = TextPart | ThinkingPart | ImagePart
Content: TypeAlias = str | tuple[ContentPart, ...]


@attrs.frozen
class ToolCall:
    """A call of a tool by the model: a function name and its arguments as JSON object text.

    ``arguments`` keeps the exact text (renderers reproduce it token for token); :meth:`arguments_dict`
    parses it.
    """

    name: str
    arguments: str = "{}"
    id: str | None = None

    def __attrs_post_init__(self) -> None:
        check_text(self.name, "ToolCall", "name")
        if not self.name:
            raise ValidationError("ToolCall", "name", "is empty.", "name the function being called.")
        _json_object_text(self.arguments, "ToolCall", "arguments")
        if self.id is not None:
            check_text(self.id, "ToolCall", "id")

    @classmethod
    def create(cls, name: str, arguments: JsonObject, id: str | None = None) -> ToolCall:
        """Build a tool call from a mapping of arguments (serialized with ``json.dumps``)."""
        return cls(name=name, arguments=json.dumps(dict(arguments), ensure_ascii=False), id=id)

    def arguments_dict(self) -> dict[str, object]:
        """The arguments parsed from JSON."""
        return cast("dict[str, object]", json.loads(self.arguments))


@attrs.frozen
class UnparsedToolCall:
    """Text the model meant as a tool call that could not be parsed: kept with the reason."""

    raw_text: str
    error: str

    def __attrs_post_init__(self) -> None:
        check_text(self.raw_text, "UnparsedToolCall", "raw_text")
        check_text(self.error, "UnparsedToolCall", "error")


@attrs.frozen
class ToolSpec:
    """A tool the model may call: name, description and a JSON-schema of its parameters (as JSON text)."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object", "properties": {}}'

    def __attrs_post_init__(self) -> None:
        check_text(self.name, "ToolSpec", "name")
        if not self.name:
            raise ValidationError("ToolSpec", "name", "is empty.", "give the tool a name.")
        check_text(self.description, "ToolSpec", "description")
        _json_object_text(self.parameters, "ToolSpec", "parameters")

    @classmethod
    def create(cls, name: str, description: str, parameters: JsonObject) -> ToolSpec:
        """Build a tool spec from a JSON-schema mapping."""
        return cls(name=name, description=description, parameters=json.dumps(dict(parameters), ensure_ascii=False))

    def parameters_dict(self) -> dict[str, object]:
        """The parameter schema parsed from JSON."""
        return cast("dict[str, object]", json.loads(self.parameters))


def _content_converter(value: object) -> Content:
    if isinstance(value, list):
        return tuple(cast("list[ContentPart]", value))
    return cast("Content", value)


def _tuple_converter(value: object) -> object:
    return tuple(cast("list[object]", value)) if isinstance(value, list) else value


@attrs.frozen
class Message:
    """One chat message.

    Attributes:
        role: ``system``, ``developer``, ``user``, ``assistant`` or ``tool``.
        content: text, or a tuple of parts (text, thinking, image). Thinking parts are for assistants only.
        tool_calls: calls the assistant made (assistant messages only).
        unparsed_tool_calls: tool-call text a parser could not read (assistant messages only).
        tool_call_id: for ``tool`` messages, the id of the call this message answers.
        name: optional author or tool name.
        trainable: per-message training flag, used only by the ``customized`` train-on mode.
    """

    role: Role
    content: Content = attrs.field(default="", converter=_content_converter)
    tool_calls: tuple[ToolCall, ...] = attrs.field(default=(), converter=_tuple_converter)
    unparsed_tool_calls: tuple[UnparsedToolCall, ...] = attrs.field(default=(), converter=_tuple_converter)
    tool_call_id: str | None = None
    name: str | None = None
    trainable: bool | None = None

    def __attrs_post_init__(self) -> None:
        where = "Message"
        if self.role not in ROLES:
            raise ValidationError(
                where, "role", f"unknown role {self.role!r}.", f"use one of {', '.join(sorted(ROLES))}."
            )
        if isinstance(self.content, tuple):
            for index, part in enumerate(self.content):
                require_type(part, (TextPart, ThinkingPart, ImagePart), where, f"content[{index}]")
                if isinstance(part, ThinkingPart) and self.role != "assistant":
                    raise ValidationError(
                        where,
                        f"content[{index}]",
                        f"a thinking part in a {self.role!r} message.",
                        "only assistant messages carry thinking.",
                    )
        else:
            check_text(self.content, where, "content")
        require_type(self.tool_calls, tuple, where, "tool_calls")
        for index, call in enumerate(self.tool_calls):
            require_type(call, ToolCall, where, f"tool_calls[{index}]")
        require_type(self.unparsed_tool_calls, tuple, where, "unparsed_tool_calls")
        for index, unparsed in enumerate(self.unparsed_tool_calls):
            require_type(unparsed, UnparsedToolCall, where, f"unparsed_tool_calls[{index}]")
        if (self.tool_calls or self.unparsed_tool_calls) and self.role != "assistant":
            raise ValidationError(
                where, "tool_calls", f"a {self.role!r} message cannot make tool calls.", "only assistants call tools."
            )
        if self.tool_call_id is not None:
            check_text(self.tool_call_id, where, "tool_call_id")
            if self.role != "tool":
                raise ValidationError(
                    where, "tool_call_id", f"set on a {self.role!r} message.", "only tool results answer a call id."
                )
        if self.name is not None:
            check_text(self.name, where, "name")
        if self.trainable is not None:
            require_type(self.trainable, bool, where, "trainable")

    def text(self) -> str:
        """The message's visible text: the string content, or its text parts joined (thinking excluded)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    def thinking(self) -> str | None:
        """The thinking parts joined, or ``None`` when the message has none."""
        if isinstance(self.content, str):
            return None
        parts = [part.thinking for part in self.content if isinstance(part, ThinkingPart)]
        return "".join(parts) if parts else None

    def images(self) -> tuple[ImagePart, ...]:
        """The image parts, in order."""
        if isinstance(self.content, str):
            return ()
        return tuple(part for part in self.content if isinstance(part, ImagePart))


@attrs.frozen
class Conversation:
    """A non-empty sequence of messages plus the tools offered to the model."""

    messages: tuple[Message, ...] = attrs.field(converter=_tuple_converter)
    tools: tuple[ToolSpec, ...] = attrs.field(default=(), converter=_tuple_converter)

    def __attrs_post_init__(self) -> None:
        require_type(self.messages, tuple, "Conversation", "messages")
        if not self.messages:
            raise ValidationError("Conversation", "messages", "is empty.", "a conversation needs at least one message.")
        for index, message in enumerate(self.messages):
            require_type(message, Message, "Conversation", f"messages[{index}]")
        require_type(self.tools, tuple, "Conversation", "tools")
        names: set[str] = set()
        for index, tool in enumerate(self.tools):
            require_type(tool, ToolSpec, "Conversation", f"tools[{index}]")
            if tool.name in names:
                raise ValidationError(
                    "Conversation",
                    f"tools[{index}].name",
                    f"duplicate tool name {tool.name!r}.",
                    "name tools uniquely.",
                )
            names.add(tool.name)

    def __len__(self) -> int:
        return len(self.messages)
