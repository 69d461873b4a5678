"""``tinkerflow rlhf CONFIG``: config resolution and errors, and both stages end to end on the tiny local model
through the command line (a rerun reuses the finished judge and reports the finished policy)."""

from __future__ import annotations

import json
import pathlib

import pytest
from tests.helpers import assert_cli_refuses, cli_dry_run

from tinkerflow.cli import main
from tinkerflow.rl.rlhf_config import RLHFConfig

ROOT = pathlib.Path(__file__).parents[1]
PREFS = ROOT / "examples" / "data"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _example(root: pathlib.Path) -> pathlib.Path:
    config = root / "rlhf.json"
    config.write_text(
        json.dumps(
            {
                "comparisons": str(PREFS / "prefs.train.jsonl"),
                "test_comparisons": str(PREFS / "prefs.test.jsonl"),
                "run_dir": str(root / "run"),
            }
        )
    )
    return config


def test_rlhf_dry_run_reads_the_comparisons(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, resolved = cli_dry_run(capsys, ["rlhf", str(_example(tmp_path)), "steps=3", "opponents=2", "--dry-run"])
    assert (resolved["steps"], resolved["opponents"], resolved["group_size"]) == (3, 2, 4)
    train = sum(1 for line in (PREFS / "prefs.train.jsonl").read_text().splitlines() if line.strip())
    assert f"data: {train} training and " in out
    assert "renderer smollm2" in out
    assert not (tmp_path / "run").exists()


def test_rlhf_template_marks_the_comparisons_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rlhf", "--template"]) == 0
    assert json.loads(capsys.readouterr().out)["comparisons"] == "<required: fill in>"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["group_size=1"], "RLHFConfig.group_size"),
        (["rm_batch_size=0"], "RLHFConfig.rm_batch_size"),
        (["rm_learning_rate=-1"], "RLHFConfig.rm_learning_rate"),
        (["opponents=0"], "RLHFConfig.opponents"),
        (["format_coef=-1"], "RLHFConfig.format_coef"),
        (["comparisons=missing.jsonl"], "missing.jsonl"),
        (["prompts=missing.jsonl"], "missing.jsonl"),
        (["stpes=3"], "steps"),
    ],
)
def test_rlhf_bad_config_exits_2_naming_it(
    arguments: list[str], message: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_cli_refuses(capsys, ["rlhf", str(_example(tmp_path)), *arguments, "--dry-run"], message)


def test_stage_configs_share_the_run_settings() -> None:
    config = RLHFConfig(comparisons="c.jsonl", base_model="m", seed=3, rm_max_steps=7, steps=2, run_dir="out")
    judge, policy = config.reward_model_config(), config.policy_config()
    assert (judge.base_model, judge.seed, judge.max_steps, judge.run_dir) == ("m", 3, 7, "out/reward_model")
    assert (policy.base_model, policy.seed, policy.steps, policy.run_dir, policy.env) == (
        "m",
        3,
        2,
        "out/policy",
        "rlhf",
    )


def _rows(prompt: str, chosen: str, rejected: str) -> dict[str, object]:
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected}


def test_rlhf_trains_both_stages_on_the_tiny_model(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = ("fine", "great", "good"), ("bad", "poor", "meh")
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(_rows(f"q{i}", good[i % 3], bad[i % 3])) + "\n" for i in range(8)))
    test.write_text("".join(json.dumps(_rows(f"t{i}", good[i % 3], bad[i % 3])) + "\n" for i in range(2)))
    config = tmp_path / "rlhf.json"
    config.write_text(
        json.dumps(
            {
                "comparisons": str(train), "test_comparisons": str(test), "base_model": "tiny-llama:context=512",
                "renderer": "role_colon", "lora_rank": 4, "rm_batch_size": 8, "rm_max_steps": 2,
                "rm_learning_rate": 0.01, "rm_max_length": 512, "group_size": 2, "groups_per_batch": 2, "steps": 2,
                "learning_rate": 0.01, "max_tokens": 4, "eval_limit": 2, "eval_every": 0, "save_every": 0,
                "run_dir": str(tmp_path / "run"),
            }
        )
    )  # fmt: skip
    assert main(["rlhf", str(config)]) == 0
    out = capsys.readouterr().out
    assert "data: 8 training and 2 held-out comparisons, 8 prompts; renderer role_colon" in out
    assert "judge held-out accuracy: " in out
    assert "policy win rate vs chosen (judged): " in out
    assert (tmp_path / "run" / "reward_model" / "reward_model.json").is_file()
    rows = (tmp_path / "run" / "policy" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["step"] for row in rows] == [0, 1]
    assert all(0.0 <= json.loads(row)["reward/mean"] <= 1.0 for row in rows)

    assert main(["rlhf", str(config)]) == 0  # a rerun: the judge is reused, the policy run is finished
    assert "(reused)" in capsys.readouterr().out
    assert len((tmp_path / "run" / "policy" / "metrics.jsonl").read_text().splitlines()) == 2
