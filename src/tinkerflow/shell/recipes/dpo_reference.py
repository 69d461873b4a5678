"""DPO reference logprobs (shell): computed once per pair before training, stored in the run directory.

The values live in ``reference_logprobs.json`` (atomically, before the first checkpoint), so a resumed run uses
exactly the same ones. The reference is the initial weights (forward passes of the fresh training client, one per
first-epoch batch with that batch's exact composition, so at step 0 the policy equals the reference bit for bit)
or a named model (``compute_logprobs`` of each full sequence on a sampling client of it). Only pairs the run will
visit are scored; a fingerprint of the data, the reference and the visited pairs guards the stored file.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import numpy as np

from tinkerflow.datum import Datum
from tinkerflow.pipeline import Pipeline
from tinkerflow.preference.config import DPOConfig
from tinkerflow.preference.dpo import sequence_logprobs
from tinkerflow.preference.dpo_data import DPOData, Pairs
from tinkerflow.preference.evaluation import datum_weights
from tinkerflow.shell.backends.protocol import Backend, SamplingClient, TrainingClient
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.io.run_dir import RunDirError, atomic_write_text
from tinkerflow.shell.io.streaming import StreamedPairs
from tinkerflow.training import ForwardBackwardOutput

__all__ = ["REFERENCE_FILE", "Reference", "interleaved", "load_or_compute_reference"]

#: Reference sequence logprobs of the pairs the run visits, written before the first checkpoint.
REFERENCE_FILE: Final = "reference_logprobs.json"
#: Groups of training pairs whose reference requests may be queued before the oldest is awaited.
IN_FLIGHT: Final = 8


def interleaved(pairs: Pairs, indices: Sequence[int]) -> list[Datum]:
    """The datums of pairs ``indices``, interleaved ``(chosen_0, rejected_0, chosen_1, ...)`` (streamed pairs are
    read in one call)."""
    if isinstance(pairs, StreamedPairs):
        return [datum for pair in pairs.prefetch(indices) for datum in pair]
    return [datum for index in indices for datum in (pairs.chosen[index], pairs.rejected[index])]


@attrs.frozen
class Reference:
    """Reference sequence logprobs of the training pairs (by index; NaN for a pair the run never visits) and of
    the held-out pairs."""

    train_chosen: np.ndarray
    train_rejected: np.ndarray
    test_chosen: np.ndarray
    test_rejected: np.ndarray

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The reference values of the training pairs ``indices``: (chosen, rejected)."""
        where = np.asarray(indices, dtype=np.int64)
        chosen, rejected = self.train_chosen[where], self.train_rejected[where]
        if np.isnan(chosen).any() or np.isnan(rejected).any():
            raise RunDirError(f"no reference logprobs for the training pairs {where.tolist()}; start a new run_dir.")
        return chosen, rejected

    def visited(self) -> np.ndarray:
        """The indices of the training pairs that have reference values."""
        return np.flatnonzero(~np.isnan(self.train_chosen))


def _fingerprint(data: DPOData, config: DPOConfig, visited: Sequence[int]) -> str:
    """What the stored reference values depend on: every datum's tokens and weights, the reference, the pairs."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"reference": config.reference_model, "visited": list(visited)}).encode())
    for pairs in (data.train, data.test):
        digest.update(f"|{len(pairs)}|".encode())
        for datum in pairs.interleaved():
            digest.update(datum.model_input.to_tokens().tobytes())
            digest.update(datum.target_tokens_T.tobytes())
            digest.update(datum_weights(datum).tobytes())
    return digest.hexdigest()


def _visited(pipeline: Pipeline[tuple[int, ...]], total: int, pairs: int) -> list[tuple[int, ...]]:
    """The batches of pairs first seen in each batch of the run, in order (empty batches left out)."""
    seen = np.zeros(pairs, dtype=bool)
    groups: list[tuple[int, ...]] = []
    for batch in itertools.islice(pipeline.iterate(), total):
        fresh = tuple(index for index in batch if not seen[index])
        seen[list(fresh)] = True
        if fresh:
            groups.append(fresh)
    return groups


def _pair_logprobs(output: ForwardBackwardOutput, datums: Sequence[Datum]) -> tuple[np.ndarray, np.ndarray]:
    sequence = sequence_logprobs(output.logprobs_D, [datum_weights(datum) for datum in datums])
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
        sequence = sequence_logprobs(logprobs, [datum_weights(datum) for datum in datums])
        return sequence[0::2], sequence[1::2]

    return gather


def _compute_reference(
    client: TrainingClient,
    backend: Backend,
    data: DPOData,
    config: DPOConfig,
    groups: Sequence[tuple[int, ...]],
) -> Reference:
    """Queue the reference requests in order (test pairs, then each group of training pairs) and wait for them
    :data:`IN_FLIGHT` groups behind, so the backend always has work while at most that many groups' datums (read
    from the file when the data is streamed) are held."""
    if config.reference_model is None:  # the fresh client's weights, before any step: forward passes

        def queue(datums: list[Datum]) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
            future = client.forward(datums, "cross_entropy")
            return future.map(functools.partial(_pair_logprobs, datums=datums)).result

    else:
        sampler = backend.create_sampling_client(base_model=config.reference_model).result()

        def queue(datums: list[Datum]) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
            return _sampler_pair_logprobs(sampler, datums)

    test_datums = list(data.test.interleaved())
    test_thunk = queue(test_datums) if test_datums else None
    train_c = np.full(len(data.train), np.nan)
    train_r = np.full(len(data.train), np.nan)
    in_flight: collections.deque[tuple[tuple[int, ...], Callable[[], tuple[np.ndarray, np.ndarray]]]]
    in_flight = collections.deque()

    def finish_one() -> None:
        group, thunk = in_flight.popleft()
        chosen, rejected = thunk()
        train_c[list(group)], train_r[list(group)] = chosen, rejected

    test_c, test_r = (np.zeros(0), np.zeros(0))
    for group in groups:
        in_flight.append((group, queue(interleaved(data.train, group))))
        if test_thunk is not None:
            test_c, test_r = test_thunk()
            test_thunk = None
        if len(in_flight) > IN_FLIGHT:
            finish_one()
    if test_thunk is not None:
        test_c, test_r = test_thunk()
    while in_flight:
        finish_one()
    return Reference(train_chosen=train_c, train_rejected=train_r, test_chosen=test_c, test_rejected=test_r)


def _write_reference(path: pathlib.Path, reference: Reference, fingerprint: str) -> None:
    indices = reference.visited()
    document = {
        "fingerprint": fingerprint,
        "train_indices": indices.tolist(),
        "train_chosen": reference.train_chosen[indices].tolist(),
        "train_rejected": reference.train_rejected[indices].tolist(),
        "test_chosen": reference.test_chosen.tolist(),
        "test_rejected": reference.test_rejected.tolist(),
    }
    atomic_write_text(path, json.dumps(document) + "\n")


def _read_reference(path: pathlib.Path, fingerprint: str, pairs: int) -> Reference | None:
    """The stored reference, or ``None`` if it is missing or belongs to other data."""
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document["fingerprint"] != fingerprint:
            return None
        indices = np.asarray(document["train_indices"], dtype=np.int64)
        train_c, train_r = np.full(pairs, np.nan), np.full(pairs, np.nan)
        train_c[indices] = np.asarray(document["train_chosen"], dtype=np.float64)
        train_r[indices] = np.asarray(document["train_rejected"], dtype=np.float64)
        return Reference(
            train_chosen=train_c,
            train_rejected=train_r,
            test_chosen=np.asarray(document["test_chosen"], dtype=np.float64),
            test_rejected=np.asarray(document["test_rejected"], dtype=np.float64),
        )
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise RunDirError(f"{path}: unreadable reference logprobs ({error}); start a new run_dir.") from error


def load_or_compute_reference(
    run: Run,
    client: TrainingClient,
    backend: Backend,
    data: DPOData,
    config: DPOConfig,
    pipeline: Pipeline[tuple[int, ...]],
    total: int,
) -> Reference:
    """Load the run's stored reference logprobs (resume), or compute and store them (fresh run)."""
    groups = _visited(pipeline, total, len(data.train))
    fingerprint = _fingerprint(data, config, [index for group in groups for index in group])
    path = run.run_dir / REFERENCE_FILE
    if run.resumed:
        stored = _read_reference(path, fingerprint, len(data.train))
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
