"""The DPO recipe (shell): comparisons -> pairs of datums -> custom-loss steps -> metrics, checkpoints, chart.

Everything that turns data into data is the pure core (:mod:`tinkerflow.preference`: layouts, pairing,
``sequence_logprobs``, ``dpo_loss``, :mod:`~tinkerflow.preference.evaluation`); the steps are driven by the shared
loop (:func:`tinkerflow.shell.loop.run_steps`) over the shared run machinery (:class:`tinkerflow.shell.io.run.Run`).

1. :func:`prepare_dpo_data` reads the comparisons with the one data-source loader (JSONL in any preference layout,
   ``hf:``/``hf-disk:``, or rows given in code), splits off the held-out ones and pairs them
   (:func:`tinkerflow.preference.dpo_data.dpo_data`: ties, bad rows, ``max_length``; comparisons are never cut).
2. The training order is a pipeline of *pair* indices (seeded per-epoch shuffle, ``batch_size`` pairs per batch),
   so a batch is always whole pairs, sent interleaved ``(chosen_0, rejected_0, chosen_1, ...)``.
3. Reference logprobs are computed once per visited pair before training and stored in the run directory
   (:mod:`tinkerflow.shell.recipes.dpo_reference`), so a resumed run uses exactly the same values; with the initial
   weights as reference the loss at step 0 is exactly ``log 2``.
4. Per step: ``forward_backward_custom`` with :func:`~tinkerflow.shell.recipes.dpo_loss.dpo_loss_fn`, then
   ``optim_step`` at the schedule's learning rate; the previous step is finished while the backend works.
5. Held-out :class:`~tinkerflow.preference.evaluation.DPOEval` before training, every ``eval_every`` steps and
   after training; checkpoints every ``save_every`` steps and at the end; ``dpo.html`` charts loss and accuracies.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TextIO, TypeAlias

import attrs
import numpy as np

from tinkerflow.datum import Datum
from tinkerflow.pipeline import Pipeline, PipelineIterator
from tinkerflow.preference.config import DPOConfig
from tinkerflow.preference.dpo_data import DPOData, dpo_data, dpo_data_of, pair_outcomes, pair_precheck
from tinkerflow.preference.evaluation import DPOEval, eval_from_row, evaluate_pairs, policy_eval, weight_sums
from tinkerflow.preference.records import LabeledComparison, TieError
from tinkerflow.render import Renderer
from tinkerflow.serde import to_json
from tinkerflow.shell.backends.protocol import APIFuture, Backend, TrainingClient
from tinkerflow.shell.evals.inline import InlineEvals
from tinkerflow.shell.io.charts import metrics_chart_html
from tinkerflow.shell.io.data import load_split, preference_format
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.io.run_dir import MetricsLog, atomic_write_text
from tinkerflow.shell.io.scan import Check, passes, per_row, scan_split, streamed
from tinkerflow.shell.io.sinks import MetricsSink
from tinkerflow.shell.io.streaming import StreamedPairs
from tinkerflow.shell.loop import Finish, StepPlan, epoch_batches, resume_batches, run_steps
from tinkerflow.shell.recipes.dpo_loss import dpo_loss_fn
from tinkerflow.shell.recipes.dpo_reference import REFERENCE_FILE, Reference, interleaved, load_or_compute_reference

__all__ = [
    "CHART_FILE",
    "REFERENCE_FILE",
    "DPOData",
    "DPOEval",
    "DPOResult",
    "PreferenceRow",
    "dpo_loss_fn",
    "dpo_train_pipeline",
    "evaluate_pairs",
    "prepare_dpo_data",
    "run_dpo",
]

#: A comparison given in code: a record, or one row in a layout of :mod:`tinkerflow.preference.data`.
PreferenceRow: TypeAlias = LabeledComparison | Mapping[str, object]
#: The chart of training and held-out DPO loss and accuracies.
CHART_FILE: Final = "dpo.html"
CHART_KEYS: Final = ("dpo_loss", "eval_dpo_loss", "accuracy", "eval_accuracy", "eval_policy_accuracy")


@attrs.frozen
class DPOResult:
    """What a finished (or resumed-and-finished) DPO run reports.

    ``eval_before`` is read back from the metrics log when the run was resumed; both evals are ``None`` when there
    are no held-out pairs.
    """

    steps: int
    train_pairs: int
    test_pairs: int
    skipped_rows: int
    dropped_ties: int
    eval_before: DPOEval | None
    eval_after: DPOEval | None
    final_checkpoint: str
    sampler_checkpoint: str
    chart: str
    evals_after: Mapping[str, float] = attrs.field(factory=dict)


def prepare_dpo_data(
    config: DPOConfig,
    renderer: Renderer,
    *,
    train_rows: Sequence[PreferenceRow] | None = None,
    test_rows: Sequence[PreferenceRow] | None = None,
) -> DPOData:
    """Load, split, pair and check the comparisons of ``config`` (raising or counting bad rows per its policy).

    Training comparisons come from ``train_rows`` when given (records or row dicts; bad rows are named
    ``<memory>[i]``), else from ``config.train_data`` (JSONL, ``hf:``, ``hf-disk:``). Held-out ones come from
    ``test_rows``, else ``config.test_data``, else the ``hf_test_split`` of an HF ``train_data``, else a seeded
    ``test_fraction`` split of the training rows (taken before ties are dropped). A file source is streamed
    (:mod:`tinkerflow.shell.io.streaming`): each comparison is checked once, then rendered again when a batch
    (or the reference pass) reads it; the pairs are the same as if they were held in memory.

    Raises:
        PreferenceFormatError: a row that is not a comparison (``bad_rows="raise"``), naming ``file:line``.
        TieError: a tie with ``ties="raise"``, naming the row.
        DataError: a row that cannot be rendered or is too long (``bad_rows="raise"``), or no training pair at all.
    """
    format = preference_format(config.layout)
    if train_rows is not None:
        return dpo_data(load_split(config, format, train_rows=train_rows, test_rows=test_rows), renderer, config)
    make_many = functools.partial(pair_outcomes, renderer=renderer, config=config)
    checks: list[Check[LabeledComparison]] = [
        per_row(functools.partial(pair_precheck, config=config)),
        passes(make_many),
    ]
    split = scan_split(config, format, checks, fatal=(TieError,), test_rows=test_rows)
    train = StreamedPairs(streamed(split, make_many, item_type=tuple, name="train pairs"), split.ranks)
    return dpo_data_of(
        train, split.test, renderer, config, skipped=split.skipped, ties=split.left_out, source=config.train_data
    )


def dpo_train_pipeline(data: DPOData, config: DPOConfig) -> Pipeline[tuple[int, ...]]:
    """The training batches as tuples of pair indices: a fresh seeded shuffle per epoch, ``batch_size`` pairs per
    batch (the last batch of an epoch may be smaller; no pair is dropped, none is split)."""
    return epoch_batches(range(len(data.train)), config, item_type=int, name="train pairs")


def run_dpo(
    config: DPOConfig,
    backend: Backend,
    renderer: Renderer,
    *,
    data: DPOData | None = None,
    out: TextIO | None = None,
    after_step: Callable[[int], None] | None = None,
    sinks: Sequence[MetricsSink] | None = None,
) -> DPOResult:
    """Run (or resume) DPO as ``config`` says; see the module docstring.

    ``after_step(step)`` is called once step ``step``'s metrics are logged (tests use it to kill a run).
    ``sinks`` receive every metrics row too and are closed when the loop ends; ``None`` makes the ones
    ``config.log_to`` asks for, ``()`` none. Each metrics row holds the step's ``dpo_loss``, ``accuracy``,
    ``margin``, ``chosen_reward``, ``rejected_reward``, ``policy_accuracy``, ``lr``, ``pairs``, ``tokens``,
    ``skipped_rows``, ``dropped_ties`` and, on evaluation steps, the :class:`DPOEval` of the weights *before*
    that step as ``eval_*`` (row 0: before training).
    """
    data = data if data is not None else prepare_dpo_data(config, renderer)
    pipeline = dpo_train_pipeline(data, config)
    total = config.total_steps(len(data.train))
    run = Run.start(
        config.run_dir, config, log_to=config.log_to, sinks=sinks, total_steps=total, out=out, progress_label="dpo_loss"
    )
    with contextlib.closing(run):
        batches = resume_batches(run, pipeline)
        if not run.resumed:
            run.out.write(_describe_run(config, data, total))
        client = run.training_client(backend, config.base_model, lora_rank=config.lora_rank, seed=config.seed)
        reference = load_or_compute_reference(run, client, backend, data, config, pipeline, total)
        test_datums = tuple(data.test.interleaved())  # (chosen_0, rejected_0, chosen_1, ...), built once
        evaluate = functools.partial(_evaluate, client, data, test_datums, reference, config.beta)
        first = (
            _first_eval(client, data, test_datums, reference, config) if run.start_step == 0 and test_datums else None
        )
        eval_before = first.result() if first is not None else None
        if eval_before is not None:
            run.out.write(_describe_eval("held-out before training", eval_before))
        evals = InlineEvals(
            config.evals, renderer, backend=backend, base_model=config.base_model, run_dir=config.run_dir,
            seed=config.seed, eval_every=config.eval_every,
        )  # fmt: skip
        run_steps(
            run,
            client,
            evals.wrap(client, _submitter(client, data, reference, config, batches, evaluate, first), run.start_step),
            total=total,
            learning_rate=config.learning_rate,
            lr_schedule=config.lr_schedule,
            eval_every=config.eval_every,
            save_every=config.save_every,
            data_state=lambda done: to_json(batches.state()),
            after_step=after_step,
        )
        evals_after = evals.final(run, client, total)
    eval_after = evaluate().result() if len(data.test) else None
    result = _report(run, client, data, total, eval_before, eval_after)
    run.out.write(evals.report(config.run_dir, evals_after))
    return attrs.evolve(result, evals_after=evals_after)


def _evaluate(
    client: TrainingClient, data: DPOData, test_datums: Sequence[Datum], reference: Reference, beta: float
) -> APIFuture[DPOEval]:
    """Held-out :class:`DPOEval` of the client's current weights, computed by a forward pass queued now."""
    return client.forward(list(test_datums), "cross_entropy").map(
        lambda output: evaluate_pairs(
            output.logprobs_D, data.test, reference.test_chosen, reference.test_rejected, beta
        )
    )


def _first_eval(
    client: TrainingClient, data: DPOData, test_datums: Sequence[Datum], reference: Reference, config: DPOConfig
) -> APIFuture[DPOEval]:
    """The evaluation before training; with the initial weights as reference its logprobs are already known."""
    if config.reference_model is not None:
        return _evaluate(client, data, test_datums, reference, config.beta)
    policy_D = np.stack([reference.test_chosen, reference.test_rejected], axis=1).reshape(-1)
    sums = weight_sums(list(test_datums))
    return APIFuture.completed(policy_eval(policy_D, sums, reference.test_chosen, reference.test_rejected, config.beta))


def _submitter(
    client: TrainingClient,
    data: DPOData,
    reference: Reference,
    config: DPOConfig,
    batches: PipelineIterator[tuple[int, ...]],
    evaluate: Callable[[], APIFuture[DPOEval]],
    first: APIFuture[DPOEval] | None,
) -> Callable[[StepPlan], Finish]:
    """How one DPO step is submitted: the due evaluation, the next batch of pairs, the custom loss, Adam."""

    def submit(plan: StepPlan) -> Finish:
        eval_future = first if plan.step == 0 else (evaluate() if len(data.test) and plan.evaluate else None)
        batch = next(batches)
        ref_chosen, ref_rejected = reference.batch(batch)
        box: list[Mapping[str, float]] = []
        future = client.forward_backward_custom(
            interleaved(data.train, batch), dpo_loss_fn(ref_chosen, ref_rejected, config.beta, report=box.append)
        )
        client.optim_step(plan.adam)

        def finish() -> tuple[Mapping[str, float | int | str | None], float]:
            future.result()
            metrics = box[0]
            row: dict[str, float | int | str | None] = {
                **metrics,
                "tokens": int(metrics["tokens"]),
                "lr": plan.learning_rate,
                "pairs": len(batch),
                "skipped_rows": data.skipped_rows,
                "dropped_ties": data.dropped_ties,
            }
            if eval_future is not None:
                row.update(eval_future.result().as_row())
            return row, metrics["dpo_loss"]

        return finish

    return submit


def _report(
    run: Run,
    client: TrainingClient,
    data: DPOData,
    total: int,
    eval_before: DPOEval | None,
    eval_after: DPOEval | None,
) -> DPOResult:
    """The chart, the final sampler weights, the before/after summary and the result of a finished run."""
    rows = MetricsLog.read(run.run_dir / "metrics.jsonl")
    if eval_before is None and rows:
        eval_before = eval_from_row(rows[0])
    chart_rows: list[Mapping[str, object]] = list(rows)
    if eval_after is not None:
        chart_rows.append({"step": total, **eval_after.as_row()})
    chart = run.run_dir / CHART_FILE
    atomic_write_text(chart, metrics_chart_html(chart_rows, CHART_KEYS, "DPO: loss and preference accuracy"))
    sampler_path = client.save_weights_for_sampler("final").result()
    if eval_after is not None:
        run.out.write(_describe_eval("held-out after training", eval_after))
        if eval_before is not None:
            run.out.write(
                f"held-out preference accuracy (policy, per-token logprob): {eval_before.policy_accuracy:.3f} -> "
                f"{eval_after.policy_accuracy:.3f}; implicit-reward accuracy {eval_before.accuracy:.3f} -> "
                f"{eval_after.accuracy:.3f}; DPO loss {eval_before.dpo_loss:.4f} -> {eval_after.dpo_loss:.4f}\n"
            )
    return DPOResult(
        steps=total,
        train_pairs=len(data.train),
        test_pairs=len(data.test),
        skipped_rows=data.skipped_rows,
        dropped_ties=data.dropped_ties,
        eval_before=eval_before,
        eval_after=eval_after,
        final_checkpoint=run.last_checkpoint,
        sampler_checkpoint=sampler_path,
        chart=str(chart),
    )


def _describe_run(config: DPOConfig, data: DPOData, total: int) -> str:
    reference_name = config.reference_model or "the initial weights"
    return (
        f"DPO on {config.base_model} (LoRA rank {config.lora_rank}) for {total} steps of {config.batch_size} "
        f"pairs, lr {config.learning_rate:.3g}, beta {config.beta:g}, reference: {reference_name}; "
        f"{len(data.train)} training and {len(data.test)} held-out pairs "
        f"({data.skipped_rows} bad rows skipped, {data.dropped_ties} ties dropped)\n"
    )


def _describe_eval(label: str, result: DPOEval) -> str:
    return (
        f"{label}: DPO loss {result.dpo_loss:.4f}, preference accuracy (policy) {result.policy_accuracy:.3f}, "
        f"implicit-reward accuracy {result.accuracy:.3f}, margin {result.margin:.4f} ({result.pairs} pairs)\n"
    )
