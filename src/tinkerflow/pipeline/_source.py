"""Sources: random-access item collections a pipeline reads from (private; re-exported by ``tinkerflow.pipeline``).

A source has a length, reads items by index and names an item's position for error messages. Random access is
what makes shuffles cheap and restores O(1): a run never has to replay a stream to find its place.

:class:`SequenceSource` wraps anything with ``len`` and integer indexing: lists, tuples, numpy arrays, a Hugging
Face ``datasets.Dataset`` (rows come back as dicts). Sources that read files live in the shell
(``tinkerflow.shell.io.sources.JsonlSource``). For a stream without random access (an ``IterableDataset``, a
generator), write it to JSONL or materialize it as a list first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from tinkerflow.errors import ConfigError
from tinkerflow.pipeline._types import type_name

__all__ = ["Indexable", "SequenceSource", "Source"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class Source(Protocol[T_co]):
    """What a pipeline reads: ``len``, a batch read by indices, and a readable location per index.

    ``read`` may raise; the run then reads the chunk's items one by one to name the bad one (so a read must
    not have side effects that repeating would change). ``item_type`` is the type of the items (``Any`` when
    unknown, which turns off the composition check of the first stage).
    """

    @property
    def item_type(self) -> object: ...

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> Sequence[T_co]: ...

    def location(self, index: int) -> str: ...

    def describe(self) -> str: ...


class Indexable(Protocol[T_co]):
    """Anything with ``len`` and integer indexing (a list, a tuple, a ``datasets.Dataset``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> T_co: ...


class SequenceSource(Generic[T]):
    """A source over an in-memory sequence (or any object with ``len`` and integer indexing).

    Args:
        items: the items; not copied, so do not mutate it while a run reads it.
        item_type: the items' type for the composition check (default ``Any``: unchecked).
        name: used in locations (``"items[12]"``) and descriptions.
    """

    __slots__ = ("_item_type", "_items", "_name")

    def __init__(self, items: Indexable[T], *, item_type: object = Any, name: str = "items") -> None:
        if not hasattr(items, "__len__") or not hasattr(items, "__getitem__"):
            raise ConfigError(
                "SequenceSource",
                "items",
                f"needs len() and integer indexing, got {type(items).__name__}.",
                "materialize a stream with list(...), or write it to JSONL and read it with a JsonlSource.",
            )
        self._items = items
        self._item_type = item_type
        self._name = name

    @property
    def item_type(self) -> object:
        return self._item_type

    @property
    def items(self) -> Indexable[T]:
        return self._items

    def __len__(self) -> int:
        return len(self._items)

    def read(self, indices: Sequence[int]) -> list[T]:
        items = self._items
        if isinstance(indices, range) and indices.step == 1 and isinstance(items, (list, tuple)):
            return list(items[indices.start : indices.stop])
        return list(map(items.__getitem__, indices))

    def location(self, index: int) -> str:
        return f"{self._name}[{index}]"

    def describe(self) -> str:
        return f"{self._name}: {len(self._items)} items of {type_name(self._item_type)}"

    def __repr__(self) -> str:
        return f"SequenceSource({self._name!r}, {len(self._items)} items)"
