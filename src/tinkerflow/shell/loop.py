"""The one step loop (shell) of every training recipe: submit, finish the previous step, schedule, cadence.

SL, DPO and the training half of RL differ in what a step submits and what its metrics row holds; they share how
steps are driven, and this module is that part (as optax composes one update protocol, the recipes pass
callbacks, not subclasses):

* the learning rate of each step (:func:`tinkerflow.supervised.learning_rate_at` of the recipe's schedule, or a
  constant) and Adam's other settings (:func:`tinkerflow.training.loop_adam`), in one place;
* the evaluation cadence: :attr:`StepPlan.evaluate` says whether held-out metrics are due before this step
  (every ``eval_every`` steps after the first; the recipe queues them where its numbers need them);
* pipelining: ``submit`` returns a *finish* thunk; with ``pipelined=True`` step ``n`` is finished (awaited,
  logged, ``after_step`` called) only after step ``n + 1`` was submitted, so the backend always has work;
* the save cadence: every ``save_every`` steps and after the last one the pending step is finished and
  :meth:`tinkerflow.shell.io.run.Run.checkpoint` records the client's state with the data position
  (``data_state``) and any loop bookkeeping (``extra_state``), which is what exact resume needs.

A step left pending when an exception stops the loop is not logged: the run resumes from its last checkpoint and
writes that step again. Closing the run (and whatever else a recipe opened) is the recipe's ``with`` block.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias, TypeVar

import attrs

from tinkerflow.config import DataConfig
from tinkerflow.pipeline import Pipeline, PipelineIterator, PipelineState, Source
from tinkerflow.serde import from_json
from tinkerflow.shell.backends.protocol import TrainingClient
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.io.run_dir import atomic_write_text
from tinkerflow.supervised import LRSchedule, learning_rate_at
from tinkerflow.training import AdamParams, loop_adam

__all__ = ["Finish", "MetricRow", "StepPlan", "epoch_batches", "resume_batches", "run_steps"]

T = TypeVar("T")

#: One step's metrics row as the run logs it.
MetricRow: TypeAlias = Mapping[str, float | int | str | None]
#: Waits for a submitted step and returns its metrics row and the value the progress line shows.
Finish: TypeAlias = Callable[[], tuple[MetricRow, float]]


@attrs.frozen
class StepPlan:
    """What the loop decided for one step before the recipe submits it.

    Attributes:
        step: the step's index (0-based; the number of steps done before it).
        learning_rate: the schedule's learning rate of this step.
        adam: the optimizer step to take (:func:`tinkerflow.training.loop_adam` at ``learning_rate``).
        evaluate: held-out metrics are due before this step (every ``eval_every`` steps, never at step 0).
    """

    step: int
    learning_rate: float
    adam: AdamParams
    evaluate: bool


@attrs.frozen
class _Pending:
    step: int
    finish: Finish


def run_steps(
    run: Run,
    client: TrainingClient,
    submit: Callable[[StepPlan], Finish],
    *,
    total: int,
    learning_rate: float,
    lr_schedule: LRSchedule | None,
    eval_every: int,
    save_every: int,
    data_state: Callable[[int], str],
    extra_state: Callable[[int], str] | None = None,
    after_step: Callable[[int], None] | None = None,
    pipelined: bool = True,
) -> None:
    """Run steps ``run.start_step .. total - 1`` (see the module docstring).

    ``submit(plan)`` queues one step on ``client`` and returns its finish thunk. ``lr_schedule=None`` keeps
    ``learning_rate`` constant. ``data_state(done)`` / ``extra_state(done)`` give the JSON saved with the
    checkpoint after ``done`` steps. ``after_step(step)`` runs once step ``step``'s row is logged (tests kill a
    run there). ``pipelined=False`` finishes each step right after submitting it (RL: a step's rollouts need the
    previous step's weights).
    """
    pending: _Pending | None = None

    def finish(item: _Pending) -> None:
        row, progress = item.finish()
        run.log(item.step, row, progress)
        if after_step is not None:
            after_step(item.step)

    for step in range(run.start_step, total):
        lr = learning_rate if lr_schedule is None else learning_rate_at(learning_rate, lr_schedule, step, total)
        due = bool(eval_every) and step > 0 and step % eval_every == 0
        submitted = _Pending(step, submit(StepPlan(step=step, learning_rate=lr, adam=loop_adam(lr), evaluate=due)))
        if pending is not None:
            finish(pending)
        pending = submitted
        if not pipelined:
            finish(pending)
            pending = None
        done = step + 1
        if done == total or (save_every and done % save_every == 0):
            if pending is not None:
                finish(pending)
                pending = None
            extra = extra_state(done) if extra_state is not None else "{}"
            run.checkpoint(client, done, data_state(done), extra_json=extra)


def resume_batches(run: Run, pipeline: Pipeline[T]) -> PipelineIterator[T]:
    """The training batches from where the run stands (its checkpoint's pipeline position, or the start), with
    the pipeline's description written to ``pipeline.txt`` in the run directory."""
    atomic_write_text(pathlib.Path(run.run_dir) / "pipeline.txt", pipeline.describe() + "\n")
    return pipeline.iterate(None if run.state is None else from_json(run.state.data_state_json, PipelineState))


def epoch_batches(items: Sequence[T], config: DataConfig, *, item_type: object, name: str) -> Pipeline[tuple[T, ...]]:
    """The training batches of ``items``: a fresh seeded shuffle (``config.seed``) per epoch, ``config.epochs``
    epochs, ``config.batch_size`` items per batch (the last batch of an epoch may be smaller; none is dropped).
    ``items`` that are a pipeline :class:`~tinkerflow.pipeline.Source` (rows streamed from a file) are read in
    chunks through it; ``item_type`` and ``name`` describe a plain sequence."""
    source = (
        Pipeline.from_source(items)
        if isinstance(items, Source)
        else Pipeline.from_source(items, item_type=item_type, name=name)
    )
    return source.shuffle(seed=config.seed).repeat(config.epochs).batch(config.batch_size)
