"""Small validators shared by the record modules (private)."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, cast

import attrs
import numpy as np

from tinkerflow.arrays import as_float32_1d, as_float32_2d, as_int64_1d, as_int64_2d
from tinkerflow.errors import ConfigError, DTypeError, NonFiniteError, ValidationError


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


def _items_or_kept(value: object, *, text_is_item: bool) -> object:
    """A list-like ``value`` as a tuple; a bare string as one item when ``text_is_item``; anything else (a number, a
    mapping, bytes, a string otherwise) unchanged, for the record's :func:`check_items` to refuse by field name."""
    if isinstance(value, str) and text_is_item:
        return (value,)
    if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Iterable):
        return value
    return tuple(cast("Iterable[object]", value))


def int_items(value: Iterable[int]) -> tuple[int, ...]:
    """An attrs converter: a list (any iterable) of ints -> a tuple; a non-list is kept for :func:`check_items`."""
    return cast("tuple[int, ...]", _items_or_kept(value, text_is_item=False))


def str_items(value: Iterable[str]) -> tuple[str, ...]:
    """An attrs converter: a list (any iterable) of strings -> a tuple; a bare string or another non-list is kept
    for :func:`check_items` to refuse (a string would otherwise be split into letters)."""
    return cast("tuple[str, ...]", _items_or_kept(value, text_is_item=False))


def str_or_items(value: str | Iterable[str]) -> tuple[str, ...]:
    """An attrs converter: a bare string -> a tuple of that one string, else as :func:`str_items`."""
    return cast("tuple[str, ...]", _items_or_kept(value, text_is_item=True))


def check_items(value: object, kind: type, where: str, field: str) -> tuple[object, ...]:
    """``value`` (a field converted by :func:`int_items` / :func:`str_items`) checked to be a tuple of ``kind``
    items (bools never count as ints); else a ``ValidationError`` naming ``field`` or ``field[index]``."""
    if not isinstance(value, tuple):
        raise ValidationError(
            where,
            field,
            f"must be a list of {kind.__name__} values, got {type(value).__name__} ({value!r:.60}).",
            "give a list (in JSON: [...]), even of one item.",
        )
    items = cast("tuple[object, ...]", value)
    for index, item in enumerate(items):
        require_type(item, kind, where, f"{field}[{index}]")
    return items


def closest(key: str, known: Iterable[str]) -> list[str]:
    """The known names closest to ``key`` (``difflib``, best first; empty when none is close)."""
    return difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)


def unknown_key_fix(key: str, known: Iterable[str]) -> str:
    """The fix of an unknown key: the closest known keys, then every known key."""
    names = sorted(known)
    close = closest(key, names)
    hint = f"did you mean {' or '.join(repr(name) for name in close)}? " if close else ""
    return f"{hint}Known keys: {', '.join(names)}."


def check_text(value: object, where: str, field: str) -> str:
    """Return ``value`` after checking it is a string (``ValidationError`` otherwise) of valid Unicode text: no lone
    surrogate (``"\\ud800"``, which JSON escapes can carry but no UTF-8 text or tokenizer can)."""
    require_type(value, str, where, field)
    text = cast("str", value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValidationError(
                where,
                field,
                f"holds a lone surrogate ({text[error.start]!r}) at character {error.start}: not valid Unicode text.",
                "fix the text's encoding (a JSON \\uXXXX escape of half a surrogate pair is the usual cause).",
            ) from error
    return text


class JsonTextError(ValueError):
    """JSON text that cannot be read (:func:`read_json_text`): ``field`` is ``line`` for text that is no JSON at
    all, or the key an object writes twice."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem
        self.fix = fix


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An ``object_pairs_hook``: the object as a dict, refusing a key written twice (``json`` keeps the last)."""
    result = dict(pairs)
    if len(result) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return result


def read_json_text(text: str) -> object:
    """The JSON value of ``text``, strictly: an object writing a key twice is refused (``json.loads`` would keep the
    last value silently), and so are numbers too long to read and nesting too deep for Python's recursion limit.

    Raises:
        JsonTextError: naming ``line`` (or the duplicated key) with the problem and its fix.
    """
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        raise JsonTextError("line", f"is not valid JSON ({error.msg} at column {error.colno}).") from error
    except _DuplicateKeyError as error:
        raise JsonTextError(
            error.key,
            "is written twice in one JSON object (a JSON reader would silently keep only the last value).",
            "write each key once.",
        ) from error
    except RecursionError as error:
        raise JsonTextError(
            "line",
            "nests JSON arrays or objects too deeply to read (beyond Python's recursion limit).",
            "flatten it: a row or a config needs only a few levels.",
        ) from error
    except ValueError as error:  # e.g. an integer past Python's limit of digits
        raise JsonTextError("line", f"is not readable JSON ({error}).", "write numbers of sensible size.") from error


#: A logprob may exceed 0 by this much (float rounding of ``log_softmax`` near probability 1); more is an error.
LOGPROB_TOLERANCE: Final = 1e-4


def _holds_bool(value: object) -> bool:
    """Whether an array-like holds booleans (a bool array, or a list or tuple with a bool item, nested too)."""
    if isinstance(value, np.ndarray):
        return bool(value.dtype.kind == "b")
    if isinstance(value, (bool, np.bool_)):
        return True
    if isinstance(value, (list, tuple)):
        items = cast("list[object] | tuple[object, ...]", value)
        kinds = set(map(type, items))
        if bool in kinds or np.bool_ in kinds:
            return True
        if kinds & {list, tuple, np.ndarray}:
            return any(_holds_bool(item) for item in items)
        return False
    dtype = getattr(value, "dtype", None)  # a tensor or another array type
    return dtype is not None and "bool" in str(dtype)


def _refuse_bool(value: object, where: str, field: str, what: str) -> None:
    if _holds_bool(value):
        raise DTypeError(where, field, f"holds booleans, not {what}.", f"pass {what} as ints (True is not 1 here).")


def token_ids(value: object, where: str, field: str, *, ndim: Literal[1, 2] = 1) -> np.ndarray:
    """``value`` as a read-only int64 array of ``ndim`` dims (:func:`tinkerflow.arrays.as_int64_1d`), booleans
    refused (``DTypeError``): a token id is an int, never ``True``."""
    _refuse_bool(value, where, field, "token ids")
    return as_int64_1d(value, where, field) if ndim == 1 else as_int64_2d(value, where, field)


def logprobs(value: object, where: str, field: str, *, ndim: Literal[1, 2] = 1, allow_nan: bool = False) -> np.ndarray:
    """``value`` as a read-only float32 array of ``ndim`` dims of log-probabilities: booleans refused
    (``DTypeError``), every value ``<= LOGPROB_TOLERANCE`` (``ValidationError`` naming the first positive one)."""
    _refuse_bool(value, where, field, "logprobs")
    one_d = ndim == 1
    array = as_float32_1d(value, where, field, allow_nan=allow_nan) if one_d else as_float32_2d(value, where, field)
    if array.size:
        with np.errstate(invalid="ignore"):
            high = array > LOGPROB_TOLERANCE
        if bool(high.any()):
            index = int(np.flatnonzero(high.ravel())[0])
            raise ValidationError(
                where,
                field,
                f"holds a positive logprob ({float(array.ravel()[index])!r} at flat index {index}); a log-probability "
                f"is <= 0 (up to {LOGPROB_TOLERANCE} of rounding).",
                "pass log-probabilities (log p), not probabilities or negated logprobs.",
            )
    return array
