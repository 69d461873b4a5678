"""Optional metrics sinks through the SL loop (fake backend): TensorBoard event files read back with
TensorBoard's own EventAccumulator, and a W&B run in offline mode read back from its ``.wandb`` log; a missing
package is a ConfigError naming it, before anything runs."""

from __future__ import annotations

import glob
import io
import json
import math
import pathlib
import struct
import sys
from collections.abc import Iterator, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.byte_renderer import ByteRenderer
from tests.fakes import FakeBackend
from tests.helpers import KilledError, chat_row, kill_after, sl_config

from tinkerflow.cli import main
from tinkerflow.config import SLConfig
from tinkerflow.errors import ConfigError
from tinkerflow.shell.io.run_dir import MetricsLog
from tinkerflow.shell.io.sinks import TensorBoardSink, check_sinks, make_sinks, numeric_metrics
from tinkerflow.shell.recipes.sl import run_sl


def _config(tmp_path: pathlib.Path, name: str, **overrides: object) -> SLConfig:
    rows = (chat_row(f"q{i}?", "yes") for i in range(24))
    return sl_config(tmp_path, name, rows, num_samples_shown=1, **overrides)


@given(
    st.dictionaries(
        st.text(max_size=5),
        st.one_of(st.none(), st.text(max_size=3), st.booleans(), st.integers(-(2**40), 2**40), st.floats()),
    )
)
def test_numeric_metrics_keeps_numbers_only(row: dict[str, float | int | str | None]) -> None:
    kept = numeric_metrics(row)
    assert set(kept) == {k for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key, value in kept.items():
        assert isinstance(value, float)
        original = row[key]
        assert isinstance(original, (int, float))
        assert (math.isnan(value) and math.isnan(original)) or value == float(original)


# -- missing packages --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sink", ["wandb", "tensorboard"])
def test_missing_package_is_a_config_error_before_anything_runs(
    sink: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, sink, None)  # as if not installed: find_spec is None, import fails
    with pytest.raises(ConfigError, match=f"pip install {sink}") as info:
        check_sinks(["tensorboard", "wandb"])
    assert info.value.field == f"log_to[{['tensorboard', 'wandb'].index(sink)}]"
    with pytest.raises(ConfigError, match=f"'{sink}' package"):
        make_sinks([sink], tmp_path, {})  # type: ignore[list-item]
    config = _config(tmp_path, "run", log_to=[sink])
    with pytest.raises(ConfigError, match=f"pip install {sink}"):
        run_sl(config, FakeBackend(), ByteRenderer(), out=io.StringIO())
    assert not (tmp_path / "run").exists()  # nothing was started
    # the command checks before loading a tokenizer or data (the model name here could not even be loaded)
    file = tmp_path / "config.json"
    file.write_text(json.dumps({"train_data": "nowhere.jsonl", "base_model": "no/such-model"}))
    assert main(["sl", str(file), f"log_to={sink}", "--dry-run"]) == 2
    assert f"pip install {sink}" in capsys.readouterr().err


def test_unknown_sink_name() -> None:
    with pytest.raises(ConfigError, match="unknown sink"):
        check_sinks(["mlflow"])


# -- TensorBoard -------------------------------------------------------------------------------------------------


def _tensorboard_scalars(log_dir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def _expected(rows: list[dict[str, object]]) -> dict[str, list[tuple[int, float]]]:
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                step = row["step"]
                assert isinstance(step, int)
                expected.setdefault(key, []).append((step, float(value)))
    return expected


def _assert_scalars_match(
    scalars: dict[str, list[tuple[int, float]]], expected: dict[str, list[tuple[int, float]]]
) -> None:
    assert scalars.keys() == expected.keys()
    for tag, points in expected.items():
        assert [step for step, _ in scalars[tag]] == [step for step, _ in points], tag
        for (_, got), (_, want) in zip(scalars[tag], points, strict=True):
            assert got == pytest.approx(want, rel=1e-6), tag  # event files hold float32


def test_tensorboard_sink_writes_the_metrics_rows(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tensorboard")
    config = _config(tmp_path, "run", log_to=["tensorboard"])
    run_sl(config, FakeBackend(), ByteRenderer(), out=io.StringIO())
    rows = MetricsLog.read(tmp_path / "run" / "metrics.jsonl")
    expected = _expected(rows)
    assert {"train_nll", "loss_sum", "lr", "tokens", "skipped_rows", "eval_nll", "eval_bits_per_byte"} <= set(expected)
    assert len(expected["train_nll"]) == 12
    _assert_scalars_match(_tensorboard_scalars(tmp_path / "run" / "tensorboard"), expected)


def test_tensorboard_after_kill_and_resume_shows_each_step_once(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tensorboard")
    run_sl(_config(tmp_path, "ref"), FakeBackend(), ByteRenderer(), out=io.StringIO(), sinks=())
    config = _config(tmp_path, "killed", log_to=["tensorboard"])
    backend = FakeBackend()
    with pytest.raises(KilledError):
        run_sl(config, backend, ByteRenderer(), out=io.StringIO(), after_step=kill_after(6))  # resumes at step 4
    run_sl(config, backend, ByteRenderer(), out=io.StringIO())
    assert len(list((tmp_path / "killed" / "tensorboard").iterdir())) == 2  # one event file per process
    expected = _expected(MetricsLog.read(tmp_path / "ref" / "metrics.jsonl"))
    _assert_scalars_match(_tensorboard_scalars(tmp_path / "killed" / "tensorboard"), expected)


def test_tensorboard_sink_writes_nothing_until_it_logs(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tensorboard")
    sink = TensorBoardSink(tmp_path / "tb")
    sink.close()
    assert not (tmp_path / "tb").exists()
    sink = TensorBoardSink(tmp_path / "tb")
    sink.log(3, {"loss": 1.5, "note": "text", "missing": None})
    sink.close()
    assert _tensorboard_scalars(tmp_path / "tb") == {"loss": [(3, 1.5)]}


# -- W&B (offline) -----------------------------------------------------------------------------------------------


def _wandb_records(path: str) -> Iterator[object]:
    """The protobuf records of a ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of CRC/length/type chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = pathlib.Path(path).read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _wandb_run(run_dir: pathlib.Path) -> tuple[str, dict[str, object], dict[int, dict[str, float]]]:
    """(run id, config, history by step) of every offline run W&B wrote under ``run_dir``."""
    run_id, config, history = "", {}, {}
    files = sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert files
    for file in files:
        for record in _wandb_records(file):
            kind = record.WhichOneof("record_type")  # type: ignore[attr-defined]
            if kind == "run":
                run_id = record.run.run_id  # type: ignore[attr-defined]
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})  # type: ignore[attr-defined]
            elif kind == "history":
                items = {
                    ".".join(item.nested_key) or item.key: json.loads(item.value_json)
                    for item in record.history.item  # type: ignore[attr-defined]
                }  # type: ignore[attr-defined]
                step = items.pop("_step")
                history.setdefault(step, {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    return run_id, config, history


@pytest.fixture
def wandb_offline(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_CONSOLE", raising=False)
    for variable, folder in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / folder))


@pytest.mark.usefixtures("wandb_offline")
def test_wandb_offline_run_holds_config_and_rows_and_resumes_by_id(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "run", log_to=["wandb", "tensorboard"])
    backend = FakeBackend()
    with pytest.raises(KilledError):
        run_sl(config, backend, ByteRenderer(), out=io.StringIO(), after_step=kill_after(6))  # resumes at step 4
    run_sl(config, backend, ByteRenderer(), out=io.StringIO())
    run_dir = tmp_path / "run"
    run_id, logged_config, history = _wandb_run(run_dir)
    assert run_id == (run_dir / "wandb_id.txt").read_text().strip()
    assert len(glob.glob(str(run_dir / "wandb" / "offline-run-*"))) == 2  # the same run id, once per process
    assert logged_config["batch_size"] == 4
    assert logged_config["log_to"] == ["wandb", "tensorboard"]
    assert logged_config["lr_schedule"] == {"kind": "linear", "warmup_steps": 0, "final_ratio": 0.1}
    rows = MetricsLog.read(run_dir / "metrics.jsonl")
    assert sorted(history) == [row["step"] for row in rows] == list(range(12))
    for row in rows:
        step = row["step"]
        assert isinstance(step, int)
        assert history[step] == {key: value for key, value in row.items() if key != "step"}
    assert (run_dir / "tensorboard").is_dir()  # both sinks at once


class RecordingSink:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, object]]] = []
        self.closed = 0

    def log(self, step: int, row: Mapping[str, float | int | str | None]) -> None:
        self.rows.append((step, dict(row)))

    def close(self) -> None:
        self.closed += 1


def test_given_sinks_get_every_row_and_are_closed_even_when_the_run_dies(tmp_path: pathlib.Path) -> None:
    sink = RecordingSink()
    config = _config(tmp_path, "run", log_to=["tensorboard"])  # sinks= given: the config's list is not used
    with pytest.raises(KilledError):
        run_sl(config, FakeBackend(), ByteRenderer(), out=io.StringIO(), after_step=kill_after(2), sinks=[sink])
    assert sink.closed == 1
    assert not (tmp_path / "run" / "tensorboard").exists()
    rows = MetricsLog.read(tmp_path / "run" / "metrics.jsonl")
    assert sink.rows == [(row["step"], {k: v for k, v in row.items() if k != "step"}) for row in rows]
    assert [step for step, _ in sink.rows] == [0, 1, 2]

    class Broken(FakeBackend):
        def create_lora_training_client(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def, override]
            raise RuntimeError("backend down")

    other = RecordingSink()
    with pytest.raises(RuntimeError, match="backend down"):
        run_sl(_config(tmp_path, "other"), Broken(), ByteRenderer(), out=io.StringIO(), sinks=[other])
    assert other.closed == 1  # closed although the run died before its first step


def test_sinks_do_not_import_the_run_module() -> None:
    """The MetricsSink protocol lives with the sinks: run.py imports sinks.py, never the reverse (no cycle)."""
    import subprocess

    code = "import sys, tinkerflow.shell.io.sinks; assert 'tinkerflow.shell.io.run' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
