"""The JSON text the TML v0 format writes for tool declarations and tool calls (tml-renderers 0.2.1 writes it
from Rust, so it is not Python's ``json.dumps``):

* compact separators, non-ASCII written raw, the same string escapes as ``json.dumps(ensure_ascii=False)``;
* a tool call is ``{"name":...,"args":{...}}`` with the arguments' top-level keys sorted and nested objects kept
  in their order; a tool declaration is a list of ``{"description","name","parameters","type"}`` objects with
  every key sorted, at every depth, numbers as ``json.dumps`` writes them (the schema is never re-read);
* numbers are read back from ``json.dumps``'s text as ``serde_json`` reads them without its ``float_roundtrip``
  feature (the digits into a 64-bit significand, then multiplied or divided by a power of ten: not always the
  nearest double, e.g. ``1864650594002959.0`` becomes ``1864650594002959.2``); integers outside the 64-bit range
  become floats; floats are written in the shortest round-trip digits, laid out as the Rust ``ryu`` crate does
  (``1e16``, ``1.5e20``, ``1e-6``, ``0.00001``, ``100.0``). NaN and infinities (not JSON) are written ``null``.
"""

from __future__ import annotations

import decimal
import json
import math
import re
from collections.abc import Sequence

from tinkerflow.chat import ToolSpec

__all__ = ["tml_json", "tool_call_json", "tool_declare_json"]

_STRING = json.JSONEncoder(ensure_ascii=False)


_U64 = 2**64 - 1
_POW10 = tuple(float(f"1e{power}") for power in range(309))
_NUMBER = re.compile(r"(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?")


def _overflows(significand: int, digit: int) -> bool:
    return significand >= _U64 // 10 and (significand > _U64 // 10 or digit > _U64 % 10)


def _from_parts(negative: bool, significand: int, exponent: int) -> float:
    value = float(significand)
    while True:
        if abs(exponent) < len(_POW10):
            value = value * _POW10[exponent] if exponent >= 0 else value / _POW10[-exponent]
            break
        if value == 0.0 or exponent >= 0:
            value = math.inf if exponent >= 0 and value else value
            break
        value /= 1e308
        exponent += 308
    return -value if negative else value


def serde_number(text: str) -> int | float:
    """A JSON number's text as serde_json (default features) reads it: an integer when it fits 64 bits."""
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise ValueError(f"not a JSON number: {text!r}")
    sign, integer, fraction, exponent_text = match.groups()
    negative = sign == "-"
    significand, exponent, overflowed = 0, 0, False
    for char in integer:
        digit = ord(char) - 48
        if overflowed or _overflows(significand, digit):
            overflowed = True
            exponent += 1
        else:
            significand = significand * 10 + digit
    if fraction is None and exponent_text is None and not overflowed:
        if not negative:
            return significand
        return -significand if 1 <= significand <= 2**63 else -float(significand)
    for char in fraction or "":
        digit = ord(char) - 48
        if _overflows(significand, digit):
            break
        significand = significand * 10 + digit
        exponent -= 1
    if exponent_text is not None:
        exponent += int(exponent_text)
    return _from_parts(negative, significand, exponent)


def _number_text(value: int | float) -> str:
    parsed = serde_number(json.dumps(value)) if math.isfinite(value) else math.nan
    return str(parsed) if isinstance(parsed, int) else _float_text(parsed)


def _float_text(value: float) -> str:
    if not math.isfinite(value):
        return "null"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0.0"
    parsed = decimal.Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, parsed.digits)).lstrip("0")
    exponent = int(parsed.exponent)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    length = len(digits)
    point = length + exponent  # the decimal point sits after this many digits
    if exponent >= 0 and point <= 16:
        return sign + digits + "0" * exponent + ".0"
    if 0 < point <= 16:
        return sign + digits[:point] + "." + digits[point:]
    if -5 < point <= 0:
        return sign + "0." + "0" * -point + digits
    mantissa = digits if length == 1 else digits[0] + "." + digits[1:]
    return f"{sign}{mantissa}e{point - 1}"


def tml_json(value: object) -> str:
    """``value`` (a JSON value as ``json.loads`` gives it) as tml-renderers writes it."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return _number_text(value)
    if isinstance(value, str):
        return _STRING.encode(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_STRING.encode(str(k))}:{tml_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(tml_json(item) for item in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def tool_call_json(name: str, arguments: dict[str, object]) -> str:
    """The body of a ``<|content_invoke_tool_json|>`` message."""
    args = ",".join(f"{_STRING.encode(key)}:{tml_json(arguments[key])}" for key in sorted(arguments))
    return f'{{"name":{_STRING.encode(name)},"args":{{{args}}}}}'


def tool_declare_json(tools: Sequence[ToolSpec]) -> str:
    """The body of the ``tool_declare`` system message."""
    specs = [
        {"description": tool.description, "name": tool.name, "parameters": tool.parameters_dict(), "type": "function"}
        for tool in tools
    ]
    return json.dumps(specs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
