"""The SL loop on a deterministic fake backend: learning, exact resume (also after a crash while checkpointing),
bad rows, and the run directory's contents."""

from __future__ import annotations

import io
import json
import pathlib

import attrs
import numpy as np
import pytest
from tests.byte_renderer import ByteRenderer
from tests.fakes import FakeBackend
from tests.helpers import KilledError, chat_row, kill_after, sl_config, write_jsonl

from tinkerflow.chat_format import ChatFormatError
from tinkerflow.config import SLConfig
from tinkerflow.shell.io.run_dir import MetricsLog, read_state
from tinkerflow.shell.recipes.sl import prepare_sl_data, run_sl


def _rows(count: int) -> list[dict[str, object]]:
    return [chat_row(f"question {i}?", "yes" if i % 2 else "no") for i in range(count)]


def _config(tmp_path: pathlib.Path, name: str, **overrides: object) -> SLConfig:
    return sl_config(tmp_path, name, _rows(40), num_samples_shown=2, **overrides)


def test_sl_lowers_held_out_loss(tmp_path: pathlib.Path) -> None:
    result = run_sl(_config(tmp_path, "run"), FakeBackend(), ByteRenderer(), out=io.StringIO())
    assert result.eval_nll_before is not None
    assert result.eval_nll_after is not None
    assert result.eval_nll_after < result.eval_nll_before - 0.5
    rows = MetricsLog.read(tmp_path / "run" / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(result.steps))
    assert rows[-1]["train_nll"] < rows[0]["train_nll"]  # type: ignore[operator]
    assert any("eval_nll" in row for row in rows)
    assert read_state(tmp_path / "run") is not None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 4
    assert len(result.samples_after) == 2
    assert 'id="series-0"' in (tmp_path / "run" / "loss.html").read_text()


@pytest.mark.parametrize("kill_at", [0, 2, 5, 9, 13])
def test_resume_is_exact(tmp_path: pathlib.Path, kill_at: int) -> None:
    reference_backend = FakeBackend()
    reference = run_sl(_config(tmp_path, "ref"), reference_backend, ByteRenderer(), out=io.StringIO())
    backend = FakeBackend()
    config = _config(tmp_path, "killed")
    with pytest.raises(KilledError):
        run_sl(config, backend, ByteRenderer(), out=io.StringIO(), after_step=kill_after(kill_at))
    resumed = run_sl(config, backend, ByteRenderer(), out=io.StringIO())
    np.testing.assert_allclose(backend.clients[-1].params, reference_backend.clients[-1].params, rtol=0, atol=1e-12)
    assert MetricsLog.read(tmp_path / "killed" / "metrics.jsonl") == MetricsLog.read(tmp_path / "ref" / "metrics.jsonl")
    assert resumed.eval_nll_after == reference.eval_nll_after


def test_crash_while_checkpointing_resumes_from_previous_checkpoint(tmp_path: pathlib.Path) -> None:
    reference_backend = FakeBackend()
    run_sl(_config(tmp_path, "ref"), reference_backend, ByteRenderer(), out=io.StringIO())
    backend = FakeBackend()
    backend.crash_on_save = "step-000008"
    config = _config(tmp_path, "crashed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sl(config, backend, ByteRenderer(), out=io.StringIO())
    state = read_state(tmp_path / "crashed")
    assert state is not None
    assert state.step == 4  # the state still names the last durable checkpoint
    backend.crash_on_save = None
    run_sl(config, backend, ByteRenderer(), out=io.StringIO())
    np.testing.assert_allclose(backend.clients[-1].params, reference_backend.clients[-1].params, atol=1e-12)
    assert MetricsLog.read(tmp_path / "crashed" / "metrics.jsonl") == MetricsLog.read(
        tmp_path / "ref" / "metrics.jsonl"
    )


def test_changed_config_is_refused_on_resume(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "run", max_steps=4)
    run_sl(config, FakeBackend(), ByteRenderer(), out=io.StringIO())
    from tinkerflow.errors import TinkerflowError

    with pytest.raises(TinkerflowError, match="another config"):
        run_sl(attrs.evolve(config, batch_size=2), FakeBackend(), ByteRenderer(), out=io.StringIO())


def test_bad_rows_raise_with_file_and_line_or_are_counted(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "bad.jsonl"
    write_jsonl(data, _rows(10))
    with open(data, "ab") as handle:
        handle.write(b'{"messages": [{"role": "robot", "content": "x"}]}\n')
        handle.write(b"\n")
        handle.write(b'{"messages": []}\n')
        handle.write(b'{"messages": [{"role": "user", "content": "\xff"}]}\n')
        handle.write(
            json.dumps(
                {"messages": [{"role": "user", "content": "x" * 500}, {"role": "assistant", "content": "y"}]}
            ).encode()
            + b"\n"
        )
    config = _config(tmp_path, "bad", train_data=str(data))
    with pytest.raises(ChatFormatError) as info:
        prepare_sl_data(config, ByteRenderer())
    assert info.value.where.endswith("bad.jsonl:11")
    assert info.value.field == "messages[0].role"
    skipped = prepare_sl_data(attrs.evolve(config, bad_rows="skip"), ByteRenderer())
    assert skipped.skipped_rows == 4  # unknown role, empty, invalid UTF-8, too long (the blank line is not a row)
    assert len(skipped.train) + len(skipped.test) == 10
    rows = MetricsLog.read(pathlib.Path(config.run_dir) / "metrics.jsonl")
    assert rows == []
    run_sl(attrs.evolve(config, bad_rows="skip", max_steps=2), FakeBackend(), ByteRenderer(), out=io.StringIO())
    assert MetricsLog.read(pathlib.Path(config.run_dir) / "metrics.jsonl")[0]["skipped_rows"] == 4


def test_too_long_row_error_names_the_row(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "long.jsonl"
    data.write_text(
        json.dumps({"messages": [{"role": "user", "content": "x" * 500}, {"role": "assistant", "content": "y"}]}) + "\n"
    )
    from tinkerflow.errors import ValidationError

    with pytest.raises(ValidationError, match="max_length") as info:
        prepare_sl_data(_config(tmp_path, "long", train_data=str(data), test_fraction=0.0), ByteRenderer())
    assert info.value.where == f"{data}:1"  # the file and line, also after the train/test split
