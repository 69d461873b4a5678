"""Token-exact conformance of ``qwen3_8_xhigh_reasoning`` and ``qwen3_8_medium_reasoning`` with tinker-cookbook
0.6.1 on 1,000 generated conversations each (ids and weights in every train-on mode, prompts, parses).

Tokenizer: the offline Qwen3 vocabulary; Qwen3.8 shares Qwen3.5's control tokens, which Qwen3 spells the same, so
the comparison is structural, token for token (see ``test_qwen3_5_cookbook.py``).
"""

from __future__ import annotations

import pytest

from tinkerflow.chat import Conversation, Message
from tinkerflow.render import RenderError, build_generation_prompt
from tinkerflow.render.qwen3_8 import REASONING_EFFORT_INSTRUCTIONS

from ._v061 import check_family, cookbook, ours, qwen_profile
from .test_qwen3_8_levels_cookbook import without_double_empty_system

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("name", ["qwen3_8_xhigh_reasoning", "qwen3_8_medium_reasoning"])
def test_matches_cookbook(name: str) -> None:
    # deliberate difference 10 (docs/rendering.md): two leading empty system messages are prepared once; the
    # cookbook re-normalizes them twice (tested in test_qwen3_8_levels_cookbook.py)
    reference = cookbook(name, "qwen3")
    assert check_family(ours(name, "qwen3"), reference, qwen_profile(), adjust=without_double_empty_system) >= 1000


def test_effort_sentence_opens_the_system_message() -> None:
    renderer = ours("qwen3_8_low_reasoning", "qwen3")
    prompt = build_generation_prompt(renderer, [Message(role="user", content="hi")]).to_tokens().tolist()
    text = renderer.tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>system\n" + REASONING_EFFORT_INSTRUCTIONS["low"] + "<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    medium = ours("qwen3_8_medium_reasoning", "qwen3")
    chat = [Message(role="system", content="  "), Message(role="user", content="hi")]
    assert medium.tokenizer.decode(build_generation_prompt(medium, chat).to_tokens().tolist()).startswith(
        "<|im_start|>user\nhi"
    )  # an empty system message is dropped


def test_unknown_effort_is_a_typed_error() -> None:
    with pytest.raises(RenderError, match="reasoning_effort"):
        ours("qwen3_8_xhigh_reasoning", "qwen3", reasoning_effort="extreme")


def test_no_user_message_still_frames_thinking() -> None:
    renderer = ours("qwen3_8_xhigh_reasoning", "qwen3")
    chat = Conversation(messages=(Message(role="system", content="s"),))
    text = renderer.tokenizer.decode(build_generation_prompt(renderer, chat).to_tokens().tolist())
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n<think>\n")
