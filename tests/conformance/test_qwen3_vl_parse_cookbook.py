"""Qwen3-VL parsing after a thinking block, against tinker-cookbook 0.6.1: text after an empty ``<think></think>``
is kept as written, and the newlines after a non-empty block are dropped (the derandomized conformance run found
the empty-block case; this grid pins every combination of short thinking and reply texts)."""

from __future__ import annotations

import itertools

import pytest

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart

from ._compare import compare_parse, families

pytestmark = pytest.mark.conformance

TEXTS = ("", "\n", " ", "\n\n", "a", "a\n", "\na", "\n a")


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_vl_instruct"])
def test_text_after_a_thinking_block_parses_like_the_cookbook(name: str) -> None:
    family = next(f for f in families() if f.name == name and f.tokenizer == "qwen3")
    renderer, reference = family.renderer(), family.cookbook()
    compared = 0
    for reply, thinking in itertools.product(TEXTS, (None, *TEXTS)):
        if thinking is None:
            content: str | tuple[ThinkingPart | TextPart, ...] = reply
        else:
            content = (ThinkingPart(thinking), TextPart(reply)) if reply else (ThinkingPart(thinking),)
        conversation = Conversation(
            messages=(Message(role="user", content="hi"), Message(role="assistant", content=content))
        )
        assert compare_parse(renderer, reference, conversation) is None, (reply, thinking)
        compared += 1
    assert compared == len(TEXTS) * (len(TEXTS) + 1)
