"""Tokenizing planned units and assembling them into a model input with one weight per position.

Every ``str`` piece is encoded on its own (all of a call's pieces in one batch call of the tokenizer), ``int`` and
``tuple[int, ...]`` pieces are ids already, and an :class:`~tinkerflow.chat.ImagePart` becomes an image chunk of
the size the renderer's ``image_tokens`` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias, cast

import numpy as np

from tinkerflow.chat import ImagePart, Message
from tinkerflow.model_input import Chunk, ImageChunk, ModelInput, TokenChunk
from tinkerflow.render.control import encode_control_text
from tinkerflow.render.plan import Unit
from tinkerflow.render.renderer import Renderer
from tinkerflow.tokenizers import Tokenizer

__all__ = ["Segment", "assemble", "encode_flat", "encode_units", "prefill_tokens"]


Segment: TypeAlias = list[int] | ImagePart
"""A run of token ids, or an image, in an encoded unit that holds an image."""


def encode_units(renderer: Renderer, units: Sequence[Unit]) -> list[list[Segment]] | list[list[int]]:
    """Encode every unit; text-only units come back as flat id lists, others as segment lists."""
    texts = [piece for unit in units for piece in unit if type(piece) is str and piece]
    encoded = iter(renderer.tokenizer.encode_batch(texts)) if texts else iter(())
    has_images = renderer.supports_images and any(type(piece) is ImagePart for unit in units for piece in unit)
    if not has_images:
        flat: list[list[int]] = []
        for unit in units:
            ids: list[int] = []
            for piece in unit:
                if isinstance(piece, int):
                    ids.append(piece)
                elif isinstance(piece, tuple):
                    ids.extend(piece)
                elif piece:
                    ids.extend(next(encoded))
            flat.append(ids)
        return flat
    segmented: list[list[Segment]] = []
    for unit in units:
        segments: list[Segment] = []
        current: list[int] = []
        for piece in unit:
            if isinstance(piece, int):
                current.append(piece)
            elif isinstance(piece, tuple):
                current.extend(piece)
            elif isinstance(piece, ImagePart):
                if current:
                    segments.append(current)
                    current = []
                segments.append(piece)
            elif piece:
                current.extend(next(encoded))
        if current:
            segments.append(current)
        segmented.append(segments)
    return segmented


def _image_tokens(renderer: Renderer, image: ImagePart) -> int:
    counter = getattr(renderer, "image_tokens", None)
    if counter is None:  # pragma: no cover - validate() rejects images for renderers without support
        raise renderer._error("content", "images are not supported.")
    return int(counter(image))


def assemble(
    renderer: Renderer, encoded: list[list[Segment]] | list[list[int]], unit_weights: Sequence[float]
) -> tuple[ModelInput, np.ndarray, list[int]]:
    """Chunks, weights and (for text-only inputs) the flat token list from encoded units; adjacent token runs
    merge into one chunk."""
    chunks: list[Chunk] = []
    tokens: list[int] = []
    lengths: list[int] = []
    for unit in encoded:
        if unit and not isinstance(unit[0], int):
            length = 0
            for segment in unit:
                if isinstance(segment, ImagePart):
                    if tokens:
                        chunks.append(TokenChunk(tokens_T=tokens))
                        tokens = []
                    count = _image_tokens(renderer, segment)
                    chunks.append(ImageChunk(data=segment.data, format=segment.format, expected_tokens=count))
                    length += count
                else:
                    tokens.extend(segment)
                    length += len(segment)
            lengths.append(length)
        else:
            tokens.extend(cast("list[int]", unit))
            lengths.append(len(unit))
    if tokens or not chunks:
        chunks.append(TokenChunk(tokens_T=tokens))
    weights = np.repeat(np.asarray(unit_weights, dtype=np.float32), np.asarray(lengths, dtype=np.int64))
    return ModelInput(chunks=tuple(chunks)), weights, tokens


def encode_flat(tokenizer: Tokenizer, units: Sequence[Unit]) -> tuple[list[int], list[int]]:
    """Text-only units encoded in one batch call: all tokens concatenated, and each unit's length."""
    texts = [piece for unit in units for piece in unit if type(piece) is str and piece]
    encoded = tokenizer.encode_batch(texts) if texts else []
    tokens: list[int] = []
    lengths: list[int] = []
    extend, append = tokens.extend, tokens.append
    position = 0
    for unit in units:
        start = len(tokens)
        for piece in unit:
            if type(piece) is tuple:
                extend(piece)
            elif type(piece) is int:
                append(piece)
            elif piece:
                extend(encoded[position])
                position += 1
        lengths.append(len(tokens) - start)
    return tokens, lengths


def prefill_tokens(renderer: Renderer, messages: tuple[Message, ...], prefill: str | None) -> list[int]:
    """The ids a generation prompt ends with: the renderer's prefill text, control-token spellings as tokens."""
    text = renderer.generation_prefill(messages, prefill)
    if not text:
        return []
    return encode_control_text(renderer.tokenizer, text, renderer.control_regex)
