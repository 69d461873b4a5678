"""Image helpers for vision-language renderers (private, pure): image size from the encoded bytes, and the
Qwen2/3-VL resize rule that fixes how many tokens an image occupies, and caller-supplied token counters
(:class:`ImageTokenCounter`, :func:`image_token_counter`) for renderers whose image processor is not built in."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["ImageTokenCounter", "image_size", "image_token_counter", "qwen_vl_image_tokens", "smart_resize"]


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from a PNG or JPEG header, or ``None`` when the bytes are neither."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:2] == b"\xff\xd8":
        index = 2
        while index + 4 <= len(data):
            if data[index] != 0xFF:
                index += 1
                continue
            marker = data[index + 1]
            if marker == 0xFF:
                index += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                index += 2
                continue
            (length,) = struct.unpack(">H", data[index + 2 : index + 4])
            is_frame = 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)
            if is_frame and index + 9 <= len(data):
                height, width = struct.unpack(">HH", data[index + 5 : index + 9])
                return int(width), int(height)
            index += 2 + length
    return None


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's ``smart_resize``: both sides multiples of ``factor``, area within ``[min_pixels, max_pixels]``,
    aspect ratio kept as closely as possible."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_vl_image_tokens(
    width: int, height: int, *, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int
) -> int:
    """Number of positions an image of ``width`` x ``height`` occupies in a Qwen2/3-VL model input."""
    resized_h, resized_w = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    return (resized_h // patch_size) * (resized_w // patch_size) // (merge_size * merge_size)


@runtime_checkable
class ImageTokenCounter(Protocol):
    """How many positions an image of ``width`` x ``height`` pixels occupies (a model's image processor rule)."""

    def __call__(self, width: int, height: int) -> int: ...


def _patches_counter(processor: object) -> ImageTokenCounter | None:
    """A counter over a Hugging Face style processor's ``get_number_of_image_patches(height, width,
    images_kwargs)`` divided by ``merge_size ** 2`` (as tinker-cookbook counts), or ``None`` without one."""
    patches = getattr(processor, "get_number_of_image_patches", None)
    merge_size = getattr(processor, "merge_size", None)
    if not callable(patches) or not isinstance(merge_size, int) or merge_size < 1:
        return None
    count: Callable[..., int] = patches

    def counter(width: int, height: int) -> int:
        value = count(height, width, images_kwargs={})
        return int(value) // (merge_size * merge_size)

    return counter


def image_token_counter(source: object) -> ImageTokenCounter | None:
    """``source`` as an :class:`ImageTokenCounter`, or ``None`` when it is none: an object with
    ``get_number_of_image_patches`` and an integer ``merge_size`` (a Hugging Face image processor, as
    tinker-cookbook's renderers take) counts ``patches // merge_size ** 2``; any other callable is called as
    ``source(width, height)``."""
    if source is None:
        return None
    counter = _patches_counter(source)
    if counter is not None:
        return counter
    return source if isinstance(source, ImageTokenCounter) else None
