"""Token-exact conformance of ``qwen3_5_preserve_thinking`` and ``qwen3_5_disable_thinking`` with tinker-cookbook
0.6.1 on 1,000 generated conversations each (tokenizer: the offline Qwen3 vocabulary, which spells every Qwen3.5
control token the same; see ``test_qwen3_5_cookbook.py``)."""

from __future__ import annotations

import pytest

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart
from tinkerflow.render import RenderError, build_supervised_example

from ._v061 import check_family, cookbook, ours, qwen_profile

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("name", ["qwen3_5_preserve_thinking", "qwen3_5_disable_thinking"])
def test_matches_cookbook(name: str) -> None:
    assert check_family(ours(name, "qwen3"), cookbook(name, "qwen3"), qwen_profile()) >= 1000


def test_disabled_thinking_refuses_a_trained_turn_that_reasons() -> None:
    turn = Message(role="assistant", content=(ThinkingPart("hmm"), TextPart("4")))
    chat = Conversation(messages=(Message(role="user", content="2+2?"), turn))
    with pytest.raises(RenderError, match="thinking"):
        build_supervised_example(ours("qwen3_5_disable_thinking", "qwen3"), chat)
    assert build_supervised_example(ours("qwen3_5", "qwen3"), chat).length > 0
