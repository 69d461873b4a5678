"""Datasets larger than memory (shell): rows stay in their file and are read when a batch needs them.

A file source (JSONL, ``hf:``, ``hf-disk:``) is read twice, never held whole:

1. :func:`tinkerflow.shell.io.scan.scan_split` checks every row once (one status byte per row) and chooses the
   training rows and the held-out rows as the in-memory loader would;
2. :class:`StreamedRows` is a ``Sequence`` and a pipeline :class:`~tinkerflow.pipeline.Source` over the chosen
   positions: the pipeline reads a chunk of positions at a time, and the rows of the chunk are read from the file
   (``os.pread`` of their lines, or rows of the memory-mapped Arrow table) and made into datums in one call (the
   recipes render them in one batched tokenizer call). :class:`StreamedPairs` does the same for DPO comparisons.

The training items are the same, in the same order, as the in-memory path's, so the pipeline's seeded shuffle,
its batches and its checkpointable position (:class:`tinkerflow.pipeline.PipelineState`) are the same too: a run
streams or not with identical results and resumes exactly. Do not edit a data file while a run reads it: a row
that no longer parses or passes its check is a :class:`~tinkerflow.rows.DataError` saying so.
"""

from __future__ import annotations

import collections
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, Protocol, TypeVar, cast, overload

import numpy as np

from tinkerflow.chat_format import SourcedRow
from tinkerflow.config import DataConfig, is_hf_source
from tinkerflow.errors import TinkerflowError
from tinkerflow.rows import DataError
from tinkerflow.shell.io.data import HFDataset, RowFormat, open_hf_dataset
from tinkerflow.shell.io.sources import index_lines

__all__ = [
    "HFRows",
    "IndexedRows",
    "JsonlRows",
    "MakeMany",
    "StreamedPairs",
    "StreamedRows",
    "one_by_one",
    "open_rows",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
D = TypeVar("D")

#: Rows read and made in one call when a streamed sequence is iterated (the pipeline reads its own chunks).
ITER_CHUNK = 512
#: Pairs :class:`StreamedPairs` keeps made (a batch's chosen and rejected sides are read one after the other).
PAIR_CACHE = 256

#: What a recipe makes of rows: one outcome per row, in order: the item, or the error that row raised.
MakeMany = Callable[[Sequence[SourcedRow[T]]], Sequence["D | TinkerflowError"]]


class IndexedRows(Protocol[T_co]):
    """Rows of one source by position: how many, each one's name in errors, and each one parsed."""

    @property
    def source(self) -> str: ...
    def __len__(self) -> int: ...
    def where(self, index: int) -> str: ...
    def parse(self, index: int) -> T_co: ...


class JsonlRows(Generic[T]):
    """The non-blank lines of a JSONL file by position, named ``file:line`` (like
    :func:`tinkerflow.shell.io.data.jsonl_rows`); a line is read with ``os.pread`` when it is parsed."""

    def __init__(self, path: str | os.PathLike[str], parse_line: Callable[[bytes, str], T]) -> None:
        self._fd: int | None = None
        self._path = pathlib.Path(path)
        if not self._path.is_file():
            raise DataError(
                str(self._path), "path", "does not exist or is not a file.", "check the data path in the config."
            )
        self._starts, self._ends, self._numbers = index_lines(self._path)
        self._parse_line = parse_line

    @property
    def source(self) -> str:
        return str(self._path)

    def __len__(self) -> int:
        return len(self._starts)

    def where(self, index: int) -> str:
        return f"{self._path}:{int(self._numbers[index])}"

    def read(self, index: int) -> bytes:
        """The bytes of line ``index`` (without its newline)."""
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY)
        start = int(self._starts[index])
        return os.pread(self._fd, int(self._ends[index]) - start, start)

    def parse(self, index: int) -> T:
        return self._parse_line(self.read(index), self.where(index))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


class HFRows(Generic[T]):
    """The rows of a Hugging Face dataset by position (its Arrow table is memory-mapped, not loaded), named
    ``source[split][row]`` (like :func:`tinkerflow.shell.io.data.hf_rows`)."""

    def __init__(self, dataset: HFDataset, prefix: str, parse: Callable[[Mapping[str, object], str], T]) -> None:
        self._dataset, self._prefix, self._parse = dataset, prefix, parse

    @property
    def source(self) -> str:
        return self._prefix

    def __len__(self) -> int:
        return len(self._dataset)

    def where(self, index: int) -> str:
        return f"{self._prefix}[{index}]"

    def parse(self, index: int) -> T:
        return self._parse(self._dataset[index], self.where(index))


def open_rows(
    config: DataConfig, format: RowFormat[T], source: str, split: str | None, default_split: str, field: str
) -> IndexedRows[T]:
    """The rows of one source of ``config`` by position: a JSONL file, or an ``hf:`` / ``hf-disk:`` dataset."""
    if not is_hf_source(source):
        return JsonlRows(source, format.parse_line)
    dataset, prefix = open_hf_dataset(
        source, split, default_split, config.hf_subset, field, where=type(config).__name__
    )
    if format.hf_columns is not None:
        dataset = dataset.select_columns(format.hf_columns(source, field, dataset.column_names))
    return HFRows(dataset, prefix, format.parse_hf if format.parse_hf is not None else format.parse_mapping)


def one_by_one(make: Callable[[SourcedRow[T]], D]) -> Callable[[Sequence[SourcedRow[T]]], list[D | TinkerflowError]]:
    """Make each row alone: a :data:`MakeMany` of a function of one row (that raises for a bad row)."""

    def make_many(rows: Sequence[SourcedRow[T]]) -> list[D | TinkerflowError]:
        outcomes: list[D | TinkerflowError] = []
        for row in rows:
            try:
                outcomes.append(make(row))
            except TinkerflowError as error:
                outcomes.append(error)
        return outcomes

    return make_many


def _changed(where: str, error: TinkerflowError) -> DataError:
    return DataError(
        where,
        "row",
        f"passed the check when the run started but fails now ({error}): the data changed on disk.",
        "do not edit a data file while a run reads it; restore it or start a new run.",
    )


class StreamedRows(Sequence[D]):
    """Items made of the rows at ``positions`` of ``rows`` when they are read (nothing is cached).

    A ``Sequence`` and a pipeline :class:`~tinkerflow.pipeline.Source`: ``read(indices)`` parses those rows and
    makes them in one ``make_many`` call. The rows were checked when the positions were chosen, so a row that
    fails now changed on disk since: a :class:`~tinkerflow.rows.DataError` naming it.
    """

    __slots__ = ("_item_type", "_make_many", "_name", "_positions", "_rows")

    def __init__(
        self,
        rows: IndexedRows[T],
        positions: np.ndarray,
        make_many: Callable[[Sequence[SourcedRow[T]]], Sequence[D | TinkerflowError]],
        *,
        item_type: object = object,
        name: str = "items",
    ) -> None:
        self._rows: IndexedRows[object] = rows
        self._positions = np.asarray(positions, dtype=np.int64)
        # T is erased here: the rows are only ever handed back to make_many
        self._make_many = cast("Callable[[Sequence[SourcedRow[object]]], Sequence[D | TinkerflowError]]", make_many)
        self._item_type, self._name = item_type, name

    @property
    def rows(self) -> IndexedRows[object]:
        return self._rows

    @property
    def positions(self) -> np.ndarray:
        """The source positions of the items, in order (read-only)."""
        view = self._positions.view()
        view.flags.writeable = False
        return view

    @property
    def item_type(self) -> object:
        return self._item_type

    def __len__(self) -> int:
        return len(self._positions)

    def read(self, indices: Sequence[int]) -> list[D]:
        """Items ``indices``, their rows parsed and made in one call."""
        rows: list[SourcedRow[object]] = []
        for index in indices:
            position = int(self._positions[index])
            where = self._rows.where(position)
            try:
                rows.append(SourcedRow(where, self._rows.parse(position)))
            except TinkerflowError as error:
                raise _changed(where, error) from error
        items: list[D] = []
        for row, outcome in zip(rows, self._make_many(rows), strict=True):
            if isinstance(outcome, TinkerflowError):
                raise _changed(row.where, outcome) from outcome
            items.append(outcome)
        return items

    def location(self, index: int) -> str:
        return self._rows.where(int(self._positions[index]))

    def describe(self) -> str:
        kind = getattr(self._item_type, "__name__", str(self._item_type))
        return f"{self._name}: {len(self)} items of {kind}, read from {self._rows.source} when used"

    @overload
    def __getitem__(self, index: int) -> D: ...
    @overload
    def __getitem__(self, index: slice) -> list[D]: ...
    def __getitem__(self, index: int | slice) -> D | list[D]:
        if isinstance(index, slice):
            return self.read(range(*index.indices(len(self))))
        if not -len(self) <= index < len(self):
            raise IndexError(f"StreamedRows index {index} out of range for {len(self)} items")
        return self.read([index % len(self)])[0]

    def __iter__(self) -> Iterator[D]:
        for start in range(0, len(self), ITER_CHUNK):
            yield from self.read(range(start, min(len(self), start + ITER_CHUNK)))

    def __repr__(self) -> str:
        return f"StreamedRows({self._rows.source!r}, {len(self)} items)"


class _Side(Sequence[D]):
    """One side of :class:`StreamedPairs` (0: chosen, 1: rejected), or both interleaved (``None``)."""

    __slots__ = ("_pairs", "_side")

    def __init__(self, pairs: StreamedPairs[D], side: int | None) -> None:
        self._pairs, self._side = pairs, side

    def __len__(self) -> int:
        return len(self._pairs) * (2 if self._side is None else 1)

    def _item(self, index: int) -> D:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        if self._side is None:
            return self._pairs.pair(index // 2)[index % 2]
        return self._pairs.pair(index)[self._side]

    @overload
    def __getitem__(self, index: int) -> D: ...
    @overload
    def __getitem__(self, index: slice) -> list[D]: ...
    def __getitem__(self, index: int | slice) -> D | list[D]:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(len(self)))]
        return self._item(index)

    def __iter__(self) -> Iterator[D]:
        pairs = len(self._pairs)
        for start in range(0, pairs, ITER_CHUNK):
            for pair in self._pairs.prefetch(range(start, min(pairs, start + ITER_CHUNK))):
                if self._side is None:
                    yield from pair
                else:
                    yield pair[self._side]


class StreamedPairs(Generic[D]):
    """Comparisons read from their file when used: ``chosen[i]`` and ``rejected[i]`` are the two items of pair
    ``i`` (made once for both: the last :data:`PAIR_CACHE` pairs read are kept), ``indices`` the rows' ranks
    among the readable training rows (as :class:`~tinkerflow.preference.pairs.DPOPairs` has them)."""

    def __init__(self, pairs: StreamedRows[tuple[D, D]], ranks: np.ndarray) -> None:
        self._pairs = pairs
        self._keep = PAIR_CACHE
        self._ranks = np.asarray(ranks, dtype=np.int64)
        self._cache: collections.OrderedDict[int, tuple[D, D]] = collections.OrderedDict()
        self.chosen: Sequence[D] = _Side(self, 0)
        self.rejected: Sequence[D] = _Side(self, 1)

    @property
    def indices(self) -> Sequence[int]:
        return _Ranks(self._ranks)

    def __len__(self) -> int:
        return len(self._pairs)

    def pair(self, index: int) -> tuple[D, D]:
        """Pair ``index``: (chosen, rejected)."""
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        (value,) = self.prefetch([index])
        return value

    def prefetch(self, indices: Sequence[int]) -> list[tuple[D, D]]:
        """Pairs ``indices``, those not made yet made in one call, and all kept for the reads that follow (the
        cache grows to hold a batch)."""
        missing = sorted({index for index in indices if index not in self._cache})
        if missing:
            for index, value in zip(missing, self._pairs.read(missing), strict=True):
                self._cache[index] = value
        self._keep = max(self._keep, len(indices))
        values = []
        for index in indices:
            self._cache.move_to_end(index)
            values.append(self._cache[index])
        while len(self._cache) > self._keep:
            self._cache.popitem(last=False)
        return values

    def interleaved(self) -> Sequence[D]:
        """``(chosen_0, rejected_0, chosen_1, ...)``: a sequence that reads a pair when one of its sides is read."""
        return _Side(self, None)

    def __repr__(self) -> str:
        return f"StreamedPairs({self._pairs.rows.source!r}, {len(self)} pairs)"


class _Ranks(Sequence[int]):
    __slots__ = ("_ranks",)

    def __init__(self, ranks: np.ndarray) -> None:
        self._ranks = ranks

    def __len__(self) -> int:
        return len(self._ranks)

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return cast("list[int]", self._ranks[index].tolist())
        return int(self._ranks[index])
