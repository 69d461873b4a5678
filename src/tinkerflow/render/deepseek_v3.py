"""DeepSeek V3 renderers (the V3.1 chat format): ``deepseekv3`` / ``deepseekv3_disable_thinking`` (non-thinking,
the default) and ``deepseekv3_thinking``::

    <｜begin▁of▁sentence｜>{system}<｜User｜>{text}<｜Assistant｜></think>{text}<｜end▁of▁sentence｜>
    ... <｜Assistant｜></think>{text}<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{arguments}
        <｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁output▁begin｜>{result}<｜tool▁output▁end｜>{text}...

A system message is written without a role marker and only first. In thinking mode the generation prompt ends
with ``<think>`` (not after a tool result), the produced turn is ``{thinking}</think>{text}``, and earlier turns
lose their thinking (``</think>`` joins their header) unless ``strip_thinking_from_history=False``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import ClassVar, Final

import attrs

from tinkerflow.chat import Message, Role, TextPart, ThinkingPart, ToolCall, ToolSpec, UnparsedToolCall
from tinkerflow.render._parsing import UNTERMINATED_TOOL_BLOCK, assistant_message
from tinkerflow.render._segments import Segment, blocks, find, segments, spell
from tinkerflow.render.control import split_control
from tinkerflow.render.family import PieceList, control_ids, parse_at_stop_token, text_of
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, StopSequences
from tinkerflow.render.renderer import Renderer

__all__ = ["DeepSeekV3Renderer", "DeepSeekV3ThinkingRenderer", "deepseek_tools_text"]

_BOS: Final = "<｜begin▁of▁sentence｜>"
_EOS: Final = "<｜end▁of▁sentence｜>"
_USER: Final = "<｜User｜>"
_ASSISTANT: Final = "<｜Assistant｜>"
_THINK: Final = "<think>"
_END_THINK: Final = "</think>"
_CALLS: Final = "<｜tool▁calls▁begin｜>"
_END_CALLS: Final = "<｜tool▁calls▁end｜>"
_CALL: Final = "<｜tool▁call▁begin｜>"
_END_CALL: Final = "<｜tool▁call▁end｜>"
_SEP: Final = "<｜tool▁sep｜>"
_OUTPUT: Final = "<｜tool▁output▁begin｜>"
_END_OUTPUT: Final = "<｜tool▁output▁end｜>"
_CONTROL: Final = (
    _BOS,
    _EOS,
    _USER,
    _ASSISTANT,
    _THINK,
    _END_THINK,
    _CALLS,
    _END_CALLS,
    _CALL,
    _END_CALL,
    _SEP,
    _OUTPUT,
    _END_OUTPUT,
)
_NAME: Final[re.Pattern[str]] = re.compile(r"\w+")


_TOOLS_FORMAT: Final = f"{_CALLS}{_CALL}tool_call_name{_SEP}tool_call_arguments{_END_CALL}{_END_CALLS}"
_TOOLS_TAIL: Final = (
    "\n\nWhere:\n"
    "- `tool_call_name` must be an exact match to one of the available tools\n"
    "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n"
    "- For multiple tool calls, chain them directly without separators or spaces"
)


def _tools_head(tools: Sequence[ToolSpec]) -> str:
    blocks = "\n".join(
        f"### {tool.name}\nDescription: {tool.description}\n\nParameters: {json.dumps(json.loads(tool.parameters))}"
        for tool in tools
    )
    return (
        "\n\n## Tools\nYou have access to the following tools:\n\n"
        f"{blocks}\n\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n"
    )


def deepseek_tools_text(tools: Sequence[ToolSpec]) -> str:
    """The ``## Tools`` section DeepSeek V3.1 appends to the system prompt (its markers are control tokens)."""
    return _tools_head(tools) + _TOOLS_FORMAT + _TOOLS_TAIL


@attrs.frozen(eq=False)
class DeepSeekV3Renderer(Renderer):
    """DeepSeek V3 in non-thinking mode: ``</think>`` closes every assistant header (thinking parts are dropped).

    ``system_role_as_user=True`` writes system messages after the first as user turns (otherwise they are an
    error).
    """

    system_role_as_user: bool = False
    strip_thinking_from_history: bool = True
    _ids: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)
    _tools_format: list[Piece] = attrs.field(init=False, repr=False, factory=list)

    name: ClassVar[str] = "deepseekv3"
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})
    supports_tools: ClassVar[bool] = True
    supports_thinking: ClassVar[bool] = True
    thinking_mode: ClassVar[bool] = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._ids.update(control_ids(self.tokenizer, _CONTROL))
        self._tools_format.extend(split_control(self.tokenizer, _TOOLS_FORMAT))

    @property
    def has_extension_property(self) -> bool:
        return True

    def bos_tokens(self) -> tuple[int, ...]:
        return (self._ids[_BOS],)

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        for index, message in enumerate(messages):
            if message.role == "system" and index > 0 and not self.system_role_as_user:
                raise self._error(
                    f"messages[{index}].role",
                    "DeepSeek's format has a system prompt only at the start of the conversation.",
                    "merge it into the first system message, or create the renderer with system_role_as_user=True.",
                )

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        if tools and not (messages and messages[0].role == "system"):
            return (Message(role="system", content=""), *messages)
        return messages

    def _assistant_output(self, message: Message, ctx: RenderContext, *, keep_thinking: bool) -> PieceList:
        ids = self._ids
        out = PieceList()
        strip = self.strip_thinking_from_history and not message.tool_calls and not ctx.is_last
        if isinstance(message.content, str):
            out.add(message.content)
        else:
            for part in message.content:
                if isinstance(part, ThinkingPart):
                    if keep_thinking and not strip:
                        out.add(ids[_THINK]).add(part.thinking).add(ids[_END_THINK])
                elif isinstance(part, TextPart):
                    out.add(part.text)
        if message.tool_calls:
            out.add(ids[_CALLS])
            for call in message.tool_calls:
                out.add(ids[_CALL]).add(call.name).add(ids[_SEP]).add(call.arguments).add(ids[_END_CALL])
            out.add(ids[_END_CALLS])
        out.add(ids[_EOS])
        return out

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        role = message.role
        if role == "system":
            header: tuple[Piece, ...] = () if ctx.idx == 0 else (ids[_USER],)
            output = PieceList(text_of(message))
            if ctx.tools and ctx.idx == 0:
                output.add(_tools_head(ctx.tools)).extend(self._tools_format).add(_TOOLS_TAIL)
            return RenderedMessage(header=header, output=output.to_tuple())
        if role == "user":
            return RenderedMessage(header=(ids[_USER],), output=(text_of(message),))
        if role == "tool":
            return RenderedMessage(header=(ids[_OUTPUT],), output=(text_of(message), ids[_END_OUTPUT]))
        follows_tool = ctx.prev_message is not None and ctx.prev_message.role == "tool"
        if follows_tool:
            return RenderedMessage(
                header=(), output=self._assistant_output(message, ctx, keep_thinking=True).to_tuple()
            )
        output = self._assistant_output(message, ctx, keep_thinking=False)
        return RenderedMessage(header=(ids[_ASSISTANT], ids[_END_THINK]), output=output.to_tuple())

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        ids = self._ids
        if role == "assistant":
            follows_tool = ctx.prev_message is not None and ctx.prev_message.role == "tool"
            return () if follows_tool else (ids[_ASSISTANT], ids[_END_THINK])
        return self.render_message(Message(role=role), ctx).header

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=(self._ids[_EOS],))

    # -- parsing --------------------------------------------------------------------------------------------

    def _normalize(self, tokens: list[int]) -> list[int]:
        return tokens

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        return parse_at_stop_token(self, self._normalize(tokens), self._ids[_EOS], self._parse_body)

    def _parse_body(self, tokens: list[int]) -> Message:
        ids = self._ids
        names = {ids[text]: text for text in _CONTROL}
        items = segments(tokens, names, self.tokenizer.decode)
        calls: list[ToolCall] = []
        unparsed: list[UnparsedToolCall] = []
        start = find(items, ids[_CALLS])
        end = find(items, ids[_END_CALLS], start + 1) if start >= 0 else -1
        if end >= 0:
            cursor = start + 1
            while True:
                opening = find(items, ids[_CALL], cursor)
                closing = find(items, ids[_END_CALL], opening + 1) if 0 <= opening < end else -1
                if closing < 0 or closing > end:
                    break
                call = self._call(items[opening : closing + 1], names)
                if isinstance(call, ToolCall):
                    calls.append(call)
                elif call is not None:
                    unparsed.append(call)
                cursor = closing + 1
        for open_text, close_text in ((_CALLS, _END_CALLS), (_CALL, _END_CALL)):
            open_id, close_id = ids[open_text], ids[close_text]
            opened = [i for i, item in enumerate(items) if type(item) is int and item == open_id]
            closed = sum(1 for item in items if type(item) is int and item == close_id)
            if len(opened) > closed:
                unparsed.append(
                    UnparsedToolCall(
                        raw_text=spell(items[opened[-1] :], names),
                        error=f"{UNTERMINATED_TOOL_BLOCK}: '{open_text}' opened without a matching '{close_text}'",
                    )
                )
                break
        if calls or unparsed:
            items = self._without_call_sections(items)
        return self._content(items, names, strip=bool(calls or unparsed), calls=calls, unparsed=unparsed)

    def _call(self, items: list[Segment], names: dict[int, str]) -> ToolCall | UnparsedToolCall | None:
        ids = self._ids
        raw = spell(items, names)
        if len(items) < 4 or not isinstance(items[1], str) or items[2] != ids[_SEP] or type(items[2]) is not int:
            return None
        name = items[1]
        if not _NAME.fullmatch(name):
            return None
        arguments = spell(items[3:-1], names).strip()
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as error:
            return UnparsedToolCall(raw_text=raw, error=f"Invalid JSON: {error}")
        if not isinstance(parsed, dict):
            return UnparsedToolCall(raw_text=raw, error="Tool call arguments are not a JSON object")
        return ToolCall(name=name, arguments=arguments)

    def _without_call_sections(self, items: list[Segment]) -> list[Segment]:
        result: list[Segment] = []
        for item in blocks(items, self._ids[_CALLS], self._ids[_END_CALLS]):
            if not isinstance(item, list):
                result.append(item)
            elif result and isinstance(result[-1], str):
                result[-1] = result[-1].rstrip()
        return result

    def _content(
        self,
        items: list[Segment],
        names: dict[int, str],
        *,
        strip: bool,
        calls: list[ToolCall],
        unparsed: list[UnparsedToolCall],
    ) -> Message:
        ids = self._ids
        if strip:
            items = [item for item in items if item != ""]
            if items and isinstance(items[0], str):
                items[0] = items[0].lstrip()
            if items and isinstance(items[-1], str):
                items[-1] = items[-1].rstrip()
        parts: list[TextPart | ThinkingPart] = []
        pending: list[Segment] = []
        for item in blocks(items, ids[_THINK], ids[_END_THINK]):
            if not isinstance(item, list):
                pending.append(item)
                continue
            if pending:
                parts.append(TextPart(spell(pending, names)))
                pending = []
            thinking = spell(item, names)
            if thinking:
                parts.append(ThinkingPart(thinking))
        if pending:
            parts.append(TextPart(spell(pending, names)))
        return assistant_message(parts, calls, unparsed)


@attrs.frozen(eq=False)
class DeepSeekV3ThinkingRenderer(DeepSeekV3Renderer):
    """DeepSeek V3 in thinking mode. See the module docstring."""

    name: ClassVar[str] = "deepseekv3_thinking"
    thinking_mode: ClassVar[bool] = True

    @property
    def has_extension_property(self) -> bool:
        return not self.strip_thinking_from_history

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        if message.role != "assistant":
            return super().render_message(message, ctx)
        follows_tool = ctx.prev_message is not None and ctx.prev_message.role == "tool"
        output = self._assistant_output(message, ctx, keep_thinking=True)
        if follows_tool:
            return RenderedMessage(header=(), output=output.to_tuple())
        if self.strip_thinking_from_history and not ctx.is_last:
            return RenderedMessage(header=(ids[_ASSISTANT], ids[_END_THINK]), output=output.to_tuple())
        has_content = bool(message.content)
        has_thinking = isinstance(message.content, tuple) and any(
            isinstance(part, ThinkingPart) for part in message.content
        )
        if ctx.is_last and has_content and not has_thinking:
            output = PieceList(ids[_THINK], ids[_END_THINK]).extend(output.to_tuple())
        return RenderedMessage(header=(ids[_ASSISTANT],), output=output.to_tuple())

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        if role == "assistant":
            follows_tool = ctx.prev_message is not None and ctx.prev_message.role == "tool"
            return () if follows_tool else (self._ids[_ASSISTANT],)
        return super().generation_suffix(role, ctx)

    def generation_prefill(self, messages: tuple[Message, ...], prefill: str | None) -> str | None:
        if messages and messages[-1].role == "tool":
            return prefill
        return _THINK + (prefill or "")

    def _normalize(self, tokens: list[int]) -> list[int]:
        think, end_think = self._ids[_THINK], self._ids[_END_THINK]
        if (not tokens or tokens[0] != think) and end_think in tokens:
            return [think, *tokens]
        return tokens
