"""Stages and their composition (private; the public names are re-exported by ``tinkerflow.pipeline``). Pure.

A :class:`Stage` is a value: an ordered tuple of :class:`Step` records, each a named pure function of one kind
with its item input and output types. Composition concatenates steps, so it is associative by construction, and
checks at composition time that every step's output type feeds the next step's input type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Never, TypeAlias, TypeVar, cast, overload

import attrs

from tinkerflow.errors import ConfigError
from tinkerflow.pipeline._errors import StageError, describe_cause, format_details
from tinkerflow.pipeline._steps import (
    Failure,
    Step,
    apply_one,
    compile_steps,
    default_name,
    describe_steps,
    flow,
    run_compiled,
)
from tinkerflow.pipeline._types import StageKind, infer_types, type_name

__all__ = [
    "Stage",
    "StageLike",
    "as_stage",
    "compose",
    "filter_stage",
    "flat_map_stage",
    "stage",
    "vectorized_stage",
]

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")
E = TypeVar("E")
F = TypeVar("F")
G = TypeVar("G")
H = TypeVar("H")
In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)
R = TypeVar("R")


def _steps_tuple(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps)


@attrs.frozen(repr=False)
class Stage(Generic[In_contra, Out_co]):
    """A typed, composable unit of work: one or more :class:`Step` records applied in order.

    Build one with :func:`stage` (map), :func:`filter_stage`, :func:`flat_map_stage` or :func:`vectorized_stage`,
    and join stages with :func:`compose` or ``|``. Composition is checked when it happens (the output type of each
    step must feed the next one's input type) and is associative: ``(a | b) | c == a | (b | c)``.

    Attributes:
        steps: the steps, in order.
        in_type: the item type the stage takes (the first step's input type).
        out_type: the item type it outputs (after binding type variables along the way).
    """

    steps: tuple[Step, ...] = attrs.field(converter=_steps_tuple)
    in_type: object = attrs.field(init=False, eq=False)
    out_type: object = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not self.steps:
            raise ConfigError("Stage", "steps", "is empty.", "give at least one step.")
        for index, step in enumerate(self.steps):
            if not isinstance(step, Step):
                raise ConfigError("Stage", f"steps[{index}]", f"expected a Step, got {type(step).__name__}.")
        first = self.steps[0]
        object.__setattr__(self, "in_type", first.in_type)
        object.__setattr__(self, "out_type", flow(self.steps, first.in_type, "the input", "compose"))

    @property
    def name(self) -> str:
        """The step names joined by ``" | "``."""
        return " | ".join(step.name for step in self.steps)

    def __or__(self, other: Stage[Out_co, R] | Callable[[Out_co], R]) -> Stage[In_contra, R]:
        return compose(self, other)

    def __ror__(self, other: Callable[[A], In_contra]) -> Stage[A, Out_co]:
        return compose(other, self)

    def apply(self, item: In_contra) -> tuple[Out_co, ...]:
        """The outputs of one item (none when filtered out; several from a flat-map)."""
        return self.apply_all((item,))

    def apply_all(self, items: Iterable[In_contra]) -> tuple[Out_co, ...]:
        """The outputs of ``items`` in order, as a run would produce them (no shuffling, batching or skipping).

        Raises:
            StageError: a step raised on an item; ``location`` is ``"item N"`` (its index in ``items``).
        """
        plan = compile_steps(self.steps)
        values: list[object] = list(items)
        try:
            return tuple(cast("list[Out_co]", run_compiled(plan, values)))
        except Exception:  # redo item by item to find and name the failing item and step
            outputs: list[object] = []
            for index, value in enumerate(values):
                result = apply_one(plan, value)
                if isinstance(result, Failure):
                    raise StageError(
                        self.steps[result.step].name,
                        f"item {index}",
                        describe_cause(result.cause),
                        details=format_details(result.cause),
                    ) from result.cause
                outputs.extend(result)
            return tuple(cast("list[Out_co]", outputs))

    def describe(self) -> str:
        """One line per step: number, kind, name, input and output types."""
        return describe_steps(self.steps, self.in_type)

    def __repr__(self) -> str:
        return f"Stage({self.name}: {type_name(self.in_type)} -> {type_name(self.out_type)})"


StageLike: TypeAlias = Stage[A, B] | Callable[[A], B]
"""What composition takes: a :class:`Stage` from ``A`` to ``B``, or a plain callable ``A -> B`` (a map stage)."""


def _one_step(
    fn: Callable[..., object],
    kind: StageKind,
    name: str | None,
    in_type: object | None,
    out_type: object | None,
    size: int | None = None,
) -> Stage[Any, Any]:
    if isinstance(fn, Stage):
        raise ConfigError("stage", "fn", f"is already a Stage ({fn!r}).", "use it directly (or compose it).")
    if not callable(fn):
        raise ConfigError("stage", "fn", f"must be callable, got {type(fn).__name__}.")
    label = name if name is not None else default_name(fn)
    resolved_in, resolved_out = infer_types(fn, kind, label, in_type, out_type)
    return Stage((Step(label, kind, fn, resolved_in, resolved_out, size),))


def stage(
    fn: Callable[[A], B], /, *, name: str | None = None, in_type: object | None = None, out_type: object | None = None
) -> Stage[A, B]:
    """A map stage: one output item per input item, ``fn(item)``.

    Types come from ``fn``'s annotations (its one required positional parameter and its return type), or from
    ``in_type`` / ``out_type`` when given (needed for lambdas). ``fn`` may be a function, a
    ``functools.partial`` binding the other arguments, or a callable object. ``fn`` must be pure: runs may call
    it again on an item (to locate an error, or after a restore).
    """
    return cast("Stage[A, B]", _one_step(fn, "map", name, in_type, out_type))


def filter_stage(fn: Callable[[A], bool], /, *, name: str | None = None, in_type: object | None = None) -> Stage[A, A]:
    """A filter stage: keeps the items for which ``fn(item)`` is true; outputs the type it receives."""
    return cast("Stage[A, A]", _one_step(fn, "filter", name, in_type, None))


def flat_map_stage(
    fn: Callable[[A], Iterable[B]],
    /,
    *,
    name: str | None = None,
    in_type: object | None = None,
    out_type: object | None = None,
) -> Stage[A, B]:
    """A flat-map stage: each item becomes the 0..n items of ``fn(item)``, in order.

    The output item type is the element type of ``fn``'s return annotation (``Iterable[X]``, ``list[X]``,
    ``tuple[X, ...]``, ``Iterator[X]``), or ``out_type`` (the item type) when given.
    """
    return cast("Stage[A, B]", _one_step(fn, "flat_map", name, in_type, out_type))


def vectorized_stage(
    fn: Callable[[Sequence[A]], Sequence[B]],
    /,
    *,
    size: int | None = None,
    name: str | None = None,
    in_type: object | None = None,
    out_type: object | None = None,
) -> Stage[A, B]:
    """A vectorized map: ``fn`` takes a sequence of items and returns one output per input, in order.

    For work that is faster on many items at once (numpy over a batch, a batched tokenizer). Contract: output
    ``i`` depends only on input ``i``, so a run may call ``fn`` on sub-batches of any size (at most ``size``
    when given), and on single items to locate an error. ``in_type`` / ``out_type`` are item types.
    """
    return cast("Stage[A, B]", _one_step(fn, "vectorized", name, in_type, out_type, size))


def as_stage(value: object, where: str) -> Stage[Any, Any]:
    """A :class:`Stage` as is; a plain callable as a map stage."""
    if isinstance(value, Stage):
        return value
    if callable(value):
        return _one_step(cast("Callable[..., object]", value), "map", None, None, None)
    raise ConfigError(where, "stages", f"expected a Stage or a callable, got {type(value).__name__}.")


@overload
def compose(s1: StageLike[A, B], /) -> Stage[A, B]: ...
@overload
def compose(s1: StageLike[A, B], s2: StageLike[B, C], /) -> Stage[A, C]: ...
@overload
def compose(s1: StageLike[A, B], s2: StageLike[B, C], s3: StageLike[C, D], /) -> Stage[A, D]: ...
@overload
def compose(s1: StageLike[A, B], s2: StageLike[B, C], s3: StageLike[C, D], s4: StageLike[D, E], /) -> Stage[A, E]: ...
# fmt: off
@overload
def compose(
    s1: StageLike[A, B], s2: StageLike[B, C], s3: StageLike[C, D], s4: StageLike[D, E], s5: StageLike[E, F], /
) -> Stage[A, F]: ...
@overload
def compose(
    s1: StageLike[A, B], s2: StageLike[B, C], s3: StageLike[C, D], s4: StageLike[D, E], s5: StageLike[E, F],
    s6: StageLike[F, G], /
) -> Stage[A, G]: ...
@overload
def compose(
    s1: StageLike[A, B], s2: StageLike[B, C], s3: StageLike[C, D], s4: StageLike[D, E], s5: StageLike[E, F],
    s6: StageLike[F, G], s7: StageLike[G, H], /
) -> Stage[A, H]: ...
# fmt: on
@overload
def compose(*stages: StageLike[Never, object]) -> Stage[Never, object]: ...
def compose(*stages: object) -> Stage[Never, object]:
    """Join stages (or plain callables, taken as map stages) into one stage, checking each joint's types.

    Raises:
        CompositionError: a stage's output type does not feed the next one's input type; the message names both
            stages and both types.
    """
    if not stages:
        raise ConfigError("compose", "stages", "got no stages.", "pass at least one stage.")
    steps: list[Step] = []
    for value in stages:
        steps.extend(as_stage(value, "compose").steps)
    return Stage(tuple(steps))
