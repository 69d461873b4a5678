"""Running a pipeline: the iterator and its exact, checkpointable position (private; re-exported). Pure.

How a run works: positions ``0..n-1`` of an epoch's order (see ``_order``) are cut into chunks of
``chunk_size`` positions. A chunk's items are read and pushed through the steps one step at a time (C-level
loops, no per-item Python beyond the stage calls) by a :class:`ChunkExecutor`: here, one chunk after the other
(:func:`run_in_process`), or in worker processes (``tinkerflow.shell.io.executors``); results are consumed in
chunk order, so the output is the same either way. Batches are cut from the outputs.

The position (:class:`PipelineState`) is ``(epoch, position, skip)``: the next output is the ``skip``-th output
of the items from ``position`` on in ``epoch``'s order. Because stages are pure and item-wise, restoring
recomputes at most one chunk and drops ``skip`` outputs: no repeats, no gaps, whatever the chunk size or executor
of the restoring run. A partial batch is never part of the state: a batch is yielded whole, and the state after
it points at the first item of the next batch.
"""

from __future__ import annotations

import collections
import itertools
import operator
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from tinkerflow.errors import ConfigError
from tinkerflow.pipeline._batching import BatchBySize
from tinkerflow.pipeline._chunk import ChunkExecutor, ChunkResult, ChunkTask
from tinkerflow.pipeline._errors import StageError
from tinkerflow.pipeline._order import EpochOrder
from tinkerflow.pipeline._state import PipelineState

if TYPE_CHECKING:
    from tinkerflow.pipeline._pipeline import Pipeline

__all__ = ["PipelineIterator"]

T_co = TypeVar("T_co", covariant=True)

_RECENT_ERRORS = 100


class PipelineIterator(Generic[T_co]):
    """A run of a pipeline: iterate it for the outputs, call :meth:`state` between outputs for the position.

    ``for x in iterator`` runs at C speed within a chunk (``iter()`` returns the underlying stream, a ``chain``
    over per-chunk list iterators); ``next()`` works too. ``executor`` runs the chunks (see
    :class:`ChunkExecutor`); close the iterator (or use it as a context manager) to release what the executor
    holds (worker processes) early.
    """

    def __init__(self, pipeline: Pipeline[T_co], state: PipelineState, executor: ChunkExecutor) -> None:
        self._pipeline = pipeline
        self._n = len(pipeline.source)
        self._check(state)
        self._plan = pipeline.plan()
        self._executor = executor
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
        self._results: Generator[ChunkResult, None, None] | None = None
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
        """Stop the run and release what its executor holds (worker processes)."""
        self._inner.close()
        results, self._results = self._results, None
        if results is not None:
            results.close()

    def __enter__(self) -> PipelineIterator[T_co]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------------

    def _tasks(self) -> Iterator[ChunkTask]:
        """The chunks from the restored position on: positions ``[begin, end)`` of each epoch, with their indices."""
        epochs = self._pipeline.epochs
        size = self._pipeline.chunk_size
        epoch, start = self._epoch, self._start
        if self._n == 0:
            return
        while epochs is None or epoch < epochs:
            for begin in range(start, self._n, size):
                end = min(begin + size, self._n)
                yield ChunkTask(epoch, begin, end, self._order.indices(epoch, begin, end))
            epoch, start = epoch + 1, 0

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
        self._results = results = self._executor(self._plan, self._tasks())
        for task, outputs, errors in results:
            if task.epoch != current_epoch:
                self._next_epoch()
                yield None
                if not produced and epochs is None:
                    raise ConfigError(
                        "Pipeline",
                        "stages",
                        f"epoch {current_epoch} produced no output; an endless run would never yield.",
                        "check the filters (and the error policy), or run a finite number of epochs.",
                    )
                current_epoch, produced = task.epoch, False
            self._enter_chunk(task.start, task.end, errors)
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
