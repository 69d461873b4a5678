"""Supervised learning, pure core: datum construction, learning-rate schedules, recommended learning rates.

Matches tinker-cookbook 0.6.1 where it does the same job (``supervised/common.py``,
``utils/lr_scheduling.py``, ``hyperparam_utils.get_lr``); the differential tests in
``tests/test_supervised.py`` prove it. Deliberate differences: weights of the wrong length are an error here
(the cookbook silently cuts them), and the reduction is an explicit typed choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

import attrs
import numpy as np

from tinkerflow._validate import finite_float, in_range, require_type
from tinkerflow.arrays import as_float32_1d
from tinkerflow.chat import Conversation
from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, ShapeError, TinkerflowError, ValidationError
from tinkerflow.model_input import Chunk, ImageChunk, ModelInput, TokenChunk
from tinkerflow.render import Renderer, TrainOn, build_supervised_example
from tinkerflow.render.lineup import LINEUP, lineup_model
from tinkerflow.render.packing import BatchPacker, PackedBatch, packed_batches

__all__ = [
    "DEFAULT_LR_TABLE",
    "KNOWN_HIDDEN_SIZES",
    "LRFamily",
    "LRSchedule",
    "Reduction",
    "conversation_datum",
    "conversation_datums",
    "learning_rate_at",
    "lr_multiplier",
    "recommended_lr",
    "split_indices",
    "supervised_datum",
    "token_nll_totals",
    "truncate_model_input",
]

Reduction: TypeAlias = Literal["none", "sum", "mean"]
"""How per-token weights are scaled after the shift.

* ``"none"`` / ``"sum"`` (the same weights): raw weights; Tinker's loss is then the token *sum* of the NLL.
  ``"none"`` is the cookbook's spelling, ``"sum"`` says what the loss becomes.
* ``"mean"``: weights divided by their sum (when positive), so each datum contributes its token-mean NLL and
  long and short examples weigh the same.
"""


def truncate_model_input(model_input: ModelInput, max_length: int) -> tuple[Chunk, ...]:
    """Chunks of ``model_input`` cut from the right to at most ``max_length`` positions.

    Token chunks are cut partially; an image chunk that does not fit is dropped whole.
    """
    chunks = list(model_input.chunks)
    total = model_input.length
    while total > max_length and chunks:
        last = chunks[-1]
        overflow = total - max_length
        if isinstance(last, TokenChunk) and overflow < last.length:
            chunks[-1] = TokenChunk(tokens_T=last.tokens_T[: last.length - overflow])
            total = max_length
        else:
            chunks.pop()
            total -= last.length
    return tuple(chunks)


def supervised_datum(
    model_input: ModelInput,
    weights_T: np.ndarray,
    *,
    max_length: int | None = None,
    reduction: Reduction = "none",
) -> Datum:
    """A next-token-prediction datum from a rendered sequence and its per-token weights.

    Steps (as the cookbook's ``datum_from_model_input_weights``): cut from the right to ``max_length``; drop
    empty token chunks and trailing images; shift: the input is the sequence minus its last position, the
    targets are the tokens from position 1 on (image positions get target 0), weights are ``weights_T[1:]``
    cut to the targets' length; then apply ``reduction``.

    Raises:
        ShapeError: ``weights_T`` is not one weight per position of ``model_input``.
        ValidationError: fewer than 2 positions remain, or a bad ``max_length`` / ``reduction``.

    Example: tokens [10, 20, 30, 40, 50, 60], weights [0, 0, 1, 1, 1, 1], ``max_length=4``, ``"mean"`` gives input
    [10, 20, 30], targets [20, 30, 40], weights [0, .5, .5].
    """
    where = "supervised_datum"
    require_type(model_input, ModelInput, where, "model_input")
    weights = as_float32_1d(weights_T, where, "weights_T")
    if weights.shape[0] != model_input.length:
        raise ShapeError(
            where,
            "weights_T",
            f"has {weights.shape[0]} weights for a model input of {model_input.length} positions.",
            "give one weight per position (renderers return them aligned).",
        )
    if reduction not in ("none", "sum", "mean"):
        raise ValidationError(where, "reduction", f"unknown reduction {reduction!r}.", "use 'none', 'sum' or 'mean'.")
    chunks: tuple[Chunk, ...] = model_input.chunks
    if max_length is not None:
        require_type(max_length, int, where, "max_length")
        if max_length < 2:
            raise ValidationError(where, "max_length", f"must be >= 2, got {max_length}.", "allow at least 2 tokens.")
        chunks = truncate_model_input(model_input, max_length)
    kept = [chunk for chunk in chunks if not (isinstance(chunk, TokenChunk) and chunk.length == 0)]
    while kept and isinstance(kept[-1], ImageChunk):
        kept.pop()
    total = sum(chunk.length for chunk in kept)
    if total < 2:
        raise ValidationError(
            where, "model_input", f"has {total} usable positions; next-token training needs at least 2.", "drop it."
        )
    last = kept[-1]
    assert isinstance(last, TokenChunk)
    input_chunks: list[Chunk] = kept[:-1]
    if last.length > 1:
        input_chunks.append(TokenChunk(tokens_T=last.tokens_T[:-1]))
    pieces = [
        chunk.tokens_T if isinstance(chunk, TokenChunk) else np.zeros(chunk.length, dtype=np.int64) for chunk in kept
    ]
    all_tokens = np.concatenate(pieces)
    targets = all_tokens[1:]
    shifted = weights[1 : targets.shape[0] + 1]
    if reduction == "mean":
        mass = float(shifted.sum())
        if mass > 0:
            shifted = shifted / np.float32(mass)
    return Datum(model_input=ModelInput(chunks=tuple(input_chunks)), target_tokens_T=targets, weights_T=shifted)


ScheduleKind: TypeAlias = Literal["constant", "linear", "cosine"]


@attrs.frozen
class LRSchedule:
    """A learning-rate schedule: optional linear warmup, then constant / linear / cosine decay.

    After ``warmup_steps`` the multiplier decays from 1 to ``final_ratio`` over the remaining steps (linear or
    cosine); with ``warmup_steps=0`` and ``final_ratio=0`` linear and cosine equal the cookbook's schedules.

    Attributes:
        kind: ``constant``, ``linear`` or ``cosine`` decay after the warmup.
        warmup_steps: steps of linear warmup from 0 to the base learning rate.
        final_ratio: the multiplier reached at the last step (0 to 1).
    """

    kind: ScheduleKind = "constant"
    warmup_steps: int = 0
    final_ratio: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "cosine"):
            raise ConfigError("LRSchedule", "kind", f"unknown schedule {self.kind!r}.", "use constant, linear, cosine.")
        require_type(self.warmup_steps, int, "LRSchedule", "warmup_steps")
        if self.warmup_steps < 0:
            raise ConfigError("LRSchedule", "warmup_steps", f"must be >= 0, got {self.warmup_steps}.")
        ratio = finite_float(self.final_ratio, "LRSchedule", "final_ratio")
        in_range(ratio, "LRSchedule", "final_ratio", low=0.0, high=1.0)


def lr_multiplier(schedule: LRSchedule, step: int, total_steps: int) -> float:
    """The factor by which the base learning rate is scaled at ``step`` (0-indexed) of ``total_steps``."""
    if total_steps <= 0:
        raise ConfigError("lr_multiplier", "total_steps", f"must be positive, got {total_steps}.")
    if step < 0:
        raise ConfigError("lr_multiplier", "step", f"must be >= 0, got {step}.")
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.kind == "constant":
        return 1.0
    decay_steps = total_steps - schedule.warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = (step - schedule.warmup_steps) / decay_steps
    shape = 1.0 - progress if schedule.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return schedule.final_ratio + (1.0 - schedule.final_ratio) * shape


def learning_rate_at(base_lr: float, schedule: LRSchedule, step: int, total_steps: int) -> float:
    """``base_lr * lr_multiplier(schedule, step, total_steps)``."""
    return base_lr * lr_multiplier(schedule, step, total_steps)


@attrs.frozen
class LRFamily:
    """A model family's learning-rate rule: ``base * (lora_multiplier if LoRA) * (2000 / hidden) ** exponent``.

    ``match`` is a lower-case substring of model names of the family (first match in table order wins).
    """

    name: str
    match: str
    exponent: float
    base: float = 5e-5
    lora_multiplier: float = 10.0


DEFAULT_LR_TABLE: Final[tuple[LRFamily, ...]] = (
    LRFamily(name="llama", match="llama", exponent=0.781),
    LRFamily(name="qwen", match="qwen", exponent=0.0775),
    # SmolLM/SmolLM2 are Llama-architecture models; the Llama exponent is used for them (not calibrated on Tinker).
    LRFamily(name="smollm", match="smollm", exponent=0.781),
)

KNOWN_HIDDEN_SIZES: Final[Mapping[str, int]] = MappingProxyType(
    {
        # the lineup models of the calibrated families (the sizes tinker-cookbook 0.6.1's get_lr uses; the other
        # lineup models have no learning-rate rule, their sizes are in tinkerflow.render.lineup), then SmolLM2
        **{
            model.name: model.hidden_size
            for model in LINEUP
            if any(family.match in model.name.lower() for family in DEFAULT_LR_TABLE)
        },
        "HuggingFaceTB/SmolLM2-135M-Instruct": 576,
        "HuggingFaceTB/SmolLM2-360M-Instruct": 960,
        "HuggingFaceTB/SmolLM2-1.7B-Instruct": 2048,
    }
)


def recommended_lr(
    model_name: str,
    *,
    lora: bool = True,
    hidden_size: int | None = None,
    table: tuple[LRFamily, ...] = DEFAULT_LR_TABLE,
    hidden_sizes: Mapping[str, int] = KNOWN_HIDDEN_SIZES,
) -> float:
    """Recommended (LoRA) learning rate for ``model_name`` from a family table.

    Extend it without touching globals: ``recommended_lr(name, table=(*DEFAULT_LR_TABLE, LRFamily("gemma",
    "gemma", 0.5)), hidden_size=640)``. Tinker's variant suffixes (``name:peft:...``) are ignored.

    Raises:
        ConfigError: no family in ``table`` matches, or the hidden size is unknown; the message says how to fix it.
    """
    base_name = model_name.split(":", 1)[0]
    lowered = base_name.lower()
    family = next((entry for entry in table if entry.match in lowered), None)
    if family is None:
        known = ", ".join(entry.name for entry in table)
        what = (
            "a model of the lineup whose learning rate tinker-cookbook 0.6.1 has not calibrated"
            if lineup_model(base_name) is not None
            else "no learning-rate rule is calibrated for it"
        )
        raise ConfigError(
            "recommended_lr",
            "model_name",
            f"{model_name!r}: {what} (calibrated families: {known}).",
            "set the learning rate explicitly, or pass table=(*DEFAULT_LR_TABLE, LRFamily(name, match, exponent)).",
        )
    size = hidden_size if hidden_size is not None else hidden_sizes.get(base_name)
    if size is None:
        raise ConfigError(
            "recommended_lr",
            "hidden_size",
            f"hidden size of {model_name!r} is unknown.",
            "pass hidden_size= (the model config's hidden_size) or add it to hidden_sizes.",
        )
    if size <= 0:
        raise ConfigError("recommended_lr", "hidden_size", f"must be positive, got {size}.")
    lr = family.base * (family.lora_multiplier if lora else 1.0)
    return float(lr * (2000 / size) ** family.exponent)


def split_indices(num_examples: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/test split of ``range(num_examples)``: ``(train, test)`` index arrays, each sorted."""
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(num_examples)
    num_test = round(num_examples * test_fraction)
    if test_fraction > 0 and num_examples > 1:
        num_test = min(max(num_test, 1), num_examples - 1)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


def token_nll_totals(logprobs_D: tuple[np.ndarray, ...], weights_D: tuple[np.ndarray, ...]) -> tuple[float, int]:
    """``(sum of -logprob over trained tokens, number of trained tokens)``; a token is trained when its weight
    is positive (so the totals do not depend on the reduction)."""
    nll = 0.0
    count = 0
    for index, (logprobs, weights) in enumerate(zip(logprobs_D, weights_D, strict=True)):
        if logprobs.shape != weights.shape:
            raise ShapeError("token_nll_totals", f"logprobs_D[{index}]", f"shape {logprobs.shape} != {weights.shape}.")
        trained = weights > 0
        nll -= float(logprobs[trained].astype(np.float64).sum())
        count += int(trained.sum())
    return nll, count


def conversation_datum(
    conversation: Conversation,
    *,
    renderer: Renderer,
    train_on: TrainOn = "all_assistant_messages",
    max_length: int | None = None,
    reduction: Reduction = "mean",
) -> Datum:
    """Conversation -> training datum: render with ``renderer`` and ``train_on``, then :func:`supervised_datum`.

    One item in, one datum out, settings by keyword: ``functools.partial(conversation_datum, renderer=r)`` is a
    pipeline stage as it is. Defaults follow the cookbook's ``conversation_to_datum`` (all assistant messages,
    mean reduction).
    """
    example = build_supervised_example(renderer, conversation, train_on)
    return supervised_datum(example.model_input, example.weights_T, max_length=max_length, reduction=reduction)


def conversation_datums(
    conversations: Sequence[Conversation],
    *,
    renderer: Renderer,
    train_on: TrainOn = "all_assistant_messages",
    max_length: int | None = None,
    reduction: Reduction = "mean",
    batch_size: int = 256,
    packer: BatchPacker = packed_batches,
) -> list[Datum]:
    """:func:`conversation_datum` for many conversations: exactly the same datums, in order, several times faster.

    ``batch_size`` conversations at a time are rendered and tokenized (one tokenizer call) into one packed token
    array (``packer``, by default :func:`tinkerflow.render.packing.packed_batches`, everything on this thread);
    truncation, the shift and the reduction are array operations over the batch, and each datum is cut from it.
    Errors are exactly those of ``[conversation_datum(c, ...) for c in conversations]``: the first failing
    conversation's.

    :func:`tinkerflow.shell.io.prefetch.conversation_datums` is the same with the tokenizer on a helper thread, a
    batch or two ahead (same results; faster with a Rust tokenizer, which releases the GIL).

    Throughput (``python benchmarks/bench_conversation_datum.py``, 10,000 chats, qwen3 or llama3, 2 idle CPUs):
    about 1.3x the time of batch-tokenizing the same message texts (1.2x overlapped), about 6x faster than the
    cookbook's ``conversation_to_datum``.
    """
    if not _valid_batch_settings(max_length, reduction):
        return [_one_datum(c, renderer, train_on, max_length, reduction) for c in conversations]
    try:
        result: list[Datum] = []
        for batch in packer(renderer, conversations, train_on, batch_size=batch_size):
            result.extend(_batch_datums(batch, max_length, reduction))
        return result
    except TinkerflowError:
        # some conversation is bad: redo one by one, so the error is exactly conversation_datum's, raised for the
        # first failing conversation (a batch renders later conversations before shifting earlier ones)
        return [_one_datum(c, renderer, train_on, max_length, reduction) for c in conversations]


def _one_datum(
    conversation: Conversation, renderer: Renderer, train_on: TrainOn, max_length: int | None, reduction: Reduction
) -> Datum:
    return conversation_datum(
        conversation, renderer=renderer, train_on=train_on, max_length=max_length, reduction=reduction
    )


def _valid_batch_settings(max_length: object, reduction: object) -> bool:
    if reduction not in ("none", "sum", "mean"):
        return False
    return max_length is None or (type(max_length) is int and max_length >= 2)


class _TooShortError(ValidationError):
    """A conversation of a batch renders to fewer than 2 usable positions (reported by the one-by-one path)."""


def _batch_datums(batch: PackedBatch, max_length: int | None, reduction: Reduction) -> list[Datum]:
    """The datums of one packed batch: cut, shifted and reduced with array operations over the whole batch."""
    tokens_N, weights_N, offsets = batch.tokens_N, batch.weights_N, batch.offsets
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    kept = lengths if max_length is None else np.minimum(lengths, max_length)
    text_only = np.ones(len(lengths), dtype=bool)
    if batch.images:
        text_only[list(batch.images)] = False
    if bool(np.any(kept[text_only] < 2)):
        raise _TooShortError("conversation_datums", "conversations", "a conversation is too short.")
    ends = starts + kept
    if reduction == "mean":
        # weight mass after the shift: positions start+1 .. end-1. Renderer weights are 0 or 1, so the float64
        # prefix sums are exact and equal supervised_datum's float32 sums; dividing the conversation's whole range
        # by its mass (1 where there is none) then gives exactly supervised_datum's float32 quotients.
        prefix = np.zeros(len(weights_N) + 1, dtype=np.float64)
        np.cumsum(weights_N, out=prefix[1:])
        mass = prefix[ends] - prefix[np.minimum(starts + 1, ends)]
        divisor = np.where(mass > 0, mass, 1.0).astype(np.float32)
        weights_N = weights_N / np.repeat(divisor, lengths)
    bounds = zip(starts.tolist(), ends.tolist(), strict=True)
    if not batch.images:
        # positional arguments: Datum(model_input, target_tokens_T, weights_T), ModelInput(chunks), TokenChunk(tokens_T)
        return [
            Datum(
                ModelInput((TokenChunk(tokens_N[start : end - 1]),)),
                tokens_N[start + 1 : end],
                weights_N[start + 1 : end],
            )
            for start, end in bounds
        ]
    result: list[Datum] = []
    for index, (start, end) in enumerate(bounds):
        example = batch.images.get(index)
        if example is not None:
            result.append(
                supervised_datum(example.model_input, example.weights_T, max_length=max_length, reduction=reduction)
            )
        else:
            result.append(
                Datum(
                    model_input=ModelInput(chunks=(TokenChunk(tokens_T=tokens_N[start : end - 1]),)),
                    target_tokens_T=tokens_N[start + 1 : end],
                    weights_T=weights_N[start + 1 : end],
                )
            )
    return result
