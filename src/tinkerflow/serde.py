"""JSON (de)serialization of every tinkerflow record and config through one ``cattrs`` converter.

No pickle anywhere: records become plain JSON objects, arrays become lists, bytes become base64 text, and the
union-typed fields carry a ``"type"`` tag. Round trips are exact: ``from_json(to_json(x), type(x)) == x``
(float32 values survive because every float32 is exactly representable as a JSON double).

Non-finite floats never reach JSON except as ``null`` for NaN in arrays that allow it (prompt logprobs, where NaN
marks "not computed").
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from typing import TypeVar, cast

import cattrs
import numpy as np
from cattrs.preconf.json import make_converter
from cattrs.strategies import configure_tagged_union
from cattrs.v import format_exception
from jaxtyping import AbstractArray

from tinkerflow.chat import Content, ContentPart, ImagePart, TextPart, ThinkingPart
from tinkerflow.errors import SerializationError, TinkerflowError
from tinkerflow.model_input import Chunk, ImageChunk, TokenChunk

__all__ = ["converter", "from_json", "structure", "to_json", "unstructure"]

T = TypeVar("T")

converter: cattrs.Converter = make_converter(forbid_extra_keys=True)
"""The one converter. Use it (or the helpers below) for every record; extend it with ``register_*_hook``."""


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


def structure(data: object, cls: type[T]) -> T:
    """Build a ``cls`` record from plain data, validating it. Raises :class:`SerializationError` naming the path."""
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, SerializationError) as error:
        details = (
            "; ".join(cattrs.transform_error(error, path=cls.__name__, format_exception=_format_exception))
            if isinstance(error, cattrs.BaseValidationError)
            else str(error)
        )
        raise SerializationError(f"cannot build {cls.__name__} from data: {details}") from error


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
