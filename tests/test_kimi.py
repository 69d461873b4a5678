"""Kimi K2 / K2.5 / K2.6 renderers: layouts, the produced-turn rule, refusals, the extension property of
``kimi_k26_preserve_thinking`` and parse round trips (the cookbook comparison is
``tests/conformance/test_kimi_cookbook.py``)."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conformance._kimi import kimi_profile, kimi_tokenizer, with_kimi_ids
from tests.conformance._strategies import conversations, texts

from tinkerflow.chat import Conversation, ImagePart, Message, TextPart, ThinkingPart, ToolCall, ToolSpec
from tinkerflow.render import (
    Renderer,
    RenderError,
    Termination,
    TrainOn,
    build_generation_prompt,
    build_supervised_example,
    build_supervised_examples,
    get_renderer,
    parse_response,
)
from tinkerflow.render.kimi import KIMI_DEFAULT_SYSTEM_PROMPT, kimi_turn_start

NAMES = [
    "kimi_k2",
    "kimi_k25",
    "kimi_k25_disable_thinking",
    "kimi_k26",
    "kimi_k26_disable_thinking",
    "kimi_k26_preserve_thinking",
]


def renderer(name: str) -> Renderer:
    tokenizer = kimi_tokenizer()
    return get_renderer(name, tokenizer)


def decoded(
    r: Renderer, conversation: Conversation | tuple[Message, ...], mode: TrainOn = "last_assistant_message"
) -> str:
    return r.tokenizer.decode(build_supervised_example(r, conversation, mode).tokens_T.tolist())


def weighted(r: Renderer, conversation: Conversation | tuple[Message, ...], mode: TrainOn) -> str:
    example = build_supervised_example(r, conversation, mode)
    tokens, weights = example.tokens_T.tolist(), example.weights_T.tolist()
    return r.tokenizer.decode([t for t, w in zip(tokens, weights, strict=True) if w])


CHAT = (
    Message(role="user", content="q"),
    Message(role="assistant", content=(ThinkingPart("t1"), TextPart("a1"))),
    Message(role="user", content="r"),
    Message(role="assistant", content=(ThinkingPart("t2"), TextPart("a2"))),
)
SYSTEM = f"<|im_system|>system<|im_middle|>{KIMI_DEFAULT_SYSTEM_PROMPT}<|im_end|>"


@pytest.mark.parametrize("name", NAMES)
def test_every_name_is_registered(name: str) -> None:
    assert renderer(name).name == name


def test_layout_default_system_prompt_and_history_reasoning() -> None:
    text = decoded(renderer("kimi_k25"), CHAT)
    assert text == (
        f"{SYSTEM}<|im_user|>user<|im_middle|>q<|im_end|><|im_assistant|>assistant<|im_middle|><think></think>a1"
        "<|im_end|><|im_user|>user<|im_middle|>r<|im_end|><|im_assistant|>assistant<|im_middle|><think>t2</think>a2"
        "<|im_end|>"
    )
    preserved = decoded(renderer("kimi_k26_preserve_thinking"), CHAT)
    assert "<think>t1</think>a1" in preserved
    assert "<think>t2</think>a2" in preserved


def test_reasoning_is_kept_through_a_tool_exchange() -> None:
    call = ToolCall(name="f", arguments='{"x": 1}', id="functions.f:0")
    chat = (
        Message(role="user", content="q"),
        Message(role="assistant", content=(ThinkingPart("plan"), TextPart("")), tool_calls=(call,)),
        Message(role="tool", content="42", tool_call_id="functions.f:0", name="f"),
        Message(role="assistant", content=(ThinkingPart("done"), TextPart("42"))),
    )
    text = decoded(renderer("kimi_k2"), chat)
    assert (
        "<think>plan</think><|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>"
        '{"x": 1}<|tool_call_end|><|tool_calls_section_end|><|im_end|>'
        "<|im_system|>f<|im_middle|>## Return of functions.f:0\n42<|im_end|>" in text
    )
    assert text.endswith("<think>done</think>42<|im_end|>")
    # a later turn (after an answer without tool calls) writes the whole exchange without reasoning
    later = decoded(
        renderer("kimi_k2"), (*chat, Message(role="user", content="u"), Message(role="assistant", content="b"))
    )
    assert "<think>plan</think>" not in later
    assert "<think>done</think>" not in later


def test_turn_start_rule() -> None:
    call = ToolCall(name="f", id="functions.f:0")
    user, answer = Message(role="user", content="q"), Message(role="assistant", content="a")
    calling = Message(role="assistant", content="", tool_calls=(call,))
    result = Message(role="tool", content="r", tool_call_id="functions.f:0")
    assert kimi_turn_start(()) == 0
    assert kimi_turn_start((user, calling, result)) == 0
    assert kimi_turn_start((user, answer, user, calling, result)) == 2
    assert kimi_turn_start((user, answer)) == 2


def test_turn_start_hook() -> None:
    """The renderers' turn_start is the Kimi rule; the base class keeps the default (after the last user)."""
    answer = Message(role="assistant", content="a")
    history = (CHAT[0], answer, Message(role="assistant", content="b"))
    assert renderer("kimi_k25").turn_start(history) == kimi_turn_start(history) == 3
    assert Renderer.turn_start(renderer("kimi_k25"), history) == 1


def test_last_assistant_turn_trains_the_kimi_turn() -> None:
    """An answer without tool calls ends a turn even without a user message after it (the cookbook's rule)."""
    chat = (
        Message(role="user", content="q"),
        Message(role="assistant", content=(ThinkingPart("t1"), TextPart("a1"))),
        Message(role="assistant", content=(ThinkingPart("t2"), TextPart("a2"))),
    )
    r = renderer("kimi_k2")
    assert weighted(r, chat, "last_assistant_turn") == "<think>t2</think>a2<|im_end|>"  # K2: no prefill
    assert "<think></think>a1<|im_end|>" in decoded(r, chat, "last_assistant_turn")
    examples = build_supervised_examples(r, chat, "last_assistant_turn")
    assert [r.tokenizer.decode(e.tokens_T.tolist()) for e in examples] == [decoded(r, chat)]
    # a tool exchange is one turn: every assistant message of it is trained
    call = ToolCall(name="f", arguments="{}", id="functions.f:0")
    exchange = (
        chat[0],
        Message(role="assistant", content="c", tool_calls=(call,)),
        Message(role="tool", content="42", tool_call_id="functions.f:0", name="f"),
        chat[2],
    )
    trained = weighted(r, exchange, "last_assistant_turn")
    assert trained.startswith("<think></think>c<|tool_calls_section_begin|>")
    assert trained.endswith("<|im_end|><think>t2</think>a2<|im_end|>")
    assert len(build_supervised_examples(r, exchange, "last_assistant_turn")) == 2


def test_generation_prompt_after_an_answer_drops_its_reasoning() -> None:
    """A prompt whose history ends with an answer without tool calls starts a new turn: the answer is history."""
    chat = (Message(role="user", content="q"), Message(role="assistant", content=(ThinkingPart("t"), TextPart("a"))))
    for name in NAMES[:3]:
        r = renderer(name)
        prompt = r.tokenizer.decode(build_generation_prompt(r, chat).to_tokens().tolist())
        assert "<|im_assistant|>assistant<|im_middle|><think></think>a<|im_end|><|im_assistant|>" in prompt
    kept = renderer("kimi_k26_preserve_thinking")
    assert "<think>t</think>a" in kept.tokenizer.decode(build_generation_prompt(kept, chat).to_tokens().tolist())


def test_generation_prompts_and_prefills() -> None:
    history = CHAT[:3]
    for name, end in [("kimi_k2", ""), ("kimi_k25", "<think>"), ("kimi_k25_disable_thinking", "<think></think>")]:
        r = renderer(name)
        prompt = r.tokenizer.decode(build_generation_prompt(r, history, prefill="x").to_tokens().tolist())
        assert prompt.endswith(f"<|im_user|>user<|im_middle|>r<|im_end|><|im_assistant|>assistant<|im_middle|>{end}x")
        assert prompt.startswith(SYSTEM)
        assert r.stop_sequences().tokens == (r.tokenizer.token_id("<|im_end|>"),)


def test_the_prefill_is_never_trained() -> None:
    r = renderer("kimi_k25")
    assert weighted(r, CHAT, "last_assistant_message") == "t2</think>a2<|im_end|>"
    off = renderer("kimi_k25_disable_thinking")
    plain = (*CHAT[:3], Message(role="assistant", content="a2"))
    assert weighted(off, plain, "last_assistant_message") == "a2<|im_end|>"
    with pytest.raises(RenderError, match="thinking"):
        build_supervised_example(off, CHAT, "last_assistant_message")


def test_tool_declarations() -> None:
    tool = ToolSpec.create("get", "Get it.", {"type": "object", "properties": {"k": {"type": "string"}}})
    chat = Conversation(messages=(Message(role="system", content="S"), *CHAT[:2]), tools=(tool,))
    k2 = decoded(renderer("kimi_k2"), chat)
    function = {"description": "Get it.", "name": "get", "parameters": json.loads(tool.parameters)}
    declaration = json.dumps([{"function": function, "type": "function"}], separators=(",", ":"), sort_keys=True)
    head = f"<|im_system|>tool_declare<|im_middle|>{declaration}<|im_end|>"
    assert k2.startswith(f"{head}<|im_system|>system<|im_middle|>S")
    k25 = decoded(renderer("kimi_k25"), chat)
    assert k25.startswith(
        "<|im_system|>tool_declare<|im_middle|># Tools\n\n## functions\nnamespace functions {\n// Get it.\n"
        "type get = (_: {\n  k?: string\n}) => any;\n}\n<|im_end|>"
    )
    # with tools an empty system prompt becomes the default one
    empty = attrs.evolve(chat, messages=(Message(role="system", content=""), *CHAT[:2]))
    assert f"<|im_system|>system<|im_middle|>{KIMI_DEFAULT_SYSTEM_PROMPT}<|im_end|>" in decoded(
        renderer("kimi_k25"), empty
    )
    # the declaration is neither a user nor a system message for training
    assert weighted(renderer("kimi_k2"), chat, "all_user_and_system_messages") == "S<|im_end|>q<|im_end|>"


def test_bad_tool_schemas_are_typed_errors() -> None:
    tool = ToolSpec(name="f", parameters='{"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}}')
    chat = Conversation(messages=CHAT[:2], tools=(tool,))
    with pytest.raises(RenderError, match="tools"):
        build_supervised_example(renderer("kimi_k25"), chat)
    assert build_supervised_example(renderer("kimi_k2"), chat)  # K2's JSON declaration writes any schema


def test_refusals() -> None:
    image = Message(role="user", content=(ImagePart(b"\x89PNG\r\n\x1a\n0000", "png"),))
    with pytest.raises(RenderError, match="image"):
        build_supervised_example(renderer("kimi_k25"), (image, CHAT[1]))
    with pytest.raises(RenderError, match="tool_call_id"):
        build_supervised_example(renderer("kimi_k2"), (CHAT[0], Message(role="tool", content="x")))


def test_customized_default_system_prompt_has_no_weight() -> None:
    chat = tuple(attrs.evolve(m, trainable=True) for m in CHAT)
    assert (
        weighted(renderer("kimi_k2"), chat, "customized")
        == "q<|im_end|><think></think>a1<|im_end|>r<|im_end|><think>t2</think>a2<|im_end|>"
    )


def test_multi_part_text() -> None:
    parts = Message(role="user", content=(TextPart("ab"), TextPart("cd")))
    r25, r2 = renderer("kimi_k25"), renderer("kimi_k2")
    e25 = build_supervised_example(r25, (parts,), "all_tokens").tokens_T.tolist()
    e2 = build_supervised_example(r2, (parts,), "all_tokens").tokens_T.tolist()
    encode = r25.tokenizer.encode
    assert encode("ab") + encode("cd") == e25[-1 - len(encode("ab")) - len(encode("cd")) : -1]  # K2.5: each part
    assert e2[-1 - len(encode("abcd")) : -1] == encode("abcd")  # K2: joined (the cookbook refuses)


def test_supervised_examples_per_turn() -> None:
    assert len(build_supervised_examples(renderer("kimi_k25"), CHAT, "all_assistant_messages")) == 2
    assert len(build_supervised_examples(renderer("kimi_k26_preserve_thinking"), CHAT, "all_assistant_messages")) == 1


def test_kimi_k31_pro_is_not_provided() -> None:
    tokenizer = kimi_tokenizer()
    with pytest.raises(RenderError, match="kimi_k31_pro"):
        get_renderer("kimi_k31_pro_max_reasoning", tokenizer)


def test_parse_edge_cases() -> None:
    r = renderer("kimi_k25")
    tok = r.tokenizer
    ids = {text: tok.token_id(text) for text in ("<think>", "</think>", "<|im_end|>", "[EOS]")}
    ids.update({t: tok.token_id(t) for t in ("<|tool_calls_section_begin|>", "<|tool_call_begin|>")})
    # the <think> prefill is restored before parsing; [EOS] is not the stop token
    parsed = parse_response(r, [*tok.encode("why"), ids["</think>"], *tok.encode("so"), ids["<|im_end|>"]])
    assert parsed.message.content == (ThinkingPart("why"), TextPart("so"))
    assert parse_response(r, [*tok.encode("so"), ids["[EOS]"]]).termination is Termination.MALFORMED
    dangling = [*tok.encode("x"), ids["<|tool_calls_section_begin|>"], ids["<|tool_call_begin|>"], ids["<|im_end|>"]]
    unparsed = parse_response(r, dangling).message.unparsed_tool_calls
    assert len(unparsed) == 1
    assert unparsed[0].error.startswith("unterminated tool block")
    with pytest.raises(RenderError, match="stop tokens"):
        parse_response(r, [ids["<|im_end|>"], ids["<|im_end|>"]])


@settings(max_examples=40, deadline=None)
@given(conversations(kimi_profile(last_assistant=True)), st.sampled_from(NAMES[:3]))
def test_parse_inverts_render(conversation: Conversation, name: str) -> None:
    """The rendered final message parses back: its reasoning, its text and (with Kimi ids) its tool calls."""
    r = renderer(name)
    conversation = with_kimi_ids(conversation)
    last = conversation.messages[-1]
    history = attrs.evolve(conversation, messages=conversation.messages[:-1])
    try:
        full = build_supervised_example(r, conversation).tokens_T.tolist()
    except RenderError:  # thinking turned off and the final message reasons
        assert r.disables_thinking
        assert last.thinking()
        return
    prompt = build_generation_prompt(r, history).to_tokens().tolist()
    if full[: len(prompt)] != prompt:  # the history ends with an answer: the prompt drops its reasoning (cookbook)
        return
    parsed = parse_response(r, full[len(prompt) :])
    assert parsed.termination is Termination.STOP_SEQUENCE
    assert (parsed.message.thinking() or "") == (last.thinking() or "")
    assert parsed.message.text() == last.text()
    assert [(c.name, c.arguments, c.id) for c in parsed.message.tool_calls] == [
        (c.name, c.arguments.strip(), c.id) for c in last.tool_calls
    ]


@settings(max_examples=40, deadline=None)
@given(conversations(kimi_profile(last_assistant=True)))
def test_preserve_thinking_has_the_extension_property(conversation: Conversation) -> None:
    """Every generation prompt before an assistant message is a prefix of the whole conversation's example."""
    r = renderer("kimi_k26_preserve_thinking")
    assert r.has_extension_property
    full = build_supervised_example(r, conversation, "all_tokens").tokens_T.tolist()
    for index, message in enumerate(conversation.messages):
        if message.role == "assistant":
            history = attrs.evolve(conversation, messages=conversation.messages[:index])
            prompt = build_generation_prompt(r, history).to_tokens().tolist()
            assert full[: len(prompt)] == prompt


@given(texts(kimi_profile()))
@settings(max_examples=30, deadline=None)
def test_content_spelling_control_tokens_stays_text(text: str) -> None:
    r = renderer("kimi_k2")
    spelled = Message(role="user", content=f"{text}<|im_end|><|im_assistant|>")
    tokens = build_supervised_example(r, (spelled,), "all_tokens").tokens_T.tolist()
    assert tokens.count(r.tokenizer.token_id("<|im_end|>")) == 2  # the default system prompt's and the user's
