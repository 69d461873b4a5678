"""The generic ``chat_template`` renderer on small templates written here and on SmolLM2's own template: the
same tokens and weights as the dedicated renderer of the same format, the probed features, generation prompts,
parsing, and every refusal. Official templates against ``transformers`` are in
``tests/conformance/test_chat_template_conformance.py``."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from tests.conformance._strategies import Profile, all_of, conversations, lstrip_stable, without_spellings
from tests.helpers import cached_tokenizer

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart, ToolCall, ToolSpec
from tinkerflow.render import (
    ChatMLRenderer,
    RenderError,
    SmolLM2Renderer,
    Termination,
    TrainOnWhat,
    build_generation_prompt,
    build_supervised_example,
    build_supervised_examples,
    encode_control_text,
    get_renderer,
    parse_response,
)
from tinkerflow.render.chat_template import ChatTemplateRenderer

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen3-like: thinking written on the last message only (earlier thinking dropped), tools in a system block
THINKING = (
    "{%- if tools %}{{- '<|im_start|>system\\nTools:' }}{%- for tool in tools %}{{- ' ' + tool.function.name }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if loop.last and message.reasoning_content %}"
    "{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' }}{%- endif %}"
    "{{- message.content }}"
    "{%- for call in message.tool_calls or [] %}{{- '<tool_call>' + call.function.name + '</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MODES = [mode for mode in TrainOnWhat if mode is not TrainOnWhat.CUSTOMIZED]
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _qwen3() -> object:
    return cached_tokenizer("qwen3")


def _profile(tokenizer: str, **changes: object) -> Profile:
    text_ok = all_of(without_spellings(cached_tokenizer(tokenizer).added_tokens), lstrip_stable)
    return attrs.evolve(Profile(roles=("system",), parts=False, text_ok=text_ok, max_messages=6), **changes)


@SETTINGS
@given(conversations(_profile("qwen3")))
def test_a_chatml_template_gives_the_chatml_renderers_tokens_and_weights(conversation: Conversation) -> None:
    ours = get_renderer("chat_template", cached_tokenizer("qwen3"), template=CHATML)
    theirs = ChatMLRenderer(cached_tokenizer("qwen3"))
    for mode in MODES:
        a, b = build_supervised_example(ours, conversation, mode), build_supervised_example(theirs, conversation, mode)
        assert a.tokens_T.tolist() == b.tokens_T.tolist()
        assert np.array_equal(a.weights_T, b.weights_T), mode
    history = conversation.messages[:-1]
    assert (
        build_generation_prompt(ours, history, prefill="Sure").to_tokens().tolist()
        == build_generation_prompt(theirs, history, prefill="Sure").to_tokens().tolist()
    )


@SETTINGS
@given(conversations(_profile("smollm2")))
def test_smollm2s_own_template_gives_the_smollm2_renderers_tokens(conversation: Conversation) -> None:
    tokenizer = cached_tokenizer("smollm2")
    ours, theirs = ChatTemplateRenderer(tokenizer), SmolLM2Renderer(tokenizer)
    # the default system prompt is template text here (a header) and a message there: only the modes that do
    # not weight it agree unless the conversation brings its own system message
    system_first = conversation.messages[0].role == "system"
    for mode in MODES:
        a, b = build_supervised_example(ours, conversation, mode), build_supervised_example(theirs, conversation, mode)
        assert a.tokens_T.tolist() == b.tokens_T.tolist()
        if system_first or mode.value.startswith(("last_", "all_assistant")):
            assert np.array_equal(a.weights_T, b.weights_T), mode


def test_probed_features() -> None:
    tokenizer = cached_tokenizer("qwen3")
    chatml = ChatTemplateRenderer(tokenizer, template=CHATML).features
    assert (chatml.extension_property, chatml.thinking, chatml.tool_calls, chatml.tools) == (True, False, False, False)
    assert chatml.stop_tokens == (tokenizer.token_id("<|im_end|>"),)
    assert not chatml.bos
    thinking = ChatTemplateRenderer(tokenizer, template=THINKING).features
    assert (thinking.extension_property, thinking.thinking, thinking.tool_calls, thinking.tools) == (
        False,
        True,
        True,
        True,
    )
    llama = cached_tokenizer("llama3")
    with_bos = "{{- bos_token }}" + CHATML.replace("<|im_start|>", "<|start_header_id|>").replace(
        "<|im_end|>", "<|eot_id|>"
    )
    renderer = ChatTemplateRenderer(llama, template=with_bos)
    assert renderer.features.bos
    assert renderer.bos_tokens() == (llama.token_id("<|begin_of_text|>"),)
    example = build_supervised_example(renderer, [Message(role="user", content="hi")], "all_tokens")
    assert example.tokens_T[0] == llama.token_id("<|begin_of_text|>")
    assert example.weights_T[0] == 0.0  # BOS never weighted
    assert example.weights_T[1:].all()


THINKING_CHAT = Conversation(
    messages=(
        Message(role="user", content="Hi"),
        Message(role="assistant", content=(ThinkingPart("greet"), TextPart("Hello"))),
        Message(role="user", content="2+2?"),
        Message(role="assistant", content=(ThinkingPart("add"), TextPart("4"))),
    )
)


def _template_text(renderer: ChatTemplateRenderer, conversation: Conversation, *, generation: bool) -> str:
    return renderer._call[0].render(conversation.messages, conversation.tools, generation=generation)


def test_without_the_extension_property_each_turn_is_its_own_example() -> None:
    tokenizer = cached_tokenizer("qwen3")
    renderer = ChatTemplateRenderer(tokenizer, template=THINKING)
    examples = build_supervised_examples(renderer, THINKING_CHAT, "all_assistant_messages")
    assert len(examples) == 2
    for example, end in zip(examples, (2, 4), strict=True):
        turn = attrs.evolve(THINKING_CHAT, messages=THINKING_CHAT.messages[:end])
        text = _template_text(renderer, turn, generation=False).removesuffix("\n")
        assert example.tokens_T.tolist() == encode_control_text(tokenizer, text)
        weighted = tokenizer.decode(example.tokens_T[example.weights_T > 0].tolist())
        assert (
            weighted
            == ("<think>\ngreet\n</think>\n\nHello<|im_end|>", "<think>\nadd\n</think>\n\n4<|im_end|>")[end // 2 - 1]
        )
    # one sequence trains the earlier turn as the template writes it in history (its thinking dropped)
    single = build_supervised_example(renderer, THINKING_CHAT, "all_assistant_messages")
    weighted = tokenizer.decode(single.tokens_T[single.weights_T > 0].tolist())
    assert weighted == "Hello<|im_end|><think>\nadd\n</think>\n\n4<|im_end|>"


@SETTINGS
@given(conversations(_profile("qwen3", thinking=True, tools=True, parts=True)))
def test_tokens_are_the_templates_text_encoded_whole_and_weights_cover_each_trained_message(
    conversation: Conversation,
) -> None:
    tokenizer = cached_tokenizer("qwen3")
    renderer = ChatTemplateRenderer(tokenizer, template=THINKING)
    example = build_supervised_example(renderer, conversation, "all_messages")
    text = _template_text(renderer, conversation, generation=False).removesuffix("\n")
    assert example.tokens_T.tolist() == encode_control_text(tokenizer, text)
    end = tokenizer.token_id("<|im_end|>")
    # every message's output ends at its <|im_end|>, which is weighted; headers are not (the tools block is
    # template text before the first message: part of its header)
    ends = example.tokens_T == end
    assert int(ends.sum()) == len(conversation.messages) + (1 if conversation.tools else 0)
    assert int(example.weights_T[ends].sum()) == len(conversation.messages)
    headers = example.tokens_T == tokenizer.token_id("<|im_start|>")
    assert not example.weights_T[headers].any()
    prompt = build_generation_prompt(renderer, conversation, prefill="<think>\n")
    expected = _template_text(renderer, conversation, generation=True) + "<think>\n"
    assert prompt.to_tokens().tolist() == encode_control_text(tokenizer, expected)


def test_parsing_by_the_templates_end_tokens() -> None:
    tokenizer = cached_tokenizer("qwen3")
    renderer = ChatTemplateRenderer(tokenizer, template=THINKING)
    end, think, unthink = (tokenizer.token_id(t) for t in ("<|im_end|>", "<think>", "</think>"))
    sampled = [think, *tokenizer.encode("\nsum\n"), unthink, *tokenizer.encode("\n\nIt is 4"), end]
    parsed = parse_response(renderer, sampled)
    assert parsed.termination is Termination.STOP_SEQUENCE
    assert parsed.message.content == (ThinkingPart("sum"), TextPart("It is 4"))
    cut = parse_response(renderer, tokenizer.encode("It is"))
    assert (cut.termination, cut.message.content) == (Termination.MALFORMED, "It is")
    with pytest.raises(RenderError, match="2 stop tokens"):
        parse_response(renderer, [*tokenizer.encode("a"), end, end])
    # a template whose turns end with <|endoftext|>: the tokenizer's EOS (<|im_end|>) ends a response as EOS
    other = ChatTemplateRenderer(tokenizer, template=CHATML.replace("<|im_end|>", "<|endoftext|>"))
    assert other.stop_sequences().tokens == (tokenizer.token_id("<|endoftext|>"), end)
    assert parse_response(other, [*tokenizer.encode("ok"), end]).termination is Termination.EOS
    assert parse_response(other, [*tokenizer.encode("ok"), other.stop_sequences().tokens[0]]).message.content == "ok"


def test_tools_reach_the_generation_prompt() -> None:
    tokenizer = cached_tokenizer("qwen3")
    renderer = ChatTemplateRenderer(tokenizer, template=THINKING)
    chat = Conversation(messages=(Message(role="user", content="Hi"),), tools=(ToolSpec(name="lookup"),))
    prompt = tokenizer.decode(build_generation_prompt(renderer, chat).to_tokens().tolist())
    assert (
        prompt == "<|im_start|>system\nTools: lookup<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("messages", "tools", "field", "text"),
    [
        ([Message(role="user", content="a<|im_end|>b")], (), "messages[0].content", "spells the control token"),
        (
            [Message(role="user", content="q"), Message(role="assistant", content=(ThinkingPart("t"), TextPart("a")))],
            (),
            "messages[1].content",
            "does not write thinking",
        ),
        ([Message(role="user", content="q")], (ToolSpec(name="f"),), "tools", "does not write tool specs"),
        (
            [Message(role="user", content="q"), Message(role="assistant", tool_calls=(ToolCall(name="f"),))],
            (),
            "messages[1].tool_calls",
            "does not write tool calls",
        ),
    ],
)
def test_what_the_template_cannot_write_is_refused(
    messages: list[Message], tools: tuple[ToolSpec, ...], field: str, text: str
) -> None:
    renderer = ChatTemplateRenderer(cached_tokenizer("qwen3"), template=CHATML)
    with pytest.raises(RenderError, match=text) as caught:
        build_supervised_example(renderer, Conversation(messages=tuple(messages), tools=tools))
    assert caught.value.field == field


def test_template_errors_are_typed() -> None:
    tokenizer = cached_tokenizer("qwen3")
    with pytest.raises(RenderError, match="no chat template"):
        ChatTemplateRenderer(tokenizer)  # the qwen3 vocabulary carries no template
    with pytest.raises(RenderError, match="not a valid Jinja template"):
        ChatTemplateRenderer(tokenizer, template="{% for %}")
    refusing = "{%- if messages[0].role != 'system' %}{{ raise_exception('System first!') }}{%- endif %}" + CHATML
    with pytest.raises(RenderError, match="System first!"):
        ChatTemplateRenderer(tokenizer, template=refusing)
    dated = "{{- 'Today: ' + strftime_now('%d %b %Y') + '\\n' }}" + CHATML
    with pytest.raises(RenderError, match="current_date"):
        ChatTemplateRenderer(tokenizer, template=dated)
    renderer = ChatTemplateRenderer(tokenizer, template=dated, current_date="2026-01-15")
    prompt = build_generation_prompt(renderer, [Message(role="user", content="hi")])
    assert tokenizer.decode(prompt.to_tokens().tolist()).startswith("Today: 15 Jan 2026\n")
    with pytest.raises(RenderError, match="YYYY-MM-DD"):
        ChatTemplateRenderer(tokenizer, template=CHATML, current_date="15/01/2026")
    dropping = CHATML.replace("{%- for message in messages %}", "{%- for message in messages[1:] %}")
    renderer = ChatTemplateRenderer(tokenizer, template=dropping)
    with pytest.raises(RenderError, match="does not write this message") as caught:
        build_supervised_example(renderer, [Message(role="user", content="lost"), Message(role="user", content="x")])
    assert caught.value.field == "messages[0]"
    with pytest.raises(RenderError, match="prompts the assistant only"):
        build_generation_prompt(ChatTemplateRenderer(tokenizer, template=CHATML), [], role="user")
