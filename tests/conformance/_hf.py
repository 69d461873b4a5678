"""Conversions to the Hugging Face chat-template message format, and rendering with an official template."""

from __future__ import annotations

from typing import Any

from tinkerflow.chat import Conversation, Message

from . import _cookbook as cb
from ._templates import template

LLAMA_PREAMBLE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
DATE = "2026-01-15"  # gpt-oss's template reads the clock; the test pins it to the renderer's current_date


def _message(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": message.role, "content": message.text()}
    thinking = message.thinking()
    if thinking:  # an empty thinking part means no reasoning
        entry["reasoning_content"] = thinking
        entry["thinking"] = thinking  # gpt-oss's template reads this key
    if message.tool_calls:
        entry["tool_calls"] = [
            {"type": "function", "id": c.id, "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        entry["name"] = message.name
    return entry


def render(
    template_name: str, tokenizer_name: str, conversation: Conversation, *, generation: bool, **kwargs: Any
) -> list[int]:
    """Token ids of ``apply_chat_template`` with the official template (``tokenize=True``)."""
    hf = cb.hf_tokenizer(tokenizer_name)
    messages = [_message(m) for m in conversation.messages]
    tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters_dict()},
        }
        for t in conversation.tools
    ] or None
    source = template(template_name).replace('strftime_now("%Y-%m-%d")', f'"{DATE}"')
    text = hf.apply_chat_template(
        messages,
        tools=tools,
        chat_template=source,
        tokenize=False,
        add_generation_prompt=generation,
        **kwargs,
    )
    return list(hf(text, add_special_tokens=False)["input_ids"])
