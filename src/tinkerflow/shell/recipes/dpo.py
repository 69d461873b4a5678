"""The DPO loop (shell): comparisons -> pairs of datums -> custom-loss steps -> metrics, checkpoints, chart.

Everything that turns data into data is the pure core (:mod:`tinkerflow.preference`: loaders, ``dpo_pairs``,
``sequence_logprobs``, ``dpo_loss``); the run machinery (run directory, resume, metrics log and sinks, progress,
checkpoints) is :class:`tinkerflow.shell.io.run.Run`, shared with the SL and RL loops. What the loop does:

1. :func:`prepare_dpo_data` reads the comparisons (JSONL in any preference layout, ``hf:``/``hf-disk:``, or rows
   given in code) under one bad-row policy, splits off the held-out ones, handles ties (``raise`` naming the row,
   or ``drop`` and count), and renders each comparison to a chosen and a rejected datum (0/1 weights on the
   completion). A side longer than ``max_length`` makes its pair a bad row: comparisons are never cut.
2. The training order is a pipeline of *pair* indices (seeded per-epoch shuffle, ``batch_size`` pairs per batch,
   the last batch of an epoch possibly smaller), so a batch is always whole pairs, sent interleaved
   ``(chosen_0, rejected_0, chosen_1, ...)``.
3. Reference logprobs are computed once per pair, before training, and stored in ``reference_logprobs.json`` in the
   run directory (atomically, before the first checkpoint), so a resumed run uses exactly the same values. The
   reference is the initial weights (``reference_model=None``: forward passes of the fresh training client, one
   per first-epoch batch with that batch's exact composition, so at step 0 the policy equals the reference bit
   for bit and the loss is exactly ``log 2``) or a named model (``compute_logprobs`` of each full sequence on a
   sampling client of it). Only pairs the run will visit are scored.
4. Per step: ``forward_backward_custom`` with :func:`dpo_loss_fn` (the DPO loss in torch, so autograd gives the
   gradient; metrics from the numpy core :func:`tinkerflow.preference.dpo_loss`), then ``optim_step`` with the
   schedule's learning rate; the previous step is finished (metrics logged) while the backend works on this one.
5. Held-out evaluation (:class:`DPOEval`) before training, every ``eval_every`` steps and after training: the DPO
   loss and implicit-reward accuracy against the reference, and the policy's own preference accuracy.
6. Checkpoints every ``save_every`` steps and at the end; exact resume as in the SL loop. ``dpo.html`` charts the
   loss and accuracies.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import json
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TextIO, TypeAlias

import attrs
import numpy as np

from tinkerflow.chat_format import SourcedRow, collect_rows
from tinkerflow.config import is_hf_source
from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, ShapeError, TinkerflowError, ValidationError
from tinkerflow.pipeline import Pipeline, PipelineState
from tinkerflow.preference.config import DPOConfig
from tinkerflow.preference.data import labeled_comparison_from_json, parse_preference_line
from tinkerflow.preference.dpo import DPOPairs, comparison_datums, dpo_loss, dpo_pairs, sequence_logprobs
from tinkerflow.preference.records import LabeledComparison, TieError
from tinkerflow.render import Renderer
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.backends.protocol import APIFuture, Backend, CustomLossFn, SamplingClient, TrainingClient
from tinkerflow.shell.io.charts import metrics_chart_html
from tinkerflow.shell.io.run import MetricsSink, Run
from tinkerflow.shell.io.run_dir import MetricsLog, RunDirError, atomic_write_text
from tinkerflow.shell.recipes.sl import DataError, open_hf_dataset
from tinkerflow.supervised import learning_rate_at, split_indices
from tinkerflow.training import AdamParams, ForwardBackwardOutput

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHART_FILE",
    "MEMORY_SOURCE",
    "MEMORY_TEST_SOURCE",
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

MEMORY_SOURCE: Final = "<memory>"
MEMORY_TEST_SOURCE: Final = "<memory:test>"
#: Reference sequence logprobs of the pairs the run visits, written before the first checkpoint.
REFERENCE_FILE: Final = "reference_logprobs.json"
#: The chart of training and held-out DPO loss and accuracies.
CHART_FILE: Final = "dpo.html"
CHART_KEYS: Final = ("dpo_loss", "eval_dpo_loss", "accuracy", "eval_accuracy", "eval_policy_accuracy")
#: Adam as in the cookbook's DPO (its defaults).
_ADAM_BETA1, _ADAM_BETA2, _ADAM_EPS = 0.9, 0.95, 1e-8


# -- data ----------------------------------------------------------------------------------------------------------


def _jsonl_rows(path: str, config: DPOConfig) -> Iterator[tuple[str, Callable[[], LabeledComparison]]]:
    file = pathlib.Path(path)
    if not file.is_file():
        raise DataError(str(file), "path", "does not exist or is not a file.", "check the data path in the config.")
    with open(file, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                where = f"{file}:{number}"
                yield where, functools.partial(parse_preference_line, line, where, layout=config.layout)


def _parse_memory_row(row: PreferenceRow, where: str, config: DPOConfig) -> LabeledComparison:
    if isinstance(row, LabeledComparison):
        return row
    return labeled_comparison_from_json(row, where, layout=config.layout)


def _memory_rows(
    rows: Sequence[PreferenceRow], source: str, config: DPOConfig
) -> Iterator[tuple[str, Callable[[], LabeledComparison]]]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise DataError(source, "rows", f"must be a sequence of comparisons, got {type(rows).__name__}.")
    for index, row in enumerate(rows):
        where = f"{source}[{index}]"
        yield where, functools.partial(_parse_memory_row, row, where, config)


def _hf_rows(
    config: DPOConfig, source: str, split: str | None, default_split: str, field: str
) -> Iterator[tuple[str, Callable[[], LabeledComparison]]]:
    if importlib.util.find_spec("datasets") is None:
        raise ConfigError(
            "DPOConfig",
            field,
            f"reading {source} needs the Hugging Face `datasets` package, which is not installed.",
            "pip install 'tinkerflow[hf]'.",
        )
    dataset, prefix = open_hf_dataset(source, split, default_split, config.hf_subset, field)
    for index, row in enumerate(dataset):
        where = f"{prefix}[{index}]"
        yield where, functools.partial(labeled_comparison_from_json, row, where, layout=config.layout)


def _load_source(
    config: DPOConfig, source: str, split: str | None, default_split: str, field: str
) -> tuple[list[SourcedRow[LabeledComparison]], int]:
    if is_hf_source(source):
        return collect_rows(_hf_rows(config, source, split, default_split, field), config.bad_rows)
    return collect_rows(_jsonl_rows(source, config), config.bad_rows)


@attrs.frozen
class DPOData:
    """The pairs the loop trains and evaluates on, prepared up front (pure data).

    Attributes:
        train / test: chosen and rejected datums per comparison; ``indices`` are positions in the source's
            readable rows (ties and bad rows leave gaps).
        skipped_rows: bad rows skipped under ``bad_rows="skip"`` (unreadable, unrenderable, too long).
        dropped_ties: tied comparisons left out under ``ties="drop"``.
    """

    train: DPOPairs
    test: DPOPairs
    skipped_rows: int = 0
    dropped_ties: int = 0


def _too_long(pair: tuple[Datum, Datum], where: str, max_length: int) -> None:
    longest = max(datum.length + 1 for datum in pair)  # a datum holds the sequence shifted by one
    if longest > max_length:
        raise DataError(
            where,
            "completion",
            f"renders to {longest} tokens (prompt + completion), more than max_length={max_length}.",
            "raise max_length, shorten the row, or set bad_rows=skip (DPO never cuts a comparison).",
        )


def _pairs(
    rows: Sequence[SourcedRow[LabeledComparison]], renderer: Renderer, config: DPOConfig
) -> tuple[DPOPairs, int, int]:
    """Ties handled, comparisons rendered (one batched call; a failure is retried row by row to name the row),
    lengths checked. Returns the pairs, bad rows skipped and ties dropped."""
    kept: list[tuple[int, SourcedRow[LabeledComparison]]] = []
    ties = 0
    for position, row in enumerate(rows):
        if not row.value.is_tie:
            kept.append((position, row))
        elif config.ties == "raise":
            raise TieError(
                row.where,
                "label",
                "is 'tie': a tied comparison has no chosen and rejected completion.",
                "set ties=drop to leave ties out (they are counted), or relabel the row.",
            )
        else:
            ties += 1
    rendered: list[tuple[Datum, Datum]] | None = None
    if kept:
        try:
            batch = dpo_pairs([row.value for _, row in kept], renderer, ties="raise", train_on=config.train_on)
            rendered = list(zip(batch.chosen, batch.rejected, strict=True))
        except TinkerflowError:
            rendered = None  # some row fails: render one by one below, to name it (or skip it)
    chosen: list[Datum] = []
    rejected: list[Datum] = []
    indices: list[int] = []
    bad = 0
    for number, (position, row) in enumerate(kept):
        try:
            if rendered is not None:
                pair = rendered[number]
            else:
                try:
                    pair = comparison_datums(row.value, renderer, train_on=config.train_on)
                except ValidationError as error:
                    raise DataError(row.where, error.field, f"{error.problem} (in {error.where})", error.fix) from error
            _too_long(pair, row.where, config.max_length)
        except TinkerflowError:
            if config.bad_rows == "raise":
                raise
            bad += 1
            continue
        chosen.append(pair[0])
        rejected.append(pair[1])
        indices.append(position)
    return DPOPairs(chosen=chosen, rejected=rejected, indices=indices), bad, ties


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
    ``test_fraction`` split of the training rows (taken before ties are dropped).

    Raises:
        PreferenceFormatError: a row that is not a comparison (``bad_rows="raise"``), naming ``file:line``.
        TieError: a tie with ``ties="raise"``, naming the row.
        DataError: a row that cannot be rendered or is too long (``bad_rows="raise"``), or no training pair at all.
    """
    if train_rows is not None:
        rows, skipped = collect_rows(_memory_rows(train_rows, MEMORY_SOURCE, config), config.bad_rows)
        train_source = MEMORY_SOURCE
    else:
        rows, skipped = _load_source(config, config.train_data, config.hf_split, "train", "train_data")
        train_source = config.train_data
    held_out: tuple[list[SourcedRow[LabeledComparison]], int] | None = None
    if test_rows is not None:
        held_out = collect_rows(_memory_rows(test_rows, MEMORY_TEST_SOURCE, config), config.bad_rows)
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
    train, bad_train, ties_train = _pairs(train_part, renderer, config)
    test, bad_test, ties_test = _pairs(test_part, renderer, config)
    if len(train) == 0:
        raise DataError(
            train_source, "rows", "no usable training comparison.", "check the data, bad_rows and ties settings."
        )
    return DPOData(
        train=train, test=test, skipped_rows=skipped + bad_train + bad_test, dropped_ties=ties_train + ties_test
    )


def dpo_train_pipeline(data: DPOData, config: DPOConfig) -> Pipeline[tuple[int, ...]]:
    """The training batches as tuples of pair indices: a fresh seeded shuffle per epoch, ``batch_size`` pairs per
    batch (the last batch of an epoch may be smaller; no pair is dropped, none is split)."""
    return (
        Pipeline.from_source(list(range(len(data.train))), item_type=int, name="train pairs")
        .shuffle(seed=config.seed)
        .repeat(config.epochs)
        .batch(config.batch_size)
    )


def _total_steps(data: DPOData, config: DPOConfig) -> int:
    per_epoch = -(-len(data.train) // config.batch_size)
    return per_epoch * config.epochs if config.max_steps is None else min(config.max_steps, per_epoch * config.epochs)


def _interleaved(pairs: DPOPairs, indices: Sequence[int]) -> list[Datum]:
    return [datum for index in indices for datum in (pairs.chosen[index], pairs.rejected[index])]


def _weights(datum: Datum) -> np.ndarray:
    if datum.weights_T is None:
        raise ValidationError("dpo", "weights_T", "a DPO datum needs weights.", "build datums with dpo_pairs.")
    return datum.weights_T


# -- the loss ------------------------------------------------------------------------------------------------------


def _policy_accuracy(policy_D: np.ndarray, weight_sums_D: np.ndarray) -> float:
    """Fraction of pairs whose chosen side has the higher per-token policy logprob (interleaved inputs)."""
    per_token = np.divide(policy_D, weight_sums_D, out=np.zeros_like(policy_D), where=weight_sums_D > 0)
    return float((per_token[0::2] > per_token[1::2]).mean())


def dpo_loss_fn(
    ref_chosen_B: Sequence[float] | np.ndarray,
    ref_rejected_B: Sequence[float] | np.ndarray,
    beta: float,
    *,
    report: Callable[[Mapping[str, float]], None] | None = None,
) -> CustomLossFn:
    """The DPO loss of one batch as a custom loss for ``forward_backward_custom``.

    The batch is ``B`` pairs sent interleaved ``(chosen_0, rejected_0, ...)`` with 0/1 weights on the
    completions; ``ref_*_B`` are the reference's sequence logprobs. The closure computes, in float64 torch (so
    autograd gives the gradient the backend back-propagates), the sequence logprobs ``sum_t w_t * lp_t`` and
    ``-mean(logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))))``; its metrics come from the numpy core
    (:func:`tinkerflow.preference.dpo_loss`: ``dpo_loss``, ``accuracy``, ``margin``, ``chosen_reward``,
    ``rejected_reward``) plus ``policy_accuracy`` (see :class:`DPOEval`) and ``tokens`` (weighted tokens).
    ``tests/test_dpo_loop.py`` checks that its loss and per-token gradients equal
    :func:`~tinkerflow.preference.dpo_loss` / :func:`~tinkerflow.preference.dpo_token_gradients`.

    ``report`` receives the metrics (on the thread that runs the loss).
    """
    ref_chosen = np.array(ref_chosen_B, dtype=np.float64)  # private writable copies (torch shares their memory)
    ref_rejected = np.array(ref_rejected_B, dtype=np.float64)
    if ref_chosen.ndim != 1 or ref_chosen.shape != ref_rejected.shape:
        raise ShapeError(
            "dpo_loss_fn",
            "ref_rejected_B",
            f"shapes {ref_chosen.shape} and {ref_rejected.shape}.",
            "give one reference value per pair on each side.",
        )
    pairs = ref_chosen.shape[0]

    def loss_fn(data: Sequence[Datum], logprobs_D: Sequence[torch.Tensor]) -> tuple[torch.Tensor, Mapping[str, float]]:
        import torch

        if len(data) != 2 * pairs or len(logprobs_D) != len(data):
            raise ShapeError(
                "dpo_loss_fn",
                "data",
                f"got {len(data)} datums and {len(logprobs_D)} logprob tensors for {pairs} pairs.",
                "send each pair's chosen and rejected datum, interleaved.",
            )
        weights_D = [_weights(datum) for datum in data]
        lengths = np.fromiter((array.shape[0] for array in weights_D), dtype=np.int64, count=len(weights_D))
        flat_lp = torch.cat([logprobs.reshape(-1) for logprobs in logprobs_D]).to(torch.float64)
        if flat_lp.shape[0] != int(lengths.sum()):
            raise ShapeError("dpo_loss_fn", "logprobs_D", "the logprobs do not match the datums' lengths.")
        weights = np.concatenate(weights_D).astype(np.float64)
        flat_w = torch.from_numpy(weights).to(flat_lp.device)
        segment = torch.from_numpy(np.repeat(np.arange(len(data)), lengths)).to(flat_lp.device)
        sequence_D = torch.zeros(len(data), dtype=torch.float64, device=flat_lp.device).index_add(
            0, segment, flat_lp * flat_w
        )
        ref_c = torch.from_numpy(ref_chosen).to(flat_lp.device)
        ref_r = torch.from_numpy(ref_rejected).to(flat_lp.device)
        z = beta * ((sequence_D[0::2] - ref_c) - (sequence_D[1::2] - ref_r))
        loss = -torch.nn.functional.logsigmoid(z).mean()
        policy_D = sequence_D.detach().cpu().numpy()
        output = dpo_loss(policy_D[0::2], policy_D[1::2], ref_chosen, ref_rejected, beta)
        weight_sums = _weight_sums(data)
        metrics = {
            **output.metrics.as_dict(),
            "policy_accuracy": _policy_accuracy(policy_D, weight_sums),
            "tokens": float(weight_sums.sum()),
        }
        if report is not None:
            report(metrics)
        return loss, metrics

    return loss_fn


# -- evaluation ----------------------------------------------------------------------------------------------------


@attrs.frozen
class DPOEval:
    """Held-out DPO metrics of the policy at one point of training.

    Attributes:
        dpo_loss: the DPO loss against the reference (``log 2`` when the policy is the reference).
        accuracy: implicit-reward accuracy: fraction of pairs with ``pi_c - ref_c > pi_r - ref_r`` (strictly; 0
            when the policy is the reference, so it only says how far training moved the policy the right way).
        policy_accuracy: the policy's own preference: fraction of pairs whose chosen completion has the higher
            *per-token* (length-normalized) logprob ``sum_t w_t lp_t / sum_t w_t`` under the policy, reference
            ignored. Length-normalized so a shorter completion does not win by being short; it is meaningful
            before training too.
        margin / chosen_reward / rejected_reward: as in :class:`tinkerflow.preference.DPOMetrics`.
        pairs: held-out pairs evaluated.
    """

    dpo_loss: float
    accuracy: float
    policy_accuracy: float
    margin: float
    chosen_reward: float
    rejected_reward: float
    pairs: int

    def as_row(self, prefix: str = "eval_") -> dict[str, float | int]:
        """The metrics keyed ``eval_dpo_loss``, ``eval_accuracy``, ... (``prefix`` + field name)."""
        return {prefix + key: value for key, value in attrs.asdict(self).items()}


def _weight_sums(datums: Sequence[Datum]) -> np.ndarray:
    return np.array([float(np.sum(_weights(datum), dtype=np.float64)) for datum in datums])


def _eval_of(
    policy_D: np.ndarray, weight_sums_D: np.ndarray, ref_c: np.ndarray, ref_r: np.ndarray, beta: float
) -> DPOEval:
    metrics = dpo_loss(policy_D[0::2], policy_D[1::2], ref_c, ref_r, beta).metrics
    return DPOEval(
        dpo_loss=metrics.dpo_loss,
        accuracy=metrics.accuracy,
        policy_accuracy=_policy_accuracy(policy_D, weight_sums_D),
        margin=metrics.margin,
        chosen_reward=metrics.chosen_reward,
        rejected_reward=metrics.rejected_reward,
        pairs=int(policy_D.shape[0] // 2),
    )


def evaluate_pairs(
    logprobs_D: Sequence[np.ndarray],
    pairs: DPOPairs,
    ref_chosen_B: np.ndarray,
    ref_rejected_B: np.ndarray,
    beta: float,
) -> DPOEval:
    """:class:`DPOEval` of ``pairs`` from the policy's per-token logprobs of ``pairs.interleaved()``."""
    datums = pairs.interleaved()
    policy_D = sequence_logprobs(logprobs_D, [_weights(datum) for datum in datums])
    return _eval_of(policy_D, _weight_sums(datums), ref_chosen_B, ref_rejected_B, beta)


# -- reference logprobs --------------------------------------------------------------------------------------------


@attrs.frozen
class _Reference:
    """Reference sequence logprobs: per visited training pair (by index) and per held-out pair."""

    train: dict[int, tuple[float, float]]
    test_chosen: np.ndarray
    test_rejected: np.ndarray

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        values = np.array([self.train[index] for index in indices], dtype=np.float64).reshape(len(indices), 2)
        return values[:, 0], values[:, 1]


def _fingerprint(data: DPOData, config: DPOConfig, visited: Sequence[int]) -> str:
    """What the stored reference values depend on: every datum's tokens and weights, the reference, the pairs."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"reference": config.reference_model, "visited": list(visited)}).encode())
    for pairs in (data.train, data.test):
        digest.update(f"|{len(pairs)}|".encode())
        for datum in pairs.interleaved():
            digest.update(datum.model_input.to_tokens().tobytes())
            digest.update(datum.target_tokens_T.tobytes())
            digest.update(_weights(datum).tobytes())
    return digest.hexdigest()


def _visited(pipeline: Pipeline[tuple[int, ...]], total: int) -> list[tuple[int, ...]]:
    """The batches of pairs first seen in each batch of the run, in order (empty batches left out)."""
    seen: set[int] = set()
    groups: list[tuple[int, ...]] = []
    for batch in itertools.islice(pipeline.iterate(), total):
        fresh = tuple(index for index in batch if index not in seen)
        seen.update(fresh)
        if fresh:
            groups.append(fresh)
    return groups


def _pair_logprobs(output: ForwardBackwardOutput, datums: Sequence[Datum]) -> tuple[np.ndarray, np.ndarray]:
    sequence = sequence_logprobs(output.logprobs_D, [_weights(datum) for datum in datums])
    return sequence[0::2], sequence[1::2]


def _sampler_pair_logprobs(
    sampler: SamplingClient, datums: Sequence[Datum]
) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """Queue ``compute_logprobs`` of each full sequence (the model input and the last target; its entries after
    the first are the datum's target logprobs) of interleaved datums; the thunk waits and sums them per datum."""
    futures = [
        sampler.compute_logprobs(datum.model_input.append_tokens(datum.target_tokens_T[-1:])) for datum in datums
    ]

    def gather() -> tuple[np.ndarray, np.ndarray]:
        logprobs = [future.result()[1:] for future in futures]
        sequence = sequence_logprobs(logprobs, [_weights(datum) for datum in datums])
        return sequence[0::2], sequence[1::2]

    return gather


def _compute_reference(
    client: TrainingClient,
    backend: Backend,
    data: DPOData,
    config: DPOConfig,
    groups: Sequence[tuple[int, ...]],
) -> _Reference:
    """Queue every reference request first (test pairs, then each group of training pairs), then wait."""
    test_datums = list(data.test.interleaved())
    batches = [(group, _interleaved(data.train, group)) for group in groups]
    thunks: list[Callable[[], tuple[np.ndarray, np.ndarray]]]
    if config.reference_model is None:  # the fresh client's weights, before any step: forward passes
        thunks = [
            client.forward(datums, "cross_entropy").map(functools.partial(_pair_logprobs, datums=datums)).result
            for datums in ([test_datums] if test_datums else []) + [datums for _, datums in batches]
        ]
    else:
        sampler = backend.create_sampling_client(base_model=config.reference_model).result()
        thunks = [
            _sampler_pair_logprobs(sampler, datums)
            for datums in ([test_datums] if test_datums else []) + [datums for _, datums in batches]
        ]
    test_c, test_r = thunks.pop(0)() if test_datums else (np.zeros(0), np.zeros(0))
    train: dict[int, tuple[float, float]] = {}
    for (group, _), thunk in zip(batches, thunks, strict=True):
        chosen, rejected = thunk()
        for index, value_c, value_r in zip(group, chosen.tolist(), rejected.tolist(), strict=True):
            train[index] = (value_c, value_r)
    return _Reference(train=train, test_chosen=test_c, test_rejected=test_r)


def _write_reference(path: pathlib.Path, reference: _Reference, fingerprint: str) -> None:
    indices = sorted(reference.train)
    document = {
        "fingerprint": fingerprint,
        "train_indices": indices,
        "train_chosen": [reference.train[index][0] for index in indices],
        "train_rejected": [reference.train[index][1] for index in indices],
        "test_chosen": reference.test_chosen.tolist(),
        "test_rejected": reference.test_rejected.tolist(),
    }
    atomic_write_text(path, json.dumps(document) + "\n")


def _read_reference(path: pathlib.Path, fingerprint: str) -> _Reference | None:
    """The stored reference, or ``None`` if it is missing or belongs to other data."""
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document["fingerprint"] != fingerprint:
            return None
        train = {
            int(index): (float(chosen), float(rejected))
            for index, chosen, rejected in zip(
                document["train_indices"], document["train_chosen"], document["train_rejected"], strict=True
            )
        }
        return _Reference(
            train=train,
            test_chosen=np.asarray(document["test_chosen"], dtype=np.float64),
            test_rejected=np.asarray(document["test_rejected"], dtype=np.float64),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"{path}: unreadable reference logprobs ({error}); start a new run_dir.") from error


def _reference(
    run: Run,
    client: TrainingClient,
    backend: Backend,
    data: DPOData,
    config: DPOConfig,
    pipeline: Pipeline[tuple[int, ...]],
    total: int,
) -> _Reference:
    """Load the run's stored reference logprobs (resume), or compute and store them (fresh run)."""
    groups = _visited(pipeline, total)
    fingerprint = _fingerprint(data, config, [index for group in groups for index in group])
    path = run.run_dir / REFERENCE_FILE
    if run.resumed:
        stored = _read_reference(path, fingerprint)
        if stored is not None:
            return stored
        if config.reference_model is None:
            raise RunDirError(
                f"{path}: missing, or computed for other data: the initial weights it came from are gone, so the run "
                "cannot resume exactly; start a new run_dir (or restore the file and the data)."
            )
    reference = _compute_reference(client, backend, data, config, groups)
    _write_reference(path, reference, fingerprint)
    return reference


# -- the loop ------------------------------------------------------------------------------------------------------


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


_Pending: TypeAlias = tuple[
    int, float, int, APIFuture[ForwardBackwardOutput], list[Mapping[str, float]], APIFuture[DPOEval] | None
]


def _eval_from_row(row: Mapping[str, object]) -> DPOEval | None:
    """The evaluation logged in a metrics row, if the row holds one."""
    values: dict[str, float] = {}
    for field in attrs.fields(DPOEval):
        value = row.get("eval_" + field.name)
        if not isinstance(value, (int, float)):
            return None
        values[field.name] = float(value)
    return DPOEval(
        dpo_loss=values["dpo_loss"],
        accuracy=values["accuracy"],
        policy_accuracy=values["policy_accuracy"],
        margin=values["margin"],
        chosen_reward=values["chosen_reward"],
        rejected_reward=values["rejected_reward"],
        pairs=int(values["pairs"]),
    )


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
    total = _total_steps(data, config)
    run = Run.start(
        config.run_dir,
        config,
        log_to=config.log_to,
        sinks=sinks,
        total_steps=total,
        out=out,
        progress_label="dpo_loss",
    )
    stream = run.out
    test_datums = list(data.test.interleaved())

    def evaluate(client: TrainingClient, reference: _Reference) -> APIFuture[DPOEval]:
        return client.forward(test_datums, "cross_entropy").map(
            lambda output: evaluate_pairs(
                output.logprobs_D, data.test, reference.test_chosen, reference.test_rejected, config.beta
            )
        )

    def finish(item: _Pending) -> None:
        step, lr, pairs, future, box, eval_future = item
        future.result()
        metrics = box[0]
        row: dict[str, float | int | str | None] = {
            **metrics,
            "tokens": int(metrics["tokens"]),
            "lr": lr,
            "pairs": pairs,
            "skipped_rows": data.skipped_rows,
            "dropped_ties": data.dropped_ties,
        }
        if eval_future is not None:
            row.update(eval_future.result().as_row())
        run.log(step, row, metrics["dpo_loss"])
        if after_step is not None:
            after_step(step)

    eval_before: DPOEval | None = None
    pending: _Pending | None = None
    try:
        atomic_write_text(run.run_dir / "pipeline.txt", pipeline.describe() + "\n")
        if not run.resumed:
            reference_name = config.reference_model or "the initial weights"
            stream.write(
                f"DPO on {config.base_model} (LoRA rank {config.lora_rank}) for {total} steps of {config.batch_size} "
                f"pairs, lr {config.learning_rate:.3g}, beta {config.beta:g}, reference: {reference_name}; "
                f"{len(data.train)} training and {len(data.test)} held-out pairs "
                f"({data.skipped_rows} bad rows skipped, {data.dropped_ties} ties dropped)\n"
            )
        client = run.training_client(backend, config.base_model, lora_rank=config.lora_rank, seed=config.seed)
        reference = _reference(run, client, backend, data, config, pipeline, total)
        start = run.start_step
        first_eval: APIFuture[DPOEval] | None = None
        if start == 0 and len(data.test):
            if config.reference_model is None:  # the policy is the reference: its logprobs are already known
                policy_D = np.stack([reference.test_chosen, reference.test_rejected], axis=1).reshape(-1)
                first_eval = APIFuture.completed(
                    _eval_of(
                        policy_D,
                        _weight_sums(test_datums),
                        reference.test_chosen,
                        reference.test_rejected,
                        config.beta,
                    )
                )
            else:
                first_eval = evaluate(client, reference)
            eval_before = first_eval.result()
            stream.write(_describe_eval("held-out before training", eval_before))
        batches = pipeline.iterate(None if run.state is None else from_json(run.state.data_state_json, PipelineState))
        for step in range(start, total):
            eval_future: APIFuture[DPOEval] | None = None
            if step == 0:
                eval_future = first_eval
            elif len(data.test) and config.eval_every and step % config.eval_every == 0:
                eval_future = evaluate(client, reference)
            batch = next(batches)
            lr = learning_rate_at(config.learning_rate, config.lr_schedule, step, total)
            ref_chosen, ref_rejected = reference.batch(batch)
            box: list[Mapping[str, float]] = []
            future = client.forward_backward_custom(
                _interleaved(data.train, batch), dpo_loss_fn(ref_chosen, ref_rejected, config.beta, report=box.append)
            )
            client.optim_step(AdamParams(learning_rate=lr, beta1=_ADAM_BETA1, beta2=_ADAM_BETA2, eps=_ADAM_EPS))
            if pending is not None:
                finish(pending)
            pending = (step, lr, len(batch), future, box, eval_future)
            done = step + 1
            if done == total or (config.save_every and done % config.save_every == 0):
                finish(pending)
                pending = None
                run.checkpoint(client, done, to_json(batches.state()))
    finally:
        run.close()

    eval_after = evaluate(client, reference).result() if len(data.test) else None
    rows = MetricsLog.read(run.run_dir / "metrics.jsonl")
    if eval_before is None and rows:
        eval_before = _eval_from_row(rows[0])
    chart_rows: list[Mapping[str, object]] = list(rows)
    if eval_after is not None:
        chart_rows.append({"step": total, **eval_after.as_row()})
    chart = run.run_dir / CHART_FILE
    atomic_write_text(chart, metrics_chart_html(chart_rows, CHART_KEYS, "DPO: loss and preference accuracy"))
    sampler_path = client.save_weights_for_sampler("final").result()
    if eval_after is not None:
        stream.write(_describe_eval("held-out after training", eval_after))
        if eval_before is not None:
            stream.write(
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


def _describe_eval(label: str, result: DPOEval) -> str:
    return (
        f"{label}: DPO loss {result.dpo_loss:.4f}, preference accuracy (policy) {result.policy_accuracy:.3f}, "
        f"implicit-reward accuracy {result.accuracy:.3f}, margin {result.margin:.4f} ({result.pairs} pairs)\n"
    )
