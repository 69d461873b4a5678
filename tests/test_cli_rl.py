"""``tinkerflow rl CONFIG [key=value ...] [--dry-run]``: config resolution, environment checks and errors."""

from __future__ import annotations

import json
import pathlib

import pytest

from tinkerflow.cli import main

ROOT = pathlib.Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "rl_arithmetic.json"


def test_rl_dry_run_resolves_the_example(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    status = main(["rl", str(EXAMPLE), "steps=3", "mode=async", f"run_dir={tmp_path / 'run'}", "--dry-run"])
    out = capsys.readouterr().out
    assert status == 0
    resolved = json.loads(out[out.index("{") : out.index("}\n") + 1])
    assert (resolved["steps"], resolved["mode"], resolved["env"]) == (3, "async", "arithmetic")
    assert resolved["env_args"] == {"fewshot": 1}
    assert "environment arithmetic: 3 training batches of 4 groups x 8" in out
    assert "renderer smollm2" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["env=chess"], "RLConfig.env"),
        (["env_args.colour=red"], "RLConfig.env_args"),
        (["env_args.fewshot=9"], "fewshot"),
        (["loss=reinforce"], "loss"),
        (["group_size=0"], "group_size"),
        (["colour=red"], "colour"),
        (["steps"], "key=value"),
    ],
)
def test_rl_bad_config_exits_2_naming_it(
    arguments: list[str], message: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["rl", str(EXAMPLE), f"run_dir={tmp_path / 'run'}", *arguments, "--dry-run"])
    assert status == 2
    assert message in capsys.readouterr().err
