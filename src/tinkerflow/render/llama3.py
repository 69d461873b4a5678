"""Llama 3 renderer (``llama3``)::

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n{text}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n{text}<|eot_id|>

As tinker-cookbook 0.6.1's: no "Cutting Knowledge Date" system preamble (the Llama 3.1+ templates add one; write
it yourself if you want it), content not trimmed, no tool calling (Llama 3's tool format is bare JSON, which
cannot be told apart from a JSON answer).
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from tinkerflow.chat import Message, Role, ToolSpec
from tinkerflow.render.family import parse_at_stop_token, text_of
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, StopSequences
from tinkerflow.render.renderer import Renderer

__all__ = ["Llama3Renderer"]


@attrs.frozen(eq=False)
class Llama3Renderer(Renderer):
    """Llama 3 / 3.1 / 3.2 / 3.3 instruct format. See the module docstring."""

    _headers: dict[str, tuple[int, ...]] = attrs.field(init=False, repr=False, factory=dict)
    _eot: list[int] = attrs.field(init=False, repr=False, factory=list)
    _bos: list[int] = attrs.field(init=False, repr=False, factory=list)
    _header_units: dict[str, tuple[Piece, ...]] = attrs.field(init=False, repr=False, factory=dict)

    name: ClassVar[str] = "llama3"
    context_free_roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant"})

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._eot.append(self.tokenizer.token_id("<|eot_id|>"))
        self._bos.append(self.tokenizer.token_id("<|begin_of_text|>"))
        start, end = self.tokenizer.token_id("<|start_header_id|>"), self.tokenizer.token_id("<|end_header_id|>")
        blank = self.tokenizer.encode("\n\n")
        for role in self.roles:
            self._headers[role] = (start, *self.tokenizer.encode(role), end, *blank)
            self._header_units[role] = (self._headers[role],)

    @property
    def has_extension_property(self) -> bool:
        return True

    def bos_tokens(self) -> tuple[int, ...]:
        return tuple(self._bos)

    def render_units(
        self, messages: tuple[Message, ...], last_user_index: int, tools: tuple[ToolSpec, ...]
    ) -> list[tuple[Piece, ...]] | None:
        """Header and output of every message, as :meth:`render_message` writes them (plain-text messages;
        ``None`` when one has parts)."""
        if type(self).render_message is not Llama3Renderer.render_message:
            return None  # a subclass that writes messages its own way
        headers, eot = self._header_units, self._eot[0]
        units: list[tuple[Piece, ...]] = []
        append = units.append
        for message in messages:
            content = message.content
            if type(content) is not str:
                return None
            append(headers[message.role])
            append((content, eot))
        return units

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        return RenderedMessage(header=(self._headers[message.role],), output=(text_of(message), self._eot[0]))

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        return (self._headers[role],) if role in self._headers else self.render_message(Message(role=role), ctx).header

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=(self._eot[0],))

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        return parse_at_stop_token(self, tokens, self._eot[0])
