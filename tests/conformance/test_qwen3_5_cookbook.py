"""Token-exact conformance of ``qwen3_5`` with tinker-cookbook 0.6.1 (ids and weights, prompts, parses), on 1,000
generated conversations (plus images, and parses of generated samples); the other Qwen3.5 names are in
``test_qwen3_5_variants_cookbook.py``.

Tokenizer: the offline Qwen3 vocabulary (no package carries Qwen3.5's 248k vocabulary in Hugging Face form). Every
control token the Qwen3.5 format writes (``<|im_start|>``, ``<|im_end|>``, ``<think>``, ``</think>``,
``<tool_call>``, ``</tool_call>``, ``<tool_response>``, ``</tool_response>``, ``<|vision_start|>``,
``<|vision_end|>``) has the same spelling there, so the comparison is structural, token for token.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart, ToolCall
from tinkerflow.render import Termination, build_generation_prompt, build_supervised_example, parse_response

from . import _cookbook as cb
from ._v061 import check_family, check_sampled_parse, cookbook, ours, qwen_profile

pytestmark = pytest.mark.conformance

CONTROLS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_end|>"]


def test_matches_cookbook() -> None:
    assert check_family(ours("qwen3_5", "qwen3"), cookbook("qwen3_5", "qwen3"), qwen_profile()) >= 1000


def test_matches_cookbook_with_images() -> None:
    reference = cookbook("qwen3_5", "qwen3", image_processor=cb.qwen3_vl_image_processor())
    profile = qwen_profile(images=True, max_messages=5)
    assert check_family(ours("qwen3_5", "qwen3"), reference, profile, examples=100) >= 100


def test_sampled_responses_parse_like_the_cookbook() -> None:
    check_sampled_parse(ours("qwen3_5", "qwen3"), cookbook("qwen3_5", "qwen3"), CONTROLS, qwen_profile())


def test_xml_tool_call_values_follow_the_format() -> None:
    """Arguments are written one parameter each (Qwen3.5: scalars by Python's str) and parsed back as JSON where
    the value parses (so ``True`` stays a string): the format is lossy, as in the cookbook."""
    renderer = ours("qwen3_5", "qwen3")
    call = ToolCall(name="f", arguments='{"a": "x y", "b": 3, "c": [1, 2], "d": true}')
    history = (Message(role="user", content="q"),)
    chat = Conversation(messages=(*history, Message(role="assistant", tool_calls=(call,))))
    tokens = build_supervised_example(renderer, chat).tokens_T.tolist()
    text = renderer.tokenizer.decode(tokens)
    assert "<parameter=d>\nTrue\n</parameter>" in text
    assert "<parameter=c>\n[1, 2]\n</parameter>" in text
    parsed = parse_response(renderer, tokens[build_generation_prompt(renderer, history).length :])
    assert parsed.termination is Termination.STOP_SEQUENCE
    assert parsed.message.tool_calls[0].arguments_dict() == {"a": "x y", "b": 3, "c": [1, 2], "d": "True"}


_WORD = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10).filter(
    lambda text: "<" not in text and ">" not in text
)
_VALUE = st.one_of(
    st.integers(-999, 999),
    st.from_regex(r"[a-z]{1,6}", fullmatch=True).filter(lambda text: text not in ("true", "false", "null")),
)
_XML_CALL = st.builds(
    lambda name, args: ToolCall(name=name, arguments=json.dumps(args)),
    st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
    st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), _VALUE, max_size=2),
)


@pytest.mark.parametrize("name", ["qwen3_5", "qwen3_5_preserve_thinking", "qwen3_8_xhigh_reasoning"])
def test_parse_inverts_render(name: str) -> None:
    """``parse(render(m)) == m`` for messages in canonical form: trimmed text and thinking, arguments that the XML
    format keeps (integers, lowercase words), written by ``json.dumps``."""
    renderer = ours(name, "qwen3")

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(st.one_of(st.none(), _WORD), st.one_of(st.just(""), _WORD), st.lists(_XML_CALL, max_size=2), _WORD)
    def check(thinking: str | None, text: str, calls: list[ToolCall], question: str) -> None:
        content = text if thinking is None else (ThinkingPart(thinking), *((TextPart(text),) if text else ()))
        message = Message(role="assistant", content=content, tool_calls=tuple(calls))
        history = (Message(role="user", content=question),)
        full = build_supervised_example(renderer, (*history, message)).tokens_T.tolist()
        prompt = build_generation_prompt(renderer, history).to_tokens().tolist()
        assert full[: len(prompt)] == prompt
        parsed = parse_response(renderer, full[len(prompt) :])
        assert parsed.termination is Termination.STOP_SEQUENCE
        assert parsed.message == message

    check()
