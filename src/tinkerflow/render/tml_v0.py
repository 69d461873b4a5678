"""The TML v0 renderer (tinker-cookbook 0.6.1 ``tml_v0``, an adapter over tml-renderers 0.2.1's ``v0``; the lineup
maps ``thinkingmachines/Inkling*`` to it)::

    <|message_system|><|content_text|>{system}<|end_message|>
    <|message_system|>tool_declare<|content_xml|>[{"description":..,"name":..,"parameters":..,"type":"function"}]<|end_message|>
    <|message_system|><|content_text|>Thinking effort level: 0.9<|end_message|>
    <|message_user|><|content_text|>{text}<|end_message|>
    <|message_model|><|content_thinking|>{reasoning}<|end_message|>
    <|message_model|><|content_text|>{text}<|end_message|>
    <|message_model|>{f}<|content_invoke_tool_json|>{"name":"f","args":{...}}<|end_message|>
    <|content_model_end_sampling|>
    <|message_tool|>{f}<|content_text|>{result}<|end_message|>

(no separators). Every content part is its own message: an assistant message writes its parts in order, then
its tool calls, then ``<|content_model_end_sampling|>`` (the stop token). Empty content is one empty text part;
an assistant message with tool calls drops its empty text parts. The effort message follows the leading system
messages (the tool declaration counts as one). The generation prompt adds nothing after the messages: the model
writes ``<|message_model|>`` itself, so an assistant message has no header and is trained whole.

Option ``thinking_effort`` (default ``0.9``, a finite number in ``[0, 1)``): shown rounded to thousandths, then
to hundredths (:func:`effort_text`), without trailing zeros (``0.9``, ``0.12``, ``1`` for ``0.999``), as tml-renderers
shows it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Final

import attrs

from tinkerflow.chat import Message, Role, TextPart, ThinkingPart, ToolSpec
from tinkerflow.render.family import control_ids, text_of
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, StopSequences
from tinkerflow.render.renderer import Renderer
from tinkerflow.render.tml_v0_json import tool_call_json, tool_declare_json
from tinkerflow.render.tml_v0_parse import parse_tml_v0

__all__ = ["DEFAULT_EFFORT", "TmlV0Renderer", "effort_text"]

DEFAULT_EFFORT: Final = 0.9

USER: Final = "<|message_user|>"
MODEL: Final = "<|message_model|>"
SYSTEM: Final = "<|message_system|>"
TOOL: Final = "<|message_tool|>"
TEXT: Final = "<|content_text|>"
THINKING: Final = "<|content_thinking|>"
XML: Final = "<|content_xml|>"
INVOKE_JSON: Final = "<|content_invoke_tool_json|>"
INVOKE_TEXT: Final = "<|content_invoke_tool_text|>"
TOOL_ERROR: Final = "<|content_tool_error|>"
END: Final = "<|end_message|>"
END_SAMPLING: Final = "<|content_model_end_sampling|>"
EOS: Final = "<|endoftext|>"
CONTROL: Final = (
    USER,
    MODEL,
    SYSTEM,
    TOOL,
    TEXT,
    THINKING,
    XML,
    INVOKE_JSON,
    INVOKE_TEXT,
    TOOL_ERROR,
    END,
    END_SAMPLING,
    "<|content_image|>",
    "<|content_audio_input|>",
)
"""The control tokens the format writes or parses (ids 200000..200057 of the TML v0 vocabulary)."""


def effort_text(effort: float) -> str:
    """The effort as the effort message shows it: rounded to thousandths ``k``, then ``k / 1000 * 100`` (floats)
    rounded half to even, as hundredths without trailing zeros (``0.9``, ``0.12``, ``0`` for ``0.005``, ``1`` for
    ``0.999``); equal to tml-renderers' text for every ``k`` in 0..999."""
    hundredths = round(round(effort * 1000) / 1000 * 100)
    text = f"{hundredths // 100}.{hundredths % 100:02d}".rstrip("0")
    return text.rstrip(".")


@attrs.frozen
class _Effort(Message):
    """The thinking-effort system message the renderer inserts."""


@attrs.frozen
class _ToolDeclare(Message):
    """The ``tool_declare`` system message (its content is the declaration's JSON)."""


_ROLE_TOKENS: Final = {"system": SYSTEM, "user": USER, "tool": TOOL}


@attrs.frozen(eq=False)
class TmlV0Renderer(Renderer):
    """TML v0 (Inkling). See the module docstring."""

    thinking_effort: float = DEFAULT_EFFORT
    _ids: dict[str, int] = attrs.field(init=False, repr=False, eq=False)

    name: ClassVar[str] = "tml_v0"
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})
    supports_tools: ClassVar[bool] = True
    supports_thinking: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        effort = self.thinking_effort
        if isinstance(effort, bool) or not isinstance(effort, (int, float)) or not math.isfinite(effort):
            raise self._error("thinking_effort", f"must be a finite number in [0, 1), got {effort!r}.", "use e.g. 0.9.")
        if not 0.0 <= effort < 1.0:
            raise self._error("thinking_effort", f"must be in [0, 1), got {effort!r}.", "use e.g. 0.9 (the default).")
        object.__setattr__(self, "_ids", control_ids(self.tokenizer, (*CONTROL, EOS)))

    @property
    def has_extension_property(self) -> bool:
        return True

    # -- the conversation as tml-renderers writes it -----------------------------------------------------------

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        """The tool declaration after the first system message (an empty one is dropped, as the cookbook's
        ``create_conversation_prefix_with_tools`` does), the effort message after the leading system messages,
        and ``trainable`` cleared on non-assistant messages (only model messages are ever trained)."""
        rest = list(messages)
        head: list[Message] = []
        if tools:
            if rest and rest[0].role == "system":
                first = rest.pop(0)
                if text_of(first):
                    head.append(Message(role="system", content=text_of(first), trainable=first.trainable))
            head.append(_ToolDeclare(role="system", content=tool_declare_json(tools)))
        prepared = [*head, *rest]
        leading = 0
        while leading < len(prepared) and prepared[leading].role == "system":
            leading += 1
        effort = _Effort(role="system", content="Thinking effort level: " + effort_text(self.thinking_effort))
        prepared.insert(leading, effort)
        return tuple(
            attrs.evolve(message, trainable=False)
            if message.role != "assistant" and message.trainable is True
            else message
            for message in prepared
        )

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        ids = self._ids
        end = ids[END]
        if isinstance(message, _ToolDeclare):
            return RenderedMessage(header=(ids[SYSTEM],), output=("tool_declare", ids[XML], message.text(), end))
        if message.role != "assistant":
            role_token = ids[_ROLE_TOKENS[message.role]]
            name = message.name if message.role == "tool" and message.name else ""
            texts = (
                [message.content] if isinstance(message.content, str) else [text_of_part(p) for p in message.content]
            )
            if not texts:
                texts = [""]
            output: list[Piece] = []
            for index, text in enumerate(texts):
                if index:
                    output.append(role_token)
                output.extend((name, ids[TEXT], text, end))
            return RenderedMessage(header=(role_token,), output=_drop_empty(output))
        model = ids[MODEL]
        pieces: list[Piece] = []
        parts = (TextPart(message.content),) if isinstance(message.content, str) else message.content
        if not parts:
            parts = (TextPart(""),)
        for part in parts:
            if isinstance(part, ThinkingPart):
                pieces.extend((model, ids[THINKING], part.thinking, end))
            elif isinstance(part, TextPart) and (part.text or not message.tool_calls):
                pieces.extend((model, ids[TEXT], part.text, end))
        for call in message.tool_calls:
            body = tool_call_json(call.name, call.arguments_dict())
            pieces.extend((model, call.name, ids[INVOKE_JSON], body, end))
        pieces.append(ids[END_SAMPLING])
        return RenderedMessage(header=(), output=_drop_empty(pieces))

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        if role != "assistant":
            raise self._error("role", f"tml_v0 samples assistant messages only, got {role!r}.", "use role='assistant'.")
        return ()

    def generation_prefill(self, messages: tuple[Message, ...], prefill: str | None) -> str | None:
        if prefill is not None:
            raise self._error(
                "prefill",
                "tml_v0 samples whole model messages; it takes no prefill (the cookbook refuses it too).",
                "pass prefill=None and let the model start its message.",
            )
        return None

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=(self._ids[END_SAMPLING],))

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        return parse_tml_v0(self.tokenizer, self._ids, tokens)


def text_of_part(part: object) -> str:
    """The text of a content part of a non-assistant message (tinkerflow allows only text there)."""
    return part.text if isinstance(part, TextPart) else ""


def _drop_empty(pieces: Sequence[Piece]) -> tuple[Piece, ...]:
    return tuple(piece for piece in pieces if not (type(piece) is str and not piece))
