"""The ``tml_v0`` renderer on its own (no cookbook): layout, weights, effort, refusals, parsing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.conformance._tml_v0 import tml_v0_tokenizer

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart, ToolCall
from tinkerflow.render import (
    RenderError,
    Termination,
    build_generation_prompt,
    build_supervised_example,
    get_renderer,
    parse_response,
)
from tinkerflow.render.tml_v0 import TmlV0Renderer, effort_text
from tinkerflow.render.tml_v0_json import serde_number, tml_json, tool_call_json


def _renderer(**options: object) -> TmlV0Renderer:
    renderer = get_renderer("tml_v0", tml_v0_tokenizer(), **options)
    assert isinstance(renderer, TmlV0Renderer)
    return renderer


def _weighted(renderer: TmlV0Renderer, conversation: Conversation, mode: str) -> tuple[str, str]:
    example = build_supervised_example(renderer, conversation, mode)  # type: ignore[arg-type]  # a mode's value
    tokens, weights = example.tokens_T.tolist(), example.weights_T.tolist()
    decode = renderer.tokenizer.decode
    return decode(tokens), decode([t for t, w in zip(tokens, weights, strict=True) if w])


CHAT = Conversation(
    messages=(
        Message(role="user", content="hi"),
        Message(role="assistant", content=(ThinkingPart("think"), TextPart("a1"))),
        Message(role="user", content="again"),
        Message(role="assistant", content="a2"),
    )
)


def test_layout_and_weights() -> None:
    text, weighted = _weighted(_renderer(), CHAT, "last_assistant_message")
    assert text == (
        "<|message_system|><|content_text|>Thinking effort level: 0.9<|end_message|>"
        "<|message_user|><|content_text|>hi<|end_message|>"
        "<|message_model|><|content_thinking|>think<|end_message|>"
        "<|message_model|><|content_text|>a1<|end_message|><|content_model_end_sampling|>"
        "<|message_user|><|content_text|>again<|end_message|>"
        "<|message_model|><|content_text|>a2<|end_message|><|content_model_end_sampling|>"
    )
    assert weighted == "<|message_model|><|content_text|>a2<|end_message|><|content_model_end_sampling|>"
    _, everything = _weighted(_renderer(), CHAT, "all_assistant_messages")
    assert everything.startswith("<|message_model|><|content_thinking|>think")


def test_generation_prompt_has_no_header_and_extends() -> None:
    renderer = _renderer(thinking_effort=0.25)
    prompt = build_generation_prompt(renderer, CHAT.messages[:3]).to_tokens().tolist()
    full = build_supervised_example(renderer, CHAT).tokens_T.tolist()
    assert full[: len(prompt)] == prompt
    assert renderer.tokenizer.decode(prompt).endswith("again<|end_message|>")
    assert "level: 0.25<" in renderer.tokenizer.decode(prompt)
    assert renderer.has_extension_property


def test_empty_history_is_the_effort_message() -> None:
    tokens = build_generation_prompt(_renderer(thinking_effort=0.0), []).to_tokens().tolist()
    assert tml_v0_tokenizer().decode(tokens) == (
        "<|message_system|><|content_text|>Thinking effort level: 0<|end_message|>"
    )


@pytest.mark.parametrize(
    ("effort", "text"), [(0.9, "0.9"), (0.123, "0.12"), (0.005, "0"), (0.015, "0.02"), (0.545, "0.55"), (0.999, "1")]
)
def test_effort_text(effort: float, text: str) -> None:
    assert effort_text(effort) == text


def test_refusals() -> None:
    renderer = _renderer()
    with pytest.raises(RenderError, match="prefill"):
        build_generation_prompt(renderer, CHAT.messages[:1], prefill="x")
    with pytest.raises(RenderError, match="role"):
        build_generation_prompt(renderer, CHAT.messages[:1], role="user")
    with pytest.raises(RenderError, match="thinking_effort"):
        _renderer(thinking_effort=1.0)
    with pytest.raises(RenderError, match="developer"):
        build_supervised_example(renderer, [Message(role="developer", content="d")])


def test_control_token_text_stays_text() -> None:
    renderer = _renderer()
    spelled = "<|end_message|><|content_model_end_sampling|>"
    conversation = Conversation(
        messages=(Message(role="user", content="u"), Message(role="assistant", content=spelled))
    )
    tokens = build_supervised_example(renderer, conversation).tokens_T.tolist()
    stop = renderer.stop_sequences().tokens[0]
    assert tokens.count(stop) == 1
    prompt = build_generation_prompt(renderer, conversation.messages[:1]).to_tokens().tolist()
    parsed = parse_response(renderer, tokens[len(prompt) :])
    assert parsed.message.content == spelled
    assert parsed.termination is Termination.STOP_SEQUENCE


def test_customized_trains_only_assistant_messages() -> None:
    conversation = Conversation(
        messages=(
            Message(role="user", content="u", trainable=True),
            Message(role="assistant", content="a", trainable=True),
        )
    )
    _, weighted = _weighted(_renderer(), conversation, "customized")
    assert weighted == "<|message_model|><|content_text|>a<|end_message|><|content_model_end_sampling|>"


def test_terminations() -> None:
    renderer = _renderer()
    tok = renderer.tokenizer
    body = [tok.token_id("<|message_model|>"), tok.token_id("<|content_text|>"), *tok.encode("hi")]
    end = tok.token_id("<|end_message|>")
    stop = tok.token_id("<|content_model_end_sampling|>")
    assert parse_response(renderer, [*body, end, stop]).termination is Termination.STOP_SEQUENCE
    cut = parse_response(renderer, [*body, end])
    assert (cut.message.content, cut.termination) == ("hi", Termination.MALFORMED)
    raw = parse_response(renderer, body)
    assert raw.termination is Termination.MALFORMED
    assert raw.message.content == tok.decode(body)


def test_tool_call_json() -> None:
    assert tool_call_json("f", {"b": {"z": 1, "y": "é"}, "a": 1.5e20}) == (
        '{"name":"f","args":{"a":1.5e20,"b":{"z":1,"y":"é"}}}'
    )
    assert tml_json([1e16, 1e15, 1e-5, 1e-6, -0.0, 2**64, None]) == (
        "[1e16,1000000000000000.0,0.00001,1e-6,-0.0,1.8446744073709552e19,null]"
    )
    assert serde_number("1864650594002959.0") == 1864650594002959.2  # serde_json's inexact read


_SAFE = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12).filter(lambda t: "<|" not in t)
_ARGS = st.dictionaries(
    st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.one_of(st.none(), st.booleans(), st.integers(-9, 9), _SAFE)
)


@given(
    thinking=st.one_of(st.none(), _SAFE),
    text=_SAFE,
    calls=st.lists(st.tuples(st.from_regex(r"[a-z]{1,5}", fullmatch=True), _ARGS), max_size=2),
)
def test_parse_inverts_render(thinking: str | None, text: str, calls: list[tuple[str, dict[str, object]]]) -> None:
    renderer = _renderer()
    parts = (ThinkingPart(thinking), TextPart(text)) if thinking is not None else ()
    content = parts if parts else text
    tool_calls = tuple(ToolCall(name=n, arguments=json.dumps(a), id=f"c{i}") for i, (n, a) in enumerate(calls))
    message = Message(role="assistant", content=content, tool_calls=tool_calls)
    conversation = Conversation(messages=(Message(role="user", content="u"), message))
    tokens = build_supervised_example(renderer, conversation).tokens_T.tolist()
    prompt = build_generation_prompt(renderer, conversation.messages[:1]).to_tokens().tolist()
    parsed = parse_response(renderer, tokens[len(prompt) :])
    assert parsed.termination is Termination.STOP_SEQUENCE
    expected_text = "" if tool_calls and not text and thinking is None else text
    got = parsed.message
    if thinking is not None:
        kept = (ThinkingPart(thinking), TextPart(text)) if text or not tool_calls else (ThinkingPart(thinking),)
        assert got.content == kept
    else:
        assert got.text() == expected_text
    assert [(c.name, json.loads(c.arguments)) for c in got.tool_calls] == [(n, a) for n, a in calls]
