"""Inspect tasks as tinkerflow evaluations: run a task against a sampler, read its log back as graded samples.
(Shell.)

:func:`run_inspect_task` is what an ``EvalSpec(kind="inspect", task=...)`` runs (through
:func:`tinkerflow.shell.evals.runner.inspect_runner`): the sampler is registered with the ``tinkerflow`` provider
(:mod:`tinkerflow.shell.evals.inspect_eval`) for the run, the task runs with no display, and each sample of its log
becomes a :class:`~tinkerflow.evals.ScoredSample` (its first scorer's value as the score: ``C``/``I`` as 1/0, a
number as is; the other scorers as details).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from inspect_ai.model import ChatMessageUser, get_model

from tinkerflow.errors import ConfigError
from tinkerflow.evals import EvalRun, EvalSpec, ScoredSample, summarize
from tinkerflow.render import Renderer
from tinkerflow.shell.backends.protocol import SamplingClient
from tinkerflow.shell.evals.inspect_eval import registered_sampler

if TYPE_CHECKING:
    from inspect_ai.log import EvalLog, EvalSample
    from inspect_ai.scorer import Score

__all__ = ["run_inspect_task", "scored_samples"]

_WHERE: Final = "inspect"


def _score_value(score: Score, where: str) -> float:
    from inspect_ai.scorer import value_to_float

    value = score.value
    if isinstance(value, list | dict):
        raise ConfigError(
            _WHERE, "score", f"{where}: the first scorer gives a {type(value).__name__}, not one number.",
            "make the task's first scorer give one value per sample (CORRECT/INCORRECT, a number).",
        )  # fmt: skip
    return float(value_to_float()(value))


def _prompt_text(sample: EvalSample) -> str:
    if isinstance(sample.input, str):
        return sample.input
    users = [message for message in sample.input if isinstance(message, ChatMessageUser)]
    return (users or sample.input)[-1].text if sample.input else ""


def _target_text(target: str | list[str]) -> str:
    if isinstance(target, str):
        return target
    return target[0] if len(target) == 1 else json.dumps(target, ensure_ascii=False)


def scored_samples(log: EvalLog) -> list[ScoredSample]:
    """The samples of an Inspect log as tinkerflow's graded samples: the first scorer's value as the score (CORRECT
    1, INCORRECT 0, PARTIAL 0.5, numbers as they are), the other scorers' values as details, a sample's ``id`` with
    ``#<epoch>`` when the task ran several epochs; in the order of the task's dataset (Inspect's log sorts by id)."""
    position = {sample_id: index for index, sample_id in enumerate(log.eval.dataset.sample_ids or [])}
    samples = sorted(log.samples or [], key=lambda sample: (position.get(sample.id, len(position)), sample.epoch))
    epochs = len({sample.epoch for sample in samples}) > 1
    rows = []
    for sample in samples:
        sample_id = f"{sample.id}#{sample.epoch}" if epochs else str(sample.id)
        if not sample.scores:
            problem = sample.error.message if sample.error is not None else "it has no score"
            raise ConfigError(_WHERE, "samples", f"sample {sample_id!r} was not scored: {problem}.")
        (first, score), *others = sample.scores.items()
        details: dict[str, float] = {}
        for name, other in others:
            if not isinstance(other.value, list | dict):
                details[name] = _score_value(other, f"sample {sample_id!r}, scorer {name!r}")
        logs = {key: value for key, value in (("answer", score.answer), ("explanation", score.explanation)) if value}
        logs["scorer"] = first
        rows.append(
            ScoredSample(
                sample_id, _prompt_text(sample), sample.output.completion, _target_text(sample.target),
                _score_value(score, f"sample {sample_id!r}"), details, logs,
            )
        )  # fmt: skip
    return rows


def _eval_log(run: Callable[[], list[EvalLog]]) -> EvalLog:
    """``run()`` here, or on a thread of its own when this thread already runs an event loop (Inspect starts one)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        logs = run()
    else:
        result: list[list[EvalLog]] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                result.append(run())
            except BaseException as error:  # re-raised in the caller's thread
                errors.append(error)

        thread = threading.Thread(target=target, name="tinkerflow-inspect")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        logs = result[0]
    if len(logs) != 1:
        raise ConfigError(_WHERE, "task", f"ran {len(logs)} evaluations; an inspect evaluation runs one task.")
    return logs[0]


def run_inspect_task(
    spec: EvalSpec,
    sampler: SamplingClient,
    renderer: Renderer,
    *,
    seed: int = 0,
    log_dir: str | os.PathLike[str] | None = None,
) -> EvalRun:
    """Run the Inspect task ``spec.task`` against ``sampler``; its first score's mean is the result.

    The sampler is registered for the run (:func:`registered_sampler`) with ``spec.max_tokens`` and
    ``spec.temperature`` as its defaults (a task's own generation config wins) and ``seed`` for every request;
    ``spec.limit`` limits the samples. Inspect's log goes to ``log_dir`` (default: a temporary folder, removed).

    Raises:
        ConfigError: the task failed (its error is in the message), a sample has no score, or the first scorer's
            values are not numbers.
    """
    from inspect_ai import eval as inspect_eval

    import tinkerflow.shell.evals.inspect_tasks  # noqa: F401 - registers the bundled tasks

    if not spec.task:
        raise ConfigError(f"EvalSpec[{spec.name!r}]", "task", "is required for kind 'inspect'.")
    task = spec.task
    with contextlib.ExitStack() as stack:
        name = stack.enter_context(
            registered_sampler(sampler, renderer, max_tokens=spec.max_tokens, temperature=spec.temperature, seed=seed)
        )
        folder = os.fspath(log_dir) if log_dir is not None else stack.enter_context(tempfile.TemporaryDirectory())
        model = get_model(name, memoize=False)  # not cached by Inspect: the sampler is released after the run

        def run() -> list[EvalLog]:
            return inspect_eval(
                task, model=model, log_dir=folder, display="none", limit=spec.limit, seed=seed, score_display=False,
                ctl_server=False,
            )  # fmt: skip

        log = _eval_log(run)
        if log.status != "success":
            problem = log.error.message if log.error is not None else f"it ended {log.status}"
            raise ConfigError(f"EvalSpec[{spec.name!r}]", "task", f"Inspect task {task!r} failed: {problem}")
        samples = scored_samples(log)  # the log reads its samples from its file, which goes with the block
    return EvalRun(summarize(spec.name, spec.kind, samples), tuple(samples))
