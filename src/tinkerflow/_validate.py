"""Small validators shared by the record modules (private)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from tinkerflow.errors import ConfigError, NonFiniteError, ValidationError


def require_type(value: object, kind: type | tuple[type, ...], where: str, field: str) -> None:
    """Raise ``ValidationError`` unless ``value`` is an instance of ``kind`` (bools never count as numbers)."""
    names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    numeric = kind in (int, float) or (isinstance(kind, tuple) and (int in kind or float in kind))
    if not isinstance(value, kind) or (numeric and isinstance(value, bool) and kind is not bool):
        raise ValidationError(where, field, f"expected {names}, got {type(value).__name__} ({value!r:.60}).")


def finite_float(value: object, where: str, field: str) -> float:
    """Return ``value`` as a float after checking it is a finite real number."""
    require_type(value, (int, float), where, field)
    assert isinstance(value, (int, float))
    result = float(value)
    if not math.isfinite(result):
        raise NonFiniteError(where, field, f"must be finite, got {value!r}.")
    return result


def in_range(
    value: object,
    where: str,
    field: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float after checking it is finite (:func:`finite_float`) and lies in the (optionally
    open) interval; outside it, raise ``ConfigError``."""
    number = finite_float(value, where, field)
    bad_low = low is not None and (number <= low if low_open else number < low)
    bad_high = high is not None and (number >= high if high_open else number > high)
    if bad_low or bad_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(where, field, f"must lie in {interval}, got {number!r}.")
    return number


def non_empty_str(value: object, where: str, field: str, fix: str) -> str:
    """Return ``value`` after checking it is a string (else ``ValidationError``) that is not empty (else
    ``ConfigError`` "is empty." with ``fix``)."""
    require_type(value, str, where, field)
    assert isinstance(value, str)
    if not value:
        raise ConfigError(where, field, "is empty.", fix)
    return value


def int_at_least(value: object, where: str, field: str, low: int = 1, *, allow_none: bool = False) -> int | None:
    """Return ``value`` after checking it is an int (never a bool) ``>= low``; ``None`` passes when ``allow_none``.

    Raises ``ConfigError`` naming ``where.field``; the one integer check every record and config uses.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        suffix = " or None" if allow_none else ""
        raise ConfigError(where, field, f"must be {kind}{suffix}, got {value!r}.")
    return value


def positive_int(value: object, where: str, field: str) -> int:
    """``value`` checked to be an int ``>= 1`` (see :func:`int_at_least`)."""
    result = int_at_least(value, where, field, 1)
    assert result is not None
    return result


def attrs_int_at_least(
    where: str, low: int = 1, *, allow_none: bool = False
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """An attrs validator: the field is an int ``>= low`` (or ``None`` when ``allow_none``), else ``ConfigError``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        int_at_least(value, where, attribute.name, low, allow_none=allow_none)

    return check


# Tuple converters for attrs fields. mypy's attrs plugin needs a concrete signature per element type (a generic
# converter is not solved), so there is one per element type, shared by every record that needs it.
def str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    """An attrs converter: any iterable of strings -> a tuple."""
    return tuple(value)


def int_tuple(value: Iterable[int]) -> tuple[int, ...]:
    """An attrs converter: any iterable of ints -> a tuple."""
    return tuple(value)


def float_tuple(value: Iterable[float]) -> tuple[float, ...]:
    """An attrs converter: any iterable of floats -> a tuple."""
    return tuple(value)
