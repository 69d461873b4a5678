"""Supervised pure core: datum construction, schedules and recommended learning rates, with differential tests
against tinker-cookbook 0.6.1."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkerflow import ImageChunk, ModelInput, TokenChunk
from tinkerflow import testing as tft
from tinkerflow.errors import ConfigError, ShapeError, ValidationError
from tinkerflow.interop import datum_to_tinker, model_input_to_tinker
from tinkerflow.supervised import (
    DEFAULT_LR_TABLE,
    KNOWN_HIDDEN_SIZES,
    LRFamily,
    LRSchedule,
    learning_rate_at,
    lr_multiplier,
    recommended_lr,
    supervised_datum,
    truncate_model_input,
)


def test_cookbook_worked_example() -> None:
    datum = supervised_datum(
        ModelInput.from_tokens([10, 20, 30, 40, 50, 60]), np.array([0, 0, 1, 1, 1, 1]), max_length=4, reduction="mean"
    )
    assert datum.model_input.to_tokens().tolist() == [10, 20, 30]
    assert datum.target_tokens_T.tolist() == [20, 30, 40]
    assert datum.weights_T is not None
    assert datum.weights_T.tolist() == [0.0, 0.5, 0.5]


def test_image_positions_get_target_zero_and_trailing_images_drop() -> None:
    model_input = ModelInput(
        chunks=(TokenChunk([1, 2]), ImageChunk(b"x", "png", 3), TokenChunk([7, 8]), ImageChunk(b"y", "png", 2))
    )
    datum = supervised_datum(model_input, np.ones(model_input.length))
    assert datum.target_tokens_T.tolist() == [2, 0, 0, 0, 7, 8]
    assert datum.model_input.length == 6
    assert isinstance(datum.model_input.chunks[1], ImageChunk)


def test_truncation_drops_images_whole() -> None:
    model_input = ModelInput(chunks=(TokenChunk([1, 2, 3]), ImageChunk(b"x", "png", 4), TokenChunk([9])))
    datum = supervised_datum(model_input, np.ones(8), max_length=5)
    assert datum.model_input.to_tokens().tolist() == [1, 2]
    assert datum.target_tokens_T.tolist() == [2, 3]


@given(
    tft.model_inputs(min_length=2, max_length=40, images=True),
    st.data(),
    st.one_of(st.none(), st.integers(2, 50)),
    st.sampled_from(["none", "sum", "mean"]),
)
def test_shapes_and_shift_properties(
    model_input: ModelInput, data: st.DataObject, max_length: int | None, reduction: str
) -> None:
    weights = np.asarray(
        data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=model_input.length, max_size=model_input.length))
    )
    usable = sum(
        chunk.length for chunk in truncate_model_input(model_input, max_length or model_input.length)
    )  # upper bound; trailing images may reduce it further
    if usable < 2:
        with pytest.raises(ValidationError, match="at least 2"):
            supervised_datum(model_input, weights, max_length=max_length, reduction=reduction)  # type: ignore[arg-type]
        return
    try:
        datum = supervised_datum(model_input, weights, max_length=max_length, reduction=reduction)  # type: ignore[arg-type]
    except ValidationError as error:  # only possible when trailing images leave fewer than 2 positions
        assert error.field == "model_input"
        return
    assert datum.length == datum.target_tokens_T.shape[0]
    assert max_length is None or datum.length <= max_length - 1
    assert datum.weights_T is not None
    if reduction == "mean" and datum.weights_T.sum() > 0:
        assert math.isclose(float(datum.weights_T.sum()), 1.0, rel_tol=1e-5)
    if reduction != "mean":
        np.testing.assert_array_equal(datum.weights_T, weights[1 : datum.length + 1])


@pytest.fixture(scope="module")
def cookbook_common():  # type: ignore[no-untyped-def]  # returns the reference module
    return pytest.importorskip("tinker_cookbook.supervised.common")


@given(
    tft.model_inputs(min_length=2, max_length=40, images=True),
    st.data(),
    st.one_of(st.none(), st.integers(2, 50)),
    st.sampled_from(["none", "mean"]),
)
def test_matches_cookbook_datum_from_model_input_weights(
    cookbook_common: object, model_input: ModelInput, data: st.DataObject, max_length: int | None, reduction: str
) -> None:
    import torch

    weights = np.asarray(
        data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=model_input.length, max_size=model_input.length)),
        dtype=np.float32,
    )
    build = cookbook_common.datum_from_model_input_weights  # type: ignore[attr-defined]
    try:
        expected = build(model_input_to_tinker(model_input), torch.from_numpy(weights), max_length, reduction)
    except Exception:  # the cookbook raises (DataValidationError / AssertionError) on too-short inputs
        with pytest.raises(ValidationError):
            supervised_datum(model_input, weights, max_length=max_length, reduction=reduction)  # type: ignore[arg-type]
        return
    ours = datum_to_tinker(supervised_datum(model_input, weights, max_length=max_length, reduction=reduction))  # type: ignore[arg-type]
    assert ours.model_input.chunks == expected.model_input.chunks
    assert set(ours.loss_fn_inputs) == set(expected.loss_fn_inputs)
    for key in expected.loss_fn_inputs:
        np.testing.assert_array_equal(ours.loss_fn_inputs[key].to_numpy(), expected.loss_fn_inputs[key].to_numpy())


def test_wrong_weight_length_is_an_error_not_a_cut() -> None:
    with pytest.raises(ShapeError, match=r"supervised_datum\.weights_T"):
        supervised_datum(ModelInput.from_tokens([1, 2, 3]), np.ones(5))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_length": 1}, "max_length"), ({"reduction": "avg"}, "reduction")],
)
def test_bad_arguments(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        supervised_datum(ModelInput.from_tokens([1, 2, 3]), np.ones(3), **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_too_short() -> None:
    with pytest.raises(ValidationError, match="at least 2"):
        supervised_datum(ModelInput.from_tokens([1]), np.ones(1))


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_schedules_match_cookbook(kind: str) -> None:
    reference = pytest.importorskip("tinker_cookbook.utils.lr_scheduling")
    for total in (1, 7, 100):
        for step in range(total):
            expected = reference.compute_schedule_lr_multiplier(kind, step, total)
            assert lr_multiplier(LRSchedule(kind=kind), step, total) == pytest.approx(expected, abs=1e-12)  # type: ignore[arg-type]


@given(
    st.sampled_from(["constant", "linear", "cosine"]),
    st.integers(0, 20),
    st.floats(0.0, 1.0),
    st.integers(1, 200),
    st.data(),
)
def test_schedule_properties(kind: str, warmup: int, final: float, total: int, data: st.DataObject) -> None:
    schedule = LRSchedule(kind=kind, warmup_steps=warmup, final_ratio=final)  # type: ignore[arg-type]
    values = [lr_multiplier(schedule, step, total) for step in range(total)]
    assert all(0.0 <= value <= 1.0 + 1e-12 for value in values)
    after = values[min(warmup, total) :]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(after))  # non-increasing after warmup
    assert all(b >= a for a, b in itertools.pairwise(values[: min(warmup, total)]))  # rising during warmup
    step = data.draw(st.integers(0, total - 1))
    assert learning_rate_at(2e-4, schedule, step, total) == pytest.approx(2e-4 * values[step])


def test_schedule_validation() -> None:
    with pytest.raises(ConfigError, match=r"LRSchedule\.kind"):
        LRSchedule(kind="step")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="warmup_steps"):
        LRSchedule(warmup_steps=-1)
    with pytest.raises(ConfigError, match="final_ratio"):
        LRSchedule(final_ratio=2.0)
    with pytest.raises(ConfigError, match="total_steps"):
        lr_multiplier(LRSchedule(), 0, 0)


def test_recommended_lr_matches_cookbook() -> None:
    reference = pytest.importorskip("tinker_cookbook.hyperparam_utils")
    compared = 0
    for name in KNOWN_HIDDEN_SIZES:
        if "smollm" in name.lower():
            continue
        for lora in (True, False):
            assert recommended_lr(name, lora=lora) == pytest.approx(reference.get_lr(name, is_lora=lora), rel=1e-12)
            compared += 1
    assert compared >= 30
    assert recommended_lr("meta-llama/Llama-3.1-8B") == pytest.approx(2.86e-4, rel=1e-2)
    assert recommended_lr("Qwen/Qwen3-8B") == pytest.approx(4.73e-4, rel=1e-2)


def test_recommended_lr_smollm_and_extension() -> None:
    assert recommended_lr("HuggingFaceTB/SmolLM2-135M-Instruct") == pytest.approx(5e-4 * (2000 / 576) ** 0.781)
    with pytest.raises(ConfigError, match="LRFamily"):
        recommended_lr("google/gemma-3-270m")
    table = (*DEFAULT_LR_TABLE, LRFamily(name="gemma", match="gemma", exponent=0.5))
    assert recommended_lr("google/gemma-3-270m", table=table, hidden_size=640) == pytest.approx(
        5e-4 * (2000 / 640) ** 0.5
    )
    with pytest.raises(ConfigError, match="hidden_size"):
        recommended_lr("meta-llama/Llama-9-1B")
    assert recommended_lr("Qwen/Qwen3-8B:peft:131072") == recommended_lr("Qwen/Qwen3-8B")


@given(st.integers(1, 500), st.floats(0.0, 0.9), st.integers(0, 1000))
def test_split_is_a_seeded_partition(n: int, fraction: float, seed: int) -> None:
    from tinkerflow.supervised import split_indices

    train, test = split_indices(n, fraction, seed)
    assert sorted([*train.tolist(), *test.tolist()]) == list(range(n))
    if fraction > 0 and n > 1:
        assert len(test) >= 1
        assert len(train) >= 1
    np.testing.assert_array_equal(split_indices(n, fraction, seed)[1], test)


def test_token_nll_totals() -> None:
    from tinkerflow.supervised import token_nll_totals

    logprobs = (np.array([-1.0, -2.0, -3.0], np.float32), np.array([-0.5], np.float32))
    weights = (np.array([0.0, 0.5, 0.5], np.float32), np.array([1.0], np.float32))
    assert token_nll_totals(logprobs, weights) == (5.5, 3)
    with pytest.raises(ShapeError):
        token_nll_totals((np.zeros(2, np.float32),), (np.zeros(3, np.float32),))
