"""A byte-level :class:`tinkerflow.render.Renderer` for the fake backend's tests (no vocabulary files, no torch).

Each message is ``role: text`` as UTF-8 bytes followed by the end-of-turn token 256; the whole message is its
*output* (weighted by the train-on mode), and a generation prompt ends with ``assistant: ``. Sampled tokens parse
back to the bytes below 256; a response that ends on token 256 ended on the stop sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Final

import attrs
import numpy as np

from tinkerflow.chat import Message, Role
from tinkerflow.render import (
    ParsedResponse,
    Piece,
    RenderContext,
    RenderedMessage,
    Renderer,
    StopSequences,
    Termination,
)

__all__ = ["EOT", "ByteRenderer", "ByteTokenizer"]

#: The end-of-turn token.
EOT: Final = 256


class ByteTokenizer:
    """Token ``b`` is byte ``b`` (0..255); 256 is the added ``<eot>`` token; 512 ids in all.

    Other byte vocabularies subclass it, changing the class attributes (``ADDED`` holds the added tokens); ids from
    256 up decode to nothing."""

    name = "bytes"
    vocab_size = 512
    bos_token_id: int | None = None
    eos_token_id = EOT
    ADDED: ClassVar[Mapping[str, int]] = {"<eot>": EOT}

    @property
    def added_tokens(self) -> Mapping[str, int]:
        return dict(self.ADDED)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
        return bytes(int(token) for token in tokens if int(token) < 256).decode("utf-8", errors="replace")

    def token_id(self, token: str) -> int:
        return self.ADDED[token]  # a KeyError naming the token for any other


def _text(message: Message) -> str:
    return message.text()


@attrs.frozen(eq=False)
class ByteRenderer(Renderer):
    """``role: text`` lines as UTF-8 bytes, each message ended by token 256 (see the module docstring)."""

    tokenizer: ByteTokenizer = attrs.field(factory=ByteTokenizer, repr=False)  # type: ignore[assignment]  # narrower default

    name: ClassVar[str] = "bytes"

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        return RenderedMessage(output=(f"{message.role}: {_text(message)}", EOT))

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        return (f"{role}: ",)

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=(EOT,))

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        message = Message(role="assistant", content=self.tokenizer.decode(tokens))
        ended = bool(tokens) and tokens[-1] == EOT
        return ParsedResponse(message, Termination.STOP_SEQUENCE if ended else Termination.MALFORMED)
