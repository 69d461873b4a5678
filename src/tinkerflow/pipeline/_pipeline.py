"""The pipeline value: a source, a seeded order, epochs, stages and batching (private; re-exported). Pure.

A :class:`Pipeline` is a frozen record built with :meth:`Pipeline.from_source` and builder methods that each
return a new pipeline. It says *what* a run yields; :meth:`Pipeline.iterate` runs it lazily here (see
``_iterator``), and a :class:`~tinkerflow.pipeline.ChunkExecutor` from the shell may run its chunks elsewhere
(worker processes) with the same output and the same :class:`PipelineState` positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Never, TypeVar, cast, overload

import attrs

from tinkerflow._validate import positive_int
from tinkerflow.errors import ConfigError
from tinkerflow.pipeline._batching import BatchBySize, BatchByTokens, Measure, Oversize
from tinkerflow.pipeline._chunk import ChunkExecutor, ChunkPlan, run_in_process
from tinkerflow.pipeline._errors import ErrorPolicy
from tinkerflow.pipeline._iterator import PipelineIterator
from tinkerflow.pipeline._order import Shuffle
from tinkerflow.pipeline._source import SequenceSource, Source
from tinkerflow.pipeline._stage import Stage, StageLike, as_stage
from tinkerflow.pipeline._state import PipelineInfo, PipelineState, StageInfo
from tinkerflow.pipeline._steps import Step, describe_steps, flow
from tinkerflow.pipeline._types import type_name

__all__ = ["Pipeline"]

T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")
V = TypeVar("V")
W = TypeVar("W")
X = TypeVar("X")


def _as_source(value: object, item_type: object, name: str | None) -> Source[object]:
    """``value`` as is when it is a :class:`Source`; a plain sequence wrapped in a :class:`SequenceSource`."""
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
    """A data pipeline as a value: source, seeded order, epochs, stages, batching and chunking.

    Build it with :meth:`from_source` and the builder methods (each returns a new pipeline); run it with
    :meth:`iterate` (or plain iteration), or in worker processes with ``tinkerflow.shell.io.executors``.
    ``T_co`` is the type of what it yields: stage outputs, or tuples of them once batched.

    Attributes:
        source: what it reads (:class:`Source`).
        stages: the composed stages, or ``None``.
        shuffle_spec: the seeded order (:class:`Shuffle`), or ``None`` for source order.
        epochs: passes over the source (``None``: endless).
        batching: :class:`BatchBySize`, :class:`BatchByTokens` or ``None`` (yield items).
        chunk_size: positions per unit of work; affects speed and laziness, never the output.
        error_policy: ``"raise"`` or ``"skip"`` (skip the failing item, count it).
        item_type: the item type the stages output (computed; composition is checked on construction).
    """

    source: Source[object]
    stages: Stage[Never, object] | None = None
    shuffle_spec: Shuffle | None = None
    epochs: int | None = 1
    batching: BatchBySize | BatchByTokens | None = None
    chunk_size: int = 512
    error_policy: ErrorPolicy = "raise"
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
            positive_int(self.epochs, "Pipeline", "epochs")
        if self.batching is not None and not isinstance(self.batching, (BatchBySize, BatchByTokens)):
            raise ConfigError("Pipeline", "batching", f"expected a batching spec, got {type(self.batching).__name__}.")
        positive_int(self.chunk_size, "Pipeline", "chunk_size")
        if self.error_policy not in ("raise", "skip"):
            raise ConfigError("Pipeline", "error_policy", f"must be 'raise' or 'skip', got {self.error_policy!r}.")
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
    def then(self, s1: StageLike[T_co, U], /) -> Pipeline[U]: ...
    @overload
    def then(self, s1: StageLike[T_co, U], s2: StageLike[U, V], /) -> Pipeline[V]: ...
    @overload
    def then(self, s1: StageLike[T_co, U], s2: StageLike[U, V], s3: StageLike[V, W], /) -> Pipeline[W]: ...
    @overload
    def then(
        self, s1: StageLike[T_co, U], s2: StageLike[U, V], s3: StageLike[V, W], s4: StageLike[W, X], /
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

    def iterate(
        self, state: PipelineState | None = None, *, executor: ChunkExecutor | None = None
    ) -> PipelineIterator[T_co]:
        """An iterator over the outputs, from the start or from ``state`` (exactly where that run stood).

        ``executor`` runs the chunks (default :func:`run_in_process`: here, one after the other); the output and
        the states are the same whichever runs them. To run the stages in worker processes, use
        ``tinkerflow.shell.io.executors`` (``iterate_parallel`` or a ``ProcessExecutor``).

        Raises:
            ConfigError: ``state`` belongs to a different source length or shuffle.
        """
        start = self.initial_state() if state is None else state
        return PipelineIterator(self, start, run_in_process if executor is None else executor)

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
            chunk_size=self.chunk_size,
            on_error=self.error_policy,
        )

    def describe(self) -> str:
        """A multi-line description: source, order, epochs, each stage with its types, batching, execution."""
        info = self.info()
        epochs = "endless" if info.epochs is None else str(info.epochs)
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
        lines.append(f"  running:  chunks of {info.chunk_size}; on error: {info.on_error}")
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

    def plan(self) -> ChunkPlan:
        """What turns a chunk of positions into outputs: the source, the steps (with the hidden length step of
        token batching) and the error policy. Executors send it to where the chunks run."""
        steps: tuple[Step, ...] = () if self.stages is None else self.stages.steps
        if isinstance(self.batching, BatchByTokens):
            spec = self.batching
            measure = Measure(spec.length, spec.max_tokens, spec.oversize)
            steps = (*steps, Step("batch_by_tokens", "map", measure, Any, tuple[Any, int]))
        return ChunkPlan(self.source, steps, self.error_policy)
