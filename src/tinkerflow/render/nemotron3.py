"""Nemotron-3 renderers (tinker-cookbook 0.6.1's ``nemotron3*`` names): Nano / Super (``nemotron3``,
``nemotron3_low_thinking``, ``nemotron3_disable_thinking``, ``nemotron3_preserve_thinking``) and the Ultra format
shared by Nemotron-3 Ultra and the 3.5 models (``nemotron3_ultra``, ``nemotron3_ultra_disable_thinking``,
``nemotron3_ultra_medium_thinking``, ``nemotron3_ultra_preserve_thinking``).

The Qwen3.5 layout (:mod:`tinkerflow.render.qwen3_5`: ChatML turns, ``<think>`` blocks, XML tool calls with one
``<parameter=...>`` each, the ``<think>\\n`` generation prefill) with the Nemotron templates' changes::

    <|im_start|>system\\n{system}[\\n\\n# Tools ... <tools>\\n<function>\\n<name>f</name>...</tools>...]<|im_end|>
    <|im_start|>user\\n{text|trim}[\\n\\n{reasoning effort: low}]<|im_end|>
    <|im_start|>assistant\\n[<think></think>]<think>\\n{thinking}\\n</think>\\n{text}[\\n<tool_call>...</tool_call>\\n]<|im_end|>
    <|im_start|>user\\n<tool_response>\\n{r1}\\n</tool_response>\\n<tool_response>\\n{r2}\\n</tool_response>\\n<|im_end|>

* every conversation starts with a system message (an empty one is added);
* tools are declared as XML after the system prompt;
* string content is trimmed, content given as parts is not;
* an assistant message whose reasoning is not written (it has none, or it is stripped from history, i.e. before
  the last user message) gets ``<think></think>`` in its header (Nano / Super add ``\\n`` when stripped reasoning
  leaves text and no tool calls);
* Nano / Super write a reasoning block as ``<think>\\n{t}\\n</think>\\n``, Ultra as ``<think>\\n{t}</think>``;
* tool calls follow a newline (Nano / Super: none after reasoning with no text), each call ends with ``\\n``;
* thinking off: the generation prompt ends with ``<think></think>``;
* low / medium effort: ``\\n\\n{reasoning effort: low}`` (``efficient`` for Ultra medium) ends the last user
  message;
* Ultra images (the Nemotron-3.5 template and processor): each image part is written ``<img>`` + an image chunk +
  ``</img>``, after a newline when the text before it (since the previous image) does not end with one, and
  labelled ``<image N>`` (counted per message) when the message holds more than one image. The number of
  positions of an image comes from the ``image_processor`` option (a ``(width, height) -> int`` callable, or a
  Hugging Face style processor with ``get_number_of_image_patches`` and ``merge_size``).

The thinking variants' generation prompt ends with ``<think>\\n`` while a turn without reasoning is written with
``<think></think>``: the template disagrees with itself, so such a trained turn keeps its weights unmasked (as in
the cookbook). The preserve-thinking variants report the extension property, as the cookbook does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import ClassVar, Final

import attrs

from tinkerflow.chat import ContentPart, ImagePart, Message, Role, TextPart, ThinkingPart, ToolSpec
from tinkerflow.render._images import ImageTokenCounter, image_size, image_token_counter
from tinkerflow.render.control import split_control
from tinkerflow.render.family import PieceList, text_of
from tinkerflow.render.qwen3_5 import _TOOLS_HEAD, Qwen35Renderer
from tinkerflow.render.records import Piece, RenderContext, RenderedMessage

__all__ = [
    "Nemotron3DisableThinkingRenderer",
    "Nemotron3LowThinkingRenderer",
    "Nemotron3PreserveThinkingRenderer",
    "Nemotron3Renderer",
    "Nemotron3UltraDisableThinkingRenderer",
    "Nemotron3UltraMediumThinkingRenderer",
    "Nemotron3UltraPreserveThinkingRenderer",
    "Nemotron3UltraRenderer",
    "nemotron3_tool_declaration",
]

LOW_EFFORT: Final = "\n\n{reasoning effort: low}"
MEDIUM_EFFORT: Final = "\n\n{reasoning effort: efficient}"


def _scalar(value: object) -> str:
    """The template's ``|string`` of a JSON value (Python's ``str``: ``True``, ``None``); JSON for containers."""
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _extra_keys(mapping: Mapping[str, object], handled: frozenset[str]) -> list[str]:
    return [f"<{key}>{_scalar(value)}</{key}>" for key, value in mapping.items() if key not in handled]


_PARAM_KEYS: Final = frozenset({"name", "type", "description", "enum"})
_SCHEMA_KEYS: Final = frozenset({"type", "properties", "required"})


def nemotron3_tool_declaration(tool: ToolSpec) -> str:
    """One tool as the Nemotron-3 templates declare it (``<function><name>..</name><parameters>..``)."""
    lines = ["<function>", f"<name>{tool.name}</name>"]
    if tool.description.strip():
        lines.append(f"<description>{tool.description.strip()}</description>")
    lines.append("<parameters>")
    schema = json.loads(tool.parameters)
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if isinstance(properties, dict):
        for name, fields in properties.items():
            fields = fields if isinstance(fields, dict) else {}
            lines += ["<parameter>", f"<name>{name}</name>"]
            if "type" in fields:
                lines.append(f"<type>{fields['type']!s}</type>")
            if "description" in fields:
                lines.append(f"<description>{str(fields['description']).strip()}</description>")
            if "enum" in fields:
                lines.append(f"<enum>{json.dumps(fields['enum'])}</enum>")
            lines += [*_extra_keys(fields, _PARAM_KEYS), "</parameter>"]
    if isinstance(schema, dict):
        lines += _extra_keys(schema, _SCHEMA_KEYS)
        if "required" in schema:
            lines.append(f"<required>{json.dumps(schema['required'])}</required>")
    lines += ["</parameters>", "</function>"]
    return "\n".join(lines)


def _reasons(content: str | tuple[ContentPart, ...]) -> bool:
    return isinstance(content, tuple) and any(isinstance(part, ThinkingPart) for part in content)


def _has_text(content: str | tuple[ContentPart, ...]) -> bool:
    """A non-empty text part (whitespace counts), as the template's test of list content."""
    return isinstance(content, tuple) and any(isinstance(part, TextPart) and part.text for part in content)


@attrs.frozen(eq=False)
class Nemotron3Renderer(Qwen35Renderer):
    """Nemotron-3 Nano / Super with full reasoning. See the module docstring."""

    name: ClassVar[str] = "nemotron3"
    supports_images: ClassVar[bool] = False
    context_free_roles: ClassVar[frozenset[str]] = frozenset()  # the effort marker goes on the last user message
    ultra: ClassVar[bool] = False
    effort_marker: ClassVar[str] = ""
    """Text appended to the last user message (low / medium effort)."""

    @property
    def has_extension_property(self) -> bool:
        return not self.strip_thinking_from_history

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        if self.effort_marker and not self.ultra:
            last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
            if last_user >= 0 and isinstance(messages[last_user].content, tuple):
                raise self._error(
                    f"messages[{last_user}].content",
                    "the low-effort marker is appended to the last user message's text, which must be a string.",
                    "give the last user message its text as a string.",
                )

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        if messages and messages[0].role == "system":
            return messages
        return (Message(role="system", content=""), *messages)

    # -- Qwen3.5 hooks ----------------------------------------------------------------------------------------

    def _strips_thinking(self, message: Message, ctx: RenderContext) -> bool:
        return self.strip_thinking_from_history and message.role == "assistant" and ctx.idx < ctx.last_user_index

    def _thinking_pieces(self, thinking: str) -> tuple[Piece, ...]:
        ids = self._ids
        if self.ultra:
            return (ids["<think>"], "\n" + thinking, ids["</think>"])
        return (ids["<think>"], "\n" + thinking + "\n", ids["</think>"], "\n")

    def _system_with_tools(self, message: Message, ctx: RenderContext) -> tuple[Piece, ...] | None:
        if not ctx.tools or ctx.idx != 0 or message.role != "system":
            return None
        system = text_of(message).lstrip()  # the template trims the whole text; the tools section ends it
        declarations = "\n".join(nemotron3_tool_declaration(tool) for tool in ctx.tools)
        out = PieceList(system + "\n\n" if system else "", _TOOLS_HEAD + declarations)
        return out.extend(self._tail_pieces).to_tuple()

    def _content_pieces(
        self, message: Message, content: str | tuple[ContentPart, ...], ctx: RenderContext
    ) -> tuple[Piece, ...]:
        if isinstance(content, str) or not any(isinstance(part, ImagePart) for part in content):
            return super()._content_pieces(message, content, ctx)
        strip = self._strips_thinking(message, ctx)
        count = sum(isinstance(part, ImagePart) for part in content)
        out = PieceList()
        number = 0
        before = ""  # the last non-empty text written since the previous image
        for part in content:
            if isinstance(part, TextPart):
                out.add(part.text)
                before = part.text or before
            elif isinstance(part, ThinkingPart):
                if not strip:
                    out.extend(self._thinking_pieces(part.thinking))
                    before = "</think>" if self.ultra else "\n"  # how the written block ends
            else:
                number += 1
                newline = "\n" if before and not before.endswith("\n") else ""
                label = f"<image {number}>" if count > 1 else ""
                out.extend(split_control(self.tokenizer, f"{newline}{label}<img>"))
                out.add(part)
                out.extend(split_control(self.tokenizer, "</img>"))
                before = ""
        return out.to_tuple()

    # -- rendering --------------------------------------------------------------------------------------------

    def _header_suffix(self, message: Message, ctx: RenderContext) -> tuple[Piece, ...]:
        """``<think></think>`` for an assistant message whose reasoning is not written."""
        historical = ctx.idx < ctx.last_user_index
        reasons = _reasons(message.content)
        if reasons and not (historical and self.strip_thinking_from_history):
            return ()
        ids = self._ids
        if not self.ultra and reasons and _has_text(message.content) and not message.tool_calls:
            return (ids["<think>"], ids["</think>"], self._runs["\n"])
        return (ids["<think>"], ids["</think>"])

    def _calls_prefix(self, content: str | tuple[ContentPart, ...]) -> str:
        if self.ultra:
            return "\n"
        return "" if _reasons(content) and not _has_text(content) else "\n"

    def _with_effort(self, message: Message, ctx: RenderContext) -> Message:
        if not self.effort_marker or message.role != "user" or ctx.idx != ctx.last_user_index:
            return message
        content = message.content
        if isinstance(content, str):
            return attrs.evolve(message, content=content + self.effort_marker)
        return attrs.evolve(message, content=(*content, TextPart(self.effort_marker)))

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        message = self._with_effort(message, ctx)
        role = message.role
        prev, following = ctx.prev_message, ctx.next_message
        header: tuple[Piece, ...]
        if role == "tool" and prev is not None and prev.role == "tool":
            header = ()  # the run's user block is still open
        else:
            header = self._header("user" if role == "tool" else role, ctx)
            if role == "assistant":
                header = (*header, *self._header_suffix(message, ctx))
        content = message.content.strip() if isinstance(message.content, str) else message.content
        out = PieceList()
        system = self._system_with_tools(message, ctx)
        out.extend(system if system is not None else self._content_pieces(message, content, ctx))
        if role == "tool":
            out = PieceList(ids["<tool_response>"], "\n").extend(out.to_tuple())
            out.add("\n").add(ids["</tool_response>"]).add("\n")
        if message.tool_calls:
            out.add(self._calls_prefix(content))
            for call in message.tool_calls:
                out.extend(self._call_pieces(call)).add("\n")
        if not (role == "tool" and following is not None and following.role == "tool"):
            out.add(ids["<|im_end|>"])
        return RenderedMessage(header=header, output=out.to_tuple())


@attrs.frozen(eq=False)
class Nemotron3PreserveThinkingRenderer(Nemotron3Renderer):
    """Nemotron-3 keeping earlier reasoning (the template's ``truncate_history_thinking=False``)."""

    strip_thinking_from_history: bool = False
    name: ClassVar[str] = "nemotron3_preserve_thinking"


@attrs.frozen(eq=False)
class Nemotron3LowThinkingRenderer(Nemotron3Renderer):
    """Nemotron-3 Super at low reasoning effort (``low_effort=True``): ``{reasoning effort: low}`` ends the last
    user message, whose content must be a string."""

    name: ClassVar[str] = "nemotron3_low_thinking"
    effort_marker: ClassVar[str] = LOW_EFFORT


@attrs.frozen(eq=False)
class Nemotron3DisableThinkingRenderer(Nemotron3Renderer):
    """Nemotron-3 with reasoning off: the generation prompt ends with ``<think></think>``."""

    name: ClassVar[str] = "nemotron3_disable_thinking"
    disables_thinking: ClassVar[bool] = True

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        return (*self._header(role, ctx), self._ids["<think>"], self._ids["</think>"])


@attrs.frozen(eq=False)
class Nemotron3UltraRenderer(Nemotron3Renderer):
    """Nemotron-3 Ultra / 3.5 format: reasoning written ``<think>\\n{t}</think>`` without separators, plain
    ``<think></think>`` for unwritten reasoning, a newline before tool calls; image parts as ``[\\n][<image N>]<img>``
    + an image chunk + ``</img>``.

    ``image_processor`` gives the number of positions of an image: a ``(width, height) -> int`` callable, or an
    image processor with ``get_number_of_image_patches`` and ``merge_size`` (``patches // merge_size ** 2``, as
    tinker-cookbook counts). Without one, image parts are a :class:`RenderError`. The image chunk keeps the
    image's bytes and format (PNG or JPEG).
    """

    image_processor: object = None
    _image_counter: list[ImageTokenCounter] = attrs.field(init=False, repr=False, factory=list)

    name: ClassVar[str] = "nemotron3_ultra"
    ultra: ClassVar[bool] = True
    supports_images: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        counter = image_token_counter(self.image_processor)
        if self.image_processor is not None and counter is None:
            raise self._error(
                "image_processor",
                f"{type(self.image_processor).__name__} is neither a (width, height) -> int callable nor an image "
                "processor with get_number_of_image_patches and merge_size.",
                "pass a function giving an image's number of positions from its width and height.",
            )
        if counter is not None:
            self._image_counter.append(counter)

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        if self._image_counter:
            return
        for index, message in enumerate(messages):
            for part_index, part in enumerate(message.content if isinstance(message.content, tuple) else ()):
                if isinstance(part, ImagePart):
                    raise self._error(
                        f"messages[{index}].content[{part_index}]",
                        "an image part, but this renderer was built without an image processor, so the image's "
                        "number of positions is unknown.",
                        "pass image_processor= (the model's image processor, or a (width, height) -> int function).",
                    )

    def image_tokens(self, image: ImagePart) -> int:
        """Number of positions ``image`` occupies (from ``image_processor``)."""
        size = image_size(image.data)
        if size is None or not self._image_counter:
            raise self._error("content", "the image's number of positions is unknown (unreadable or no processor).")
        count = int(self._image_counter[0](*size))
        if count < 1:
            raise self._error(
                "image_processor",
                f"the image processor gave {count} positions for a {size[0]}x{size[1]} image.",
                "pass an image processor that gives at least one position per image.",
            )
        return count


@attrs.frozen(eq=False)
class Nemotron3UltraPreserveThinkingRenderer(Nemotron3UltraRenderer):
    """The Ultra format keeping earlier reasoning."""

    strip_thinking_from_history: bool = False
    name: ClassVar[str] = "nemotron3_ultra_preserve_thinking"


@attrs.frozen(eq=False)
class Nemotron3UltraMediumThinkingRenderer(Nemotron3UltraRenderer):
    """The Ultra format at medium effort: ``{reasoning effort: efficient}`` ends the last user message."""

    name: ClassVar[str] = "nemotron3_ultra_medium_thinking"
    effort_marker: ClassVar[str] = MEDIUM_EFFORT


@attrs.frozen(eq=False)
class Nemotron3UltraDisableThinkingRenderer(Nemotron3UltraRenderer):
    """The Ultra format with reasoning off (the prompt ends with ``<think></think>``)."""

    name: ClassVar[str] = "nemotron3_ultra_disable_thinking"
    disables_thinking: ClassVar[bool] = True

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        return (*self._header(role, ctx), self._ids["<think>"], self._ids["</think>"])
