"""Small validators shared by the record modules (private)."""

from __future__ import annotations

import math

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
    value: float,
    where: str,
    field: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``ConfigError`` when ``value`` lies outside the (optionally open) interval."""
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(where, field, f"must lie in {interval}, got {value!r}.")
