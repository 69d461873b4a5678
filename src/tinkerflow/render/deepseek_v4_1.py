"""DeepSeek V4.1 renderers (tinker-cookbook 0.6.1 ``DeepSeekV4_1Renderer`` and its levels)::

    <｜begin▁of▁sentence｜><｜System｜>Reasoning Effort: 75 (range 1-100, ...)\\n\\n{system}\\n\\n{tools}
    <｜User｜>{text}<｜Assistant｜><think>{reasoning}</think>{answer}{DSML calls}<｜end▁of▁sentence｜>

(no line breaks between turns). Names: ``deepseekv4_1`` (effort 75, the template's ``high``),
``deepseekv4_1_low_reasoning`` (50), ``deepseekv4_1_max_reasoning`` (100), ``deepseekv4_1_disable_thinking`` (chat
mode: no effort line, every assistant header ends in ``</think>``, reasoning dropped) and
``deepseekv4_1_preserve_thinking`` (effort 75, earlier reasoning kept).

The template's turn structure, applied by :meth:`DeepSeekV41Renderer.prepare`:

* tool specs follow the first system message's text (an empty system message is added without one);
* consecutive user and tool messages form one user turn, written by its first message (texts joined by
  ``\\n\\n``, each tool result as ``<tool_result>...</tool_result>``, results sorted into the order of the calls
  they answer); the other messages of the turn write nothing;
* a system message after the first is a user turn of its own (``<｜System｜>{text}``), and so starts the last
  assistant turn (:meth:`DeepSeekV41Renderer.turn_start`, used by ``build_supervised_examples``);
* in thinking mode, assistant messages up to the last user turn (user, tool or later system message) lose their
  reasoning (their header ends in ``</think>``) unless tools are declared or ``strip_thinking_from_history=False``.

Tool calls are DSML blocks (``｜DSML｜`` is a control token); parsing is in
:mod:`tinkerflow.render.deepseek_v4_1_parse`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar, Final

import attrs

from tinkerflow.chat import Message, Role, TextPart, ThinkingPart, ToolCall, ToolSpec
from tinkerflow.render.control import split_control
from tinkerflow.render.deepseek_v4_1_parse import parse_v4_1_body
from tinkerflow.render.family import PieceList, control_ids, parse_at_stop_token, text_of
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, StopSequences
from tinkerflow.render.renderer import Renderer

__all__ = [
    "DeepSeekV41DisableThinkingRenderer",
    "DeepSeekV41LowReasoningRenderer",
    "DeepSeekV41MaxReasoningRenderer",
    "DeepSeekV41PreserveThinkingRenderer",
    "DeepSeekV41Renderer",
    "deepseek_v4_1_tools_text",
]

_BOS: Final = "<｜begin▁of▁sentence｜>"
_EOS: Final = "<｜end▁of▁sentence｜>"
_SYSTEM: Final = "<｜System｜>"
_USER: Final = "<｜User｜>"
_ASSISTANT: Final = "<｜Assistant｜>"
_THINK: Final = "<think>"
_END_THINK: Final = "</think>"
_DSML: Final = "｜DSML｜"
_CONTROL: Final = (_BOS, _EOS, _SYSTEM, _USER, _ASSISTANT, _THINK, _END_THINK, _DSML)

_EFFORT: Final = "Reasoning Effort: {} (range 1-100, the higher the value, the more thorough the reasoning)\n\n"

_TOOLS: Final = """## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a \
"<｜DSML｜ calls>" block like the following:

<｜DSML｜ calls>
<｜DSML｜ invoke name="$TOOL_NAME">
<｜DSML｜ parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜ parameter>
...
</｜DSML｜ invoke>
<｜DSML｜ invoke name="$TOOL_NAME2">
...
</｜DSML｜ invoke>
</｜DSML｜ calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, \
arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside \
<think>...</think> BEFORE any tool calls or final response.

Otherwise, output directly after </think> with tool calls or final response.

### Available Tool Schemas

"""
_TOOLS_END: Final = (
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"
)


def deepseek_v4_1_tools_text(tools: Sequence[ToolSpec]) -> str:
    """The ``## Tools`` section written after the system prompt (one JSON schema per line; ``｜DSML｜``,
    ``<think>`` and ``</think>`` in it are control tokens)."""
    schemas = "\n".join(
        json.dumps(
            {"name": tool.name, "description": tool.description, "parameters": tool.parameters_dict()},
            ensure_ascii=False,
        )
        for tool in tools
    )
    return _TOOLS + schemas + _TOOLS_END


# -- prepared messages: the template's turn structure, marked by type ---------------------------------------------


@attrs.frozen
class _UserTurn(Message):
    """The first user or tool message of a user turn, its content the whole turn's text."""


@attrs.frozen
class _Joined(Message):
    """A later user or tool message of a user turn: written by the turn's first message."""


@attrs.frozen
class _SystemTurn(Message):
    """A system message after the first: a user turn of its own (role ``user`` for the train-on modes' turn
    boundaries, trained as a system message)."""


@attrs.frozen
class _Assistant(Message):
    """An assistant message and whether it keeps its reasoning (thinking mode)."""

    keeps_reasoning: bool = True


def _arguments(call: ToolCall) -> dict[str, object]:
    parsed = json.loads(call.arguments)
    return parsed if isinstance(parsed, dict) else {"arguments": call.arguments}


@attrs.frozen(eq=False)
class DeepSeekV41Renderer(Renderer):
    """DeepSeek V4.1 in thinking mode at reasoning effort 75 (the template's defaults). See the module docstring.

    ``strip_thinking_from_history=False`` keeps the reasoning of earlier assistant messages (the extension
    property then holds).
    """

    strip_thinking_from_history: bool = True
    _ids: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)

    name: ClassVar[str] = "deepseekv4_1"
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})
    supports_tools: ClassVar[bool] = True
    supports_thinking: ClassVar[bool] = True
    reasoning_effort: ClassVar[int | None] = 75

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._ids.update(control_ids(self.tokenizer, _CONTROL))

    @property
    def thinking_mode(self) -> bool:
        return self.reasoning_effort is not None

    @property
    def has_extension_property(self) -> bool:
        return not (self.thinking_mode and self.strip_thinking_from_history)

    def bos_tokens(self) -> tuple[int, ...]:
        return (self._ids[_BOS],)

    def train_role(self, message: Message) -> str:
        return "system" if isinstance(message, _SystemTurn) else message.role

    def turn_start(self, messages: Sequence[Message]) -> int:
        """After the last user turn: a user message or a system message after the first (the template's and the
        cookbook's rule; prepared later system messages already have role ``user``)."""
        for index in range(len(messages) - 1, -1, -1):
            role = messages[index].role
            if role == "user" or (role == "system" and index > 0):
                return index + 1
        return 0

    # -- the turn structure ----------------------------------------------------------------------------------

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        result: list[Message] = list(messages)
        if tools and not (result and result[0].role == "system"):
            result.insert(0, Message(role="system", content=""))
        elif tools and not text_of(result[0]) and result[0].trainable:
            # the cookbook declares tools without an empty system prompt: the section is never trained
            result[0] = attrs.evolve(result[0], trainable=False)
        for index in range(1, len(result)):
            message = result[index]
            if message.role == "system":
                result[index] = _SystemTurn(role="user", content=text_of(message), trainable=message.trainable)
        _join_user_turns(result)
        drop_through = -1
        if self.thinking_mode and self.strip_thinking_from_history and not tools:
            drop_through = max((i for i, m in enumerate(result) if m.role in ("user", "tool")), default=-1)
        for index, message in enumerate(result):
            if message.role == "assistant":
                result[index] = _Assistant(
                    role="assistant",
                    content=message.content,
                    tool_calls=message.tool_calls,
                    trainable=message.trainable,
                    keeps_reasoning=self.thinking_mode and index > drop_through,
                )
        return tuple(result)

    # -- rendering ------------------------------------------------------------------------------------------

    def _opening(self) -> PieceList:
        """What the header of a first message that is no system message starts with: in thinking mode
        ``<｜System｜>`` and the effort line, in chat mode nothing."""
        if self.reasoning_effort is None:
            return PieceList()
        return PieceList(self._ids[_SYSTEM], _EFFORT.format(self.reasoning_effort))

    def _system(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        """The first system message: its text (and the tools section) encoded together with the effort line, a
        token merged across the boundary counted as header (as the cookbook splits them)."""
        effort = "" if self.reasoning_effort is None else _EFFORT.format(self.reasoning_effort)
        body = PieceList(effort, text_of(message))
        if ctx.tools:
            body.add("\n\n").extend(split_control(self.tokenizer, deepseek_v4_1_tools_text(ctx.tools)))
        tokens: list[int] = []
        for piece in body.to_tuple():
            if isinstance(piece, int):
                tokens.append(piece)
            elif isinstance(piece, str):
                tokens.extend(self.tokenizer.encode(piece))
        split = 0
        if effort:
            decode = self.tokenizer.decode
            while split < len(tokens) and len(decode(tokens[:split])) < len(effort):
                split += 1
        return RenderedMessage(header=(self._ids[_SYSTEM], *tokens[:split]), output=(tuple(tokens[split:]),))

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        role = message.role
        first = ctx.idx == 0
        if isinstance(message, _Joined):
            return RenderedMessage()
        if role == "system" and first:
            return self._system(message, ctx)
        if isinstance(message, _SystemTurn) or role == "system":
            return RenderedMessage(header=(ids[_SYSTEM],), output=(text_of(message),))
        if role in ("user", "tool"):
            header = self._opening() if first else PieceList()
            text = text_of(message)
            if role == "tool" and not isinstance(message, _UserTurn):
                text = f"<tool_result>{text}</tool_result>"
            return RenderedMessage(header=header.add(ids[_USER]).to_tuple(), output=(text,))
        keeps = message.keeps_reasoning if isinstance(message, _Assistant) else self.thinking_mode
        header = self._opening() if first else PieceList()
        if _follows_user_turn(ctx):
            header.add(ids[_ASSISTANT]).add(ids[_THINK] if keeps else ids[_END_THINK])
        return RenderedMessage(header=header.to_tuple(), output=self._assistant_output(message, keeps).to_tuple())

    def _assistant_output(self, message: Message, keeps_reasoning: bool) -> PieceList:
        ids = self._ids
        out = PieceList()
        if keeps_reasoning:
            parts = message.content if isinstance(message.content, tuple) else ()
            out.add("".join(part.thinking for part in parts if isinstance(part, ThinkingPart))).add(ids[_END_THINK])
        content = message.content
        out.add(content if isinstance(content, str) else "".join(p.text for p in content if isinstance(p, TextPart)))
        if message.tool_calls:
            dsml = ids[_DSML]
            out.add("\n\n<").add(dsml).add(" calls>\n")
            for call in message.tool_calls:
                out.add("<").add(dsml).add(f' invoke name="{call.name}">\n')
                for number, (key, value) in enumerate(_arguments(call).items()):
                    is_text = isinstance(value, str)
                    written = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                    out.add("\n<" if number else "<").add(dsml).add(
                        f' parameter name="{key}" string="{"true" if is_text else "false"}">'
                    )
                    out.add(written).add("</").add(dsml).add(" parameter>")
                out.add("\n</").add(dsml).add(" invoke>\n")
            out.add("</").add(dsml).add(" calls>")
        return out.add(ids[_EOS])

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        if role == "assistant":
            header = self._opening() if ctx.idx == 0 else PieceList()
            if _follows_user_turn(ctx):
                header.add(self._ids[_ASSISTANT]).add(self._ids[_THINK if self.thinking_mode else _END_THINK])
            return header.to_tuple()
        prev = ctx.prev_message
        joins = prev is not None and prev.role in ("user", "tool") and not isinstance(prev, _SystemTurn)
        if role in ("user", "tool") and joins:
            return ()  # the message would join the previous user turn
        if role == "system" and ctx.idx > 0:
            return (self._ids[_SYSTEM],)
        return super().generation_suffix(role, ctx)

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=(self._ids[_EOS],))

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        ids = self._ids
        if self.thinking_mode and ids[_END_THINK] in tokens and tokens[0] != ids[_THINK]:
            tokens = [ids[_THINK], *tokens]  # the generation prompt ends with <think>
        return parse_at_stop_token(
            self,
            tokens,
            ids[_EOS],
            lambda body: parse_v4_1_body(body, self.tokenizer.decode, ids[_THINK], ids[_END_THINK], ids[_DSML]),
        )


def _follows_user_turn(ctx: RenderContext) -> bool:
    """The template ends a user turn (user, tool or later system message) with the assistant marker."""
    prev = ctx.prev_message
    return prev is not None and prev.role in ("user", "tool")


def _join_user_turns(messages: list[Message]) -> None:
    """Consecutive user and tool messages into one turn (in place): the first carries the joined text, tool
    results sorted into the order of the latest calls (stable; an id no call has sorts as the first call)."""
    call_order: dict[str, int] = {}
    index = 0
    while index < len(messages):
        message = messages[index]
        if message.tool_calls:
            call_order = {call.id: order for order, call in enumerate(message.tool_calls) if call.id}
        if message.role not in ("user", "tool") or isinstance(message, _SystemTurn):
            index += 1
            continue
        end = index
        while end + 1 < len(messages) and _in_user_turn(messages[end + 1]):
            end += 1
        turn = messages[index : end + 1]
        results = iter(
            sorted((m for m in turn if m.role == "tool"), key=lambda m: call_order.get(m.tool_call_id or "", 0))
        )
        ordered = [next(results) if m.role == "tool" else m for m in turn]
        text = "\n\n".join(
            f"<tool_result>{text_of(m)}</tool_result>" if m.role == "tool" else text_of(m) for m in ordered
        )
        head = messages[index]
        messages[index] = _UserTurn(
            role=head.role, content=text, tool_call_id=head.tool_call_id, name=head.name, trainable=head.trainable
        )
        for rest in range(index + 1, end + 1):
            other = messages[rest]
            messages[rest] = _Joined(
                role=other.role, tool_call_id=other.tool_call_id, name=other.name, trainable=other.trainable
            )
        index = end + 1


def _in_user_turn(message: Message) -> bool:
    return message.role in ("user", "tool") and not isinstance(message, _SystemTurn)


@attrs.frozen(eq=False)
class DeepSeekV41LowReasoningRenderer(DeepSeekV41Renderer):
    """DeepSeek V4.1, thinking mode at reasoning effort 50 (the template's ``low``)."""

    name: ClassVar[str] = "deepseekv4_1_low_reasoning"
    reasoning_effort: ClassVar[int | None] = 50


@attrs.frozen(eq=False)
class DeepSeekV41MaxReasoningRenderer(DeepSeekV41Renderer):
    """DeepSeek V4.1, thinking mode at reasoning effort 100 (the template's ``max``)."""

    name: ClassVar[str] = "deepseekv4_1_max_reasoning"
    reasoning_effort: ClassVar[int | None] = 100


@attrs.frozen(eq=False)
class DeepSeekV41DisableThinkingRenderer(DeepSeekV41Renderer):
    """DeepSeek V4.1 in chat mode: no effort line, ``</think>`` ends every assistant header, reasoning dropped."""

    name: ClassVar[str] = "deepseekv4_1_disable_thinking"
    reasoning_effort: ClassVar[int | None] = None


@attrs.frozen(eq=False)
class DeepSeekV41PreserveThinkingRenderer(DeepSeekV41Renderer):
    """DeepSeek V4.1, thinking mode at effort 75, keeping earlier reasoning (``strip_thinking_from_history=False``)."""

    strip_thinking_from_history: bool = False

    name: ClassVar[str] = "deepseekv4_1_preserve_thinking"
