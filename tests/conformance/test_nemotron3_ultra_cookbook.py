"""Token-exact conformance of ``nemotron3_ultra`` and ``nemotron3_ultra_preserve_thinking`` (the Nemotron-3 Ultra
/ 3.5 format) with tinker-cookbook 0.6.1 on 1,000 generated conversations each, plus parses of generated samples
(tokenizer: the offline Qwen3 vocabulary, see ``test_nemotron3_cookbook.py``)."""

from __future__ import annotations

import pytest

from tinkerflow.chat import Message, TextPart, ThinkingPart
from tinkerflow.render import build_supervised_example

from ._v061 import check_family, check_sampled_parse, cookbook, ours, qwen_profile, with_system_message

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("name", ["nemotron3_ultra", "nemotron3_ultra_preserve_thinking"])
def test_matches_cookbook(name: str) -> None:
    reference = cookbook(name, "qwen3")
    count = check_family(ours(name, "qwen3"), reference, qwen_profile(), adjust_customized=with_system_message)
    assert count >= 1000


def test_sampled_responses_parse_like_the_cookbook() -> None:
    controls = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_end|>"]
    check_sampled_parse(
        ours("nemotron3_ultra", "qwen3"), cookbook("nemotron3_ultra", "qwen3"), controls, qwen_profile()
    )


def test_ultra_reasoning_block_has_no_separators() -> None:
    renderer = ours("nemotron3_ultra", "qwen3")
    chat = (
        Message(role="user", content="q"),
        Message(role="assistant", content=(ThinkingPart("t"), TextPart("a"))),
        Message(role="user", content="r"),
        Message(role="assistant", content=(ThinkingPart("u"), TextPart("b"))),
    )
    text = renderer.tokenizer.decode(build_supervised_example(renderer, chat).tokens_T.tolist())
    assert "assistant\n<think></think>a<|im_end|>" in text  # earlier reasoning stripped
    assert text.endswith("assistant\n<think>\nu</think>b<|im_end|>")
    kept = ours("nemotron3_ultra_preserve_thinking", "qwen3")
    assert "assistant\n<think>\nt</think>a<|im_end|>" in kept.tokenizer.decode(
        build_supervised_example(kept, chat).tokens_T.tolist()
    )
