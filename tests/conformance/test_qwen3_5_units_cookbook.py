"""The Qwen3.5 fast paths (``render_units`` for plain-text chats, the direct path of ``render_message`` for plain
user and system messages): the same pieces as the general path, and token-exact with tinker-cookbook 0.6.1 on
plain-text conversations (which take them), 300 each (tokenizer: the offline Qwen3 vocabulary, see
``test_qwen3_5_cookbook.py``)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tinkerflow import testing as tft
from tinkerflow.chat import Conversation, Message
from tinkerflow.errors import TinkerflowError
from tinkerflow.render.plan import last_user_index, message_contexts

from ._v061 import check_family, cookbook, ours, qwen_profile

pytestmark = pytest.mark.conformance

NAMES = ["qwen3_5", "qwen3_5_disable_thinking", "qwen3_5_preserve_thinking"]


@pytest.mark.parametrize("name", NAMES)
def test_plain_chats_match_cookbook(name: str) -> None:
    profile = qwen_profile(parts=False, tools=False, thinking=False)
    assert check_family(ours(name, "qwen3"), cookbook(name, "qwen3"), profile, examples=300) >= 300


@settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([*NAMES, "qwen3_8_xhigh_reasoning"]), tft.conversations(max_messages=6), st.booleans())
def test_render_units_is_render_message(name: str, conversation: Conversation, plain: bool) -> None:
    """``render_units`` gives exactly ``render_message``'s pieces for plain-text chats, or declines (``None``:
    tools, parts, tool calls, and Qwen3.8, whose hooks differ)."""
    renderer = ours(name, "qwen3")
    messages, tools = conversation.messages, conversation.tools
    if plain:
        tools = ()
        messages = tuple(Message(role="user" if m.role == "tool" else m.role, content=m.text()) for m in messages)
    try:
        renderer.validate(messages, tools)
    except TinkerflowError:
        assume(False)
    messages = renderer.prepare(messages, tools)
    units = renderer.render_units(messages, last_user_index(messages), tools)
    if name.startswith("qwen3_8"):
        assert units is None
        return
    if plain:
        assert units is not None
    if units is None:
        return
    contexts = message_contexts(messages, last_user_index(messages[:-1]) + 1, tools)
    rendered = [renderer.render_message(message, ctx) for message, ctx in zip(messages, contexts, strict=True)]
    assert units == [unit for header, output, _ in rendered for unit in (header, output)]
