"""The opening of each DeepSeek V4.1 level's generation prompt (effort line or none), equal to tinker-cookbook
0.6.1's (tokenizer: the DeepSeek V4.1 test vocabulary). The 1,000-conversation comparison of every level is
``test_deepseek_v4_1_cookbook.py::test_matches_cookbook``."""

from __future__ import annotations

import pytest

from tinkerflow.chat import Message
from tinkerflow.render import build_generation_prompt

from ._deepseek_v4 import pair

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize(
    ("name", "opening"),
    [
        ("deepseekv4_1", "<｜System｜>Reasoning Effort: 75 "),
        ("deepseekv4_1_preserve_thinking", "<｜System｜>Reasoning Effort: 75 "),
        ("deepseekv4_1_low_reasoning", "<｜System｜>Reasoning Effort: 50 "),
        ("deepseekv4_1_max_reasoning", "<｜System｜>Reasoning Effort: 100 "),
        ("deepseekv4_1_disable_thinking", ""),
    ],
)
def test_prompt_opening(name: str, opening: str) -> None:
    renderer, reference = pair(name)
    prompt = build_generation_prompt(renderer, [Message(role="user", content="hi")]).to_tokens().tolist()
    text = renderer.tokenizer.decode(prompt)
    effort = "(range 1-100, the higher the value, the more thorough the reasoning)\n\n" if opening else ""
    close = "<think>" if opening else "</think>"
    assert text == f"<｜begin▁of▁sentence｜>{opening}{effort}<｜User｜>hi<｜Assistant｜>{close}"
    assert prompt == reference.build_generation_prompt([{"role": "user", "content": "hi"}]).to_ints()
