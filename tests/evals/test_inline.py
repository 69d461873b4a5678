"""Inline evaluations in the training loops (the ``evals`` of SL / DPO / RL configs) on the tiny local model:
when they run, what they log, that they see the weights of their step, and that a resumed run logs the same."""

from __future__ import annotations

import io
import json
import pathlib

import pytest
from tests.byte_renderer import ByteRenderer
from tests.helpers import KilledError, chat_row, kill_after, sl_config, write_jsonl

from tinkerflow.errors import ConfigError
from tinkerflow.evals import EvalSpec
from tinkerflow.shell.io.run_dir import MetricsLog

pytest.importorskip("torch")
pytest.importorskip("peft")

from tinkerflow.shell.backends.local.backend import LocalBackend
from tinkerflow.shell.recipes.sl import SLResult, run_sl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EVALS = (
    EvalSpec(name="em", kind="exact_match", max_tokens=5),  # every eval_every (4) steps
    EvalSpec(name="nl", kind="nll", every=3),
    EvalSpec(name="ends", kind="nll", every=0),  # only before and after
)


def _config(tmp_path: pathlib.Path, name: str) -> object:
    return sl_config(
        tmp_path, name, (chat_row(f"n{i}", "ok!") for i in range(24)), base_model="tiny-llama", learning_rate=1e-2,
        lora_rank=4, eval_every=4, save_every=5, num_samples_shown=1, sample_max_tokens=4, evals=EVALS,
    )  # fmt: skip


def _run(config: object, **kwargs: object) -> tuple[SLResult, str]:
    run_dir = pathlib.Path(config.run_dir)  # type: ignore[attr-defined]  # an SLConfig
    out = io.StringIO()
    result = run_sl(config, LocalBackend(checkpoint_dir=run_dir / "checkpoints"), ByteRenderer(), out=out, **kwargs)  # type: ignore[arg-type]
    return result, out.getvalue()


def _eval_rows(run_dir: pathlib.Path) -> dict[int, dict[str, object]]:
    rows = MetricsLog.read(run_dir / "metrics.jsonl")
    return {int(row["step"]): {k: v for k, v in row.items() if "/" in k} for row in rows}  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, SLResult, str]:
    root = tmp_path_factory.mktemp("inline")
    config = _config(root, "ref")
    result, text = _run(config)
    return pathlib.Path(config.run_dir), result, text  # type: ignore[attr-defined]


def test_each_evaluation_runs_at_its_cadence_and_after_training(
    reference: tuple[pathlib.Path, SLResult, str],
) -> None:
    run_dir, result, text = reference
    rows = _eval_rows(run_dir)
    total = 12  # 24 rows, 10% held out -> 22 train / batch 4 -> 6 batches x 2 epochs
    assert max(rows) == total
    assert [step for step, row in rows.items() if "em/exact_match" in row] == [0, 4, 8, 12]
    assert [step for step, row in rows.items() if "nl/nll" in row] == [0, 3, 6, 9, 12]
    assert [step for step, row in rows.items() if "ends/nll" in row] == [0, 12]
    # the last row is the evaluation after training, a row of its own
    assert set(rows[total]) >= {"em/exact_match", "em/stderr", "nl/nll", "ends/nll"}
    assert result.evals_after == pytest.approx({k: v for k, v in rows[total].items()})
    # training lowered the held-out NLL the evaluation measures
    assert rows[total]["nl/nll"] < 0.8 * rows[0]["nl/nll"]  # type: ignore[operator]
    assert "held-out nl (nll) mean NLL: " in text
    assert "held-out em (exact_match) accuracy: 0.000 -> " in text
    # a transcript per evaluation and step, one graded line per held-out example
    em = sorted(path.name for path in (run_dir / "evals" / "em").iterdir())
    assert em == ["step-000000.jsonl", "step-000004.jsonl", "step-000008.jsonl", "step-000012.jsonl"]
    lines = [json.loads(line) for line in (run_dir / "evals" / "em" / "step-000012.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert {line["reference"] for line in lines} == {"ok!"}
    assert (run_dir / "evals.html").is_file()


def test_an_evaluation_sees_the_weights_of_its_step(reference: tuple[pathlib.Path, SLResult, str]) -> None:
    """The NLL the evaluation logged at step 12 equals the NLL of the final checkpoint's sampler, recomputed."""
    from tinkerflow.evals import examples_from_conversations
    from tinkerflow.shell.evals.runner import evaluate
    from tinkerflow.shell.recipes.sl import prepare_sl_data

    run_dir, result, _ = reference
    config = json.loads((run_dir / "config.json").read_text())
    from tinkerflow.config import SLConfig
    from tinkerflow.serde import structure

    sl = structure(config, SLConfig)
    data = prepare_sl_data(sl, ByteRenderer())
    backend = LocalBackend(checkpoint_dir=run_dir / "checkpoints")
    sampler = backend.create_sampling_client(model_path=result.sampler_checkpoint).result()
    spec = EVALS[1]
    again = evaluate(spec, examples_from_conversations(data.test_conversations, spec), sampler, ByteRenderer())
    assert again.result.mean == pytest.approx(_eval_rows(run_dir)[12]["nl/nll"], rel=1e-5)


def test_a_resumed_run_logs_the_same_evaluations(
    tmp_path: pathlib.Path, reference: tuple[pathlib.Path, SLResult, str]
) -> None:
    config = _config(tmp_path, "killed")
    with pytest.raises(KilledError):
        _run(config, after_step=kill_after(6))
    _run(config)
    theirs = _eval_rows(reference[0])
    mine = _eval_rows(pathlib.Path(config.run_dir))  # type: ignore[attr-defined]
    assert mine.keys() == theirs.keys()
    for step in theirs:
        assert mine[step] == pytest.approx(theirs[step], rel=1e-5), step
    # a finished run opened again rewrites its after-training row, once
    _run(config)
    assert [int(row["step"]) for row in MetricsLog.read(pathlib.Path(config.run_dir) / "metrics.jsonl")].count(12) == 1  # type: ignore[attr-defined, call-overload]


def test_bad_evaluation_data_fails_before_training(tmp_path: pathlib.Path) -> None:
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q"}])  # no reference
    config = sl_config(
        tmp_path, "bad", (chat_row(f"n{i}", "ok!") for i in range(8)), base_model="tiny-llama",
        evals=(EvalSpec(name="em", kind="exact_match", data=str(tmp_path / "bad.jsonl")),),
    )  # fmt: skip
    with pytest.raises(Exception, match=r"bad\.jsonl:1.*reference"):
        _run(config)
    assert not (tmp_path / "bad" / "metrics.jsonl").exists() or not MetricsLog.read(tmp_path / "bad" / "metrics.jsonl")


def test_rl_needs_the_renderer_for_its_evaluations(tmp_path: pathlib.Path) -> None:
    from tinkerflow.rl.config import RLConfig
    from tinkerflow.shell.recipes.rl import run_rl

    write_jsonl(tmp_path / "e.jsonl", [{"prompt": "q", "reference": "a"}])
    config = RLConfig(
        env="arithmetic", base_model="tiny-llama", run_dir=str(tmp_path / "rl"), steps=1,
        evals=(EvalSpec(name="em", kind="exact_match", data=str(tmp_path / "e.jsonl")),),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="renderer"):
        run_rl(config, LocalBackend(checkpoint_dir=tmp_path / "c"), [], decode=str)  # type: ignore[arg-type]


def test_dpo_logs_its_evaluations(tmp_path: pathlib.Path) -> None:
    from tinkerflow.preference.config import DPOConfig
    from tinkerflow.shell.recipes.dpo import run_dpo

    pairs = [{"prompt": f"q{i}?", "chosen": "yes!", "rejected": "no"} for i in range(12)]
    write_jsonl(tmp_path / "train.jsonl", pairs)
    write_jsonl(tmp_path / "nll.jsonl", [chat_row(f"held {i}?", "yes!") for i in range(3)])
    config = DPOConfig(
        train_data=str(tmp_path / "train.jsonl"), base_model="tiny-llama", run_dir=str(tmp_path / "dpo"),
        batch_size=4, epochs=2, learning_rate=1e-2, lora_rank=4, eval_every=2, save_every=0, max_length=64,
        evals=(EvalSpec(name="yes", kind="nll", data=str(tmp_path / "nll.jsonl")),),
    )  # fmt: skip
    result = run_dpo(
        config, LocalBackend(checkpoint_dir=tmp_path / "dpo" / "checkpoints"), ByteRenderer(), out=io.StringIO()
    )
    rows = _eval_rows(tmp_path / "dpo")
    steps = [step for step, row in rows.items() if "yes/nll" in row]
    assert steps[0] == 0
    assert steps[-1] == max(rows)
    assert steps == sorted({0, *range(2, max(rows), 2), max(rows)})
    assert result.evals_after["yes/nll"] == rows[max(rows)]["yes/nll"]
