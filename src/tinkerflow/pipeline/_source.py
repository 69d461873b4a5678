"""Sources: random-access item collections a pipeline reads from (private; re-exported by ``tinkerflow.pipeline``).

A source has a length, reads items by index and names an item's position for error messages. Random access is
what makes shuffles cheap and restores O(1): a run never has to replay a stream to find its place.

:class:`SequenceSource` wraps anything with ``len`` and integer indexing: lists, tuples, numpy arrays, a Hugging
Face ``datasets.Dataset`` (rows come back as dicts). :class:`JsonlSource` reads a JSON-lines file lazily; it is
the one piece of this package that touches the file system (it reads, never writes). For a stream without
random access (an ``IterableDataset``, a generator), write it to JSONL or materialize it as a list first.
"""

from __future__ import annotations

import json
import mmap
import os
import pathlib
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.pipeline._types import type_name

__all__ = ["Indexable", "JsonlSource", "SequenceSource", "Source"]

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
                "materialize a stream with list(...) or write it to JSONL and use JsonlSource.",
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


_BLOCK = 1 << 24


def _index_lines(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start byte, end byte, 1-based line number) of every non-blank line of a file."""
    size = path.stat().st_size
    if size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        data = np.frombuffer(mapped, dtype=np.uint8)
        try:
            newlines = [np.flatnonzero(data[i : i + _BLOCK] == 10) + i for i in range(0, size, _BLOCK)]
            ends = np.concatenate([*newlines, np.array([size], dtype=np.int64)]).astype(np.int64)
            starts = np.concatenate([np.zeros(1, dtype=np.int64), ends[:-1] + 1])
            numbers = np.arange(1, len(starts) + 1, dtype=np.int64)
            lengths = ends - starts
            keep = lengths > 0
            for line in np.flatnonzero(keep & (lengths <= 8)):  # short lines may be blank: look at them
                if not bytes(data[starts[line] : ends[line]]).strip():
                    keep[line] = False
        finally:
            del data  # release the buffer before the map closes
    return starts[keep], ends[keep], numbers[keep]


class JsonlSource:
    """A JSON-lines file, one JSON object per non-blank line, read lazily (shell: reads the file).

    The first use indexes the line offsets (one pass over the file, 24 bytes per line kept); reads then use
    ``os.pread``, so worker processes can share the descriptor. Items are ``dict[str, object]``; a line that is
    not a JSON object fails the read with its file and line named (and obeys the pipeline's error policy).
    Decode items into records with a first stage (e.g. ``functools.partial(tinkerflow.serde.structure,
    cls=Conversation)``).
    """

    __slots__ = ("_fd", "_index", "_path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = pathlib.Path(path)
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._fd: int | None = None

    @property
    def path(self) -> pathlib.Path:
        return self._path

    @property
    def item_type(self) -> object:
        return dict[str, object]

    def _lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._index is None:
            if not self._path.is_file():
                raise ConfigError("JsonlSource", "path", f"{self._path} is not a readable file.")
            self._index = _index_lines(self._path)
        return self._index

    def __len__(self) -> int:
        return len(self._lines()[0])

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY)
        return self._fd

    def read(self, indices: Sequence[int]) -> list[dict[str, object]]:
        starts, ends, _ = self._lines()
        fd = self._descriptor()
        if isinstance(indices, range) and indices.step == 1 and len(indices) > 1:
            first, last = indices.start, indices.stop - 1
            base = int(starts[first])
            block = os.pread(fd, int(ends[last]) - base, base)
            begins = (starts[first : last + 1] - base).tolist()
            finishes = (ends[first : last + 1] - base).tolist()
            texts = [block[begin:end] for begin, end in zip(begins, finishes, strict=True)]
        else:
            texts = [os.pread(fd, int(ends[i]) - int(starts[i]), int(starts[i])) for i in indices]
        items = [json.loads(text) for text in texts]
        for item in items:
            if not isinstance(item, dict):
                raise ValidationError("JsonlSource", "line", f"expected a JSON object, got JSON {type(item).__name__}.")
        return items

    def location(self, index: int) -> str:
        return f"{self._path}:{int(self._lines()[2][index])}"

    def describe(self) -> str:
        return f"{self._path}: {len(self)} JSON lines"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, object]:
        return {"path": str(self._path), "index": self._index}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._path = pathlib.Path(str(state["path"]))
        self._index = state["index"]  # type: ignore[assignment]  # written by __getstate__ above
        self._fd = None

    def __repr__(self) -> str:
        return f"JsonlSource({str(self._path)!r})"
