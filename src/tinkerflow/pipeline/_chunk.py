"""Chunks of a run: what turns a chunk of positions into outputs, and who runs the chunks (private). Pure.

A run cuts each epoch's order into :class:`ChunkTask` records (``chunk_size`` positions each). A
:class:`ChunkPlan` (the source, the steps and the error policy) turns one task into its outputs and the errors
its skipped items raised. A :class:`ChunkExecutor` runs the tasks and yields their results **in task order**:
:func:`run_in_process` does it here, one after the other; ``tinkerflow.shell.io.executors`` runs them in worker
processes with the same output. Because the plan is pure and the results come in order, how the chunks were run
never shows in the output or in the run's position.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from typing import Protocol, TypeAlias, cast

import attrs

from tinkerflow.pipeline._errors import ErrorPolicy, StageError, describe_cause, format_details
from tinkerflow.pipeline._source import Source
from tinkerflow.pipeline._steps import Compiled, Failure, Step, apply_one, compile_steps, run_compiled

__all__ = ["ChunkExecutor", "ChunkOutput", "ChunkPlan", "ChunkResult", "ChunkTask", "run_in_process"]


@attrs.frozen
class ChunkTask:
    """One unit of work: positions ``[start, end)`` of epoch ``epoch``'s order, read at source ``indices``."""

    epoch: int
    start: int
    end: int
    indices: Sequence[int]


ChunkOutput: TypeAlias = tuple[list[object], list[StageError]]
"""A chunk's outputs in order, and the errors of the items the ``"skip"`` policy dropped."""

ChunkResult: TypeAlias = tuple[ChunkTask, list[object], list[StageError]]
"""A task with its outputs and skipped errors, as an executor yields it."""


class ChunkPlan:
    """Everything needed to turn a chunk of positions into outputs: the source, the steps, the error policy.

    It pickles without its compiled steps (they are rebuilt on first use), so it travels to worker processes.
    """

    __slots__ = ("_compiled", "policy", "source", "steps")

    def __init__(self, source: Source[object], steps: tuple[Step, ...], policy: ErrorPolicy) -> None:
        self.source = source
        self.steps = steps
        self.policy = policy
        self._compiled: Compiled | None = None

    def __getstate__(self) -> dict[str, object]:
        return {"source": self.source, "steps": self.steps, "policy": self.policy}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.source = cast("Source[object]", state["source"])
        self.steps = cast("tuple[Step, ...]", state["steps"])
        self.policy = cast("ErrorPolicy", state["policy"])
        self._compiled = None

    @property
    def compiled(self) -> Compiled:
        """The steps, compiled on first use."""
        if self._compiled is None:
            self._compiled = compile_steps(self.steps)
        return self._compiled

    def run(self, epoch: int, start: int, indices: Sequence[int]) -> ChunkOutput:
        """The outputs of the items at ``indices`` (positions ``start...``), and the errors skipped.

        Raises:
            StageError: an item failed and the policy is ``"raise"``.
        """
        try:
            items = self.source.read(indices)
            if not isinstance(items, list):
                items = list(items)
            if len(items) != len(indices):
                raise ValueError(f"the source returned {len(items)} items for {len(indices)} indices")
            return run_compiled(self.compiled, items), []
        except Exception:
            return self._run_one_by_one(epoch, start, indices)

    def _run_one_by_one(self, epoch: int, start: int, indices: Sequence[int]) -> ChunkOutput:
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
            result = apply_one(self.compiled, read[0])
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


class ChunkExecutor(Protocol):
    """Runs a run's chunk tasks and yields their results in task order.

    The contract: call ``plan.run(task.epoch, task.start, task.indices)`` for every task (anywhere: in this
    process, in a worker process), yield ``(task, outputs, errors)`` in the order the tasks came, pull tasks
    lazily (an endless run has endless tasks), and let a :class:`~tinkerflow.pipeline.StageError` that
    ``plan.run`` raises propagate. It is a generator so that closing it releases what it holds (worker
    processes): :meth:`PipelineIterator.close` closes it.
    """

    def __call__(self, plan: ChunkPlan, tasks: Iterator[ChunkTask]) -> Generator[ChunkResult, None, None]: ...


def run_in_process(plan: ChunkPlan, tasks: Iterator[ChunkTask]) -> Generator[ChunkResult, None, None]:
    """The default :class:`ChunkExecutor`: each chunk in this process, one after the other."""
    for task in tasks:
        outputs, errors = plan.run(task.epoch, task.start, task.indices)
        yield task, outputs, errors
