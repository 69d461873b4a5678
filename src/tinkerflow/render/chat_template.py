"""The ``chat_template`` renderer: any tokenizer's Jinja chat template, token for token as ``transformers``'
``apply_chat_template`` renders it, with per-message weights, generation prompts and parsing.

    renderer = render.get_renderer("chat_template", tokenizer)             # tokenizer.chat_template
    renderer = render.get_renderer("chat_template", tokenizer, template=text, template_vars={"enable_thinking": False})
    renderer.features   # TemplateFeatures(extension_property=..., thinking=..., stop_tokens=..., ...)

How it works:

* **Tokens.** The template renders the whole conversation to text (in a Jinja sandbox, with ``bos_token`` /
  ``eos_token`` and your ``template_vars``); the text is encoded as ``apply_chat_template`` encodes it (added-token
  spellings are tokens, the text between them is encoded as a whole). Text after the last message's end-of-turn
  token (ChatML templates write a ``\\n``) is left out of a supervised example, as every renderer does.
* **Message boundaries** come from renderings, not from knowledge of the format: each message's span is where the
  rendering changes when that message's texts change; its output ends at the first end-of-turn token after it;
  an assistant message's header is what the template's generation prompt adds (the prompt is a prefix of the
  conversation, or its text after the last end-of-turn token starts the message); another message's header is
  the template text before its content. Weights then follow the train-on modes as for every renderer.
* **The extension property** is probed when the renderer is built (a two-turn conversation, with thinking where
  the template writes it): ``features.extension_property`` says whether each turn as sampled (its generation
  prompt plus the message up to its end-of-turn token) is a prefix of the later conversation. Without it
  (Qwen3's template drops earlier thinking), :func:`~tinkerflow.render.build_supervised_examples` gives one example
  per assistant message, each rendered as the template renders that turn last; a single
  :func:`~tinkerflow.render.build_supervised_example` trains earlier turns as the template writes them in history.
* **Generation prompts** are ``add_generation_prompt=True`` plus the prefill, encoded together.
* **Parsing** cuts a response at the end-of-turn token the template closes an assistant message with (or the
  tokenizer's EOS: ``Termination.EOS``); ``<think>...</think>`` becomes a thinking part when the tokenizer has those
  tokens and the template writes thinking. Tool calls stay text.

Refused (typed :class:`~tinkerflow.render.RenderError`): message or tool text that spells a control token (the
template's own tokens could not be told apart from it), thinking / tool calls / tool specs the template does not
write (probed: they would be lost), images, and whatever the template itself refuses (its message quoted).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar, Final, Literal

import attrs

from tinkerflow.chat import ROLES, Message, Role, TextPart, ThinkingPart, ToolCall, ToolSpec
from tinkerflow.render._template_text import (
    TemplateCall,
    compile_template,
    encode_with_cuts,
    locate_contents,
)
from tinkerflow.render.records import ParsedResponse, Piece, RenderContext, RenderedMessage, StopSequences, Termination
from tinkerflow.render.renderer import Renderer

__all__ = ["ChatTemplateRenderer", "TemplateFeatures"]

_QUESTION: Final = "tfprobe question"
_ANSWER: Final = "tfprobe answer"
_THINKING: Final = "tfprobe thinking"
_TOOL: Final = "tfprobe_tool"


@attrs.frozen
class TemplateFeatures:
    """What probing a template found (see the module docstring).

    Attributes:
        extension_property: each turn as sampled is a prefix of the later conversation.
        thinking: the template writes an assistant message's thinking (at least in the last turn).
        tool_calls / tools: the template writes assistant tool calls / declared tool specs.
        bos: the template starts with the tokenizer's BOS token (written as :meth:`Renderer.bos_tokens`).
        stop_tokens: what ends sampling: the control tokens that close an assistant message (after text, after
            a tool call), then the tokenizer's EOS token.
        end_tokens: the stop tokens and the control token that closes a user message: where a message's output
            ends when one follows its text.
    """

    extension_property: bool
    thinking: bool
    tool_calls: bool
    tools: bool
    bos: bool
    stop_tokens: tuple[int, ...]
    end_tokens: tuple[int, ...]


def _frozen_vars(value: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(value))


@attrs.frozen
class _WithTools(Message):
    """The last prepared message, carrying the conversation's tool specs to :meth:`generation_prefill`."""

    tools: tuple[ToolSpec, ...] = ()


@attrs.frozen(eq=False)
class ChatTemplateRenderer(Renderer):
    """A renderer driven by a Jinja chat template. See the module docstring.

    Args:
        tokenizer: the model's tokenizer (its ``chat_template`` is used when ``template`` is not given).
        template: the Jinja template text.
        template_vars: extra template variables (``{"enable_thinking": False}``, ``{"date_string": ...}``).
        current_date: ``"YYYY-MM-DD"``, what ``strftime_now`` returns to templates that read the clock
            (without it such a template is refused, so renderings never depend on the day).
        tool_arguments: tool-call arguments given to the template as a parsed JSON ``"object"`` (the Hugging Face
            convention) or as the ``"string"`` itself.
    """

    template: str | None = None
    template_vars: Mapping[str, object] = attrs.field(factory=dict, converter=_frozen_vars)
    current_date: str | None = None
    tool_arguments: Literal["object", "string"] = "object"
    _call: list[TemplateCall] = attrs.field(init=False, repr=False, factory=list)
    _features: list[TemplateFeatures] = attrs.field(init=False, repr=False, factory=list)
    _ends: list[re.Pattern[str]] = attrs.field(init=False, repr=False, factory=list)

    name: ClassVar[str] = "chat_template"
    roles: ClassVar[frozenset[str]] = frozenset(ROLES)
    supports_tools: ClassVar[bool] = True
    supports_thinking: ClassVar[bool] = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        source = self.template if self.template is not None else getattr(self.tokenizer, "chat_template", None)
        if not isinstance(source, str) or not source.strip():
            raise self._error(
                "template",
                "no chat template: none was given and the tokenizer carries none.",
                "pass template=<the Jinja text>, or load a tokenizer folder whose tokenizer_config.json has one.",
            )
        if self.tool_arguments not in ("object", "string"):
            raise self._error("tool_arguments", f"must be 'object' or 'string', got {self.tool_arguments!r}.")
        date = self._date()
        bos_id, eos_id = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        bos_text = None if bos_id is None else self.tokenizer.decode([bos_id])
        variables: dict[str, object] = {}
        if bos_text is not None:
            variables["bos_token"] = bos_text
        if eos_id is not None:
            variables["eos_token"] = self.tokenizer.decode([eos_id])
        variables.update(self.template_vars)
        compiled = compile_template(source)
        arguments_as_object = self.tool_arguments == "object"
        probe = TemplateCall(compiled, MappingProxyType(variables), date, None, arguments_as_object)
        basic = probe.render([_user(), _answer(_ANSWER, thinking=False)], (), generation=False)
        has_bos = bos_text is not None and "bos_token" in source and basic.startswith(bos_text)
        call = attrs.evolve(probe, bos_text=bos_text if has_bos else None)
        self._call.append(call)
        thinking = _writes(call, [_user(), _answer(_ANSWER, thinking=True)], (), _THINKING)
        calling = [_user(), Message(role="assistant", tool_calls=(ToolCall(name=_TOOL),))]
        tool_calls = _writes(call, calling, (), _TOOL)
        tools = _writes(call, [_user(), _answer(_ANSWER, thinking=False)], (ToolSpec(name=_TOOL),), _TOOL)
        closing = [self._last_control(call, [_user(), _answer(_ANSWER, thinking=False)], _ANSWER)]
        if tool_calls:
            closing.append(self._last_control(call, calling, _TOOL))
        stops = _unique([*closing, eos_id])
        if not stops:
            raise self._error(
                "template",
                "no control token ends an assistant message and the tokenizer has no EOS token, so sampling "
                "could never stop.",
                "use a tokenizer with an EOS token, or a dedicated renderer.",
            )
        ends = _unique([*stops, self._last_control(call, [_user()], _QUESTION)])
        self._ends.append(re.compile("|".join(re.escape(self.tokenizer.decode([token])) for token in ends)))
        features = TemplateFeatures(False, thinking, tool_calls, tools, has_bos, stops, ends)
        self._features.append(attrs.evolve(features, extension_property=self._probe_extension(thinking)))

    def _date(self) -> datetime.date | None:
        if self.current_date is None:
            return None
        try:
            return datetime.date.fromisoformat(self.current_date)
        except (TypeError, ValueError) as error:
            raise self._error("current_date", f"{self.current_date!r} is not a YYYY-MM-DD date.") from error

    def _last_control(self, call: TemplateCall, messages: list[Message], marker: str) -> int | None:
        """The last control token of the rendering of ``messages`` when it follows ``marker`` (the last message's
        text): the token that ends that message. ``None`` without one (or when the template refuses)."""
        pattern = self.control_regex
        try:
            text = call.render(messages, (), generation=False)
        except ValueError:
            return None
        found = None
        for found in pattern.finditer(text) if pattern is not None else ():  # noqa: B007 - the last one is wanted
            pass
        if found is None or found.start() < text.rfind(marker) + len(marker):
            return None
        return self.tokenizer.added_tokens[found.group(0)]

    def _probe_extension(self, thinking: bool) -> bool:
        """Whether each turn of a two-turn probe, as sampled (generation prompt, then the message up to its
        end-of-turn token), is a prefix of the whole conversation."""
        call = self._call[0]
        messages = [
            Message(role="system", content="tfprobe system"),
            _user(),
            _answer(_ANSWER, thinking=thinking),
            _user(),
            _answer("tfprobe again", thinking=thinking),
        ]
        try:
            full = call.render(messages, (), generation=False)
        except ValueError:  # a template without system messages: probe without one
            messages = messages[1:]
            full = call.render(messages, (), generation=False)
        for index, message in enumerate(messages):
            if message.role != "assistant":
                continue
            prompt = call.render(messages[:index], (), generation=True)
            turn = call.render(messages[: index + 1], (), generation=False)
            found = self._ends[0].search(turn, turn.rfind(message.text()))
            if not full.startswith(prompt) or not full.startswith(turn[: found.end() if found else len(turn)]):
                return False
        return True

    # -- the renderer interface -----------------------------------------------------------------------------

    @property
    def features(self) -> TemplateFeatures:
        """What the template does (probed when the renderer was built)."""
        return self._features[0]

    @property
    def has_extension_property(self) -> bool:
        return self._features[0].extension_property

    def bos_tokens(self) -> tuple[int, ...]:
        bos = self.tokenizer.bos_token_id
        return (bos,) if self._features[0].bos and bos is not None else ()

    def validate(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> None:
        super().validate(messages, tools)
        features = self._features[0]
        if tools and not features.tools:
            raise self._error(
                "tools", "this chat template does not write tool specs; they would be lost.", "remove them."
            )
        if tools and not messages:
            raise self._error("tools", "tool specs need at least one message to be rendered with.", "add a message.")
        for index, message in enumerate(messages):
            if message.tool_calls and not features.tool_calls:
                raise self._error(
                    f"messages[{index}].tool_calls",
                    "this chat template does not write tool calls; they would be lost.",
                    "remove them, or use a renderer with tool support.",
                )
            if message.thinking() and not features.thinking:
                raise self._error(
                    f"messages[{index}].content",
                    "a thinking part, but this chat template does not write thinking; it would be lost.",
                    "remove the thinking part.",
                )
            self._check_control(f"messages[{index}]", _texts(message))
        for index, tool in enumerate(tools):
            self._check_control(f"tools[{index}]", (("", tool.name), ("", tool.description), ("", tool.parameters)))

    def _check_control(self, field: str, texts: Sequence[tuple[str, str]]) -> None:
        pattern = self.control_regex
        if pattern is None:
            return
        for suffix, text in texts:
            found = pattern.search(text)
            if found is not None:
                raise self._error(
                    field + suffix,
                    f"spells the control token {found.group(0)!r}; in a chat template's text it could not be told "
                    "apart from the template's own tokens.",
                    "remove it, or use a dedicated renderer (which encodes content as plain text).",
                )

    def prepare(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...]) -> tuple[Message, ...]:
        if not tools or not messages:
            return messages
        last = messages[-1]
        carrier = _WithTools(
            role=last.role,
            content=last.content,
            tool_calls=last.tool_calls,
            unparsed_tool_calls=last.unparsed_tool_calls,
            tool_call_id=last.tool_call_id,
            name=last.name,
            trainable=last.trainable,
            tools=tools,
        )
        return (*messages[:-1], carrier)

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        """Nothing: a template renders whole conversations (:meth:`render_units`, :meth:`generation_prefill`)."""
        return RenderedMessage()

    def render_units(
        self, messages: tuple[Message, ...], last_user_index: int, tools: tuple[ToolSpec, ...]
    ) -> list[tuple[Piece, ...]] | None:
        """Header and output of every message as token ids cut from the template's rendering."""
        call = self._call[0]
        full = call.render(messages, tools, generation=False)
        located = locate_contents(call, messages, tools, full)
        cuts: list[int] = []
        previous = 0
        count = len(messages)
        for index, message in enumerate(messages):
            bound = located.starts[index + 1] if index + 1 < count else len(full)
            found = self._ends[0].search(full, located.ends[index])
            end = found.end() if found is not None and found.end() <= bound else located.ends[index]
            start = located.starts[index]
            if message.role == "assistant":
                start = self._output_start(messages[:index], tools, full, previous, start)
            cuts.extend((start, end))
            previous = end
        tokens, at = encode_with_cuts(self.tokenizer, self.control_regex, full[:previous], cuts)
        units: list[tuple[Piece, ...]] = []
        offset = 0
        for position in range(0, len(at), 2):
            units.append(_unit(tokens[offset : at[position]]))
            units.append(_unit(tokens[at[position] : at[position + 1]]))
            offset = at[position + 1]
        return units

    def _output_start(
        self, history: tuple[Message, ...], tools: tuple[ToolSpec, ...], full: str, previous: int, content: int
    ) -> int:
        """Where an assistant message's output starts: after what the generation prompt adds."""
        try:
            prompt = self._call[0].render(history, tools, generation=True)
        except ValueError:
            return content
        if previous <= len(prompt) <= content and full.startswith(prompt):
            return len(prompt)
        last_stop = None
        for last_stop in self._ends[0].finditer(prompt):  # noqa: B007 - the last match is wanted
            pass
        suffix = prompt[last_stop.end() :] if last_stop is not None else ""
        if suffix and previous + len(suffix) <= content and full.startswith(suffix, previous):
            return previous + len(suffix)
        return content

    def generation_suffix(self, role: Role, ctx: RenderContext) -> tuple[Piece, ...]:
        if role != "assistant":
            raise self._error(
                "role", f"a chat template prompts the assistant only, not {role!r}.", "use role='assistant'."
            )
        return ()

    def generation_prefill(self, messages: tuple[Message, ...], prefill: str | None) -> str | None:
        """The whole generation prompt (``add_generation_prompt=True``) followed by ``prefill``."""
        tools = messages[-1].tools if messages and isinstance(messages[-1], _WithTools) else ()
        return self._call[0].render(messages, tools, generation=True) + (prefill or "")

    def stop_sequences(self) -> StopSequences:
        return StopSequences(tokens=self._features[0].stop_tokens)

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        stops = self._features[0].stop_tokens
        positions = [index for index, token in enumerate(tokens) if token in stops]
        if not positions:
            return ParsedResponse(
                Message(role="assistant", content=self.tokenizer.decode(tokens)), Termination.MALFORMED
            )
        if len(positions) > 1:
            raise self._error(
                "tokens_T",
                f"holds {len(positions)} stop tokens ({stops}); a sampled response ends at its first.",
                "sample with the renderer's stop_sequences().",
            )
        position = positions[0]
        ended_by = tokens[position]
        termination = Termination.EOS if ended_by == stops[-1] and len(stops) > 1 else Termination.STOP_SEQUENCE
        return ParsedResponse(self._parse_body(tokens[:position]), termination)

    def _parse_body(self, body: list[int]) -> Message:
        added = self.tokenizer.added_tokens
        opening, closing = added.get("<think>"), added.get("</think>")
        if not self._features[0].thinking or closing is None or closing not in body:
            return Message(role="assistant", content=self.tokenizer.decode(body))
        split = body.index(closing)
        inside = body[1:split] if opening is not None and body and body[0] == opening else body[:split]
        thinking = self.tokenizer.decode(inside).strip("\n")
        text = self.tokenizer.decode(body[split + 1 :]).lstrip("\n")
        if not thinking:
            return Message(role="assistant", content=text)
        return Message(role="assistant", content=(ThinkingPart(thinking), TextPart(text)))


def _user() -> Message:
    return Message(role="user", content=_QUESTION)


def _answer(text: str, *, thinking: bool) -> Message:
    return Message(role="assistant", content=(ThinkingPart(_THINKING), TextPart(text)) if thinking else text)


def _unique(tokens: Sequence[int | None]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(token for token in tokens if token is not None))


def _writes(call: TemplateCall, messages: list[Message], tools: tuple[ToolSpec, ...], marker: str) -> bool:
    """Whether the template writes ``marker`` for this probe (a template that refuses it does not)."""
    try:
        return marker in call.render(messages, tools, generation=False)
    except ValueError:
        return False


def _texts(message: Message) -> list[tuple[str, str]]:
    """Every text of a message with its field suffix (for the control-token check)."""
    texts = [(".content", message.text()), (".content", message.thinking() or "")]
    texts += [(f".tool_calls[{i}]", call.name + call.arguments) for i, call in enumerate(message.tool_calls)]
    texts += [(".tool_call_id", message.tool_call_id or ""), (".name", message.name or "")]
    return texts


def _unit(tokens: list[int]) -> tuple[Piece, ...]:
    return (tuple(tokens),) if tokens else ()
