from __future__ import annotations

import json
import pathlib

import pytest

from tinkerflow.cli import main

ROOT = pathlib.Path(__file__).parents[1]


def test_sl_dry_run_resolves_config_and_renders_data(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["sl", str(ROOT / "examples" / "sl_people_json.json"), "max_steps=5", "--dry-run"])
    out = capsys.readouterr().out
    assert status == 0
    resolved = json.loads(out[out.index("{") : out.index("}\n") + 1])
    assert resolved["max_steps"] == 5
    assert "400 training and 80 held-out conversations" in out
    assert "renderer smollm2" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["max_steps=0"], "max_steps"),
        (["colour=red"], "colour"),
        (["max_steps"], "key=value"),
    ],
)
def test_sl_bad_config_exits_2_with_the_field(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["sl", str(ROOT / "examples" / "sl_people_json.json"), *arguments, "--dry-run"])
    assert status == 2
    assert message in capsys.readouterr().err


def test_missing_config_file(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sl", str(tmp_path / "nope.json")]) == 2
    assert "not found" in capsys.readouterr().err
