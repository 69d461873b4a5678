"""JSON (de)serialization of every tinkerflow record and config through one ``cattrs`` converter.

No pickle anywhere: records become plain JSON objects, arrays become lists, bytes become base64 text, and the
union-typed fields carry a ``"type"`` tag. Round trips are exact: ``from_json(to_json(x), type(x)) == x``
(float32 values survive because every float32 is exactly representable as a JSON double).

Non-finite floats never reach JSON except as ``null`` for NaN in arrays that allow it (prompt logprobs, where NaN
marks "not computed").

Structuring is strict about scalar types, never coercing one into another: an ``int`` field takes an int (or a float
with no fraction, ``2.0``; never ``2.5`` nor ``true``), a ``float`` field an int or a float (never a bool or a
string), a ``str`` field a string of valid Unicode (no lone surrogate), a ``bool`` field ``true``/``false``, a
``Literal`` field one of its values, a list or tuple field a JSON list (never a string, which would be split into
letters), a record or mapping field a JSON object. Data that cannot become the record raises
:class:`RecordDataError` (a :class:`~tinkerflow.errors.SerializationError` and a
:class:`~tinkerflow.errors.ValidationError`) naming the record and the dotted field
(``SLConfig.lr_schedule.warmup_steps: must be an int, got 2.5.``); a wrong value of a config (a type mismatch, a
missing or unknown key, an out-of-range or non-finite value) raises :class:`ConfigDataError`, which is a
:class:`~tinkerflow.errors.ConfigError` too.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import numbers
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal, TypeVar, Union, cast, get_args, get_origin

import attrs
import cattrs
import numpy as np
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    is_mapping,
    is_mutable_sequence,
    is_sequence,
    list_structure_factory,
)
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.preconf.json import make_converter
from cattrs.strategies import configure_tagged_union
from cattrs.v import format_exception
from jaxtyping import AbstractArray

from tinkerflow._validate import check_text, unknown_key_fix
from tinkerflow.chat import Content, ContentPart, ImagePart, TextPart, ThinkingPart
from tinkerflow.datum import PromptSpan, ProvenanceSpan, SampledSpan
from tinkerflow.errors import ConfigError, SerializationError, TinkerflowError, ValidationError
from tinkerflow.model_input import Chunk, ImageChunk, TokenChunk

__all__ = [
    "ConfigDataError",
    "RecordDataError",
    "converter",
    "from_json",
    "structure",
    "to_json",
    "unstructure",
]

T = TypeVar("T")

converter: cattrs.Converter = make_converter(forbid_extra_keys=True)
"""The one converter. Use it (or the helpers below) for every record; extend it with ``register_*_hook``."""


class RecordDataError(SerializationError, ValidationError):
    """Plain data that cannot become a record: ``where`` is the record class, ``field`` the dotted path of the bad
    value (``lr_schedule.warmup_steps``, ``log_to[1]``)."""


class ConfigDataError(RecordDataError, ConfigError):
    """A :class:`RecordDataError` that is a :class:`~tinkerflow.errors.ConfigError` too: a value of the wrong type,
    a missing or unknown key, or a value its record's validation refused as out of range."""


class _WrongValueError(Exception):
    """A scalar of the wrong type (or a value outside a ``Literal``), raised by the strict hooks below."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def _shown(value: object) -> str:
    """A value as a message shows it: JSON where it is a JSON scalar, with its type unless it is a number."""
    scalar = isinstance(value, (bool, int, float, str)) or value is None
    text = (json.dumps(value) if scalar else repr(value))[:60]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return text if number else f"{text} (a {type(value).__name__})"


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _WrongValueError(
        f"must be an int, got {_shown(value)}.", "write a whole number (true/false and fractions are not ints)."
    )


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise _WrongValueError(
        f"must be a number, got {_shown(value)}.", "write a number without quotes (true/false is not a number)."
    )


def _structure_str(value: object, _: type) -> str:
    if isinstance(value, str):
        try:
            return check_text(value, "", "")  # no lone surrogate: it could be neither printed nor saved as UTF-8
        except ValidationError as error:
            raise _WrongValueError(error.problem, error.fix) from error
    raise _WrongValueError(f"must be a string, got {_shown(value)}.", "write text (in JSON, in quotes).")


def _structure_bool(value: object, _: type) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise _WrongValueError(f"must be true or false, got {_shown(value)}.")


def _is_literal(type_: object) -> bool:
    return getattr(type_, "__origin__", None) is Literal


def _structure_literal(value: object, type_: type) -> object:
    for allowed in get_args(type_):
        if value == allowed and type(value) is type(allowed):
            return allowed
    choices = ", ".join(json.dumps(allowed) for allowed in get_args(type_))
    raise _WrongValueError(f"must be one of {choices}, got {_shown(value)}.")


_SCALARS: dict[type, str] = {bool: "true/false", int: "an int", float: "a number", str: "a string"}


def _is_scalar_union(type_: object) -> bool:
    """A union of scalar types only (``int | float | str | bool``, optionally ``| None``)."""
    if get_origin(type_) not in (Union, types.UnionType):
        return False
    members = [arg for arg in get_args(type_) if arg is not type(None)]
    return len(members) > 1 and all(arg in _SCALARS for arg in members)


def _structure_scalar_union(value: object, type_: type) -> object:
    members = get_args(type_)
    if value is None and type(None) in members:
        return None
    if type(value) in members:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and float in members and int not in members:
        return float(value)
    kinds = " or ".join(_SCALARS[arg] for arg in members if arg in _SCALARS)
    raise _WrongValueError(f"must be {kinds}, got {_shown(value)}.")


def _is_list_type(type_: object) -> bool:
    """A homogeneous sequence type (``tuple[X, ...]``, ``list[X]``, ``Sequence[X]``)."""
    return type_ not in (str, bytes) and is_sequence(type_)


def _structure_list_factory(type_: type) -> Callable[[object, type], object]:
    inner = (list_structure_factory if is_mutable_sequence(type_) else homogenous_tuple_structure_factory)(
        type_, converter
    )

    def structure_list(value: object, cl: type) -> object:
        if isinstance(value, (str, bytes, bytearray, Mapping)) or not isinstance(value, Sequence):
            raise _WrongValueError(f"must be a list, got {_shown(value)}.", "write a JSON list: [...].")
        return inner(value, cl)

    return structure_list


def _is_object_type(type_: object) -> bool:
    """A record (attrs class) or a mapping type: both are JSON objects."""
    return (isinstance(type_, type) and attrs.has(type_)) or is_mapping(type_)


def _structure_object_factory(type_: type) -> Callable[[object, type], object]:
    inner = (
        converter.gen_structure_attrs_fromdict(type_) if attrs.has(type_) else converter.gen_structure_mapping(type_)
    )

    def structure_object(value: object, cl: type) -> object:
        if not isinstance(value, Mapping):  # cattrs would iterate it, or fail naming no field
            raise _WrongValueError(f"must be an object, got {_shown(value)}.", "write a JSON object: {...}.")
        return inner(cast("Mapping[str, object]", value), cl)

    return structure_object


# Registered first, so the more specific hooks below (arrays, tagged unions, content) take precedence.
converter.register_structure_hook_factory(_is_list_type, _structure_list_factory)
converter.register_structure_hook_factory(_is_object_type, _structure_object_factory)
converter.register_structure_hook_func(_is_scalar_union, _structure_scalar_union)
converter.register_structure_hook(int, _structure_int)
converter.register_structure_hook(float, _structure_float)
converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook(bool, _structure_bool)
converter.register_structure_hook_func(_is_literal, _structure_literal)


def _is_array_type(type_: object) -> bool:
    return isinstance(type_, type) and issubclass(type_, AbstractArray)


def _unstructure_array(array: np.ndarray) -> object:
    """1-D arrays become lists; arrays of 2+ dims become ``{"shape": [...], "data": [flat]}`` (exact when empty)."""
    data: object = array.ravel().tolist()
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        data = [None if isinstance(item, float) and math.isnan(item) else item for item in cast("list[object]", data)]
    if array.ndim == 1:
        return data
    return {"shape": list(array.shape), "data": data}


def _structure_array_factory(type_: type) -> Callable[[object, type], np.ndarray]:
    dtypes = cast("list[str]", getattr(type_, "dtypes", []))
    dtype = np.dtype(dtypes[0]) if len(dtypes) == 1 else None

    def structure_array(value: object, _: type) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        shape: list[int] | None = None
        if isinstance(value, dict):
            mapping = cast("dict[str, object]", value)
            if set(mapping) != {"shape", "data"} or not isinstance(mapping["shape"], list):
                raise SerializationError('an array object must have exactly the keys "shape" and "data"')
            shape = cast("list[int]", mapping["shape"])
            value = mapping["data"]
        if not isinstance(value, list):
            raise SerializationError(f"expected a JSON list for an array, got {type(value).__name__}")
        items = cast("list[object]", value)
        if dtype is not None and dtype.kind == "f":
            if any(item is None for item in items):
                items = [math.nan if item is None else item for item in items]
            array = np.array(items, dtype=dtype)
        else:
            array = np.array(items)
        if shape is not None:
            try:
                array = array.reshape(shape)
            except ValueError as error:
                raise SerializationError(f"array data of {array.size} values does not fit shape {shape}") from error
        return array

    return structure_array


converter.register_unstructure_hook_func(_is_array_type, _unstructure_array)
converter.register_unstructure_hook(np.ndarray, _unstructure_array)  # arrays inside Optional fields
converter.register_structure_hook_factory(_is_array_type, _structure_array_factory)


def _unstructure_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _structure_bytes(value: object, _: type) -> bytes:
    if not isinstance(value, str):
        raise SerializationError(f"expected base64 text for bytes, got {type(value).__name__}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise SerializationError(f"invalid base64 text for bytes: {error}") from error


converter.register_unstructure_hook(bytes, _unstructure_bytes)
converter.register_structure_hook(bytes, _structure_bytes)

_PART_TAGS: dict[type, str] = {TextPart: "text", ThinkingPart: "thinking", ImagePart: "image"}
_CHUNK_TAGS: dict[type, str] = {TokenChunk: "tokens", ImageChunk: "image"}
configure_tagged_union(ContentPart, converter, tag_generator=lambda cls: _PART_TAGS[cls], tag_name="type")
configure_tagged_union(Chunk, converter, tag_generator=lambda cls: _CHUNK_TAGS[cls], tag_name="type")
_SPAN_TAGS: dict[type, str] = {PromptSpan: "prompt", SampledSpan: "sampled"}
configure_tagged_union(ProvenanceSpan, converter, tag_generator=lambda cls: _SPAN_TAGS[cls], tag_name="type")


def _unstructure_content(content: Content) -> object:
    if isinstance(content, str):
        return content
    return [converter.unstructure(part, ContentPart) for part in content]


def _structure_content(value: object, _: object) -> Content:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts: list[ContentPart] = [
            converter.structure(part, ContentPart)  # type: ignore[arg-type]  # a union is a valid cattrs target
            for part in cast("list[object]", value)
        ]
        return tuple(parts)
    raise SerializationError(f"message content must be a string or a list of parts, got {type(value).__name__}")


converter.register_unstructure_hook(Content, _unstructure_content)
converter.register_structure_hook(Content, _structure_content)


def _format_exception(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, (TinkerflowError, SerializationError)):
        return str(exc)
    return format_exception(exc, type_)


def unstructure(obj: object) -> object:
    """A record as plain JSON-ready Python data (dicts, lists, strings, numbers, ``None``)."""
    return converter.unstructure(obj)


def _leaves(error: BaseException, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], BaseException]]:
    """The innermost exceptions of a cattrs error, each with the path (attribute names, ``[index]``) it arose at."""
    if isinstance(error, ClassValidationError):
        noted, plain = error.group_exceptions()
        for inner, note in noted:
            yield from _leaves(inner, (*path, note.name))
        for inner in plain:
            yield from _leaves(inner, path)
    elif isinstance(error, IterableValidationError):
        indexed, rest = error.group_exceptions()
        for inner, item in indexed:
            yield from _leaves(inner, (*path, f"[{item.index!r}]"))
        for inner in rest:
            yield from _leaves(inner, path)
    elif isinstance(error, cattrs.BaseValidationError):
        for inner in error.exceptions:
            yield from _leaves(inner, path)
    else:
        yield path, error


def _dotted(path: tuple[str, ...], field: str = "") -> str:
    parts = [*path, field] if field else list(path)
    return "".join(part if part.startswith("[") or index == 0 else f".{part}" for index, part in enumerate(parts))


def _is_config(cls: type) -> bool:
    """Whether ``cls`` is a config record: by the project's naming, a class named ``...Config`` or based on one
    (``SLConfig``, ``DPOConfig`` and ``RLConfig`` extend ``RunConfig``)."""
    return any(base.__name__.endswith("Config") for base in getattr(cls, "__mro__", (cls,)))


def _typed(
    path: tuple[str, ...], leaf: BaseException, config: bool
) -> tuple[type[RecordDataError], str, str, str] | None:
    """``(error class, field, problem, fix)`` of one leaf, or ``None`` when the leaf is of no typed kind; every
    refused value of a ``config`` record is a :class:`ConfigDataError`."""
    if isinstance(leaf, ValidationError):
        kind = ConfigDataError if isinstance(leaf, ConfigError) or config else RecordDataError
        return kind, _dotted(path, leaf.field), leaf.problem, leaf.fix
    if isinstance(leaf, _WrongValueError):
        return ConfigDataError, _dotted(path), leaf.problem, leaf.fix
    if isinstance(leaf, ForbiddenExtraKeysError):
        key = sorted(leaf.extra_fields)[0]
        known = [field.name for field in attrs.fields(leaf.cl)] if attrs.has(leaf.cl) else []
        problem = f"is not a field of {leaf.cl.__name__}."
        return ConfigDataError, _dotted(path, key), problem, unknown_key_fix(key, known)
    if isinstance(leaf, AttributeError) and path and str(leaf).endswith("has no attribute 'items'"):
        # a mapping field structured by a hook cattrs generated for an enclosing record: not an object
        return ConfigDataError, _dotted(path), "must be an object.", "write a JSON object: {...}."
    if isinstance(leaf, KeyError) and path:
        return ConfigDataError, _dotted(path), "is required but missing.", "give it a value."
    if isinstance(leaf, (TypeError, ValueError)) and path:  # an array hook, a tagged union, a bad shape
        return RecordDataError, _dotted(path), str(leaf).rstrip(".") + ".", ""
    return None


def structure(data: object, cls: type[T]) -> T:
    """Build a ``cls`` record from plain data, validating it (scalars strictly: see the module docstring).

    Raises:
        ConfigDataError: a value of the wrong type (a string where a list belongs, a number where an object does,
            text with a lone surrogate), a missing or unknown key, or a value ``cls`` (or a record inside it) refused
            with a :class:`~tinkerflow.errors.ConfigError`, or with any other
            :class:`~tinkerflow.errors.ValidationError` when ``cls`` is a config (``...Config``); ``where`` is
            ``cls``'s name, ``field`` the dotted path.
        RecordDataError: a value a record (not a config) refused with another
            :class:`~tinkerflow.errors.ValidationError`.
        SerializationError: any other failure, naming the path.
    """
    try:
        return converter.structure(data, cls)
    except _WrongValueError as error:  # the data as a whole is of the wrong kind (a number for a record)
        raise SerializationError(f"cannot build {cls.__name__} from data: it {error.problem}") from error
    except cattrs.BaseValidationError as error:
        config = _is_config(cls)
        typed = [_typed(path, leaf, config) for path, leaf in _leaves(error, ())]
        if typed and all(item is not None for item in typed):
            kind, field, problem, fix = cast("tuple[type[RecordDataError], str, str, str]", typed[0])
            others = [f"{item[1]}: {item[2]}" for item in typed[1:] if item is not None]
            if others:
                problem = f"{problem} (Also: {'; '.join(others)})"
            raise kind(cls.__name__, field, problem, fix) from error
        raise _serialization_error(error, cls) from error
    except SerializationError as error:
        raise _serialization_error(error, cls) from error


def _serialization_error(error: Exception, cls: type) -> SerializationError:
    details = (
        "; ".join(cattrs.transform_error(error, path=cls.__name__, format_exception=_format_exception))
        if isinstance(error, cattrs.BaseValidationError)
        else str(error)
    )
    return SerializationError(f"cannot build {cls.__name__} from data: {details}")


def to_json(obj: object, *, indent: int | None = None) -> str:
    """A record as JSON text (compact unless ``indent`` is given)."""
    return json.dumps(converter.unstructure(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def from_json(text: str | bytes, cls: type[T]) -> T:
    """Parse JSON text into a validated ``cls`` record."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SerializationError(f"invalid JSON for {cls.__name__}: {error}") from error
    return structure(data, cls)
