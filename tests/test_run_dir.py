from __future__ import annotations

import json
import os
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkerflow.shell.io.run_dir import (
    MetricsLog,
    RunDirError,
    RunState,
    atomic_write_text,
    read_state,
    write_state,
)


def test_atomic_write_replaces_whole_file(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "a" / "f.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_failed_atomic_write_keeps_old_content(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.json"
    atomic_write_text(target, "old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_state_round_trip(tmp_path: pathlib.Path) -> None:
    assert read_state(tmp_path) is None
    state = RunState(step=7, checkpoint="local://run/checkpoints/000007", data_state_json='{"index": 56}')
    write_state(tmp_path, state)
    assert read_state(tmp_path) == state
    (tmp_path / "state.json").write_text("{broken")
    with pytest.raises(RunDirError, match=r"state\.json"):
        read_state(tmp_path)


@given(st.integers(0, 12), st.integers(0, 12), st.booleans())
def test_metrics_resume_keeps_rows_before_the_checkpoint(written: int, resume: int, torn: bool) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = pathlib.Path(directory) / "metrics.jsonl"
        with MetricsLog(path) as log:
            for step in range(written):
                log.log(step, {"loss": float(step)})
        if torn:
            with open(path, "a") as handle:
                handle.write('{"step": 99, "lo')  # a row cut by a kill
        resume_at = min(resume, written)
        with MetricsLog(path, resume_step=resume_at) as log:
            for step in range(resume_at, written):
                log.log(step, {"loss": float(step)})
        rows = MetricsLog.read(path)
        assert [row["step"] for row in rows] == list(range(written))
        assert all(line.endswith("}") for line in path.read_text().splitlines())


def test_metrics_rows_are_json(tmp_path: pathlib.Path) -> None:
    with MetricsLog(tmp_path / "m.jsonl") as log:
        log.log(0, {"loss": 1.5, "note": "x", "missing": None})
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 0, "loss": 1.5, "note": "x", "missing": None}
    log = MetricsLog(tmp_path / "m.jsonl", resume_step=1)
    log.close()
    with pytest.raises(RunDirError, match="closed"):
        log.log(1, {})
