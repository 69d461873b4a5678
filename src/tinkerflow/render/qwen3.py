"""Qwen3 renderers: ``qwen3`` (thinking), ``qwen3_disable_thinking`` and ``qwen3_instruct`` (2507 instruct models,
no thinking blocks). The vision-language variants derive from :class:`Qwen3Renderer` in
:mod:`tinkerflow.render.qwen3_vl`.

Layout (token for token as tinker-cookbook 0.6.1, which matches Qwen3's official template on the turn it
trains)::

    <|im_start|>system\\n{system}[\\n\\n# Tools ...]<|im_end|>
    <|im_start|>user\\n{text}<|im_end|>
    <|im_start|>assistant\\n<think>\\n{thinking}\\n</think>\\n\\n{text}[\\n<tool_call>\\n{json}\\n</tool_call>]<|im_end|>
    <|im_start|>user\\n<tool_response>\\n{result}\\n</tool_response><|im_end|>

(each header after the first starts with ``\\n``). Thinking is framed like that on the last assistant message
after a user message; earlier assistant messages lose their thinking (``strip_thinking_from_history``, the
default and the official template's behaviour), so the renderer lacks the extension property unless
``strip_thinking_from_history=False``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar, Final

import attrs

from tinkerflow.chat import ImagePart, Message, Role, TextPart, ThinkingPart, ToolCall, ToolSpec, UnparsedToolCall
from tinkerflow.render._parsing import assistant_message, tool_call_from_json
from tinkerflow.render.control import split_control
from tinkerflow.render.family import PieceList, chatml_header, chatml_headers, control_ids, parse_at_stop_token, text_of
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, StopSequences
from tinkerflow.render.renderer import Renderer

__all__ = ["Qwen3DisableThinkingRenderer", "Qwen3InstructRenderer", "Qwen3Renderer", "qwen3_tools_text"]

_CONTROL: Final[tuple[str, ...]] = (
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<|vision_start|>",
    "<|vision_end|>",
)


_TOOLS_HEAD: Final = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
_TOOLS_MIDDLE: Final = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
)
_TOOLS_TAIL: Final = (
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def _tool_lines(tools: Sequence[ToolSpec]) -> str:
    return "\n".join(
        json.dumps(
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": json.loads(tool.parameters),
                },
            },
            separators=(", ", ": "),
        )
        for tool in tools
    )


def qwen3_tools_text(tools: Sequence[ToolSpec]) -> str:
    """The ``# Tools`` section Qwen3 appends to the system message (its tags are written as control tokens)."""
    return _TOOLS_HEAD + _tool_lines(tools) + _TOOLS_MIDDLE + _TOOLS_TAIL


def _find(tokens: list[int], token: int, start: int) -> int:
    try:
        return tokens.index(token, start)
    except ValueError:
        return -1


@attrs.frozen(eq=False)
class Qwen3Renderer(Renderer):
    """Qwen3 with thinking (the hybrid models' default). See the module docstring."""

    strip_thinking_from_history: bool = True
    _ids: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)
    _headers: dict[tuple[str, bool], tuple[int, ...]] = attrs.field(init=False, repr=False, factory=dict)
    _tools_tail: list[Piece] = attrs.field(init=False, repr=False, factory=list)
    # per-message constants of the fast path: header units (the 1-tuples ``_header`` returns) and the encoded
    # ``"\n\n"`` inside an empty thinking frame (the same ids as the text, without a tokenizer call per message)
    _header_units: dict[tuple[str, bool], tuple[Piece, ...]] = attrs.field(init=False, repr=False, factory=dict)
    _blank: list[tuple[int, ...]] = attrs.field(init=False, repr=False, factory=list)
    # the header units by role (a tool result in a user turn), for the first message and for a later one
    _role_units: list[dict[str, tuple[Piece, ...]]] = attrs.field(init=False, repr=False, factory=list)

    name: ClassVar[str] = "qwen3"
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})
    context_free_roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "tool"})
    supports_tools: ClassVar[bool] = True
    supports_thinking: ClassVar[bool] = True
    frames_thinking: ClassVar[bool] = True
    #: Parsing keeps the text after an empty ``<think></think>`` as written (Qwen3-VL, as the cookbook parses
    #: it); ``False`` drops the newlines after any block, as the frame writes them.
    keeps_text_after_empty_thinking: ClassVar[bool] = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._ids.update(control_ids(self.tokenizer, _CONTROL))
        self._headers.update(chatml_headers(self.tokenizer, self._ids["<|im_start|>"], ("system", "user", "assistant")))
        self._header_units.update({key: (header,) for key, header in self._headers.items()})
        for later in (False, True):
            units = {role: self._header_units[role, later] for role in ("system", "user", "assistant")}
            self._role_units.append({**units, "tool": units["user"]})
        self._blank.append(tuple(self.tokenizer.encode("\n\n")))
        self._tools_tail.extend(split_control(self.tokenizer, _TOOLS_TAIL))

    @property
    def has_extension_property(self) -> bool:
        return not self.strip_thinking_from_history

    def _header(self, role: str, ctx: RenderContext) -> tuple[Piece, ...]:
        later = ctx.idx > 0
        return (
            self._headers.get((role, later))
            or chatml_header(self.tokenizer, self._ids["<|im_start|>"], role, later=later),
        )

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        if tools and not (messages and messages[0].role == "system"):
            return (Message(role="system", content=""), *messages)
        return messages

    def _system_with_tools(self, message: Message, ctx: RenderContext) -> tuple[Piece, ...] | None:
        """The output of the first system message when tools are declared (its text, then the tools section)."""
        if not ctx.tools or ctx.idx != 0 or message.role != "system":
            return None
        text = text_of(message)
        out = PieceList(text + "\n\n" if text else "", _TOOLS_HEAD + _tool_lines(ctx.tools) + _TOOLS_MIDDLE)
        return out.extend(self._tools_tail).add(self._ids["<|im_end|>"]).to_tuple()

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        first = messages[0] if tools and messages else None
        if first is not None and first.role == "system" and isinstance(first.content, tuple):
            for part_index, part in enumerate(first.content):
                if isinstance(part, ImagePart):
                    raise self._error(
                        f"messages[0].content[{part_index}]",
                        "an image in the system message that tools are appended to.",
                        "move the image to a user message.",
                    )

    def _frames(self, message: Message, ctx: RenderContext) -> bool:
        """Whether the message is framed as the produced turn (``<think>\\n...\\n</think>\\n\\n``)."""
        if not self.frames_thinking or message.role != "assistant" or ctx.last_user_index < 0:
            return False
        return ctx.is_last or not self.strip_thinking_from_history

    def _empty_frame(self) -> tuple[Piece, ...]:
        """The empty thinking block: ``<think>\\n\\n</think>\\n\\n``."""
        ids = self._ids
        return (ids["<think>"], "\n\n", ids["</think>"], "\n\n")

    def _tool_call_pieces(self, call: ToolCall) -> tuple[Piece, ...]:
        """``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``, the arguments as given."""
        payload = '{"name": ' + json.dumps(call.name) + ', "arguments": ' + call.arguments + "}"
        return (self._ids["<tool_call>"], "\n" + payload + "\n", self._ids["</tool_call>"])

    def _plain_output(self, role: str, content: str, framed: bool) -> tuple[Piece, ...]:
        """The output of a plain-text message without tool calls (``framed``: the produced turn's empty thinking
        block first; a tool result wrapped in its tags). The fast path of :meth:`render_units` and
        :meth:`render_message`: the same tokens as the general path, with the frame's ``\\n\\n`` pre-encoded."""
        ids = self._ids
        end = ids["<|im_end|>"]
        if role == "assistant" and framed:
            return (ids["<think>"], self._blank[0], ids["</think>"], "\n\n" + content.lstrip("\n"), end)
        if role == "tool":
            return (ids["<tool_response>"], "\n" + content + "\n", ids["</tool_response>"], end)
        return (content, end) if content else (end,)

    def render_units(
        self, messages: tuple[Message, ...], last_user_index: int, tools: tuple[ToolSpec, ...]
    ) -> list[tuple[Piece, ...]] | None:
        """Header and output of every message, as :meth:`render_message`'s fast path writes them; ``None``
        unless every message is plain text without tool calls and no tools are declared."""
        if tools or type(self).render_message is not Qwen3Renderer.render_message:
            return None  # tools, or a subclass that writes messages its own way (qwen3_vl)
        plain_output = self._plain_output
        headers, later_headers = self._role_units
        end = self._ids["<|im_end|>"]
        end_only = (end,)
        framing = self.frames_thinking and last_user_index >= 0
        frame_all = framing and not self.strip_thinking_from_history
        last = len(messages) - 1
        units: list[tuple[Piece, ...]] = []
        for index, message in enumerate(messages):
            content = message.content
            if type(content) is not str or message.tool_calls:
                return None
            role = message.role
            header = headers.get(role)
            if header is None:
                return None
            headers = later_headers
            if role == "user" or role == "system":  # _plain_output's last case, inline (most messages)
                units += (header, (content, end) if content else end_only)
            else:
                units += (header, plain_output(role, content, frame_all or (framing and index == last)))
        return units

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        role = "user" if message.role == "tool" else message.role
        content = message.content
        if type(content) is str and not message.tool_calls and not (ctx.tools and ctx.idx == 0 and role == "system"):
            header = self._header_units.get((role, ctx.idx > 0)) or self._header(role, ctx)
            return RenderedMessage(header, self._plain_output(message.role, content, self._frames(message, ctx)))
        system = self._system_with_tools(message, ctx)
        if system is not None:
            return RenderedMessage(header=self._header(role, ctx), output=system)
        out, has_text = self._content(message, ctx)
        ids = self._ids
        if message.role == "tool":
            out = PieceList(ids["<tool_response>"], "\n").extend(out.to_tuple()).add("\n").add(ids["</tool_response>"])
        for position, call in enumerate(message.tool_calls):
            if position > 0 or has_text:
                out.add("\n")
            out.extend(self._tool_call_pieces(call))
        out.add(ids["<|im_end|>"])
        return RenderedMessage(header=self._header(role, ctx), output=out.to_tuple())

    def _content(self, message: Message, ctx: RenderContext) -> tuple[PieceList, bool]:
        """The pieces of a message's content (thinking framed or kept as the position asks), and whether it
        wrote text (a tool call after text is separated by a newline)."""
        ids = self._ids
        frames = self._frames(message, ctx)
        content = message.content
        out = PieceList()
        if isinstance(content, str):
            if frames:
                out.extend(self._empty_frame())
            out.add(content.lstrip("\n") if frames else content)
            return out, bool(content)
        has_text = False
        has_reasoning = any(isinstance(part, ThinkingPart) for part in content)
        strip = self.strip_thinking_from_history and message.role == "assistant" and not ctx.is_last
        if frames and not has_reasoning:
            out.extend(self._empty_frame())
        after_block = frames and not has_reasoning
        for part in content:
            if isinstance(part, ThinkingPart):
                if strip:
                    continue
                if frames:
                    out.add(ids["<think>"]).add("\n" + part.thinking.strip("\n") + "\n")
                    out.add(ids["</think>"]).add("\n\n")
                else:
                    out.add(ids["<think>"]).add(part.thinking).add(ids["</think>"])
                has_text = True
                after_block = frames
            elif isinstance(part, TextPart):
                text = part.text.lstrip("\n") if after_block else part.text
                if frames and not has_reasoning:
                    # the template strips the content's leading newlines only before any text is written
                    has_text = has_text or bool(part.text)
                    after_block = after_block and not text
                else:
                    has_text = has_text or bool(text)
                    after_block = False
                out.add(text)
        return out, has_text

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        return self._header("user" if role == "tool" else role, ctx)

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=(self._ids["<|im_end|>"],))

    # -- parsing --------------------------------------------------------------------------------------------

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        return parse_at_stop_token(self, tokens, self._ids["<|im_end|>"], self._parse_body)

    def _parse_body(self, tokens: list[int]) -> Message:
        """Split at the thinking and tool-call control tokens (never at look-alike text)."""
        ids = self._ids
        decode = self.tokenizer.decode
        think, end_think = ids["<think>"], ids["</think>"]
        call, end_call = ids["<tool_call>"], ids["</tool_call>"]
        # items: ("text", str) | ("think", str) | ("call", ToolCall | UnparsedToolCall)
        items: list[tuple[str, str | ToolCall | UnparsedToolCall]] = []
        pending: list[int] = []
        index = 0
        count = len(tokens)
        while index < count:
            token = tokens[index]
            closer = end_think if token == think else end_call if token == call else None
            end = _find(tokens, closer, index + 1) if closer is not None else -1
            if end < 0:
                pending.append(token)
                index += 1
                continue
            if pending:
                items.append(("text", decode(pending)))
                pending = []
            inner = decode(tokens[index + 1 : end])
            if token == think:
                items.append(("think", inner))
            else:
                raw = decode(tokens[index : end + 1])
                items.append(("call", tool_call_from_json(inner, raw)))
            index = end + 1
        if pending:
            items.append(("text", decode(pending)))
        return self._message_from_items(items, tokens)

    def _message_from_items(
        self, items: list[tuple[str, str | ToolCall | UnparsedToolCall]], tokens: list[int]
    ) -> Message:
        parts: list[TextPart | ThinkingPart] = []
        calls: list[ToolCall] = []
        unparsed: list[UnparsedToolCall] = []
        after_block = False
        for position, (kind, value) in enumerate(items):
            if kind == "call":
                if isinstance(value, ToolCall):
                    calls.append(value)
                elif isinstance(value, UnparsedToolCall):
                    unparsed.append(value)
                continue
            assert isinstance(value, str)
            if kind == "think":
                thinking = value.strip("\n") if self.frames_thinking else value
                if thinking:
                    parts.append(ThinkingPart(thinking))
                after_block = self.frames_thinking and not (self.keeps_text_after_empty_thinking and not value)
                continue
            text = value.lstrip("\n") if after_block else value
            after_block = False
            if position + 1 < len(items) and items[position + 1][0] == "call" and text.endswith("\n"):
                text = text[:-1]  # the separator the renderer writes before each tool call
            if text:
                parts.append(TextPart(text))
        ids = self._ids
        if tokens.count(ids["<tool_call>"]) > tokens.count(ids["</tool_call>"]):
            start = len(tokens) - 1 - tokens[::-1].index(ids["<tool_call>"])
            unparsed.append(
                UnparsedToolCall(
                    raw_text=self.tokenizer.decode(tokens[start:]),
                    error="unterminated tool block: '<tool_call>' opened without a matching '</tool_call>'",
                )
            )
        return assistant_message(parts, calls, unparsed)


@attrs.frozen(eq=False)
class Qwen3DisableThinkingRenderer(Qwen3Renderer):
    """Qwen3 hybrid models with thinking off: the generation prompt ends with an empty, closed thinking block
    (``<think>\\n\\n</think>\\n\\n``), which the trained turn must also start with (it cannot reason)."""

    name: ClassVar[str] = "qwen3_disable_thinking"
    disables_thinking: ClassVar[bool] = True

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        if messages:
            last = messages[-1]
            has_content = bool(last.content)
            if last.role == "assistant" and has_content and not any(m.role == "user" for m in messages):
                raise self._error(
                    f"messages[{len(messages) - 1}].role",
                    "the conversation has no user message, so Qwen3's template writes no empty thinking block on "
                    "the produced turn, but the generation prompt always opens one.",
                    "add a user message, or use the qwen3 renderer.",
                )

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        return PieceList(*super().generation_suffix(role, ctx)).extend(self._empty_frame()).to_tuple()


@attrs.frozen(eq=False)
class Qwen3InstructRenderer(Qwen3Renderer):
    """Qwen3 instruct (2507) models: no thinking frame on the produced turn; thinking parts, if given, render
    as ``<think>...</think>``."""

    name: ClassVar[str] = "qwen3_instruct"
    frames_thinking: ClassVar[bool] = False

    @property
    def has_extension_property(self) -> bool:
        return True
