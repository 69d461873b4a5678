"""Pipelines: a source, an order, stages and batching, run lazily with an exact, checkpointable position.

The definitions here are values (frozen records); running one is the effect: :meth:`Pipeline.iterate` reads the
source and, with ``num_workers > 0``, runs stages in worker processes.

How a run works: positions ``0..n-1`` of an epoch's order (see ``_order``) are cut into chunks of
``chunk_size`` positions. A chunk's items are read and pushed through the steps one step at a time (C-level
loops, no per-item Python beyond the stage calls), serially or in worker processes (results consumed in chunk
order, so parallel output equals serial output). Batches are cut from the outputs.

The position (:class:`PipelineState`) is ``(epoch, position, skip)``: the next output is the ``skip``-th output
of the items from ``position`` on in ``epoch``'s order. Because stages are pure and item-wise, restoring
recomputes at most one chunk and drops ``skip`` outputs: no repeats, no gaps, whatever the chunk size or worker
count of the restoring run. A partial batch is never part of the state: a batch is yielded whole, and the state
after it points at the first item of the next batch.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import operator
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Generic, Literal, Never, TypeVar, cast, overload

import attrs

from tinkerflow._validate import require_type
from tinkerflow.errors import ConfigError
from tinkerflow.pipeline._order import EpochOrder, Shuffle
from tinkerflow.pipeline._source import SequenceSource, Source
from tinkerflow.pipeline._stage import (
    ErrorPolicy,
    Failure,
    Stage,
    StageError,
    Step,
    apply_one,
    as_stage,
    compile_steps,
    describe_cause,
    describe_steps,
    flow,
    format_details,
    run_compiled,
)
from tinkerflow.pipeline._types import type_name

__all__ = [
    "BatchBySize",
    "BatchByTokens",
    "Pipeline",
    "PipelineInfo",
    "PipelineIterator",
    "PipelineState",
    "StageInfo",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")
V = TypeVar("V")
W = TypeVar("W")
X = TypeVar("X")

STATE_VERSION = 1
_RECENT_ERRORS = 100


# ---------------------------------------------------------------------------------------------------------------
# Batching specifications


def _positive_int(value: object, where: str, field: str) -> None:
    require_type(value, int, where, field)
    if cast("int", value) < 1:
        raise ConfigError(where, field, f"must be >= 1, got {value!r}.")


@attrs.frozen
class BatchBySize:
    """Batches of ``size`` items; the last batch of an epoch is smaller unless ``drop_remainder``."""

    size: int
    drop_remainder: bool = False

    def __attrs_post_init__(self) -> None:
        _positive_int(self.size, "BatchBySize", "size")
        require_type(self.drop_remainder, bool, "BatchBySize", "drop_remainder")

    def describe(self) -> str:
        return f"batches of {self.size} items" + (", last partial batch dropped" if self.drop_remainder else "")


Oversize = Literal["error", "alone"]


@attrs.frozen
class BatchByTokens:
    """Greedy batches in order whose ``length`` sum stays within ``max_tokens`` (and ``max_items``, if given).

    An item longer than ``max_tokens`` on its own is an error of that item (``oversize="error"``, which the
    error policy may skip and count) or a batch by itself (``oversize="alone"``). Batches do not span epochs.
    """

    max_tokens: int
    length: Callable[..., int]
    max_items: int | None = None
    drop_remainder: bool = False
    oversize: Oversize = "error"

    def __attrs_post_init__(self) -> None:
        _positive_int(self.max_tokens, "BatchByTokens", "max_tokens")
        if not callable(self.length):
            raise ConfigError("BatchByTokens", "length", "must be a callable item -> int.", "e.g. datum_length.")
        if self.max_items is not None:
            _positive_int(self.max_items, "BatchByTokens", "max_items")
        require_type(self.drop_remainder, bool, "BatchByTokens", "drop_remainder")
        if self.oversize not in ("error", "alone"):
            raise ConfigError("BatchByTokens", "oversize", f"must be 'error' or 'alone', got {self.oversize!r}.")

    def describe(self) -> str:
        name = getattr(self.length, "__qualname__", repr(self.length))
        text = f"batches of at most {self.max_tokens} tokens by {name}"
        if self.max_items is not None:
            text += f" and at most {self.max_items} items"
        text += "; a longer item " + ("is an error" if self.oversize == "error" else "is a batch alone")
        return text + (", last partial batch dropped" if self.drop_remainder else "")


@attrs.frozen
class _Measure:
    """The hidden last step of token batching: item -> (item, length), rejecting oversize items."""

    length: Callable[..., int]
    max_tokens: int
    oversize: Oversize

    def __call__(self, item: object) -> tuple[object, int]:
        value = self.length(item)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError("BatchByTokens", "length", f"must return a non-negative int, returned {value!r}.")
        if value > self.max_tokens and self.oversize == "error":
            raise ValueError(
                f"item has {value} tokens, more than the batch budget of {self.max_tokens}; filter long items "
                "out first (length_filter) or use oversize='alone'"
            )
        return item, value


# ---------------------------------------------------------------------------------------------------------------
# The state record


@attrs.frozen
class PipelineState:
    """A run's position, exact and small: JSON-serializable with any cattrs converter (plain ints only).

    The next output of the run is the ``skip``-th output (0-based) produced by the items at positions
    ``position, position + 1, ...`` of epoch ``epoch``'s order. ``seed``, ``window`` and ``source_length`` say
    which order that is; restoring into a pipeline with a different shuffle or source is refused.

    Attributes:
        epoch: the epoch the next output belongs to (``== epochs`` once a finite run is exhausted).
        position: index into that epoch's order (``0 <= position < source_length``).
        skip: outputs already produced from the items at ``position`` on.
        skipped: items dropped by the ``"skip"`` error policy at positions before this one (all epochs).
        seed: the shuffle seed (``None``: no shuffle).
        window: the shuffle window (``None``: per-epoch shuffle or no shuffle).
        source_length: the number of items in the source.
        version: the format version of this record.
    """

    epoch: int = 0
    position: int = 0
    skip: int = 0
    skipped: int = 0
    seed: int | None = None
    window: int | None = None
    source_length: int = 0
    version: int = STATE_VERSION

    def __attrs_post_init__(self) -> None:
        for name in ("epoch", "position", "skip", "skipped", "source_length", "version"):
            value = getattr(self, name)
            require_type(value, int, "PipelineState", name)
            if value < 0:
                raise ConfigError("PipelineState", name, f"must be >= 0, got {value}.")
        for name in ("seed", "window"):
            value = getattr(self, name)
            if value is not None:
                require_type(value, int, "PipelineState", name)
        if self.version != STATE_VERSION:
            raise ConfigError(
                "PipelineState", "version", f"is {self.version}; this tinkerflow reads version {STATE_VERSION}."
            )
        if self.source_length and self.position >= self.source_length:
            raise ConfigError(
                "PipelineState",
                "position",
                f"is {self.position} but the source has {self.source_length} items.",
                "a position past the end is written as position 0 of the next epoch.",
            )


# ---------------------------------------------------------------------------------------------------------------
# Descriptions


@attrs.frozen
class StageInfo:
    """One step of a pipeline, described: kind, name, and the item types it takes and outputs."""

    kind: str
    name: str
    in_type: str
    out_type: str


@attrs.frozen
class PipelineInfo:
    """A pipeline described in plain strings and ints (JSON-serializable; the run directory records it)."""

    source: str
    order: str
    epochs: int | None
    stages: tuple[StageInfo, ...]
    batching: str
    output_type: str
    num_workers: int
    chunk_size: int
    on_error: str


# ---------------------------------------------------------------------------------------------------------------
# Running a chunk (in this process or in a worker)


class _ChunkPlan:
    """Everything needed to turn a chunk of positions into outputs: the source, the steps, the error policy."""

    __slots__ = ("_compiled", "policy", "source", "steps")

    def __init__(self, source: Source[object], steps: tuple[Step, ...], policy: ErrorPolicy) -> None:
        self.source = source
        self.steps = steps
        self.policy = policy
        self._compiled: tuple[Callable[[list[object]], list[object]], ...] | None = None

    def __getstate__(self) -> dict[str, object]:
        return {"source": self.source, "steps": self.steps, "policy": self.policy}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.source = cast("Source[object]", state["source"])
        self.steps = cast("tuple[Step, ...]", state["steps"])
        self.policy = cast("ErrorPolicy", state["policy"])
        self._compiled = None

    @property
    def compiled(self) -> tuple[Callable[[list[object]], list[object]], ...]:
        if self._compiled is None:
            self._compiled = compile_steps(self.steps)
        return self._compiled

    def run(self, epoch: int, start: int, indices: Sequence[int]) -> tuple[list[object], list[StageError]]:
        """The outputs of the items at ``indices`` (positions ``start...``), and the errors skipped."""
        try:
            items = self.source.read(indices)
            if not isinstance(items, list):
                items = list(items)
            if len(items) != len(indices):
                raise ValueError(f"the source returned {len(items)} items for {len(indices)} indices")
            return run_compiled(self.compiled, items), []
        except Exception:
            return self._run_one_by_one(epoch, start, indices)

    def _run_one_by_one(self, epoch: int, start: int, indices: Sequence[int]) -> tuple[list[object], list[StageError]]:
        outputs: list[object] = []
        errors: list[StageError] = []
        for offset, index in enumerate(indices):
            try:
                read = list(self.source.read([index]))
                if len(read) != 1:
                    raise ValueError(f"the source returned {len(read)} items for 1 index")
            except Exception as cause:
                self._fail("source", epoch, start + offset, index, cause, errors)
                continue
            result = apply_one(self.steps, self.compiled, read[0])
            if isinstance(result, Failure):
                self._fail(self.steps[result.step].name, epoch, start + offset, index, result.cause, errors)
                continue
            outputs.extend(result)
        return outputs, errors

    def _fail(
        self, stage: str, epoch: int, position: int, index: int, cause: Exception, errors: list[StageError]
    ) -> None:
        try:
            location = self.source.location(index)
        except Exception:
            location = f"index {index}"
        raising = self.policy == "raise"
        error = StageError(
            stage,
            location,
            describe_cause(cause),
            epoch=epoch,
            position=position,
            details=format_details(cause) if raising else "",
        )
        if raising:
            raise error from cause
        errors.append(error)


_WORKER_PLAN: _ChunkPlan | None = None


def _init_worker(plan: _ChunkPlan) -> None:
    global _WORKER_PLAN  # one plan per worker process, set once by the pool initializer
    _WORKER_PLAN = plan


def _run_in_worker(epoch: int, start: int, indices: Sequence[int]) -> tuple[list[object], list[StageError]]:
    assert _WORKER_PLAN is not None, "worker started without a plan"
    return _WORKER_PLAN.run(epoch, start, indices)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline value


def _as_source(value: object, item_type: object, name: str | None) -> Source[object]:
    if isinstance(value, Source):
        if item_type is not None or name is not None:
            raise ConfigError(
                "Pipeline.from_source", "item_type", "item_type/name apply to plain sequences, not to a Source."
            )
        return value
    return SequenceSource(
        cast("Sequence[object]", value), item_type=Any if item_type is None else item_type, name=name or "items"
    )


@attrs.frozen(repr=False)
class Pipeline(Generic[T_co]):
    """A data pipeline as a value: source, seeded order, epochs, stages, batching and how to run them.

    Build it with :meth:`from_source` and the builder methods (each returns a new pipeline); run it with
    :meth:`iterate` (or plain iteration). ``T_co`` is the type of what it yields: stage outputs, or tuples of
    them once batched.

    Attributes:
        source: what it reads (:class:`Source`).
        stages: the composed stages, or ``None``.
        shuffle_spec: the seeded order (:class:`Shuffle`), or ``None`` for source order.
        epochs: passes over the source (``None``: endless).
        batching: :class:`BatchBySize`, :class:`BatchByTokens` or ``None`` (yield items).
        num_workers: worker processes for the stages (0: run in this process).
        chunk_size: positions per unit of work; affects speed and laziness, never the output.
        error_policy: ``"raise"`` or ``"skip"`` (skip the failing item, count it).
        start_method: the multiprocessing start method for workers (``None``: the platform default).
        item_type: the item type the stages output (computed; composition is checked on construction).
    """

    source: Source[object]
    stages: Stage[Never, object] | None = None
    shuffle_spec: Shuffle | None = None
    epochs: int | None = 1
    batching: BatchBySize | BatchByTokens | None = None
    num_workers: int = 0
    chunk_size: int = 512
    error_policy: ErrorPolicy = "raise"
    start_method: str | None = None
    item_type: object = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.source, Source):
            raise ConfigError(
                "Pipeline", "source", f"is not a Source ({type(self.source).__name__}).", "use Pipeline.from_source."
            )
        if self.stages is not None and not isinstance(self.stages, Stage):
            raise ConfigError("Pipeline", "stages", f"expected a Stage, got {type(self.stages).__name__}.")
        if self.shuffle_spec is not None and not isinstance(self.shuffle_spec, Shuffle):
            raise ConfigError(
                "Pipeline", "shuffle_spec", f"expected a Shuffle, got {type(self.shuffle_spec).__name__}."
            )
        if self.epochs is not None:
            _positive_int(self.epochs, "Pipeline", "epochs")
        if self.batching is not None and not isinstance(self.batching, (BatchBySize, BatchByTokens)):
            raise ConfigError("Pipeline", "batching", f"expected a batching spec, got {type(self.batching).__name__}.")
        require_type(self.num_workers, int, "Pipeline", "num_workers")
        if self.num_workers < 0:
            raise ConfigError("Pipeline", "num_workers", f"must be >= 0, got {self.num_workers}.")
        _positive_int(self.chunk_size, "Pipeline", "chunk_size")
        if self.error_policy not in ("raise", "skip"):
            raise ConfigError("Pipeline", "error_policy", f"must be 'raise' or 'skip', got {self.error_policy!r}.")
        if self.start_method is not None and self.start_method not in multiprocessing.get_all_start_methods():
            raise ConfigError(
                "Pipeline",
                "start_method",
                f"{self.start_method!r} is not available here.",
                f"use one of {multiprocessing.get_all_start_methods()} or None.",
            )
        item_type = self.source.item_type
        if self.stages is not None:
            item_type = flow(self.stages.steps, item_type, "the source", "Pipeline")
        object.__setattr__(self, "item_type", item_type)

    # -- building -------------------------------------------------------------------------------------------

    @overload
    @staticmethod
    def from_source(source: Source[U], /) -> Pipeline[U]: ...
    @overload
    @staticmethod
    def from_source(source: Sequence[U], /, *, item_type: object = None, name: str | None = None) -> Pipeline[U]: ...
    @staticmethod
    def from_source(
        source: Source[U] | Sequence[U], /, *, item_type: object = None, name: str | None = None
    ) -> Pipeline[U]:
        """A pipeline that yields the items of ``source`` once, in order.

        ``source`` is a :class:`Source` (``JsonlSource``, ``SequenceSource``) or a plain sequence (list, tuple,
        ``datasets.Dataset``), wrapped in a :class:`SequenceSource` with ``item_type`` (default ``Any``,
        unchecked) and ``name``.
        """
        return cast("Pipeline[U]", Pipeline(_as_source(source, item_type, name)))

    @overload
    def then(self, s1: Stage[T_co, U] | Callable[[T_co], U], /) -> Pipeline[U]: ...
    @overload
    def then(self, s1: Stage[T_co, U] | Callable[[T_co], U], s2: Stage[U, V] | Callable[[U], V], /) -> Pipeline[V]: ...
    @overload
    def then(
        self,
        s1: Stage[T_co, U] | Callable[[T_co], U],
        s2: Stage[U, V] | Callable[[U], V],
        s3: Stage[V, W] | Callable[[V], W],
        /,
    ) -> Pipeline[W]: ...
    @overload
    def then(
        self,
        s1: Stage[T_co, U] | Callable[[T_co], U],
        s2: Stage[U, V] | Callable[[U], V],
        s3: Stage[V, W] | Callable[[V], W],
        s4: Stage[W, X] | Callable[[W], X],
        /,
    ) -> Pipeline[X]: ...
    def then(self, *stages: object) -> Pipeline[object]:
        """Append stages (or plain callables, as map stages); checks that the types fit.

        Raises:
            CompositionError: a stage does not take what the one before it (or the source) outputs.
            ConfigError: the pipeline is already batched (add stages before batching).
        """
        if self.batching is not None:
            raise ConfigError(
                "Pipeline.then",
                "stages",
                "the pipeline is already batched; stages act on items.",
                "add stages before .batch()/.batch_by_tokens(), or process each batch in the loop.",
            )
        if not stages:
            raise ConfigError("Pipeline.then", "stages", "got no stages.")
        steps: list[Step] = [] if self.stages is None else list(self.stages.steps)
        for value in stages:
            steps.extend(as_stage(value, "Pipeline.then").steps)
        return attrs.evolve(self, stages=Stage(tuple(steps)))

    def shuffle(self, seed: int, *, window: int | None = None) -> Pipeline[T_co]:
        """Read the source in a seeded order: a fresh permutation per epoch, or per window of ``window`` items."""
        return attrs.evolve(self, shuffle_spec=Shuffle(seed, window))

    def repeat(self, epochs: int | None) -> Pipeline[T_co]:
        """Pass over the source ``epochs`` times (``None``: endlessly). Each epoch has its own shuffle."""
        return attrs.evolve(self, epochs=epochs)

    def batch(self, size: int, *, drop_remainder: bool = False) -> Pipeline[tuple[T_co, ...]]:
        """Yield tuples of ``size`` items (batches do not span epochs)."""
        return cast("Pipeline[tuple[T_co, ...]]", self._batched(BatchBySize(size, drop_remainder)))

    def batch_by_tokens(
        self,
        max_tokens: int,
        *,
        length: Callable[[T_co], int],
        max_items: int | None = None,
        drop_remainder: bool = False,
        oversize: Oversize = "error",
    ) -> Pipeline[tuple[T_co, ...]]:
        """Yield tuples of consecutive items whose ``length`` sum is at most ``max_tokens`` (see BatchByTokens)."""
        spec = BatchByTokens(max_tokens, length, max_items, drop_remainder, oversize)
        return cast("Pipeline[tuple[T_co, ...]]", self._batched(spec))

    def _batched(self, spec: BatchBySize | BatchByTokens) -> Pipeline[object]:
        if self.batching is not None:
            raise ConfigError("Pipeline", "batching", "is already set.", "batch once.")
        return cast("Pipeline[object]", attrs.evolve(self, batching=spec))

    def parallel(
        self, num_workers: int, *, chunk_size: int | None = None, start_method: str | None = None
    ) -> Pipeline[T_co]:
        """Run the stages in ``num_workers`` worker processes (0: in this process); output order is unchanged.

        Stage functions, the source and the items travel to workers by multiprocessing's usual means, so with
        the ``spawn``/``forkserver`` start methods they must be importable (module-level functions, not
        lambdas). ``chunk_size`` positions go to a worker at a time.
        """
        return attrs.evolve(
            self,
            num_workers=num_workers,
            chunk_size=self.chunk_size if chunk_size is None else chunk_size,
            start_method=start_method,
        )

    def with_chunk_size(self, chunk_size: int) -> Pipeline[T_co]:
        """Positions per unit of work (1: strictly item by item). Never changes the output."""
        return attrs.evolve(self, chunk_size=chunk_size)

    def on_error(self, policy: ErrorPolicy) -> Pipeline[T_co]:
        """``"raise"`` (default): a stage that raises stops the run with a StageError naming the stage, the item's
        location and the cause. ``"skip"``: drop that item and count it (``PipelineIterator.skipped``)."""
        return attrs.evolve(self, error_policy=policy)

    # -- running ----------------------------------------------------------------------------------------------

    def initial_state(self) -> PipelineState:
        """The state at the start of the run."""
        shuffle = self.shuffle_spec
        return PipelineState(
            seed=None if shuffle is None else shuffle.seed,
            window=None if shuffle is None else shuffle.window,
            source_length=len(self.source),
        )

    def iterate(self, state: PipelineState | None = None) -> PipelineIterator[T_co]:
        """An iterator over the outputs, from the start or from ``state`` (exactly where that run stood).

        Raises:
            ConfigError: ``state`` belongs to a different source length or shuffle.
        """
        return PipelineIterator(self, self.initial_state() if state is None else state)

    def __iter__(self) -> Iterator[T_co]:
        return iter(self.iterate())

    # -- describing -------------------------------------------------------------------------------------------

    def output_type(self) -> str:
        item = type_name(self.item_type)
        return item if self.batching is None else f"tuple[{item}, ...]"

    def info(self) -> PipelineInfo:
        """The pipeline described in plain data (serializable with ``tinkerflow.serde.to_json``)."""
        stages: list[StageInfo] = []
        if self.stages is not None:
            current = self.source.item_type
            for step in self.stages.steps:
                out = flow((step,), current, "the source", "Pipeline")
                stages.append(StageInfo(step.kind, step.name, type_name(current), type_name(out)))
                current = out
        order = "source order" if self.shuffle_spec is None else self.shuffle_spec.describe()
        return PipelineInfo(
            source=self.source.describe(),
            order=order,
            epochs=self.epochs,
            stages=tuple(stages),
            batching="none (items)" if self.batching is None else self.batching.describe(),
            output_type=self.output_type(),
            num_workers=self.num_workers,
            chunk_size=self.chunk_size,
            on_error=self.error_policy,
        )

    def describe(self) -> str:
        """A multi-line description: source, order, epochs, each stage with its types, batching, execution."""
        info = self.info()
        epochs = "endless" if info.epochs is None else str(info.epochs)
        workers = "in this process" if info.num_workers == 0 else f"{info.num_workers} worker processes"
        lines = [
            f"Pipeline -> {info.output_type}",
            f"  source:   {info.source}",
            f"  order:    {info.order}; epochs: {epochs}",
        ]
        if self.stages is None:
            lines.append("  stages:   none")
        else:
            lines.append("  stages:")
            lines.append(describe_steps(self.stages.steps, self.source.item_type, indent="    "))
        lines.append(f"  batching: {info.batching}")
        lines.append(f"  running:  {workers}, chunks of {info.chunk_size}; on error: {info.on_error}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = [repr(self.source)]
        if self.shuffle_spec is not None:
            window = "" if self.shuffle_spec.window is None else f", window={self.shuffle_spec.window}"
            parts.append(f"shuffle(seed={self.shuffle_spec.seed}{window})")
        if self.epochs != 1:
            parts.append(f"repeat({self.epochs})")
        if self.stages is not None:
            parts.extend(step.name for step in self.stages.steps)
        if isinstance(self.batching, BatchBySize):
            parts.append(f"batch({self.batching.size})")
        elif isinstance(self.batching, BatchByTokens):
            parts.append(f"batch_by_tokens({self.batching.max_tokens})")
        return f"Pipeline({' | '.join(parts)} -> {self.output_type()})"

    # -- internals --------------------------------------------------------------------------------------------

    def _plan(self) -> _ChunkPlan:
        steps: tuple[Step, ...] = () if self.stages is None else self.stages.steps
        if isinstance(self.batching, BatchByTokens):
            spec = self.batching
            measure = _Measure(spec.length, spec.max_tokens, spec.oversize)
            steps = (*steps, Step("batch_by_tokens", "map", measure, Any, tuple[Any, int]))
        return _ChunkPlan(self.source, steps, self.error_policy)


# ---------------------------------------------------------------------------------------------------------------
# The iterator


class PipelineIterator(Generic[T_co]):
    """A run of a pipeline: iterate it for the outputs, call :meth:`state` between outputs for the position.

    ``for x in iterator`` runs at C speed within a chunk (``iter()`` returns the underlying stream, a ``chain``
    over per-chunk list iterators); ``next()`` works too. Close it (or use it as a context manager) to stop
    worker processes early.
    """

    def __init__(self, pipeline: Pipeline[T_co], state: PipelineState) -> None:
        self._pipeline = pipeline
        self._n = len(pipeline.source)
        self._check(state)
        self._plan = pipeline._plan()
        self._order = EpochOrder(pipeline.shuffle_spec, self._n)
        # Position bookkeeping (see the module docstring). The current chunk spans positions [_start, _end) of
        # epoch _epoch; _base outputs of it were consumed before _buffer; _total is all its outputs.
        self._epoch = state.epoch
        self._start = state.position
        self._end = state.position
        self._base = state.skip
        self._total = state.skip
        self._buffer_iter: Iterator[object] | None = None
        self._buffer_len = 0
        self._consumed = state.skip
        self._skipped = state.skipped
        self._chunk_errors = 0
        self._restore_skip = state.skip
        self._recent: collections.deque[StageError] = collections.deque(maxlen=_RECENT_ERRORS)
        self._pool: Any = None
        self._inner: Generator[object, None, None]
        self._stream: Iterator[object]
        if pipeline.batching is None:
            self._inner = self._item_iterators()
            self._stream = itertools.chain.from_iterable(self._inner)  # items at C speed
        else:
            self._inner = self._stream = self._batches()

    def _check(self, state: PipelineState) -> None:
        if not isinstance(state, PipelineState):
            raise ConfigError("Pipeline.iterate", "state", f"expected a PipelineState, got {type(state).__name__}.")
        shuffle = self._pipeline.shuffle_spec
        expected = {
            "source_length": self._n,
            "seed": None if shuffle is None else shuffle.seed,
            "window": None if shuffle is None else shuffle.window,
        }
        for name, value in expected.items():
            if getattr(state, name) != value:
                raise ConfigError(
                    "Pipeline.iterate",
                    f"state.{name}",
                    f"is {getattr(state, name)!r} but this pipeline has {value!r}.",
                    "restore a state into the pipeline (source and shuffle) that produced it.",
                )
        epochs = self._pipeline.epochs
        if epochs is not None and state.epoch > epochs:
            raise ConfigError(
                "Pipeline.iterate", "state.epoch", f"is {state.epoch} but the pipeline runs {epochs} epochs."
            )

    # -- public ---------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[T_co]:
        return cast("Iterator[T_co]", self._stream)

    def __next__(self) -> T_co:
        return cast("T_co", next(self._stream))

    @property
    def pipeline(self) -> Pipeline[T_co]:
        return self._pipeline

    @property
    def skipped(self) -> int:
        """Items dropped by the ``"skip"`` error policy so far (those before :meth:`state`'s position)."""
        return self.state().skipped

    @property
    def recent_errors(self) -> tuple[StageError, ...]:
        """The last (up to 100) errors skipped by the ``"skip"`` policy, for logging."""
        return tuple(self._recent)

    def state(self) -> PipelineState:
        """The position after the last output: restoring it yields exactly the outputs not yet produced."""
        if self._buffer_iter is not None:
            consumed = self._base + self._buffer_len - operator.length_hint(self._buffer_iter)
        else:
            consumed = self._consumed
        epoch, position, skip, skipped = self._epoch, self._start, consumed, self._skipped
        if self._end > self._start and consumed >= self._total:
            position, skip, skipped = self._end, 0, skipped + self._chunk_errors
            if position >= self._n:
                epoch, position = epoch + 1, 0
        shuffle = self._pipeline.shuffle_spec
        return PipelineState(
            epoch=epoch,
            position=position,
            skip=skip,
            skipped=skipped,
            seed=None if shuffle is None else shuffle.seed,
            window=None if shuffle is None else shuffle.window,
            source_length=self._n,
        )

    def close(self) -> None:
        """Stop the run and its worker processes."""
        self._inner.close()
        self._stop_pool()

    def __enter__(self) -> PipelineIterator[T_co]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------------

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
            pool.join()

    def _tasks(self) -> Iterator[tuple[int, int, int, Sequence[int]]]:
        epochs = self._pipeline.epochs
        size = self._pipeline.chunk_size
        epoch, start = self._epoch, self._start
        if self._n == 0:
            return
        while epochs is None or epoch < epochs:
            for begin in range(start, self._n, size):
                end = min(begin + size, self._n)
                yield epoch, begin, end, self._order.indices(epoch, begin, end)
            epoch, start = epoch + 1, 0

    def _results(self) -> Iterator[tuple[int, int, int, list[object], list[StageError]]]:
        plan = self._plan
        workers = self._pipeline.num_workers
        if workers == 0:
            for epoch, start, end, indices in self._tasks():
                outputs, errors = plan.run(epoch, start, indices)
                yield epoch, start, end, outputs, errors
            return
        context = multiprocessing.get_context(self._pipeline.start_method)
        try:
            self._pool = pool = context.Pool(workers, initializer=_init_worker, initargs=(plan,))
        except Exception as error:  # typically a stage or source that cannot be sent to a spawned process
            raise ConfigError(
                "Pipeline.parallel",
                "stages",
                f"could not start {workers} worker processes ({type(error).__name__}: {error}).",
                "use module-level functions (not lambdas or local functions) and a picklable source, or the "
                "'fork' start method, or num_workers=0.",
            ) from error
        try:
            pending: collections.deque[tuple[int, int, int, Any]] = collections.deque()
            for epoch, start, end, indices in self._tasks():
                pending.append((epoch, start, end, pool.apply_async(_run_in_worker, (epoch, start, indices))))
                if len(pending) > 2 * workers:
                    epoch0, start0, end0, result = pending.popleft()
                    yield epoch0, start0, end0, *result.get()
            while pending:
                epoch0, start0, end0, result = pending.popleft()
                yield epoch0, start0, end0, *result.get()
        finally:
            self._stop_pool()

    def _enter_chunk(self, start: int, end: int, errors: list[StageError]) -> None:
        self._skipped += self._chunk_errors  # the previous chunk is behind us now
        self._chunk_errors = len(errors)
        if errors:
            self._recent.extend(errors)
        self._start, self._end = start, end

    def _next_epoch(self) -> None:
        """Point the state at the start of the next epoch (after the last chunk of this one)."""
        self._skipped += self._chunk_errors
        self._chunk_errors = 0
        self._epoch += 1
        self._start = self._end = 0
        self._base = self._total = self._consumed = 0
        self._buffer_iter = None

    def _chunks(self) -> Generator[tuple[list[object], int] | None, None, None]:
        """Each chunk's outputs not yet produced and how many were dropped before them (restore skip), with the
        bookkeeping updated; ``None`` after the last chunk of each epoch (the state then points at the next)."""
        epochs = self._pipeline.epochs
        skip = self._restore_skip
        current_epoch = self._epoch
        produced = False
        for epoch, start, end, outputs, errors in self._results():
            if epoch != current_epoch:
                self._next_epoch()
                yield None
                if not produced and epochs is None:
                    raise ConfigError(
                        "Pipeline",
                        "stages",
                        f"epoch {current_epoch} produced no output; an endless run would never yield.",
                        "check the filters (and the error policy), or run a finite number of epochs.",
                    )
                current_epoch, produced = epoch, False
            self._enter_chunk(start, end, errors)
            total = len(outputs)
            base = 0
            if skip:
                base = min(skip, total)
                outputs = outputs[base:]
                skip -= base
            self._base, self._total = base, total
            if not outputs:
                self._buffer_iter = None
                self._consumed = total
                continue
            produced = True
            yield outputs, base
        if self._end > 0:  # at least one chunk ran: the last epoch is over
            self._next_epoch()
            yield None

    def _item_iterators(self) -> Generator[Iterator[object], None, None]:
        """Unbatched: one list iterator per chunk, kept so that state() can see how far it has been read."""
        for chunk in self._chunks():
            if chunk is None:
                continue
            outputs = chunk[0]
            self._buffer_len = len(outputs)
            self._buffer_iter = iterator = iter(outputs)
            yield iterator

    def _batches(self) -> Generator[tuple[object, ...], None, None]:
        batching = self._pipeline.batching
        assert batching is not None
        drop_remainder = batching.drop_remainder
        carry: list[object] = []
        carry_tokens = 0
        for chunk in self._chunks():
            if chunk is None:  # end of an epoch: the state already points at the next one
                if carry and not drop_remainder:
                    yield tuple(carry)
                carry, carry_tokens = [], 0
                continue
            outputs, base = chunk
            if isinstance(batching, BatchBySize):
                size = batching.size
                index = 0
                length = len(outputs)
                if carry:
                    need = size - len(carry)
                    if length < need:
                        carry.extend(outputs)
                        continue
                    carry.extend(outputs[:need])
                    index = need
                    self._consumed = base + index
                    batch, carry = tuple(carry), []
                    yield batch
                while index + size <= length:
                    self._consumed = base + index + size
                    yield tuple(outputs[index : index + size])
                    index += size
                carry = outputs[index:]
            else:
                max_tokens = batching.max_tokens
                max_items = batching.max_items if batching.max_items is not None else len(outputs) + len(carry) + 1
                for offset, pair in enumerate(cast("list[tuple[object, int]]", outputs)):
                    item, tokens = pair
                    if carry and (carry_tokens + tokens > max_tokens or len(carry) >= max_items):
                        self._consumed = base + offset  # the next batch starts with this item
                        batch, carry, carry_tokens = tuple(carry), [], 0
                        yield batch
                    carry.append(item)
                    carry_tokens += tokens
