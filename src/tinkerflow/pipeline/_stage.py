"""Stages and their composition (private; the public names are re-exported by ``tinkerflow.pipeline``). Pure.

A :class:`Stage` is a value: an ordered tuple of :class:`Step` records, each a named pure function of one kind
with its item input and output types. Composition concatenates steps, so it is associative by construction, and
checks at composition time that every step's output type feeds the next step's input type.
"""

from __future__ import annotations

import functools
import itertools
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Literal, Never, TypeAlias, TypeVar, cast, overload

import attrs

from tinkerflow.errors import ConfigError, TinkerflowError
from tinkerflow.pipeline._types import StageKind, accepts, infer_types, substitute, type_name

__all__ = [
    "CompositionError",
    "ErrorPolicy",
    "Stage",
    "StageError",
    "StageKind",
    "Step",
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

ErrorPolicy: TypeAlias = Literal["raise", "skip"]
"""What a run does when a stage raises on an item: ``"raise"`` a :class:`StageError`, or ``"skip"`` the item
(all of its outputs) and count it."""

_KINDS: frozenset[str] = frozenset({"map", "filter", "flat_map", "vectorized"})


class CompositionError(ConfigError):
    """Two stages do not fit: the output type of one does not feed the input type of the next.

    ``where`` is ``"compose"`` (or ``"Pipeline.then"``), ``field`` names the joint (``"steps[1] -> steps[2]"``),
    and the message names both stages and both types.
    """


class StageError(TinkerflowError, RuntimeError):
    """A stage raised on an item. Names the stage, the item's source position and the cause.

    Attributes:
        stage: the failing step's name (``"source"`` when reading the item failed).
        location: where the item comes from: ``"data/train.jsonl:13"`` (file and line) or ``"items[12]"``.
        cause: ``"ValueError: ..."``, the type and message of the exception the stage raised.
        epoch, position: the run's epoch and the item's position in that epoch's order (``None`` outside runs).
        details: the cause's formatted traceback (kept as text so it survives worker processes).
    """

    stage: str
    location: str
    cause: str
    epoch: int | None
    position: int | None
    details: str

    def __init__(
        self,
        stage: str,
        location: str,
        cause: str,
        *,
        epoch: int | None = None,
        position: int | None = None,
        details: str = "",
    ) -> None:
        self.stage = stage
        self.location = location
        self.cause = cause
        self.epoch = epoch
        self.position = position
        self.details = details
        where = f" (epoch {epoch}, position {position})" if epoch is not None and position is not None else ""
        super().__init__(f"stage {stage!r} failed on {location}{where}: {cause}. Fix: {self.fix}")

    @property
    def where(self) -> str:
        return f"stage {self.stage!r}"

    @property
    def field(self) -> str:
        return self.location

    @property
    def problem(self) -> str:
        return self.cause

    @property
    def fix(self) -> str:
        return (
            "correct that item or the stage, or run the pipeline with .on_error('skip') to skip such items and "
            "count them."
        )

    def __reduce__(self) -> tuple[Callable[..., StageError], tuple[object, ...]]:
        return (_rebuild_stage_error, (self.stage, self.location, self.cause, self.epoch, self.position, self.details))


def _rebuild_stage_error(
    stage: str, location: str, cause: str, epoch: int | None, position: int | None, details: str
) -> StageError:
    return StageError(stage, location, cause, epoch=epoch, position=position, details=details)


def describe_cause(cause: BaseException) -> str:
    """``"ValueError: message"`` (the first line of the message, at most 300 characters)."""
    message = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(cause).__name__}: {message}" if message else type(cause).__name__


def format_details(cause: BaseException) -> str:
    return "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))


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
        return f"{type_name(self.in_type)} -> {type_name(self.out_type)}"

    def __repr__(self) -> str:
        size = f", size={self.size}" if self.size is not None else ""
        return f"Step({self.kind} {self.name!r}: {self.signature()}{size})"


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
        current = current if step.kind == "filter" else substitute(step.out_type, bindings)
    return current


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
                result = apply_one(self.steps, plan, value)
                if isinstance(result, _Failure):
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


def describe_steps(steps: Sequence[Step], incoming: object, indent: str = "") -> str:
    """Numbered lines ``1. map  name  In -> Out`` with the types as they flow (type variables bound)."""
    lines = []
    current = incoming
    width = max(len(step.name) for step in steps)
    for index, step in enumerate(steps):
        bindings: dict[TypeVar, object] = {}
        accepts(step.in_type, current, bindings)
        out = current if step.kind == "filter" else substitute(step.out_type, bindings)
        size = f" (sub-batches of {step.size})" if step.size is not None else ""
        lines.append(
            f"{indent}{index + 1}. {step.kind:<10} {step.name:<{width}}  {type_name(current)} -> {type_name(out)}{size}"
        )
        current = out
    return "\n".join(lines)


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
def compose(s1: Stage[A, B] | Callable[[A], B], /) -> Stage[A, B]: ...
@overload
def compose(s1: Stage[A, B] | Callable[[A], B], s2: Stage[B, C] | Callable[[B], C], /) -> Stage[A, C]: ...
@overload
def compose(
    s1: Stage[A, B] | Callable[[A], B], s2: Stage[B, C] | Callable[[B], C], s3: Stage[C, D] | Callable[[C], D], /
) -> Stage[A, D]: ...
@overload
def compose(
    s1: Stage[A, B] | Callable[[A], B],
    s2: Stage[B, C] | Callable[[B], C],
    s3: Stage[C, D] | Callable[[C], D],
    s4: Stage[D, E] | Callable[[D], E],
    /,
) -> Stage[A, E]: ...
@overload
def compose(
    s1: Stage[A, B] | Callable[[A], B],
    s2: Stage[B, C] | Callable[[B], C],
    s3: Stage[C, D] | Callable[[C], D],
    s4: Stage[D, E] | Callable[[D], E],
    s5: Stage[E, F] | Callable[[E], F],
    /,
) -> Stage[A, F]: ...
@overload
def compose(
    s1: Stage[A, B] | Callable[[A], B],
    s2: Stage[B, C] | Callable[[B], C],
    s3: Stage[C, D] | Callable[[C], D],
    s4: Stage[D, E] | Callable[[D], E],
    s5: Stage[E, F] | Callable[[E], F],
    s6: Stage[F, G] | Callable[[F], G],
    /,
) -> Stage[A, G]: ...
@overload
def compose(
    s1: Stage[A, B] | Callable[[A], B],
    s2: Stage[B, C] | Callable[[B], C],
    s3: Stage[C, D] | Callable[[C], D],
    s4: Stage[D, E] | Callable[[D], E],
    s5: Stage[E, F] | Callable[[E], F],
    s6: Stage[F, G] | Callable[[F], G],
    s7: Stage[G, H] | Callable[[G], H],
    /,
) -> Stage[A, H]: ...
@overload
def compose(*stages: Stage[Never, object] | Callable[[Never], object]) -> Stage[Never, object]: ...
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


# ---------------------------------------------------------------------------------------------------------------
# Running steps over a chunk of items. The fast path runs each step over the whole chunk with C-level loops
# (``map``/``filter``/``itertools.chain``); on any exception the chunk is redone item by item to find the item and
# the step that failed (steps are pure, so redoing is safe).


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


def compile_steps(steps: Sequence[Step]) -> tuple[Callable[[list[object]], list[object]], ...]:
    """Each step as a function from a list of items to the list of its outputs."""
    return tuple(_compile(step) for step in steps)


def run_compiled(plan: Sequence[Callable[[list[object]], list[object]]], items: list[object]) -> list[object]:
    for run in plan:
        items = run(items)
    return items


@attrs.frozen
class _Failure:
    step: int
    cause: Exception


def apply_one(
    steps: Sequence[Step], plan: Sequence[Callable[[list[object]], list[object]]], item: object
) -> list[object] | _Failure:
    """The outputs of one item, or which step failed and why."""
    items: list[object] = [item]
    for index, run in enumerate(plan):
        try:
            items = run(items)
        except Exception as cause:
            return _Failure(index, cause)
        if not items:
            break
    return items


Failure = _Failure
