"""Token-exact conformance of ``nemotron3_ultra_medium_thinking`` and ``nemotron3_ultra_disable_thinking`` with
tinker-cookbook 0.6.1 on 1,000 generated conversations each (tokenizer: the offline Qwen3 vocabulary, see
``test_nemotron3_cookbook.py``)."""

from __future__ import annotations

import pytest

from tinkerflow.chat import Message, TextPart
from tinkerflow.render import build_generation_prompt

from ._v061 import check_family, cookbook, ours, qwen_profile, with_system_message

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("name", ["nemotron3_ultra_medium_thinking", "nemotron3_ultra_disable_thinking"])
def test_matches_cookbook(name: str) -> None:
    reference = cookbook(name, "qwen3")
    count = check_family(ours(name, "qwen3"), reference, qwen_profile(), adjust_customized=with_system_message)
    assert count >= 1000


def test_medium_effort_marker_follows_text_parts_untrimmed() -> None:
    renderer = ours("nemotron3_ultra_medium_thinking", "qwen3")
    text = renderer.tokenizer.decode(
        build_generation_prompt(renderer, [Message(role="user", content=(TextPart(" q "),))]).to_tokens().tolist()
    )
    assert text.endswith("user\n q \n\n{reasoning effort: efficient}<|im_end|>\n<|im_start|>assistant\n<think>\n")
