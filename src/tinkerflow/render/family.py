"""Building blocks shared by renderer families: a piece builder, a message's visible text, control-token ids,
ChatML-style headers, and parsing a response that ends at one stop token.

A family module imports what it needs from here, :mod:`tinkerflow.render.records` and
:mod:`tinkerflow.render.renderer`; nothing here knows about a particular family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from tinkerflow.chat import Message, TextPart
from tinkerflow.render.records import ParsedResponse, Piece, Termination
from tinkerflow.render.renderer import Renderer
from tinkerflow.tokenizers import Tokenizer

__all__ = [
    "PieceList",
    "chatml_header",
    "chatml_headers",
    "control_ids",
    "parse_at_stop_token",
    "split_at_stop_token",
    "text_of",
]


class PieceList:
    """A builder of pieces: adjacent text is merged (so it is encoded as one string, as a chat template's text
    between two control tokens is), token ids and images are kept as they are."""

    __slots__ = ("_pieces",)

    def __init__(self, *pieces: Piece) -> None:
        self._pieces: list[Piece] = []
        for piece in pieces:
            self.add(piece)

    def add(self, piece: Piece) -> PieceList:
        if type(piece) is str:
            if not piece:
                return self
            last = self._pieces[-1] if self._pieces else None
            if isinstance(last, str):
                self._pieces[-1] = last + piece
                return self
        self._pieces.append(piece)
        return self

    def extend(self, pieces: Sequence[Piece]) -> PieceList:
        for piece in pieces:
            self.add(piece)
        return self

    def to_tuple(self) -> tuple[Piece, ...]:
        return tuple(self._pieces)


def text_of(message: Message) -> str:
    """Visible text of a message (text parts joined; thinking and images excluded)."""
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content if isinstance(part, TextPart))


def control_ids(tokenizer: Tokenizer, spellings: Iterable[str]) -> dict[str, int]:
    """The id of each control-token spelling (``TokenizerError`` for one the vocabulary lacks)."""
    return {text: tokenizer.token_id(text) for text in spellings}


def chatml_header(tokenizer: Tokenizer, im_start: int, role: str, *, later: bool) -> tuple[int, ...]:
    """``<|im_start|>{role}\\n`` as ids; a header after the first message starts with the ``\\n`` that ends the
    previous turn (``later``), so a turn ends at ``<|im_end|>``, the stop token."""
    body = (im_start, *tokenizer.encode(f"{role}\n"))
    return (*tokenizer.encode("\n"), *body) if later else body


def chatml_headers(
    tokenizer: Tokenizer, im_start: int, roles: Iterable[str]
) -> dict[tuple[str, bool], tuple[int, ...]]:
    """:func:`chatml_header` of each role, keyed by ``(role, later)``, encoded once when a renderer is built."""
    return {
        (role, later): chatml_header(tokenizer, im_start, role, later=later)
        for role in roles
        for later in (False, True)
    }


def split_at_stop_token(renderer: Renderer, tokens: list[int], stop_token: int) -> tuple[list[int], Termination]:
    """Tokens before the single stop token and ``STOP_SEQUENCE``; all tokens and ``MALFORMED`` without one.

    Raises :class:`~tinkerflow.render.records.RenderError` for two or more stop tokens.
    """
    count = tokens.count(stop_token)
    if count == 0:
        return tokens, Termination.MALFORMED
    if count > 1:
        raise renderer._error(
            "tokens_T",
            f"holds {count} stop tokens ({stop_token}); a sampled response ends at its first.",
            "sample with the renderer's stop_sequences().",
        )
    return tokens[: tokens.index(stop_token)], Termination.STOP_SEQUENCE


def parse_at_stop_token(
    renderer: Renderer,
    tokens: list[int],
    stop_token: int,
    parse_body: Callable[[list[int]], Message] | None = None,
) -> ParsedResponse:
    """A response that ends at ``stop_token``, parsed: the body before it goes to ``parse_body`` (the family's
    thinking / tool-call parser; plain decoded text without one). A response without the stop token is
    ``MALFORMED`` and its tokens are decoded as plain text."""
    body, termination = split_at_stop_token(renderer, tokens, stop_token)
    if parse_body is None or termination is Termination.MALFORMED:
        return ParsedResponse(Message(role="assistant", content=renderer.tokenizer.decode(body)), termination)
    return ParsedResponse(parse_body(body), termination)
