"""Comparison of tinkerflow renderers with tinker-cookbook 0.6.1's (test-only helpers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart
from tinkerflow.render import (
    Renderer,
    RenderError,
    TrainOnWhat,
    build_generation_prompt,
    build_supervised_example,
    build_supervised_examples,
    get_renderer,
    parse_response,
)
from tinkerflow.shell.io.tokenizers import offline_tokenizer

from . import _cookbook as cb
from ._strategies import Profile, all_of, nfc_stable, without_spellings

DATE = "2026-01-15"


@attrs.frozen
class Family:
    """A renderer under test, its cookbook counterpart and the conversations both can write."""

    name: str
    tokenizer: str
    profile: Profile
    cookbook: Callable[[], Any]
    options: dict[str, object] = attrs.field(factory=dict)
    customized: bool = True

    def renderer(self) -> Renderer:
        return get_renderer(self.name, offline_tokenizer(self.tokenizer), **self.options)


def _added(tokenizer: str) -> Callable[[str], bool]:
    return without_spellings(offline_tokenizer(tokenizer).added_tokens)


def _gpt_oss_cookbook(effort: str | None) -> Callable[[], Any]:
    def build() -> Any:
        from tinker_cookbook.renderers.gpt_oss import GptOssRenderer

        return GptOssRenderer(
            cb.hf_tokenizer("gpt_oss"),
            use_system_prompt=effort is not None,
            reasoning_effort=effort,
            current_date=DATE if effort else None,
        )

    return build


def families() -> list[Family]:
    qwen = _added("qwen3")
    plain = Profile(roles=("system",), single_text_roles=("system", "user", "assistant"))
    result = [
        Family(
            "role_colon",
            "llama3",
            attrs.evolve(plain, text_ok=_added("llama3"), last_assistant=True),
            lambda: cb.cookbook_renderer("role_colon", "llama3"),
        ),
        Family(
            "role_colon",
            "qwen3",
            attrs.evolve(plain, text_ok=all_of(qwen, nfc_stable), last_assistant=True),
            lambda: cb.cookbook_renderer("role_colon", "qwen3"),
        ),
        Family(
            "llama3",
            "llama3",
            attrs.evolve(plain, text_ok=_added("llama3")),
            lambda: cb.cookbook_renderer("llama3", "llama3"),
        ),
    ]
    qwen_profile = Profile(roles=("system",), thinking=True, tools=True, text_ok=all_of(qwen, nfc_stable))
    for name in ("qwen3", "qwen3_disable_thinking", "qwen3_instruct"):
        result.append(Family(name, "qwen3", qwen_profile, (lambda n: lambda: cb.cookbook_renderer(n, "qwen3"))(name)))
    deepseek = Profile(
        roles=("system",),
        thinking=True,
        tools=True,
        text_ok=_added("deepseek_v3"),
        assistant_text=True,
        system_first_only=True,
        single_text_roles=("system", "user", "tool"),
    )
    result.append(
        Family("deepseekv3", "deepseek_v3", deepseek, lambda: cb.cookbook_renderer("deepseekv3", "deepseek_v3"))
    )
    result.append(
        Family(
            "deepseekv3_thinking",
            "deepseek_v3",
            deepseek,
            lambda: cb.cookbook_renderer("deepseekv3_thinking", "deepseek_v3"),
        )
    )
    result.append(
        Family(
            "qwen3_vl",
            "qwen3",
            attrs.evolve(qwen_profile, images=True, max_messages=5),
            lambda: cb.cookbook_renderer("qwen3_vl", "qwen3", image_processor=cb.qwen3_vl_image_processor()),
        )
    )
    result.append(
        Family(
            "qwen3_vl_instruct",
            "qwen3",
            attrs.evolve(qwen_profile, images=True, max_messages=5),
            lambda: cb.cookbook_renderer("qwen3_vl_instruct", "qwen3", image_processor=cb.qwen3_vl_image_processor()),
        )
    )
    harmony = Profile(
        roles=("system",),
        thinking=True,
        tools=True,
        text_ok=_added("gpt_oss"),
        max_calls=1,
        single_text_roles=("system", "user", "tool"),
    )
    result.append(Family("gpt_oss_no_sysprompt", "gpt_oss", harmony, _gpt_oss_cookbook(None)))
    result.append(
        Family(
            "gpt_oss_medium_reasoning",
            "gpt_oss",
            harmony,
            _gpt_oss_cookbook("medium"),
            options={"current_date": DATE},
            customized=False,
        )
    )
    return result


def _ours_example(
    renderer: Renderer, conversation: Conversation, mode: TrainOnWhat
) -> tuple[list[int], np.ndarray] | str:
    try:
        example = build_supervised_example(renderer, conversation, mode)
    except RenderError as error:
        return f"error: {error.field}"
    return cb.layout(example.model_input), example.weights_T


def _cookbook_example(
    renderer: Any, conversation: Conversation, mode: TrainOnWhat
) -> tuple[list[int], np.ndarray] | str:
    from tinker_cookbook.exceptions import RendererError

    try:
        return cb.cookbook_example(renderer, conversation, mode)
    except (RendererError, AssertionError, NotImplementedError, ValueError) as error:
        return f"error: {type(error).__name__}"


def compare_example(
    family: Family, renderer: Renderer, reference: Any, conversation: Conversation, mode: TrainOnWhat
) -> str | None:
    """``None`` when both give the same tokens and weights (or both refuse), else a description."""
    ours = _ours_example(renderer, conversation, mode)
    theirs = _cookbook_example(reference, conversation, mode)
    if isinstance(ours, str) or isinstance(theirs, str):
        if isinstance(ours, str) and isinstance(theirs, str):
            return None
        ours_state = ours if isinstance(ours, str) else "ok"
        theirs_state = theirs if isinstance(theirs, str) else "ok"
        return f"refusal differs: ours={ours_state} cookbook={theirs_state}"
    tokens, weights = ours
    ref_tokens, ref_weights = theirs
    if tokens != ref_tokens:
        index = next(
            (i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=False)) if a != b),
            min(len(tokens), len(ref_tokens)),
        )
        tok = renderer.tokenizer
        window = slice(max(0, index - 5), index + 5)
        mine = tok.decode([t for t in tokens[window] if t >= 0])
        reference_text = tok.decode([t for t in ref_tokens[window] if t >= 0])
        return f"tokens differ at {index}: ours {mine!r} cookbook {reference_text!r}"
    if not np.array_equal(weights, ref_weights.astype(np.float32)):
        return f"weights differ: ours {weights.tolist()} cookbook {ref_weights.tolist()}"
    return None


def compare_examples(renderer: Renderer, reference: Any, conversation: Conversation, mode: TrainOnWhat) -> str | None:
    """One example per assistant message (renderers without the extension property)."""
    from tinker_cookbook.exceptions import RendererError
    from tinker_cookbook.renderers import TrainOnWhat as CookbookTrainOnWhat

    try:
        ours = [
            (cb.layout(e.model_input), e.weights_T.tolist())
            for e in build_supervised_examples(renderer, conversation, mode)
        ]
    except RenderError:
        ours = None
    try:
        theirs_raw = reference.build_supervised_examples(
            cb.to_cookbook_messages(reference, conversation), train_on_what=CookbookTrainOnWhat(mode.value)
        )
        theirs = [(cb.layout(m), [float(x) for x in w.tolist()]) for m, w in theirs_raw]
    except (RendererError, AssertionError, NotImplementedError, ValueError):
        theirs = None
    if ours != theirs:
        counts = (None if ours is None else len(ours), None if theirs is None else len(theirs))
        return f"examples differ: ours {counts[0]} cookbook {counts[1]}"
    return None


def compare_prompt(renderer: Renderer, reference: Any, conversation: Conversation, prefill: str | None) -> str | None:
    from tinker_cookbook.exceptions import RendererError

    try:
        ours: list[int] | str = cb.layout(build_generation_prompt(renderer, conversation, prefill=prefill))
    except RenderError as error:
        ours = f"error {error.field}"
    try:
        theirs: list[int] | str = cb.layout(
            reference.build_generation_prompt(cb.to_cookbook_messages(reference, conversation), prefill=prefill)
        )
    except (RendererError, AssertionError, ValueError) as error:
        theirs = f"error {type(error).__name__}"
    if isinstance(ours, str) and isinstance(theirs, str):
        return None
    if ours != theirs:
        tok = renderer.tokenizer
        show = lambda x: x if isinstance(x, str) else repr(tok.decode([t for t in x if t >= 0]))  # noqa: E731
        return f"prompt differs: ours {show(ours)} cookbook {show(theirs)}"
    return None


def normalized(message: Message | dict[str, Any], *, strip_call_separators: bool = False) -> tuple[object, ...]:
    """A comparable view of a parsed message: (thinking, text, tool calls as (name, JSON), #unparsed)."""
    if isinstance(message, Message):
        parts: list[tuple[str, str]] = []
        if isinstance(message.content, str) and "<|channel|>" in message.content:
            pass  # gpt_oss, malformed: both return the raw Harmony text
        elif isinstance(message.content, str):
            parts.append(("text", message.content))
        else:
            for part in message.content:
                if isinstance(part, TextPart):
                    parts.append(("text", part.text))
                elif isinstance(part, ThinkingPart):
                    parts.append(("thinking", part.thinking))
        calls = [(c.name, json.loads(c.arguments)) for c in message.tool_calls]
        unparsed = len(message.unparsed_tool_calls)
    else:
        content = message["content"]
        parts = []
        if isinstance(content, str) and "<|channel|>" in content:
            pass  # gpt_oss: the cookbook returns the raw Harmony text when no channel message has content
        elif isinstance(content, str):
            parts.append(("text", content))
        else:
            for part in content:
                if part["type"] == "text":
                    parts.append(("text", part["text"]))
                elif part["type"] == "thinking":
                    parts.append(("thinking", part["thinking"]))
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.get("tool_calls", [])]
        unparsed = len(message.get("unparsed_tool_calls", []))
    thinking = "".join(text for kind, text in parts if kind == "thinking")
    text = "".join(text for kind, text in parts if kind == "text")
    if strip_call_separators and calls:
        text = text.rstrip("\n")
    return thinking, text, json.dumps(calls, sort_keys=True), unparsed


def compare_parse(renderer: Renderer, reference: Any, conversation: Conversation) -> str | None:
    """Parse the rendered last assistant turn with both; compare with each other and with the original."""
    messages = conversation.messages
    if messages[-1].role != "assistant":
        return None
    history = attrs.evolve(conversation, messages=messages[:-1])
    try:
        full = cb.layout(
            build_supervised_example(renderer, conversation, TrainOnWhat.LAST_ASSISTANT_MESSAGE).model_input
        )
        prompt = cb.layout(build_generation_prompt(renderer, history))
    except RenderError:
        return None
    if full[: len(prompt)] != prompt:
        return None
    sampled = full[len(prompt) :]
    if any(token < 0 for token in sampled):
        return None
    from tinker_cookbook.exceptions import RendererError

    for tokens in (sampled, sampled[:-1]):
        try:
            ours = parse_response(renderer, tokens)
            ours_view: object = (normalized(ours.message, strip_call_separators=True), ours.termination.value)
        except RenderError:
            ours_view = "error"
        try:
            message, termination = reference.parse_response(list(tokens))
            theirs_view: object = (normalized(message, strip_call_separators=True), termination.value)
        except RendererError:
            theirs_view = "error"
        if ours_view != theirs_view:
            return f"parse differs on {len(tokens)} tokens: ours {ours_view} cookbook {theirs_view}"
    return None
