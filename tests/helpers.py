"""Helpers shared by several test modules (no torch needed to import them): JSONL data files, an SL config for the
fast loops, a kill hook for resume tests, one torch thread for the tiny models, the command line's dry runs and
refusals, and the offline tokenizers built once per session."""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import attrs
import pytest

from tinkerflow.chat import Conversation, Message
from tinkerflow.cli import main
from tinkerflow.config import SLConfig
from tinkerflow.shell.io.tokenizers import offline_tokenizer
from tinkerflow.tokenizers import FastTokenizer


def write_jsonl(path: pathlib.Path, rows: Iterable[Mapping[str, object]]) -> pathlib.Path:
    """Write ``rows`` one JSON object a line; returns ``path``."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat_row(user: str, assistant: str) -> dict[str, object]:
    """An SL data row: one user message and the assistant's answer."""
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def sl_config(tmp_path: pathlib.Path, name: str, rows: Iterable[Mapping[str, object]], **overrides: object) -> SLConfig:
    """An SL config training on ``rows`` (written to ``tmp_path/data.jsonl`` by the first call) into
    ``tmp_path/name``, with the fake backend's settings unless ``overrides`` change them."""
    data = tmp_path / "data.jsonl"
    if not data.exists():
        write_jsonl(data, rows)
    fields: dict[str, object] = {
        "train_data": str(data),
        "run_dir": str(tmp_path / name),
        "batch_size": 4,
        "epochs": 2,
        "learning_rate": 1.0,
        "eval_every": 3,
        "save_every": 4,
        "max_length": 64,
    }
    fields.update(overrides)
    return SLConfig(**fields)  # type: ignore[arg-type]  # the fields are SLConfig's, checked by its validators


class KilledError(Exception):
    """A simulated kill of the process running a loop."""


def kill_after(step_to_kill: int) -> Callable[[int], None]:
    """An ``after_step`` hook that kills the run (raises :class:`KilledError`) once step ``step_to_kill`` is done."""

    def hook(step: int) -> None:
        if step == step_to_kill:
            raise KilledError

    return hook


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread: the tiny models gain nothing from more, and they slow them down badly on a busy
    2-core machine. (The ``one_torch_thread`` fixture in conftest.py holds this for a whole module.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cli_dry_run(capsys: pytest.CaptureFixture[str], arguments: list[str]) -> tuple[str, dict[str, object]]:
    """Run ``tinkerflow ARGUMENTS`` (a ``--dry-run``), check that it succeeded, and return what it printed and the
    resolved config it printed."""
    status = main(arguments)
    out = capsys.readouterr().out
    assert status == 0
    start = out.index("{")
    resolved: dict[str, object] = json.loads(out[start : out.index("\n}\n", start) + 2])
    return out, resolved


def assert_cli_refuses(capsys: pytest.CaptureFixture[str], arguments: list[str], message: str) -> None:
    """``tinkerflow ARGUMENTS`` exits with status 2 and an error that contains ``message``."""
    assert main(arguments) == 2
    assert message in capsys.readouterr().err


@functools.cache
def cached_tokenizer(name: str) -> FastTokenizer:
    """``offline_tokenizer(name)``, built once per session (each build reads the cached files: about a second)."""
    return offline_tokenizer(name)


def writable_messages(messages: Iterable[Message]) -> tuple[Message, ...]:
    """``messages`` as renderers can mostly write them: no unparsed tool calls (no renderer writes them), no
    ``trainable`` flags, and a call id on every tool result."""
    return tuple(
        attrs.evolve(
            message,
            unparsed_tool_calls=(),
            trainable=None,
            tool_call_id=(message.tool_call_id or "call_1") if message.role == "tool" else None,
        )
        for message in messages
    )


def writable(conversation: Conversation) -> Conversation:
    """``conversation`` with :func:`writable_messages`."""
    return attrs.evolve(conversation, messages=writable_messages(conversation.messages))
