"""Golden examples: the exact token layout of every renderer family on small conversations, and which tokens
carry weight."""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers import cached_tokenizer

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart, ToolCall, ToolSpec
from tinkerflow.render import (
    Renderer,
    build_generation_prompt,
    build_supervised_example,
    get_renderer,
)

CHAT = Conversation(
    messages=(
        Message(role="system", content="Be brief."),
        Message(role="user", content="Hi"),
        Message(role="assistant", content="Hello!"),
        Message(role="user", content="2+2?"),
        Message(role="assistant", content="4"),
    )
)


def _renderer(name: str, tokenizer: str, **options: object) -> Renderer:
    return get_renderer(name, cached_tokenizer(tokenizer), **options)


def _text(renderer: Renderer, tokens: np.ndarray) -> str:
    return renderer.tokenizer.decode(tokens)


def _weighted(
    renderer: Renderer, conversation: Conversation, train_on: str = "last_assistant_message"
) -> tuple[str, str]:
    example = build_supervised_example(renderer, conversation, train_on)  # type: ignore[arg-type]  # literal mode
    tokens = example.tokens_T
    return _text(renderer, tokens), _text(renderer, tokens[example.weights_T == 1])


@pytest.mark.parametrize(
    ("name", "tokenizer", "full", "trained", "prompt"),
    [
        (
            "llama3",
            "llama3",
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>",
            "4<|eot_id|>",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (
            "role_colon",
            "llama3",
            "<|begin_of_text|>System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: 2+2?\n\n"
            "Assistant: 4\n\nUser:",
            " 4\n\nUser:",
            "Assistant:",
        ),
        (
            "qwen3",
            "qwen3",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
            "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>",
            "<think>\n\n</think>\n\n4<|im_end|>",
            "<|im_start|>assistant\n",
        ),
        (
            "qwen3_disable_thinking",
            "qwen3",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
            "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>",
            "4<|im_end|>",  # the empty thinking block belongs to the generation prompt: never trained
            "<|im_start|>assistant\n<think>\n\n</think>\n\n",
        ),
        (
            "qwen3_instruct",
            "qwen3",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
            "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
            "4<|im_end|>",
            "<|im_start|>assistant\n",
        ),
        (
            "chatml",
            "smollm2",
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!"
            "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
            "4<|im_end|>",
            "<|im_start|>assistant\n",
        ),
        (
            "deepseekv3",
            "deepseek_v3",
            "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜></think>Hello!<｜end▁of▁sentence｜>"
            "<｜User｜>2+2?<｜Assistant｜></think>4<｜end▁of▁sentence｜>",
            "4<｜end▁of▁sentence｜>",
            "<｜Assistant｜></think>",
        ),
        (
            "deepseekv3_thinking",
            "deepseek_v3",
            "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜></think>Hello!<｜end▁of▁sentence｜>"
            "<｜User｜>2+2?<｜Assistant｜><think></think>4<｜end▁of▁sentence｜>",
            "</think>4<｜end▁of▁sentence｜>",  # <think> is the prompt's prefill
            "<｜Assistant｜><think>",
        ),
        (
            "gpt_oss_no_sysprompt",
            "gpt_oss",
            "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|><|start|>user<|message|>Hi<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Hello!<|end|><|start|>user<|message|>2+2?<|end|>"
            "<|start|>assistant<|channel|>final<|message|>4<|return|>",
            "<|channel|>final<|message|>4<|return|>",
            "<|start|>assistant",
        ),
    ],
)
def test_layouts(name: str, tokenizer: str, full: str, trained: str, prompt: str) -> None:
    renderer = _renderer(name, tokenizer)
    assert _weighted(renderer, CHAT) == (full, trained)
    prompt_text = _text(renderer, build_generation_prompt(renderer, CHAT.messages[:-1]).to_tokens())
    assert prompt_text.endswith(prompt)
    assert full.startswith(prompt_text) or name in ("qwen3_disable_thinking",)


def test_smollm2_adds_its_default_system_prompt() -> None:
    renderer = _renderer("smollm2", "smollm2")
    text, _ = _weighted(renderer, (Message(role="user", content="Hi"), Message(role="assistant", content="Hey")))
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHey<|im_end|>"
    )


def test_gpt_oss_system_prompt_states_the_given_date() -> None:
    renderer = _renderer("gpt_oss_high_reasoning", "gpt_oss", current_date="2025-03-04")
    text, _ = _weighted(renderer, (Message(role="user", content="Hi"), Message(role="assistant", content="Hey")))
    assert text.startswith(
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\nCurrent date: 2025-03-04\n\nReasoning: high\n\n"
    )


THINKING_TOOLS = Conversation(
    messages=(
        Message(role="user", content="Weather in Paris?"),
        Message(
            role="assistant",
            content=(ThinkingPart("Need the tool."), TextPart("Checking.")),
            tool_calls=(ToolCall(name="weather", arguments='{"city": "Paris"}', id="c1"),),
        ),
        Message(role="tool", content="18C", tool_call_id="c1"),
        Message(role="assistant", content=(ThinkingPart("Got it."), TextPart("18C in Paris."))),
    ),
    tools=(
        ToolSpec.create("weather", "Current weather", {"type": "object", "properties": {"city": {"type": "string"}}}),
    ),
)


def test_qwen3_thinking_and_tools() -> None:
    renderer = _renderer("qwen3", "qwen3")
    text, trained = _weighted(renderer, THINKING_TOOLS, "last_assistant_turn")
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call one or more functions")
    assert '{"type": "function", "function": {"name": "weather", "description": "Current weather"' in text
    assert text.endswith(
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        # history loses its thinking
        '<|im_start|>assistant\nChecking.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\nGot it.\n</think>\n\n18C in Paris.<|im_end|>"
    )
    assert trained == (
        'Checking.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
        "<think>\nGot it.\n</think>\n\n18C in Paris.<|im_end|>"
    )


def test_deepseek_thinking_and_tools() -> None:
    renderer = _renderer("deepseekv3_thinking", "deepseek_v3")
    text, trained = _weighted(renderer, THINKING_TOOLS, "last_assistant_message")
    assert text.endswith(
        "<｜User｜>Weather in Paris?<｜Assistant｜></think><think>Need the tool.</think>Checking."
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
        "<｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁output▁begin｜>18C<｜tool▁output▁end｜>"
        "<think>Got it.</think>18C in Paris.<｜end▁of▁sentence｜>"
    )
    assert trained == "<think>Got it.</think>18C in Paris.<｜end▁of▁sentence｜>"


def test_gpt_oss_thinking_and_tools() -> None:
    renderer = _renderer("gpt_oss_no_sysprompt", "gpt_oss")
    text, _ = _weighted(renderer, THINKING_TOOLS)
    assert (
        "<|start|>system<|message|>Calls to these tools must go to the commentary channel: 'functions'.<|end|>" in text
    )
    assert "namespace functions {\n\n// Current weather\ntype weather = (_:\n{\ncity?: string,\n}) => any;" in text
    assert (
        "<|start|>assistant<|channel|>analysis<|message|>Need the tool.<|end|><|start|>assistant<|channel|>commentary"
        "<|message|>Checking.<|end|><|start|>assistant to=functions.weather<|channel|>commentary <|constrain|>json"
        '<|message|>{"city": "Paris"}<|call|><|start|>functions.weather to=assistant<|channel|>commentary'
        "<|message|>18C<|end|>"
    ) in text  # the tool result's name comes from the call its id answers
