"""Qwen3 renderers: ``qwen3`` (thinking), ``qwen3_disable_thinking``, ``qwen3_instruct`` (2507 instruct models,
no thinking blocks) and ``qwen3_vl`` / ``qwen3_vl_instruct`` (images become image chunks between
``<|vision_start|>`` and ``<|vision_end|>``).

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
from tinkerflow.render._images import image_size, qwen_vl_image_tokens
from tinkerflow.render._parsing import assistant_message, tool_call_from_json
from tinkerflow.render.base import (
    ParsedResponse,
    Piece,
    PieceList,
    RenderContext,
    RenderedMessage,
    Renderer,
    StopSequences,
    Termination,
    split_at_stop_token,
    split_control,
    text_of,
)

__all__ = [
    "Qwen3DisableThinkingRenderer",
    "Qwen3InstructRenderer",
    "Qwen3Renderer",
    "Qwen3VLInstructRenderer",
    "Qwen3VLRenderer",
    "qwen3_tools_text",
]

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


def _tool_call_json(call: ToolCall) -> str:
    return '{"name": ' + json.dumps(call.name) + ', "arguments": ' + call.arguments + "}"


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

    name: ClassVar[str] = "qwen3"
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})
    supports_tools: ClassVar[bool] = True
    supports_thinking: ClassVar[bool] = True
    frames_thinking: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._ids.update({text: self.tokenizer.token_id(text) for text in _CONTROL})
        newline = tuple(self.tokenizer.encode("\n"))
        for role in ("system", "user", "assistant"):
            body = (self._ids["<|im_start|>"], *self.tokenizer.encode(f"{role}\n"))
            self._headers[(role, False)] = body
            self._headers[(role, True)] = newline + body
        self._header_units.update({key: (header,) for key, header in self._headers.items()})
        self._blank.append(tuple(self.tokenizer.encode("\n\n")))
        self._tools_tail.extend(split_control(self.tokenizer, _TOOLS_TAIL))

    @property
    def has_extension_property(self) -> bool:
        return not self.strip_thinking_from_history

    def _header(self, role: str, ctx: RenderContext) -> tuple[Piece, ...]:
        key = (role, ctx.idx > 0)
        header = self._headers.get(key)
        if header is None:
            body = (self._ids["<|im_start|>"], *self.tokenizer.encode(f"{role}\n"))
            header = (*self.tokenizer.encode("\n"), *body) if key[1] else body
        return (header,)

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

    def render_units(
        self, messages: tuple[Message, ...], last_user_index: int, tools: tuple[ToolSpec, ...]
    ) -> list[tuple[Piece, ...]] | None:
        """Header and output of every message, as :meth:`render_message`'s fast path writes them; ``None``
        unless every message is plain text without tool calls and no tools are declared."""
        if tools or type(self).render_message is not Qwen3Renderer.render_message:
            return None  # tools, or a subclass that writes messages its own way (qwen3_vl)
        ids = self._ids
        end = ids["<|im_end|>"]
        headers = self._header_units
        frame = (ids["<think>"], self._blank[0], ids["</think>"])
        framing = self.frames_thinking and last_user_index >= 0
        frame_all = framing and not self.strip_thinking_from_history
        last = len(messages) - 1
        units: list[tuple[Piece, ...]] = []
        append = units.append
        for index, message in enumerate(messages):
            content = message.content
            if type(content) is not str or message.tool_calls:
                return None
            role = message.role
            if role == "assistant":
                append(headers["assistant", index > 0])
                if frame_all or (framing and index == last):
                    append((*frame, "\n\n" + content.lstrip("\n"), end))
                else:
                    append((content, end) if content else (end,))
            elif role == "tool":
                append(headers["user", index > 0])
                append((ids["<tool_response>"], "\n" + content + "\n", ids["</tool_response>"], end))
            else:
                header = headers.get((role, index > 0))
                if header is None:
                    return None
                append(header)
                append((content, end) if content else (end,))
        return units

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        role = "user" if message.role == "tool" else message.role
        content = message.content
        if type(content) is str and not message.tool_calls and not (ctx.tools and ctx.idx == 0 and role == "system"):
            # fast path (the common case): the same tokens the general path below gives
            end = ids["<|im_end|>"]
            header = self._header_units.get((role, ctx.idx > 0)) or self._header(role, ctx)
            if message.role == "assistant":
                if (
                    self.frames_thinking
                    and ctx.last_user_index >= 0
                    and (ctx.is_last or not self.strip_thinking_from_history)
                ):
                    framed = (ids["<think>"], self._blank[0], ids["</think>"], "\n\n" + content.lstrip("\n"), end)
                    return RenderedMessage(header, framed)
            elif message.role == "tool":
                return RenderedMessage(
                    header, (ids["<tool_response>"], "\n" + content + "\n", ids["</tool_response>"], end)
                )
            return RenderedMessage(header, (content, end) if content else (end,))
        system = self._system_with_tools(message, ctx)
        if system is not None:
            return RenderedMessage(header=self._header(role, ctx), output=system)
        frames = self._frames(message, ctx)
        out = PieceList()
        has_text = False
        has_reasoning = False
        if isinstance(content, str):
            text = content
            if frames:
                text = text.lstrip("\n")
                out.add(ids["<think>"]).add("\n\n").add(ids["</think>"]).add("\n\n")
            has_text = bool(content)
            out.add(text)
        else:
            has_reasoning = any(isinstance(part, ThinkingPart) for part in content)
            strip = self.strip_thinking_from_history and message.role == "assistant" and not ctx.is_last
            if frames and not has_reasoning:
                out.add(ids["<think>"]).add("\n\n").add(ids["</think>"]).add("\n\n")
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
        if message.role == "tool":
            wrapped = PieceList(ids["<tool_response>"], "\n")
            wrapped.extend(out.to_tuple()).add("\n").add(ids["</tool_response>"])
            out = wrapped
        for position, call in enumerate(message.tool_calls):
            if position > 0 or has_text:
                out.add("\n")
            out.add(ids["<tool_call>"]).add("\n" + _tool_call_json(call) + "\n").add(ids["</tool_call>"])
        out.add(ids["<|im_end|>"])
        return RenderedMessage(header=self._header(role, ctx), output=out.to_tuple())

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        return self._header("user" if role == "tool" else role, ctx)

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=(self._ids["<|im_end|>"],))

    # -- parsing --------------------------------------------------------------------------------------------

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        body, termination = split_at_stop_token(self, tokens, self._ids["<|im_end|>"])
        if termination is Termination.MALFORMED:
            return ParsedResponse(Message(role="assistant", content=self.tokenizer.decode(body)), termination)
        return ParsedResponse(self._parse_body(body), termination)

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
                after_block = self.frames_thinking
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
        ids = self._ids
        return (
            PieceList(*super().generation_suffix(role, ctx))
            .extend((ids["<think>"], "\n\n", ids["</think>"], "\n\n"))
            .to_tuple()
        )


@attrs.frozen(eq=False)
class Qwen3InstructRenderer(Qwen3Renderer):
    """Qwen3 instruct (2507) models: no thinking frame on the produced turn; thinking parts, if given, render
    as ``<think>...</think>``."""

    name: ClassVar[str] = "qwen3_instruct"
    frames_thinking: ClassVar[bool] = False

    @property
    def has_extension_property(self) -> bool:
        return True


@attrs.frozen(eq=False)
class Qwen3VLRenderer(Qwen3Renderer):
    """Qwen3-VL: text as :class:`Qwen3Renderer` (thinking as ``<think>...</think>``, without the frame), and each
    image part as ``<|vision_start|>`` + an image chunk + ``<|vision_end|>``.

    The image chunk keeps the image's bytes and format; its size in tokens follows Qwen3-VL's resize rule
    (``patch_size`` 16, ``merge_size`` 2, area in ``[min_pixels, max_pixels]``).
    """

    patch_size: int = 16
    merge_size: int = 2
    min_pixels: int = 65536
    max_pixels: int = 16777216

    name: ClassVar[str] = "qwen3_vl"
    supports_images: ClassVar[bool] = True

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        for index, message in enumerate(messages):
            if isinstance(message.content, tuple):
                for part_index, part in enumerate(message.content):
                    if isinstance(part, ImagePart) and image_size(part.data) is None:
                        raise self._error(
                            f"messages[{index}].content[{part_index}]",
                            "the image bytes are not a PNG or JPEG whose size can be read.",
                            "pass a PNG or JPEG file's bytes.",
                        )

    def image_tokens(self, image: ImagePart) -> int:
        """Number of positions ``image`` occupies."""
        size = image_size(image.data)
        if size is None:
            raise self._error("content", "the image bytes are not a PNG or JPEG whose size can be read.")
        width, height = size
        return qwen_vl_image_tokens(
            width,
            height,
            patch_size=self.patch_size,
            merge_size=self.merge_size,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        role = "user" if message.role == "tool" else message.role
        system = self._system_with_tools(message, ctx)
        if system is not None:
            return RenderedMessage(header=self._header(role, ctx), output=system)
        strip = self.strip_thinking_from_history and message.role == "assistant" and not ctx.is_last
        out = PieceList()
        if message.role == "tool":
            out.add(ids["<tool_response>"]).add("\n")
        content = message.content
        if isinstance(content, str):
            out.add(content)
        else:
            for part in content:
                if isinstance(part, TextPart):
                    out.add(part.text)
                elif isinstance(part, ThinkingPart):
                    if not strip:
                        out.add(ids["<think>"]).add(part.thinking).add(ids["</think>"])
                else:
                    out.add(ids["<|vision_start|>"]).add(part).add(ids["<|vision_end|>"])
        if message.role == "tool":
            out.add("\n").add(ids["</tool_response>"])
        if message.tool_calls:
            for call in message.tool_calls:
                out.add("\n").add(ids["<tool_call>"]).add("\n" + _tool_call_json(call) + "\n").add(ids["</tool_call>"])
        out.add(ids["<|im_end|>"])
        return RenderedMessage(header=self._header(role, ctx), output=out.to_tuple())


@attrs.frozen(eq=False)
class Qwen3VLInstructRenderer(Qwen3VLRenderer):
    """Qwen3-VL instruct models (no thinking)."""

    name: ClassVar[str] = "qwen3_vl_instruct"
    frames_thinking: ClassVar[bool] = False
