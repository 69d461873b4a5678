from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from jaxtyping import Float32, Int64

from tinkerflow.arrays import (
    as_float32_1d,
    as_int64_1d,
    as_int64_2d,
    checked,
    runtime_checks,
    runtime_checks_enabled,
    set_runtime_checks,
)
from tinkerflow.errors import ArgumentError, DTypeError, NonFiniteError, ShapeError, TinkerflowError


@checked
def _weighted_sum(tokens_T: Int64[np.ndarray, " T"], weights_T: Float32[np.ndarray, " T"]) -> float:
    return float((tokens_T * weights_T).sum())


def test_checked_accepts_matching_shapes() -> None:
    assert _weighted_sum(np.array([1, 2], dtype=np.int64), np.array([0.5, 1.0], dtype=np.float32)) == 2.5


def test_checked_rejects_mismatched_named_dims() -> None:
    with pytest.raises(ArgumentError) as info:
        _weighted_sum(np.array([1, 2, 3], dtype=np.int64), np.array([0.5, 1.0], dtype=np.float32))
    assert "_weighted_sum" in str(info.value)
    assert isinstance(info.value, TinkerflowError)
    assert isinstance(info.value, TypeError)


def test_checked_rejects_wrong_dtype() -> None:
    with pytest.raises(ArgumentError):
        _weighted_sum(np.array([1.0, 2.0]), np.array([0.5, 1.0], dtype=np.float32))


def test_runtime_checks_switch() -> None:
    bad = (np.array([1, 2, 3], dtype=np.int64), np.array([0.5, 1.0, 2.0], dtype=np.float64))
    assert runtime_checks_enabled()
    with runtime_checks(False):
        assert not runtime_checks_enabled()
        assert _weighted_sum(*bad) == 8.5  # unchecked: runs with the float64 weights
    assert runtime_checks_enabled()
    with pytest.raises(ArgumentError):
        _weighted_sum(*bad)


def test_set_runtime_checks_is_read_at_call_time() -> None:
    bad = (np.array([1, 2], dtype=np.int64), np.array([0.5, 1.0], dtype=np.float64))
    try:
        set_runtime_checks(False)
        assert not runtime_checks_enabled()
        assert _weighted_sum(*bad) == 2.5  # defined while checks were on, unchecked now
    finally:
        set_runtime_checks(True)
    with pytest.raises(ArgumentError):
        _weighted_sum(*bad)


@pytest.mark.parametrize(("value", "expected"), [("0", [True, False]), ("no", [True, False]), ("1", [True, True])])
def test_the_shell_applies_the_environment_switch(value: str, expected: list[bool]) -> None:
    # The core never reads TINKERFLOW_RUNTIME_CHECKS; importing the shell does, once.
    code = (
        "import json; from tinkerflow.arrays import runtime_checks_enabled as on; before = on(); "
        "import tinkerflow.shell; print(json.dumps([before, on()]))"
    )
    env = {**os.environ, "TINKERFLOW_RUNTIME_CHECKS": value}
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    assert json.loads(output.strip().splitlines()[-1]) == expected


def test_as_int64_converts_and_freezes() -> None:
    source = [1, 2, 3]
    array = as_int64_1d(source, "R", "f")
    assert array.dtype == np.int64
    assert not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 5
    integral_floats = as_int64_1d(np.array([1.0, 2.0]), "R", "f")
    assert integral_floats.tolist() == [1, 2]


def test_as_int64_copies_its_input() -> None:
    source = np.array([1, 2, 3], dtype=np.int64)
    array = as_int64_1d(source, "R", "f")
    source[0] = 99
    assert array[0] == 1


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ([1.5, 2.0], DTypeError),
        ([[1, 2]], ShapeError),
        ("abc", DTypeError),
        ([[1], [2, 3]], ShapeError),
        (["a", "b"], DTypeError),
        ([float("nan")], DTypeError),
        ([2.0**64], DTypeError),
        (np.array([2**64 - 1], dtype=np.uint64), DTypeError),
    ],
)
def test_as_int64_rejects(value: object, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        as_int64_1d(value, "Rec", "tokens_T")
    assert "Rec.tokens_T" in str(info.value)


@pytest.mark.parametrize("value", [[1.0, float("nan")], [float("inf")], [1e39]])
def test_as_float32_rejects_non_finite(value: list[float]) -> None:
    with pytest.raises(NonFiniteError, match=r"Rec\.w_T"):
        as_float32_1d(value, "Rec", "w_T")


def test_as_float32_allow_nan_still_rejects_inf() -> None:
    assert np.isnan(as_float32_1d([float("nan"), 1.0], "R", "f", allow_nan=True)[0])
    with pytest.raises(NonFiniteError):
        as_float32_1d([float("-inf")], "R", "f", allow_nan=True)


def test_as_int64_2d_shape() -> None:
    assert as_int64_2d([[1, 2], [3, 4]], "R", "f").shape == (2, 2)
    with pytest.raises(ShapeError):
        as_int64_2d([1, 2], "R", "f")


def test_empty_lists_are_fine() -> None:
    assert as_int64_1d([], "R", "f").shape == (0,)
    assert as_float32_1d([], "R", "f").dtype == np.float32
