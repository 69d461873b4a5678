"""Helpers of the Nemotron-3 Ultra image conformance test (test-only): a deterministic image processor both
renderers are given, the deterministic placement of 1-3 images in user messages, and a test vocabulary with
``<img>`` / ``</img>`` as special tokens."""

from __future__ import annotations

import functools
import io
import math
import random
import zlib
from pathlib import Path
from typing import Any

import attrs

from tinkerflow.chat import ContentPart, Conversation, ImagePart, Message, TextPart
from tinkerflow.shell.io.tokenizers import load_tokenizer
from tinkerflow.tokenizers import Tokenizer

from ._v061 import qwen3_vocabulary_with

IMG_CONTROL = ("<img>", "</img>")


@attrs.frozen
class PatchBudgetProcessor:
    """A deterministic stand-in for a dynamic-resolution image processor (as Nemotron-3.5's): 16-pixel patches,
    each side rounded up to an even number of patches, scaled down to at most ``max_patches`` patches; tokens are
    patches / ``merge_size ** 2``. It has the Hugging Face method the cookbook calls
    (``get_number_of_image_patches``) and is callable as ``(width, height) -> tokens``."""

    patch_size: int = 16
    merge_size: int = 2
    max_patches: int = 1024

    def get_number_of_image_patches(self, height: int, width: int, images_kwargs: dict[str, Any] | None = None) -> int:
        scale = min(1.0, math.sqrt(self.max_patches * self.patch_size**2 / (width * height)))
        sides = [max(1, math.ceil(side * scale / self.patch_size)) for side in (width, height)]
        sides = [side + side % self.merge_size for side in sides]
        return sides[0] * sides[1]

    def __call__(self, width: int, height: int) -> int:
        return self.get_number_of_image_patches(height, width) // self.merge_size**2


@functools.cache
def _png(width: int, height: int, shade: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 255 - shade, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def with_images(conversation: Conversation) -> Conversation:
    """``conversation`` with 1-3 PNG images placed in at least one user message (each chosen user message gets its
    text as parts and the images at random positions among them), chosen by a seed derived from the conversation
    (so hypothesis' derandomized run stays reproducible). A conversation without a user message gets one first."""
    rng = random.Random(zlib.crc32(repr(conversation).encode()))
    messages = list(conversation.messages)
    users = [index for index, message in enumerate(messages) if message.role == "user"]
    if not users:
        start = 1 if messages and messages[0].role == "system" else 0
        messages.insert(start, Message(role="user", content=""))
        users = [start]
    chosen = {rng.choice(users)} | {index for index in users if rng.random() < 0.3}
    for index in sorted(chosen):
        message = messages[index]
        content = message.content
        parts: list[ContentPart] = (
            ([TextPart(content)] if content else []) if isinstance(content, str) else list(content)
        )
        for _ in range(rng.randint(1, 3)):
            size = (rng.randint(8, 700), rng.randint(8, 700))
            image = ImagePart(_png(size[0], size[1], rng.randint(0, 255)))
            parts.insert(rng.randint(0, len(parts)), image)
        messages[index] = attrs.evolve(message, content=tuple(parts))
    return attrs.evolve(conversation, messages=tuple(messages))


@functools.cache
def img_tokenizer_dir() -> Path:
    """The offline Qwen3 vocabulary plus ``<img>`` and ``</img>`` as special tokens (ids 151669, 151670)."""
    return qwen3_vocabulary_with(IMG_CONTROL, "nemotron-img")


@functools.cache
def img_tokenizers() -> tuple[Tokenizer, Any]:
    """The ``<img>`` test vocabulary as a tinkerflow tokenizer and as a transformers tokenizer (for the cookbook)."""
    from transformers import AutoTokenizer

    folder = img_tokenizer_dir()
    return load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder), clean_up_tokenization_spaces=False)
