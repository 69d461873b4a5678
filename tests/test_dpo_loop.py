"""The DPO loop (tinkerflow.shell.recipes.dpo) on the real local backend (a tiny random-init Llama, byte-level tokens)
and its config: it learns a trivially separable preference; its torch loss and gradient equal the numpy core's
(directly, and as the gradient the backend applies); a run killed mid-way, or inside a checkpoint write, resumes
to the same weights and metric rows; ties, odd last batches, bad rows and every config field behave as stated."""

from __future__ import annotations

import inspect
import io
import json
import math
import pathlib
from collections.abc import Mapping, Sequence

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import KilledError, kill_after, write_jsonl

from tinkerflow.chat_format import ChatFormatError
from tinkerflow.config import apply_overrides
from tinkerflow.datum import Datum
from tinkerflow.errors import TinkerflowError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.preference import TieError, dpo_loss, dpo_token_gradients, sequence_logprobs
from tinkerflow.preference.config import DPOConfig
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.io.run_dir import MetricsLog, RunDirError, read_state

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.tiny_model import TINY_RENDERER as RENDERER  # noqa: E402
from tests.tiny_model import (  # noqa: E402
    assert_same_params,
    assert_same_rows,
    keep_what_a_kill_leaves,
    kill_before_state_json,
    kill_writing_checkpoint_meta,
    trained_params,
)

import tinkerflow.shell.recipes.dpo as dpo_module  # noqa: E402
from tinkerflow.rows import DataError  # noqa: E402
from tinkerflow.shell.backends.local.backend import LocalBackend  # noqa: E402
from tinkerflow.shell.recipes.dpo import (  # noqa: E402
    REFERENCE_FILE,
    DPOResult,
    dpo_loss_fn,
    dpo_train_pipeline,
    prepare_dpo_data,
    run_dpo,
)

LOG2 = math.log(2.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_rows(count: int = 22) -> list[dict[str, object]]:
    """A trivially separable preference (always "yes!" over "no"), in three layouts, plus one tie."""
    rows: list[dict[str, object]] = []
    for i in range(count):
        prompt = f"q{i}?"
        if i % 3 == 0:
            rows.append({"prompt": prompt, "chosen": "yes!", "rejected": "no"})
        elif i % 3 == 1:
            rows.append({"prompt": prompt, "completion_a": "no", "completion_b": "yes!", "label": "b"})
        else:
            rows.append(
                {
                    "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "yes!"}],
                    "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "no"}],
                }
            )
    rows.insert(5, {"prompt": "tie?", "completion_a": "yes!", "completion_b": "no", "label": "tie"})
    return rows


def _config(tmp_path: pathlib.Path, name: str, **overrides: object) -> DPOConfig:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    if not train.exists():
        write_jsonl(train, _train_rows())
        write_jsonl(test, [{"prompt": f"held out {i}?", "chosen": "yes!", "rejected": "no"} for i in range(6)])
    values: dict[str, object] = {
        "train_data": str(train),
        "test_data": str(test),
        "base_model": "tiny-llama",
        "run_dir": str(tmp_path / name),
        "ties": "drop",
        "batch_size": 4,
        "epochs": 2,
        "learning_rate": 1e-2,
        "lora_rank": 4,
        "eval_every": 4,
        "save_every": 3,
        "max_length": 64,
    }
    values.update(overrides)
    return DPOConfig(**values)  # type: ignore[arg-type]


def _backend(run_dir: pathlib.Path, **kwargs: object) -> LocalBackend:
    return LocalBackend(checkpoint_dir=run_dir / "checkpoints", device="cpu", **kwargs)  # type: ignore[arg-type]


Reference = tuple[dict[str, np.ndarray], list[dict[str, object]], DPOResult]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The uninterrupted run every resumed run is compared with (trained once per module)."""
    root = tmp_path_factory.mktemp("reference")
    backend = _backend(root / "ref")
    result = run_dpo(_config(root, "ref"), backend, RENDERER, out=io.StringIO())
    return trained_params(backend, root / "ref"), MetricsLog.read(root / "ref" / "metrics.jsonl"), result


# -- learning ------------------------------------------------------------------------------------------------------


def test_dpo_on_tiny_model_learns_the_preference(reference: Reference) -> None:
    _, rows, result = reference
    before, after = result.eval_before, result.eval_after
    assert before is not None
    assert after is not None
    # the policy starts as the reference: every margin is 0, so the loss is exactly log 2 and no pair is "won"
    assert before.dpo_loss == pytest.approx(LOG2, abs=1e-12)
    assert (before.accuracy, before.margin) == (0.0, 0.0)
    assert rows[0]["dpo_loss"] == pytest.approx(LOG2, abs=1e-12)
    assert after.dpo_loss < 0.5 * LOG2
    assert after.accuracy == 1.0 > before.accuracy
    assert after.policy_accuracy == 1.0
    assert after.margin > 0
    assert (result.train_pairs, result.test_pairs, result.dropped_ties, result.steps) == (22, 6, 1, 12)
    assert [row["step"] for row in rows] == list(range(12))
    assert all(row["dropped_ties"] == 1 and row["skipped_rows"] == 0 for row in rows)
    assert [step for step, row in enumerate(rows) if "eval_dpo_loss" in row] == [0, 4, 8]
    assert rows[0]["eval_dpo_loss"] == before.dpo_loss
    assert rows[8]["eval_dpo_loss"] < rows[4]["eval_dpo_loss"] < LOG2  # type: ignore[operator]
    chart = pathlib.Path(result.chart).read_text()
    assert all(f'id="series-{index}"' in chart for index in range(3))
    assert pathlib.Path(result.chart).parent.joinpath(REFERENCE_FILE).exists()


def test_odd_last_batch_is_whole_pairs_and_smaller(tmp_path: pathlib.Path, reference: Reference) -> None:
    """22 pairs in batches of 4: five batches of 4 pairs and one of 2 per epoch; each pair once per epoch."""
    _, rows, _ = reference
    assert [row["pairs"] for row in rows] == [4, 4, 4, 4, 4, 2] * 2
    config = _config(tmp_path, "pipeline")
    data = prepare_dpo_data(config, RENDERER)
    batches = list(dpo_train_pipeline(data, config))
    assert [len(batch) for batch in batches] == [4, 4, 4, 4, 4, 2] * 2
    for epoch in (batches[:6], batches[6:]):
        assert sorted(index for batch in epoch for index in batch) == list(range(22))
    assert batches[:6] != batches[6:]  # a fresh shuffle per epoch


def test_every_step_sends_interleaved_pairs(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss sees (chosen_0, rejected_0, chosen_1, ...): each chosen/rejected couple shares its prompt."""
    seen: list[Sequence[Datum]] = []
    real = dpo_module.dpo_loss_fn

    def spy(*args: object, **kwargs: object) -> object:
        inner = real(*args, **kwargs)  # type: ignore[arg-type]

        def loss(data: Sequence[Datum], logprobs: Sequence[object]) -> object:
            seen.append(data)
            return inner(data, logprobs)  # type: ignore[arg-type]

        return loss

    monkeypatch.setattr(dpo_module, "dpo_loss_fn", spy)
    config = _config(tmp_path, "spy", epochs=1, eval_every=0, save_every=0)
    run_dpo(config, _backend(tmp_path / "spy"), RENDERER, out=io.StringIO())
    assert [len(data) for data in seen] == [8, 8, 8, 8, 8, 4]
    for data in seen:
        for chosen, rejected in zip(data[0::2], data[1::2], strict=True):
            text_c = RENDERER.tokenizer.decode(chosen.model_input.to_tokens())
            text_r = RENDERER.tokenizer.decode(rejected.model_input.to_tokens())
            assert text_c.split("Assistant:")[0] == text_r.split("Assistant:")[0]
            assert "yes!" in text_c
            assert "no" in text_r.split("Assistant:")[1]


# -- the loss: torch closure == numpy core -------------------------------------------------------------------------


@settings(max_examples=25)
@given(
    lengths=st.lists(st.integers(1, 7), min_size=2, max_size=8).filter(lambda xs: len(xs) % 2 == 0),
    beta=st.floats(0.01, 2.0),
    seed=st.integers(0, 2**31),
)
def test_torch_closure_equals_numpy_core(lengths: list[int], beta: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = [
        Datum(
            model_input=_tokens(rng, length),
            target_tokens_T=rng.integers(0, 256, length),
            weights_T=(rng.random(length) < 0.7).astype(np.float32),
        )
        for length in lengths
    ]
    logprobs = [(-rng.exponential(2.0, length)).astype(np.float32) for length in lengths]
    ref_c, ref_r = rng.normal(-8, 3, len(lengths) // 2), rng.normal(-8, 3, len(lengths) // 2)
    reported: list[Mapping[str, float]] = []
    leaves = [torch.tensor(lp, requires_grad=True) for lp in logprobs]
    loss, metrics = dpo_loss_fn(ref_c, ref_r, beta, report=reported.append)(data, leaves)
    loss.backward()

    weights = [datum.weights_T for datum in data]
    sequences = sequence_logprobs(logprobs, weights)
    expected = dpo_loss(sequences[0::2], sequences[1::2], ref_c, ref_r, beta)
    assert float(loss.detach()) == pytest.approx(expected.loss, rel=1e-12, abs=1e-15)
    assert {key: metrics[key] for key in expected.metrics.as_dict()} == pytest.approx(
        expected.metrics.as_dict(), rel=1e-12, abs=1e-15
    )
    assert reported == [metrics]
    grads_c, grads_r = dpo_token_gradients(expected, weights[0::2], weights[1::2])
    expected_grads = [grad for pair in zip(grads_c, grads_r, strict=True) for grad in pair]
    for leaf, grad in zip(leaves, expected_grads, strict=True):
        assert leaf.grad is not None
        np.testing.assert_allclose(leaf.grad.numpy(), grad, rtol=1e-6, atol=1e-12)


def _tokens(rng: np.random.Generator, length: int) -> ModelInput:
    return ModelInput.from_tokens(rng.integers(0, 256, length))


def test_loss_fn_rejects_a_batch_that_is_not_whole_pairs() -> None:
    data = [Datum(model_input=_tokens(np.random.default_rng(0), 3), target_tokens_T=[1, 2, 3], weights_T=[1, 1, 1])]
    with pytest.raises(ValidationError, match="pairs"):
        dpo_loss_fn([0.0], [0.0], 0.1)(data * 3, [torch.zeros(3, requires_grad=True)] * 3)


def test_backend_applies_the_numpy_core_gradient(tmp_path: pathlib.Path) -> None:
    """forward_backward_custom with the DPO closure accumulates exactly the gradient of the numpy core's loss: the
    same as a cross-entropy with weights -dloss/dlogprob from dpo_token_gradients, and the directional derivative
    of dpo_loss (computed from forward passes, no autograd) by finite differences."""
    config = _config(tmp_path, "grad")
    pairs = prepare_dpo_data(config, RENDERER).train
    data = list(pairs.interleaved()[:6])  # three pairs
    rng = np.random.default_rng(3)
    ref_c, ref_r = rng.normal(-30, 2, 3), rng.normal(-30, 2, 3)
    beta = 0.5
    with LocalBackend(checkpoint_dir=tmp_path / "ck", device="cpu", dtype=torch.float64) as backend:
        custom = backend.create_lora_training_client("tiny-llama", rank=2, seed=0).result()
        linear = backend.create_lora_training_client("tiny-llama", rank=2, seed=0).result()
        params = {
            name: 0.05 * rng.normal(size=v.shape) for name, v in custom.get_trainable_parameters().result().items()
        }
        custom.set_trainable_parameters(params).result()
        linear.set_trainable_parameters(params).result()

        def numpy_loss() -> float:
            # per-datum float64 sequence logprobs: the weighted cross-entropy of one datum is -sum_t w_t lp_t
            sequences = np.array([-custom.forward([d], "cross_entropy").result().loss for d in data])
            return dpo_loss(sequences[0::2], sequences[1::2], ref_c, ref_r, beta).loss

        output = custom.forward_backward_custom(data, dpo_loss_fn(ref_c, ref_r, beta)).result()
        assert output.metrics["dpo_loss"] == pytest.approx(numpy_loss(), rel=1e-9)
        grads = custom.get_gradients().result()

        sequences = np.array([-linear.forward([d], "cross_entropy").result().loss for d in data])
        core = dpo_loss(sequences[0::2], sequences[1::2], ref_c, ref_r, beta)
        token_c, token_r = dpo_token_gradients(
            core, [d.weights_T for d in data[0::2]], [d.weights_T for d in data[1::2]]
        )
        token = [grad for pair in zip(token_c, token_r, strict=True) for grad in pair]
        surrogate = [attrs.evolve(d, weights_T=-g) for d, g in zip(data, token, strict=True)]
        linear.forward_backward(surrogate, "cross_entropy").result()
        expected = linear.get_gradients().result()
        scale = max(float(np.abs(grad).max()) for grad in expected.values())
        for name in grads:
            # the surrogate's weights are float32 (a Datum's): agreement to float32 rounding
            np.testing.assert_allclose(grads[name], expected[name], rtol=1e-6, atol=1e-6 * scale, err_msg=name)

        direction = {name: rng.normal(size=v.shape) for name, v in params.items()}
        directional = sum(float(np.sum(grads[name] * direction[name])) for name in grads)

        def at(eps: float) -> float:
            custom.set_trainable_parameters({n: params[n] + eps * direction[n] for n in params}).result()
            return numpy_loss()

        h = 4e-4
        central = [(at(s) - at(-s)) / (2 * s) for s in (h, h / 2)]
        assert directional == pytest.approx((4 * central[1] - central[0]) / 3, rel=5e-4)


# -- resume --------------------------------------------------------------------------------------------------------


def _assert_same_run(run_dir: pathlib.Path, backend: LocalBackend, reference: Reference, result: DPOResult) -> None:
    reference_params, reference_rows, reference_result = reference
    assert_same_params(trained_params(backend, run_dir), reference_params)
    assert_same_rows(MetricsLog.read(run_dir / "metrics.jsonl"), reference_rows)
    assert result.eval_after is not None
    assert reference_result.eval_after is not None
    assert result.eval_after.dpo_loss == pytest.approx(reference_result.eval_after.dpo_loss, rel=1e-5)
    assert result.eval_before == reference_result.eval_before  # read back from the log after a resume


@pytest.mark.parametrize("kill_at", [1, 6])
def test_killed_run_resumes_exactly(tmp_path: pathlib.Path, reference: Reference, kill_at: int) -> None:
    """Killed after step 1 (before the first checkpoint: a fresh start) or step 6 (resumed from step 6)."""
    config = _config(tmp_path, "killed")
    with pytest.raises(KilledError):
        run_dpo(config, _backend(tmp_path / "killed"), RENDERER, out=io.StringIO(), after_step=kill_after(kill_at))
    state = read_state(tmp_path / "killed")
    assert (state.step if state is not None else None) == (6 if kill_at == 6 else None)
    backend = _backend(tmp_path / "killed")  # a fresh process, as it were
    out = io.StringIO()
    result = run_dpo(config, backend, RENDERER, out=out)
    assert ("resuming at step 6" in out.getvalue()) == (kill_at == 6)
    _assert_same_run(tmp_path / "killed", backend, reference, result)

    # a finished run run again: nothing is trained or logged again
    rows = MetricsLog.read(tmp_path / "killed" / "metrics.jsonl")
    again = run_dpo(config, _backend(tmp_path / "killed"), RENDERER, out=io.StringIO())
    assert MetricsLog.read(tmp_path / "killed" / "metrics.jsonl") == rows
    assert (again.eval_before, again.eval_after) == (result.eval_before, result.eval_after)


@pytest.mark.parametrize("moment", ["checkpoint files half written", "checkpoint durable, state.json not written"])
def test_kill_during_a_checkpoint_resumes_exactly(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, reference: Reference, moment: str
) -> None:
    killing = [True]
    if moment == "checkpoint files half written":
        kill_writing_checkpoint_meta(monkeypatch, killing)
    else:
        kill_before_state_json(monkeypatch, killing)
    keep_what_a_kill_leaves(monkeypatch, killing)
    config = _config(tmp_path, "killed")
    with pytest.raises(KilledError):
        run_dpo(config, _backend(tmp_path / "killed"), RENDERER, out=io.StringIO())
    killing[0] = False
    state = read_state(tmp_path / "killed")
    assert state is not None
    assert state.step == 3
    assert [row["step"] for row in MetricsLog.read(tmp_path / "killed" / "metrics.jsonl")] == list(range(6))
    backend = _backend(tmp_path / "killed")
    result = run_dpo(config, backend, RENDERER, out=io.StringIO())
    _assert_same_run(tmp_path / "killed", backend, reference, result)


def test_resume_refuses_missing_or_foreign_reference_logprobs(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "run", max_steps=6, eval_every=0)
    with pytest.raises(KilledError):
        run_dpo(config, _backend(tmp_path / "run"), RENDERER, out=io.StringIO(), after_step=kill_after(3))
    reference_file = tmp_path / "run" / REFERENCE_FILE
    stored = reference_file.read_text()
    reference_file.unlink()
    with pytest.raises(RunDirError, match="initial weights"):
        run_dpo(config, _backend(tmp_path / "run"), RENDERER, out=io.StringIO())
    reference_file.write_text(stored)
    changed = tmp_path / "changed.jsonl"
    write_jsonl(
        changed, [{**row, "prompt": "Q" + str(row["prompt"])} if "prompt" in row else row for row in _train_rows()]
    )
    (tmp_path / "train.jsonl").write_text(changed.read_text())  # same config, other data
    with pytest.raises(RunDirError, match="other data"):
        run_dpo(config, _backend(tmp_path / "run"), RENDERER, out=io.StringIO())


def test_changed_config_is_refused_on_resume(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "run", max_steps=3, eval_every=0)
    run_dpo(config, _backend(tmp_path / "run"), RENDERER, out=io.StringIO())
    with pytest.raises(TinkerflowError, match="another config"):
        run_dpo(attrs.evolve(config, beta=0.2), _backend(tmp_path / "run"), RENDERER, out=io.StringIO())


def test_named_reference_model_scores_with_a_sampling_client(tmp_path: pathlib.Path) -> None:
    """reference_model names the base model: its logprobs come from compute_logprobs of each full sequence and,
    the LoRA adapters starting at zero, equal the policy's at step 0 up to float rounding."""
    config = _config(tmp_path, "named", reference_model="tiny-llama", max_steps=2, eval_every=0)
    result = run_dpo(config, _backend(tmp_path / "named"), RENDERER, out=io.StringIO())
    rows = MetricsLog.read(tmp_path / "named" / "metrics.jsonl")
    assert rows[0]["dpo_loss"] == pytest.approx(LOG2, abs=1e-5)
    assert result.eval_before is not None
    assert result.eval_before.dpo_loss == pytest.approx(LOG2, abs=1e-5)
    stored = json.loads((tmp_path / "named" / REFERENCE_FILE).read_text())
    assert len(stored["test_chosen"]) == 6
    assert len(stored["train_indices"]) == 8


# -- data: ties, bad rows ------------------------------------------------------------------------------------------


def test_ties_raise_naming_the_row_or_are_dropped_and_counted(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "ties", ties="raise")
    with pytest.raises(TieError) as info:
        prepare_dpo_data(config, RENDERER)
    assert info.value.where == f"{tmp_path / 'train.jsonl'}:6"
    assert info.value.field == "label"
    data = prepare_dpo_data(attrs.evolve(config, ties="drop"), RENDERER)
    assert (len(data.train), len(data.test), data.dropped_ties) == (22, 6, 1)


def test_bad_rows_raise_with_file_and_line_or_are_counted(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.jsonl"
    rows: list[Mapping[str, object]] = [
        *_train_rows(6),
        {"prompt": "x", "chosen": "y"},  # no rejected
        {"prompt": "long?", "chosen": "yes " * 40, "rejected": "no"},  # longer than max_length
    ]
    write_jsonl(bad, rows)
    config = _config(tmp_path, "bad", train_data=str(bad))
    with pytest.raises(ChatFormatError) as format_error:
        prepare_dpo_data(config, RENDERER)
    assert format_error.value.where == f"{bad}:8"
    assert format_error.value.field == "rejected"
    write_jsonl(bad, [*_train_rows(6), rows[-1]])
    with pytest.raises(DataError, match="max_length=64") as long_error:
        prepare_dpo_data(config, RENDERER)
    assert long_error.value.where == f"{bad}:8"
    write_jsonl(bad, rows)
    skipped = prepare_dpo_data(attrs.evolve(config, bad_rows="skip"), RENDERER)
    assert (len(skipped.train), skipped.skipped_rows, skipped.dropped_ties) == (6, 2, 1)


def test_rows_given_in_code_and_an_empty_training_set(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "memory", train_data="<memory>", test_data=None, test_fraction=0.0)
    data = prepare_dpo_data(config, RENDERER, train_rows=_train_rows(4), test_rows=_train_rows(2)[:2])
    assert (len(data.train), len(data.test), data.dropped_ties) == (4, 2, 1)
    with pytest.raises(DataError, match="no usable training comparison"):
        prepare_dpo_data(config, RENDERER, train_rows=[_train_rows()[5]])  # only the tie


def test_held_out_split_when_no_test_data(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, "split", test_data=None, test_fraction=0.25)
    data = prepare_dpo_data(config, RENDERER)
    assert len(data.train) + len(data.test) == 22
    assert 4 <= len(data.test) <= 6
    other_seed = prepare_dpo_data(attrs.evolve(config, seed=1), RENDERER)
    assert other_seed.test.interleaved() != data.test.interleaved()


def test_hf_disk_dataset_with_splits(tmp_path: pathlib.Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": f"q{i}?", "chosen": "yes!", "rejected": "no"} for i in range(5)]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])}
    ).save_to_disk(str(tmp_path / "prefs"))
    source = f"hf-disk:{tmp_path / 'prefs'}"
    config = _config(tmp_path, "hf", train_data=source, test_data=None, hf_test_split="test")
    data = prepare_dpo_data(config, RENDERER)
    assert (len(data.train), len(data.test)) == (5, 2)
    bad = [*rows, {"prompt": "q?", "chosen": None, "rejected": "no"}]
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad"))
    config = _config(tmp_path, "hf", train_data=f"hf-disk:{tmp_path / 'bad'}", test_data=None, test_fraction=0.0)
    with pytest.raises(ChatFormatError) as info:
        prepare_dpo_data(config, RENDERER)
    assert info.value.where == f"hf-disk:{tmp_path / 'bad'}[5]"
    assert prepare_dpo_data(attrs.evolve(config, bad_rows="skip"), RENDERER).skipped_rows == 1


# -- config --------------------------------------------------------------------------------------------------------


def test_config_defaults_follow_the_cookbook_and_round_trip() -> None:
    config = DPOConfig(train_data="prefs.jsonl")
    assert (config.beta, config.learning_rate, config.lr_schedule.kind, config.lr_schedule.final_ratio) == (
        0.1,
        1e-5,
        "linear",
        0.0,
    )
    assert config.reference_model is None
    assert config.ties == "raise"
    assert from_json(to_json(config), DPOConfig) == config
    overridden = apply_overrides({"train_data": "p.jsonl"}, ["beta=0.5", "log_to=tensorboard", "ties=drop"], DPOConfig)
    assert (overridden.beta, overridden.log_to, overridden.ties) == (0.5, ("tensorboard",), "drop")


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"train_data": ""}, "train_data"),
        ({"train_data": "hf:"}, "train_data"),
        ({"test_data": ""}, "test_data"),
        ({"test_data": "hf-disk: "}, "test_data"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": float("nan")}, "test_fraction"),
        ({"hf_split": "train"}, "hf_split"),
        ({"hf_test_split": "test"}, "hf_test_split"),
        ({"hf_subset": "default"}, "hf_subset"),
        ({"train_data": "hf:a/b", "hf_split": ""}, "hf_split"),
        ({"layout": "csv"}, "layout"),
        ({"base_model": ""}, "base_model"),
        ({"backend": "cloud"}, "backend"),
        ({"renderer": ""}, "renderer"),
        ({"reference_model": ""}, "reference_model"),
        ({"train_on": "all_tokens"}, "train_on"),
        ({"max_length": 0}, "max_length"),
        ({"max_length": 1}, "max_length"),
        ({"ties": "keep"}, "ties"),
        ({"beta": 0.0}, "beta"),
        ({"beta": float("inf")}, "beta"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"seed": -1}, "seed"),
        ({"eval_every": -1}, "eval_every"),
        ({"save_every": -1}, "save_every"),
        ({"bad_rows": "ignore"}, "bad_rows"),
        ({"run_dir": ""}, "run_dir"),
        ({"log_to": ["mlflow"]}, "log_to[0]"),
        ({"log_to": ["wandb", "wandb"]}, "log_to[1]"),
        ({"log_to": 3}, "log_to"),
    ],
)
def test_config_validation_names_the_field(values: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"train_data": "prefs.jsonl", **values}
    with pytest.raises(ValidationError) as info:
        DPOConfig(**arguments)  # type: ignore[arg-type]
    assert info.value.where == "DPOConfig"
    assert info.value.field == field


def test_every_config_field_is_used() -> None:
    """Each field is read by the recipe (shell/recipes/dpo.py and the modules it reads the config through: the data
    loader, the pairing, the reference, the step count) or the command (cli._run_dpo and the shared cli._execute
    and cli._backend), which build the backend (with its ``local`` options), renderer and sinks from the config;
    and changing any field changes the run directory's config.json, so a resumed run can never silently ignore
    one."""
    from tinkerflow import cli
    from tinkerflow.config import DataConfig
    from tinkerflow.preference import dpo_data
    from tinkerflow.shell.io import data, run
    from tinkerflow.shell.recipes import dpo_reference

    readers = [dpo_module, data, dpo_data, dpo_reference, run, DataConfig.total_steps]
    sources = "".join(inspect.getsource(reader).replace("self.", "config.") for reader in readers)
    sources += "".join(inspect.getsource(command) for command in (cli._run_dpo, cli._execute, cli._backend))
    unused = [field.name for field in attrs.fields(DPOConfig) if f"config.{field.name}" not in sources]
    assert unused == []
    base = DPOConfig(train_data="hf:org/prefs", hf_split="train", hf_test_split="test", hf_subset="x")
    for field in attrs.fields(DPOConfig):
        assert field.name in json.loads(to_json(base))


def test_behaviour_of_fields_on_the_tiny_model(tmp_path: pathlib.Path) -> None:
    """Fields whose effect is visible in the log: the schedule sets each step's lr; beta scales the rewards (Adam's
    first step is sign-like, so both runs reach nearly the same weights and the margins differ by beta's ratio)."""
    rows = {}
    for beta in (0.1, 0.4):
        config = _config(tmp_path, f"beta{beta}", beta=beta, max_steps=2, eval_every=0, epochs=1)
        run_dpo(config, _backend(tmp_path / f"beta{beta}"), RENDERER, out=io.StringIO())
        rows[beta] = MetricsLog.read(tmp_path / f"beta{beta}" / "metrics.jsonl")
    assert [row["lr"] for row in rows[0.1]] == [row["lr"] for row in rows[0.4]] == pytest.approx([1e-2, 5e-3])
    assert rows[0.4][0]["dpo_loss"] == rows[0.1][0]["dpo_loss"] == pytest.approx(LOG2, abs=1e-12)
    ratio = float(rows[0.4][1]["margin"]) / float(rows[0.1][1]["margin"])  # type: ignore[arg-type]
    assert ratio == pytest.approx(4.0, rel=1e-2)
