"""DPO reference logprobs (shell): computed once per pair before training, stored in the run directory.

The values live in ``reference_logprobs.json`` (atomically, before the first checkpoint), so a resumed run uses
exactly the same ones. The reference is the initial weights (forward passes of the fresh training client, one per
first-epoch batch with that batch's exact composition, so at step 0 the policy equals the reference bit for bit)
or a named model (``compute_logprobs`` of each full sequence on a sampling client of it). Only pairs the run will
visit are scored; a fingerprint of the data, the reference and the visited pairs guards the stored file.
"""

from __future__ import annotations

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
from tinkerflow.preference.dpo_data import DPOData
from tinkerflow.preference.evaluation import datum_weights
from tinkerflow.preference.pairs import DPOPairs
from tinkerflow.shell.backends.protocol import Backend, SamplingClient, TrainingClient
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.io.run_dir import RunDirError, atomic_write_text
from tinkerflow.training import ForwardBackwardOutput

__all__ = ["REFERENCE_FILE", "Reference", "interleaved", "load_or_compute_reference"]

#: Reference sequence logprobs of the pairs the run visits, written before the first checkpoint.
REFERENCE_FILE: Final = "reference_logprobs.json"


def interleaved(pairs: DPOPairs, indices: Sequence[int]) -> list[Datum]:
    """The datums of pairs ``indices``, interleaved ``(chosen_0, rejected_0, chosen_1, ...)``."""
    return [datum for index in indices for datum in (pairs.chosen[index], pairs.rejected[index])]


@attrs.frozen
class Reference:
    """Reference sequence logprobs: per visited training pair (by index) and per held-out pair."""

    train: dict[int, tuple[float, float]]
    test_chosen: np.ndarray
    test_rejected: np.ndarray

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The reference values of the training pairs ``indices``: (chosen, rejected)."""
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
            digest.update(datum_weights(datum).tobytes())
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
    """Queue every reference request first (test pairs, then each group of training pairs), then wait."""
    test_datums = list(data.test.interleaved())
    batches = [(group, interleaved(data.train, group)) for group in groups]
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
    return Reference(train=train, test_chosen=test_c, test_rejected=test_r)


def _write_reference(path: pathlib.Path, reference: Reference, fingerprint: str) -> None:
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


def _read_reference(path: pathlib.Path, fingerprint: str) -> Reference | None:
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
        return Reference(
            train=train,
            test_chosen=np.asarray(document["test_chosen"], dtype=np.float64),
            test_rejected=np.asarray(document["test_rejected"], dtype=np.float64),
        )
    except (ValueError, KeyError, TypeError) as error:
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
