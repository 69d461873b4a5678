"""GLM-5.3 renderers (tinker-cookbook 0.6.1's ``glm5_3_max_reasoning``, ``glm5_3_high_reasoning``,
``glm5_3_low_reasoning``).

Layout (token for token as the cookbook's ``Glm5_3Renderer``; no newlines between messages)::

    [gMASK]<sop><|system|>Reasoning Effort: Max                        (written once, like a BOS)
    <|system|>\\n# Tools ... <tools>\\n{json per tool}\\n</tools> ...    (when tools are declared)
    <|system|>{system}<|user|>{text}
    <|assistant|><think>{reasoning}</think>{text|trim}[<tool_call>f<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>]
    <|observation|><tool_response>{r1}</tool_response><tool_response>{r2}</tool_response><|user|>...

* There is no end-of-turn token: the next role token ends an assistant turn (``<|observation|>`` after tool
  calls, ``<|user|>`` otherwise, the tokens sampling stops at, with ``<|endoftext|>``). The assistant message owns
  that token (it is trained with the message, and the next message's header drops it); the last assistant message
  gets it as its stop overlap.
* Every assistant message opens ``<think>`` (empty ``<think></think>`` without reasoning); the ``<think>`` is in
  the header (the generation prompt ends with ``<|assistant|><think>``). Reasoning is kept in history unless
  ``strip_thinking_from_history=True`` (then messages up to the last user message get the empty block). Thinking
  cannot be disabled; the effort is written in the first system segment.
* Tool-call arguments: strings raw, other values as JSON. Parsing reads a value as JSON when it parses (lossy,
  as in the cookbook). A run of tool results is sorted into the order of the calls when the ids allow it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import ClassVar, Final

import attrs

from tinkerflow.chat import Message, Role, TextPart, ThinkingPart, ToolCall, ToolSpec, UnparsedToolCall
from tinkerflow.errors import ValidationError
from tinkerflow.render._parsing import assistant_message, tool_call_from_json
from tinkerflow.render.control import split_control
from tinkerflow.render.family import PieceList, control_ids, text_of
from tinkerflow.render.records import (
    ParsedResponse,
    Piece,
    RenderContext,
    RenderedMessage,
    StopSequences,
    Termination,
)
from tinkerflow.render.renderer import Renderer

__all__ = [
    "Glm53HighReasoningRenderer",
    "Glm53LowReasoningRenderer",
    "Glm53Renderer",
    "glm5_3_tools_text",
    "parse_glm_tool_call",
]

_CONTROL: Final = (
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|endoftext|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
)

_TOOLS_HEAD: Final = (
    "\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
_TOOLS_TAIL: Final = (
    "</tools>\n\nFor each function call, output the function name and arguments within the following XML format:\n"
    "<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value>"
    "<arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>...</tool_call>"
)

_CALL: Final = re.compile(r"\s*<tool_call>\s*([\w\-\.]+)\s*(.*?)\s*</tool_call>\s*", re.DOTALL)
_PAIR: Final = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


def _find(tokens: list[int], token: int, start: int) -> int:
    try:
        return tokens.index(token, start)
    except ValueError:
        return -1


def _declaration(tool: ToolSpec) -> str:
    payload = {"name": tool.name, "description": tool.description, "parameters": json.loads(tool.parameters)}
    return json.dumps(payload, ensure_ascii=False)


def glm5_3_tools_text(tools: Sequence[ToolSpec]) -> str:
    """The tools system segment (after its ``<|system|>``; its tags are written as control tokens)."""
    return _TOOLS_HEAD + "".join(_declaration(tool) + "\n" for tool in tools) + _TOOLS_TAIL


def _argument_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def parse_glm_tool_call(raw_text: str) -> ToolCall | UnparsedToolCall:
    """A GLM tool call (``raw_text`` is the whole ``<tool_call>...</tool_call>`` block): each value is JSON when
    it parses, else its text; the arguments are serialized with ``json.dumps``."""
    match = _CALL.fullmatch(raw_text)
    if match is None:
        return UnparsedToolCall(raw_text=raw_text, error="Malformed GLM tool call")
    name, body = match.group(1), match.group(2)
    arguments: dict[str, object] = {}
    position = 0
    for pair in _PAIR.finditer(body):
        if body[position : pair.start()].strip():
            return UnparsedToolCall(raw_text=raw_text, error="Unexpected content between tool call arguments")
        key = pair.group(1).strip()
        if not key:
            return UnparsedToolCall(raw_text=raw_text, error="Empty tool call argument key")
        try:
            value: object = json.loads(pair.group(2))
        except json.JSONDecodeError:
            value = pair.group(2)
        arguments[key] = value
        position = pair.end()
    if body[position:].strip():
        return UnparsedToolCall(raw_text=raw_text, error="Unexpected trailing content inside tool call")
    try:
        return ToolCall(name=name, arguments=json.dumps(arguments))
    except ValidationError as error:
        return UnparsedToolCall(raw_text=raw_text, error=f"Invalid tool call: {error.problem}")


def _sorted_results(block: list[Message], previous: Message | None) -> list[Message]:
    """A run of tool results in the order of the calls they answer, when that mapping is unambiguous (every
    call and result has a unique id, every result answers a call); else as given."""
    if previous is None or previous.role != "assistant" or not previous.tool_calls:
        return block
    call_ids = [call.id for call in previous.tool_calls]
    result_ids = [message.tool_call_id for message in block]
    for ids in (call_ids, result_ids):
        if any(not item for item in ids) or len(set(ids)) != len(ids):
            return block
    if not set(result_ids) <= set(call_ids):
        return block
    by_id = dict(zip(result_ids, block, strict=True))
    return [by_id[call_id] for call_id in call_ids if call_id in by_id]


def _reordered(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    result: list[Message] = []
    index = 0
    while index < len(messages):
        if messages[index].role != "tool":
            result.append(messages[index])
            index += 1
            continue
        end = index
        while end + 1 < len(messages) and messages[end + 1].role == "tool":
            end += 1
        previous = messages[index - 1] if index else None
        result.extend(_sorted_results(list(messages[index : end + 1]), previous))
        index = end + 1
    return tuple(result)


@attrs.frozen(eq=False)
class Glm53Renderer(Renderer):
    """GLM-5.3 at maximum reasoning effort (the template's default). See the module docstring."""

    strip_thinking_from_history: bool = False
    _ids: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)
    _bos: list[int] = attrs.field(init=False, repr=False, factory=list)
    _tools_tail: list[Piece] = attrs.field(init=False, repr=False, factory=list)

    name: ClassVar[str] = "glm5_3_max_reasoning"
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})
    supports_tools: ClassVar[bool] = True
    supports_thinking: ClassVar[bool] = True
    effort: ClassVar[str] = "Max"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        ids = control_ids(self.tokenizer, _CONTROL)
        self._ids.update(ids)
        effort = self.tokenizer.encode(f"Reasoning Effort: {self.effort}")
        self._bos.extend([ids["[gMASK]"], ids["<sop>"], ids["<|system|>"], *effort])
        self._tools_tail.extend(split_control(self.tokenizer, _TOOLS_TAIL))

    @property
    def has_extension_property(self) -> bool:
        return not self.strip_thinking_from_history

    def bos_tokens(self) -> tuple[int, ...]:
        return tuple(self._bos)

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        for index, message in enumerate(messages):
            if message.role != "assistant" and isinstance(message.content, tuple):
                for part_index, part in enumerate(message.content):
                    if isinstance(part, ThinkingPart):
                        raise self._error(
                            f"messages[{index}].content[{part_index}]",
                            f"a thinking part in a {message.role} message; GLM-5.3 writes reasoning only for the "
                            "assistant.",
                            "remove the thinking part, or make it text.",
                        )

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        """Tool results sorted into call order; with tools, a tools segment first (a placeholder message the
        renderer writes), then the system prompt (dropped when empty)."""
        messages = _reordered(messages)
        if not tools:
            return messages
        first = messages[0] if messages and messages[0].role == "system" else None
        rest = messages[1:] if first is not None else messages
        trainable = first.trainable if first is not None else None
        prefix = [Message(role="system", content="", trainable=trainable)]
        system = text_of(first) if first is not None else ""
        if system:
            prefix.append(Message(role="system", content=system, trainable=trainable))
        return (*prefix, *rest)

    # -- rendering --------------------------------------------------------------------------------------------

    def _terminator(self, message: Message, following: Message | None) -> int | None:
        """The role token that ends an assistant turn, when the next message starts with it (or there is none)."""
        ids = self._ids
        expected = ids["<|observation|>"] if message.tool_calls else ids["<|user|>"]
        if following is None:
            return expected
        header = {"user": ids["<|user|>"], "tool": ids["<|observation|>"]}.get(following.role)
        return expected if header == expected else None

    def _supplied(self, ctx: RenderContext, message: Message) -> bool:
        """The previous assistant message already wrote this message's role token."""
        previous = ctx.prev_message
        return previous is not None and previous.role == "assistant" and self._terminator(previous, message) is not None

    def _call_pieces(self, call: ToolCall) -> tuple[Piece, ...]:
        ids = self._ids
        out = PieceList(ids["<tool_call>"], call.name)
        arguments = json.loads(call.arguments) if call.arguments else {}
        for key, value in arguments.items():
            out.add(ids["<arg_key>"]).add(key).add(ids["</arg_key>"])
            out.add(ids["<arg_value>"]).add(_argument_text(value)).add(ids["</arg_value>"])
        return out.add(ids["</tool_call>"]).to_tuple()

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        role = message.role
        if role == "system":
            if ctx.tools and ctx.idx == 0:
                tools = PieceList(_TOOLS_HEAD + "".join(_declaration(tool) + "\n" for tool in ctx.tools))
                return RenderedMessage((ids["<|system|>"],), tools.extend(self._tools_tail).to_tuple())
            return RenderedMessage((ids["<|system|>"],), (text_of(message),))
        if role == "user":
            header: tuple[Piece, ...] = () if self._supplied(ctx, message) else (ids["<|user|>"],)
            return RenderedMessage(header, (text_of(message),))
        if role == "tool":
            follows_tool = ctx.prev_message is not None and ctx.prev_message.role == "tool"
            header = () if follows_tool or self._supplied(ctx, message) else (ids["<|observation|>"],)
            output = (ids["<tool_response>"], text_of(message), ids["</tool_response>"])
            return RenderedMessage(header, output)
        content = message.content
        reasoning: str | None = None
        if isinstance(content, tuple):
            thoughts = [part.thinking for part in content if isinstance(part, ThinkingPart)]
            reasoning = "".join(thoughts) if thoughts else None
            text = "".join(part.text for part in content if isinstance(part, TextPart))
        else:
            text = content
        keep = not self.strip_thinking_from_history or ctx.idx > ctx.last_user_index
        out = PieceList(reasoning if keep and reasoning is not None else "", ids["</think>"], text.strip())
        for call in message.tool_calls:
            out.extend(self._call_pieces(call))
        terminator = self._terminator(message, ctx.next_message)
        overlap: tuple[Piece, ...] = ()
        if ctx.is_last:
            overlap = (terminator,) if terminator is not None else ()
        elif terminator is not None:
            out.add(terminator)
        return RenderedMessage((ids["<|assistant|>"], ids["<think>"]), out.to_tuple(), overlap)

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        ids = self._ids
        if role == "assistant":
            return (ids["<|assistant|>"], ids["<think>"])
        return ({"system": ids["<|system|>"], "user": ids["<|user|>"], "tool": ids["<|observation|>"]}[role],)

    def stop_sequences(self) -> StopSequences:
        ids = self._ids
        return StopSequences(tokens=(ids["<|user|>"], ids["<|observation|>"], ids["<|endoftext|>"]))

    # -- parsing --------------------------------------------------------------------------------------------

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        """Parse after the ``<think>`` prefill (restored when the response closes a block it did not open): the
        text before the single stop token; ``<|endoftext|>`` ends it with ``EOS``."""
        ids = self._ids
        if tokens and tokens[0] != ids["<think>"] and ids["</think>"] in tokens:
            tokens = [ids["<think>"], *tokens]
        stops = self.stop_sequences().tokens
        positions = [index for index, token in enumerate(tokens) if token in stops]
        decode = self.tokenizer.decode
        if not positions:
            return ParsedResponse(Message(role="assistant", content=decode(tokens)), Termination.MALFORMED)
        if len(positions) > 1:
            raise self._error(
                "tokens_T",
                f"holds {len(positions)} stop tokens; a sampled response ends at its first.",
                "sample with the renderer's stop_sequences().",
            )
        stop = positions[0]
        termination = Termination.EOS if tokens[stop] == ids["<|endoftext|>"] else Termination.STOP_SEQUENCE
        return ParsedResponse(self._parse_body(tokens[:stop]), termination)

    def _parse_body(self, tokens: list[int]) -> Message:
        ids = self._ids
        decode = self.tokenizer.decode
        think, end_think, call, end_call = ids["<think>"], ids["</think>"], ids["<tool_call>"], ids["</tool_call>"]
        parts: list[TextPart | ThinkingPart] = []
        json_calls: list[ToolCall] = []
        blocks: list[ToolCall | UnparsedToolCall] = []
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
                parts.append(TextPart(decode(pending)))
                pending = []
            if token == think:
                parts.append(ThinkingPart(decode(tokens[index + 1 : end])))
            else:
                raw = decode(tokens[index : end + 1])
                parsed = tool_call_from_json(decode(tokens[index + 1 : end]), raw)
                if isinstance(parsed, ToolCall):
                    json_calls.append(parsed)
                else:
                    blocks.append(parse_glm_tool_call(raw))
            index = end + 1
        if pending:
            parts.append(TextPart(decode(pending)))
        calls = [*json_calls, *(block for block in blocks if isinstance(block, ToolCall))]
        unparsed = [block for block in blocks if isinstance(block, UnparsedToolCall)]
        return assistant_message(parts, calls, unparsed)


@attrs.frozen(eq=False)
class Glm53HighReasoningRenderer(Glm53Renderer):
    """GLM-5.3 at high reasoning effort."""

    name: ClassVar[str] = "glm5_3_high_reasoning"
    effort: ClassVar[str] = "High"


@attrs.frozen(eq=False)
class Glm53LowReasoningRenderer(Glm53Renderer):
    """GLM-5.3 at low reasoning effort (the closest to thinking off: the template cannot disable it)."""

    name: ClassVar[str] = "glm5_3_low_reasoning"
    effort: ClassVar[str] = "Low"
