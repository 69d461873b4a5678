"""Qwen3-VL renderers: ``qwen3_vl`` and ``qwen3_vl_instruct``. Text is written as the Qwen3 renderers write it
(thinking as ``<think>...</think>``, without the frame); each image part becomes an image chunk between
``<|vision_start|>`` and ``<|vision_end|>``, its size in tokens given by Qwen3-VL's resize rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import attrs

from tinkerflow.chat import ImagePart, Message, TextPart, ThinkingPart, ToolSpec
from tinkerflow.render._images import image_size, qwen_vl_image_tokens
from tinkerflow.render.family import PieceList
from tinkerflow.render.qwen3 import Qwen3Renderer
from tinkerflow.render.records import RenderContext, RenderedMessage

__all__ = ["Qwen3VLInstructRenderer", "Qwen3VLRenderer"]


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
    keeps_text_after_empty_thinking: ClassVar[bool] = True

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        for message in messages:  # plain-text chats (the common case) have no image to check
            if type(message.content) is not str:
                break
        else:
            return
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
        for call in message.tool_calls:
            out.add("\n").extend(self._tool_call_pieces(call))
        out.add(ids["<|im_end|>"])
        return RenderedMessage(header=self._header(role, ctx), output=out.to_tuple())


@attrs.frozen(eq=False)
class Qwen3VLInstructRenderer(Qwen3VLRenderer):
    """Qwen3-VL instruct models (no thinking)."""

    name: ClassVar[str] = "qwen3_vl_instruct"
    frames_thinking: ClassVar[bool] = False
