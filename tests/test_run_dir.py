from __future__ import annotations

import io
import json
import os
import pathlib

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkerflow.config import SLConfig
from tinkerflow.serde import to_json
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.io.run_dir import (
    MetricsLog,
    RunDirError,
    RunState,
    atomic_write_text,
    read_state,
    write_state,
)
from tinkerflow.supervised import LRSchedule


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


def _open(run_dir: pathlib.Path, config: object) -> None:
    """Open and close the run in ``run_dir`` with ``config`` (what a loop does when it starts or resumes)."""
    Run.open(run_dir, config, total_steps=4, out=io.StringIO()).close()


def _checkpointed(run_dir: pathlib.Path, config: SLConfig) -> None:
    _open(run_dir, config)
    write_state(run_dir, RunState(step=2, checkpoint="local://run/checkpoints/000002"))


def test_resume_accepts_a_config_json_without_a_field_added_since(tmp_path: pathlib.Path) -> None:
    """A field added to the record (with its default) since the run started does not block resuming, and the
    rewritten config.json is the complete current config."""
    config = SLConfig(train_data="a.jsonl", batch_size=4)
    _checkpointed(tmp_path, config)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["hf_messages_field"], saved["lr_schedule"]["warmup_steps"]  # as written before these fields existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    _open(tmp_path, config)
    assert (tmp_path / "config.json").read_text() == to_json(config, indent=2)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"batch_size": 2}, ["batch_size: 4 -> 2"]),
        ({"batch_size": 2, "run_dir": "elsewhere"}, ["batch_size: 4 -> 2", 'run_dir: "runs/sl" -> "elsewhere"']),
        ({"lr_schedule": LRSchedule(kind="cosine", final_ratio=0.1)}, ['lr_schedule.kind: "linear" -> "cosine"']),
    ],
)
def test_resume_refuses_a_changed_value_naming_every_changed_field(
    tmp_path: pathlib.Path, change: dict[str, object], named: list[str]
) -> None:
    config = SLConfig(train_data="a.jsonl", batch_size=4)
    _checkpointed(tmp_path, config)
    with pytest.raises(RunDirError, match="another config") as info:
        _open(tmp_path, attrs.evolve(config, **change))  # type: ignore[arg-type]  # each case changes its own fields
    message = str(info.value)
    assert all(text in message for text in named)
    assert message.count(" -> ") == len(named)
    assert (tmp_path / "config.json").read_text() == to_json(config, indent=2)  # the refused config is not written


def test_resume_refuses_a_config_json_that_no_longer_loads(tmp_path: pathlib.Path) -> None:
    config = SLConfig(train_data="a.jsonl")
    _checkpointed(tmp_path, config)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "removed_field": 1}))
    with pytest.raises(RunDirError, match=r"another config.*removed_field"):
        _open(tmp_path, config)


def test_a_fresh_run_directory_takes_any_config(tmp_path: pathlib.Path) -> None:
    """Without a checkpoint (state.json) nothing is resumed, so a different config simply replaces config.json."""
    _open(tmp_path, SLConfig(train_data="a.jsonl", batch_size=4))
    _open(tmp_path, SLConfig(train_data="a.jsonl", batch_size=2))
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 2
