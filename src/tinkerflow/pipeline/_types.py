"""Composition-time type checking of stages (private). Pure: no I/O.

A stage's input and output types come from its function's annotations. :func:`accepts` decides whether a value
of one type may feed a parameter of another. It follows the typing rules closely enough to catch real wiring
mistakes (``str`` into a stage that takes ``Datum``) without a type checker at run time:

* ``Any`` and ``object`` accept everything; an output of type ``Any`` (an unchecked source) is accepted anywhere.
* classes by ``issubclass``, with the numeric tower (``float`` accepts ``int``, ``complex`` accepts both);
* unions on either side, ``Optional``, ``Literal``, ``Annotated`` (metadata ignored), ``NewType`` (its base);
* generics by origin and then element types (``list[Datum]`` feeds ``Sequence[Datum]``; ``tuple[A, B]`` feeds
  ``Sequence[A | B]``); element types are compared covariantly, which is what a read-only pipeline needs;
* jaxtyping arrays (``Int64[np.ndarray, "T"]``) by array type and dtype (shapes are checked at run time by
  ``@checked`` functions, not here);
* type variables are bound from the incoming type (``def first(xs: tuple[T, ...]) -> T`` after a stage that
  outputs ``tuple[Datum, ...]`` outputs ``Datum``).

Forms it cannot judge (``Callable`` signatures, non-runtime protocols, exotic typing objects) are accepted.
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, NewType, TypeVar, Union, get_args, get_origin

from jaxtyping import AbstractArray

from tinkerflow.errors import ConfigError

__all__ = ["accepts", "element_type", "infer_types", "substitute", "type_name"]

Bindings = dict[TypeVar, object]

_ITERABLE_ORIGINS: frozenset[object] = frozenset(
    {
        cabc.Iterable,
        cabc.Iterator,
        cabc.Sequence,
        cabc.MutableSequence,
        cabc.Collection,
        cabc.Generator,
        cabc.Reversible,
        cabc.Set,
        cabc.MutableSet,
        list,
        tuple,
        set,
        frozenset,
    }
)


def _normalize(t: object) -> object:
    while True:
        if get_origin(t) is Annotated:
            t = get_args(t)[0]
            continue
        if isinstance(t, NewType):
            t = t.__supertype__
            continue
        break
    if t is None:
        return type(None)
    return t


def _is_union(t: object) -> bool:
    origin = get_origin(t)
    return origin is Union or origin is types.UnionType


def _is_array_type(t: object) -> bool:
    return isinstance(t, type) and issubclass(t, AbstractArray)


def _array_parts(t: object) -> tuple[object, tuple[str, ...] | None]:
    if _is_array_type(t):
        dtypes = getattr(t, "dtypes", None)
        return getattr(t, "array_type", object), (tuple(dtypes) if isinstance(dtypes, (list, tuple)) else None)
    return t, None


def _safe_issubclass(actual: type, expected: type) -> bool | None:
    try:
        return issubclass(actual, expected)
    except TypeError:
        return None


def _numeric(expected: type, actual: type) -> bool:
    if expected is float:
        return issubclass(actual, (int, float))
    if expected is complex:
        return issubclass(actual, (int, float, complex))
    return False


def _tuple_elements(args: tuple[object, ...]) -> tuple[tuple[object, ...], bool]:
    """(element types, homogeneous?) of ``tuple[...]`` arguments."""
    if len(args) == 2 and args[1] is Ellipsis:
        return (args[0],), True
    if args == ((),):
        return (), False
    return args, False


def accepts(expected: object, actual: object, bindings: Bindings) -> bool:
    """Whether a value of type ``actual`` may be passed where ``expected`` is required (binding type variables)."""
    expected = _normalize(expected)
    actual = _normalize(actual)
    if isinstance(expected, TypeVar):
        if expected in bindings:
            return accepts(bindings[expected], actual, bindings)
        if expected.__bound__ is not None and not accepts(expected.__bound__, actual, bindings):
            return False
        if expected.__constraints__ and not any(accepts(c, actual, dict(bindings)) for c in expected.__constraints__):
            return False
        bindings[expected] = actual
        return True
    if expected is Any or expected is object:
        return True
    if actual is Any or isinstance(actual, TypeVar):
        return True
    if _is_union(actual):
        return all(accepts(expected, member, bindings) for member in get_args(actual))
    if _is_union(expected):
        for member in get_args(expected):
            trial = dict(bindings)
            if accepts(member, actual, trial):
                bindings.update(trial)
                return True
        return False
    if get_origin(actual) is Literal:
        if get_origin(expected) is Literal:
            return set(get_args(actual)) <= set(get_args(expected))
        return all(accepts(expected, type(value), bindings) for value in get_args(actual))
    if get_origin(expected) is Literal:
        return False
    if _is_array_type(expected) or _is_array_type(actual):
        expected_array, expected_dtypes = _array_parts(expected)
        actual_array, actual_dtypes = _array_parts(actual)
        if not accepts(expected_array, actual_array, bindings):
            return False
        return expected_dtypes is None or actual_dtypes is None or set(actual_dtypes) <= set(expected_dtypes)
    expected_origin = get_origin(expected) or expected
    actual_origin = get_origin(actual) or actual
    if not isinstance(expected_origin, type) or not isinstance(actual_origin, type):
        return True
    if getattr(expected_origin, "_is_protocol", False) and not getattr(expected_origin, "_is_runtime_protocol", False):
        return True
    subclass = _safe_issubclass(actual_origin, expected_origin)
    if subclass is None:
        return True
    if not subclass:
        return _numeric(expected_origin, actual_origin)
    return _accepts_args(expected_origin, get_args(expected), actual_origin, get_args(actual), bindings)


def _accepts_args(
    expected_origin: object,
    expected_args: tuple[object, ...],
    actual_origin: object,
    actual_args: tuple[object, ...],
    bindings: Bindings,
) -> bool:
    if not expected_args or not actual_args or expected_origin is cabc.Callable:
        return True
    if expected_origin is tuple:
        expected_items, expected_homogeneous = _tuple_elements(expected_args)
        actual_items, actual_homogeneous = (
            _tuple_elements(actual_args) if actual_origin is tuple else ((actual_args[0],), True)
        )
        if expected_homogeneous:
            return all(accepts(expected_items[0], item, bindings) for item in actual_items)
        if actual_homogeneous or len(actual_items) != len(expected_items):
            return False
        return all(accepts(e, a, bindings) for e, a in zip(expected_items, actual_items, strict=True))
    if actual_origin is tuple and len(expected_args) == 1:
        actual_items, _ = _tuple_elements(actual_args)
        return all(accepts(expected_args[0], item, bindings) for item in actual_items)
    return all(accepts(e, a, bindings) for e, a in zip(expected_args, actual_args, strict=False))


def substitute(t: object, bindings: Bindings) -> object:
    """``t`` with the type variables bound in ``bindings`` replaced (unbound ones stay)."""
    if not bindings:
        return t
    if isinstance(t, TypeVar):
        return bindings.get(t, t)
    args = get_args(t)
    if not args or get_origin(t) is Literal:
        return t
    new_args = tuple(substitute(arg, bindings) for arg in args)
    if new_args == args:
        return t
    try:
        if _is_union(t):
            return Union[new_args]  # noqa: UP007 - a runtime union built from a tuple of types
        if isinstance(t, types.GenericAlias):
            return types.GenericAlias(get_origin(t), new_args)
        copy_with = getattr(t, "copy_with", None)
        if callable(copy_with):
            return copy_with(new_args)
    except TypeError:
        return t
    return t


def element_type(t: object) -> object | None:
    """The item type of an iterable type (``Iterable[X]`` -> ``X``; ``tuple[A, B]`` -> ``A | B``), else ``None``."""
    t = _normalize(t)
    if t is Any:
        return Any
    origin = get_origin(t) or t
    if origin not in _ITERABLE_ORIGINS:
        return None
    args = get_args(t)
    if not args:
        return Any
    if origin is tuple:
        items, _ = _tuple_elements(args)
        if not items:
            return typing.Never
        union: object = Union[items]  # noqa: UP007 - a runtime union from a tuple
        return items[0] if len(items) == 1 else union
    first: object = args[0]
    return first


def type_name(t: object) -> str:
    """A short readable spelling of a type (``tuple[Datum, ...]``, ``int | None``, ``Int64[ndarray, 'T']``)."""
    if t is Any:
        return "Any"
    if t is None or t is type(None):
        return "None"
    if t is Ellipsis:
        return "..."
    if isinstance(t, TypeVar):
        return t.__name__
    if _is_union(t):
        return " | ".join(type_name(member) for member in get_args(t))
    origin = get_origin(t)
    if origin is Literal:
        return f"Literal[{', '.join(repr(value) for value in get_args(t))}]"
    if origin is Annotated:
        return type_name(get_args(t)[0])
    if _is_array_type(t):
        return str(getattr(t, "__name__", repr(t)))
    args = get_args(t)
    if origin is not None and args:
        if args == ((),):
            return f"{type_name(origin)}[()]"
        return f"{type_name(origin)}[{', '.join(type_name(arg) for arg in args)}]"
    if isinstance(t, type):
        return t.__qualname__
    if isinstance(t, NewType):
        return str(t.__name__)
    return repr(t).replace("typing.", "")


StageKind = Literal["map", "filter", "flat_map", "vectorized"]


def _describe_fn(fn: Callable[..., object]) -> str:
    return str(getattr(fn, "__qualname__", type(fn).__qualname__))


def infer_types(
    fn: Callable[..., object], kind: StageKind, name: str, in_type: object | None, out_type: object | None
) -> tuple[object, object]:
    """The (item input, item output) types of a stage function, from its annotations unless given explicitly.

    For ``flat_map`` the output is the element type of the returned iterable; for ``vectorized`` both are the
    element types of the sequences taken and returned. A filter's output type is its input type.
    """
    where = f"stage {name!r}"
    if in_type is not None and (out_type is not None or kind == "filter"):
        return in_type, in_type if kind == "filter" else out_type
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            where, "fn", f"has no inspectable signature ({error}).", "pass in_type= and out_type= explicitly."
        ) from error
    except NameError as error:
        raise ConfigError(
            where,
            "fn",
            f"has annotations that cannot be resolved ({error}).",
            "import the annotated types at module level (not only under TYPE_CHECKING), or pass in_type=/out_type=.",
        ) from error
    required = [
        p
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if len(required) != 1 or required[0].kind is inspect.Parameter.KEYWORD_ONLY:
        names = ", ".join(p.name for p in required) or "none"
        raise ConfigError(
            where,
            "fn",
            f"{_describe_fn(fn)} must take exactly one required positional argument (the item); it takes: {names}.",
            "bind the other arguments with functools.partial (or give them defaults).",
        )
    parameter = required[0]
    if in_type is None:
        if parameter.annotation is inspect.Parameter.empty:
            raise ConfigError(
                where,
                "in_type",
                f"parameter {parameter.name!r} of {_describe_fn(fn)} has no type annotation.",
                "annotate it, or pass in_type= explicitly.",
            )
        in_type = parameter.annotation
        if kind == "vectorized":
            element = element_type(in_type)
            if element is None:
                raise ConfigError(
                    where,
                    "in_type",
                    f"a vectorized stage takes a sequence of items, but {parameter.name!r} is {type_name(in_type)}.",
                    "annotate it as Sequence[Item].",
                )
            in_type = element
    if kind == "filter":
        returned = signature.return_annotation
        if returned is not inspect.Signature.empty and returned not in (bool, Any):
            raise ConfigError(
                where, "fn", f"a filter must return bool, {_describe_fn(fn)} returns {type_name(returned)}."
            )
        return in_type, in_type
    if out_type is None:
        returned = signature.return_annotation
        if returned is inspect.Signature.empty:
            raise ConfigError(
                where,
                "out_type",
                f"{_describe_fn(fn)} has no return annotation.",
                "annotate its return type, or pass out_type= explicitly.",
            )
        out_type = returned
        if kind in ("flat_map", "vectorized"):
            element = element_type(returned)
            if element is None:
                raise ConfigError(
                    where,
                    "out_type",
                    f"a {kind} stage must return an iterable of items, {_describe_fn(fn)} returns "
                    f"{type_name(returned)}.",
                    "annotate the return type as Iterable[Item] (or Sequence/list/tuple/Iterator).",
                )
            out_type = element
    return in_type, out_type
