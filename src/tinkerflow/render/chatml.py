"""ChatML renderers: ``chatml`` (plain) and ``smollm2`` (SmolLM2-Instruct: ChatML plus its default system
prompt, as the model's own template writes it)::

    <|im_start|>system\\n{system}<|im_end|>
    <|im_start|>user\\n{text}<|im_end|>
    <|im_start|>assistant\\n{text}<|im_end|>

Headers after the first start with the ``\\n`` that ends the previous turn (as the Qwen3 renderers do), so a
supervised example ends at ``<|im_end|>``, the stop token. No tools, no thinking.
"""

from __future__ import annotations

from typing import ClassVar, Final

import attrs

from tinkerflow.chat import Message, Role, ToolSpec
from tinkerflow.render.family import chatml_header, chatml_headers, control_ids, parse_at_stop_token, text_of
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, StopSequences
from tinkerflow.render.renderer import Renderer

__all__ = ["SMOLLM2_SYSTEM_PROMPT", "ChatMLRenderer", "SmolLM2Renderer"]

#: The system prompt SmolLM2-Instruct's chat template inserts when a conversation has none.
SMOLLM2_SYSTEM_PROMPT: Final[str] = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@attrs.frozen(eq=False)
class ChatMLRenderer(Renderer):
    """``<|im_start|>role\\ncontent<|im_end|>`` turns. ``default_system_prompt`` (when set) is inserted before a
    conversation that does not start with a system message."""

    default_system_prompt: str | None = None
    _ids: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)
    _headers: dict[tuple[str, bool], tuple[int, ...]] = attrs.field(init=False, repr=False, factory=dict)

    name: ClassVar[str] = "chatml"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._ids.update(control_ids(self.tokenizer, ("<|im_start|>", "<|im_end|>")))
        self._headers.update(chatml_headers(self.tokenizer, self._ids["<|im_start|>"], self.roles))

    @property
    def has_extension_property(self) -> bool:
        return True

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        if self.default_system_prompt is None or not messages or messages[0].role == "system":
            return messages
        return (Message(role="system", content=self.default_system_prompt), *messages)

    def _header(self, role: str, index: int) -> tuple[Piece, ...]:
        later = index > 0
        return (
            self._headers.get((role, later))
            or chatml_header(self.tokenizer, self._ids["<|im_start|>"], role, later=later),
        )

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        return RenderedMessage(
            header=self._header(message.role, ctx.idx), output=(text_of(message), self._ids["<|im_end|>"])
        )

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        return self._header(role, ctx.idx)

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=(self._ids["<|im_end|>"],))

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        return parse_at_stop_token(self, tokens, self._ids["<|im_end|>"])


@attrs.frozen(eq=False)
class SmolLM2Renderer(ChatMLRenderer):
    """SmolLM2-Instruct (the local backend's embedded model): ChatML with its default system prompt."""

    default_system_prompt: str | None = SMOLLM2_SYSTEM_PROMPT

    name: ClassVar[str] = "smollm2"
