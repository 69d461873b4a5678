"""Evaluations inside a training loop: the ``evals`` of SL / RL / DPO configs. (Shell.)

:class:`InlineEvals` loads every evaluation's examples before training starts (so a bad file fails at once, not
after an hour), then runs them with a sampling client of the weights as they are:

* **before training** (the row of step 0, when the run starts fresh);
* **before step s** when it is due (``spec.every``; ``null``: the run's ``eval_every``; 0: only before and after):
  a sampling client is queued with ``save_weights_and_get_sampling_client`` before the step's update, so it holds
  the weights after ``s`` steps; the evaluation runs when the step is finished and its metrics join the step's row;
* **after training**: a row of its own at step ``total`` (a finished run opened again rewrites it).

Metrics are ``<name>/<kind>`` (the mean score), ``<name>/stderr`` and ``<name>/<sub-score>``, in
``metrics.jsonl`` and every sink; ``evals.html`` charts the means. Each evaluation's transcript (every answer and
its grade) is ``evals/<name>/step-NNNNNN.jsonl`` in the run directory.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable, Mapping, Sequence

from tinkerflow.chat import Conversation
from tinkerflow.errors import ConfigError
from tinkerflow.evals import EvalExample, EvalRun, EvalSpec, examples_from_conversations
from tinkerflow.render import Renderer, get_renderer, renderer_for_model
from tinkerflow.shell.backends.protocol import Backend, SamplingClient, TrainingClient
from tinkerflow.shell.evals.runner import (
    Judge,
    evaluate,
    inspect_runner,
    load_examples,
    load_schema,
    write_transcript,
)
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.io.run_dir import MetricsLog
from tinkerflow.shell.loop import Finish, MetricRow, StepPlan

__all__ = ["InlineEvals", "check_evals", "describe", "make_judge"]


def make_judge(backend: Backend, judge_model: str, renderer_name: str | None = None) -> Judge:
    """The judge of ``judge`` evaluations: a sampling client of ``judge_model`` (a checkpoint path when it holds
    ``://``, else a base model) with its model family's renderer (or ``renderer_name``)."""
    if "://" in judge_model:
        sampler = backend.create_sampling_client(model_path=judge_model).result()
    else:
        sampler = backend.create_sampling_client(base_model=judge_model).result()
    base = sampler.get_base_model()
    tokenizer = backend.get_tokenizer(base)
    renderer = get_renderer(renderer_name, tokenizer) if renderer_name else renderer_for_model(base, tokenizer)
    return Judge(sampler, renderer)


def check_evals(specs: Sequence[EvalSpec], heldout: Sequence[Conversation] | None = None) -> str:
    """Load and check every evaluation's examples and schema (raising the typed errors a run would raise at its
    start) and say what they are: ``""`` without evaluations, else ``"; evals: name (kind, N examples), ..."``
    (the ``--dry-run`` line)."""
    if not specs:
        return ""
    parts = []
    for spec in specs:
        load_schema(spec)
        if spec.kind == "inspect":
            parts.append(f"{spec.name} (inspect task {spec.task})")
            continue
        examples = InlineEvals.examples_of(spec, heldout)
        parts.append(f"{spec.name} ({spec.kind}, {len(examples)} examples)")
    return "; evals: " + ", ".join(parts)


class InlineEvals:
    """The evaluations of one run (see the module docstring).

    Args:
        specs: the config's ``evals``.
        renderer: the run's renderer (``None`` only without evaluations).
        backend: makes judges (``judge`` evaluations).
        base_model: the run's base model (the default judge).
        run_dir: where transcripts go.
        seed: the sampling seed of every answer.
        heldout: the run's held-out conversations (SL), for evaluations with ``data: null``.
        eval_every: the run's ``eval_every`` (the cadence of evaluations with ``every: 0``).
    """

    def __init__(
        self,
        specs: Sequence[EvalSpec],
        renderer: Renderer | None,
        *,
        backend: Backend,
        base_model: str,
        run_dir: str | pathlib.Path,
        seed: int,
        eval_every: int,
        heldout: Sequence[Conversation] | None = None,
        concurrency: int = 8,
    ) -> None:
        self.specs = tuple(specs)
        if self.specs and renderer is None:
            raise ConfigError("InlineEvals", "renderer", "evaluations need the renderer of the trained model.")
        self._renderer = renderer
        self.backend = backend
        self.base_model = base_model
        self.run_dir = pathlib.Path(run_dir)
        self.seed = seed
        self.eval_every = eval_every
        self.concurrency = concurrency
        self._judges: dict[str, Judge] = {}
        self.examples: dict[str, tuple[EvalExample, ...]] = {}
        self.schemas: dict[str, Mapping[str, object] | None] = {}
        self._inspect = inspect_runner(self.specs)
        for spec in self.specs:
            self.examples[spec.name] = self.examples_of(spec, heldout)
            self.schemas[spec.name] = load_schema(spec)

    @staticmethod
    def examples_of(spec: EvalSpec, heldout: Sequence[Conversation] | None) -> tuple[EvalExample, ...]:
        """The examples of ``spec``: its file, or with ``data: null`` the run's held-out conversations."""
        if spec.kind == "inspect":
            return ()
        if spec.data is not None:
            return load_examples(spec)
        if heldout is None:
            raise ConfigError(
                f"EvalSpec[{spec.name!r}]", "data", "is null (the run's held-out conversations), but this recipe has "
                "no held-out conversations.", "give a JSONL file.",
            )  # fmt: skip
        if not heldout:
            raise ConfigError(f"EvalSpec[{spec.name!r}]", "data", "is null, and the run has no held-out data.")
        return examples_from_conversations(heldout, spec)

    @property
    def renderer(self) -> Renderer:
        """The run's renderer."""
        if self._renderer is None:
            raise ConfigError("InlineEvals", "renderer", "evaluations need the renderer of the trained model.")
        return self._renderer

    def __bool__(self) -> bool:
        return bool(self.specs)

    def _judge(self, spec: EvalSpec) -> Judge | None:
        if spec.kind != "judge":
            return None
        model = spec.judge_model or self.base_model
        if model not in self._judges:
            self._judges[model] = make_judge(self.backend, model, None if spec.judge_model else self.renderer.name)
        return self._judges[model]

    def run(self, sampler: SamplingClient, step: int, specs: Sequence[EvalSpec] | None = None) -> dict[str, float]:
        """Run ``specs`` (default: all) with ``sampler``, write their transcripts as of ``step``, return the
        metrics-row entries."""
        row: dict[str, float] = {}
        for spec in self.specs if specs is None else specs:
            outcome = self.evaluate(spec, sampler)
            write_transcript(self.run_dir / "evals" / spec.name / f"step-{step:06d}.jsonl", outcome, step=step)
            row.update(outcome.result.as_row())
        return row

    def evaluate(self, spec: EvalSpec, sampler: SamplingClient) -> EvalRun:
        """One evaluation with ``sampler``."""
        return evaluate(
            spec,
            self.examples[spec.name],
            sampler,
            self.renderer,
            seed=self.seed,
            concurrency=self.concurrency,
            schema=self.schemas[spec.name],
            judge=self._judge(spec),
            inspect=self._inspect,
        )

    def due(self, step: int) -> tuple[EvalSpec, ...]:
        """The evaluations due before step ``step`` (all of them at step 0)."""
        if step == 0:
            return self.specs
        return tuple(spec for spec in self.specs if spec.due(step, self.eval_every))

    def wrap(self, client: TrainingClient, submit: Callable[[StepPlan], Finish], start_step: int) -> Callable[
        [StepPlan], Finish
    ]:  # fmt: skip
        """``submit`` with the due evaluations added: the sampling client is queued before the step is submitted,
        the evaluation runs when the step is finished, and its metrics join the step's row. Step 0 of a fresh run
        evaluates everything (before training); a resumed run does not evaluate its first step again unless due."""
        if not self.specs:
            return submit

        def wrapped(plan: StepPlan) -> Finish:
            due = self.due(plan.step) if (plan.step > 0 or start_step == 0) else ()
            sampler = client.save_weights_and_get_sampling_client() if due else None
            finish = submit(plan)

            def finished() -> tuple[MetricRow, float]:
                row, progress = finish()
                if sampler is None:
                    return row, progress
                return {**row, **self.run(sampler.result(), plan.step, due)}, progress

            return finished

        return wrapped

    def final(self, run: Run, client: TrainingClient, total: int) -> dict[str, float]:
        """Evaluate the trained weights, log them as the row of step ``total`` and chart every evaluation."""
        if not self.specs:
            return {}
        row = self.run(client.save_weights_and_get_sampling_client().result(), total)
        run.metrics.log(total, row)
        for sink in run.sinks:
            sink.log(total, row)
        run.write_chart([f"{spec.name}/{spec.kind}" for spec in self.specs], "Evaluations", "evals.html")
        return row

    def report(self, run_dir: str | pathlib.Path, after: Mapping[str, float]) -> str:
        """One line per evaluation: its score before training (step 0 of the metrics log) -> after."""
        rows = MetricsLog.read(pathlib.Path(run_dir) / "metrics.jsonl")
        first = next((row for row in rows if row.get("step") == 0), {})
        lines = []
        for spec in self.specs:
            key = f"{spec.name}/{spec.kind}"
            lines.append(describe(spec, first.get(key), after.get(key), after.get(f"{spec.name}/stderr")))
        return "".join(lines)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def describe(spec: EvalSpec, before: object, after: object, stderr: object = None) -> str:
    """``name (kind): before -> after (± stderr)`` as a line."""
    label = {"nll": "mean NLL", "judge": "win rate", "multiple_choice": "accuracy"}.get(spec.kind, "accuracy")
    b, a, e = _number(before), _number(after), _number(stderr)
    head = f"held-out {spec.name} ({spec.kind}) {label}: "
    if a is None or math.isnan(a):
        return head + "n/a\n"
    text = (f"{b:.3f} -> " if b is not None else "") + f"{a:.3f}"
    return head + text + (f" (± {e:.3f})" if e else "") + "\n"
