"""Shape-annotated array aliases, array validation helpers and the runtime-checking decorator.

Array names carry their shape as subscript suffixes, the letters following tinker-cookbook:
``P`` problems, ``G`` group members, ``T`` tokens, ``D`` datums, ``K`` top-k alternatives. So ``tokens_T`` is a
1-D array over tokens and ``advantages_G`` one value per group member. The annotations say the same thing to the
type checker (``Int64[np.ndarray, "T"]``) and, through :func:`checked`, to beartype at run time.

Runtime checks
--------------
Public pure functions are wrapped with :func:`checked`, which validates dtypes and shapes (and that dimensions
with the same name agree) on every call, and turns a violation into :class:`tinkerflow.errors.ArgumentError`.
The switch is explicit and read at call time, so turning checks off once a pipeline is known to be right is one
call, before or after the functions were defined:

* :func:`set_runtime_checks` (process-wide) or :func:`runtime_checks` (a context manager that restores the
  previous setting). Off, a wrapper calls the plain function it keeps next to the checked one: about 0.1 µs per
  call remain (checked calls cost about 15 µs; see ``benchmarks/bench_checks.py``).
* ``TINKERFLOW_RUNTIME_CHECKS=0`` (or ``false`` / ``no``) in the environment: the core never reads the
  environment; the shell (``import tinkerflow.shell``, which every backend, recipe and the CLI imports) reads the
  variable once and calls ``set_runtime_checks(False)``. A program that uses only the core calls the setter itself.

Record validation (lengths agree, dtypes convertible, values finite) is *not* switched off by either: a bad
record must never exist.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import numpy as np
from beartype import beartype
from jaxtyping import Float32, Int64, TypeCheckError, jaxtyped

from tinkerflow.errors import ArgumentError, DTypeError, NonFiniteError, ShapeError

__all__ = [
    "Float32_D",
    "Float32_G",
    "Float32_T",
    "Float32_T_K",
    "Int64_T",
    "Int64_T_K",
    "as_float32_1d",
    "as_float32_2d",
    "as_int64_1d",
    "as_int64_2d",
    "checked",
    "frozen_array",
    "runtime_checks",
    "runtime_checks_enabled",
    "set_runtime_checks",
]

# Aliases for the shapes tinkerflow uses everywhere. Write your own the same way:
# ``Float32[np.ndarray, "P G"]`` is a problems-by-group matrix.
Int64_T = Int64[np.ndarray, "T"]
Int64_T_K = Int64[np.ndarray, "T K"]
Float32_T = Float32[np.ndarray, "T"]
Float32_T_K = Float32[np.ndarray, "T K"]
Float32_G = Float32[np.ndarray, "G"]
Float32_D = Float32[np.ndarray, "D"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Whether :func:`checked` functions validate their arguments (see :func:`set_runtime_checks`).
_enabled: bool = True


def set_runtime_checks(enabled: bool) -> None:
    """Turn runtime shape/dtype checks of :func:`checked` functions on or off, process-wide (read at each call)."""
    global _enabled
    _enabled = bool(enabled)


def runtime_checks_enabled() -> bool:
    """Whether :func:`checked` functions currently validate their arguments."""
    return _enabled


@contextlib.contextmanager
def runtime_checks(enabled: bool) -> Iterator[None]:
    """Context manager: run the block with runtime checks on or off, restoring the previous setting after."""
    previous = _enabled
    set_runtime_checks(enabled)
    try:
        yield
    finally:
        set_runtime_checks(previous)


def checked(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Check a function's annotated argument and return types (dtypes, shapes, named dims) on each call.

    A violation raises :class:`~tinkerflow.errors.ArgumentError` naming the function, chained to jaxtyping's
    detailed report. The wrapper keeps both the checked and the plain function and picks one per call, by
    :func:`runtime_checks_enabled` (see the module docstring).
    """
    inner = jaxtyped(typechecker=beartype)(fn)
    name = getattr(fn, "__qualname__", repr(fn))

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if not _enabled:
            return fn(*args, **kwargs)
        try:
            return inner(*args, **kwargs)
        except TypeCheckError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else "type check failed"
            raise ArgumentError(
                name,
                "arguments",
                f"argument or return types do not match the annotations ({first_line}).",
                "pass arrays of the annotated dtype and shape; the chained error has the details.",
            ) from error

    return wrapper


def frozen_array(array: np.ndarray) -> np.ndarray:
    """Mark an array read-only (in place) and return it."""
    array.flags.writeable = False
    return array


def _as_numeric(value: object, where: str, field: str) -> np.ndarray:
    if isinstance(value, (str, bytes)):
        raise DTypeError(where, field, f"expected a numeric array, got {type(value).__name__}.", "pass numbers.")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ShapeError(
            where, field, f"cannot be read as a rectangular numeric array ({error}).", "pass a flat list of numbers."
        ) from error
    if array.dtype.kind not in "biuf":
        if array.size == 0:
            return array.astype(np.float64)
        raise DTypeError(where, field, f"expected numbers, got dtype {array.dtype}.", "pass ints or floats.")
    return array


def _check_ndim(array: np.ndarray, ndim: int, where: str, field: str) -> None:
    if array.ndim != ndim:
        raise ShapeError(
            where, field, f"expected a {ndim}-D array, got shape {array.shape}.", f"pass a {ndim}-D sequence."
        )


def _to_int64(array: np.ndarray, where: str, field: str) -> np.ndarray:
    if array.dtype.kind == "f":
        if array.size and not bool(np.all(np.isfinite(array)) and np.all(array == np.round(array))):
            raise DTypeError(where, field, "expected integers, got non-integral floats.", "pass integer token ids.")
        if array.size and float(np.max(np.abs(array))) >= 2.0**63:
            raise DTypeError(where, field, "values do not fit in int64.", "pass smaller integers.")
    elif array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise DTypeError(where, field, "values do not fit in int64.", "pass smaller integers.")
    return frozen_array(np.array(array, dtype=np.int64, copy=True))


def _to_float32(array: np.ndarray, where: str, field: str, allow_nan: bool) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf and are reported below
        result = np.array(array, dtype=np.float32, copy=True)
    finite = np.isfinite(result)
    if not bool(finite.all()):
        bad = np.isinf(result) if allow_nan else ~finite
        if bool(bad.any()):
            index = int(np.flatnonzero(bad.ravel())[0])
            original = array.ravel()[index]
            raise NonFiniteError(
                where,
                field,
                f"holds a non-finite value ({original}) at flat index {index}, or a value outside float32 range.",
                "pass finite values." if not allow_nan else "use NaN only to mark missing values; no infinities.",
            )
    return frozen_array(result)


def as_int64_1d(value: object, where: str, field: str) -> np.ndarray:
    """Validate ``value`` as a 1-D integer array and return a read-only int64 copy."""
    array = _as_numeric(value, where, field)
    _check_ndim(array, 1, where, field)
    return _to_int64(array, where, field)


def as_int64_2d(value: object, where: str, field: str) -> np.ndarray:
    """Validate ``value`` as a 2-D integer array and return a read-only int64 copy."""
    array = _as_numeric(value, where, field)
    _check_ndim(array, 2, where, field)
    return _to_int64(array, where, field)


def as_float32_1d(value: object, where: str, field: str, *, allow_nan: bool = False) -> np.ndarray:
    """Validate ``value`` as a 1-D finite float array and return a read-only float32 copy.

    With ``allow_nan`` NaN is accepted as a "missing" marker (infinities still are not).
    """
    array = _as_numeric(value, where, field)
    _check_ndim(array, 1, where, field)
    return _to_float32(array, where, field, allow_nan)


def as_float32_2d(value: object, where: str, field: str) -> np.ndarray:
    """Validate ``value`` as a 2-D finite float array and return a read-only float32 copy."""
    array = _as_numeric(value, where, field)
    _check_ndim(array, 2, where, field)
    return _to_float32(array, where, field, False)
