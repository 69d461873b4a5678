"""Steps: the named, typed pure functions stages are made of, and how a list of items runs through them. Pure.

A :class:`Step` is one function of one kind (map, filter, flat map, vectorized map) with its item types.
:func:`flow` checks that steps fit one after another; :func:`describe_steps` prints them with their types.

Running: the fast path (:func:`compile_steps`, :func:`run_compiled`) runs each step over a whole list of items
with C-level loops (``map``/``filter``/``itertools.chain``); on any exception the caller redoes the items one by
one with :func:`apply_one` to find the item and the step that failed (steps are pure, so redoing is safe).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar, cast

import attrs

from tinkerflow.errors import ConfigError
from tinkerflow.pipeline._errors import CompositionError
from tinkerflow.pipeline._types import StageKind, accepts, substitute, type_name

__all__ = [
    "Compiled",
    "Failure",
    "Step",
    "VectorizedLengthError",
    "apply_one",
    "compile_steps",
    "default_name",
    "describe_steps",
    "flow",
    "run_compiled",
]

_KINDS: frozenset[str] = frozenset({"map", "filter", "flat_map", "vectorized"})

Compiled = tuple[Callable[[list[object]], list[object]], ...]
"""Steps compiled for running: each a function from a list of items to the list of its outputs."""


def default_name(fn: object) -> str:
    """A readable name for a stage function: its qualified name, ``f(partial)``, or the object's short repr."""
    if isinstance(fn, functools.partial):
        return f"{default_name(fn.func)}(partial)"
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str) and not isinstance(fn, type):
        return qualname
    text = repr(fn)
    return text if len(text) <= 80 else text[:77] + "..."


@attrs.frozen(repr=False)
class Step:
    """One step of a stage: a named pure function of one kind, with its item types.

    Kinds: ``map`` (item -> item), ``filter`` (item -> bool, keeps items for which it is true), ``flat_map``
    (item -> iterable of 0..n items), ``vectorized`` (sequence of items -> sequence of as many items; it must act
    item by item, i.e. output ``i`` may depend only on input ``i``, so runs may split the items into any
    sub-batches; ``size`` caps the sub-batch length).
    """

    name: str
    kind: StageKind
    fn: Callable[..., object]
    in_type: object
    out_type: object
    size: int | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("Step", "name", f"must be a non-empty string, got {self.name!r}.")
        if self.kind not in _KINDS:
            raise ConfigError("Step", "kind", f"must be one of {sorted(_KINDS)}, got {self.kind!r}.")
        if not callable(self.fn):
            raise ConfigError("Step", "fn", f"must be callable, got {type(self.fn).__name__}.")
        if self.size is not None and (not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1):
            raise ConfigError("Step", "size", f"must be a positive int or None, got {self.size!r}.")
        if self.size is not None and self.kind != "vectorized":
            raise ConfigError("Step", "size", "only vectorized steps take a sub-batch size.")

    def signature(self) -> str:
        """``"In -> Out"`` with the declared item types."""
        return f"{type_name(self.in_type)} -> {type_name(self.out_type)}"

    def __repr__(self) -> str:
        size = f", size={self.size}" if self.size is not None else ""
        return f"Step({self.kind} {self.name!r}: {self.signature()}{size})"


def _output_type(step: Step, incoming: object, bindings: dict[TypeVar, object]) -> object:
    """What ``step`` outputs when fed ``incoming`` (``bindings``: the type variables its input bound)."""
    return incoming if step.kind == "filter" else substitute(step.out_type, bindings)


def flow(steps: Sequence[Step], incoming: object, incoming_label: str, where: str) -> object:
    """The item type that ``steps`` output when fed ``incoming``; raises :class:`CompositionError` at a bad joint.

    ``incoming_label`` names what feeds the first step in messages (``"the input"``, ``"source 'items'"``).
    """
    current = incoming
    for index, step in enumerate(steps):
        bindings: dict[TypeVar, object] = {}
        if not accepts(step.in_type, current, bindings):
            joint = f"steps[{index - 1}] -> steps[{index}]" if index else "input -> steps[0]"
            feeder = f"stage {steps[index - 1].name!r}" if index else incoming_label
            raise CompositionError(
                where,
                joint,
                f"{feeder} outputs {type_name(current)}, but stage {step.name!r} takes {type_name(step.in_type)}.",
                "insert a stage that converts one into the other, or correct the annotations.",
            )
        current = _output_type(step, current, bindings)
    return current


def describe_steps(steps: Sequence[Step], incoming: object, indent: str = "") -> str:
    """Numbered lines ``1. map  name  In -> Out`` with the types as they flow (type variables bound)."""
    lines = []
    current = incoming
    width = max(len(step.name) for step in steps)
    for index, step in enumerate(steps):
        bindings: dict[TypeVar, object] = {}
        accepts(step.in_type, current, bindings)
        out = _output_type(step, current, bindings)
        size = f" (sub-batches of {step.size})" if step.size is not None else ""
        lines.append(
            f"{indent}{index + 1}. {step.kind:<10} {step.name:<{width}}  {type_name(current)} -> {type_name(out)}{size}"
        )
        current = out
    return "\n".join(lines)


class VectorizedLengthError(ValueError):
    """A vectorized step returned a different number of outputs than it got inputs."""


def _compile(step: Step) -> Callable[[list[object]], list[object]]:
    fn = step.fn
    if step.kind == "map":
        return lambda items: list(map(fn, items))
    if step.kind == "filter":
        return lambda items: list(filter(fn, items))
    if step.kind == "flat_map":
        return lambda items: list(itertools.chain.from_iterable(map(fn, items)))  # type: ignore[arg-type]  # fn returns iterables (checked at composition)
    size = step.size

    def vectorized(items: list[object]) -> list[object]:
        if not items:
            return []
        if size is None or len(items) <= size:
            parts = [items]
        else:
            parts = [items[i : i + size] for i in range(0, len(items), size)]
        outputs: list[object] = []
        for part in parts:
            result = list(cast("Iterable[object]", fn(part)))
            if len(result) != len(part):
                raise VectorizedLengthError(
                    f"vectorized stage {step.name!r} returned {len(result)} outputs for {len(part)} inputs"
                )
            outputs.extend(result)
        return outputs

    return vectorized


def compile_steps(steps: Sequence[Step]) -> Compiled:
    """Each step as a function from a list of items to the list of its outputs."""
    return tuple(_compile(step) for step in steps)


def run_compiled(plan: Compiled, items: list[object]) -> list[object]:
    """The outputs of ``items`` through every compiled step, in order (raises what a step raises)."""
    for run in plan:
        items = run(items)
    return items


@attrs.frozen
class Failure:
    """Which step (its index) failed on an item, and the exception it raised."""

    step: int
    cause: Exception


def apply_one(plan: Compiled, item: object) -> list[object] | Failure:
    """The outputs of one item, or which step failed and why."""
    items: list[object] = [item]
    for index, run in enumerate(plan):
        try:
            items = run(items)
        except Exception as cause:
            return Failure(index, cause)
        if not items:
            break
    return items
