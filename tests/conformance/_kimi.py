"""The Kimi test vocabulary and the Kimi conformance check (test-only).

No offline package carries a Kimi K2 / K2.5 / K2.6 vocabulary in Hugging Face form (tml-renderers 0.2.1 has
compiled ``KimiK2ThinkingTokenizer`` / ``KimiK25Tokenizer`` / ``KimiK26Tokenizer``, and the cookbook's renderers
need a ``transformers`` tokenizer). :func:`kimi_test_tokenizer_dir` builds one as ``_v061`` does for GLM-5.3: the
offline Qwen3 vocabulary (which already spells ``<|im_end|>``, ``<think>``, ``</think>``) plus Kimi's other control
tokens as special tokens, EOS ``[EOS]``. Both renderers get it, so the comparison is structural, token for token.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tinkerflow.chat import Conversation, Message, ToolCall
from tinkerflow.render import Renderer, TrainOnWhat
from tinkerflow.render.families_v061 import EXTRA_FACTORIES
from tinkerflow.render.kimi import kimi_turn_start
from tinkerflow.render.plan import last_user_index
from tinkerflow.shell.io.tokenizers import load_tokenizer
from tinkerflow.tokenizers import Tokenizer

from ._compare import compare_example, compare_parse, compare_prompt, normalized
from ._strategies import Profile, all_of, conversations, nfc_stable, texts, with_trainable, without_spellings
from ._v061 import EXAMPLES, PREFILLS, quiet, qwen3_vocabulary_with, qwen_profile, with_system_message

KIMI_CONTROL = (
    "[BOS]",
    "[EOS]",
    "<|im_user|>",
    "<|im_assistant|>",
    "<|im_system|>",
    "<|im_middle|>",
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
    "<|media_begin|>",
    "<|media_content|>",
    "<|media_end|>",
    "<|media_pad|>",
)
"""Kimi's control tokens the Qwen3 vocabulary lacks."""

PARSE_CONTROLS = [
    "<think>",
    "</think>",
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
    "<|im_end|>",
]


@functools.cache
def kimi_test_tokenizer_dir() -> Path:
    """The offline Qwen3 ``tokenizer.json`` plus :data:`KIMI_CONTROL` (ids 151669..151683), EOS ``[EOS]``."""
    return qwen3_vocabulary_with(KIMI_CONTROL, "kimi", eos="[EOS]")


@functools.cache
def kimi_tokenizer() -> Tokenizer:
    """The Kimi test vocabulary as a tinkerflow tokenizer."""
    return load_tokenizer(kimi_test_tokenizer_dir())


@functools.cache
def kimi_tokenizers() -> tuple[Tokenizer, Any]:
    """The Kimi test vocabulary as a tinkerflow tokenizer and as a transformers tokenizer (for the cookbook)."""
    from transformers import AutoTokenizer

    folder = kimi_test_tokenizer_dir()
    return kimi_tokenizer(), AutoTokenizer.from_pretrained(str(folder), clean_up_tokenization_spaces=False)


def kimi_profile(**changes: Any) -> Profile:
    """Conversations without spellings of the test vocabulary's added tokens (deliberate difference 1), with
    the developer role too."""
    text_ok = all_of(without_spellings(kimi_tokenizer().added_tokens), nfc_stable)
    return qwen_profile(text_ok=text_ok, **changes)


def pair(name: str) -> tuple[Renderer, Any]:
    """Ours and the cookbook's renderer of ``name`` over the Kimi test vocabulary."""
    from tinker_cookbook.renderers import get_renderer

    tokenizer, hf = kimi_tokenizers()
    return EXTRA_FACTORIES[name](tokenizer), get_renderer(name, hf)


def turn_rules_agree(messages: tuple[Message, ...]) -> bool:
    """The Kimi turn (after the last assistant message without tool calls) and the default one (after the last
    user message) of all but the final message train the same messages under ``last_assistant_turn``: no
    assistant message lies between the two starts. Where they do not, the Kimi rule decides the weights."""
    history = messages[:-1]
    kimi = kimi_turn_start(history)
    default = last_user_index(history) + 1
    return all(m.role != "assistant" for m in messages[min(kimi, default) : max(kimi, default)])


def prompt_rules_agree(messages: tuple[Message, ...]) -> bool:
    """The generation prompt of ``messages`` keeps the same reasoning under the Kimi turn and under the turn
    that the supervised example of ``messages`` uses: it does unless the list ends with an assistant message
    without tool calls and a message of the example's produced turn reasons (the prompt drops that reasoning)."""
    if not messages or messages[-1].role != "assistant" or messages[-1].tool_calls:
        return True
    kept = messages[kimi_turn_start(messages[:-1]) :]
    return all(not m.thinking() for m in kept if m.role == "assistant")


def with_kimi_ids(conversation: Conversation) -> Conversation:
    """Tool-call ids in Kimi's form ``functions.NAME:N`` (N counts the conversation's calls), results renamed to
    match: the ids the cookbook's parser can read (it skips a call whose id is not ``...:N``)."""
    renamed: dict[str, str] = {}
    messages: list[Message] = []
    for message in conversation.messages:
        if message.tool_calls:
            calls = []
            for call in message.tool_calls:
                new = f"functions.{call.name}:{len(renamed)}"
                renamed[call.id or new] = new
                calls.append(attrs.evolve(call, id=new))
            message = attrs.evolve(message, tool_calls=tuple(calls))
        elif message.role == "tool" and message.tool_call_id in renamed:
            message = attrs.evolve(message, tool_call_id=renamed[message.tool_call_id])
        messages.append(message)
    return attrs.evolve(conversation, messages=tuple(messages))


def joined_text(conversation: Conversation) -> Conversation:
    """System, user and tool content as one string when it is not one text part: the cookbook's ``kimi_k2`` raises
    NotImplementedError on other content outside assistant messages (tinkerflow joins the text: difference 7)."""
    messages = tuple(
        attrs.evolve(message, content=message.text())
        if message.role != "assistant" and isinstance(message.content, tuple) and len(message.content) != 1
        else message
        for message in conversation.messages
    )
    return attrs.evolve(conversation, messages=messages)


def check_kimi(
    pairs: Sequence[tuple[Renderer, Any]],
    profile: Profile,
    *,
    examples: int = EXAMPLES,
    adjust: Mapping[str, Callable[[Conversation], Conversation]] | None = None,
) -> dict[str, dict[str, int]]:
    """Compare every ``(ours, cookbook)`` pair on the same ``examples`` generated conversations (asserts on the
    first mismatch, naming the renderer): supervised examples (ids and weights), generation prompts and parses,
    all in full. Returns, per renderer name, how many conversations were compared, and how many of them the
    Kimi turn rule (``Renderer.turn_start``) decided: a ``last_assistant_turn`` example whose turn does not start
    after the last user message (``kimi_turn``), a prompt ending with an assistant message without tool calls
    after reasoning (``kimi_prompt``). ``adjust`` maps a renderer name to the documented change its conversations
    get (:func:`joined_text` for ``kimi_k2``)."""
    adjust = adjust or {}
    keys = ("conversations", "kimi_turn", "kimi_prompt")
    counts = {renderer.name: dict.fromkeys(keys, 0) for renderer, _ in pairs}

    def compare(
        renderer: Renderer,
        reference: Any,
        conversation: Conversation,
        mode: TrainOnWhat,
        kept: Conversation,
        prefill: str | None,
    ) -> None:
        tally = counts[renderer.name]
        tally["conversations"] += 1
        tally["kimi_turn"] += mode is TrainOnWhat.LAST_ASSISTANT_TURN and not turn_rules_agree(conversation.messages)
        tally["kimi_prompt"] += not prompt_rules_agree(kept.messages)
        problem = compare_example(None, renderer, reference, conversation, mode)  # type: ignore[arg-type]
        assert problem is None, problem
        problem = compare_prompt(renderer, reference, kept, prefill)
        assert problem is None, problem
        problem = compare_parse(renderer, reference, conversation)
        assert problem is None, problem

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        conversations(profile),
        st.sampled_from(list(TrainOnWhat)),
        st.lists(st.booleans(), min_size=1, max_size=4),
        st.one_of(st.none(), st.sampled_from(PREFILLS)),
        st.integers(0, 2),
        st.booleans(),
    )
    def check(
        conversation: Conversation, mode: TrainOnWhat, flags: list[bool], prefill: str | None, cut: int, ids: bool
    ) -> None:
        if ids:
            conversation = with_kimi_ids(conversation)
        if mode is TrainOnWhat.CUSTOMIZED:
            conversation = with_trainable(with_system_message(conversation), flags)
        kept = attrs.evolve(conversation, messages=conversation.messages[: max(1, len(conversation.messages) - cut)])
        for renderer, reference in pairs:
            change = adjust.get(renderer.name)
            mine, short = (change(conversation), change(kept)) if change else (conversation, kept)
            try:
                compare(renderer, reference, mine, mode, short, prefill)
            except AssertionError as error:
                raise AssertionError(f"{renderer.name} ({mode.value}): {error}") from error

    with quiet():
        check()
    return counts


@st.composite
def kimi_samples(draw: st.DrawFn, renderer: Renderer, profile: Profile) -> list[int]:
    """What a model might sample: text, Kimi's control tokens and tool calls (ids well formed or not, arguments
    JSON objects, other JSON or not JSON) in any order, ended by ``<|im_end|>``, ``[EOS]`` or nothing."""
    tokenizer = renderer.tokenizer
    control = {text: tokenizer.token_id(text) for text in PARSE_CONTROLS}
    text = texts(profile)
    call_ids = [
        st.from_regex(r"\s?functions\.[a-z_]{1,6}:[0-9]{1,2}\s?", fullmatch=True),
        st.from_regex(r"[a-z.]{0,6}:?[0-9]?", fullmatch=True),
        text,
    ]
    argument_texts = [
        st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True), st.integers(-9, 9), max_size=2).map(json.dumps),
        st.sampled_from(["[1]", "3", "null", '"x"', " {} ", "{", '{"a": NaN}']),
        text,
    ]
    # mostly well formed (hypothesis draws small integers first)
    call_id = st.integers(0, 3).flatmap(lambda kind: call_ids[max(0, kind - 1)])
    arguments = st.integers(0, 3).flatmap(lambda kind: argument_texts[max(0, kind - 1)])

    @st.composite
    def call(draw: st.DrawFn) -> list[int]:
        return [
            control["<|tool_call_begin|>"],
            *tokenizer.encode(draw(call_id)),
            control["<|tool_call_argument_begin|>"],
            *tokenizer.encode(draw(arguments)),
            control["<|tool_call_end|>"],
        ]

    @st.composite
    def section(draw: st.DrawFn) -> list[int]:
        calls = [token for piece in draw(st.lists(call(), max_size=3)) for token in piece]
        return [control["<|tool_calls_section_begin|>"], *calls, control["<|tool_calls_section_end|>"]]

    ids = list(control.values())[:-1]
    pieces = st.one_of(text.map(tokenizer.encode), st.sampled_from(ids).map(lambda token: [token]), call(), section())
    tokens = [token for piece in draw(st.lists(pieces, max_size=6)) for token in piece]
    if draw(st.booleans()):  # the shape a model writes: reasoning, text, then a section of calls
        thinking = [control["<think>"], *tokenizer.encode(draw(text)), control["</think>"]]
        tokens = [*thinking, *tokenizer.encode(draw(text)), *draw(section()), *tokens]
    ending = draw(st.sampled_from(["stop", "eos", "none"]))
    if ending == "stop":
        tokens.append(control["<|im_end|>"])
    elif ending == "eos":
        tokens.append(tokenizer.token_id("[EOS]"))
    return tokens


def _cookbook_view(message: dict[str, Any]) -> tuple[object, ...]:
    """:func:`normalized` of a cookbook parse, with each tool call tinkerflow's ``ToolCall`` refuses (arguments
    that are JSON but not an object, an empty name) counted as unparsed (the Kimi tool-call difference)."""
    from tinkerflow.errors import ValidationError

    kept, refused = [], 0
    for call in message.get("tool_calls", []):
        try:
            ToolCall(name=call.function.name, arguments=call.function.arguments, id=call.id)
            kept.append(call)
        except ValidationError:
            refused += 1
    adjusted = {**message, "tool_calls": kept}
    thinking, text, calls, unparsed = normalized(adjusted)
    return thinking, text, calls, int(unparsed) + refused  # type: ignore[call-overload]


def check_kimi_sampled_parse(renderer: Renderer, reference: Any, profile: Profile, *, examples: int = 300) -> int:
    """Parses of generated samples agree (message view and termination, or both refuse); returns how many samples
    held a tool call the parsers read."""
    from tinker_cookbook.exceptions import RendererError

    from tinkerflow.render import RenderError, parse_response

    with_calls = [0]

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(kimi_samples(renderer, profile))
    def check(tokens: list[int]) -> None:
        try:
            parsed = parse_response(renderer, tokens)
            mine: object = (normalized(parsed.message), parsed.termination.value)
            with_calls[0] += bool(parsed.message.tool_calls)
        except RenderError:
            mine = "error"
        try:
            message, termination = reference.parse_response(list(tokens))
            theirs: object = (_cookbook_view(message), termination.value)
        except RendererError:
            theirs = "error"
        assert mine == theirs, renderer.tokenizer.decode(tokens)

    with quiet():
        check()
    return with_calls[0]


__all__ = [
    "KIMI_CONTROL",
    "PARSE_CONTROLS",
    "check_kimi",
    "check_kimi_sampled_parse",
    "joined_text",
    "kimi_profile",
    "kimi_samples",
    "kimi_test_tokenizer_dir",
    "kimi_tokenizer",
    "kimi_tokenizers",
    "pair",
    "prompt_rules_agree",
    "turn_rules_agree",
    "with_kimi_ids",
]
