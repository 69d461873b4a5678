"""Kimi tool declarations: K2's compact JSON list and K2.5 / K2.6's TypeScript-style namespace.

Both are the text of the ``tool_declare`` message the Kimi templates write before the system prompt. The
TypeScript form follows Moonshot's ``tool_declaration_ts`` (as vendored by tinker-cookbook 0.6.1): one
``type NAME = (_: {...}) => any;`` per function inside ``namespace functions { ... }``, required parameters
first (each group sorted by name), descriptions, constraints and defaults as ``//`` comments, ``$defs`` as
``interface`` declarations and ``{"$ref": "#"}`` as a recursive ``parameters`` interface.

Pure functions of the tool specs; a schema the format cannot express is a :class:`KimiToolSchemaError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from tinkerflow.chat import ToolSpec

__all__ = ["KimiToolSchemaError", "kimi_k2_tools_json", "kimi_typescript_tools"]

_INDENT: Final = "  "
_FIELDS: Final = ",\n"
_UNION_NAMES: Final[Mapping[str, str]] = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "null": "null",
    "object": "{}",
    "array": "Array<any>",
}
_SCALAR_CONSTRAINTS: Final[Mapping[str, tuple[str, ...]]] = {
    "string": ("maxLength", "minLength", "pattern"),
    "number": ("maximum", "minimum"),
    "integer": ("maximum", "minimum"),
}


class KimiToolSchemaError(ValueError):
    """A tool's JSON schema cannot be written as a Kimi TypeScript declaration (what the problem is)."""


def kimi_k2_tools_json(tools: Sequence[ToolSpec]) -> str:
    """Kimi K2's declaration: ``[{"function": {...}, "type": "function"}, ...]``, keys sorted, no spaces."""
    payload = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": json.loads(t.parameters)},
        }
        for t in tools
    ]
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def _comment(text: str, indent: str = "") -> str:
    return "\n".join(f"{indent}// {line}" if line else "" for line in text.split("\n"))


class _Registry:
    """``$defs`` seen so far (in order) and whether the root refers to itself (``#``)."""

    def __init__(self) -> None:
        self.definitions: dict[str, object] = {}
        self.self_reference = False


class _Type:
    """A parsed schema node: its description and constraints (comments) and its TypeScript text."""

    def __init__(self, schema: Mapping[str, object], constraint_keys: Sequence[str] = ()) -> None:
        description = schema.get("description", "")
        self.description = description if isinstance(description, str) else str(description)
        self.constraints = sorted((key, value) for key, value in schema.items() if key in constraint_keys)

    def comments(self, indent: str) -> str:
        lines: list[str] = []
        if self.description:
            lines.append(_comment(self.description, indent))
        if self.constraints:
            lines.append(f"{indent}// " + ", ".join(f"{key}: {value}" for key, value in self.constraints))
        return "".join(line + "\n" for line in lines)

    def text(self, indent: str = "") -> str:
        raise NotImplementedError


class _Named(_Type):
    """A scalar (``string``, ``number``, ``any``, ...), a ``$ref`` name, or a union of type names."""

    def __init__(self, schema: Mapping[str, object], spelled: str, constraint_keys: Sequence[str] = ()) -> None:
        super().__init__(schema, constraint_keys)
        self.spelled = spelled

    def text(self, indent: str = "") -> str:
        return self.spelled


class _Field:
    def __init__(self, name: str, kind: _Type, optional: bool, default: object) -> None:
        self.name, self.kind, self.optional, self.default = name, kind, optional, default

    def text(self, indent: str) -> str:
        comments = self.kind.comments(indent)
        if self.default is not None:
            shown = (
                repr(self.default)
                if isinstance(self.default, (int, float))
                else json.dumps(self.default, ensure_ascii=False)
            )
            comments += f"{indent}// Default: {shown}\n"
        mark = "?" if self.optional else ""
        return f"{comments}{indent}{self.name}{mark}: {self.kind.text(indent)}"


class _Object(_Type):
    def __init__(self, schema: Mapping[str, object], registry: _Registry) -> None:
        super().__init__(schema)
        self.fields: list[_Field] = []
        self.extra: _Type | object | None = None
        if not schema:
            return
        definitions = schema.get("$defs")
        if isinstance(definitions, Mapping) and definitions:
            registry.definitions.update(definitions)
        extra = schema.get("additionalProperties")
        self.extra = _parse(extra, registry) if isinstance(extra, Mapping) else extra
        if "properties" not in schema:
            return
        properties = _mapping(schema["properties"], "properties")
        required = schema.get("required", [])
        required_names = set(required) if isinstance(required, (list, tuple)) else set()
        for name, prop in properties.items():
            default = prop.get("default") if isinstance(prop, Mapping) else None
            self.fields.append(_Field(str(name), _parse(prop, registry), name not in required_names, default))

    def text(self, indent: str = "") -> str:
        ordered = sorted((f for f in self.fields if not f.optional), key=lambda f: f.name)
        ordered += sorted((f for f in self.fields if f.optional), key=lambda f: f.name)
        inner = indent + _INDENT
        lines = [field.text(inner) for field in ordered]
        if self.extra is not None:
            if self.extra is True:
                shown = "any"
            elif self.extra is False:
                shown = "never"
            elif isinstance(self.extra, _Type):
                shown = self.extra.text(inner)
            else:
                raise KimiToolSchemaError(f"additionalProperties {self.extra!r} is neither a schema nor a boolean")
            lines.append(f"{inner}[k: string]: {shown}")
        if not lines:
            return "{}"
        return "{\n" + _FIELDS.join(lines) + "\n" + indent + "}"


class _Array(_Type):
    def __init__(self, schema: Mapping[str, object], registry: _Registry) -> None:
        super().__init__(schema, ("minItems", "maxItems"))
        items = schema.get("items")
        self.item: _Type = _parse(items, registry) if items else _Named({}, "any")

    def text(self, indent: str = "") -> str:
        inner = indent + _INDENT
        comments = self.item.comments(inner)
        if comments:
            return "Array<\n" + comments + inner + self.item.text(inner) + "\n" + indent + ">"
        return f"Array<{self.item.text(indent)}>"


class _Enum(_Type):
    _CHECKS: Final[Mapping[str, Callable[[object], bool]]] = {
        "string": lambda value: isinstance(value, str),
        "number": lambda value: isinstance(value, (int, float)),
        "integer": lambda value: isinstance(value, int),
        "boolean": lambda value: isinstance(value, bool),
    }

    def __init__(self, schema: Mapping[str, object]) -> None:
        super().__init__(schema)
        values = schema["enum"]
        if not isinstance(values, (list, tuple)):
            raise KimiToolSchemaError(f"enum {values!r} is not a list")
        self.values = list(values)
        if "type" in schema:
            self._check(schema["type"])

    def _check(self, declared: object) -> None:
        if isinstance(declared, list):
            if len(declared) == 2 and "null" in declared:
                declared = declared[0] if declared[0] != "null" else declared[1]
            elif len(declared) == 1:
                declared = declared[0]
            else:
                raise KimiToolSchemaError(f"enum type {declared!r} is not supported")
        check = self._CHECKS.get(declared) if isinstance(declared, str) else None
        for value in self.values:
            if value is not None and check is not None and not check(value):
                raise KimiToolSchemaError(f"enum value {value!r} is not a {declared}")

    def text(self, indent: str = "") -> str:
        return " | ".join(f'"{value}"' if isinstance(value, str) else str(value) for value in self.values)


class _AnyOf(_Type):
    def __init__(self, schema: Mapping[str, object], registry: _Registry) -> None:
        super().__init__(schema)
        members = schema["anyOf"]
        if not isinstance(members, (list, tuple)):
            raise KimiToolSchemaError(f"anyOf {members!r} is not a list")
        self.members = [_parse(member, registry) for member in members]

    def text(self, indent: str = "") -> str:
        return " | ".join(member.text(indent) for member in self.members)


def _mapping(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise KimiToolSchemaError(f"{what} {value!r} is not an object")
    return value


def _reference(schema: Mapping[str, object], registry: _Registry) -> _Type:
    ref = schema["$ref"]
    if ref == "#":
        registry.self_reference = True
        return _Named(schema, "parameters")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.split("/")[-1]
        if name not in registry.definitions:
            raise KimiToolSchemaError(f"reference not found: {ref}")
        return _Named(schema, name)
    raise KimiToolSchemaError(f"unsupported reference format: {ref!r}")


def _parse(schema: object, registry: _Registry) -> _Type:
    if isinstance(schema, bool):
        return _Named({}, "any" if schema else "null")
    schema = _mapping(schema, "schema")
    if "$ref" in schema:
        return _reference(schema, registry)
    if "anyOf" in schema:
        return _AnyOf(schema, registry)
    if "enum" in schema:
        return _Enum(schema)
    if "type" in schema:
        kind = schema["type"]
        if isinstance(kind, list):
            unknown = [name for name in kind if name not in _UNION_NAMES]
            if unknown:
                raise KimiToolSchemaError(f"unknown type names {unknown!r} in a type list")
            return _Named(schema, " | ".join(_UNION_NAMES[name] for name in kind))
        if kind == "object":
            return _Object(schema, registry)
        if kind == "array":
            return _Array(schema, registry)
        spelled = "number" if kind == "integer" else str(kind)
        keys = _SCALAR_CONSTRAINTS.get(kind, ()) if isinstance(kind, str) else ()
        return _Named(schema, spelled, keys)
    if not schema:
        return _Named({}, "any")
    raise KimiToolSchemaError(f"invalid JSON schema object: {dict(schema)!r}")


def _function(tool: ToolSpec) -> str:
    registry = _Registry()
    parameters = json.loads(tool.parameters) or {}
    root = _Object(_mapping(parameters, "parameters"), registry)
    interfaces: list[str] = []
    recursive = registry.self_reference  # decided by the root's own fields (definitions may refer to "#" too)
    if recursive:
        body = _FIELDS.join(field.text(_INDENT) for field in root.fields)
        interfaces.append("interface parameters {" + (f"\n{body}\n" if body else "") + "}")
    for name, definition in list(registry.definitions.items()):
        definition = _mapping(definition, f"$defs entry {name!r}")
        declared = _parse(definition, registry).text()
        description = definition.get("description", "")
        head = _comment(str(description)) + "\n" if description else ""
        interfaces.append(f"{head}interface {name} {declared}")
    signature = "parameters" if recursive else root.text()
    pieces = ["\n".join(interfaces), _comment(tool.description) if tool.description else ""]
    pieces.append(f"type {tool.name} = (_: {signature}) => any;")
    return "\n".join(piece for piece in pieces if piece)


def kimi_typescript_tools(tools: Sequence[ToolSpec]) -> str:
    """Kimi K2.5 / K2.6's declaration of ``tools`` (``""`` for none).

    Raises:
        KimiToolSchemaError: a schema the TypeScript form cannot express (an unknown ``$ref``, an enum value of
            the wrong type, an ``additionalProperties`` that is no schema or boolean, ...).
    """
    if not tools:
        return ""
    functions = "\n".join(_function(tool) for tool in tools)
    return "# Tools\n\n## functions\nnamespace functions {\n" + functions + "\n}\n"
