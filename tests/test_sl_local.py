"""The SL loop on the real local backend (a tiny random-init Llama, byte-level tokens): it learns, and a run
killed mid-way and resumed ends with the same weights and the same metric rows as an uninterrupted run, also
when it is killed inside a checkpoint write (files half written; all written but not yet renamed into place) or
after the checkpoint is durable but before ``state.json`` names it."""

from __future__ import annotations

import io
import os
import pathlib
import types
from collections.abc import Callable

import numpy as np
import pytest
from tests.byte_renderer import ByteRenderer
from tests.helpers import KilledError, chat_row, kill_after, sl_config

from tinkerflow.config import SLConfig
from tinkerflow.shell.io.run_dir import MetricsLog

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.tiny_model import (
    KILLED_NAME,
    assert_same_params,
    assert_same_rows,
    keep_what_a_kill_leaves,
    kill_before_state_json,
    kill_writing_checkpoint_meta,
    trained_params,
)

import tinkerflow.shell.backends.local.checkpoint as checkpoint_module
from tinkerflow.shell.backends.local.backend import LocalBackend
from tinkerflow.shell.backends.local.checkpoint import CheckpointMeta, read_meta
from tinkerflow.shell.io.run_dir import RunState, read_state
from tinkerflow.shell.recipes.sl import SLResult, run_sl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tmp_path: pathlib.Path, name: str) -> SLConfig:
    return sl_config(
        tmp_path,
        name,
        (chat_row(f"n{i}", "ok!") for i in range(24)),
        base_model="tiny-llama",
        learning_rate=1e-2,
        lora_rank=4,
        eval_every=4,
        save_every=3,
        num_samples_shown=1,
        sample_max_tokens=4,
    )


Reference = tuple[dict[str, np.ndarray], list[dict[str, object]], SLResult]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The uninterrupted run every resumed run is compared with (trained once per module)."""
    root = tmp_path_factory.mktemp("reference")
    backend = LocalBackend(checkpoint_dir=root / "ref" / "checkpoints")
    result = run_sl(_config(root, "ref"), backend, ByteRenderer(), out=io.StringIO())
    return trained_params(backend, root / "ref"), MetricsLog.read(root / "ref" / "metrics.jsonl"), result


def test_sl_on_tiny_model_learns_and_resumes_exactly(tmp_path: pathlib.Path, reference: Reference) -> None:
    theirs, reference_rows, reference_result = reference
    assert reference_result.eval_nll_before is not None
    assert reference_result.eval_nll_after is not None
    assert reference_result.eval_nll_after < reference_result.eval_nll_before * 0.7

    config = _config(tmp_path, "killed")
    backend = LocalBackend(checkpoint_dir=tmp_path / "killed" / "checkpoints")
    with pytest.raises(KilledError):
        run_sl(config, backend, ByteRenderer(), out=io.StringIO(), after_step=kill_after(6))
    resumed_backend = LocalBackend(checkpoint_dir=tmp_path / "killed" / "checkpoints")  # a fresh process, as it were
    resumed = run_sl(config, resumed_backend, ByteRenderer(), out=io.StringIO())

    assert_same_params(trained_params(resumed_backend, tmp_path / "killed"), theirs)
    assert_same_rows(MetricsLog.read(tmp_path / "killed" / "metrics.jsonl"), reference_rows)
    assert resumed.eval_nll_after == pytest.approx(reference_result.eval_nll_after, rel=1e-5)


# -- kills around a checkpoint write -------------------------------------------------------------------------------
# save_every=3 over 12 steps: checkpoints after steps 3, 6, 9 and 12. Each test kills the run while it saves the
# step-6 checkpoint, resumes it with a fresh backend (a new process, as it were) and compares with an uninterrupted
# run. A real kill runs no cleanup, so the temporary directory a killed write leaves is kept (rmtree disabled while
# killing), and the resumed run must not be confused by it.


def _visible_checkpoints(checkpoints: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path for path in checkpoints.glob("*/*/*") if not path.name.startswith("."))


def _leftovers(checkpoints: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path for path in checkpoints.glob(f"*/weights/.{KILLED_NAME}.*"))


def _kill_then_resume(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    reference: Reference,
    arm: Callable[[list[bool]], None],
    left_by_the_kill: Callable[[pathlib.Path], None] = lambda checkpoints: None,
) -> tuple[RunState, pathlib.Path]:
    """Run with the kill armed (``arm`` installs it; ``killing[0]`` says whether it is live), check the state it
    leaves (also with ``left_by_the_kill(checkpoints)``), resume, and compare with the reference run. Returns the
    state after the kill and the checkpoints."""
    reference_params, reference_rows, reference_result = reference
    killing = [True]
    arm(killing)
    keep_what_a_kill_leaves(monkeypatch, killing)
    config = _config(tmp_path, "killed")
    checkpoints = tmp_path / "killed" / "checkpoints"
    with pytest.raises(KilledError):
        run_sl(config, LocalBackend(checkpoint_dir=checkpoints), ByteRenderer(), out=io.StringIO())
    killing[0] = False
    state = read_state(tmp_path / "killed")
    assert state is not None
    assert state.step == 3  # still the last checkpoint that state.json recorded
    assert [row["step"] for row in MetricsLog.read(tmp_path / "killed" / "metrics.jsonl")] == list(range(6))
    for directory in _visible_checkpoints(checkpoints):  # whatever is visible is complete
        assert isinstance(read_meta(directory, str(directory)), CheckpointMeta)
    left_by_the_kill(checkpoints)

    resumed_backend = LocalBackend(checkpoint_dir=checkpoints)
    resumed = run_sl(config, resumed_backend, ByteRenderer(), out=io.StringIO())
    assert_same_params(trained_params(resumed_backend, tmp_path / "killed"), reference_params)
    assert MetricsLog.read(tmp_path / "killed" / "metrics.jsonl") == reference_rows  # no timing fields: identical
    assert resumed.eval_nll_after == pytest.approx(reference_result.eval_nll_after, rel=1e-6)
    final = read_state(tmp_path / "killed")
    assert final is not None
    assert final.step == 12
    for directory in _visible_checkpoints(checkpoints):
        assert isinstance(read_meta(directory, str(directory)), CheckpointMeta)
    return state, checkpoints


@pytest.mark.parametrize("moment", ["files half written", "files written, not renamed"])
def test_kill_inside_a_local_checkpoint_write_resumes_exactly(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, reference: Reference, moment: str
) -> None:
    def arm(killing: list[bool]) -> None:
        if moment == "files half written":
            kill_writing_checkpoint_meta(monkeypatch, killing)
        else:

            class Os(types.SimpleNamespace):
                def __getattr__(self, name: str) -> object:
                    return getattr(os, name)

                @staticmethod
                def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
                    if killing[0] and pathlib.Path(target).name == KILLED_NAME:
                        raise KilledError  # every file is written and fsynced; the rename never happens
                    os.replace(source, target)

            monkeypatch.setattr(checkpoint_module, "os", Os())

    def left_by_the_kill(checkpoints: pathlib.Path) -> None:
        leftovers = _leftovers(checkpoints)
        assert len(leftovers) == 1  # the killed write's temporary directory, hidden; never named by any path
        written = {path.name for path in leftovers[0].iterdir()}
        assert "optimizer.safetensors" in written
        assert ("checkpoint.json" in written) == (moment == "files written, not renamed")
        assert not (leftovers[0].parent / KILLED_NAME).exists()

    _, checkpoints = _kill_then_resume(tmp_path, monkeypatch, reference, arm, left_by_the_kill)
    assert _leftovers(checkpoints) == []  # removed when the run resumed (its writer was dead: no lock held)
    (run,) = checkpoints.iterdir()  # the resumed run continued the killed run's id ...
    assert (run / "weights" / KILLED_NAME).is_dir()  # ... and wrote step 6 under it


def test_kill_after_a_durable_checkpoint_before_state_json(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, reference: Reference
) -> None:
    _, checkpoints = _kill_then_resume(
        tmp_path, monkeypatch, reference, lambda killing: kill_before_state_json(monkeypatch, killing)
    )
    assert _leftovers(checkpoints) == []
    # the orphaned step-6 checkpoint of the killed client was complete; the resumed client continued the same run
    # id and replaced it with its own (identical) step 6
    step6 = [path for path in _visible_checkpoints(checkpoints) if path.name == KILLED_NAME]
    assert len(step6) == 1
    assert len(list(checkpoints.iterdir())) == 1
