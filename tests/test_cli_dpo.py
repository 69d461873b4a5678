"""``tinkerflow dpo CONFIG [key=value ...] [--dry-run]``: config resolution, data checks, errors, and a full run."""

from __future__ import annotations

import json
import pathlib

import pytest
from tests.helpers import assert_cli_refuses, cli_dry_run, one_torch_thread, write_jsonl

from tinkerflow.cli import main

ROOT = pathlib.Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "dpo_prefs.json"


def test_dpo_dry_run_resolves_config_and_pairs_the_example_data(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    arguments = ["dpo", str(EXAMPLE), "max_steps=5", "beta=0.2", f"run_dir={tmp_path / 'run'}", "--dry-run"]
    out, resolved = cli_dry_run(capsys, arguments)
    assert (resolved["max_steps"], resolved["beta"], resolved["ties"]) == (5, 0.2, "drop")
    assert "236 training and 32 held-out pairs (0 bad rows skipped, 10 ties dropped)" in out
    assert "renderer smollm2" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["beta=0"], "beta"),
        (["ties=keep"], "ties"),
        (["colour=red"], "colour"),
        (["max_steps"], "key=value"),
        (["test_data=missing.jsonl"], "missing.jsonl"),
    ],
)
def test_dpo_bad_config_or_data_exits_2_naming_it(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert_cli_refuses(capsys, ["dpo", str(EXAMPLE), *arguments, "--dry-run"], message)


def test_dpo_missing_config_file(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_cli_refuses(capsys, ["dpo", str(tmp_path / "nope.json")], "not found")


def test_dpo_command_trains_and_reports_before_and_after(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full ``tinkerflow dpo`` run on the tiny local model (the command takes the tokenizer from the backend; the
    test's byte renderer stands in for the model family's)."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from tests.tiny_model import TINY_RENDERER

    import tinkerflow.render

    monkeypatch.setattr(tinkerflow.render, "renderer_for_model", lambda name, tokenizer: TINY_RENDERER)
    rows = [{"prompt": f"q{i}?", "chosen": "yes!", "rejected": "no"} for i in range(12)]
    data = tmp_path / "prefs.jsonl"
    write_jsonl(data, rows)
    config = {
        "train_data": str(data),
        "test_fraction": 0.25,
        "base_model": "tiny-llama",
        "learning_rate": 0.01,
        "batch_size": 3,
        "epochs": 2,
        "lora_rank": 4,
        "max_length": 64,
        "run_dir": str(tmp_path / "run"),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with one_torch_thread():
        assert main(["dpo", str(tmp_path / "config.json")]) == 0
    out = capsys.readouterr().out
    assert "9 training and 3 held-out pairs" in out
    assert "held-out preference accuracy: before" in out
    assert (tmp_path / "run" / "dpo.html").exists()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 6
