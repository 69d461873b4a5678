"""RL datasets: batches of environment-group builders addressed by index.

Both datasets are pure functions of the batch index (and their seed), so a resumed run asks for batch ``i`` and
gets exactly the builders the first run got:

* :class:`ListRLDataset`: a fixed list of builders, shuffled per epoch with a seeded permutation;
* :class:`GeneratedRLDataset`: builders drawn from a random generator seeded by ``(seed, batch, slot)``
  (procedural tasks such as arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence, Sequence

import numpy as np

from tinkerflow._validate import positive_int
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.rl.types import EnvGroupBuilder

__all__ = ["GeneratedRLDataset", "ListRLDataset", "epoch_order"]


def _seed(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(where, "seed", f"must be an int >= 0, got {value!r}.")
    return value


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order (indices into the builders) in which epoch ``epoch`` reads ``n`` items: a permutation that
    depends only on ``(n, seed, epoch)`` (identity without ``shuffle``)."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng((seed, epoch)).permutation(n).astype(np.int64)


def _check_index(index: object, length: int, where: str) -> int:
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise ValidationError(where, "index", f"must be an int, got {type(index).__name__}.")
    value = int(index)
    if not 0 <= value < length:
        raise ValidationError(
            where, "index", f"{value} is outside 0..{length - 1}.", f"the dataset has {length} batches."
        )
    return value


class ListRLDataset:
    """Batches of a fixed list of builders, ``epochs`` passes, each shuffled with a seeded permutation.

    Batch ``i`` holds positions ``[(i % per_epoch) * batch_size, ...)`` of epoch ``i // per_epoch``'s order
    (:func:`epoch_order`); batches never span epochs, the last batch of an epoch may be short. ``len`` is
    ``epochs * ceil(len(builders) / batch_size)``.
    """

    __slots__ = ("batch_size", "builders", "epochs", "seed", "shuffle")

    def __init__(
        self,
        builders: Sequence[EnvGroupBuilder],
        batch_size: int,
        seed: int = 0,
        *,
        epochs: int = 1,
        shuffle: bool = True,
    ) -> None:
        where = "ListRLDataset"
        # a list is copied; another sequence (a tuple, or builders made when read from a file) is kept as it is
        self.builders: Sequence[EnvGroupBuilder] = (
            tuple(builders) if isinstance(builders, MutableSequence) or not isinstance(builders, Sequence) else builders
        )
        if not self.builders:
            raise ConfigError(where, "builders", "is empty.", "give at least one environment-group builder.")
        self.batch_size = positive_int(batch_size, where, "batch_size")
        self.seed = _seed(seed, where)
        self.epochs = positive_int(epochs, where, "epochs")
        self.shuffle = shuffle

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.builders) // self.batch_size)

    def __len__(self) -> int:
        return self.epochs * self.batches_per_epoch

    def batch_indices(self, index: int) -> np.ndarray:
        """Indices into :attr:`builders` of batch ``index``."""
        index = _check_index(index, len(self), "ListRLDataset.get_batch")
        epoch, position = divmod(index, self.batches_per_epoch)
        order = epoch_order(len(self.builders), self.seed, epoch, self.shuffle)
        return order[position * self.batch_size : (position + 1) * self.batch_size]

    def get_batch(self, index: int) -> Sequence[EnvGroupBuilder]:
        return [self.builders[int(i)] for i in self.batch_indices(index)]


class GeneratedRLDataset:
    """``n_batches`` batches of ``batch_size`` builders, each made by ``make_builder(rng)`` with a generator
    seeded by ``(seed, batch index, slot)``: any batch can be rebuilt alone, identically."""

    __slots__ = ("batch_size", "make_builder", "n_batches", "seed")

    def __init__(
        self,
        make_builder: Callable[[np.random.Generator], EnvGroupBuilder],
        batch_size: int,
        n_batches: int,
        seed: int = 0,
    ) -> None:
        where = "GeneratedRLDataset"
        self.make_builder = make_builder
        self.batch_size = positive_int(batch_size, where, "batch_size")
        self.n_batches = positive_int(n_batches, where, "n_batches")
        self.seed = _seed(seed, where)

    def __len__(self) -> int:
        return self.n_batches

    def get_batch(self, index: int) -> Sequence[EnvGroupBuilder]:
        index = _check_index(index, self.n_batches, "GeneratedRLDataset.get_batch")
        return [self.make_builder(np.random.default_rng((self.seed, index, slot))) for slot in range(self.batch_size)]
