"""gpt-oss renderers (OpenAI's Harmony format): ``gpt_oss_no_sysprompt`` and ``gpt_oss_{low,medium,high}_reasoning``::

    <|start|>system<|message|>You are ChatGPT, ... Current date: {date}\\n\\nReasoning: {effort} ...<|end|>
    <|start|>developer<|message|># Instructions\\n\\n{system}\\n\\n<|end|>
    <|start|>user<|message|>{text}<|end|>
    <|start|>assistant<|channel|>analysis<|message|>{thinking}<|end|>
    <|start|>assistant<|channel|>final<|message|>{text}<|return|>

Tool calls go to the commentary channel (``<|start|>assistant to=functions.{name}<|channel|>commentary
<|constrain|>json<|message|>{arguments}<|call|>``), tool results come back as
``<|start|>functions.{name} to=assistant<|channel|>commentary<|message|>{result}<|end|>``. The last assistant
message ends with ``<|return|>``, earlier ones with ``<|end|>``; sampling stops at ``<|return|>`` or ``<|call|>``.

The system prompt (written when a reasoning effort is set) states the current date: it is an input
(``current_date="YYYY-MM-DD"``), never read from the clock, so rendering stays a pure function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar, Final, Literal

import attrs

from tinkerflow.chat import Message, Role, TextPart, ThinkingPart, ToolCall, ToolSpec, UnparsedToolCall
from tinkerflow.render._parsing import UNTERMINATED_TOOL_BLOCK, assistant_message
from tinkerflow.render._segments import find, segments, spell
from tinkerflow.render.family import PieceList, control_ids, text_of
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, StopSequences, Termination
from tinkerflow.render.renderer import Renderer

__all__ = ["GptOssRenderer", "harmony_tools_text"]

ReasoningEffort = Literal["low", "medium", "high"]

_START: Final = "<|start|>"
_END: Final = "<|end|>"
_MESSAGE: Final = "<|message|>"
_CHANNEL: Final = "<|channel|>"
_CONSTRAIN: Final = "<|constrain|>"
_RETURN: Final = "<|return|>"
_CALL: Final = "<|call|>"
_CONTROL: Final = (_START, _END, _MESSAGE, _CHANNEL, _CONSTRAIN, _RETURN, _CALL)
#: ``Message.name`` of the messages the renderer writes itself as real ``system`` messages.
_INTERNAL: Final = "\x00gpt-oss-system"
_SYSTEM_PROMPT: Final = (
    "You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\n"
    "Current date: {current_date}\n\n"
    "Reasoning: {reasoning_effort}\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message."
)
_TOOL_ROUTING: Final = "Calls to these tools must go to the commentary channel: 'functions'."
_DATE: Final[re.Pattern[str]] = re.compile(r"\d{4}-\d{2}-\d{2}")


def _typescript_type(schema: Mapping[str, object]) -> str:
    for key in ("oneOf", "anyOf"):
        options = schema.get(key)
        if isinstance(options, list):
            return " | ".join(_typescript_type(option) for option in options if isinstance(option, dict))
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " | ".join(_typescript_type({"type": item}) for item in kind)
    if kind == "string":
        enum = schema.get("enum")
        base = " | ".join(json.dumps(value) for value in enum) if isinstance(enum, list) and enum else "string"
    elif kind in ("number", "integer"):
        base = "number"
    elif kind == "boolean":
        base = "boolean"
    elif kind == "array":
        items = schema.get("items", {})
        base = f"{_typescript_type(items if isinstance(items, dict) else {})}[]"
    elif kind == "object":
        base = _typescript_object(schema)
    else:
        base = "any"
    return f"{base} | null" if schema.get("nullable") else base


def _typescript_object(schema: Mapping[str, object]) -> str:
    if schema.get("type") != "object":
        return "any"
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    required_set = set(required) if isinstance(required, list) else set()
    fields = []
    if isinstance(properties, dict):
        for name, prop in properties.items():
            optional = "" if name in required_set else "?"
            fields.append(f"{name}{optional}: {_typescript_type(prop if isinstance(prop, dict) else {})}")
    return "{ " + ", ".join(fields) + " }"


def _comments(schema: Mapping[str, object]) -> list[str]:
    lines: list[str] = []
    if schema.get("title"):
        lines.extend([str(schema["title"]), ""])
    if schema.get("description"):
        lines.append(str(schema["description"]))
    examples = schema.get("examples")
    if examples and isinstance(examples, list):
        lines.append("Examples:")
        lines.extend(f"- {json.dumps(example)}" for example in examples)
    return lines


def _parameters_block(schema: Mapping[str, object]) -> str:
    properties = schema.get("properties")
    if schema.get("type") != "object" or not properties or not isinstance(properties, dict):
        return "()"
    header = "(_:"
    if schema.get("description"):
        header += f" // {schema['description']}"
    lines = [header, "{"]
    required = schema.get("required", [])
    required_set = set(required) if isinstance(required, list) else set()
    for name, prop in properties.items():
        prop_schema = prop if isinstance(prop, dict) else {}
        lines.extend(f"// {comment}" for comment in _comments(prop_schema))
        optional = "" if name in required_set else "?"
        default = f" // default: {json.dumps(prop_schema['default'])}" if "default" in prop_schema else ""
        lines.append(f"{name}{optional}: {_typescript_type(prop_schema)},{default}")
    lines.append("})")
    return "\n".join(lines)


def harmony_tools_text(tools: Sequence[ToolSpec]) -> str:
    """The ``# Tools`` section (TypeScript-like declarations in a ``functions`` namespace)."""
    definitions = []
    for tool in tools:
        lines = [f"// {tool.description}"] if tool.description else []
        lines.append(f"type {tool.name} = {_parameters_block(tool.parameters_dict())} => any;")
        definitions.append("\n".join(lines))
    body = "\n\n".join(definitions)
    return f"# Tools\n\n## functions\n\nnamespace functions {{\n\n{body}\n\n}} // namespace functions"


def _tool_names_by_id(messages: Sequence[Message]) -> dict[str, str]:
    return {call.id: call.name for message in messages for call in message.tool_calls if call.id is not None}


@attrs.frozen(eq=False)
class GptOssRenderer(Renderer):
    """Harmony format. ``reasoning_effort`` (``"low"``, ``"medium"``, ``"high"``) writes the system prompt, which
    then needs ``current_date`` (``"YYYY-MM-DD"``); with neither, no system prompt is written."""

    reasoning_effort: ReasoningEffort | None = None
    current_date: str | None = None
    _ids: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)

    name: ClassVar[str] = "gpt_oss"
    roles: ClassVar[frozenset[str]] = frozenset({"system", "developer", "user", "assistant", "tool"})
    supports_tools: ClassVar[bool] = True
    supports_thinking: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.reasoning_effort not in (None, "low", "medium", "high"):
            raise self._error("reasoning_effort", f"must be low, medium or high, got {self.reasoning_effort!r}.")
        if self.reasoning_effort is not None and self.current_date is None:
            raise self._error(
                "current_date",
                "the system prompt states the current date, and a renderer never reads the clock.",
                "pass current_date='YYYY-MM-DD' (e.g. datetime.date.today().isoformat() in your script).",
            )
        if self.current_date is not None and not _DATE.fullmatch(self.current_date):
            raise self._error("current_date", f"expected YYYY-MM-DD, got {self.current_date!r}.")
        self._ids.update(control_ids(self.tokenizer, _CONTROL))

    @property
    def has_extension_property(self) -> bool:
        # History keeps every channel and ends earlier turns with <|end|> where the sampled turn ended with
        # <|return|>: a later prompt does not extend the earlier full sequence.
        return False

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        names = _tool_names_by_id(messages)
        for index, message in enumerate(messages):
            if message.name == _INTERNAL:
                raise self._error(f"messages[{index}].name", "this name is reserved for the renderer.", "")
            if message.role == "tool" and not message.name and message.tool_call_id not in names:
                raise self._error(
                    f"messages[{index}].name",
                    "Harmony writes the tool's name on its result, and neither the message's name nor an earlier "
                    "tool call with its tool_call_id gives it.",
                    "set name= on the tool message.",
                )

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        names = _tool_names_by_id(messages)
        rest = tuple(
            attrs.evolve(message, name=names[message.tool_call_id])
            if message.role == "tool" and not message.name and message.tool_call_id in names
            else message
            for message in messages
        )
        head: list[Message] = []
        if self.reasoning_effort is not None:
            content = _SYSTEM_PROMPT.format(current_date=self.current_date, reasoning_effort=self.reasoning_effort)
            head.append(Message(role="system", content=content, name=_INTERNAL))
        if tools:
            head.append(Message(role="system", content=_TOOL_ROUTING, name=_INTERNAL))
            sections = []
            trainable = None
            if rest and rest[0].role == "system":
                system, rest = rest[0], rest[1:]
                trainable = system.trainable
                if text_of(system):
                    sections.append(f"# Instructions\n\n{text_of(system)}")
            sections.append(harmony_tools_text(tools))
            head.append(Message(role="developer", content="\n\n".join(sections), trainable=trainable))
        return (*head, *rest)

    def train_role(self, message: Message) -> str:
        return "renderer" if message.name == _INTERNAL else message.role

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        role = message.role
        text = text_of(message)
        if role == "tool":
            name = message.name or "unknown"
            name = name if name.startswith("functions.") else f"functions.{name}"
            return RenderedMessage(
                header=(ids[_START], f"{name} to=assistant"),
                output=(ids[_CHANNEL], "commentary", ids[_MESSAGE], text, ids[_END]),
            )
        if role == "system" and message.name == _INTERNAL:
            return RenderedMessage(header=(ids[_START], "system"), output=(ids[_MESSAGE], text, ids[_END]))
        if role == "system":
            return RenderedMessage(
                header=(ids[_START], "developer"),
                output=(ids[_MESSAGE], f"# Instructions\n\n{text}\n\n", ids[_END]),
            )
        if role != "assistant":
            return RenderedMessage(header=(ids[_START], role), output=(ids[_MESSAGE], text, ids[_END]))
        out = PieceList()
        content = message.content
        thinking = (
            "" if isinstance(content, str) else "".join(p.thinking for p in content if isinstance(p, ThinkingPart))
        )
        if thinking:
            out.extend((ids[_CHANNEL], "analysis", ids[_MESSAGE], thinking, ids[_END], ids[_START], "assistant"))
        calls = message.tool_calls
        if calls:
            if text:
                out.extend((ids[_CHANNEL], "commentary", ids[_MESSAGE], text, ids[_END], ids[_START], "assistant"))
            for position, call in enumerate(calls):
                out.extend((f" to=functions.{call.name}", ids[_CHANNEL], "commentary ", ids[_CONSTRAIN], "json"))
                out.extend((ids[_MESSAGE], call.arguments, ids[_CALL]))
                if position < len(calls) - 1:
                    out.extend((ids[_START], "assistant"))
        else:
            out.extend((ids[_CHANNEL], "final", ids[_MESSAGE], text, ids[_RETURN] if ctx.is_last else ids[_END]))
        return RenderedMessage(header=(ids[_START], "assistant"), output=out.to_tuple())

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        return (self._ids[_START], role)

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=(self._ids[_RETURN], self._ids[_CALL]))

    # -- parsing --------------------------------------------------------------------------------------------

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        ids = self._ids
        calls, returns = tokens.count(ids[_CALL]), tokens.count(ids[_RETURN])
        if calls == 0 and returns == 0:
            return ParsedResponse(
                Message(role="assistant", content=self.tokenizer.decode(tokens)), Termination.MALFORMED
            )
        if calls > 1 or returns > 1:
            raise self._error(
                "tokens_T",
                f"holds {calls} <|call|> and {returns} <|return|> tokens; a sampled response ends at its first.",
                "sample with the renderer's stop_sequences().",
            )
        stops = [tokens.index(token) for token in (ids[_CALL], ids[_RETURN]) if token in tokens]
        body = tokens[: min(stops)]
        return ParsedResponse(self._parse_body(body), Termination.STOP_SEQUENCE)

    def _parse_body(self, tokens: list[int]) -> Message:
        ids = self._ids
        names = {ids[text]: text for text in _CONTROL}
        items = segments(tokens, names, self.tokenizer.decode)
        parts: list[TextPart | ThinkingPart] = []
        calls: list[ToolCall] = []
        unparsed: list[UnparsedToolCall] = []
        enders = {ids[_END], ids[_CALL], ids[_RETURN]}
        cursor = 0
        while True:
            message_at = find(items, ids[_MESSAGE], cursor)
            if message_at < 0:
                break
            header_start = cursor
            for index in range(message_at - 1, cursor - 1, -1):
                if items[index] == ids[_START] and type(items[index]) is int:
                    header_start = index
                    break
            end = len(items)
            for index in range(message_at + 1, len(items)):
                if type(items[index]) is int and items[index] in enders:
                    end = index
                    break
            header = spell(items[header_start:message_at], names)
            body = spell(items[message_at + 1 : end], names)
            raw = spell(items[header_start : end + 1], names)
            cursor = end + 1
            if not body.strip():
                continue
            recipient = re.search(r"to=([^\s<]+)", header)
            if recipient and recipient.group(1).startswith("functions."):
                name = recipient.group(1).split("functions.", 1)[1]
                calls_or_error = self._tool_call(name, body, raw)
                if isinstance(calls_or_error, ToolCall):
                    calls.append(calls_or_error)
                else:
                    unparsed.append(calls_or_error)
                continue
            channel = re.search(r"<\|channel\|>([^<\s]+)", header)
            if channel and channel.group(1) == "analysis":
                parts.append(ThinkingPart(body))
            elif channel and channel.group(1) in ("final", "commentary"):
                parts.append(TextPart(body))
        spelled = spell(items, names)
        if spelled.count("to=functions.") > len(calls) + len(unparsed):
            start = spelled.rfind(_START)
            unparsed.append(
                UnparsedToolCall(
                    raw_text=spelled[start:] if start >= 0 else spelled,
                    error=f"{UNTERMINATED_TOOL_BLOCK}: 'to=functions.' tool-call header without a parsable "
                    "arguments payload",
                )
            )
        return assistant_message(parts, calls, unparsed)

    @staticmethod
    def _tool_call(name: str, body: str, raw: str) -> ToolCall | UnparsedToolCall:
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError as error:
            return UnparsedToolCall(raw_text=raw, error=f"Invalid JSON: {error}")
        if not isinstance(parsed, dict) or not name:
            return UnparsedToolCall(raw_text=raw, error="Tool call arguments are not a JSON object")
        return ToolCall(name=name, arguments=body.strip())
