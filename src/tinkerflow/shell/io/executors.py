"""Running pipeline chunks in worker processes (shell: starts processes).

A :class:`tinkerflow.pipeline.Pipeline` is a value and runs in this process by default. :class:`ProcessExecutor`
is a :class:`tinkerflow.pipeline.ChunkExecutor` that sends its chunks to a pool of worker processes, a bounded
number in flight, and yields the results in chunk order: the output, the errors and every
:class:`~tinkerflow.pipeline.PipelineState` are exactly those of the in-process run, so a state saved by a
parallel run restores into a sequential one and back.

Use workers for expensive stages (rendering, tokenizing); for trivial stages the inter-process traffic costs
more than it saves. Stage functions, the source and the items travel by multiprocessing's usual means: with the
``spawn``/``forkserver`` start methods stage functions must be importable (module-level, not lambdas).

    with iterate_parallel(pipeline, workers=4, state=saved) as batches:
        for batch in batches:
            ...
"""

from __future__ import annotations

import collections
import multiprocessing
from collections.abc import Generator, Iterator, Sequence
from multiprocessing.pool import AsyncResult
from typing import TypeVar

import attrs

from tinkerflow._validate import int_at_least, positive_int
from tinkerflow.errors import ConfigError
from tinkerflow.pipeline import (
    ChunkOutput,
    ChunkPlan,
    ChunkResult,
    ChunkTask,
    Pipeline,
    PipelineIterator,
    PipelineState,
)

__all__ = ["ProcessExecutor", "check_start_method", "iterate_parallel"]

T = TypeVar("T")

_WORKER_PLAN: ChunkPlan | None = None


def _init_worker(plan: ChunkPlan) -> None:
    global _WORKER_PLAN  # one plan per worker process, set once by the pool initializer
    _WORKER_PLAN = plan


def _run_in_worker(epoch: int, start: int, indices: Sequence[int]) -> ChunkOutput:
    assert _WORKER_PLAN is not None, "worker started without a plan"
    return _WORKER_PLAN.run(epoch, start, indices)


def check_start_method(value: str | None, where: str) -> None:
    """Refuse a multiprocessing start method this platform does not have (``None``, the default, always passes)."""
    available = multiprocessing.get_all_start_methods()
    if value is not None and value not in available:
        raise ConfigError(
            where, "start_method", f"{value!r} is not available here.", f"use one of {available} or None."
        )


@attrs.frozen
class ProcessExecutor:
    """Runs a pipeline's chunks in ``workers`` worker processes; the output equals the in-process run.

    Pass it to :meth:`Pipeline.iterate` (``pipeline.iterate(state, executor=ProcessExecutor(4))``). Each call
    starts its own pool, which stops when the run ends, fails or is closed.

    Attributes:
        workers: worker processes (at least 1).
        start_method: the multiprocessing start method (``None``: the platform default).
    """

    workers: int
    start_method: str | None = None

    def __attrs_post_init__(self) -> None:
        positive_int(self.workers, "ProcessExecutor", "workers")
        check_start_method(self.start_method, "ProcessExecutor")

    def __call__(self, plan: ChunkPlan, tasks: Iterator[ChunkTask]) -> Generator[ChunkResult, None, None]:
        """The results of ``tasks`` in order, computed by the pool (at most ``2 * workers + 1`` in flight)."""
        context = multiprocessing.get_context(self.start_method)
        try:
            pool = context.Pool(self.workers, initializer=_init_worker, initargs=(plan,))
        except Exception as error:  # typically a stage or source that cannot be sent to a spawned process
            raise ConfigError(
                "ProcessExecutor",
                "stages",
                f"could not start {self.workers} worker processes ({type(error).__name__}: {error}).",
                "use module-level functions (not lambdas or local functions) and a picklable source, or the "
                "'fork' start method, or run in this process (Pipeline.iterate).",
            ) from error
        try:
            pending: collections.deque[tuple[ChunkTask, AsyncResult[ChunkOutput]]] = collections.deque()
            for task in tasks:
                pending.append((task, pool.apply_async(_run_in_worker, (task.epoch, task.start, task.indices))))
                if len(pending) > 2 * self.workers:
                    done, result = pending.popleft()
                    yield done, *result.get()
            while pending:
                done, result = pending.popleft()
                yield done, *result.get()
        finally:
            pool.terminate()
            pool.join()


def iterate_parallel(
    pipeline: Pipeline[T],
    *,
    workers: int,
    chunk_size: int | None = None,
    start_method: str | None = None,
    state: PipelineState | None = None,
) -> PipelineIterator[T]:
    """Iterate ``pipeline`` with its stages in ``workers`` worker processes (0: in this process).

    The same outputs, errors and states as ``pipeline.iterate(state)``; ``chunk_size`` (positions sent to a
    worker at a time) replaces the pipeline's when given and never changes the output. Close the iterator (or
    use it as a context manager) to stop the workers early.

    Raises:
        ConfigError: ``workers`` is negative, ``start_method`` is not available here, ``state`` belongs to
            another pipeline, or (on the first item) the stages or source cannot be sent to a worker.
    """
    int_at_least(workers, "iterate_parallel", "workers", 0)
    if chunk_size is not None:
        pipeline = pipeline.with_chunk_size(chunk_size)
    if workers == 0:
        check_start_method(start_method, "iterate_parallel")
        return pipeline.iterate(state)
    return pipeline.iterate(state, executor=ProcessExecutor(workers, start_method=start_method))
