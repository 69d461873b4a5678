"""``tinkerflow rl CONFIG [key=value ...] [--dry-run]``: config resolution, environment checks and errors."""

from __future__ import annotations

import json
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


def test_rl_problems_from_a_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``env=math_boxed`` with ``env_args.data``: the problems of a JSONL file, checked before any work; a bad row
    is named by file and line (and its key), or skipped and counted."""
    monkeypatch.chdir(ROOT)
    data = tmp_path / "problems.jsonl"
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(9)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"problem": "q", "answre": "1"}\n')
    base = ["rl", str(EXAMPLE), "env=math_boxed", f"env_args.data={data}", f"run_dir={tmp_path / 'run'}", "steps=5"]
    assert_cli_refuses(capsys, [*base, "--dry-run"], f"{data}:10.answre")
    out, resolved = cli_dry_run(capsys, [*base, "env_args.bad_rows=skip", "--dry-run"])
    assert resolved["env_args"]["data"] == str(data)
    assert "environment math_boxed: 6 training batches of 4 groups x 8" in out  # 9 problems, 3 batches an epoch
