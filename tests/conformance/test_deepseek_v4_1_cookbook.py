"""Token-exact conformance of the five ``deepseekv4_1*`` names with tinker-cookbook 0.6.1 on the same 1,000
generated conversations (ids and weights in every train-on mode, ``customized`` flags, one-example-per-
turn splits, prompts with prefills, parses of the rendered last turn and its truncation), parses of generated
samples and of DSML-shaped responses, the tools section, and the test vocabulary against tml-renderers'.

Tokenizer: the DeepSeek V4.1 test vocabulary (``_deepseek_v4.v4_1_tokenizer_dir``): the offline DeepSeek V3 file
with the added tokens V4.1 renamed (``<｜System｜>`` at 128799 and eight image tokens), checked here against
tml-renderers' compiled ``DeepSeekV41Tokenizer`` (every added token's id and spelling, ordinary encodings). Both
renderers get the same vocabulary (ours via ``load_tokenizer(folder)``, the cookbook via ``AutoTokenizer``).

A later system message starts the last turn (``DeepSeekV41Renderer.turn_start``, the cookbook's
``_last_assistant_turn_start_index``): ``build_supervised_examples(..., "last_assistant_turn")`` is compared on
every conversation, and ``test_turn_split_after_a_later_system_message`` checks it on the smallest case.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart, ToolCall, ToolSpec
from tinkerflow.render import TrainOnWhat, build_supervised_examples

from . import _cookbook as cb
from ._compare import compare_example
from ._deepseek_v4 import (
    CONTROLS,
    V4_1_RENAMED,
    check_dsml_parse,
    check_v4_1,
    pair,
    v4_1_profile,
    v4_1_tokenizers,
)
from ._strategies import texts
from ._v061 import check_sampled_parse

pytestmark = pytest.mark.conformance


def test_matches_cookbook() -> None:
    """All five names on the same 1,000 conversations (generating them costs more than comparing five names)."""
    names = [
        "deepseekv4_1",
        "deepseekv4_1_preserve_thinking",
        "deepseekv4_1_low_reasoning",
        "deepseekv4_1_max_reasoning",
        "deepseekv4_1_disable_thinking",
    ]
    assert check_v4_1(names, v4_1_profile()) >= 1000


def test_sampled_responses_parse_like_the_cookbook() -> None:
    check_sampled_parse(*pair("deepseekv4_1"), CONTROLS, v4_1_profile())


@pytest.mark.parametrize("name", ["deepseekv4_1", "deepseekv4_1_disable_thinking"])
def test_dsml_responses_parse_like_the_cookbook(name: str) -> None:
    check_dsml_parse(*pair(name))


def test_vocabulary_is_deepseek_v4_1() -> None:
    from tml_renderers.tokenizers import DeepSeekV41Tokenizer

    tml = DeepSeekV41Tokenizer()
    tokenizer, hf = v4_1_tokenizers()
    assert len(tokenizer.added_tokens) == 1283
    for text, token in tokenizer.added_tokens.items():
        assert tml.decode([token]) == text
    assert {tokenizer.token_id(t) for t in V4_1_RENAMED.values()} == set(V4_1_RENAMED)
    for text in ("<｜System｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "｜DSML｜"):
        assert tokenizer.token_id(text) == tml.encode_special(text) == hf.convert_tokens_to_ids(text)

    @settings(max_examples=2000, deadline=None, derandomize=True, database=None, phases=[Phase.generate])
    @given(texts(v4_1_profile(), max_size=40))
    def same_encoding(text: str) -> None:
        assert tokenizer.encode(text) == list(tml.encode_ordinary(text))

    same_encoding()


def test_tools_section_matches_cookbook() -> None:
    from tinker_cookbook.renderers.deepseek_v4_1 import _render_tools

    from tinkerflow.render.deepseek_v4_1 import deepseek_v4_1_tools_text

    tools = (
        ToolSpec.create("search", "Find pages ✓", {"type": "object", "properties": {"q": {"type": "string"}}}),
        ToolSpec.create("noop", "", {"type": "object", "properties": {}}),
    )
    assert deepseek_v4_1_tools_text(tools) == _render_tools([cb.tool_spec_dict(tool) for tool in tools])


def test_tool_results_join_one_user_turn_in_call_order() -> None:
    calls = (ToolCall(name="f", arguments='{"a": 1, "b": "x"}', id="a"), ToolCall(name="g", arguments="{}", id="b"))
    messages = (
        Message(role="user", content="q"),
        Message(role="assistant", content=(ThinkingPart("t"), TextPart("calling")), tool_calls=calls),
        Message(role="tool", content="B", tool_call_id="b"),
        Message(role="tool", content="A", tool_call_id="a"),
        Message(role="assistant", content=(ThinkingPart("u"), TextPart("done"))),
    )
    conversation = Conversation(messages=messages)
    for name in ("deepseekv4_1", "deepseekv4_1_preserve_thinking", "deepseekv4_1_disable_thinking"):
        renderer, reference = pair(name)
        for mode in TrainOnWhat:
            if mode is not TrainOnWhat.CUSTOMIZED:
                assert compare_example(None, renderer, reference, conversation, mode) is None  # type: ignore[arg-type]


def test_turn_split_after_a_later_system_message() -> None:
    messages = (
        Message(role="user", content="q"),
        Message(role="assistant", content=(ThinkingPart("t"), TextPart("a"))),
        Message(role="system", content="be brief"),
        Message(role="assistant", content=(ThinkingPart("u"), TextPart("b"))),
    )
    renderer, reference = pair("deepseekv4_1")
    for mode in TrainOnWhat:
        if mode is not TrainOnWhat.CUSTOMIZED:
            assert compare_example(None, renderer, reference, Conversation(messages=messages), mode) is None  # type: ignore[arg-type]
    ours = build_supervised_examples(renderer, messages, "last_assistant_turn")
    from tinker_cookbook.renderers import TrainOnWhat as CookbookTrainOnWhat

    theirs = reference.build_supervised_examples(
        cb.to_cookbook_messages(reference, messages), train_on_what=CookbookTrainOnWhat.LAST_ASSISTANT_TURN
    )
    assert len(ours) == len(theirs) == 1  # the turn before the later system message is not trained
    assert cb.layout(ours[0].model_input) == cb.layout(theirs[0][0])
    assert ours[0].weights_T.tolist() == theirs[0][1].tolist()


@pytest.mark.parametrize("name", ["deepseekv4_1", "deepseekv4_1_disable_thinking"])
def test_more_tool_call_shapes(name: str) -> None:
    """Arguments of every JSON type, several calls, calls without text, a user message after tool results."""
    arguments = st.dictionaries(
        st.from_regex(r"[a-z]{1,4}", fullmatch=True),
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)),
        max_size=3,
    )
    renderer, reference = pair(name)
    ok = v4_1_profile().text_ok

    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(arguments, min_size=1, max_size=3), st.sampled_from(list(TrainOnWhat)[:-1]))
    def check(drawn: list[dict[str, object]], mode: TrainOnWhat) -> None:
        import json

        calls = tuple(ToolCall.create(f"f{i}", args, id=f"c{i}") for i, args in enumerate(drawn))
        if not all(ok(call.arguments) for call in calls):
            return
        messages = (
            Message(role="user", content="q"),
            Message(role="assistant", content="", tool_calls=calls),
            *(Message(role="tool", content=json.dumps(i), tool_call_id=f"c{i}") for i in reversed(range(len(calls)))),
            Message(role="user", content="and?"),
            Message(role="assistant", content=(ThinkingPart("r"), TextPart("ok"))),
        )
        assert compare_example(None, renderer, reference, Conversation(messages=messages), mode) is None  # type: ignore[arg-type]

    check()
