from __future__ import annotations

import io
import pathlib

import numpy as np
from tests.byte_renderer import ByteRenderer
from tests.fakes import FakeBackend, FakeSampler

from tinkerflow.config import SLConfig
from tinkerflow.shell.io.data import load_chat_jsonl
from tinkerflow.shell.recipes.distill import student_conversation, teacher_conversations, write_chat_jsonl
from tinkerflow.shell.recipes.sl import run_sl


def test_student_conversations_drop_the_system_prompt(tmp_path: pathlib.Path) -> None:
    params = np.zeros(512)
    params[ord("Y")] = 5.0  # the fake teacher always says "YYYY..."
    conversations = teacher_conversations(
        FakeSampler(params), ByteRenderer(), "Always answer Y.", ["a?", "b?", "c?"], max_tokens=4
    )
    assert [c.messages[0].text() for c in conversations] == ["a?", "b?", "c?"]
    assert all(len(c.messages) == 2 and c.messages[0].role == "user" for c in conversations)
    assert all(c.messages[1].text() == "YYYY" for c in conversations)
    path = tmp_path / "distilled.jsonl"
    write_chat_jsonl(path, conversations)
    loaded, skipped = load_chat_jsonl(path)
    assert loaded == conversations
    assert skipped == 0
    config = SLConfig(
        train_data=str(path), run_dir=str(tmp_path / "run"), batch_size=2, learning_rate=1.0, test_fraction=0.34
    )
    result = run_sl(config, FakeBackend(), ByteRenderer(), out=io.StringIO())
    assert result.eval_nll_after is not None
    assert result.eval_nll_before is not None
    assert result.eval_nll_after < result.eval_nll_before


def test_student_conversation_keeps_tool_calls() -> None:
    from tinkerflow import Message, ToolCall

    answer = Message(role="assistant", content="", tool_calls=(ToolCall("f"),))
    assert student_conversation("q", answer).messages[1].tool_calls == (ToolCall("f"),)
