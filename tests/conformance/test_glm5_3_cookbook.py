"""Token-exact conformance of ``glm5_3_max_reasoning`` and ``glm5_3_high_reasoning`` with tinker-cookbook 0.6.1 on
1,000 generated conversations each (ids and weights in every train-on mode, prompts with prefills, parses), the
``strip_thinking_from_history`` option, parses of generated samples, and tool results sorted into call order.

Tokenizer: a test vocabulary (``_v061.glm_test_tokenizer_dir``): the offline Qwen3 vocabulary plus GLM-5.3's
control tokens it lacks (``[gMASK]``, ``<sop>``, ``<|system|>``, ``<|user|>``, ``<|assistant|>``,
``<|observation|>``, ``<arg_key>``, ``</arg_key>``, ``<arg_value>``, ``</arg_value>``), spelled exactly; both
renderers get the same vocabulary, so the comparison is structural, token for token.
"""

from __future__ import annotations

from typing import Any

import pytest

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart, ToolCall
from tinkerflow.render import (
    Renderer,
    Termination,
    TrainOnWhat,
    build_generation_prompt,
    build_supervised_example,
    parse_response,
)
from tinkerflow.render.families_v061 import EXTRA_FACTORIES

from . import _cookbook as cb
from ._compare import compare_example
from ._strategies import Profile, all_of, nfc_stable, without_spellings
from ._v061 import check_family, check_sampled_parse, glm_tokenizers, qwen_profile

pytestmark = pytest.mark.conformance

CONTROLS = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "<|user|>",
    "<|observation|>",
]


def glm_profile() -> Profile:
    tokenizer, _ = glm_tokenizers()
    return qwen_profile(text_ok=all_of(without_spellings(tokenizer.added_tokens), nfc_stable))


def pair(name: str, **options: object) -> tuple[Renderer, Any]:
    """Ours and the cookbook's renderer of ``name`` over the GLM-5.3 test vocabulary."""
    from tinker_cookbook.renderers import get_renderer

    tokenizer, hf = glm_tokenizers()
    reference = get_renderer(name, hf)
    if options:
        reference = type(reference)(hf, **options)
    return EXTRA_FACTORIES[name](tokenizer, **options), reference


@pytest.mark.parametrize("name", ["glm5_3_max_reasoning", "glm5_3_high_reasoning"])
def test_matches_cookbook(name: str) -> None:
    assert check_family(*pair(name), glm_profile()) >= 1000


def test_strip_thinking_from_history_matches_cookbook() -> None:
    assert check_family(*pair("glm5_3_max_reasoning", strip_thinking_from_history=True), glm_profile(), examples=200)


def test_sampled_responses_parse_like_the_cookbook() -> None:
    check_sampled_parse(*pair("glm5_3_max_reasoning"), CONTROLS, glm_profile())


def test_tool_results_are_sorted_into_call_order() -> None:
    calls = (ToolCall(name="f", arguments="{}", id="a"), ToolCall(name="g", arguments='{"x": [1]}', id="b"))
    messages = (
        Message(role="user", content="q"),
        Message(role="assistant", content="", tool_calls=calls),
        Message(role="tool", content="B", tool_call_id="b"),
        Message(role="tool", content="A", tool_call_id="a"),
        Message(role="assistant", content="done"),
    )
    renderer, reference = pair("glm5_3_max_reasoning")
    for mode in (TrainOnWhat.LAST_ASSISTANT_MESSAGE, TrainOnWhat.ALL_TOKENS):
        assert compare_example(None, renderer, reference, Conversation(messages=messages), mode) is None  # type: ignore[arg-type]
    text = renderer.tokenizer.decode(build_supervised_example(renderer, messages).tokens_T.tolist())
    assert "<|observation|><tool_response>A</tool_response><tool_response>B</tool_response><|assistant|>" in text
    assert text.startswith("[gMASK]<sop><|system|>Reasoning Effort: Max<|user|>q<|assistant|><think></think>")
    assert "<tool_call>g<arg_key>x</arg_key><arg_value>[1]</arg_value></tool_call><|observation|>" in text
    assert cb.layout(build_generation_prompt(renderer, messages[:4])) == cb.layout(
        reference.build_generation_prompt(cb.to_cookbook_messages(reference, messages[:4]))
    )


def test_turn_terminators_are_trained_with_their_message() -> None:
    renderer, _ = pair("glm5_3_max_reasoning")
    chat = (
        Message(role="user", content="q"),
        Message(role="assistant", content=(ThinkingPart("t"), TextPart(" a "))),
        Message(role="user", content="r"),
        Message(role="assistant", content="b"),
    )
    example = build_supervised_example(renderer, chat, "all_assistant_messages")
    tokens, weights = example.tokens_T.tolist(), example.weights_T.tolist()
    weighted = renderer.tokenizer.decode([t for t, w in zip(tokens, weights, strict=True) if w])
    assert weighted == "t</think>a<|user|></think>b<|user|>"
    history = chat[:3]
    prompt = build_generation_prompt(renderer, history).to_tokens().tolist()
    assert renderer.tokenizer.decode(prompt).endswith("<|user|>r<|assistant|><think>")
    parsed = parse_response(renderer, tokens[len(prompt) :])
    assert parsed.termination is Termination.STOP_SEQUENCE
    assert parsed.message.content == "b"
