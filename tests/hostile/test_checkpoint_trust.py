"""Checkpoints a user can trust (issue 15): a sha256 per file recorded at save and checked at load, the partial
folders of killed writes removed (never a write in progress), one run id per run directory across resumes, a
retention policy (``keep_last``, ``keep_every``) that never deletes what a kept state needs, and a resume that
falls back to the previous good checkpoint when the latest one is corrupt or missing, still bit-exact.

Kills: a real ``kill -9`` of a child process inside a checkpoint write, and the simulated kills of
``tests/tiny_model.py`` (an exception where the process would die, with every cleanup disabled)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import types
from typing import Final

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.byte_renderer import ByteRenderer
from tests.fakes import FakeBackend
from tests.helpers import KilledError, chat_row, kill_after, sl_config

from tinkerflow.config import SLConfig
from tinkerflow.shell.io.run_dir import MetricsLog, read_history, read_state

pytest.importorskip("torch")
pytest.importorskip("peft")

import torch
from tests.tiny_model import KILLED_NAME, assert_same_params, keep_what_a_kill_leaves, trained_params

import tinkerflow.shell.backends.local.checkpoint as checkpoint_module
from tinkerflow.shell.backends.local.backend import LocalBackend
from tinkerflow.shell.backends.local.checkpoint import (
    ADAPTER_FILE,
    META_FILE,
    OPTIMIZER_FILE,
    CheckpointError,
    CheckpointMeta,
    LocalPath,
    atomic_directory,
    delete_checkpoint,
    file_sha256,
    read_meta,
    read_tensors,
    read_weights,
    remove_partial_checkpoints,
    verify_checkpoint,
    write_checkpoint,
)
from tinkerflow.shell.backends.protocol import APIFuture
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.loop import Finish, StepPlan, run_steps
from tinkerflow.shell.recipes.sl import run_sl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT: Final = pathlib.Path(__file__).resolve().parents[2]
CPU: Final = torch.device("cpu")


def _meta(name: str = "tiny") -> CheckpointMeta:
    return CheckpointMeta(
        base_model=name,
        kind="weights",
        lora_rank=2,
        lora_alpha=32,
        target_modules=("layers.0.q_proj",),
        has_optimizer=True,
        optimizer_steps=1,
        seed=0,
    )


def _write(directory: pathlib.Path, value: float = 1.0, *, overwrite: bool = False) -> pathlib.Path:
    """A small but real LoRA checkpoint (adapter, adapter config, optimizer, checkpoint.json)."""
    weights = {"layers.0.q_proj.lora_A.weight": torch.full((2, 4), value)}
    optimizer = {"layers.0.q_proj.lora_A.weight.exp_avg": torch.full((2, 4), value / 2)}
    write_checkpoint(directory, _meta(), weights, optimizer, overwrite=overwrite)
    return directory


def _flip(file: pathlib.Path, position: float = 0.5, xor: int = 0x01) -> None:
    data = bytearray(file.read_bytes())
    index = min(int(position * len(data)), len(data) - 1)
    data[index] ^= xor
    file.write_bytes(bytes(data))


def _hidden(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path for path in root.glob("*/*/*") if path.name.startswith("."))


# -- hashes ----------------------------------------------------------------------------------------------------------


def test_every_file_is_hashed_at_save(tmp_path: pathlib.Path) -> None:
    directory = _write(tmp_path / "run" / "weights" / "a")
    meta = read_meta(directory, "local://run/weights/a")
    files = {path.name for path in directory.iterdir()} - {META_FILE}
    assert {name for name, _ in meta.sha256} == files == {ADAPTER_FILE, OPTIMIZER_FILE, "adapter_config.json"}
    for name, digest in meta.sha256:
        assert digest == file_sha256(directory / name)
    assert verify_checkpoint(directory, "local://run/weights/a") == meta


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return _write(tmp_path_factory.mktemp("pristine") / "run" / "weights" / "a")


@pytest.mark.hostile("checkpoints")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from([ADAPTER_FILE, OPTIMIZER_FILE, "adapter_config.json"]),
    position=st.floats(0.0, 1.0),
    xor=st.integers(1, 255),
)
def test_any_flipped_byte_is_caught_naming_the_file(
    pristine: pathlib.Path, name: str, position: float, xor: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        directory = pathlib.Path(folder) / "a"
        shutil.copytree(pristine, directory)
        _flip(directory / name, position, xor)
        with pytest.raises(CheckpointError, match=rf"{name}: corrupt \(sha256"):
            verify_checkpoint(directory, "local://run/weights/a")
        if name.endswith(".safetensors"):  # what loads use: training (optimizer), sampling, export (adapter)
            with pytest.raises(CheckpointError, match=rf"{name}: corrupt"):
                read_tensors(directory / name, CPU)
        if name == ADAPTER_FILE:
            with pytest.raises(CheckpointError, match=rf"{name}: corrupt"):
                read_weights(directory, read_meta(directory, "x"), CPU)


@pytest.mark.hostile("checkpoints")
@pytest.mark.parametrize("name", [ADAPTER_FILE, OPTIMIZER_FILE, "adapter_config.json"])
@pytest.mark.parametrize("keep", [0, 1, 100])
def test_a_truncated_file_is_caught_naming_the_file(
    pristine: pathlib.Path, tmp_path: pathlib.Path, name: str, keep: int
) -> None:
    directory = tmp_path / "a"
    shutil.copytree(pristine, directory)
    (directory / name).write_bytes((directory / name).read_bytes()[:keep])
    with pytest.raises(CheckpointError, match=rf"{name}: corrupt \(sha256"):
        verify_checkpoint(directory, "local://run/weights/a")


@pytest.mark.hostile("checkpoints")
def test_a_missing_file_is_named(tmp_path: pathlib.Path) -> None:
    directory = _write(tmp_path / "run" / "weights" / "a")
    (directory / OPTIMIZER_FILE).unlink()
    with pytest.raises(CheckpointError, match=rf"{OPTIMIZER_FILE}: missing"):
        verify_checkpoint(directory, "local://run/weights/a")


def test_a_checkpoint_written_before_hashes_loads_unchecked(tmp_path: pathlib.Path) -> None:
    directory = _write(tmp_path / "run" / "weights" / "a")
    data = json.loads((directory / META_FILE).read_text())
    del data["sha256"]
    (directory / META_FILE).write_text(json.dumps(data))
    assert verify_checkpoint(directory, "p").sha256 == ()
    assert set(read_tensors(directory / OPTIMIZER_FILE, CPU)) == {"layers.0.q_proj.lora_A.weight.exp_avg"}


@pytest.mark.hostile("checkpoints")
def test_an_unhashed_damaged_safetensors_file_is_a_checkpoint_error(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "lone.safetensors"
    file.write_bytes(b"\xff" * 64)  # no checkpoint.json beside it: nothing to check, and not safetensors
    with pytest.raises(CheckpointError, match=r"lone\.safetensors: not a readable safetensors file"):
        read_tensors(file, CPU)


@pytest.mark.hostile("checkpoints")
@pytest.mark.parametrize(
    "recorded",
    [
        {ADAPTER_FILE: "abc"},  # too short
        {ADAPTER_FILE: "g" * 64},  # not hex
        {ADAPTER_FILE: "A" * 64},  # upper case is not how it is written
        {"../escape.safetensors": "0" * 64},  # a name that leaves the folder
        {ADAPTER_FILE: 7},
        ["not", "pairs"],
        "0" * 64,
        7,
    ],
)
def test_a_malformed_hash_record_is_refused(tmp_path: pathlib.Path, recorded: object) -> None:
    directory = _write(tmp_path / "run" / "weights" / "a")
    data = json.loads((directory / META_FILE).read_text())
    data["sha256"] = recorded
    (directory / META_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"unreadable checkpoint\.json.*sha256"):
        read_meta(directory, "local://run/weights/a")


# -- partial checkpoints ---------------------------------------------------------------------------------------------

_CHILD_WRITER: Final = """
import pathlib, sys
from tinkerflow.shell.backends.local.checkpoint import atomic_directory
with atomic_directory(pathlib.Path(sys.argv[1])) as temp:
    (temp / "half.bin").write_bytes(b"x" * 1000)
    print(temp, flush=True)
    sys.stdin.read()  # a long write, until the parent kills the process
"""


@pytest.mark.hostile("checkpoints")
def test_the_leftover_of_a_kill_9_is_removed_and_a_live_write_in_another_process_is_not(
    tmp_path: pathlib.Path,
) -> None:
    target = tmp_path / "run" / "weights" / "step-000001"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_WRITER, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert child.stdout is not None
        temp = pathlib.Path(child.stdout.readline().strip())
        assert temp.parent == target.parent
        assert temp.name.startswith(".step-000001.")
        assert remove_partial_checkpoints(tmp_path) == []  # the writer is alive: its write is left alone
        assert (temp / "half.bin").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert temp.exists()  # a killed process cleans nothing up
    assert remove_partial_checkpoints(tmp_path) == [temp]
    assert list(target.parent.iterdir()) == []


def test_a_write_in_progress_in_this_process_is_left_alone(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "run" / "weights" / "a"
    with atomic_directory(target) as temp:
        (temp / "x").write_bytes(b"1")
        assert remove_partial_checkpoints(tmp_path) == []
        assert temp.exists()
    assert (target / "x").read_bytes() == b"1"
    assert _hidden(tmp_path) == []


def test_a_cleaner_that_catches_a_write_before_its_lock_makes_it_start_again(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between ``mkdtemp`` and the lock a write looks abandoned; a cleaner removing it then (holding the lock) makes
    the writer notice its directory is gone and take a new one."""
    made: list[pathlib.Path] = []
    cleaned: list[pathlib.Path] = []

    def mkdtemp(**kwargs: str) -> str:
        path = tempfile.mkdtemp(**kwargs)
        made.append(pathlib.Path(path))
        if len(made) == 1:
            cleaned.extend(remove_partial_checkpoints(tmp_path))
        return path

    monkeypatch.setattr(checkpoint_module, "tempfile", types.SimpleNamespace(mkdtemp=mkdtemp))
    _write(tmp_path / "run" / "weights" / "a")
    assert cleaned == made[:1]
    assert len(made) == 2
    verify_checkpoint(tmp_path / "run" / "weights" / "a", "a")
    assert _hidden(tmp_path) == []


@pytest.mark.hostile("checkpoints")
def test_a_checkpoint_set_aside_by_a_killed_overwrite_is_restored_or_removed(tmp_path: pathlib.Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    weights = tmp_path / "run" / "weights"
    _write(weights / "a", 1.0)
    os.replace(weights / "a", weights / f".a.old-{dead_pid}")  # killed between the overwrite's two renames
    _write(weights / "b", 2.0)
    shutil.copytree(weights / "b", weights / f".b.old-{dead_pid}")  # killed before removing the old copy
    shutil.copytree(weights / "b", weights / f".b.old-{os.getpid()}")  # a live process's overwrite: left alone
    removed = remove_partial_checkpoints(tmp_path)
    assert removed == [weights / f".b.old-{dead_pid}"]
    verify_checkpoint(weights / "a", "a")  # moved back into place
    assert sorted(path.name for path in weights.iterdir()) == [f".b.old-{os.getpid()}", "a", "b"]


@pytest.mark.hostile("checkpoints")
def test_delete_checkpoint_never_leaves_a_half_checkpoint_under_its_name(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "run" / "weights" / "a")
    killing = [True]
    keep_what_a_kill_leaves(monkeypatch, killing)  # the removal of the files is killed
    assert delete_checkpoint(tmp_path, "local://run/weights/a")
    assert not (tmp_path / "run" / "weights" / "a").exists()
    assert len(_hidden(tmp_path)) == 1
    killing[0] = False
    assert len(remove_partial_checkpoints(tmp_path)) == 1
    assert _hidden(tmp_path) == []
    assert not delete_checkpoint(tmp_path, "local://run/weights/a")


# -- retention, driven through Run and the step loop with a store that writes real (tiny) checkpoints ----------------


class _Client:
    """A training client that trains nothing and saves small real checkpoints under its run id."""

    def __init__(self, root: pathlib.Path, run_id: str) -> None:
        self.root, self.run_id = root, run_id

    def _save(self, kind: str, name: str) -> APIFuture[str]:
        path = LocalPath(self.run_id, kind, name)  # type: ignore[arg-type]  # kind is weights or sampler_weights
        _write(path.directory(self.root), overwrite=True)
        return APIFuture.completed(str(path))

    def save_state(self, name: str) -> APIFuture[str]:
        return self._save("weights", name)

    def save_weights_for_sampler(self, name: str) -> APIFuture[str]:
        return self._save("sampler_weights", name)


class _Store:
    """The local backend's CheckpointStore side, over :class:`_Client`."""

    def __init__(self, root: pathlib.Path) -> None:
        self.checkpoint_dir = root
        self.continued: list[str] = []

    def remove_partial_checkpoints(self) -> list[pathlib.Path]:
        return remove_partial_checkpoints(self.checkpoint_dir)

    def delete_checkpoint(self, path: str) -> bool:
        return delete_checkpoint(self.checkpoint_dir, path)

    def create_lora_training_client(self, base_model: str, **options: object) -> APIFuture[_Client]:
        return APIFuture.completed(_Client(self.checkpoint_dir, "run-a"))

    def create_training_client_from_state(
        self, path: str, *, with_optimizer: bool = False, continue_run: bool = False
    ) -> APIFuture[_Client]:
        self.continued.append(path)
        run_id = LocalPath.parse(path).run_id if continue_run else "run-b"
        return APIFuture.completed(_Client(self.checkpoint_dir, run_id))


def _store_run(
    run_dir: pathlib.Path, config: SLConfig, total: int, out: io.StringIO, *, kill_at: int | None = None
) -> _Store:
    """Steps ``0 .. total-1`` of a do-nothing loop on a :class:`_Store` under ``run_dir/checkpoints``; each state
    records (as the async RL loop does) the sampler weights of the step before it and a fixed KL reference."""
    store = _Store(run_dir / "checkpoints")
    run = Run.open(run_dir, config, total_steps=total, out=out)
    try:
        client = run.training_client(store, "tiny", lora_rank=2, seed=0)  # type: ignore[arg-type]  # a test double
        reference = client.save_weights_for_sampler("reference").result()

        def extra(done: int) -> str:
            sampler = client.save_weights_for_sampler(f"sampler-{done - 1:06d}").result()
            return json.dumps({"sampler_paths": {str(done - 1): sampler}, "reference": reference})

        def submit(plan: StepPlan) -> Finish:
            return lambda: ({}, 0.0)

        run_steps(
            run, client, submit, total=total, learning_rate=1e-3, lr_schedule=None, eval_every=0,  # type: ignore[arg-type]  # a test double
            save_every=config.save_every, data_state=lambda done: "null", extra_state=extra,
            after_step=kill_after(kill_at) if kill_at is not None else None,
        )  # fmt: skip
    finally:
        run.close()
    return store


def _saved_steps(total: int, save_every: int) -> list[int]:
    return sorted({*range(save_every, total + 1, save_every), total} if save_every else {total})


@pytest.mark.hostile("checkpoints")
@settings(max_examples=30, deadline=None)
@given(
    keep=st.one_of(
        st.tuples(st.none(), st.none()), st.tuples(st.integers(1, 4), st.one_of(st.none(), st.integers(1, 5)))
    ),
    save_every=st.integers(0, 4),
    total=st.integers(1, 13),
    kill_at=st.one_of(st.none(), st.integers(0, 12)),
)
def test_retention_keeps_exactly_the_policy_and_whatever_a_kept_state_needs(
    keep: tuple[int | None, int | None], save_every: int, total: int, kill_at: int | None
) -> None:
    keep_last, keep_every = keep
    config = SLConfig(train_data="a.jsonl", save_every=save_every, keep_last=keep_last, keep_every=keep_every)
    with tempfile.TemporaryDirectory() as folder:
        run_dir = pathlib.Path(folder) / "run"
        if kill_at is not None and kill_at < total:  # killed, then resumed: the policy is the same
            with pytest.raises(KilledError):
                _store_run(run_dir, config, total, io.StringIO(), kill_at=kill_at)
        _store_run(run_dir, config, total, io.StringIO())
        saved = _saved_steps(total, save_every)
        expected = set(saved)
        if keep_last is not None:
            expected = set(saved[-keep_last:]) | {step for step in saved if keep_every and step % keep_every == 0}
        root = run_dir / "checkpoints" / "run-a"
        assert {int(path.name[5:]) for path in (root / "weights").iterdir()} == expected
        history = read_history(run_dir)
        assert {state.step for state in history} == expected
        needed = {f"sampler-{step - 1:06d}" for step in expected} | {"reference"}
        assert {path.name for path in (root / "sampler_weights").iterdir()} == needed
        for state in history:  # every kept state can be resumed from
            for path in [state.checkpoint, *json.loads(state.extra_json)["sampler_paths"].values()]:
                verify_checkpoint(LocalPath.parse(path).directory(run_dir / "checkpoints"), path)
        assert sorted((run_dir / "checkpoints").iterdir()) == [root]  # one run id across the resume
        assert _hidden(run_dir / "checkpoints") == []


@pytest.mark.hostile("checkpoints")
def test_a_corrupt_sampler_checkpoint_a_state_needs_makes_the_resume_fall_back(tmp_path: pathlib.Path) -> None:
    config = SLConfig(train_data="a.jsonl", save_every=2)
    with pytest.raises(KilledError):
        _store_run(tmp_path / "run", config, 8, io.StringIO(), kill_at=6)  # states at 2, 4, 6
    sampler = tmp_path / "run" / "checkpoints" / "run-a" / "sampler_weights" / "sampler-000005"
    _flip(sampler / ADAPTER_FILE)
    out = io.StringIO()
    run = Run.open(tmp_path / "run", config, total_steps=8, out=out)
    run.close()
    assert run.start_step == 4
    message = out.getvalue()
    assert "step 6:" in message
    assert f"sampler-000005/{ADAPTER_FILE}: corrupt" in message
    assert "resuming from the previous good checkpoint, step 4 (local://run-a/weights/step-000004)" in message
    assert [state.step for state in read_history(tmp_path / "run")] == [2, 4]  # the abandoned future is forgotten


def test_retention_is_not_applied_by_a_backend_without_local_checkpoints(tmp_path: pathlib.Path) -> None:
    config = SLConfig(train_data="a.jsonl", run_dir=str(tmp_path / "run"), keep_last=1)
    out = io.StringIO()
    run = Run.open(tmp_path / "run", config, total_steps=2, out=out)
    try:
        run.training_client(FakeBackend(), "fake", lora_rank=2, seed=0)
    finally:
        run.close()
    assert "keep_last / keep_every are not applied" in out.getvalue()


# -- runs of the tiny model: kills, corruption, resume, retention ---------------------------------------------------
# save_every=3 over 12 steps: checkpoints after steps 3, 6, 9 and 12.


def _config(tmp_path: pathlib.Path, name: str, **changes: object) -> SLConfig:
    return sl_config(
        tmp_path, name, (chat_row(f"n{i}", "ok!") for i in range(24)), base_model="tiny-llama", learning_rate=1e-2,
        lora_rank=4, eval_every=4, save_every=3, num_samples_shown=1, sample_max_tokens=4, **changes,
    )  # fmt: skip


def _sl(config: SLConfig, **kwargs: object) -> str:
    """Run (or resume) ``config`` in a fresh backend (a new process, as it were); what it printed."""
    out = io.StringIO()
    backend = LocalBackend(checkpoint_dir=pathlib.Path(config.run_dir) / "checkpoints")
    run_sl(config, backend, ByteRenderer(), out=out, **kwargs)  # type: ignore[arg-type]  # after_step only
    return out.getvalue()


Reference = tuple[dict[str, np.ndarray], list[dict[str, object]]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    _sl(_config(root, "ref"))
    backend = LocalBackend(checkpoint_dir=root / "ref" / "checkpoints")
    return trained_params(backend, root / "ref"), MetricsLog.read(root / "ref" / "metrics.jsonl")


def _assert_like_reference(run_dir: pathlib.Path, reference: Reference, *, runs: int = 1) -> None:
    """The run ended with the reference's weights and metric rows, under ``runs`` run ids, with no partial
    checkpoint left, and every checkpoint of its history whole."""
    params, rows = reference
    assert_same_params(trained_params(LocalBackend(checkpoint_dir=run_dir / "checkpoints"), run_dir), params)
    assert MetricsLog.read(run_dir / "metrics.jsonl") == rows
    checkpoints = run_dir / "checkpoints"
    assert len(list(checkpoints.iterdir())) == runs
    assert _hidden(checkpoints) == []
    for state in read_history(run_dir):
        assert state.checkpoint_root == "checkpoints"
        verify_checkpoint(LocalPath.parse(state.checkpoint).directory(checkpoints), state.checkpoint)


def _weights_dir(run_dir: pathlib.Path, step: int) -> pathlib.Path:
    (found,) = (run_dir / "checkpoints").glob(f"*/weights/step-{step:06d}")
    return found


_CHILD_RUN: Final = """
import os, pathlib, signal, sys
sys.path.insert(0, sys.argv[2])
import torch
torch.set_num_threads(1)
import tinkerflow.shell.backends.local.checkpoint as checkpoint_module
from tests.hostile.test_checkpoint_trust import _config, _sl
real_write_meta = checkpoint_module.write_meta

def write_meta(directory, meta):
    if directory.name.startswith(".step-000006."):
        os.kill(os.getpid(), signal.SIGKILL)  # inside the step-6 write: weights and optimizer on disk, no metadata
    real_write_meta(directory, meta)

checkpoint_module.write_meta = write_meta
_sl(_config(pathlib.Path(sys.argv[1]), "killed"))
"""


@pytest.mark.hostile("checkpoints")
def test_kill_9_in_a_checkpoint_write_then_two_resumes_keep_one_run_id_and_end_exactly(
    tmp_path: pathlib.Path, reference: Reference
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD_RUN, str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    run_dir = tmp_path / "killed"
    state = read_state(run_dir)
    assert state is not None
    assert state.step == 3
    (partial,) = (run_dir / "checkpoints").glob(f"*/weights/.{KILLED_NAME}.*.tmp")
    assert not (partial / META_FILE).exists()

    with pytest.raises(KilledError):  # the first resume: cleans up, continues the run id, dies after step 10
        _sl(_config(tmp_path, "killed"), after_step=kill_after(10))
    assert not partial.exists()
    state = read_state(run_dir)
    assert state is not None
    assert state.step == 9
    assert state.checkpoint.startswith(f"local://{partial.parent.parent.name}/")
    printed = _sl(_config(tmp_path, "killed"))  # the second resume
    assert "resuming at step 9" in printed
    _assert_like_reference(run_dir, reference)


@pytest.mark.hostile("checkpoints")
@pytest.mark.parametrize(
    "damage", ["a flipped byte in the adapter", "the adapter truncated", "the checkpoint deleted", "every one corrupt"]
)
def test_a_corrupt_or_missing_latest_checkpoint_falls_back_to_the_previous_good_one(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, reference: Reference, damage: str
) -> None:
    run_dir = tmp_path / "killed"
    with pytest.raises(KilledError):
        _sl(_config(tmp_path, "killed"), after_step=kill_after(10))  # checkpoints 3, 6, 9
    latest = _weights_dir(run_dir, 9)
    if damage == "the checkpoint deleted":
        shutil.rmtree(latest)
    else:
        for step in (3, 6, 9) if damage == "every one corrupt" else (9,):
            adapter = _weights_dir(run_dir, step) / ADAPTER_FILE
            if damage == "the adapter truncated":  # a write cut short, as a full disk leaves it
                adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
            else:
                _flip(adapter)
        state = read_state(run_dir)
        assert state is not None
        with pytest.raises(CheckpointError, match=f"{ADAPTER_FILE}: corrupt"):  # a load checks it too
            LocalBackend(checkpoint_dir=run_dir / "checkpoints").create_training_client_from_state(
                state.checkpoint, with_optimizer=True
            ).result()

    printed = _sl(_config(tmp_path, "killed"))
    assert "checkpoint not usable (step 9: " in printed
    if damage == "every one corrupt":  # starting over is a new run (a new run id); the damaged run is left as it is
        assert "step 3: " in printed
        assert "no earlier checkpoint is whole: starting over from step 0" in printed
        assert "resuming at" not in printed
    else:
        assert (f"{ADAPTER_FILE}: corrupt" in printed) == (damage != "the checkpoint deleted")
        assert "resuming from the previous good checkpoint, step 6" in printed
        assert "resuming at step 6" in printed
    _assert_like_reference(run_dir, reference, runs=2 if damage == "every one corrupt" else 1)
    assert [state.step for state in read_history(run_dir)] == [3, 6, 9, 12]


@pytest.mark.hostile("checkpoints")
def test_retention_on_the_local_backend_across_a_kill(tmp_path: pathlib.Path, reference: Reference) -> None:
    config = _config(tmp_path, "kept", keep_last=2, keep_every=6)
    with pytest.raises(KilledError):
        _sl(config, after_step=kill_after(10))
    _sl(config)
    run_dir = tmp_path / "kept"
    _assert_like_reference(run_dir, reference)
    (run,) = (run_dir / "checkpoints").iterdir()
    assert sorted(path.name for path in (run / "weights").iterdir()) == [
        "step-000006",
        "step-000009",
        "step-000012",
    ]
    assert [state.step for state in read_history(run_dir)] == [6, 9, 12]


def test_async_rl_with_keep_last_1_keeps_what_its_batches_in_flight_need_and_resumes_exactly(
    tmp_path: pathlib.Path,
) -> None:
    """Async RL (staleness 2) with a KL reference and ``keep_last=1``: each dropped state's sampler weights go with
    it, but never the ones the kept state's in-flight batches or the KL penalty need, so the resume is exact."""
    from tests.test_rl_loop import _config as rl_config
    from tests.test_rl_loop import _rows, _weights
    from tests.test_rl_loop import _run as run_rl_tiny

    reference_config = rl_config(tmp_path, "ref", mode="async", max_staleness=2, kl_coef=0.1)
    reference = run_rl_tiny(reference_config)
    config = rl_config(tmp_path, "kept", mode="async", max_staleness=2, kl_coef=0.1, keep_last=1)
    with pytest.raises(KilledError):
        run_rl_tiny(config, after_step=kill_after(3))
    run_dir = pathlib.Path(config.run_dir)
    state = read_state(run_dir)
    assert state is not None
    assert sorted(json.loads(state.extra_json)["sampler_paths"]) == ["0", "1"]
    resumed = run_rl_tiny(config)
    assert _rows(config) == _rows(reference_config)
    assert_same_params(_weights(config, resumed), _weights(reference_config, reference), rtol=1e-5, atol=1e-6)
    (run,) = (run_dir / "checkpoints").iterdir()
    assert [path.name for path in (run / "weights").iterdir()] == ["step-000006"]
    assert sorted(path.name for path in (run / "sampler_weights").iterdir()) == [
        "final",
        "reference",
        "sampler-000004",  # the weights of the batches in flight after step 6
        "sampler-000005",
    ]
    assert [state.step for state in read_history(run_dir)] == [6]
