"""Token-exact conformance of ``qwen3_8_low_reasoning`` and ``qwen3_8_disable_thinking`` with tinker-cookbook
0.6.1 on 1,000 generated conversations each (tokenizer: the offline Qwen3 vocabulary, see
``test_qwen3_8_cookbook.py``), and the one deliberate difference of the Qwen3.8 family."""

from __future__ import annotations

import attrs
import pytest

from tinkerflow.chat import Conversation, Message
from tinkerflow.render import TrainOnWhat, build_generation_prompt, build_supervised_example
from tinkerflow.render.family import text_of

from . import _cookbook as cb
from ._v061 import check_family, cookbook, ours, quiet, qwen_profile

pytestmark = pytest.mark.conformance


def without_double_empty_system(conversation: Conversation) -> Conversation:
    """Two leading whitespace-only system messages (no tools) hit the cookbook's non-idempotent re-normalization
    (deliberate difference, tested below): keep the second only."""
    messages = conversation.messages
    if (
        not conversation.tools
        and len(messages) >= 2
        and all(m.role == "system" and not text_of(m).strip() for m in messages[:2])
    ):
        return attrs.evolve(conversation, messages=messages[1:])
    return conversation


@pytest.mark.parametrize("name", ["qwen3_8_low_reasoning", "qwen3_8_disable_thinking"])
def test_matches_cookbook(name: str) -> None:
    reference = cookbook(name, "qwen3")
    profile = qwen_profile()
    assert check_family(ours(name, "qwen3"), reference, profile, adjust=without_double_empty_system) >= 1000


def test_two_empty_system_messages_are_rendered_consistently_unlike_the_cookbook() -> None:
    """The cookbook drops the first empty system message, then re-normalizes the trained turn's prompt and drops
    the second too, so the prompt no longer prefixes the example and it refuses (thinking disabled). tinkerflow
    prepares once: the example starts with exactly the generation prompt of its history."""
    messages = (
        Message(role="system", content=""),
        Message(role="system", content=" "),
        Message(role="user", content="q"),
        Message(role="assistant", content="a"),
    )
    renderer = ours("qwen3_8_disable_thinking", "qwen3")
    example = build_supervised_example(renderer, Conversation(messages=messages)).tokens_T.tolist()
    prompt = build_generation_prompt(renderer, messages[:-1]).to_tokens().tolist()
    assert example[: len(prompt)] == prompt
    from tinker_cookbook.exceptions import RendererError

    with quiet(), pytest.raises(RendererError):
        cb.cookbook_example(
            cookbook("qwen3_8_disable_thinking", "qwen3"),
            Conversation(messages=messages),
            TrainOnWhat.LAST_ASSISTANT_MESSAGE,
        )
