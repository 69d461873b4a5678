"""Qwen3.5 / Qwen3.6 renderers: ``qwen3_5`` (thinking, earlier reasoning stripped), ``qwen3_5_preserve_thinking``
and ``qwen3_5_disable_thinking``. Qwen3.8 (:mod:`tinkerflow.render.qwen3_8`) derives from these.

Layout (token for token as tinker-cookbook 0.6.1's ``Qwen3_5Renderer``)::

    <|im_start|>system\\n# Tools ... </IMPORTANT>[\\n\\n{system}]<|im_end|>
    <|im_start|>user\\n{text|trim}<|im_end|>
    <|im_start|>assistant\\n<think>\\n{thinking}\\n</think>\\n\\n{text|trim}[\\n\\n<tool_call>\\n<function=f>
    <parameter=k>\\nv\\n</parameter>\\n</function>\\n</tool_call>]<|im_end|>
    <|im_start|>user\\n<tool_response>\\n{result}\\n</tool_response>\\n<tool_response>...<|im_end|>

Every message's text is trimmed; consecutive tool results share one user block. An assistant message after the
last user message that did not reason gets the empty block ``<think>\\n\\n</think>\\n\\n`` in its *header*; the
generation prompt ends with ``<think>\\n`` (``<think>\\n\\n</think>\\n\\n`` with thinking disabled), and a trained
final turn's header stops there too (the rest of its block opens the output, encoded apart). Earlier assistant
messages lose their reasoning unless ``strip_thinking_from_history=False``. No variant has the extension property.
Tool calls are XML with one ``<parameter=...>`` per argument (lossy: a parsed value is JSON when it parses).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import ClassVar, Final

import attrs

from tinkerflow.chat import (
    ContentPart,
    ImagePart,
    Message,
    Role,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolSpec,
    UnparsedToolCall,
)
from tinkerflow.errors import ValidationError
from tinkerflow.render._parsing import UNTERMINATED_TOOL_BLOCK, assistant_message, tool_call_from_json
from tinkerflow.render.control import split_control
from tinkerflow.render.family import PieceList, split_at_stop_token, text_of
from tinkerflow.render.qwen3_vl import Qwen3VLRenderer
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, Termination

__all__ = [
    "Qwen35DisableThinkingRenderer",
    "Qwen35PreserveThinkingRenderer",
    "Qwen35Renderer",
    "parse_xml_tool_call",
    "qwen3_5_tools_text",
]

_TOOLS_HEAD: Final = "# Tools\n\nYou have access to the following functions:\n\n<tools>\n"
_TOOLS_TAIL: Final = (
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested "
    "within <tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language BEFORE the function call, "
    "but NOT after\n- If there is no function call available, answer the question like normal with your current "
    "knowledge and do not tell the user about function calls\n</IMPORTANT>"
)

# <tool_call> <function=NAME> BODY </function> </tool_call>, whitespace around each tag allowed
_CALL: Final = re.compile(r"\s*<tool_call>\s*<function=([^>\n]+)>\s*(.*?)\s*</function>\s*</tool_call>\s*", re.DOTALL)
_PARAMETER: Final = re.compile(r"<parameter=([^>\n]+)>\s*(.*?)\s*</parameter>", re.DOTALL)


def _tool_lines(tools: Sequence[ToolSpec]) -> str:
    return "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": json.loads(t.parameters)})
        for t in tools
    )


def qwen3_5_tools_text(tools: Sequence[ToolSpec]) -> str:
    """The ``# Tools`` section of Qwen3.5's system message (its tags are written as control tokens)."""
    return _TOOLS_HEAD + _tool_lines(tools) + _TOOLS_TAIL


def parse_xml_tool_call(raw_text: str) -> ToolCall | UnparsedToolCall:
    """A Qwen3.5 XML tool call (``raw_text`` is the whole ``<tool_call>...</tool_call>`` block): each parameter's
    value is JSON when it parses, else its text; the arguments are serialized with ``json.dumps``."""
    match = _CALL.fullmatch(raw_text)
    if match is None:
        return UnparsedToolCall(raw_text=raw_text, error="Malformed Qwen3.5 tool call XML")
    name, body = match.group(1).strip(), match.group(2)
    if not name:
        return UnparsedToolCall(raw_text=raw_text, error="Missing function name")
    arguments: dict[str, object] = {}
    position = 0
    for parameter in _PARAMETER.finditer(body):
        if body[position : parameter.start()].strip():
            return UnparsedToolCall(raw_text=raw_text, error="Unexpected non-parameter content inside <function> block")
        key, value_text = parameter.group(1).strip(), parameter.group(2).strip("\n")
        if not key:
            return UnparsedToolCall(raw_text=raw_text, error="Empty parameter name")
        try:
            value: object = json.loads(value_text)
        except json.JSONDecodeError:
            value = value_text
        arguments[key] = value
        position = parameter.end()
    if body[position:].strip():
        return UnparsedToolCall(raw_text=raw_text, error="Unexpected trailing content inside <function> block")
    try:
        return ToolCall(name=name, arguments=json.dumps(arguments))
    except ValidationError as error:
        return UnparsedToolCall(raw_text=raw_text, error=f"Invalid tool call: {error.problem}")


def trim_content(content: str | tuple[ContentPart, ...]) -> str | tuple[ContentPart, ...]:
    """The template's ``content|trim``: leading whitespace off the first visible text, trailing off the last
    (thinking parts are skipped; an image stops the trimming)."""
    if isinstance(content, str):
        return content.strip()
    parts = list(content)
    visible = [index for index, part in enumerate(parts) if not isinstance(part, ThinkingPart)]
    for order, strip in ((visible, str.lstrip), (visible[::-1], str.rstrip)):
        for index in order:
            part = parts[index]
            if not isinstance(part, TextPart):
                break
            text = strip(part.text)
            parts[index] = TextPart(text)
            if text:
                break
    return tuple(parts)


def _find(tokens: list[int], token: int, start: int) -> int:
    try:
        return tokens.index(token, start)
    except ValueError:
        return -1


def _has_visible(content: str | tuple[ContentPart, ...]) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    return any((isinstance(p, TextPart) and p.text.strip()) or isinstance(p, ImagePart) for p in content)


def _reasons(content: str | tuple[ContentPart, ...]) -> bool:
    return isinstance(content, tuple) and any(isinstance(part, ThinkingPart) for part in content)


@attrs.frozen(eq=False)
class Qwen35Renderer(Qwen3VLRenderer):
    """Qwen3.5 / Qwen3.6 with thinking. See the module docstring."""

    _tail_pieces: list[str | int] = attrs.field(init=False, repr=False, factory=list)
    _runs: dict[str, tuple[int, ...]] = attrs.field(init=False, repr=False, factory=dict)

    name: ClassVar[str] = "qwen3_5"
    context_free_roles: ClassVar[frozenset[str]] = frozenset({"system", "user"})  # a tool result reads its neighbours
    keeps_text_after_empty_thinking: ClassVar[bool] = False  # its frame writes "\n\n" after the block, as Qwen3's

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._tail_pieces.extend(split_control(self.tokenizer, _TOOLS_TAIL))
        self._runs.update({text: tuple(self.tokenizer.encode(text)) for text in ("\n", "\n\n")})

    @property
    def has_extension_property(self) -> bool:
        return False

    # -- hooks subclasses change ---------------------------------------------------------------------------

    def _strips_thinking(self, message: Message, ctx: RenderContext) -> bool:
        return self.strip_thinking_from_history and message.role == "assistant" and not ctx.is_last

    def _empty_block_in_header(self, message: Message, ctx: RenderContext) -> bool:
        return ctx.idx > ctx.last_user_index and not _reasons(message.content)

    def _argument_text(self, value: object) -> str:
        """Qwen3.5's template: mappings and lists as JSON, scalars as Python's ``str`` (``True``, ``None``)."""
        return json.dumps(value) if isinstance(value, (dict, list)) else str(value)

    def _thinking_pieces(self, thinking: str) -> tuple[Piece, ...]:
        """A reasoning block as written in the output: ``<think>\\n{thinking}\\n</think>\\n\\n``."""
        ids = self._ids
        return (ids["<think>"], "\n" + thinking + "\n", ids["</think>"], "\n\n")

    def _system_text(self, message: Message) -> str:
        """The text written after the tools section (the system prompt)."""
        return text_of(message)

    def _system_prefix(self) -> str:
        """Text written before the tools section."""
        return ""

    # -- rendering ------------------------------------------------------------------------------------------

    def _system_with_tools(self, message: Message, ctx: RenderContext) -> tuple[Piece, ...] | None:
        if not ctx.tools or ctx.idx != 0 or message.role != "system":
            return None
        system = self._system_text(message)
        tail = ("\n\n" + system).rstrip() if system else ""
        out = PieceList(self._system_prefix(), _TOOLS_HEAD + _tool_lines(ctx.tools)).extend(self._tail_pieces)
        return out.add(tail).to_tuple()

    def _block(self) -> tuple[Piece, ...]:
        """The empty block ``<think>\\n\\n</think>\\n\\n`` (its newlines pre-encoded)."""
        ids, blank = self._ids, self._runs["\n\n"]
        return (ids["<think>"], blank, ids["</think>"], blank)

    def _call_pieces(self, call: ToolCall) -> tuple[Piece, ...]:
        arguments = json.loads(call.arguments) if call.arguments else {}
        body = "".join(
            f"\n<parameter={key}>\n{self._argument_text(value)}\n</parameter>" for key, value in arguments.items()
        )
        ids = self._ids
        return (ids["<tool_call>"], f"\n<function={call.name}>{body}\n</function>\n", ids["</tool_call>"])

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        role = message.role
        content = message.content
        if (
            isinstance(content, str)
            and not message.tool_calls
            and (role == "user" or (role == "system" and not (ctx.tools and ctx.idx == 0)))
        ):
            text = content.strip()  # the common case, written directly
            unit = self._header_units.get((role, ctx.idx > 0)) or self._header(role, ctx)
            return RenderedMessage(unit, (text, ids["<|im_end|>"]) if text else (ids["<|im_end|>"],))
        prev, following = ctx.prev_message, ctx.next_message
        header: tuple[Piece, ...]
        lead: tuple[Piece, ...] = ()
        if role == "tool" and prev is not None and prev.role == "tool":
            header = ("\n",)  # the run's user block is still open
        else:
            header = self._header("user" if role == "tool" else role, ctx)
            if role == "assistant" and self._empty_block_in_header(message, ctx):
                if ctx.is_last and not self.disables_thinking:
                    # the generation prompt ends at "<think>\n": the rest of the block opens the output
                    header = (*header, ids["<think>"], self._runs["\n"])
                    lead = (self._runs["\n"], ids["</think>"], self._runs["\n\n"])
                else:
                    header = (*header, *self._block())
        out = PieceList()
        system = self._system_with_tools(message, ctx)
        content = trim_content(message.content)
        if system is not None:
            out.extend(system)
        else:
            out.extend(self._content_pieces(message, content, ctx))
        if role == "tool":
            out = PieceList(ids["<tool_response>"], "\n").extend(out.to_tuple()).add("\n").add(ids["</tool_response>"])
        if message.tool_calls:
            out.add("\n\n" if _has_visible(content) else "")
            for position, call in enumerate(message.tool_calls):
                out.add("\n" if position else "").extend(self._call_pieces(call))
        if not (role == "tool" and following is not None and following.role == "tool"):
            out.add(ids["<|im_end|>"])
        return RenderedMessage(header=header, output=(*lead, *out.to_tuple()))

    def _content_pieces(
        self, message: Message, content: str | tuple[ContentPart, ...], ctx: RenderContext
    ) -> tuple[Piece, ...]:
        if isinstance(content, str):
            return (content,) if content else ()
        ids = self._ids
        strip = self._strips_thinking(message, ctx)
        out = PieceList()
        for part in content:
            if isinstance(part, TextPart):
                out.add(part.text)
            elif isinstance(part, ThinkingPart):
                if not strip:
                    out.extend(self._thinking_pieces(part.thinking))
            else:
                out.add(ids["<|vision_start|>"]).add(part).add(ids["<|vision_end|>"])
        return out.to_tuple()

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        header = self._header(role, ctx)
        if self.disables_thinking:
            return (*header, *self._block())
        return (*header, self._ids["<think>"], self._runs["\n"])

    def render_units(
        self, messages: tuple[Message, ...], last_user_index: int, tools: tuple[ToolSpec, ...]
    ) -> list[tuple[Piece, ...]] | None:
        """:meth:`render_message`'s pieces for plain-text chats (string content, no tools, tool calls or tool
        results) without a context per message; ``None`` otherwise, and for subclasses that change the hooks."""
        cls = type(self)
        if (
            tools
            or cls.render_message is not Qwen35Renderer.render_message
            or cls._empty_block_in_header is not Qwen35Renderer._empty_block_in_header
            or cls._system_with_tools is not Qwen35Renderer._system_with_tools
        ):
            return None
        ids = self._ids
        headers, later_headers = self._role_units
        end = ids["<|im_end|>"]
        last = len(messages) - 1
        block = self._block()
        open_block = (ids["<think>"], self._runs["\n"])
        lead = (self._runs["\n"], ids["</think>"], self._runs["\n\n"])
        units: list[tuple[Piece, ...]] = []
        append = units.append
        for index, message in enumerate(messages):
            content = message.content
            role = message.role
            if type(content) is not str or message.tool_calls or role == "tool":
                return None
            header = headers.get(role)
            if header is None:
                return None
            headers = later_headers
            text = content.strip()
            if role == "assistant" and index > last_user_index:
                if index == last and not self.disables_thinking:
                    append((*header, *open_block))
                    append((*lead, text, end) if text else (*lead, end))
                    continue
                header = (*header, *block)
            append(header)
            append((text, end) if text else (end,))
        return units

    # -- parsing --------------------------------------------------------------------------------------------

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        """Parse after the ``<think>\\n`` prefill: a response that closes a thinking block it did not open
        started inside one (the prefill is restored, as in the cookbook)."""
        ids = self._ids
        prefill = [ids["<think>"], *self._runs["\n"]]
        opened = tokens[: len(prefill)] == prefill
        if not opened and ids["</think>"] in tokens:
            tokens = prefill + tokens
        body, termination = split_at_stop_token(self, tokens, ids["<|im_end|>"])
        if termination is Termination.MALFORMED:
            return ParsedResponse(Message(role="assistant", content=self.tokenizer.decode(body)), termination)
        return ParsedResponse(self._parse_body(body), termination)

    def _parse_body(self, tokens: list[int]) -> Message:
        ids = self._ids
        decode = self.tokenizer.decode
        think, end_think, call, end_call = ids["<think>"], ids["</think>"], ids["<tool_call>"], ids["</tool_call>"]
        items: list[tuple[str, str | ToolCall | UnparsedToolCall]] = []
        pending: list[int] = []
        index, count = 0, len(tokens)
        while index < count:
            token = tokens[index]
            closer = end_think if token == think else end_call if token == call else -1
            end = _find(tokens, closer, index + 1) if closer >= 0 else -1
            if end < 0:
                pending.append(token)
                index += 1
                continue
            if pending:
                items.append(("text", decode(pending)))
                pending = []
            if token == think:
                items.append(("think", decode(tokens[index + 1 : end])))
            else:
                raw = decode(tokens[index : end + 1])
                parsed = tool_call_from_json(decode(tokens[index + 1 : end]), raw)
                if isinstance(parsed, UnparsedToolCall) and "<function=" in raw:
                    parsed = parse_xml_tool_call(raw)
                items.append(("call", parsed))
            index = end + 1
        if pending:
            items.append(("text", decode(pending)))
        return self._message(items, tokens)

    def _message(self, items: list[tuple[str, str | ToolCall | UnparsedToolCall]], tokens: list[int]) -> Message:
        parts: list[ContentPart] = []
        calls: list[ToolCall] = []
        unparsed: list[UnparsedToolCall] = []
        after_block = False
        seen_thinking = False
        trimming = True  # the cookbook trims the thinking blocks before the first text that follows one
        for position, (kind, value) in enumerate(items):
            if isinstance(value, ToolCall):
                calls.append(value)
            elif isinstance(value, UnparsedToolCall):
                unparsed.append(value)
            elif kind == "think":
                thinking = value.strip("\n")
                if thinking:
                    parts.append(ThinkingPart(thinking.strip() if trimming else thinking))
                    seen_thinking = True
                after_block = True
            else:
                trimming = trimming and not seen_thinking
                text = value.lstrip("\n") if after_block else value
                after_block = False
                if position + 1 < len(items) and items[position + 1][0] == "call":
                    text = text.rstrip("\n")  # the separator written before a tool call
                parts.append(TextPart(text))
        ids = self._ids
        if tokens.count(ids["<tool_call>"]) > tokens.count(ids["</tool_call>"]):
            start = len(tokens) - 1 - tokens[::-1].index(ids["<tool_call>"])
            unparsed.append(
                UnparsedToolCall(
                    raw_text=self.tokenizer.decode(tokens[start:]),
                    error=f"{UNTERMINATED_TOOL_BLOCK}: '<tool_call>' opened without a matching '</tool_call>'",
                )
            )
        return assistant_message(parts, calls, unparsed)


@attrs.frozen(eq=False)
class Qwen35PreserveThinkingRenderer(Qwen35Renderer):
    """Qwen3.5 keeping earlier reasoning in history (still without the extension property: a turn that did
    not reason is sampled after ``<think>\\n`` but written with the closed empty block)."""

    strip_thinking_from_history: bool = False
    name: ClassVar[str] = "qwen3_5_preserve_thinking"


@attrs.frozen(eq=False)
class Qwen35DisableThinkingRenderer(Qwen35Renderer):
    """Qwen3.5 with thinking off: the generation prompt ends with ``<think>\\n\\n</think>\\n\\n`` (a trained turn
    that reasons is an error)."""

    name: ClassVar[str] = "qwen3_5_disable_thinking"
    disables_thinking: ClassVar[bool] = True
