"""Qwen3.8 renderers: ``qwen3_8_xhigh_reasoning`` (the template's default), ``qwen3_8_medium_reasoning``,
``qwen3_8_low_reasoning`` and ``qwen3_8_disable_thinking``.

The Qwen3.5 layout (:mod:`tinkerflow.render.qwen3_5`) with the Qwen3.8 template's changes, as tinker-cookbook 0.6.1
writes them:

* the reasoning effort's instruction sentence (none for ``medium`` or with thinking off) opens the system message,
  before the tools section; a conversation without a system message gets one holding just the sentence;
* a system message is trimmed, and an empty one is dropped (when no sentence or tools go into it);
* earlier reasoning is kept by default (``strip_thinking_from_history=False``): every assistant message that did
  not reason gets the empty block ``<think>\\n\\n</think>\\n\\n``; with stripping on, only messages up to the last
  user message lose it;
* non-string tool-call arguments are JSON (``true``, ``null``), strings as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar, Final

import attrs

from tinkerflow.chat import Message, TextPart, ThinkingPart, ToolSpec
from tinkerflow.render.qwen3_5 import Qwen35Renderer
from tinkerflow.render.records import RenderContext, RenderError

__all__ = [
    "REASONING_EFFORT_INSTRUCTIONS",
    "Qwen38DisableThinkingRenderer",
    "Qwen38LowReasoningRenderer",
    "Qwen38MediumReasoningRenderer",
    "Qwen38Renderer",
]

REASONING_EFFORT_INSTRUCTIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "xhigh": (
            "Reasoning effort is set to xhigh. Please think carefully through the task, validate key assumptions, "
            "consider plausible alternatives, and prioritize correctness, consistency, and clarity in the final "
            "answer."
        ),
        "medium": "",
        "low": (
            "Reasoning effort is set to low. Keep your thinking brief and focused, moving directly to the "
            "conclusion without unnecessary elaboration."
        ),
    }
)
"""The sentence each reasoning effort puts at the start of the system message (``medium``: none)."""


@attrs.frozen(eq=False)
class Qwen38Renderer(Qwen35Renderer):
    """Qwen3.8 with thinking at a reasoning effort (``"xhigh"`` default, ``"medium"``, ``"low"``)."""

    strip_thinking_from_history: bool = False
    reasoning_effort: str = "xhigh"

    name: ClassVar[str] = "qwen3_8_xhigh_reasoning"

    def __attrs_post_init__(self) -> None:
        if self.reasoning_effort not in REASONING_EFFORT_INSTRUCTIONS:
            raise RenderError(
                f"render[{self.name}]",
                "reasoning_effort",
                f"{self.reasoning_effort!r} is not a Qwen3.8 reasoning effort.",
                f"use one of {', '.join(REASONING_EFFORT_INSTRUCTIONS)}.",
            )
        super().__attrs_post_init__()

    @property
    def instructions(self) -> str:
        """The sentence written at the start of the system message ("" for ``medium`` or thinking off)."""
        return "" if self.disables_thinking else REASONING_EFFORT_INSTRUCTIONS[self.reasoning_effort]

    def _strips_thinking(self, message: Message, ctx: RenderContext) -> bool:
        return self.strip_thinking_from_history and message.role == "assistant" and ctx.idx <= ctx.last_user_index

    def _empty_block_in_header(self, message: Message, ctx: RenderContext) -> bool:
        if self.strip_thinking_from_history and ctx.idx <= ctx.last_user_index:
            return False
        return not (isinstance(message.content, tuple) and any(isinstance(p, ThinkingPart) for p in message.content))

    def _argument_text(self, value: object) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    def _system_prefix(self) -> str:
        return self.instructions + "\n\n" if self.instructions else ""

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        messages = super().prepare(messages, tools)
        if tools:
            return messages  # the system message carries the tools: the sentence is written with them
        instructions = self.instructions
        if not messages or messages[0].role != "system":
            if not instructions:
                return messages
            flagged = any(message.trainable is not None for message in messages)
            synthetic = Message(role="system", content=instructions, trainable=False if flagged else None)
            return (synthetic, *messages)
        first, rest = messages[0], messages[1:]
        content = first.content
        if isinstance(content, tuple):
            if not all(isinstance(part, TextPart) for part in content):
                if not instructions:
                    return messages
                head = content[0] if content else None
                if isinstance(head, TextPart) and head.text.startswith(instructions):
                    return messages
                return (attrs.evolve(first, content=(TextPart(instructions + "\n\n"), *content)), *rest)
            content = "".join(part.text for part in content if isinstance(part, TextPart))
        text = content.strip()
        if not text and not instructions:
            return rest
        if instructions and not (text == instructions or text.startswith(instructions + "\n\n")):
            text = instructions + "\n\n" + text if text else instructions
        return (attrs.evolve(first, content=text), *rest)


@attrs.frozen(eq=False)
class Qwen38MediumReasoningRenderer(Qwen38Renderer):
    """Qwen3.8 at medium reasoning effort (no instruction sentence)."""

    reasoning_effort: str = "medium"
    name: ClassVar[str] = "qwen3_8_medium_reasoning"


@attrs.frozen(eq=False)
class Qwen38LowReasoningRenderer(Qwen38Renderer):
    """Qwen3.8 at low reasoning effort."""

    reasoning_effort: str = "low"
    name: ClassVar[str] = "qwen3_8_low_reasoning"


@attrs.frozen(eq=False)
class Qwen38DisableThinkingRenderer(Qwen38Renderer):
    """Qwen3.8 with thinking off: the generation prompt closes the thinking block, no effort sentence; history
    keeps its (empty) blocks."""

    name: ClassVar[str] = "qwen3_8_disable_thinking"
    disables_thinking: ClassVar[bool] = True
