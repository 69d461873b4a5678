"""A tool's JSON schema, derived from a typed Python function: its signature and its docstring.

* :func:`parameters_schema`: ``{"type": "object", "properties": ..., "required": [...]}`` from the signature. Each
  parameter needs an annotation among ``str``, ``int``, ``float``, ``bool``, ``list[X]`` / ``Sequence[X]`` /
  ``tuple[X, ...]``, ``dict[str, X]``, ``Literal[...]`` (strings, ints, bools), ``X | None`` / ``Optional[X]`` and
  ``Annotated[X, "description"]``; a parameter with a default is optional (its default is shown when it is JSON).
  ``*args``, ``**kwargs`` and anything else are refused with a :class:`~tinkerflow.errors.ConfigError` naming the
  parameter.
* :func:`parse_docstring`: the summary (the text before the first section) and the per-parameter descriptions of a
  Google-style ``Args:`` section (``name: text`` or ``name (type): text``, continuation lines indented) or a
  NumPy-style ``Parameters`` section (``name : type`` then indented text).

Pure: no I/O. The result is plain JSON data (dicts, lists, strings, numbers).
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Final, Literal, Union, get_args, get_origin

from tinkerflow.errors import ConfigError

__all__ = ["JsonSchema", "parameters_schema", "parse_docstring", "type_schema"]

#: A JSON schema (plain JSON data).
JsonSchema = dict[str, object]

_PRIMITIVES: Final[dict[type, str]] = {str: "string", bool: "boolean", int: "integer", float: "number"}
_GOOGLE_HEADERS: Final = frozenset({"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"})
_OTHER_HEADERS: Final = frozenset(
    {"returns", "return", "yields", "raises", "examples", "example", "notes", "note", "see also", "attributes"}
)
_GOOGLE_ITEM: Final = re.compile(r"^(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_NUMPY_ITEM: Final = re.compile(r"^(\*{0,2}\w+)\s*(?::\s*(.*))?$")
_UNDERLINE: Final = re.compile(r"^\s*-{3,}\s*$")


def _literal_schema(values: tuple[object, ...], where: str) -> JsonSchema:
    kinds: set[str] = set()
    for value in values:
        if isinstance(value, bool):
            kinds.add("boolean")
        elif isinstance(value, int):
            kinds.add("integer")
        elif isinstance(value, str):
            kinds.add("string")
        else:
            raise ConfigError(where, "annotation", f"Literal value {value!r} is not a str, int or bool.")
    schema: JsonSchema = {"enum": list(values)}
    if len(kinds) == 1:
        schema = {"type": kinds.pop(), **schema}
    return schema


def _nullable(schema: JsonSchema) -> JsonSchema:
    kind = schema.get("type")
    if isinstance(kind, str) and set(schema) <= {"type", "description"}:
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _union_schema(members: tuple[object, ...], where: str) -> JsonSchema:
    present = [member for member in members if member is not type(None)]
    if len(present) == len(members) or len(present) != 1:
        raise ConfigError(
            where, "annotation", f"unions are supported only as 'X | None', got {members!r}.", "use one type."
        )
    return _nullable(type_schema(present[0], where))


def type_schema(annotation: object, where: str) -> JsonSchema:
    """The JSON schema of one parameter annotation (see the module docstring); ``where`` names the parameter in
    the :class:`~tinkerflow.errors.ConfigError` of an unsupported annotation."""
    if isinstance(annotation, type) and annotation in _PRIMITIVES:
        return {"type": _PRIMITIVES[annotation]}
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        schema = type_schema(args[0], where)
        text = next((meta for meta in args[1:] if isinstance(meta, str)), None)
        return {**schema, "description": text} if text else schema
    if origin is Literal:
        return _literal_schema(args, where)
    if origin is Union or origin is types.UnionType:
        return _union_schema(args, where)
    if origin in (list, collections.abc.Sequence) and len(args) == 1:
        return {"type": "array", "items": type_schema(args[0], where)}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": type_schema(args[0], where)}
    if origin in (dict, collections.abc.Mapping) and len(args) == 2 and args[0] is str:
        return {"type": "object", "additionalProperties": type_schema(args[1], where)}
    raise ConfigError(
        where,
        "annotation",
        f"{annotation!r} has no JSON schema here.",
        "use str, int, float, bool, list[X], dict[str, X], Literal[...], X | None or Annotated[X, 'description'].",
    )


def _section_header(line: str) -> str | None:
    """The lowercased section name of a Google header (``Args:``), or ``None``."""
    stripped = line.strip()
    if stripped.endswith(":") and stripped[:-1].lower() in _GOOGLE_HEADERS | _OTHER_HEADERS:
        return stripped[:-1].lower()
    return None


def _section_items(lines: list[str], numpy: bool) -> dict[str, str]:
    """The items of a docstring section body: Google ``name: text`` (continuation lines indented deeper than the
    item) or NumPy ``name : type``, each followed by its indented description."""
    pattern = _NUMPY_ITEM if numpy else _GOOGLE_ITEM
    found: dict[str, str] = {}
    indent: int | None = None
    current: str | None = None
    for line in lines:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        match = pattern.match(line.strip()) if depth <= indent else None
        if match is not None:
            current = match.group(1).lstrip("*")
            found[current] = "" if numpy else match.group(3).strip()
        elif current is not None:
            found[current] = (found[current] + " " + line.strip()).strip()
    return found


def _is_numpy_header(lines: list[str], index: int) -> bool:
    line = lines[index]
    return (
        index + 1 < len(lines)
        and bool(line.strip())
        and not line[0].isspace()
        and _UNDERLINE.match(lines[index + 1]) is not None
    )


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """``(summary, {parameter: description})`` of a Google- or NumPy-style docstring (see the module docstring).
    The summary is the text before the first section, each paragraph joined into one line."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None  # None: still in the summary; "": a section whose body is not read
    numpy = False
    body: list[str] = []

    def close() -> None:
        if section in _GOOGLE_HEADERS:
            params.update(_section_items(body, numpy))
        body.clear()

    index = 0
    while index < len(lines):
        line = lines[index]
        header = _section_header(line) if line[:1].strip() else None
        if header is not None or _is_numpy_header(lines, index):
            close()
            numpy = header is None
            section = header if header is not None else line.strip().lower()
            index += 1 if header is not None else 2
            continue
        if section is None:
            summary.append(line)
        elif not numpy and line[:1].strip():
            close()  # an unindented line ends a Google section
            section = ""
        else:
            body.append(line)
        index += 1
    close()
    paragraphs = [" ".join(part.split()) for part in re.split(r"\n\s*\n", "\n".join(summary))]
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph), params


def _json_default(value: object) -> tuple[bool, object]:
    """Whether a default is JSON, and its JSON form (a tuple becomes a list)."""
    try:
        return True, json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return False, None


def parameters_schema(function: Callable[..., object], where: str | None = None) -> JsonSchema:
    """The JSON schema of ``function``'s parameters (see the module docstring), with the descriptions of its
    docstring's ``Args:`` / ``Parameters`` section."""
    name: str = where or str(getattr(function, "__name__", type(function).__name__))
    try:
        signature = inspect.signature(function)
        hints = typing.get_type_hints(function, include_extras=True)
    except (TypeError, ValueError, NameError) as error:
        raise ConfigError(
            name, "signature", f"cannot be read ({error}).", "declare the tool as a plain function."
        ) from error
    _, described = parse_docstring(inspect.getdoc(function))
    properties: dict[str, object] = {}
    required: list[str] = []
    for parameter in signature.parameters.values():
        field = f"{name}.{parameter.name}"
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ConfigError(name, parameter.name, "*args and **kwargs have no JSON schema.", "name every parameter.")
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise ConfigError(name, parameter.name, "is positional-only.", "tools are called with keyword arguments.")
        if parameter.name not in hints:
            raise ConfigError(name, parameter.name, "has no type annotation.", "annotate it (e.g. 'x: int').")
        schema = type_schema(hints[parameter.name], field)
        if parameter.name in described and "description" not in schema:
            schema = {**schema, "description": described[parameter.name]}
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
        else:
            shown, default = _json_default(parameter.default)
            if shown:
                schema = {**schema, "default": default}
        properties[parameter.name] = schema
    return {"type": "object", "properties": properties, "required": required}
