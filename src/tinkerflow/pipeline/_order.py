"""Seeded, stateless shuffles: the order in which a run reads its source (private). Pure.

An epoch's order is a permutation of ``range(n)`` that depends only on ``(seed, epoch, n, window)``. It is built
from a counter-based hash (splitmix64) and a stable sort, not from numpy's ``Generator`` streams, so the order
is the same on every platform and numpy version: a state saved today restores to the same items tomorrow. The
only "RNG state" a checkpoint needs is the seed.

* per-epoch shuffle (``window=None``): a full permutation per epoch; reading is random access.
* windowed shuffle (``window=W``): positions ``[kW, (k+1)W)`` are permuted among themselves (a fresh
  permutation per window and epoch); windows stay in order. Memory O(W), reads stay near each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs
import numpy as np
from jaxtyping import Int64

from tinkerflow._validate import require_type
from tinkerflow.arrays import checked, frozen_array
from tinkerflow.errors import ConfigError

__all__ = ["EpochOrder", "Shuffle", "epoch_order"]

_MASK: Final[int] = (1 << 64) - 1
_GAMMA: Final[int] = 0x9E3779B97F4A7C15


def _mix(value: int) -> int:
    """splitmix64's finalizer on a Python int (a bijection of 64-bit values)."""
    z = (value + _GAMMA) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _permutation(n: int, key: int) -> np.ndarray:
    """A permutation of ``range(n)`` determined by ``key``: argsort of splitmix64(key + i) (distinct keys)."""
    with np.errstate(over="ignore"):
        z = np.arange(n, dtype=np.uint64) + np.uint64((key + _GAMMA) & _MASK)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.argsort(z, kind="stable").astype(np.int64)


@attrs.frozen
class Shuffle:
    """A seeded shuffle: per epoch (``window=None``) or within consecutive windows of ``window`` items.

    Attributes:
        seed: any non-negative int; the order depends only on it, the epoch and the source length.
        window: ``None`` for a full permutation per epoch, else the window length (>= 1).
    """

    seed: int
    window: int | None = None

    def __attrs_post_init__(self) -> None:
        require_type(self.seed, int, "Shuffle", "seed")
        if self.seed < 0 or self.seed > _MASK:
            raise ConfigError("Shuffle", "seed", f"must lie in [0, 2**64), got {self.seed}.")
        if self.window is not None:
            require_type(self.window, int, "Shuffle", "window")
            if self.window < 1:
                raise ConfigError("Shuffle", "window", f"must be >= 1, got {self.window}.", "use None for per-epoch.")

    def key(self, epoch: int, window: int) -> int:
        """The hash key of one (epoch, window) permutation (``window`` is -1 for a full-epoch shuffle)."""
        return _mix(_mix(_mix(self.seed) ^ epoch) ^ (window & _MASK))

    def describe(self) -> str:
        if self.window is None:
            return f"shuffle per epoch (seed {self.seed})"
        return f"shuffle within windows of {self.window} items (seed {self.seed})"


class EpochOrder:
    """Source indices for a range of positions of an epoch's order (caches the last epoch/window permutations)."""

    __slots__ = ("_cache", "_n", "_shuffle")

    def __init__(self, shuffle: Shuffle | None, n: int) -> None:
        self._shuffle = shuffle
        self._n = n
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, epoch: int, window: int, length: int) -> np.ndarray:
        key = (epoch, window)
        perm = self._cache.get(key)
        if perm is None:
            assert self._shuffle is not None
            perm = _permutation(length, self._shuffle.key(epoch, window))
            if len(self._cache) >= 4:
                self._cache.clear()
            self._cache[key] = perm
        return perm

    def indices(self, epoch: int, start: int, stop: int) -> Sequence[int]:
        """The source indices at positions ``start..stop-1`` of ``epoch``'s order."""
        shuffle = self._shuffle
        if shuffle is None:
            return range(start, stop)
        if shuffle.window is None:
            return self._perm(epoch, -1, self._n)[start:stop].tolist()  # type: ignore[no-any-return]  # tolist() of int64 gives ints
        width = shuffle.window
        result: list[int] = []
        position = start
        while position < stop:
            window = position // width
            base = window * width
            length = min(width, self._n - base)
            end = min(stop, base + length)
            perm = self._perm(epoch, window, length)
            result.extend((perm[position - base : end - base] + base).tolist())
            position = end
        return result


@checked
def epoch_order(n: int, epoch: int, shuffle: Shuffle | None = None) -> Int64[np.ndarray, " N"]:
    """The order (source indices) in which a run reads a source of ``n`` items in ``epoch``: a permutation of
    ``range(n)`` that depends only on the arguments (identity without a shuffle). Read-only int64."""
    if n < 0 or epoch < 0:
        raise ConfigError("epoch_order", "n" if n < 0 else "epoch", "must be >= 0.")
    return frozen_array(np.asarray(EpochOrder(shuffle, n).indices(epoch, 0, n), dtype=np.int64).reshape(n))
