"""Helpers shared by the tests that train the tiny local models (import it after ``pytest.importorskip("torch")``):
a role_colon renderer over the models' byte vocabulary, kills inside a checkpoint write, and the comparison of a
resumed run with an uninterrupted one."""

from __future__ import annotations

import os
import pathlib
import shutil
import types
from collections.abc import Mapping, Sequence
from typing import ClassVar, Final

import numpy as np
import pytest
from tests.byte_renderer import ByteTokenizer
from tests.helpers import KilledError

import tinkerflow.shell.backends.local.checkpoint as checkpoint_module
import tinkerflow.shell.io.run as runner_module
import tinkerflow.shell.io.run_dir as run_dir_module
from tinkerflow.render import Renderer, get_renderer
from tinkerflow.shell.backends.local.backend import LocalBackend
from tinkerflow.shell.backends.local.checkpoint import CheckpointMeta
from tinkerflow.shell.io.run_dir import RunState, read_state


class TinyByteTokenizer(ByteTokenizer):
    """The tiny models' byte vocabulary (0-255 bytes, 256 BOS, 257 EOS) as a tinkerflow renderer tokenizer."""

    vocab_size = 320
    bos_token_id = 256
    eos_token_id = 257
    ADDED: ClassVar[Mapping[str, int]] = {"<|bos|>": 256, "<|eos|>": 257}


TINY_RENDERER: Renderer = get_renderer("role_colon", TinyByteTokenizer())

# -- kills around a checkpoint write ---------------------------------------------------------------------------------
# Each arms a kill (KilledError) while the run saves its step-6 checkpoint; ``killing[0]`` says whether it is live.

KILLED_NAME: Final = "step-000006"


def kill_writing_checkpoint_meta(monkeypatch: pytest.MonkeyPatch, killing: list[bool]) -> None:
    """Kill while the step-6 checkpoint is written: its weights and optimizer are on disk, its metadata (the last
    file the local backend writes) and the rename never happen."""
    real_write_meta = checkpoint_module.write_meta

    def write_meta(directory: pathlib.Path, meta: CheckpointMeta) -> None:
        if killing[0] and directory.name.startswith(f".{KILLED_NAME}."):
            raise KilledError
        real_write_meta(directory, meta)

    monkeypatch.setattr(checkpoint_module, "write_meta", write_meta)


def kill_before_state_json(monkeypatch: pytest.MonkeyPatch, killing: list[bool]) -> None:
    """Kill after the step-6 checkpoint is complete and durable, before ``state.json`` names it (it still says
    step 3)."""
    real_write_state = run_dir_module.write_state  # the function the runner imported

    def write_state(run_dir: str | os.PathLike[str], state: RunState) -> None:
        if killing[0] and state.step == 6:
            raise KilledError
        real_write_state(run_dir, state)

    monkeypatch.setattr(runner_module, "write_state", write_state)


def keep_what_a_kill_leaves(monkeypatch: pytest.MonkeyPatch, killing: list[bool]) -> None:
    """A killed process cleans nothing up: no checkpoint directory is removed while the kill is live."""
    real_rmtree = shutil.rmtree

    def rmtree(path: str | os.PathLike[str], ignore_errors: bool = False) -> None:
        if not killing[0]:
            real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(checkpoint_module, "shutil", types.SimpleNamespace(rmtree=rmtree))


# -- comparing a resumed run with an uninterrupted one ---------------------------------------------------------------


def trained_params(backend: LocalBackend, run_dir: pathlib.Path) -> dict[str, np.ndarray]:
    """The trainable parameters of the checkpoint that ``run_dir/state.json`` names."""
    state = read_state(run_dir)
    assert state is not None
    client = backend.create_training_client_from_state(state.checkpoint, with_optimizer=True).result()
    return client.get_trainable_parameters().result()


def assert_same_params(
    ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray], *, rtol: float = 1e-6, atol: float = 1e-7
) -> None:
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=rtol, atol=atol, err_msg=key)


def assert_same_rows(rows: Sequence[Mapping[str, object]], reference_rows: Sequence[Mapping[str, object]]) -> None:
    """The same metric rows, step by step and key by key (each value within a relative 1e-5)."""
    assert [row["step"] for row in rows] == [row["step"] for row in reference_rows]
    for row, reference_row in zip(rows, reference_rows, strict=True):
        assert row.keys() == reference_row.keys()
        for key in row:
            assert row[key] == pytest.approx(reference_row[key], rel=1e-5, abs=1e-7), (row["step"], key)
