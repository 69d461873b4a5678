"""Datasets larger than memory (shell): rows stay in their file and are read when a batch needs them.

A file source (JSONL, ``hf:``, ``hf-disk:``) is read twice, never held:

1. :func:`scan_split` checks every row once, in file order, under the config's bad-row policy (parse it, then
   run the recipe's checks: render it, measure it), keeping one status byte per row; then it splits the rows as
   the in-memory loader does (:func:`tinkerflow.shell.io.data.load_split`: ``test_data``, the ``hf_test_split``, or
   the seeded ``test_fraction`` split of the readable rows). What it keeps is the positions of the good training
   rows (8 bytes each), the line index of a JSONL file (24 bytes a line) and the held-out rows, which evaluation
   reads every time anyway. Errors are the in-memory loader's, in its order.
2. :class:`StreamedRows` is a ``Sequence`` over those positions: item ``i`` is read from the file (``os.pread``
   of one line, or one row of the memory-mapped Arrow table) and made into a datum when the pipeline asks for it.

The training items are therefore the same, in the same order, as the in-memory path's, so the pipeline's seeded
shuffle, its batches and its checkpointable position (:class:`tinkerflow.pipeline.PipelineState`) are the same
too: a run streams or not with identical results and resumes exactly. Do not edit a data file while a run reads
it: a row that no longer parses is a :class:`~tinkerflow.rows.DataError` saying so.
"""

from __future__ import annotations

import collections
import os
import pathlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, Protocol, TextIO, TypeVar, cast, overload

import attrs
import numpy as np
from tqdm import tqdm

from tinkerflow.chat_format import ChatFormatError, SourcedRow, collect_rows
from tinkerflow.config import DataConfig, is_hf_source
from tinkerflow.errors import TinkerflowError
from tinkerflow.rows import MEMORY_TEST_SOURCE, DataError
from tinkerflow.shell.io.data import HFDataset, RowFormat, load_source, memory_rows, open_hf_dataset
from tinkerflow.shell.io.sources import index_lines
from tinkerflow.supervised import split_indices

__all__ = [
    "Check",
    "HFRows",
    "IndexedRows",
    "JsonlRows",
    "StreamedPairs",
    "StreamedRows",
    "StreamedSplit",
    "open_rows",
    "scan_split",
    "streamed",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
D = TypeVar("D")

#: Rows at least this many get a progress bar while they are checked.
PROGRESS_MIN_ROWS = 20_000
#: Pairs :class:`StreamedPairs` keeps made (a batch's chosen and rejected sides are read one after the other).
PAIR_CACHE = 256


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


class StreamedRows(Sequence[D]):
    """Items ``make(row)`` of the rows at ``positions`` of ``rows``, made when they are read (nothing is cached).

    The rows were checked when the positions were chosen (:func:`scan_split`), so a row that fails now changed
    on disk since: that is a :class:`~tinkerflow.rows.DataError` naming it.
    """

    __slots__ = ("_make", "_positions", "_rows")

    def __init__(self, rows: IndexedRows[T], positions: np.ndarray, make: Callable[[SourcedRow[T]], D]) -> None:
        self._rows: IndexedRows[object] = rows
        self._positions = np.asarray(positions, dtype=np.int64)
        self._make: Callable[[SourcedRow[object]], D] = make  # type: ignore[assignment]  # T is erased here

    @property
    def rows(self) -> IndexedRows[object]:
        return self._rows

    @property
    def positions(self) -> np.ndarray:
        """The source positions of the items, in order (read-only)."""
        view = self._positions.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return len(self._positions)

    def _item(self, index: int) -> D:
        position = int(self._positions[index])
        where = self._rows.where(position)
        try:
            return self._make(SourcedRow(where, self._rows.parse(position)))
        except TinkerflowError as error:
            raise DataError(
                where,
                "row",
                f"passed the check when the run started but fails now ({error}): the data changed on disk.",
                "do not edit a data file while a run reads it; restore it or start a new run.",
            ) from error

    @overload
    def __getitem__(self, index: int) -> D: ...
    @overload
    def __getitem__(self, index: slice) -> list[D]: ...
    def __getitem__(self, index: int | slice) -> D | list[D]:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"StreamedRows index {index} out of range for {len(self)} items")
        return self._item(index % len(self))

    def __iter__(self) -> Iterator[D]:
        return (self._item(i) for i in range(len(self)))

    def __repr__(self) -> str:
        return f"StreamedRows({self._rows.source!r}, {len(self)} items)"


#: What the check of one row found (one byte per row): usable, unreadable, left out without being bad (a tie
#: dropped under ``ties="drop"``), or failed at check stage ``s`` (``FAILED + s``: a bad row; ``FATAL + s``: an
#: error no bad-row policy skips).
USABLE, UNREADABLE, LEFT_OUT, FAILED, FATAL = 0, 1, 2, 8, 64


@attrs.frozen
class StreamedSplit(Generic[T]):
    """What :func:`scan_split` found.

    Attributes:
        rows: the training source by position.
        train: positions (file order) of the training rows that parse and pass every check.
        ranks: each kept row's index among the split's readable training rows (rows left out leave gaps).
        test: the held-out rows, parsed (not yet checked: the caller checks them like in-memory ones).
        skipped: rows skipped under ``bad_rows="skip"``: unreadable rows of every source, and training rows that
            failed a check.
        left_out: training rows a check left out without calling them bad (see :func:`scan_split`).
    """

    rows: IndexedRows[T]
    train: np.ndarray
    ranks: np.ndarray
    test: list[SourcedRow[T]]
    skipped: int
    left_out: int = 0


def _progress(total: int, label: str, stream: TextIO | None) -> tqdm[object]:
    return tqdm(
        total=total,
        desc=f"checking {label}",
        unit="row",
        unit_scale=True,
        file=stream if stream is not None else sys.stderr,
        disable=total < PROGRESS_MIN_ROWS,
        mininterval=1.0,
        leave=False,
    )


def _held_out(
    config: DataConfig, format: RowFormat[T], test_rows: Sequence[object] | None
) -> tuple[list[SourcedRow[T]], int] | None:
    if test_rows is not None:
        return collect_rows(memory_rows(test_rows, MEMORY_TEST_SOURCE, format), config.bad_rows)
    if config.test_data is not None:
        return load_source(config, format, config.test_data, config.hf_test_split, "test", "test_data")
    if config.hf_test_split is not None:
        return load_source(config, format, config.train_data, config.hf_test_split, "test", "hf_test_split")
    return None


#: One check of a row: returns whether the row is kept (``False``: left out, not bad) or raises for a bad row.
Check = Callable[[SourcedRow[T]], bool]


def _status(row: SourcedRow[T], checks: Sequence[Check[T]], fatal: tuple[type[Exception], ...]) -> int:
    for stage, check in enumerate(checks):
        try:
            if not check(row):
                return LEFT_OUT
        except fatal:
            return FATAL + stage
        except TinkerflowError:
            return FAILED + stage
    return USABLE


def _scan(
    rows: IndexedRows[T],
    checks: Sequence[Check[T]],
    fatal: tuple[type[Exception], ...],
    config: DataConfig,
    progress: TextIO | None,
) -> np.ndarray:
    status = np.full(len(rows), UNREADABLE, dtype=np.uint8)
    with _progress(len(rows), config.train_data, progress) as bar:
        for index in range(len(rows)):
            if index % 1024 == 1023:
                bar.update(1024)
            try:
                value = rows.parse(index)
            except ChatFormatError:
                if config.bad_rows == "raise":
                    raise
                continue
            status[index] = _status(SourcedRow(rows.where(index), value), checks, fatal)
    return status


def scan_split(
    config: DataConfig,
    format: RowFormat[T],
    checks: Sequence[Check[T]],
    *,
    fatal: tuple[type[Exception], ...] = (),
    test_rows: Sequence[object] | None = None,
    progress: TextIO | None = None,
) -> StreamedSplit[T]:
    """Check every row of ``config.train_data`` once and split off the held-out rows (see the module docstring).

    Each of ``checks`` returns ``True`` to keep a row, ``False`` to leave it out (counted in ``left_out``), or
    raises a :class:`~tinkerflow.errors.TinkerflowError` for a bad row (raised, or skipped and counted, as
    ``config.bad_rows`` says; an error of a ``fatal`` class is raised under either policy). Held-out rows are
    ``test_rows`` (given in code), else ``config.test_data``, else the ``hf_test_split`` of an HF ``train_data``,
    else a seeded ``test_fraction`` split of the readable training rows.

    The error raised is the one the in-memory path raises (which checks in stages, each over every row): the
    first unreadable row of the training source, then of the held-out source; then, stage by stage, the first
    training row that fails it. Errors of held-out rows are the caller's, when it checks ``test``.
    """
    rows = open_rows(config, format, config.train_data, config.hf_split, "train", "train_data")
    status = _scan(rows, checks, fatal, config, progress)
    held_out = _held_out(config, format, test_rows)
    readable = np.flatnonzero(status != UNREADABLE)
    if held_out is None:
        train_index, test_index = split_indices(len(readable), config.test_fraction, config.seed)
        train = readable[train_index]
        test = [SourcedRow(rows.where(int(p)), rows.parse(int(p))) for p in readable[test_index]]
        held_out_skipped = 0
    else:
        train, (test, held_out_skipped) = readable, held_out
    train_status = status[train]
    for stage in range(len(checks)):
        due = (train_status == FATAL + stage) | ((train_status == FAILED + stage) & (config.bad_rows == "raise"))
        if due.any():
            position = int(train[np.argmax(due)])
            _status_error(SourcedRow(rows.where(position), rows.parse(position)), checks)
    kept = np.flatnonzero(train_status == USABLE)
    failed = int(((train_status >= FAILED) & (train_status < FATAL)).sum())
    skipped = int(len(rows) - len(readable)) + held_out_skipped + failed
    left_out = int((train_status == LEFT_OUT).sum())
    return StreamedSplit(rows=rows, train=train[kept], ranks=kept, test=test, skipped=skipped, left_out=left_out)


def _status_error(row: SourcedRow[T], checks: Sequence[Check[T]]) -> None:
    """Run the checks of a row that failed one again, to raise its error."""
    for check in checks:
        if not check(row):
            return
    raise DataError(
        row.where,
        "row",
        "failed its check when the data was scanned but passes now: the data changed on disk.",
        "do not edit a data file while a run reads it.",
    )


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


class StreamedPairs(Generic[D]):
    """Comparisons read from their file when used: ``chosen[i]`` and ``rejected[i]`` are the two items of pair
    ``i`` (made once for both: the last :data:`PAIR_CACHE` pairs read are kept), ``indices`` the rows' ranks
    among the readable training rows (as :class:`~tinkerflow.preference.pairs.DPOPairs` has them)."""

    def __init__(self, pairs: StreamedRows[tuple[D, D]], ranks: np.ndarray) -> None:
        self._pairs = pairs
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
        value = self._pairs[index]
        self._cache[index] = value
        if len(self._cache) > PAIR_CACHE:
            self._cache.popitem(last=False)
        return value

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


def streamed(split: StreamedSplit[T], make: Callable[[SourcedRow[T]], D]) -> StreamedRows[D]:
    """The training items of ``split``, each made by ``make`` when it is read."""
    return StreamedRows(split.rows, split.train, make)
