from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given

from tinkerflow import Conversation, Message, TextPart, ThinkingPart
from tinkerflow import testing as tft
from tinkerflow.chat_format import ChatFormatError, conversation_from_json, conversation_to_json, parse_chat_line


def _without_unparsed(conversation: Conversation) -> Conversation:
    return attrs.evolve(
        conversation,
        messages=tuple(attrs.evolve(message, unparsed_tool_calls=()) for message in conversation.messages),
    )


@given(tft.conversations(images=True))
def test_round_trip(conversation: Conversation) -> None:
    conversation = _without_unparsed(conversation)
    row = conversation_to_json(conversation)
    line = json.dumps(row)
    assert parse_chat_line(line, "x.jsonl:1") == conversation
    assert parse_chat_line(line.encode(), "x.jsonl:1") == conversation


def test_openai_style_row() -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "Need the tool.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "-3C"},
            {"role": "assistant", "content": "Cold."},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
    }
    conversation = conversation_from_json(row, "row 0")
    assistant = conversation.messages[2]
    assert assistant.content == (ThinkingPart("Need the tool."), TextPart(""))
    assert assistant.tool_calls[0].arguments_dict() == {"city": "Oslo"}
    assert conversation.tools[0].parameters_dict() == {"type": "object"}
    assert conversation_from_json(row["messages"], "bare list") == attrs.evolve(conversation, tools=())


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ("text", "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "data": "**"}]}]}, "messages[0].content[0].data"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]}, "tool_calls"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}, "function.name"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"function": {"name": ""}}]}, "tools[0].name"),
        ({"messages": [{"role": "user", "thinking": "t"}]}, "messages[0].content[0]"),
    ],
)
def test_bad_rows_name_source_and_field(row: object, field: str) -> None:
    with pytest.raises(ChatFormatError) as info:
        conversation_from_json(row, "data.jsonl:7")
    assert info.value.where == "data.jsonl:7"
    assert field in info.value.field, info.value


def test_invalid_utf8_and_json() -> None:
    with pytest.raises(ChatFormatError, match="UTF-8") as info:
        parse_chat_line(b'{"messages": "\xff"}', "f.jsonl:3")
    assert info.value.where == "f.jsonl:3"
    with pytest.raises(ChatFormatError, match="not valid JSON"):
        parse_chat_line("{", "f.jsonl:4")


def test_unparsed_calls_cannot_be_exported() -> None:
    from tinkerflow import UnparsedToolCall
    from tinkerflow.errors import TinkerflowError

    message = Message(role="assistant", unparsed_tool_calls=(UnparsedToolCall("<tool_call>{", "bad json"),))
    with pytest.raises(TinkerflowError, match="unparsed"):
        conversation_to_json(Conversation(messages=(message,)))
