from __future__ import annotations

import functools
import io
import json
import os
import pathlib
from collections.abc import Callable

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import assert_cli_refuses

from tinkerflow.config import LocalOptions, RunConfig, SLConfig
from tinkerflow.errors import ConfigError
from tinkerflow.preference.config import DPOConfig
from tinkerflow.rl.config import RLConfig
from tinkerflow.serde import to_json
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.io.run_dir import (
    MetricsLog,
    RunDirError,
    RunState,
    atomic_write_text,
    forget_state,
    read_history,
    read_state,
    referenced_paths,
    retained_steps,
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


def test_resume_accepts_changed_memory_settings_but_not_a_changed_dtype(tmp_path: pathlib.Path) -> None:
    """The local backend's memory settings never change results, so a resumed run may change them (e.g. a smaller
    ``max_tokens_per_batch`` after running out of memory); config.json then holds the new ones. Its dtype changes
    the numbers: refused, named."""
    config = SLConfig(train_data="a.jsonl", batch_size=4)
    _checkpointed(tmp_path, config)
    neutral = LocalOptions(
        max_tokens_per_batch=512, logprob_chunk_tokens=64, checkpoint_layers=False, return_freed_memory="between_passes"
    )
    _open(tmp_path, attrs.evolve(config, local=neutral))
    assert (tmp_path / "config.json").read_text() == to_json(attrs.evolve(config, local=neutral), indent=2)
    with pytest.raises(RunDirError, match=r'changed: local\.dtype: "auto" -> "bfloat16"\)') as info:
        _open(tmp_path, attrs.evolve(config, local=attrs.evolve(neutral, dtype="bfloat16", max_tokens_per_batch=7)))
    assert "max_tokens_per_batch" not in str(info.value)


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


# -- the state history, retention and the config's checkpoint fields (issue 15) ------------------------------------


def test_each_state_is_kept_in_the_history_before_state_json_names_it(tmp_path: pathlib.Path) -> None:
    for step in (3, 6, 9):
        write_state(tmp_path, RunState(step=step, checkpoint=f"local://run/weights/step-{step:06d}"))
    assert [state.step for state in read_history(tmp_path)] == [3, 6, 9]
    assert read_history(tmp_path)[-1] == read_state(tmp_path)
    (tmp_path / "states" / "step-000006.json").write_text("{torn")  # damaged on disk: no state to resume from
    (tmp_path / "states" / "notes.json").write_text("{}")  # not a state file
    assert [state.step for state in read_history(tmp_path)] == [3, 9]
    forget_state(tmp_path, 3)
    forget_state(tmp_path, 4)  # forgetting what is not there is fine
    assert [state.step for state in read_history(tmp_path)] == [9]


def test_a_state_written_before_checkpoint_root_existed_still_reads(tmp_path: pathlib.Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"step": 2, "checkpoint": "tinker://x/weights/a"}))
    assert read_state(tmp_path) == RunState(step=2, checkpoint="tinker://x/weights/a", checkpoint_root=None)


@given(
    st.sets(st.integers(1, 60), min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(1, 5)),
    st.one_of(st.none(), st.integers(1, 7)),
)
def test_retained_steps_follow_the_policy(steps: set[int], keep_last: int | None, keep_every: int | None) -> None:
    kept = retained_steps(steps, keep_last=keep_last, keep_every=keep_every)
    ordered = sorted(steps)
    assert kept <= steps
    assert ordered[-1] in kept  # the latest is always kept
    if keep_last is None:
        assert kept == steps
        return
    for step in ordered:
        recent = step in ordered[-keep_last:]
        multiple = keep_every is not None and step % keep_every == 0
        assert (step in kept) == (recent or multiple), step


def test_referenced_paths_are_everything_a_state_needs() -> None:
    state = RunState(
        step=4,
        checkpoint="local://r/weights/step-000004",
        sampler_checkpoint="local://r/sampler_weights/s4",
        extra_json=json.dumps(
            {"sampler_paths": {"2": "local://r/sampler_weights/sampler-000002"}, "reference": "tinker://t/x/y", "n": 3}
        ),
    )
    assert referenced_paths(state) == {
        "local://r/weights/step-000004",
        "local://r/sampler_weights/s4",
        "local://r/sampler_weights/sampler-000002",
        "tinker://t/x/y",
    }
    assert referenced_paths(attrs.evolve(state, extra_json="{not json")) == {
        "local://r/weights/step-000004",
        "local://r/sampler_weights/s4",
    }


_CONFIGS: dict[str, Callable[..., RunConfig]] = {
    "SLConfig": functools.partial(SLConfig, train_data="a.jsonl"),
    "DPOConfig": functools.partial(DPOConfig, train_data="a.jsonl"),
    "RLConfig": RLConfig,
}


@pytest.mark.parametrize("record", sorted(_CONFIGS))
@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"keep_last": 0}, "keep_last"),
        ({"keep_last": -1}, "keep_last"),
        ({"keep_last": True}, "keep_last"),
        ({"keep_last": 1.5}, "keep_last"),
        ({"keep_last": "2"}, "keep_last"),
        ({"keep_last": 2, "keep_every": 0}, "keep_every"),
        ({"keep_last": 2, "keep_every": -3}, "keep_every"),
        ({"keep_last": 2, "keep_every": False}, "keep_every"),
        ({"keep_last": 2, "keep_every": 2.0}, "keep_every"),
        ({"keep_last": 2, "keep_every": "5"}, "keep_every"),
        ({"keep_every": 5}, "keep_every"),  # no effect without keep_last
    ],
)
def test_bad_retention_settings_are_refused_naming_the_field(
    record: str, fields: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _CONFIGS[record](**fields)
    assert (info.value.where, info.value.field) == (record, named)


@pytest.mark.parametrize("record", sorted(_CONFIGS))
def test_good_retention_settings_are_kept(record: str) -> None:
    config = _CONFIGS[record](keep_last=2, keep_every=10)
    assert (config.keep_last, config.keep_every) == (2, 10)
    assert _CONFIGS[record]().keep_last is None


@pytest.mark.parametrize("record", [SLConfig, DPOConfig])
@pytest.mark.parametrize(
    "fields",
    [
        {"train_data": "a.jsonl", "test_data": "a.jsonl"},
        {"train_data": "a.jsonl", "test_data": "./a.jsonl"},
        {"train_data": "data/a.jsonl", "test_data": "data/../data/a.jsonl"},
        {"train_data": "hf:org/set", "test_data": "hf:org/set", "hf_split": "train", "hf_test_split": "train"},
        {"train_data": "hf:org/set", "test_data": "hf:org/set", "hf_test_split": "train"},
        {"train_data": "hf-disk:/d", "test_data": "hf-disk:/d", "hf_split": "test"},
    ],
)
def test_held_out_data_that_is_the_training_data_is_refused(record: type, fields: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        record(**fields)
    assert (info.value.where, info.value.field) == (record.__name__, "test_data")
    assert "training data itself" in info.value.problem


@pytest.mark.parametrize(
    "fields",
    [
        {"train_data": "a.jsonl", "test_data": "b.jsonl"},
        {"train_data": "hf:org/set", "test_data": "hf:org/set"},  # train and test splits
        {"train_data": "hf:org/set", "test_data": "hf:org/set", "hf_split": "train", "hf_test_split": "validation"},
        {"train_data": "hf:org/set", "test_data": "hf:org/other"},
    ],
)
def test_other_held_out_data_is_accepted(fields: dict[str, object]) -> None:
    assert SLConfig(**fields).test_data == fields["test_data"]  # type: ignore[arg-type]  # SLConfig's own fields


@pytest.mark.parametrize(("override", "named"), [("keep_last=0", "keep_last"), ("keep_every=3", "keep_every")])
def test_bad_retention_on_the_command_line_exits_2_naming_the_field(
    override: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    example = pathlib.Path(__file__).parents[1] / "examples" / "sl_people_json.json"
    assert_cli_refuses(capsys, ["sl", str(example), override, "--dry-run"], f"SLConfig.{named}")


def test_a_fresh_start_forgets_the_states_of_an_earlier_run(tmp_path: pathlib.Path) -> None:
    """With ``state.json`` removed (to start over) the states of the earlier run are no fallback for the new one."""
    write_state(tmp_path, RunState(step=2, checkpoint="fake://a/2"))
    (tmp_path / "state.json").unlink()
    _open(tmp_path, SLConfig(train_data="a.jsonl"))
    assert read_history(tmp_path) == []
