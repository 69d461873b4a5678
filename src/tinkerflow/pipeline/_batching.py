"""Batching specifications: by item count or by token budget (private; re-exported by ``tinkerflow.pipeline``). Pure.

A spec is a frozen record the pipeline value carries; the iterator cuts the batches. Token batching adds one
hidden last step to the run (:class:`Measure`: item -> ``(item, length)``), so that lengths are computed with the
stages (in the workers, when a shell executor runs them) and an oversize item fails like any stage error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import attrs

from tinkerflow._validate import positive_int, require_type
from tinkerflow.errors import ConfigError

__all__ = ["BatchBySize", "BatchByTokens", "Measure", "Oversize"]

Oversize = Literal["error", "alone"]
"""What token batching does with an item longer than the budget: fail on it, or make it a batch alone."""


def _remainder(drop_remainder: bool) -> str:
    return ", last partial batch dropped" if drop_remainder else ""


@attrs.frozen
class BatchBySize:
    """Batches of ``size`` items; the last batch of an epoch is smaller unless ``drop_remainder``."""

    size: int
    drop_remainder: bool = False

    def __attrs_post_init__(self) -> None:
        positive_int(self.size, "BatchBySize", "size")
        require_type(self.drop_remainder, bool, "BatchBySize", "drop_remainder")

    def describe(self) -> str:
        """One line: the batch size, and whether a last partial batch is dropped."""
        return f"batches of {self.size} items" + _remainder(self.drop_remainder)


@attrs.frozen
class BatchByTokens:
    """Greedy batches in order whose ``length`` sum stays within ``max_tokens`` (and ``max_items``, if given).

    An item longer than ``max_tokens`` on its own is an error of that item (``oversize="error"``, which the
    error policy may skip and count) or a batch by itself (``oversize="alone"``). Batches do not span epochs.
    """

    max_tokens: int
    length: Callable[..., int]
    max_items: int | None = None
    drop_remainder: bool = False
    oversize: Oversize = "error"

    def __attrs_post_init__(self) -> None:
        positive_int(self.max_tokens, "BatchByTokens", "max_tokens")
        if not callable(self.length):
            raise ConfigError("BatchByTokens", "length", "must be a callable item -> int.", "e.g. datum_length.")
        if self.max_items is not None:
            positive_int(self.max_items, "BatchByTokens", "max_items")
        require_type(self.drop_remainder, bool, "BatchByTokens", "drop_remainder")
        if self.oversize not in ("error", "alone"):
            raise ConfigError("BatchByTokens", "oversize", f"must be 'error' or 'alone', got {self.oversize!r}.")

    def describe(self) -> str:
        """One line: the budget, the length function, the item cap, the oversize rule and the remainder rule."""
        name = getattr(self.length, "__qualname__", repr(self.length))
        text = f"batches of at most {self.max_tokens} tokens by {name}"
        if self.max_items is not None:
            text += f" and at most {self.max_items} items"
        text += "; a longer item " + ("is an error" if self.oversize == "error" else "is a batch alone")
        return text + _remainder(self.drop_remainder)


@attrs.frozen
class Measure:
    """The hidden last step of token batching: item -> (item, length), rejecting oversize items."""

    length: Callable[..., int]
    max_tokens: int
    oversize: Oversize

    def __call__(self, item: object) -> tuple[object, int]:
        value = self.length(item)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError("BatchByTokens", "length", f"must return a non-negative int, returned {value!r}.")
        if value > self.max_tokens and self.oversize == "error":
            raise ValueError(
                f"item has {value} tokens, more than the batch budget of {self.max_tokens}; filter long items "
                "out first (length_filter) or use oversize='alone'"
            )
        return item, value
