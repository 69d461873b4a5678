"""Config records as data: overrides, field documentation, templates and structural comparison. Pure.

The config records (:class:`tinkerflow.config.SLConfig`, ``DPOConfig``, ``RLConfig``) are the single source of the
command line: this module reads their fields (names, types, defaults) and the ``Attributes:`` sections of their
docstrings (across the class hierarchy, so a shared base record documents its own fields) to

* apply ``key=value`` overrides to config data (:func:`apply_overrides`; dotted keys reach nested records), with
  unknown keys reported by name together with the closest valid field names (:func:`check_known_keys`);
* describe every field, nested record fields included (:func:`describe_fields`, :func:`fields_help`), for
  ``tinkerflow sl --help``;
* write a complete config template, required fields marked with :data:`REQUIRED` (:func:`config_template`);
* compare two configs field by field (:func:`config_differences`), which is how a resumed run decides whether its
  config changed.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
import textwrap
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import attrs

from tinkerflow.errors import ConfigError
from tinkerflow.serde import structure, unstructure

__all__ = [
    "REQUIRED",
    "ConfigChange",
    "FieldDoc",
    "apply_overrides",
    "attribute_docs",
    "check_known_keys",
    "config_differences",
    "config_template",
    "config_to_dict",
    "describe_fields",
    "fields_help",
    "merge_overrides",
    "parse_value",
    "placeholder_fields",
    "type_text",
]

C = TypeVar("C")

#: The value a config template gives a required field: a string no real value equals, so it is easy to spot.
REQUIRED: str = "<required: fill in>"

#: An ``Attributes:`` entry: ``name: doc`` or ``name_a / name_b: doc`` (one doc shared by several fields).
_ENTRY = re.compile(r"^(?P<names>[A-Za-z_]\w*(?:\s*/\s*[A-Za-z_]\w*)*)\s*:(?:\s+(?P<doc>.*))?$")


@attrs.frozen
class FieldDoc:
    """One config field as the command line shows it.

    Attributes:
        name: the field's key; dotted for a field of a nested record (``lr_schedule.kind``).
        type: the field's type in words (``int``, ``str | null``, ``local|tinker``, ``list of wandb|tensorboard``).
        default: the default as JSON text, or ``required`` for a field without one.
        doc: the field's ``Attributes:`` entry (empty when the record does not document it).
    """

    name: str
    type: str
    default: str
    doc: str

    @property
    def required(self) -> bool:
        """Whether the field has no default."""
        return self.default == "required"


@attrs.frozen
class ConfigChange:
    """A field whose value differs between two configs (values as JSON-ready data).

    Attributes:
        field: the field's key, dotted for nested records.
        old: the value in the first config.
        new: the value in the second config.
    """

    field: str
    old: object
    new: object

    def __str__(self) -> str:
        return f"{self.field}: {json.dumps(self.old)} -> {json.dumps(self.new)}"


def parse_value(text: str) -> object:
    """An override's value: JSON when it parses as JSON (``20``, ``null``, ``[1, 2]``), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings need no quotes: run_dir=runs/x


def _hints(cls: type) -> dict[str, object]:
    try:
        return dict(get_type_hints(cls))
    except (NameError, TypeError):  # annotations that do not resolve at run time: fall back to attrs' types
        return {field.name: field.type for field in attrs.fields(cls)}


def _record_class(hint: object) -> type | None:
    """The attrs record class a field holds (directly or as the non-``None`` member of an optional), if any."""
    if isinstance(hint, type) and attrs.has(hint):
        return hint
    if get_origin(hint) in (Union, types.UnionType):
        records = [arg for arg in get_args(hint) if isinstance(arg, type) and attrs.has(arg)]
        return records[0] if len(records) == 1 else None
    return None


def _tuple_fields(cls: type) -> frozenset[str]:
    return frozenset(name for name, hint in _hints(cls).items() if get_origin(hint) is tuple)


def check_known_keys(data: Mapping[str, object], cls: type, *, prefix: str = "", where: str = "") -> None:
    """Raise :class:`ConfigError` for a key of ``data`` that is not a field of ``cls`` (nested records too).

    The error names the key and the closest valid field names.
    """
    where = where or cls.__name__
    fields = {field.name: field for field in attrs.fields(cls)}
    hints = _hints(cls)
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(prefix + name for name in close)}? " if close else ""
            raise ConfigError(
                where, prefix + key, "is not a field of this config.", f"{hint}The command's --help lists every field."
            )
        nested = _record_class(hints.get(key))
        if nested is not None and isinstance(value, Mapping):
            check_known_keys(cast("Mapping[str, object]", value), nested, prefix=f"{prefix}{key}.", where=where)


def _field_hint(cls: type, parts: Sequence[str]) -> object:
    """The type of the (dotted) field ``parts`` of the record ``cls``, or ``None`` when it is not a field."""
    hint: object = None
    record: type | None = cls
    for part in parts:
        if record is None:
            return None
        hint = _hints(record).get(part)
        record = _record_class(hint)
    return hint


def _takes_text(hint: object) -> bool:
    """Whether a field of type ``hint`` holds free text (``str``, or ``str | None``): no number or bool fits it."""
    if hint is str:
        return True
    if get_origin(hint) in (Union, types.UnionType):
        args = [arg for arg in get_args(hint) if arg is not type(None)]
        return args == [str]
    return False


def merge_overrides(data: Mapping[str, object], overrides: Sequence[str], cls: type) -> dict[str, object]:
    """A copy of ``data`` with ``key=value`` overrides applied (dotted keys reach nested records), not yet checked.

    Values are JSON when they parse as JSON (``max_steps=20``, ``renderer=null``), else plain strings; a plain
    string given to a top-level tuple field of ``cls`` is a one-item list (``log_to=tensorboard``). A text field
    (``str``, ``str | None``) takes the value's text as written (``run_dir=2024`` is the string ``"2024"``; ``null``
    still clears an optional one); every other value keeps its JSON type and is checked strictly when the config is
    built (``batch_size=2.5`` and ``save_every=false`` are errors, never coerced).

    Raises:
        ConfigError: an override is not ``key=value``, or its dotted key passes through a value that is not a record.
    """
    merged: dict[str, object] = json.loads(json.dumps(dict(data)))
    tuple_fields = _tuple_fields(cls)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError("overrides", override, "is not of the form key=value.", "write e.g. max_steps=20.")
        target = merged
        parts = key.split(".")
        for part in parts[:-1]:
            child = target.get(part)
            if child is None:
                child = {}
                target[part] = child
            if not isinstance(child, dict):
                raise ConfigError("overrides", key, f"{part!r} is not a nested record.")
            target = cast("dict[str, object]", child)
        value = parse_value(raw)
        if value is not None and not isinstance(value, str) and _takes_text(_field_hint(cls, parts)):
            value = raw
        if len(parts) == 1 and isinstance(value, str) and key in tuple_fields:
            value = [value]
        target[parts[-1]] = value
    return merged


def apply_overrides(data: Mapping[str, object], overrides: Sequence[str], cls: type[C]) -> C:
    """``cls`` built from ``data`` with ``key=value`` overrides applied (:func:`merge_overrides`).

    Unknown keys (naming the closest fields, :func:`check_known_keys`) and invalid values raise a
    :class:`~tinkerflow.errors.ConfigError` naming them (a value of the wrong type too: no coercion, see
    :func:`tinkerflow.serde.structure`).
    """
    merged = merge_overrides(data, overrides, cls)
    check_known_keys(merged, cls)
    return structure(merged, cls)


def config_to_dict(config: object) -> dict[str, object]:
    """A config as plain JSON-ready data."""
    return cast("dict[str, object]", unstructure(config))


def _parse_attributes(doc: str) -> Iterator[tuple[str, str]]:
    """``(name, doc)`` for each entry of a docstring's ``Attributes:`` section (continuation lines joined)."""
    lines = inspect.cleandoc(doc).splitlines()
    starts = [index for index, line in enumerate(lines) if line.strip() == "Attributes:"]
    if not starts:
        return
    header_indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip())
    names: list[str] = []
    parts: list[str] = []
    entry_indent: int | None = None
    for line in lines[starts[0] + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header_indent:
            break
        entry_indent = indent if entry_indent is None else entry_indent
        match = _ENTRY.match(line.strip()) if indent == entry_indent else None
        if match is None:
            parts.append(line.strip())
            continue
        yield from ((name, " ".join(parts)) for name in names)
        names = [name.strip() for name in match["names"].split("/")]
        parts = [match["doc"] or ""]
    yield from ((name, " ".join(parts)) for name in names)


def attribute_docs(cls: type) -> dict[str, str]:
    """Each field's ``Attributes:`` entry, from the docstrings of ``cls`` and its bases (the nearest class wins)."""
    docs: dict[str, str] = {}
    for klass in cls.__mro__:
        own = klass.__dict__.get("__doc__")
        if isinstance(own, str):
            for name, doc in _parse_attributes(own):
                docs.setdefault(name, doc.replace("``", "").strip())
    return docs


def type_text(hint: object) -> str:
    """A field type in words for people (``str | null``, ``local|tinker``, ``list of int``)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "|".join(str(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in args)
    if origin in (tuple, list):
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"object of {type_text(args[1])}" if len(args) == 2 else "object"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint)


def _default(field: attrs.Attribute[object]) -> tuple[bool, object]:
    """``(has_default, value)`` of an attrs field (a factory is called; one that needs ``self`` has none here)."""
    default = field.default
    if default is attrs.NOTHING:
        return False, None
    factory = getattr(default, "factory", None)  # an attrs.Factory (typed as a function by attrs' stubs)
    if callable(factory) and isinstance(getattr(default, "takes_self", None), bool):
        return (False, None) if getattr(default, "takes_self", False) else (True, factory())
    return True, default


def _field_defaults(cls: type, instance: object | None) -> Iterator[tuple[attrs.Attribute[object], bool, object]]:
    for field in attrs.fields(cls):
        if instance is not None:
            yield field, True, getattr(instance, field.name)
        else:
            has, value = _default(field)
            yield field, has, value


def describe_fields(cls: type, *, prefix: str = "", instance: object | None = None) -> tuple[FieldDoc, ...]:
    """Every field of the record ``cls`` (nested record fields follow their parent, dotted), with type, default
    and documentation. ``instance`` supplies the defaults of a nested record (the parent's default value)."""
    docs, hints = attribute_docs(cls), _hints(cls)
    summary = (inspect.getdoc(cls) or "").partition("\n")[0]
    undocumented = f"a field of {cls.__name__}" + (f" ({summary.rstrip('.')})" if summary else "") + "."
    described: list[FieldDoc] = []
    for field, has_default, value in _field_defaults(cls, instance):
        hint = hints.get(field.name, field.type)
        default = json.dumps(unstructure(value)) if has_default else "required"
        described.append(FieldDoc(prefix + field.name, type_text(hint), default, docs.get(field.name, undocumented)))
        nested = _record_class(hint)
        if nested is not None and has_default and isinstance(value, nested):
            described.extend(describe_fields(nested, prefix=f"{prefix}{field.name}.", instance=value))
    return tuple(described)


def fields_help(cls: type, *, width: int = 100) -> str:
    """The fields of ``cls`` as help text: one ``name (type) = default`` line each, then its wrapped doc."""
    lines: list[str] = []
    for field in describe_fields(cls):
        default = "REQUIRED" if field.required else f"default {field.default}"
        lines.append(f"  {field.name} ({field.type}; {default})")
        if field.doc:
            lines.extend(textwrap.wrap(field.doc, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def config_template(cls: type) -> dict[str, object]:
    """Every field of ``cls`` with its default, as JSON-ready data; required fields hold :data:`REQUIRED`."""
    return {field.name: unstructure(value) if has else REQUIRED for field, has, value in _field_defaults(cls, None)}


def placeholder_fields(data: Mapping[str, object], *, prefix: str = "") -> list[str]:
    """The (dotted) keys of ``data`` that still hold the template's :data:`REQUIRED` placeholder."""
    found: list[str] = []
    for key, value in data.items():
        if value == REQUIRED:
            found.append(prefix + key)
        elif isinstance(value, Mapping):
            found.extend(placeholder_fields(cast("Mapping[str, object]", value), prefix=f"{prefix}{key}."))
    return found


def config_differences(old: object, new: object, *, prefix: str = "") -> tuple[ConfigChange, ...]:
    """The fields whose values differ between two configs of one record class, compared field by field (nested
    records recursively; every other value by equality)."""
    if type(old) is not type(new) or not attrs.has(type(old)):
        raise TypeError(f"config_differences compares two records of one class, got {type(old)} and {type(new)}.")
    changes: list[ConfigChange] = []
    for field in attrs.fields(cast("type[attrs.AttrsInstance]", type(old))):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if attrs.has(type(before)) and type(before) is type(after):
            changes.extend(config_differences(before, after, prefix=f"{prefix}{field.name}."))
        elif before != after:
            changes.append(ConfigChange(prefix + field.name, unstructure(before), unstructure(after)))
    return tuple(changes)
