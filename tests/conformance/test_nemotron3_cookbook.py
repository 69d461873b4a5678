"""Token-exact conformance of ``nemotron3`` and ``nemotron3_preserve_thinking`` with tinker-cookbook 0.6.1 on 1,000
generated conversations each (ids and weights in every train-on mode, per-turn splits, prompts with prefills,
parses; plus parses of generated samples), the Nemotron-3 tool declarations, and the deliberate difference of the
family (``customized`` training without a system message).

Tokenizer: the offline Qwen3 vocabulary. Every control token the Nemotron-3 formats write (``<|im_start|>``,
``<|im_end|>``, ``<think>``, ``</think>``, ``<tool_call>``, ``</tool_call>``, ``<tool_response>``,
``<tool_response>``) is spelled the same there, so the comparison is structural, token for token (Nemotron-3's own
131k vocabulary is in no offline package in Hugging Face form).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow.chat import Conversation, Message, ToolSpec
from tinkerflow.render import TrainOnWhat, build_generation_prompt, build_supervised_example
from tinkerflow.render.nemotron3 import nemotron3_tool_declaration

from . import _cookbook as cb
from ._v061 import check_family, check_sampled_parse, cookbook, ours, quiet, qwen_profile, with_system_message

pytestmark = pytest.mark.conformance

CONTROLS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_end|>"]


@pytest.mark.parametrize("name", ["nemotron3", "nemotron3_preserve_thinking"])
def test_matches_cookbook(name: str) -> None:
    reference = cookbook(name, "qwen3")
    count = check_family(ours(name, "qwen3"), reference, qwen_profile(), adjust_customized=with_system_message)
    assert count >= 1000


def test_sampled_responses_parse_like_the_cookbook() -> None:
    check_sampled_parse(ours("nemotron3", "qwen3"), cookbook("nemotron3", "qwen3"), CONTROLS, qwen_profile())


_KEY = st.from_regex(r"[a-z][a-z_]{0,6}", fullmatch=True)
_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-50, 50), st.floats(-2, 2, allow_nan=False), st.text(max_size=6)
)
_FIELD = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["string", "integer", "object"]), st.lists(st.sampled_from(["a", "b"]))),
        "description": st.text(max_size=10),
        "enum": st.lists(_SCALAR, max_size=3),
        "default": _SCALAR,
        "items": st.dictionaries(_KEY, _SCALAR, max_size=2),
    },
)
_SCHEMA = st.fixed_dictionaries(
    {"type": st.just("object"), "properties": st.dictionaries(_KEY, _FIELD, max_size=3)},
    optional={"required": st.lists(_KEY, max_size=2), "additionalProperties": st.booleans()},
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(_KEY, st.text(max_size=12), _SCHEMA)
def test_tool_declarations_match_the_cookbook(name: str, description: str, schema: dict[str, object]) -> None:
    """The XML declaration of a tool (types, descriptions, enums, extra keys, required) equals the cookbook's."""
    from tinker_cookbook.renderers.nemotron3 import _format_nemotron3_tool_declaration

    spec = ToolSpec.create(name, description, schema)
    expected = _format_nemotron3_tool_declaration(
        {"name": name, "description": description, "parameters": json.loads(spec.parameters)}  # type: ignore[typeddict-item]
    )
    assert nemotron3_tool_declaration(spec) == expected


def test_layout_golden() -> None:
    renderer = ours("nemotron3", "qwen3")
    chat = Conversation(messages=(Message(role="user", content=" hi "), Message(role="assistant", content="yo")))
    text = renderer.tokenizer.decode(build_supervised_example(renderer, chat).tokens_T.tolist())
    assert text == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>yo<|im_end|>"
    )
    prompt = build_generation_prompt(renderer, chat.messages[:1]).to_tokens().tolist()
    assert renderer.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n<think>\n")


def test_customized_without_a_system_message_unlike_the_cookbook() -> None:
    """The template always writes a system block, so an empty system message is added. tinkerflow gives it no
    weight under ``customized``; the cookbook adds it without a ``trainable`` flag and refuses the conversation."""
    messages = (
        Message(role="user", content="q", trainable=False),
        Message(role="assistant", content="a", trainable=True),
    )
    renderer = ours("nemotron3", "qwen3")
    example = build_supervised_example(renderer, Conversation(messages=messages), TrainOnWhat.CUSTOMIZED)
    weighted = [t for t, w in zip(example.tokens_T.tolist(), example.weights_T.tolist(), strict=True) if w]
    assert renderer.tokenizer.decode(weighted) == "a<|im_end|>"
    with quiet(), pytest.raises(AssertionError):
        cb.cookbook_example(cookbook("nemotron3", "qwen3"), Conversation(messages=messages), TrainOnWhat.CUSTOMIZED)
