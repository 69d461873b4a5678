"""The supervised-learning recipe (shell): data -> datums -> forward_backward + optim_step -> metrics/checkpoints.

Everything that turns data into data is a pure function of the core (:mod:`tinkerflow.sl_data`, the renderer,
:mod:`tinkerflow.supervised`); the steps are driven by the shared loop (:func:`tinkerflow.shell.loop.run_steps`).
:func:`prepare_sl_data` reads the conversations first with the one data-source loader
(:mod:`tinkerflow.shell.io.data`: a JSONL file, ``hf:org/name``, ``hf-disk:/path`` or rows given in code, under one
bad-row policy, every bad row named by its source and position). What a step does:

1. take the next batch from the data pipeline (:mod:`tinkerflow.pipeline`: seeded per-epoch shuffle, batches
   that do not span epochs); its position is a small record saved with every checkpoint;
2. submit ``forward_backward`` and ``optim_step`` back to back, then finish the *previous* step (await its
   result, log its metrics) while the backend works on this one;
3. every ``eval_every`` steps, held-out NLL and bits per byte (a ``forward`` queued in order);
4. every ``save_every`` steps and at the end, ``save_state`` and, once it is durable, ``state.json``.

Exact resume: a restarted run loads the checkpoint named in ``state.json``, restores the pipeline position
saved with it, and continues at its step with the same data order; the metrics log drops rows written after
that checkpoint (they are written again, identically).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO, TypeAlias

import attrs
import numpy as np

from tinkerflow.chat import Conversation
from tinkerflow.config import SLConfig
from tinkerflow.datum import Datum
from tinkerflow.pipeline import Pipeline, PipelineIterator
from tinkerflow.render import Renderer, build_generation_prompt, parse_response
from tinkerflow.sampling import SamplingParams
from tinkerflow.serde import to_json
from tinkerflow.shell.backends.protocol import APIFuture, Backend, SamplingClient, TrainingClient
from tinkerflow.shell.evals.inline import InlineEvals
from tinkerflow.shell.io import prefetch
from tinkerflow.shell.io.data import chat_format, load_split
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.io.scan import passes, scan_split, streamed
from tinkerflow.shell.io.sinks import MetricsSink
from tinkerflow.shell.loop import Finish, MetricRow, StepPlan, epoch_batches, resume_batches, run_steps
from tinkerflow.sl_data import SLData, datum_outcomes, sl_data, sl_data_of
from tinkerflow.supervised import recommended_lr, token_nll_totals
from tinkerflow.training import ForwardBackwardOutput

__all__ = ["ChatRow", "SLData", "SLResult", "prepare_sl_data", "run_sl", "train_pipeline"]

#: A conversation given in code: a record, or one row of the common chat format (parsed by
#: :func:`tinkerflow.chat_format.conversation_from_json`).
ChatRow: TypeAlias = Conversation | Mapping[str, object]


@attrs.frozen
class SLResult:
    """What a finished (or resumed-and-finished) SL run reports."""

    steps: int
    eval_nll_before: float | None
    eval_nll_after: float | None
    bits_per_byte_after: float | None
    final_checkpoint: str
    sampler_checkpoint: str
    samples_before: tuple[str, ...]
    samples_after: tuple[str, ...]
    evals_after: Mapping[str, float] = attrs.field(factory=dict)


def prepare_sl_data(
    config: SLConfig,
    renderer: Renderer,
    *,
    train_rows: Sequence[ChatRow] | None = None,
    test_rows: Sequence[ChatRow] | None = None,
) -> SLData:
    """Load, split, render and check the data of ``config`` (raising or counting bad rows per its policy).

    Training conversations come from ``train_rows`` when given (records or OpenAI-style row dicts; bad rows are
    named ``<memory>[i]``), else from ``config.train_data`` (JSONL, ``hf:``, ``hf-disk:``). Held-out ones come
    from ``test_rows``, else ``config.test_data``, else the ``hf_test_split`` of an HF ``train_data``, else a
    seeded ``test_fraction`` split of the training conversations.

    A file source is streamed (:mod:`tinkerflow.shell.io.streaming`): every row is checked once, then the
    training datums are read and rendered when a batch needs them, never held in memory; the batches are the
    same as if they were.

    Rows given in code are not in the run's ``config.json``: set ``train_data`` to a label that names them (e.g.
    ``"<memory>"``) and pass the same rows again to resume.
    """
    format = chat_format(config.hf_messages_field)
    packer = prefetch.packed_batches  # the tokenizer on helper threads: the same datums, sooner
    if train_rows is not None:
        rows = load_split(config, format, train_rows=train_rows, test_rows=test_rows)
        return sl_data(rows, renderer, config, packer=packer)
    make_many = functools.partial(datum_outcomes, renderer=renderer, config=config, packer=packer)
    split = scan_split(config, format, [passes(make_many)], test_rows=test_rows)
    train = streamed(split, make_many, item_type=Datum, name="train datums")
    skipped, source = split.skipped, config.train_data
    return sl_data_of(train, split.test, renderer, config, skipped=skipped, source=source, packer=packer)


def train_pipeline(data: SLData, config: SLConfig) -> Pipeline[tuple[Datum, ...]]:
    """The training batches: a fresh seeded shuffle per epoch, ``batch_size`` datums per batch (the last batch of
    an epoch may be smaller; no datum is dropped)."""
    return epoch_batches(data.train, config, item_type=Datum, name="train datums")


def run_sl(
    config: SLConfig,
    backend: Backend,
    renderer: Renderer,
    *,
    data: SLData | None = None,
    out: TextIO | None = None,
    after_step: Callable[[int], None] | None = None,
    sinks: Sequence[MetricsSink] | None = None,
) -> SLResult:
    """Run (or resume) supervised fine-tuning as ``config`` says; see the module docstring.

    ``after_step(step)`` is called once step ``step``'s metrics are logged (tests use it to kill a run).
    ``sinks`` receive every metrics row too and are closed when the loop ends; ``None`` makes the ones
    ``config.log_to`` asks for (:func:`tinkerflow.shell.io.sinks.make_sinks`: W&B, TensorBoard), ``()`` none.
    """
    data = data if data is not None else prepare_sl_data(config, renderer)
    total = config.total_steps(len(data.train))
    base_lr = config.learning_rate if config.learning_rate is not None else recommended_lr(config.base_model)
    run = Run.start(
        config.run_dir,
        config,
        log_to=config.log_to,
        sinks=sinks,
        total_steps=total,
        out=out,
        progress_label="train_nll",
    )
    eval_before: float | None = None
    samples_before: tuple[str, ...] = ()
    with contextlib.closing(run):
        batches = resume_batches(run, train_pipeline(data, config))
        if not run.resumed:
            run.out.write(
                f"training {config.base_model} (LoRA rank {config.lora_rank}) for {total} steps, lr {base_lr:.3g}\n"
            )
        client = run.training_client(backend, config.base_model, lora_rank=config.lora_rank, seed=config.seed)
        evals = InlineEvals(
            config.evals, renderer, backend=backend, base_model=config.base_model, run_dir=config.run_dir,
            seed=config.seed, eval_every=config.eval_every, heldout=data.test_conversations,
        )  # fmt: skip
        if run.start_step == 0:
            eval_before = _evaluate(client, data).result()[0]
            samples_before = _samples(client.save_weights_and_get_sampling_client().result(), renderer, data, config)
            run.out.write(f"held-out NLL before training: {eval_before:.4f}\n")
        run_steps(
            run,
            client,
            evals.wrap(client, _submitter(client, data, batches), run.start_step),
            total=total,
            learning_rate=base_lr,
            lr_schedule=config.lr_schedule,
            eval_every=config.eval_every,
            save_every=config.save_every,
            data_state=lambda done: to_json(batches.state()),
            after_step=after_step,
        )
        eval_after, bpb_after = _evaluate(client, data).result()
        evals_after = evals.final(run, client, total)
    run.write_chart(["train_nll", "eval_nll"], "SL loss", "loss.html")
    sampler_path = client.save_weights_for_sampler("final").result()
    samples_after = _samples(client.create_sampling_client(sampler_path).result(), renderer, data, config)
    run.out.write(f"held-out NLL after training: {eval_after:.4f} (bits per byte {bpb_after:.4f})\n")
    run.out.write(evals.report(config.run_dir, evals_after))
    _show_samples(run.out, data, samples_before, samples_after)
    return SLResult(
        total, eval_before, eval_after, bpb_after, run.last_checkpoint, sampler_path, samples_before, samples_after,
        evals_after,
    )  # fmt: skip


def _weights(batch: Sequence[Datum]) -> tuple[np.ndarray, ...]:
    return tuple(
        datum.weights_T if datum.weights_T is not None else np.ones(datum.length, np.float32) for datum in batch
    )


def _evaluate(client: TrainingClient, data: SLData) -> APIFuture[tuple[float, float]]:
    """Held-out (mean token NLL, bits per byte), computed by a forward pass queued now."""
    if not data.test:
        return APIFuture.completed((math.nan, math.nan))
    weights = _weights(data.test)

    def summarize(output: ForwardBackwardOutput) -> tuple[float, float]:
        nll, count = token_nll_totals(output.logprobs_D, weights)
        bpb = nll / (math.log(2) * data.test_bytes) if data.test_bytes else math.nan
        return (nll / count if count else math.nan), bpb

    return client.forward(list(data.test), "cross_entropy").map(summarize)


def _submitter(
    client: TrainingClient, data: SLData, batches: PipelineIterator[tuple[Datum, ...]]
) -> Callable[[StepPlan], Finish]:
    """How one SL step is submitted: the due evaluation, the next batch, cross-entropy, Adam."""

    def submit(plan: StepPlan) -> Finish:
        eval_future = _evaluate(client, data) if plan.evaluate else None
        batch = next(batches)
        future = client.forward_backward(list(batch), "cross_entropy")
        client.optim_step(plan.adam)

        def finish() -> tuple[MetricRow, float]:
            output = future.result()
            nll, count = token_nll_totals(output.logprobs_D, _weights(batch))
            row: dict[str, float | int | str | None] = {
                "train_nll": nll / count if count else math.nan,
                "loss_sum": output.metrics.get("loss:sum", math.nan),
                "lr": plan.learning_rate,
                "tokens": count,
                "skipped_rows": data.skipped_rows,
            }
            if eval_future is not None:
                eval_nll, bpb = eval_future.result()
                row.update({"eval_nll": eval_nll, "eval_bits_per_byte": bpb})
            return row, nll / count if count else math.nan

        return finish

    return submit


def _samples(sampler: SamplingClient, renderer: Renderer, data: SLData, config: SLConfig) -> tuple[str, ...]:
    """Greedy answers to the held-out prompts shown before and after training."""
    params = SamplingParams(
        max_tokens=config.sample_max_tokens,
        temperature=0.0,
        stop_tokens=renderer.stop_sequences().tokens,
        seed=config.seed,
    )
    futures = [sampler.sample(build_generation_prompt(renderer, prompt), 1, params) for prompt, _ in data.prompts]
    return tuple(parse_response(renderer, future.result().sequences[0].tokens_T).message.text() for future in futures)


def _show_samples(stream: TextIO, data: SLData, before: tuple[str, ...], after: tuple[str, ...]) -> None:
    for (prompt, reference), answer_before, answer_after in zip(
        data.prompts, before or ("",) * len(data.prompts), after, strict=True
    ):
        stream.write(f"\nprompt:    {prompt.messages[-1].text()}\nreference: {reference}\n")
        if before:
            stream.write(f"before:    {answer_before}\n")
        stream.write(f"after:     {answer_after}\n")
