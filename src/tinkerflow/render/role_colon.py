"""The ``role_colon`` renderer: a plain-text format for base models (any tokenizer)::

    [BOS]System: {system}\\n\\nUser: {text}\\n\\nAssistant: {text}\\n\\nUser:

The stop sequence is the string ``"\\n\\nUser:"``; its ``"User:"`` half is the next message's header, so a
supervised example ending with an assistant message gets a trailing ``"User:"`` (the *stop overlap*, weighted
like that message's output). A sampled response may also end with the tokenizer's EOS token
(``Termination.EOS``).
"""

from __future__ import annotations

from typing import ClassVar, Final

import attrs

from tinkerflow.chat import Message, Role
from tinkerflow.render.family import text_of
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, StopSequences, Termination
from tinkerflow.render.renderer import Renderer

__all__ = ["RoleColonRenderer"]

_PREFIX: Final[str] = " "
_SUFFIX: Final[str] = "\n\n"
_STOP: Final[str] = "\n\nUser:"


@attrs.frozen(eq=False)
class RoleColonRenderer(Renderer):
    """``Role: content`` turns separated by blank lines. See the module docstring."""

    _headers: dict[str, tuple[int, ...]] = attrs.field(init=False, repr=False, factory=dict)

    name: ClassVar[str] = "role_colon"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for role in self.roles:
            self._headers[role] = tuple(self.tokenizer.encode(role.capitalize() + ":"))

    @property
    def has_extension_property(self) -> bool:
        return True

    def bos_tokens(self) -> tuple[int, ...]:
        bos = self.tokenizer.bos_token_id
        return () if bos is None else (bos,)

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        overlap: tuple[Piece, ...] = (self._headers["user"],) if message.role == "assistant" else ()
        return RenderedMessage(
            header=(self._headers[message.role],),
            output=(_PREFIX + text_of(message) + _SUFFIX,),
            stop_overlap=overlap,
        )

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        return (self._headers.get(role) or tuple(self.tokenizer.encode(role.capitalize() + ":")),)

    def stop_sequences(self) -> StopSequences:
        return StopSequences(strings=(_STOP,))

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        eos = self.tokenizer.eos_token_id
        ended_with_eos = eos is not None and bool(tokens) and tokens[-1] == eos
        if ended_with_eos:
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens)
        pieces = text.split(_STOP)
        content = pieces[0].removeprefix(_PREFIX).removesuffix(_SUFFIX)
        message = Message(role="assistant", content=content)
        if len(pieces) == 1:
            return ParsedResponse(message, Termination.EOS if ended_with_eos else Termination.MALFORMED)
        if len(pieces) == 2 and not ended_with_eos:
            return ParsedResponse(message, Termination.STOP_SEQUENCE)
        return ParsedResponse(message, Termination.MALFORMED)
