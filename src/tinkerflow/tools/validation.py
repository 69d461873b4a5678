"""Checking a model's tool call against the tool's JSON schema, with typed errors.

:func:`check_arguments` validates parsed JSON arguments against the subset of JSON schema that
:mod:`tinkerflow.tools.schema` writes (``type`` including type lists, ``enum``, ``items``, ``properties``,
``required``, ``additionalProperties``, ``anyOf``; other keywords are ignored) and returns the arguments to call
the function with. Each problem is a :class:`ToolArgumentError` (a :class:`~tinkerflow.errors.ValidationError`)
naming ``tool.arguments.<path>``: an unknown argument (with the closest known name), a missing one, a wrong type,
a value outside an enum. JSON numbers with a zero fraction count as integers (``3.0`` is passed as ``3``), as
JSON schema says; booleans are never numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from tinkerflow.errors import ValidationError
from tinkerflow.tools.registry import similar_names
from tinkerflow.tools.schema import JsonSchema

__all__ = ["ToolArgumentError", "check_arguments", "check_value"]

_TYPE_NAMES: Final[dict[str, str]] = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


class ToolArgumentError(ValidationError):
    """A tool call's arguments do not match the tool's schema (``where`` is the tool, ``field`` the argument)."""


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _coerce(value: object, kind: str) -> tuple[bool, object]:
    """Whether ``value`` is of JSON type ``kind``, and the value to pass (``3.0`` -> ``3`` for integers)."""
    actual = _json_type(value)
    if actual == kind:
        return True, value
    if kind == "number" and actual == "integer":
        return True, value
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return True, int(value)
    return False, value


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(value: object, schema: Mapping[str, object], where: str, field: str) -> object:
    """``value`` checked against ``schema`` (see the module docstring), coerced where JSON schema allows;
    :class:`ToolArgumentError` naming ``where.field`` otherwise."""
    options = schema.get("anyOf")
    if isinstance(options, Sequence) and not isinstance(options, str):
        forms = [option for option in options if isinstance(option, Mapping)]
        if value is not None:  # ``X | None`` with a value: the error of X is the precise one
            forms = [option for option in forms if option.get("type") != "null"]
        if len(forms) == 1:
            return check_value(value, forms[0], where, field)
        errors: list[str] = []
        for option in forms:
            try:
                return check_value(value, option, where, field)
            except ToolArgumentError as error:
                errors.append(error.problem)
        raise ToolArgumentError(where, field, f"{_describe(value)} matches none of its forms: {' '.join(errors)}")
    kinds = schema.get("type")
    allowed = [kinds] if isinstance(kinds, str) else list(kinds) if isinstance(kinds, list) else []
    if allowed:
        for kind in allowed:
            ok, coerced = _coerce(value, str(kind))
            if ok:
                value = coerced
                break
        else:
            wanted = " or ".join(_TYPE_NAMES.get(str(kind), str(kind)) for kind in allowed)
            raise ToolArgumentError(
                where,
                field,
                f"must be {wanted}, got {_TYPE_NAMES.get(_json_type(value), _json_type(value))} {_describe(value)}.",
            )
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(value == item and type(value) is type(item) for item in enum):
        raise ToolArgumentError(
            where, field, f"{_describe(value)} is not allowed.", f"use one of {', '.join(map(repr, enum))}."
        )
    if isinstance(value, list | tuple):
        items = schema.get("items")
        if isinstance(items, Mapping):
            return [check_value(item, items, where, f"{field}[{index}]") for index, item in enumerate(value)]
        return list(value)
    if isinstance(value, dict) and ("properties" in schema or "additionalProperties" in schema):
        return _check_object(value, schema, where, field)
    return value


def _check_object(
    value: Mapping[str, object], schema: Mapping[str, object], where: str, field: str
) -> dict[str, object]:
    properties = schema.get("properties")
    known: Mapping[str, object] = properties if isinstance(properties, Mapping) else {}
    extra = schema.get("additionalProperties", field != "arguments" and not known)
    prefix = f"{field}." if field else ""
    checked: dict[str, object] = {}
    for key, item in value.items():
        if key in known:
            sub = known[key]
            checked[key] = check_value(item, sub, where, prefix + key) if isinstance(sub, Mapping) else item
        elif isinstance(extra, Mapping):
            checked[key] = check_value(item, extra, where, prefix + key)
        elif extra is True:
            checked[key] = item
        else:
            close = similar_names(key, known)
            hint = f"did you mean {' or '.join(repr(name) for name in close)}? " if close else ""
            names = ", ".join(known) or "none"
            raise ToolArgumentError(
                where, prefix + key, "is not an argument of this tool.", f"{hint}Arguments: {names}."
            )
    required = schema.get("required")
    for key in required if isinstance(required, list) else ():
        if key not in value:
            raise ToolArgumentError(where, prefix + str(key), "is missing.", "pass every required argument.")
    return checked


def check_arguments(tool_name: str, schema: JsonSchema, arguments: object) -> dict[str, object]:
    """The arguments of a call to ``tool_name``, checked against its parameter ``schema``: a JSON object whose
    keys are known parameters, every required one present, each value of its declared type."""
    if not isinstance(arguments, dict):
        raise ToolArgumentError(tool_name, "arguments", f"must be a JSON object, got {_json_type(arguments)}.")
    return _check_object(
        arguments, {**schema, "additionalProperties": schema.get("additionalProperties", False)}, tool_name, "arguments"
    )
