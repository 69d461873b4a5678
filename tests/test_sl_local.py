"""The SL loop on the real local backend (a tiny random-init Llama, byte-level tokens): it learns, and a run
killed mid-way and resumed ends with the same weights and the same metric rows as an uninterrupted run."""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest
from tests.fakes import ByteRenderer

from tinkerflow.config import SLConfig
from tinkerflow.shell.run_dir import MetricsLog

pytest.importorskip("torch")
pytest.importorskip("peft")

from tinkerflow.shell.local import LocalBackend
from tinkerflow.shell.sl import run_sl


def _config(tmp_path: pathlib.Path, name: str) -> SLConfig:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        with open(data, "w") as handle:
            for i in range(24):
                row = {"messages": [{"role": "user", "content": f"n{i}"}, {"role": "assistant", "content": "ok!"}]}
                handle.write(json.dumps(row) + "\n")
    return SLConfig(
        train_data=str(data),
        base_model="tiny-llama",
        run_dir=str(tmp_path / name),
        batch_size=4,
        epochs=2,
        learning_rate=1e-2,
        lora_rank=4,
        eval_every=4,
        save_every=3,
        num_samples_shown=1,
        sample_max_tokens=4,
        max_length=64,
    )


def _params(backend: LocalBackend, run_dir: pathlib.Path) -> dict[str, np.ndarray]:
    state = json.loads((run_dir / "state.json").read_text())
    client = backend.create_training_client_from_state(state["checkpoint"], with_optimizer=True).result()
    return client.get_trainable_parameters().result()  # type: ignore[attr-defined, no-any-return]


class KilledError(Exception):
    pass


def test_sl_on_tiny_model_learns_and_resumes_exactly(tmp_path: pathlib.Path) -> None:
    reference_backend = LocalBackend(checkpoint_dir=tmp_path / "ref" / "checkpoints")
    reference = run_sl(_config(tmp_path, "ref"), reference_backend, ByteRenderer(), out=io.StringIO())
    assert reference.eval_nll_before is not None
    assert reference.eval_nll_after is not None
    assert reference.eval_nll_after < reference.eval_nll_before * 0.7

    def kill(step: int) -> None:
        if step == 6:
            raise KilledError

    config = _config(tmp_path, "killed")
    backend = LocalBackend(checkpoint_dir=tmp_path / "killed" / "checkpoints")
    with pytest.raises(KilledError):
        run_sl(config, backend, ByteRenderer(), out=io.StringIO(), after_step=kill)
    resumed_backend = LocalBackend(checkpoint_dir=tmp_path / "killed" / "checkpoints")  # a fresh process, as it were
    resumed = run_sl(config, resumed_backend, ByteRenderer(), out=io.StringIO())

    ours = _params(resumed_backend, tmp_path / "killed")
    theirs = _params(reference_backend, tmp_path / "ref")
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6, atol=1e-7, err_msg=key)
    rows, reference_rows = (
        MetricsLog.read(tmp_path / "killed" / "metrics.jsonl"),
        MetricsLog.read(tmp_path / "ref" / "metrics.jsonl"),
    )
    assert [row["step"] for row in rows] == [row["step"] for row in reference_rows]
    for row, reference_row in zip(rows, reference_rows, strict=True):
        assert row.keys() == reference_row.keys()
        for key in row:
            assert row[key] == pytest.approx(reference_row[key], rel=1e-5, abs=1e-7), (row["step"], key)
    assert resumed.eval_nll_after == pytest.approx(reference.eval_nll_after, rel=1e-5)
