"""``tinkerflow distill CONFIG``: config resolution and errors, and on-policy distillation end to end on the tiny
local models (student ``tiny-llama``, teacher another seed of it, then a teacher given as a run directory); a
teacher with another tokenizer is refused before training; the KL reference of ``tinkerflow rl`` chosen by
``kl_reference``."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import attrs
import pytest
from tests.helpers import assert_cli_refuses, cli_dry_run

from tinkerflow.cli import main
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.recipes.onpolicy_distill import SUMMARY_FILE, DistillResult, kl_rows

ROOT = pathlib.Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "distill" / "people_json.json"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_distill_dry_run_resolves_the_example(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    arguments = ["distill", str(EXAMPLE), "steps=3", f"run_dir={tmp_path / 'run'}", "--dry-run"]
    out, resolved = cli_dry_run(capsys, arguments)
    assert (resolved["steps"], resolved["teacher_checkpoint"], resolved["kl_coef"]) == (3, "runs/people_json", 1.0)
    assert "data: 400 training and 80 held-out prompts; teacher runs/people_json; renderer smollm2" in out
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_distill_template_marks_the_prompts_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["distill", "--template"]) == 0
    template = json.loads(capsys.readouterr().out)
    assert template["prompts"] == "<required: fill in>"
    assert (template["teacher_model"], template["teacher_checkpoint"], template["kl_coef"]) == (None, None, 1.0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["teacher_model=tiny-llama"], "DistillConfig.teacher_checkpoint: is set together with teacher_model"),
        (["teacher_checkpoint=null"], "DistillConfig.teacher_model: is missing"),
        (["env=arithmetic"], "DistillConfig.env"),
        (["kl_coef=0"], "DistillConfig.kl_coef"),
        (["group_size=0"], "DistillConfig.group_size"),
        (["loss=reinforce"], "DistillConfig.loss"),
        (["prompts=missing.jsonl"], "missing.jsonl"),
        (["techer_model=x"], "teacher_model"),
    ],
)
def test_distill_bad_config_exits_2_naming_it(
    arguments: list[str],
    message: str,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    assert_cli_refuses(
        capsys, ["distill", str(EXAMPLE), f"run_dir={tmp_path / 'run'}", *arguments, "--dry-run"], message
    )


def test_a_prompt_row_without_a_question_is_named(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "p.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    config = _tiny_config(tmp_path, prompts=str(rows))
    assert_cli_refuses(capsys, ["distill", str(config), "--dry-run"], f"DistillConfig.prompts: {rows}: row 1")


def _tiny_config(root: pathlib.Path, **changes: object) -> pathlib.Path:
    prompts = root / "prompts.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"count to {i}"}, {"role": "assistant", "content": "1 2 3"}]}
        for i in range(6)
    ]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {
        "teacher_model": "tiny-llama:seed=1",
        "prompts": str(prompts),
        "test_prompts": str(prompts),
        "base_model": "tiny-llama",
        "renderer": "role_colon",
        "steps": 3,
        "groups_per_batch": 2,
        "group_size": 2,
        "max_tokens": 5,
        "learning_rate": 0.01,
        "lora_rank": 4,
        "eval_every": 2,
        "eval_groups": 2,
        "save_every": 2,
        "run_dir": str(root / "run"),
        **changes,
    }
    path = root / f"distill-{len(list(root.glob('distill-*.json')))}.json"
    path.write_text(json.dumps(config))
    return path


def _rows(run_dir: pathlib.Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_distill_trains_a_tiny_student_from_a_teacher(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three steps: every row logs ``teacher_kl``, the held-out KL is measured before and after, and the run
    directory holds the KL chart. A second run distills from the first run's directory as the teacher."""
    assert main(["distill", str(_tiny_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "on-policy distillation of tiny-llama from the model tiny-llama:seed=1" in out
    assert "held-out per-token reverse KL to the teacher: before " in out
    rows = _rows(tmp_path / "run")
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert all(isinstance(row["teacher_kl"], float) for row in rows)
    assert all(row["reward/mean"] == 0.0 for row in rows)  # prompt environments give no reward
    assert {"eval_reward_mean"} <= set(rows[0])
    assert {"eval_reward_mean"} <= set(rows[2])
    assert "teacher_kl" in (tmp_path / "run" / "teacher_kl.html").read_text()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["kl_reference_model"] == "tiny-llama:seed=1"
    assert config["kl_mode"] == "distillation"
    summary = from_json((tmp_path / "run" / SUMMARY_FILE).read_bytes(), DistillResult)
    assert summary.held_out_kl_before is not None
    assert summary.held_out_kl_after is not None
    assert summary.held_out_kl_before == pytest.approx(-float(rows[0]["eval_reward_mean"]))  # type: ignore[arg-type]  # a float
    kl_points = [row for row in kl_rows(str(tmp_path / "run"), summary, 3) if "held_out_teacher_kl" in row]
    assert [row["step"] for row in kl_points] == [0, 2, 3]  # before, at eval_every, after
    chart = tmp_path / "kl.png"
    spec = importlib.util.spec_from_file_location("distill_chart", ROOT / "examples" / "distill" / "chart.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(tmp_path / "run"), str(chart))
    assert chart.read_bytes().startswith(b"\x89PNG")

    second = _tiny_config(
        tmp_path, teacher_model=None, teacher_checkpoint=str(tmp_path / "run"), run_dir=str(tmp_path / "run2"), steps=1
    )
    assert main(["distill", str(second)]) == 0
    assert f"from the checkpoint {tmp_path / 'run'}" in capsys.readouterr().out
    assert [row["step"] for row in _rows(tmp_path / "run2")] == [0]


def test_a_teacher_with_another_tokenizer_is_refused(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _tiny_config(tmp_path, teacher_model="tiny-llama:vocab=400")
    assert_cli_refuses(capsys, ["distill", str(config)], "RLConfig.kl_reference_model: the KL reference model")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["kl_reference=base"], "against the base model tiny-llama"),
        (["kl_reference=model", "kl_reference_model=tiny-llama:seed=1"], "against the model tiny-llama:seed=1"),
    ],
)
def test_rl_kl_penalty_against_a_chosen_reference(
    overrides: list[str], said: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "rl.json"
    config.write_text(
        json.dumps(
            {
                "env": "arithmetic", "env_args": {"fewshot": False}, "base_model": "tiny-llama",
                "renderer": "role_colon", "steps": 2, "groups_per_batch": 1, "group_size": 2, "max_tokens": 4,
                "eval_groups": 0, "kl_coef": 0.1,
                "run_dir": str(tmp_path / "run"),
            }
        )
    )  # fmt: skip
    assert main(["rl", str(config), *overrides]) == 0
    assert said in capsys.readouterr().out
    rows = _rows(tmp_path / "run")
    assert all(isinstance(row["kl_policy_base"], float) for row in rows)


@pytest.mark.parametrize(
    ("name", "filled"),
    [("distill", {"prompts": "p.jsonl", "teacher_model": "m"}), ("rlhf", {"comparisons": "c.jsonl"})],
)
def test_help_and_template_cover_every_field(
    name: str, filled: dict[str, str], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tinkerflow.rl.distill_config import DistillConfig
    from tinkerflow.rl.rlhf_config import RLHFConfig

    cls: type = DistillConfig if name == "distill" else RLHFConfig
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for field in attrs.fields(cls):
        assert f"\n  {field.name} (" in text, field.name
    assert main([name, "--template"]) == 0
    template = json.loads(capsys.readouterr().out)
    assert list(template) == [field.name for field in attrs.fields(cls)]
    file = tmp_path / "config.json"
    file.write_text(json.dumps(template))
    overrides = [f"{key}={value}" for key, value in filled.items()]
    assert main([name, str(file), "--template", *overrides]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(to_json(cls(**filled)))
