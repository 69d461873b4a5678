"""Model inputs: a sequence of token chunks and image chunks, as the Tinker service takes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias, cast

import attrs
import numpy as np

from tinkerflow._validate import require_type, token_ids
from tinkerflow.arrays import Int64_T, frozen_array
from tinkerflow.chat import ImageFormat, check_image, image_bytes_repr
from tinkerflow.errors import ValidationError

__all__ = ["Chunk", "ImageChunk", "ModelInput", "TokenChunk"]


def _tokens_converter(value: object) -> np.ndarray:
    return token_ids(value, "TokenChunk", "tokens_T")


@attrs.frozen(eq=False)
class TokenChunk:
    """A run of token ids (int64, non-negative, read-only; booleans are refused, not read as 0 and 1)."""

    tokens_T: Int64_T = attrs.field(converter=_tokens_converter)

    def __attrs_post_init__(self) -> None:
        if self.tokens_T.size and int(self.tokens_T.min()) < 0:
            raise ValidationError("TokenChunk", "tokens_T", "holds a negative token id.", "token ids are >= 0.")

    @property
    def length(self) -> int:
        return int(self.tokens_T.shape[0])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenChunk) and np.array_equal(self.tokens_T, other.tokens_T)

    def __hash__(self) -> int:
        return hash(self.tokens_T.tobytes())


@attrs.frozen
class ImageChunk:
    """An encoded image that occupies ``expected_tokens`` positions of the model input."""

    data: bytes = attrs.field(repr=image_bytes_repr)
    format: ImageFormat
    expected_tokens: int

    def __attrs_post_init__(self) -> None:
        check_image(self.data, self.format, "ImageChunk")
        require_type(self.expected_tokens, int, "ImageChunk", "expected_tokens")
        if self.expected_tokens <= 0:
            raise ValidationError(
                "ImageChunk",
                "expected_tokens",
                f"must be positive, got {self.expected_tokens}.",
                "give the number of positions the image occupies for this model.",
            )

    @property
    def length(self) -> int:
        return self.expected_tokens


Chunk: TypeAlias = TokenChunk | ImageChunk


def _chunks_converter(value: object) -> tuple[Chunk, ...]:
    if isinstance(value, list):
        return tuple(cast("list[Chunk]", value))
    return cast("tuple[Chunk, ...]", value)


@attrs.frozen
class ModelInput:
    """What the model reads: chunks of tokens and images, in order. ``length`` counts every position."""

    chunks: tuple[Chunk, ...] = attrs.field(converter=_chunks_converter)

    def __attrs_post_init__(self) -> None:
        require_type(self.chunks, tuple, "ModelInput", "chunks")
        for index, chunk in enumerate(self.chunks):
            require_type(chunk, (TokenChunk, ImageChunk), "ModelInput", f"chunks[{index}]")

    @classmethod
    def from_tokens(cls, tokens_T: Sequence[int] | np.ndarray) -> ModelInput:
        """A model input of one token chunk."""
        return cls(chunks=(TokenChunk(tokens_T=tokens_T),))

    @classmethod
    def empty(cls) -> ModelInput:
        return cls(chunks=())

    @property
    def length(self) -> int:
        return sum(chunk.length for chunk in self.chunks)

    @property
    def has_images(self) -> bool:
        return any(isinstance(chunk, ImageChunk) for chunk in self.chunks)

    def to_tokens(self) -> np.ndarray:
        """All token ids concatenated (read-only int64). Raises if the input holds an image chunk."""
        token_chunks: list[np.ndarray] = []
        for index, chunk in enumerate(self.chunks):
            if isinstance(chunk, ImageChunk):
                raise ValidationError(
                    "ModelInput",
                    f"chunks[{index}]",
                    "is an image; a token array cannot represent it.",
                    "iterate over chunks instead of calling to_tokens().",
                )
            token_chunks.append(chunk.tokens_T)
        if len(token_chunks) == 1:
            return token_chunks[0]
        if not token_chunks:
            return frozen_array(np.zeros(0, dtype=np.int64))
        return frozen_array(np.concatenate(token_chunks))

    def append_tokens(self, tokens_T: Sequence[int] | np.ndarray) -> ModelInput:
        """A new model input with ``tokens_T`` appended (merged into the last chunk when it holds tokens)."""
        if self.chunks and isinstance(self.chunks[-1], TokenChunk):
            extra_T = token_ids(tokens_T, "ModelInput.append_tokens", "tokens_T")
            merged = np.concatenate([self.chunks[-1].tokens_T, extra_T])
            return ModelInput(chunks=(*self.chunks[:-1], TokenChunk(tokens_T=merged)))
        return ModelInput(chunks=(*self.chunks, TokenChunk(tokens_T=tokens_T)))
