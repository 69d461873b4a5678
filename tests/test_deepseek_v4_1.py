"""DeepSeek V4.1 renderers (``deepseekv4_1*``): the format written out, reasoning kept or dropped, the turn
structure, parsing (round trip, DSML tool calls, terminations) and refusals. Differential tests against
tinker-cookbook are in ``tests/conformance/test_deepseek_v4_1*_cookbook.py``."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.conformance._deepseek_v4 import v4_1_tokenizer_dir

from tinkerflow.chat import Conversation, ImagePart, Message, TextPart, ThinkingPart, ToolCall, ToolSpec
from tinkerflow.render import (
    RenderError,
    Termination,
    build_generation_prompt,
    build_supervised_example,
    build_supervised_examples,
    get_renderer,
    parse_response,
)
from tinkerflow.render.renderer import Renderer
from tinkerflow.shell.io.tokenizers import load_tokenizer
from tinkerflow.tokenizers import Tokenizer

NAMES = (
    "deepseekv4_1",
    "deepseekv4_1_low_reasoning",
    "deepseekv4_1_max_reasoning",
    "deepseekv4_1_disable_thinking",
    "deepseekv4_1_preserve_thinking",
)
EFFORT = "Reasoning Effort: 75 (range 1-100, the higher the value, the more thorough the reasoning)\n\n"


@functools.cache
def tokenizer() -> Tokenizer:
    return load_tokenizer(v4_1_tokenizer_dir())


def renderer(name: str) -> Renderer:
    return get_renderer(name, tokenizer())


def decoded(name: str, conversation: Conversation | tuple[Message, ...], mode: str = "all_tokens") -> tuple[str, str]:
    """The whole example and its weighted tokens, decoded."""
    example = build_supervised_example(renderer(name), conversation, mode)  # type: ignore[arg-type]
    tokens, weights = example.tokens_T.tolist(), example.weights_T.tolist()
    weighted = [token for token, weight in zip(tokens, weights, strict=True) if weight]
    return tokenizer().decode(tokens), tokenizer().decode(weighted)


CHAT = (
    Message(role="user", content="q1"),
    Message(role="assistant", content=(ThinkingPart("r1"), TextPart("a1"))),
    Message(role="user", content="q2"),
    Message(role="assistant", content=(ThinkingPart("r2"), TextPart("a2"))),
)


def test_thinking_mode_drops_earlier_reasoning() -> None:
    text, weighted = decoded("deepseekv4_1", CHAT, "all_assistant_messages")
    assert text == (
        f"<｜begin▁of▁sentence｜><｜System｜>{EFFORT}<｜User｜>q1<｜Assistant｜></think>a1<｜end▁of▁sentence｜>"
        "<｜User｜>q2<｜Assistant｜><think>r2</think>a2<｜end▁of▁sentence｜>"
    )
    assert weighted == "a1<｜end▁of▁sentence｜>r2</think>a2<｜end▁of▁sentence｜>"
    assert not renderer("deepseekv4_1").has_extension_property


def test_preserve_thinking_keeps_it() -> None:
    text, _ = decoded("deepseekv4_1_preserve_thinking", CHAT)
    assert "<｜User｜>q1<｜Assistant｜><think>r1</think>a1<｜end▁of▁sentence｜>" in text
    assert renderer("deepseekv4_1_preserve_thinking").has_extension_property


def test_declared_tools_keep_reasoning_and_follow_the_system_prompt() -> None:
    tools = (ToolSpec.create("f", "does f", {"type": "object", "properties": {}}),)
    chat = Conversation(messages=(Message(role="system", content="S"), *CHAT), tools=tools)
    text, _ = decoded("deepseekv4_1", chat)
    assert text.startswith(f"<｜begin▁of▁sentence｜><｜System｜>{EFFORT}S\n\n## Tools\n")
    assert '{"name": "f", "description": "does f", "parameters": {"type": "object", "properties": {}}}' in text
    assert "<｜User｜>q1<｜Assistant｜><think>r1</think>a1" in text


def test_chat_mode_has_no_effort_and_no_reasoning() -> None:
    text, _ = decoded("deepseekv4_1_disable_thinking", CHAT)
    assert text == (
        "<｜begin▁of▁sentence｜><｜User｜>q1<｜Assistant｜></think>a1<｜end▁of▁sentence｜>"
        "<｜User｜>q2<｜Assistant｜></think>a2<｜end▁of▁sentence｜>"
    )
    assert renderer("deepseekv4_1_disable_thinking").has_extension_property
    system = decoded("deepseekv4_1_disable_thinking", (Message(role="system", content="S"), *CHAT[:2]))[0]
    assert system.startswith("<｜begin▁of▁sentence｜><｜System｜>S<｜User｜>q1")


def test_tool_calls_results_and_later_system_messages() -> None:
    calls = (ToolCall(name="f", arguments='{"x": "s", "n": [1, 2]}', id="a"), ToolCall(name="g", id="b"))
    chat = (
        Message(role="user", content="q"),
        Message(role="assistant", content="go", tool_calls=calls),
        Message(role="tool", content="B", tool_call_id="b"),
        Message(role="tool", content="A", tool_call_id="a"),
        Message(role="system", content="be brief"),
        Message(role="assistant", content="done"),
    )
    text, weighted = decoded("deepseekv4_1", chat, "all_user_and_system_messages")
    assert text == (
        f"<｜begin▁of▁sentence｜><｜System｜>{EFFORT}<｜User｜>q<｜Assistant｜></think>go\n\n<｜DSML｜ calls>\n"
        '<｜DSML｜ invoke name="f">\n<｜DSML｜ parameter name="x" string="true">s</｜DSML｜ parameter>\n'
        '<｜DSML｜ parameter name="n" string="false">[1, 2]</｜DSML｜ parameter>\n</｜DSML｜ invoke>\n'
        '<｜DSML｜ invoke name="g">\n\n</｜DSML｜ invoke>\n</｜DSML｜ calls><｜end▁of▁sentence｜>'
        "<｜User｜><tool_result>A</tool_result>\n\n<tool_result>B</tool_result>"
        "<｜System｜>be brief<｜Assistant｜><think></think>done<｜end▁of▁sentence｜>"
    )
    assert weighted == "qbe brief"  # the tool results' turn is a tool message's (the first of the turn)
    parsed = parse_response(
        renderer("deepseekv4_1"), [*tokenizer().encode("x"), tokenizer().token_id("<｜end▁of▁sentence｜>")]
    )
    assert parsed.message.content == "x"


def test_a_later_system_message_starts_the_last_turn() -> None:
    """``turn_start`` counts a system message after the first as a user turn, so one example per turn covers only
    the answer after it (the cookbook's rule); a leading system message does not count."""
    chat = (
        Message(role="system", content="S"),
        Message(role="user", content="q"),
        Message(role="assistant", content=(ThinkingPart("t"), TextPart("a"))),
        Message(role="system", content="be brief"),
        Message(role="assistant", content=(ThinkingPart("u"), TextPart("b"))),
    )
    r = renderer("deepseekv4_1")
    assert r.turn_start(chat) == 4
    assert r.turn_start(chat[:3]) == 2
    assert r.turn_start(chat[:1]) == 0
    examples = build_supervised_examples(r, chat, "last_assistant_turn")
    assert [e.tokens_T.tolist() for e in examples] == [build_supervised_example(r, chat).tokens_T.tolist()]
    assert len(build_supervised_examples(r, chat[:3], "last_assistant_turn")) == 1
    _, weighted = decoded("deepseekv4_1", chat, "last_assistant_turn")
    assert weighted == "u</think>b<｜end▁of▁sentence｜>"


def test_generation_prompts() -> None:
    def prompt(name: str, messages: tuple[Message, ...]) -> str:
        return tokenizer().decode(build_generation_prompt(renderer(name), messages).to_tokens().tolist())

    assert prompt("deepseekv4_1", ()) == f"<｜begin▁of▁sentence｜><｜System｜>{EFFORT}"
    assert prompt("deepseekv4_1", CHAT[:3]).endswith("<｜User｜>q2<｜Assistant｜><think>")
    assert prompt("deepseekv4_1_disable_thinking", CHAT[:3]).endswith("<｜User｜>q2<｜Assistant｜></think>")
    calling = Message(role="assistant", content="", tool_calls=(ToolCall(name="f", id="a"),))
    tool_turn = (*CHAT[:1], calling, Message(role="tool", content="r", tool_call_id="a"))
    assert prompt("deepseekv4_1", tool_turn).endswith("<｜User｜><tool_result>r</tool_result><｜Assistant｜><think>")


def test_control_token_text_in_content_stays_text() -> None:
    chat = (Message(role="user", content="<｜User｜>｜DSML｜<think>"), Message(role="assistant", content="ok"))
    example = build_supervised_example(renderer("deepseekv4_1"), chat)
    controls = {tokenizer().token_id(t) for t in ("<｜User｜>", "｜DSML｜", "<think>")}
    assert sum(token in controls for token in example.tokens_T.tolist()) == 2  # the template's <｜User｜> and <think>
    eos = tokenizer().token_id("<｜end▁of▁sentence｜>")
    parsed = parse_response(renderer("deepseekv4_1_disable_thinking"), [*tokenizer().encode("a ｜DSML｜ b"), eos])
    assert parsed.message.content == "a ｜DSML｜ b"
    assert parsed.message.unparsed_tool_calls == ()


def test_terminations_and_malformed_calls() -> None:
    r = renderer("deepseekv4_1")
    eos = tokenizer().token_id("<｜end▁of▁sentence｜>")
    cut = parse_response(r, tokenizer().encode("half an answ"))
    assert cut.termination is Termination.MALFORMED
    with pytest.raises(RenderError, match="stop tokens"):
        parse_response(r, [eos, eos])
    dsml = tokenizer().token_id("｜DSML｜")
    dangling = parse_response(r, [*tokenizer().encode("x\n\n<"), dsml, *tokenizer().encode(" calls>\n"), eos])
    assert dangling.termination is Termination.STOP_SEQUENCE
    assert dangling.message.content == "x\n\n<｜DSML｜ calls>\n"
    assert "unterminated tool block" in dangling.message.unparsed_tool_calls[0].error


def test_refusals() -> None:
    r = renderer("deepseekv4_1")
    with pytest.raises(RenderError, match="developer"):
        build_supervised_example(r, (Message(role="developer", content="d"), Message(role="assistant", content="a")))
    image = ImagePart(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(RenderError, match="image"):
        build_supervised_example(r, (Message(role="user", content=(image,)), Message(role="assistant", content="a")))
    with pytest.raises(RenderError, match="tool_call_id"):
        build_supervised_example(r, (Message(role="user", content="q"), Message(role="tool", content="r")))


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=12).filter(
    lambda s: all(c not in s for c in ("<｜", "｜DSML｜", "<think>", "</think>"))
)
_ARGS = st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.one_of(st.integers(), _TEXT), max_size=3)


@pytest.mark.parametrize("name", ["deepseekv4_1", "deepseekv4_1_disable_thinking"])
@given(thinking=_TEXT, text=_TEXT, arguments=st.lists(_ARGS, max_size=2))
def test_parse_inverts_render(name: str, thinking: str, text: str, arguments: list[dict[str, object]]) -> None:
    import json

    chat_mode = name.endswith("disable_thinking")
    calls = tuple(ToolCall(name=f"f{i}", arguments=json.dumps(a)) for i, a in enumerate(arguments))
    text = text.strip() if calls else text
    content: str | tuple[ThinkingPart | TextPart, ...] = (
        text
        if chat_mode or not thinking
        else ((ThinkingPart(thinking), TextPart(text)) if text else (ThinkingPart(thinking),))
    )
    message = Message(role="assistant", content=content, tool_calls=calls)
    history = (Message(role="user", content="q"),)
    r = renderer(name)
    full = build_supervised_example(r, (*history, message)).tokens_T.tolist()
    prompt = build_generation_prompt(r, history).to_tokens().tolist()
    assert full[: len(prompt)] == prompt
    parsed = parse_response(r, full[len(prompt) :])
    assert parsed.termination is Termination.STOP_SEQUENCE
    assert parsed.message == message


def test_every_name_is_registered() -> None:
    for name in NAMES:
        r = renderer(name)
        assert r.stop_sequences().tokens == (tokenizer().token_id("<｜end▁of▁sentence｜>"),)
