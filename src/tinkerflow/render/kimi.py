"""Kimi K2 / K2.5 / K2.6 renderers (tinker-cookbook 0.6.1's ``kimi_k2``, ``kimi_k25``,
``kimi_k25_disable_thinking``, ``kimi_k26``, ``kimi_k26_disable_thinking``, ``kimi_k26_preserve_thinking``).

Layout (token for token as the cookbook's ``KimiK2Renderer`` / ``KimiK25Renderer``; no newlines between
messages)::

    <|im_system|>tool_declare<|im_middle|>{declaration}<|im_end|>          (when tools are declared)
    <|im_system|>system<|im_middle|>{system, else the default prompt}<|im_end|>
    <|im_user|>user<|im_middle|>{text}<|im_end|>
    <|im_assistant|>assistant<|im_middle|><think>{reasoning}</think>{text}
        [<|tool_calls_section_begin|><|tool_call_begin|>{id}<|tool_call_argument_begin|>{args}<|tool_call_end|>...
         <|tool_calls_section_end|>]<|im_end|>
    <|im_system|>{tool name}<|im_middle|>## Return of {tool_call_id}\\n{result}<|im_end|>

* A conversation without a leading system message gets Kimi's default one ("You are Kimi, ...", weight 0 in
  ``customized``). Tools: K2 declares them as compact JSON (keys sorted), K2.5 / K2.6 in TypeScript style
  (:mod:`tinkerflow.render.kimi_tools`); with tools an empty system prompt becomes the default one.
* The *turn being produced* starts after the last assistant message that made no tool call
  (:meth:`KimiK2Renderer.turn_start`, the cookbook's ``_last_assistant_turn_start_index``): reasoning is kept
  only there (in a supervised example the final message always keeps it; in a generation prompt ending with an
  assistant message without tool calls none is kept), and ``last_assistant_turn`` trains the assistant messages
  there. Earlier assistant messages are written ``<think></think>{text}``. ``kimi_k26_preserve_thinking`` keeps
  every block.
* Generation prompts: K2 ends at the assistant header; K2.5 / K2.6 add ``<think>`` (thinking on) or
  ``<think></think>`` (thinking off; a trained turn that reasons is then an error). Sampling stops at
  ``<|im_end|>``; ``[EOS]`` or no stop token is ``MALFORMED`` (the cookbook's reading).
* Parsing works on tokens: ``<think>`` blocks before the tool-call section become thinking parts; each call of
  the first complete section needs an id ``...:N`` (the function name is read from it: ``functions.NAME:N``)
  and JSON arguments. Text after the section is dropped, as the cookbook does.

Differences from the cookbook (docs/rendering.md): ``build_supervised_examples`` uses the shared split,
``kimi_k26_preserve_thinking`` has the extension property, parsed calls a ``ToolCall`` cannot hold are unparsed,
images are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import ClassVar, Final

import attrs

from tinkerflow.chat import Message, Role, TextPart, ThinkingPart, ToolCall, ToolSpec, UnparsedToolCall
from tinkerflow.errors import ValidationError
from tinkerflow.render._parsing import UNTERMINATED_TOOL_BLOCK, assistant_message
from tinkerflow.render.family import PieceList, control_ids, split_at_stop_token, text_of
from tinkerflow.render.kimi_tools import KimiToolSchemaError, kimi_k2_tools_json, kimi_typescript_tools
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, StopSequences, Termination
from tinkerflow.render.renderer import Renderer

__all__ = [
    "KIMI_DEFAULT_SYSTEM_PROMPT",
    "KimiK2Renderer",
    "KimiK25DisableThinkingRenderer",
    "KimiK25Renderer",
    "KimiK26DisableThinkingRenderer",
    "KimiK26PreserveThinkingRenderer",
    "KimiK26Renderer",
    "kimi_turn_start",
]

KIMI_DEFAULT_SYSTEM_PROMPT: Final = "You are Kimi, an AI assistant created by Moonshot AI."

_CONTROL: Final = (
    "<|im_end|>",
    "<|im_user|>",
    "<|im_assistant|>",
    "<|im_system|>",
    "<|im_middle|>",
    "<think>",
    "</think>",
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)
_CALL_ID: Final = re.compile(r"\s*([^<]+:\d+)\s*")
_DECLARE: Final = "tool_declare"


def kimi_turn_start(messages: Sequence[Message]) -> int:
    """Index of the first message of the turn being produced: after the last assistant message without tool
    calls (0 without one). The Kimi templates keep reasoning from here on."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role == "assistant" and not message.tool_calls:
            return index + 1
    return 0


def _find(tokens: list[int], token: int, start: int) -> int:
    try:
        return tokens.index(token, start)
    except ValueError:
        return -1


@attrs.frozen(eq=False)
class KimiK2Renderer(Renderer):
    """Kimi K2 Thinking (``kimi_k2``). See the module docstring."""

    strip_thinking_from_history: bool = True
    _ids: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)
    _headers: dict[str, tuple[int, ...]] = attrs.field(init=False, repr=False, factory=dict)

    name: ClassVar[str] = "kimi_k2"
    roles: ClassVar[frozenset[str]] = frozenset({"system", "developer", "user", "assistant", "tool"})
    supports_tools: ClassVar[bool] = True
    supports_thinking: ClassVar[bool] = True
    separate_text_parts: ClassVar[bool] = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        ids = control_ids(self.tokenizer, _CONTROL)
        self._ids.update(ids)
        for role in ("system", "developer", "user", "assistant", "tool", _DECLARE):
            opener = {"user": "<|im_user|>", "assistant": "<|im_assistant|>"}.get(role, "<|im_system|>")
            self._headers[role] = (ids[opener], *self.tokenizer.encode(role), ids["<|im_middle|>"])

    @property
    def has_extension_property(self) -> bool:
        return not self.strip_thinking_from_history

    # -- preparation ------------------------------------------------------------------------------------------

    def tools_declaration(self, tools: Sequence[ToolSpec]) -> str:
        """The text of the ``tool_declare`` message."""
        return kimi_k2_tools_json(tools)

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        if tools:
            try:
                self.tools_declaration(tools)
            except (KimiToolSchemaError, ValueError, TypeError) as error:
                raise self._error(
                    "tools", f"a tool schema the Kimi declaration cannot write: {error}", "simplify the schema."
                ) from error

    def turn_start(self, messages: Sequence[Message]) -> int:
        """:func:`kimi_turn_start`: the turn being produced starts after the last assistant message without tool
        calls."""
        return kimi_turn_start(messages)

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        """The default system prompt when there is none; with tools a declaration message (a ``developer``
        placeholder written as ``tool_declare``) and the system prompt first."""
        customized = any(message.trainable is not None for message in messages)
        head: list[Message] = []
        rest = messages
        if tools:
            first = messages[0] if messages and messages[0].role == "system" else None
            rest = messages[1:] if first is not None else messages
            system = text_of(first) if first is not None else ""
            flag = (first is not None and first.trainable is True) if customized else None
            declare = Message(role="developer", content="", name=_DECLARE, trainable=False if customized else None)
            head = [declare, Message(role="system", content=system or KIMI_DEFAULT_SYSTEM_PROMPT, trainable=flag)]
        elif not messages or messages[0].role != "system":
            head = [Message(role="system", content=KIMI_DEFAULT_SYSTEM_PROMPT)]
        return (*head, *rest) if head else rest

    # -- rendering --------------------------------------------------------------------------------------------

    def _call_pieces(self, call: ToolCall, index: int) -> tuple[Piece, ...]:
        ids = self._ids
        call_id = call.id or f"functions.{call.name}:{index}"
        return (
            ids["<|tool_call_begin|>"],
            call_id,
            ids["<|tool_call_argument_begin|>"],
            call.arguments,
            ids["<|tool_call_end|>"],
        )

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        end = ids["<|im_end|>"]
        role = message.role
        if role == "assistant":
            content = message.content
            thinking = ""
            if isinstance(content, tuple) and (ctx.in_last_assistant_turn or not self.strip_thinking_from_history):
                thinking = "".join(part.thinking for part in content if isinstance(part, ThinkingPart))
            out = PieceList(ids["<think>"], thinking, ids["</think>"], text_of(message))
            if message.tool_calls:
                out.add(ids["<|tool_calls_section_begin|>"])
                for index, call in enumerate(message.tool_calls):
                    out.extend(self._call_pieces(call, index))
                out.add(ids["<|tool_calls_section_end|>"])
            return RenderedMessage(self._headers["assistant"], out.add(end).to_tuple())
        if ctx.tools and ctx.idx == 0:
            return RenderedMessage(self._headers[_DECLARE], (self.tools_declaration(ctx.tools), end))
        if role == "tool":
            opener, middle = ids["<|im_system|>"], ids["<|im_middle|>"]
            header: tuple[Piece, ...] = (opener, message.name or "tool", middle)
            header += (f"## Return of {message.tool_call_id or ''}\n",)
        else:
            header = self._headers[role]
        content = message.content
        if self.separate_text_parts and isinstance(content, tuple) and len(content) != 1:
            texts = tuple(part.text for part in content if isinstance(part, TextPart))
            return RenderedMessage(header, (*texts, end))
        return RenderedMessage(header, (text_of(message), end))

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        if role == "tool":  # the header of a result without a name or call id, as the cookbook writes it
            return (self._ids["<|im_system|>"], "tool", self._ids["<|im_middle|>"], "## Return of \n")
        return self._headers[role]

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=(self._ids["<|im_end|>"],))

    # -- parsing --------------------------------------------------------------------------------------------

    def normalize_response(self, tokens: list[int]) -> list[int]:
        """The sampled tokens as the parser reads them (K2.5 restores its ``<think>`` prefill)."""
        return tokens

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        """The text before the single ``<|im_end|>``: reasoning, text and the first tool-call section; without
        the stop token the decoded response is returned as text (``MALFORMED``)."""
        tokens = self.normalize_response(tokens)
        body, termination = split_at_stop_token(self, tokens, self._ids["<|im_end|>"])
        if termination is Termination.MALFORMED:
            return ParsedResponse(Message(role="assistant", content=self.tokenizer.decode(body)), termination)
        return ParsedResponse(self._parse_body(body), termination)

    def _parse_body(self, tokens: list[int]) -> Message:
        ids = self._ids
        begin = _find(tokens, ids["<|tool_calls_section_begin|>"], 0)
        finish = _find(tokens, ids["<|tool_calls_section_end|>"], begin + 1) if begin >= 0 else -1
        calls: list[ToolCall] = []
        unparsed: list[UnparsedToolCall] = []
        text_tokens = tokens
        if finish >= 0:
            text_tokens = tokens[:begin]
            self._parse_calls(tokens[begin + 1 : finish], calls, unparsed)
        dangling = self._dangling(tokens)
        if dangling is not None:
            unparsed.append(dangling)
        return assistant_message(self._think_parts(text_tokens), calls, unparsed)

    def _parse_calls(self, section: list[int], calls: list[ToolCall], unparsed: list[UnparsedToolCall]) -> None:
        """Each ``<|tool_call_begin|>{id}<|tool_call_argument_begin|>{args}<|tool_call_end|>`` of a section, in
        order; a call whose id is not ``...:N`` (or holds ``<``) is skipped, as the cookbook's pattern does."""
        ids = self._ids
        decode = self.tokenizer.decode
        begin_id, argument_id, end_id = (
            ids["<|tool_call_begin|>"],
            ids["<|tool_call_argument_begin|>"],
            ids["<|tool_call_end|>"],
        )
        position = 0
        while True:
            start = _find(section, begin_id, position)
            if start < 0:
                return
            argument = _find(section, argument_id, start + 1)
            finish = _find(section, end_id, argument + 1) if argument >= 0 else -1
            if finish < 0:
                return
            match = _CALL_ID.fullmatch(decode(section[start + 1 : argument]))
            if match is None:
                position = start + 1
                continue
            position = finish + 1
            raw = decode(section[start : finish + 1])
            call_id = match.group(1).strip()
            arguments = decode(section[argument + 1 : finish]).strip()
            try:
                json.loads(arguments)
            except json.JSONDecodeError as error:
                unparsed.append(UnparsedToolCall(raw_text=raw, error=f"Invalid JSON: {error}"))
                continue
            name = call_id.split(":", 1)[0]
            name = name.split(".", 1)[1] if "." in name else name
            try:
                calls.append(ToolCall(name=name, arguments=arguments, id=call_id))
            except ValidationError as error:
                unparsed.append(UnparsedToolCall(raw_text=raw, error=f"Invalid tool call: {error.problem}"))

    def _dangling(self, tokens: list[int]) -> UnparsedToolCall | None:
        """A tool section or call opened more often than closed (raw text from the last opening)."""
        ids = self._ids
        for opening, closing in (
            ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"),
            ("<|tool_call_begin|>", "<|tool_call_end|>"),
        ):
            opens = tokens.count(ids[opening])
            if opens and opens > tokens.count(ids[closing]):
                last = len(tokens) - 1 - tokens[::-1].index(ids[opening])
                return UnparsedToolCall(
                    raw_text=self.tokenizer.decode(tokens[last:]),
                    error=f"{UNTERMINATED_TOOL_BLOCK}: '{opening}' opened without a matching '{closing}'",
                )
        return None

    def _think_parts(self, tokens: list[int]) -> list[TextPart | ThinkingPart]:
        """``<think>...</think>`` blocks (each up to the first ``</think>`` after it) as thinking parts, the rest
        (stray tags included, spelled out) as text."""
        ids = self._ids
        decode = self.tokenizer.decode
        parts: list[TextPart | ThinkingPart] = []
        position = 0
        while True:
            opening = _find(tokens, ids["<think>"], position)
            closing = _find(tokens, ids["</think>"], opening + 1) if opening >= 0 else -1
            if closing < 0:
                break
            if opening > position:
                parts.append(TextPart(decode(tokens[position:opening])))
            parts.append(ThinkingPart(decode(tokens[opening + 1 : closing])))
            position = closing + 1
        if position < len(tokens):
            parts.append(TextPart(decode(tokens[position:])))
        return parts


@attrs.frozen(eq=False)
class KimiK25Renderer(KimiK2Renderer):
    """Kimi K2.5 with thinking on (``kimi_k25``): TypeScript tool declarations, ``<think>`` prefill."""

    name: ClassVar[str] = "kimi_k25"
    separate_text_parts: ClassVar[bool] = True
    prefill_text: ClassVar[str] = "<think>"

    def tools_declaration(self, tools: Sequence[ToolSpec]) -> str:
        return kimi_typescript_tools(tools)

    def generation_prefill(self, messages: tuple[Message, ...], prefill: str | None) -> str | None:
        return self.prefill_text + (prefill or "")

    def normalize_response(self, tokens: list[int]) -> list[int]:
        think = self._ids["<think>"]
        if tokens and tokens[0] != think and self._ids["</think>"] in tokens:
            return [think, *tokens]
        return tokens


@attrs.frozen(eq=False)
class KimiK25DisableThinkingRenderer(KimiK25Renderer):
    """Kimi K2.5 with thinking off (``kimi_k25_disable_thinking``): ``<think></think>`` ends the prompt."""

    name: ClassVar[str] = "kimi_k25_disable_thinking"
    disables_thinking: ClassVar[bool] = True
    prefill_text: ClassVar[str] = "<think></think>"


@attrs.frozen(eq=False)
class KimiK26Renderer(KimiK25Renderer):
    """Kimi K2.6 with thinking on (``kimi_k26``): the K2.5 format."""

    name: ClassVar[str] = "kimi_k26"


@attrs.frozen(eq=False)
class KimiK26DisableThinkingRenderer(KimiK25DisableThinkingRenderer):
    """Kimi K2.6 with thinking off (``kimi_k26_disable_thinking``): the K2.5 format."""

    name: ClassVar[str] = "kimi_k26_disable_thinking"


@attrs.frozen(eq=False)
class KimiK26PreserveThinkingRenderer(KimiK25Renderer):
    """Kimi K2.6 keeping every earlier reasoning block (``kimi_k26_preserve_thinking``, the template's
    ``preserve_thinking=true``)."""

    strip_thinking_from_history: bool = False
    name: ClassVar[str] = "kimi_k26_preserve_thinking"
