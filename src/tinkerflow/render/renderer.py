"""The renderer value type: :class:`Renderer`, the base every family derives from.

A family subclass says how *one* message looks, given its position (:class:`~tinkerflow.render.records.RenderContext`):
a header (the role marker), an output (content plus end-of-turn token) and, for ``role_colon`` only, a stop
overlap. Everything else (train-on weights, batching, generation prompts) is shared and lives in
:mod:`tinkerflow.render.build` and the modules it uses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import attrs

from tinkerflow.chat import ImagePart, Message, Role, ThinkingPart, ToolSpec
from tinkerflow.render.control import control_pattern
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, RenderError, StopSequences
from tinkerflow.tokenizers import Tokenizer

__all__ = ["Renderer"]


@attrs.frozen(eq=False)
class Renderer:
    """Base of every renderer: a frozen value holding the tokenizer, the family's options and its token ids.

    A family subclass sets the class-level flags and implements :meth:`render_message`,
    :meth:`generation_suffix` and :meth:`parse_response`; it may override :meth:`validate`,
    :meth:`prepare`, :meth:`turn_start`, :meth:`bos_tokens` and :meth:`generation_prefill`. See
    ``docs/rendering.md`` ("Adding a renderer").

    Class-level flags:
        roles: the roles the family's format can write.
        supports_tools: tool specs, tool calls and tool results can be rendered.
        supports_thinking: thinking parts can be rendered.
        supports_images: image parts can be rendered.
        disables_thinking: the generation prompt closes the thinking block (a trained turn that reasoned is
            then an error).
        context_free_roles: roles whose plain messages (``str`` content, no tool calls) render to the same
            header, output and stop overlap whatever the context's ``is_last``, ``next_message`` and
            ``in_last_assistant_turn`` (the rest of the context equal). Supervised rendering then reuses such a
            message's pieces in the generation-prompt check instead of rendering it again; a test renders every
            declared role both ways (``tests/test_conversation_datum.py``). Empty (nothing assumed) by default.
    """

    tokenizer: Tokenizer = attrs.field(repr=False)
    _control: list[re.Pattern[str]] = attrs.field(init=False, repr=False, factory=list, eq=False)

    name: ClassVar[str] = "renderer"
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant"})
    supports_tools: ClassVar[bool] = False
    supports_thinking: ClassVar[bool] = False
    supports_images: ClassVar[bool] = False
    disables_thinking: ClassVar[bool] = False
    context_free_roles: ClassVar[frozenset[str]] = frozenset()

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.tokenizer, Tokenizer):
            raise RenderError(
                f"render[{self.name}]",
                "tokenizer",
                f"expected a tinkerflow Tokenizer, got {type(self.tokenizer).__name__}.",
                "load one with tinkerflow.shell.io.tokenizers.load_tokenizer() or wrap it in FastTokenizer.",
            )
        pattern = control_pattern(self.tokenizer)
        if pattern is not None:
            self._control.append(pattern)

    # -- flags that may depend on options -------------------------------------------------------------------

    @property
    def has_extension_property(self) -> bool:
        """Whether each generation prompt of a multi-turn conversation extends the previous full sequence."""
        return False

    # -- hooks ----------------------------------------------------------------------------------------------

    def bos_tokens(self) -> tuple[int, ...]:
        """Tokens written once before the first message (and before a generation prompt)."""
        return ()

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        """Raise :class:`RenderError` for anything this family cannot write. Indices refer to ``messages``."""
        if tools and not self.supports_tools:
            raise self._error("tools", "this renderer has no tool-calling format.", "use a renderer with tool support.")
        roles = self.roles
        for index, message in enumerate(messages):
            if (
                type(message.content) is str
                and message.role in roles
                and message.role != "tool"
                and not message.tool_calls
                and not message.unparsed_tool_calls
            ):
                continue  # plain text in a known role: nothing below can fail
            problem = self._message_problem(message)
            if problem is not None:
                field, what, fix = problem
                raise self._error(f"messages[{index}]{field}", what, fix)

    def _message_problem(self, message: Message) -> tuple[str, str, str] | None:
        """The first thing in ``message`` this family cannot write, as ``(field suffix, problem, fix)``, or None."""
        if message.role not in self.roles:
            return (
                ".role",
                f"the {self.name} format has no {message.role!r} role.",
                f"use one of {', '.join(sorted(self.roles))}.",
            )
        if message.tool_calls and not self.supports_tools:
            return (
                ".tool_calls",
                "this renderer has no tool-calling format; tool calls would be lost.",
                "use a renderer with tool support, or remove the tool calls.",
            )
        if message.unparsed_tool_calls:
            return (
                ".unparsed_tool_calls",
                "unparsed tool calls cannot be rendered faithfully.",
                "drop them, or turn them into text or valid tool calls first.",
            )
        if message.role == "tool" and not message.tool_call_id:
            return (
                ".tool_call_id",
                "a tool result must name the call it answers.",
                "set tool_call_id to the id of the assistant's tool call.",
            )
        parts = message.content if isinstance(message.content, tuple) else ()
        for part_index, part in enumerate(parts):
            if isinstance(part, ImagePart) and not self.supports_images:
                return (
                    f".content[{part_index}]",
                    f"an image part, but {self.name} renders text only.",
                    "use a vision-language renderer (qwen3_vl), or remove the image.",
                )
            if isinstance(part, ThinkingPart) and not self.supports_thinking:
                return (
                    f".content[{part_index}]",
                    f"a thinking part, but the {self.name} format has no thinking blocks.",
                    "use a reasoning renderer, or remove the thinking part.",
                )
        return None

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        """The message list actually rendered (e.g. tools merged into a system message, a default system
        prompt added). Must be prefix-stable: ``prepare(m[:k])`` is a prefix of ``prepare(m)``."""
        return messages

    def turn_start(self, messages: Sequence[Message]) -> int:
        """Index of the first message of the turn being produced after ``messages`` (prepared messages, or the
        caller's in :func:`~tinkerflow.render.build.build_supervised_examples`): from here on messages are in
        the last assistant turn (``RenderContext.in_last_assistant_turn``, the ``last_assistant_turn`` weights).

        The default is the message after the last user message (0 without one), the cookbook's rule. A family
        whose template draws the line elsewhere overrides it (the cookbook's
        ``_last_assistant_turn_start_index``); such a family gets no :meth:`render_units` fast path. Supervised
        rendering calls it on all messages but the final one, a generation prompt on all of them; since it sees
        both prepared and caller's messages, a family's rule must read the two alike.
        """
        for index in range(len(messages) - 1, -1, -1):
            if messages[index].role == "user":
                return index + 1
        return 0

    def train_role(self, message: Message) -> str:
        """The role ``train_on`` modes see for a (prepared) message; messages a renderer adds itself may differ."""
        return message.role

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        """Header, output and stop overlap of one (prepared, validated) message."""
        raise NotImplementedError(f"{type(self).__name__}.render_message")

    def render_units(
        self, messages: tuple[Message, ...], last_user_index: int, tools: tuple[ToolSpec, ...]
    ) -> list[tuple[Piece, ...]] | None:
        """Optional fast path of supervised rendering: ``[header_0, output_0, header_1, output_1, ...]``, exactly
        the pieces :meth:`render_message` gives for each (prepared, validated) message in its standard context,
        when they have no stop overlap; or ``None`` to render message by message (the default).

        A family implements it for its common case (plain text messages) to skip building a context and calling
        :meth:`render_message` per message; ``last_user_index`` is the index of the last user message (-1 without
        one). Tests compare it with :meth:`render_message`.
        """
        return None

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        """What follows the rendered messages in a generation prompt (the header of the message to sample)."""
        return self.render_message(Message(role=role, content=""), ctx).header

    def generation_prefill(self, messages: tuple[Message, ...], prefill: str | None) -> str | None:
        """Text the generation prompt ends with (after the suffix); the user's prefill by default."""
        return prefill

    def stop_sequences(self) -> StopSequences:
        """What ends sampling for this format."""
        raise NotImplementedError(f"{type(self).__name__}.stop_sequences")

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        """Sampled tokens (after the generation prompt) back into a message plus its termination."""
        raise NotImplementedError(f"{type(self).__name__}.parse_response")

    # -- helpers for families and the shared logic -----------------------------------------------------------

    @property
    def control_regex(self) -> re.Pattern[str] | None:
        """:func:`~tinkerflow.render.control.control_pattern` of the tokenizer, computed once."""
        return self._control[0] if self._control else None

    def _error(self, field: str, problem: str, fix: str = "") -> RenderError:
        return RenderError(f"render[{self.name}]", field, problem, fix)
