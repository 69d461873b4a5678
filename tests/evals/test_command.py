"""``tinkerflow eval``: the command line over a base model, a trained run directory and a ``--evals`` file."""

from __future__ import annotations

import io
import json
import pathlib

import pytest
from tests.helpers import chat_row, sl_config, write_jsonl

from tinkerflow.cli import main

pytest.importorskip("torch")
pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _examples(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_jsonl(tmp_path / "e.jsonl", [{"id": f"q{i}", "prompt": f"n{i}", "reference": "ok!"} for i in range(3)])


def test_one_evaluation_of_a_base_model_prints_and_writes_results(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _examples(tmp_path)
    status = main([
        "eval", "tiny-llama", "--renderer", "role_colon", "--kind", "nll", "--data", str(data), "--name", "fit",
        "--out", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ck"),
    ])  # fmt: skip
    assert status == 2  # nll needs conversations that end with the answer: refused, naming the row
    assert "e.jsonl:1" in capsys.readouterr().err
    status = main([
        "eval", "tiny-llama", "--renderer", "role_colon", "--kind", "exact_match", "--data", str(data),
        "--max-tokens", "4", "--out", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ck"),
    ])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "exact_match" in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["target"] == "tiny-llama"
    (result,) = results["results"]
    assert (result["name"], result["kind"], result["n"]) == ("exact_match", "exact_match", 3)
    lines = (tmp_path / "out" / "exact_match.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["q0", "q1", "q2"]


def test_a_trained_run_scores_better_than_its_base(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The run directory is the target (its latest weights): a trained model's held-out NLL is lower than the
    base model's on the same data, from the command line's results (trained with the renderer it is evaluated
    with: role_colon over the tiny models' byte vocabulary)."""
    from tests.tiny_model import TINY_RENDERER

    from tinkerflow.shell.backends.local.backend import LocalBackend
    from tinkerflow.shell.recipes.sl import run_sl

    config = sl_config(
        tmp_path, "run", (chat_row(f"n{i}", "ok!") for i in range(24)), base_model="tiny-llama",
        learning_rate=1e-2, lora_rank=4, num_samples_shown=0, eval_every=0, save_every=0,
    )  # fmt: skip
    run_sl(config, LocalBackend(checkpoint_dir=tmp_path / "run" / "checkpoints"), TINY_RENDERER, out=io.StringIO())
    write_jsonl(tmp_path / "held.jsonl", [chat_row(f"m{i}", "ok!") for i in range(4)])
    evals = tmp_path / "evals.json"
    evals.write_text(json.dumps({"evals": [{"name": "fit", "kind": "nll", "data": "held.jsonl"}]}))
    scores = {}
    for target in ("tiny-llama", str(tmp_path / "run")):
        out = tmp_path / ("base" if target == "tiny-llama" else "trained")
        argv = ["eval", target, "--renderer", "role_colon", "--evals", str(evals), "--out", str(out)]
        assert main([*argv, "--checkpoint-dir", str(tmp_path / "ck")]) == 0
        (result,) = json.loads((out / "results.json").read_text())["results"]
        scores[out.name] = result["mean"]
    capsys.readouterr()
    assert scores["trained"] < 0.7 * scores["base"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "tiny-llama"], "exactly one of"),
        (["eval", "tiny-llama", "--kind", "nll", "--benchmark", "arithmetic"], "exactly one of"),
    ],
)
def test_what_to_evaluate_is_given_once(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_a_bad_evals_file_is_refused_by_field(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    evals = tmp_path / "evals.json"
    evals.write_text(json.dumps([{"name": "x", "kind": "regex"}]))
    assert main(["eval", "tiny-llama", "--evals", str(evals)]) == 2
    assert "pattern" in capsys.readouterr().err


def test_a_benchmark_runs_and_resumes_from_its_folder(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "eval", "tiny-llama", "--renderer", "role_colon", "--benchmark", "arithmetic", "--limit", "4",
        "--option", "max_tokens=4", "--option", "fewshot=false", "--out", str(tmp_path / "out"),
        "--checkpoint-dir", str(tmp_path / "ck"), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    lines = (tmp_path / "out" / "arithmetic" / "transcripts.jsonl").read_text().splitlines()
    assert len(lines) == 4
    # remove the last item's line: the rerun plays only that one and reports the same result
    (tmp_path / "out" / "arithmetic" / "transcripts.jsonl").write_text("\n".join(lines[:3]) + "\n")
    capsys.readouterr()
    assert main(argv) == 0
    assert "resumed: 3 items" in capsys.readouterr().err
    again = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    assert again == first
    # another seed is another benchmark run: refused, naming the field
    assert main([*argv, "--seed", "1"]) == 2
    assert "seed" in capsys.readouterr().err
    # a benchmark needs a folder for its transcripts
    assert main(argv[: argv.index("--out")]) == 2
    assert "--out" in capsys.readouterr().err


def test_dry_run_checks_and_names_the_evaluations(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = write_jsonl(tmp_path / "d.jsonl", [chat_row(f"n{i}", "ok!") for i in range(10)])
    base = ["sl", "examples/sl_people_json.json", f"train_data={rows}", "test_data=null", "base_model=tiny-llama",
            "renderer=role_colon", f"run_dir={tmp_path / 'r'}", "--dry-run"]  # fmt: skip
    good = 'evals=[{"name": "em", "kind": "exact_match", "limit": 1}]'
    assert main([*base, good]) == 0
    assert "; evals: em (exact_match, 1 examples)" in capsys.readouterr().out
    bad = 'evals=[{"name": "em", "kind": "exact_match", "data": "missing.jsonl"}]'
    assert main([*base, bad]) == 2
    assert "EvalSpec['em'].data" in capsys.readouterr().err
