"""``tinkerflow rl CONFIG [key=value ...] [--dry-run]``: config resolution, environment checks and errors."""

from __future__ import annotations

import pathlib

import pytest
from tests.helpers import assert_cli_refuses, cli_dry_run

ROOT = pathlib.Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "rl_arithmetic.json"


def test_rl_dry_run_resolves_the_example(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    arguments = ["rl", str(EXAMPLE), "steps=3", "mode=async", f"run_dir={tmp_path / 'run'}", "--dry-run"]
    out, resolved = cli_dry_run(capsys, arguments)
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
    assert_cli_refuses(capsys, ["rl", str(EXAMPLE), f"run_dir={tmp_path / 'run'}", *arguments, "--dry-run"], message)
