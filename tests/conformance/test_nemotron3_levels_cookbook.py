"""Token-exact conformance of ``nemotron3_low_thinking`` and ``nemotron3_disable_thinking`` with tinker-cookbook
0.6.1 on 1,000 generated conversations each (tokenizer: the offline Qwen3 vocabulary, see
``test_nemotron3_cookbook.py``), and the low-effort marker's rules."""

from __future__ import annotations

import pytest

from tinkerflow.chat import Conversation, Message, TextPart
from tinkerflow.render import RenderError, build_generation_prompt, build_supervised_example

from ._v061 import check_family, cookbook, ours, qwen_profile, with_system_message

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("name", ["nemotron3_low_thinking", "nemotron3_disable_thinking"])
def test_matches_cookbook(name: str) -> None:
    reference = cookbook(name, "qwen3")
    count = check_family(ours(name, "qwen3"), reference, qwen_profile(), adjust_customized=with_system_message)
    assert count >= 1000


def test_low_effort_marker_ends_the_last_user_message() -> None:
    renderer = ours("nemotron3_low_thinking", "qwen3")
    chat = (
        Message(role="user", content="a "),
        Message(role="assistant", content="b"),
        Message(role="user", content="c"),
    )
    text = renderer.tokenizer.decode(build_generation_prompt(renderer, chat).to_tokens().tolist())
    assert "user\na<|im_end|>" in text
    assert text.endswith("user\nc\n\n{reasoning effort: low}<|im_end|>\n<|im_start|>assistant\n<think>\n")


def test_low_effort_refuses_parts_in_the_last_user_message() -> None:
    renderer = ours("nemotron3_low_thinking", "qwen3")
    chat = Conversation(
        messages=(Message(role="user", content=(TextPart("q"),)), Message(role="assistant", content="a"))
    )
    with pytest.raises(RenderError, match=r"messages\[0\]\.content"):
        build_supervised_example(renderer, chat)


def test_disable_thinking_prompt_and_refusal() -> None:
    from tinkerflow.chat import ThinkingPart

    renderer = ours("nemotron3_disable_thinking", "qwen3")
    history = (Message(role="user", content="q"),)
    prompt = build_generation_prompt(renderer, history).to_tokens().tolist()
    assert renderer.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n<think></think>")
    example = build_supervised_example(renderer, (*history, Message(role="assistant", content="a")))
    assert example.tokens_T.tolist()[: len(prompt)] == prompt
    assert not example.weights_T[: len(prompt)].any()
    reasoning = Message(role="assistant", content=(ThinkingPart("t"), TextPart("a")))
    with pytest.raises(RenderError, match="thinking"):
        build_supervised_example(renderer, (*history, reasoning))
