"""The supervised-learning loop (shell): data -> datums -> forward_backward + optim_step -> metrics/checkpoints.

The loop is short on purpose; everything that turns data into data is a pure function from the core
(:mod:`tinkerflow.supervised`, :mod:`tinkerflow.chat_format`, the renderer). :func:`prepare_sl_data` reads the
conversations first, from a JSONL file, a Hugging Face dataset (``hf:org/name``, ``hf-disk:/path``; the
``datasets`` package is imported only then) or rows given in code, all under one bad-row policy, with every bad
row named by its source and position. What the loop does per step:

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

import functools
import math
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import Final, Protocol, TextIO, TypeAlias, cast

import attrs
import numpy as np

from tinkerflow.chat import Conversation, Message
from tinkerflow.chat_format import ChatFormatError, SourcedRow, collect_rows, conversation_from_json, parse_chat_line
from tinkerflow.config import HF_DISK_PREFIX, HF_PREFIX, BadRowPolicy, SLConfig, TrainOn, is_hf_source
from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, TinkerflowError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.pipeline import Pipeline, PipelineState
from tinkerflow.render import Renderer, build_generation_prompt, build_supervised_example, parse_response
from tinkerflow.sampling import SamplingParams
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.backends.protocol import APIFuture, Backend, SamplingClient, TrainingClient
from tinkerflow.shell.io.run import MetricsSink, Run
from tinkerflow.shell.io.run_dir import atomic_write_text
from tinkerflow.supervised import (
    learning_rate_at,
    recommended_lr,
    split_indices,
    supervised_datum,
    token_nll_totals,
)
from tinkerflow.training import AdamParams, ForwardBackwardOutput

__all__ = [
    "MEMORY_SOURCE",
    "MEMORY_TEST_SOURCE",
    "ChatRenderer",
    "ChatRow",
    "DataError",
    "HFDataset",
    "RendererAdapter",
    "SLData",
    "SLResult",
    "load_chat_hf",
    "load_chat_jsonl",
    "open_hf_dataset",
    "parse_chat_rows",
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
    """A data source or row that cannot be used; ``where`` names the source and row."""


#: A conversation given in code: a record, or one row of the common chat format (parsed by
#: :func:`tinkerflow.chat_format.conversation_from_json`).
ChatRow: TypeAlias = Conversation | Mapping[str, object]

#: Where rows given in code are said to come from (``<memory>[3]``; held-out rows ``<memory:test>[3]``).
MEMORY_SOURCE: Final = "<memory>"
MEMORY_TEST_SOURCE: Final = "<memory:test>"


def _jsonl_rows(path: str | pathlib.Path) -> Iterator[tuple[str, Callable[[], Conversation]]]:
    file = pathlib.Path(path)
    if not file.is_file():
        raise DataError(str(file), "path", "does not exist or is not a file.", "check the data path in the config.")
    with open(file, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield f"{file}:{number}", functools.partial(parse_chat_line, line, f"{file}:{number}")


def load_chat_jsonl(path: str | pathlib.Path, policy: BadRowPolicy = "raise") -> tuple[list[Conversation], int]:
    """Conversations of a JSONL file and the number of skipped bad rows (``policy="skip"``).

    Blank lines are ignored. With ``policy="raise"`` the first bad row raises :class:`ChatFormatError` naming
    ``file:line`` and the field.
    """
    rows, skipped = collect_rows(_jsonl_rows(path), policy)
    return [row.value for row in rows], skipped


def _parse_row(row: ChatRow, where: str) -> Conversation:
    return row if isinstance(row, Conversation) else conversation_from_json(row, where)


def _memory_rows(rows: Sequence[ChatRow], source: str) -> Iterator[tuple[str, Callable[[], Conversation]]]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise DataError(source, "rows", f"must be a sequence of conversations, got {type(rows).__name__}.")
    for index, row in enumerate(rows):
        yield f"{source}[{index}]", functools.partial(_parse_row, row, f"{source}[{index}]")


def parse_chat_rows(
    rows: Sequence[ChatRow], policy: BadRowPolicy = "raise", *, source: str = MEMORY_SOURCE
) -> tuple[list[Conversation], int]:
    """Conversations given in code (records, or OpenAI-style row dicts parsed like JSONL rows) and the number of
    skipped bad rows; errors name the row as ``<memory>[i]``."""
    kept, skipped = collect_rows(_memory_rows(rows, source), policy)
    return [row.value for row in kept], skipped


# -- Hugging Face datasets (the optional ``hf`` extra; imported lazily) ------------------------------------------


class HFDataset(Protocol):
    """The part of ``datasets.Dataset`` the loader uses."""

    @property
    def column_names(self) -> list[str]: ...
    def select_columns(self, column_names: list[str]) -> HFDataset: ...
    def __iter__(self) -> Iterator[Mapping[str, object]]: ...


def _import_datasets(source: str, field: str) -> ModuleType:
    try:
        import datasets
    except ImportError as error:
        raise ConfigError(
            "load_chat_hf" if field == "source" else "SLConfig",
            field,
            f"reading {source} needs the Hugging Face `datasets` package, which is not installed.",
            "pip install 'tinkerflow[hf]'.",
        ) from error
    return cast("ModuleType", datasets)


def open_hf_dataset(
    source: str, split: str | None, default_split: str, subset: str | None, field: str
) -> tuple[HFDataset, str]:
    """The dataset (one split: ``split``, else ``default_split`` where there are splits) ``source`` names and the
    prefix its rows are named with."""
    datasets = _import_datasets(source, field)
    fix = "check the name, the split and (for hf:) network access or the HF cache."
    if source.startswith(HF_PREFIX):
        name, split = source[len(HF_PREFIX) :], split or default_split
        try:
            loaded: object = datasets.load_dataset(name, subset, split=split)
        except Exception as error:  # the hub, the cache and the builders raise many kinds of errors
            raise DataError(source, field, f"could not be loaded (split {split!r}): {error}", fix) from error
        return cast("HFDataset", loaded), f"{source}[{split}]"
    path = source[len(HF_DISK_PREFIX) :]
    try:
        loaded = datasets.load_from_disk(path)
    except Exception as error:
        raise DataError(
            source, field, f"could not be loaded: {error}", "give the folder save_to_disk wrote."
        ) from error
    if isinstance(loaded, datasets.DatasetDict):
        splits = cast("Mapping[str, HFDataset]", loaded)
        split = split or default_split
        if split not in splits:
            raise DataError(
                source, field, f"has no split {split!r} (it has {sorted(splits)}).", "set hf_split / hf_test_split."
            )
        return splits[split], f"{source}[{split}]"
    if split is not None:
        raise DataError(
            source,
            field,
            f"is a single dataset without splits, but split {split!r} was asked for.",
            "remove hf_split / hf_test_split, or save a DatasetDict.",
        )
    return cast("HFDataset", loaded), source


def _hf_row(row: Mapping[str, object], messages_field: str, where: str) -> Conversation:
    tools = row.get("tools")
    try:
        return conversation_from_json({"messages": row.get(messages_field), "tools": tools}, where)
    except ChatFormatError as error:
        if messages_field == "messages" or not error.field.startswith("messages"):
            raise
        raise ChatFormatError(
            error.where, messages_field + error.field[len("messages") :], error.problem, error.fix
        ) from error


def _hf_rows(
    source: str, split: str | None, *, default_split: str, subset: str | None, messages_field: str, field: str
) -> Iterator[tuple[str, Callable[[], Conversation]]]:
    dataset, prefix = open_hf_dataset(source, split, default_split, subset, field)
    columns = dataset.column_names
    if messages_field not in columns:
        raise DataError(
            source, field, f"has no column {messages_field!r} (it has {columns}).", "set hf_messages_field."
        )
    wanted = [messages_field, *(["tools"] if "tools" in columns and messages_field != "tools" else [])]
    for index, row in enumerate(dataset.select_columns(wanted)):
        yield f"{prefix}[{index}]", functools.partial(_hf_row, row, messages_field, f"{prefix}[{index}]")


def load_chat_hf(
    source: str,
    split: str | None = None,
    *,
    subset: str | None = None,
    messages_field: str = "messages",
    policy: BadRowPolicy = "raise",
) -> tuple[list[Conversation], int]:
    """Conversations of a Hugging Face dataset and the number of skipped bad rows (needs the ``hf`` extra).

    ``source`` is ``hf:org/name`` (``datasets.load_dataset(name, subset, split=split or "train")``) or
    ``hf-disk:/path`` (``datasets.load_from_disk``: a ``DatasetDict``'s ``split``, default ``train``, or a single
    dataset, which takes no split). Each row's ``messages_field`` column holds the messages in the common chat
    format (a ``tools`` column is read when present); bad rows are named ``hf:org/name[split][row]``.
    """
    rows, skipped = collect_rows(
        _hf_rows(source, split, default_split="train", subset=subset, messages_field=messages_field, field="source"),
        policy,
    )
    return [row.value for row in rows], skipped


def _load_source(
    config: SLConfig, source: str, split: str | None, default_split: str, field: str
) -> tuple[list[SourcedRow[Conversation]], int]:
    if is_hf_source(source):
        rows = _hf_rows(
            source,
            split,
            default_split=default_split,
            subset=config.hf_subset,
            messages_field=config.hf_messages_field,
            field=field,
        )
        return collect_rows(rows, config.bad_rows)
    return collect_rows(_jsonl_rows(source), config.bad_rows)


@attrs.frozen
class SLData:
    """Everything the loop trains and evaluates on, prepared up front (pure data)."""

    train: tuple[Datum, ...]
    test: tuple[Datum, ...]
    test_bytes: int
    prompts: tuple[tuple[Conversation, str], ...]
    skipped_rows: int


def _to_datums(
    rows: Sequence[SourcedRow[Conversation]], renderer: ChatRenderer, config: SLConfig
) -> tuple[list[Datum], list[Conversation], int]:
    datums: list[Datum] = []
    kept: list[Conversation] = []
    skipped = 0
    for row in rows:
        try:
            model_input, weights = renderer.supervised_example(row.value, config.train_on)
            if model_input.length > config.max_length:
                raise DataError(
                    row.where,
                    "messages",
                    f"renders to {model_input.length} tokens, more than max_length={config.max_length}.",
                    "raise max_length, shorten the row, or set bad_rows=skip.",
                )
            datums.append(supervised_datum(model_input, weights, reduction=config.reduction))
            kept.append(row.value)
        except TinkerflowError:
            if config.bad_rows == "raise":
                raise
            skipped += 1
    return datums, kept, skipped


def prepare_sl_data(
    config: SLConfig,
    renderer: ChatRenderer,
    *,
    train_rows: Sequence[ChatRow] | None = None,
    test_rows: Sequence[ChatRow] | None = None,
) -> SLData:
    """Load, split, render and check the data of ``config`` (raising or counting bad rows per its policy).

    Training conversations come from ``train_rows`` when given (records or OpenAI-style row dicts; bad rows are
    named ``<memory>[i]``), else from ``config.train_data`` (JSONL, ``hf:``, ``hf-disk:``). Held-out ones come
    from ``test_rows``, else ``config.test_data``, else the ``hf_test_split`` of an HF ``train_data``, else a
    seeded ``test_fraction`` split of the training conversations.

    Rows given in code are not in the run's ``config.json``: set ``train_data`` to a label that names them (e.g.
    ``"<memory>"``) and pass the same rows again to resume.
    """
    if train_rows is not None:
        rows, skipped = collect_rows(_memory_rows(train_rows, MEMORY_SOURCE), config.bad_rows)
        train_source = MEMORY_SOURCE
    else:
        rows, skipped = _load_source(config, config.train_data, config.hf_split, "train", "train_data")
        train_source = config.train_data
    held_out: tuple[list[SourcedRow[Conversation]], int] | None = None
    if test_rows is not None:
        held_out = collect_rows(_memory_rows(test_rows, MEMORY_TEST_SOURCE), config.bad_rows)
    elif config.test_data is not None:
        held_out = _load_source(config, config.test_data, config.hf_test_split, "test", "test_data")
    elif config.hf_test_split is not None:
        held_out = _load_source(config, config.train_data, config.hf_test_split, "test", "hf_test_split")
    if held_out is not None:
        train_part, test_part = rows, held_out[0]
        skipped += held_out[1]
    else:
        train_index, test_index = split_indices(len(rows), config.test_fraction, config.seed)
        train_part = [rows[i] for i in train_index]
        test_part = [rows[i] for i in test_index]
    train, _, bad_train = _to_datums(train_part, renderer, config)
    test, test_kept, bad_test = _to_datums(test_part, renderer, config)
    if not train:
        raise DataError(train_source, "rows", "no usable training conversation.", "check the data and bad_rows.")
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
    sinks: Sequence[MetricsSink] | None = None,
) -> SLResult:
    """Run (or resume) supervised fine-tuning as ``config`` says; see the module docstring.

    ``after_step(step)`` is called once step ``step``'s metrics are logged (tests use it to kill a run).
    ``sinks`` receive every metrics row too and are closed when the loop ends; ``None`` makes the ones
    ``config.log_to`` asks for (:func:`tinkerflow.shell.io.sinks.make_sinks`: W&B, TensorBoard), ``()`` none.
    """
    data = data if data is not None else prepare_sl_data(config, renderer)
    pipeline = train_pipeline(data, config)
    per_epoch = -(-len(data.train) // config.batch_size)
    total = per_epoch * config.epochs if config.max_steps is None else min(config.max_steps, per_epoch * config.epochs)
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
    stream = run.out
    samples_before: tuple[str, ...] = ()
    eval_before: float | None = None
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
        atomic_write_text(run.run_dir / "pipeline.txt", pipeline.describe() + "\n")
        if not run.resumed:
            stream.write(
                f"training {config.base_model} (LoRA rank {config.lora_rank}) for {total} steps, lr {base_lr:.3g}\n"
            )
        client = run.training_client(backend, config.base_model, lora_rank=config.lora_rank, seed=config.seed)
        start = run.start_step
        if start == 0:
            eval_before = _evaluate(client, data).result()[0]
            samples_before = _samples(client.save_weights_and_get_sampling_client().result(), renderer, data, config)
            stream.write(f"held-out NLL before training: {eval_before:.4f}\n")
        batches = pipeline.iterate(None if run.state is None else from_json(run.state.data_state_json, PipelineState))
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
