"""The supervised-learning loop (shell): data -> datums -> forward_backward + optim_step -> metrics/checkpoints.

The loop is short on purpose; everything that turns data into data is a pure function from the core
(:mod:`tinkerflow.supervised`, :mod:`tinkerflow.chat_format`, the renderer). What it does per step:

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

import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Protocol, TextIO

import attrs
import numpy as np

from tinkerflow.chat import Conversation, Message
from tinkerflow.chat_format import ChatFormatError, parse_chat_line
from tinkerflow.config import SLConfig, TrainOn
from tinkerflow.datum import Datum
from tinkerflow.errors import TinkerflowError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.pipeline import Pipeline, PipelineState
from tinkerflow.render import Renderer, build_generation_prompt, build_supervised_example, parse_response
from tinkerflow.sampling import SamplingParams
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.backend import APIFuture, Backend, SamplingClient, TrainingClient
from tinkerflow.shell.run_dir import atomic_write_text
from tinkerflow.shell.runner import MetricsSink, Run
from tinkerflow.supervised import (
    learning_rate_at,
    recommended_lr,
    split_indices,
    supervised_datum,
    token_nll_totals,
)
from tinkerflow.training import AdamParams, ForwardBackwardOutput

__all__ = [
    "ChatRenderer",
    "RendererAdapter",
    "SLData",
    "SLResult",
    "load_chat_jsonl",
    "prepare_sl_data",
    "run_sl",
    "train_pipeline",
]


class ChatRenderer(Protocol):
    """What the SL loop needs of a renderer (``tinkerflow.render`` renderers provide it through an adapter)."""

    def supervised_example(self, conversation: Conversation, train_on: TrainOn) -> tuple[ModelInput, np.ndarray]:
        """Tokens of the whole conversation and one loss weight per token."""
        ...

    def generation_prompt(self, conversation: Conversation) -> ModelInput:
        """Tokens that ask the model for the next assistant message."""
        ...

    def parse_response(self, tokens_T: np.ndarray) -> Message:
        """The assistant message in sampled tokens."""
        ...

    def stop_tokens(self) -> tuple[int, ...]:
        """Token ids that end an assistant message."""
        ...

    def count_text_bytes(self, tokens_T: np.ndarray) -> int:
        """UTF-8 bytes of the text of ``tokens_T``, special tokens excluded (for bits per byte)."""
        ...


class DataError(ValidationError):
    """A data file or row that cannot be used; ``where`` names the file and line."""


def load_chat_jsonl(path: str | pathlib.Path, policy: str = "raise") -> tuple[list[Conversation], int]:
    """Conversations of a JSONL file and the number of skipped bad rows (``policy="skip"``).

    Blank lines are ignored. With ``policy="raise"`` the first bad row raises :class:`ChatFormatError` naming
    ``file:line`` and the field.
    """
    file = pathlib.Path(path)
    if not file.is_file():
        raise DataError(str(file), "path", "does not exist or is not a file.", "check the data path in the config.")
    conversations: list[Conversation] = []
    skipped = 0
    with open(file, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                conversations.append(parse_chat_line(line, f"{file}:{number}"))
            except ChatFormatError:
                if policy == "raise":
                    raise
                skipped += 1
    return conversations, skipped


@attrs.frozen
class SLData:
    """Everything the loop trains and evaluates on, prepared up front (pure data)."""

    train: tuple[Datum, ...]
    test: tuple[Datum, ...]
    test_bytes: int
    prompts: tuple[tuple[Conversation, str], ...]
    skipped_rows: int


def _to_datums(
    conversations: Sequence[Conversation], renderer: ChatRenderer, config: SLConfig, source: str
) -> tuple[list[Datum], list[Conversation], int]:
    datums: list[Datum] = []
    kept: list[Conversation] = []
    skipped = 0
    for index, conversation in enumerate(conversations):
        try:
            model_input, weights = renderer.supervised_example(conversation, config.train_on)
            if model_input.length > config.max_length:
                raise DataError(
                    f"{source}[{index}]",
                    "messages",
                    f"renders to {model_input.length} tokens, more than max_length={config.max_length}.",
                    "raise max_length, shorten the row, or set bad_rows=skip.",
                )
            datums.append(supervised_datum(model_input, weights, reduction=config.reduction))
            kept.append(conversation)
        except TinkerflowError:
            if config.bad_rows == "raise":
                raise
            skipped += 1
    return datums, kept, skipped


def prepare_sl_data(config: SLConfig, renderer: ChatRenderer) -> SLData:
    """Load, split, render and check the data of ``config`` (raising or counting bad rows per its policy)."""
    rows, skipped = load_chat_jsonl(config.train_data, config.bad_rows)
    if config.test_data is not None:
        train_rows = rows
        test_rows, test_skipped = load_chat_jsonl(config.test_data, config.bad_rows)
        skipped += test_skipped
    else:
        train_index, test_index = split_indices(len(rows), config.test_fraction, config.seed)
        train_rows = [rows[i] for i in train_index]
        test_rows = [rows[i] for i in test_index]
    train, _, bad_train = _to_datums(train_rows, renderer, config, config.train_data)
    test, test_kept, bad_test = _to_datums(test_rows, renderer, config, config.test_data or config.train_data)
    if not train:
        raise DataError(config.train_data, "rows", "no usable training conversation.", "check the file and bad_rows.")
    test_bytes = sum(
        renderer.count_text_bytes(datum.target_tokens_T[datum.weights_T > 0])
        for datum in test
        if datum.weights_T is not None
    )
    prompts: list[tuple[Conversation, str]] = []
    for conversation in test_kept:
        if len(prompts) >= config.num_samples_shown:
            break
        last = conversation.messages[-1]
        if last.role == "assistant" and len(conversation.messages) > 1:
            prefix = Conversation(messages=conversation.messages[:-1], tools=conversation.tools)
            prompts.append((prefix, last.text()))
    return SLData(
        train=tuple(train),
        test=tuple(test),
        test_bytes=test_bytes,
        prompts=tuple(prompts),
        skipped_rows=skipped + bad_train + bad_test,
    )


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


def _evaluate(client: TrainingClient, data: SLData) -> APIFuture[tuple[float, float]]:
    """Held-out (mean token NLL, bits per byte), computed by a forward pass queued now."""
    if not data.test:
        return APIFuture.completed((math.nan, math.nan))
    weights = tuple(
        datum.weights_T if datum.weights_T is not None else np.ones(datum.length, np.float32) for datum in data.test
    )

    def summarize(output: ForwardBackwardOutput) -> tuple[float, float]:
        nll, count = token_nll_totals(output.logprobs_D, weights)
        bpb = nll / (math.log(2) * data.test_bytes) if data.test_bytes else math.nan
        return (nll / count if count else math.nan), bpb

    return client.forward(list(data.test), "cross_entropy").map(summarize)


def _samples(sampler: SamplingClient, renderer: ChatRenderer, data: SLData, config: SLConfig) -> tuple[str, ...]:
    params = SamplingParams(
        max_tokens=config.sample_max_tokens, temperature=0.0, stop_tokens=renderer.stop_tokens(), seed=config.seed
    )
    futures = [sampler.sample(renderer.generation_prompt(prompt), 1, params) for prompt, _ in data.prompts]
    return tuple(renderer.parse_response(future.result().sequences[0].tokens_T).text() for future in futures)


def train_pipeline(data: SLData, config: SLConfig) -> Pipeline[tuple[Datum, ...]]:
    """The training batches: a fresh seeded shuffle per epoch, ``batch_size`` datums per batch (the last batch of
    an epoch may be smaller; no datum is dropped)."""
    return (
        Pipeline.from_source(list(data.train), item_type=Datum, name="train datums")
        .shuffle(seed=config.seed)
        .repeat(config.epochs)
        .batch(config.batch_size)
    )


def run_sl(
    config: SLConfig,
    backend: Backend,
    renderer: ChatRenderer,
    *,
    data: SLData | None = None,
    out: TextIO | None = None,
    after_step: Callable[[int], None] | None = None,
    sinks: Sequence[MetricsSink] = (),
) -> SLResult:
    """Run (or resume) supervised fine-tuning as ``config`` says; see the module docstring.

    ``after_step(step)`` is called once step ``step``'s metrics are logged (tests use it to kill a run);
    ``sinks`` receive every metrics row too (W&B, TensorBoard; see :mod:`tinkerflow.shell.runner`).
    """
    data = data if data is not None else prepare_sl_data(config, renderer)
    pipeline = train_pipeline(data, config)
    per_epoch = -(-len(data.train) // config.batch_size)
    total = per_epoch * config.epochs if config.max_steps is None else min(config.max_steps, per_epoch * config.epochs)
    base_lr = config.learning_rate if config.learning_rate is not None else recommended_lr(config.base_model)

    run = Run.open(
        config.run_dir, to_json(config, indent=2), total_steps=total, out=out, progress_label="train_nll", sinks=sinks
    )
    stream = run.out
    atomic_write_text(run.run_dir / "pipeline.txt", pipeline.describe() + "\n")
    if not run.resumed:
        stream.write(
            f"training {config.base_model} (LoRA rank {config.lora_rank}) for {total} steps, lr {base_lr:.3g}\n"
        )
    client = run.training_client(backend, config.base_model, lora_rank=config.lora_rank, seed=config.seed)
    start = run.start_step

    samples_before: tuple[str, ...] = ()
    eval_before: float | None = None
    if start == 0:
        eval_before = _evaluate(client, data).result()[0]
        samples_before = _samples(client.save_weights_and_get_sampling_client().result(), renderer, data, config)
        stream.write(f"held-out NLL before training: {eval_before:.4f}\n")

    batches = pipeline.iterate(None if run.state is None else from_json(run.state.data_state_json, PipelineState))
    pending: (
        tuple[int, float, APIFuture[ForwardBackwardOutput], tuple[Datum, ...], APIFuture[tuple[float, float]] | None]
        | None
    ) = None

    def finish(
        item: tuple[
            int, float, APIFuture[ForwardBackwardOutput], tuple[Datum, ...], APIFuture[tuple[float, float]] | None
        ],
    ) -> None:
        step, lr, future, batch, eval_future = item
        output = future.result()
        weights = tuple(
            datum.weights_T if datum.weights_T is not None else np.ones(datum.length, np.float32) for datum in batch
        )
        nll, count = token_nll_totals(output.logprobs_D, weights)
        row: dict[str, float | int | str | None] = {
            "train_nll": nll / count if count else math.nan,
            "loss_sum": output.metrics.get("loss:sum", math.nan),
            "lr": lr,
            "tokens": count,
            "skipped_rows": data.skipped_rows,
        }
        if eval_future is not None:
            eval_nll, bpb = eval_future.result()
            row.update({"eval_nll": eval_nll, "eval_bits_per_byte": bpb})
        run.log(step, row, nll / count if count else math.nan)
        if after_step is not None:
            after_step(step)

    try:
        for step in range(start, total):
            eval_future = (
                _evaluate(client, data) if config.eval_every and step % config.eval_every == 0 and step > 0 else None
            )
            batch = next(batches)
            lr = learning_rate_at(base_lr, config.lr_schedule, step, total)
            future = client.forward_backward(list(batch), "cross_entropy")
            client.optim_step(AdamParams(learning_rate=lr, beta1=0.9, beta2=0.95, eps=1e-8))
            if pending is not None:
                finish(pending)
            pending = (step, lr, future, batch, eval_future)
            done = step + 1
            if done == total or (config.save_every and done % config.save_every == 0):
                finish(pending)
                pending = None
                run.checkpoint(client, done, to_json(batches.state()))
    finally:
        run.close()
    checkpoint = run.last_checkpoint

    eval_after, bpb_after = _evaluate(client, data).result()
    run.write_chart(["train_nll", "eval_nll"], "SL loss", "loss.html")
    sampler_path = client.save_weights_for_sampler("final").result()
    sampler = client.create_sampling_client(sampler_path).result()
    samples_after = _samples(sampler, renderer, data, config)
    stream.write(f"held-out NLL after training: {eval_after:.4f} (bits per byte {bpb_after:.4f})\n")
    for (prompt, reference), before, after in zip(
        data.prompts, samples_before or ("",) * len(data.prompts), samples_after, strict=True
    ):
        stream.write(f"\nprompt:    {prompt.messages[-1].text()}\nreference: {reference}\n")
        if samples_before:
            stream.write(f"before:    {before}\n")
        stream.write(f"after:     {after}\n")
    return SLResult(
        steps=total,
        eval_nll_before=eval_before,
        eval_nll_after=eval_after,
        bits_per_byte_after=bpb_after,
        final_checkpoint=checkpoint,
        sampler_checkpoint=sampler_path,
        samples_before=samples_before,
        samples_after=samples_after,
    )


@attrs.frozen
class RendererAdapter:
    """A :class:`tinkerflow.render.Renderer` seen through the narrow :class:`ChatRenderer` the loop needs."""

    renderer: Renderer

    def supervised_example(self, conversation: Conversation, train_on: TrainOn) -> tuple[ModelInput, np.ndarray]:
        example = build_supervised_example(self.renderer, conversation, train_on)
        return example.model_input, example.weights_T

    def generation_prompt(self, conversation: Conversation) -> ModelInput:
        return build_generation_prompt(self.renderer, conversation)

    def parse_response(self, tokens_T: np.ndarray) -> Message:
        return parse_response(self.renderer, tokens_T).message

    def stop_tokens(self) -> tuple[int, ...]:
        return self.renderer.stop_sequences().tokens

    def count_text_bytes(self, tokens_T: np.ndarray) -> int:
        special = np.fromiter(self.renderer.tokenizer.added_tokens.values(), dtype=np.int64)
        plain = tokens_T[~np.isin(tokens_T, special)]
        return len(self.renderer.tokenizer.decode(plain).encode("utf-8"))
