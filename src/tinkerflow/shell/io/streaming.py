"""Datasets larger than memory (shell): rows stay in their file and are read when a batch needs them.

A file source (JSONL, ``hf:``, ``hf-disk:``) is read twice, never held:

1. :func:`scan_split` checks every row once, in file order, under the config's bad-row policy (parse it, then
   ``check`` it: render it, measure it), keeping two booleans per row; then it splits the rows exactly as the
   in-memory loader does (:func:`tinkerflow.shell.io.data.load_split`: ``test_data``, the ``hf_test_split``, or
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

import os
import pathlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, Protocol, TextIO, TypeVar, overload

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
    "HFRows",
    "IndexedRows",
    "JsonlRows",
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
        self._path = pathlib.Path(path)
        if not self._path.is_file():
            raise DataError(
                str(self._path), "path", "does not exist or is not a file.", "check the data path in the config."
            )
        self._starts, self._ends, self._numbers = index_lines(self._path)
        self._parse_line = parse_line
        self._fd: int | None = None

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


@attrs.frozen
class StreamedSplit(Generic[T]):
    """What :func:`scan_split` found.

    Attributes:
        rows: the training source by position.
        train: positions (file order) of the training rows that parse and pass the check.
        test: the held-out rows, parsed (not yet checked: the caller checks them like in-memory ones).
        skipped: rows skipped under ``bad_rows="skip"``: unreadable rows of every source, and training rows that
            failed the check.
    """

    rows: IndexedRows[T]
    train: np.ndarray
    test: list[SourcedRow[T]]
    skipped: int


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


def scan_split(
    config: DataConfig,
    format: RowFormat[T],
    check: Callable[[SourcedRow[T]], object],
    *,
    test_rows: Sequence[object] | None = None,
    progress: TextIO | None = None,
) -> StreamedSplit[T]:
    """Check every row of ``config.train_data`` once and split off the held-out rows (see the module docstring).

    ``check(row)`` raises a :class:`~tinkerflow.errors.TinkerflowError` for a row the loop cannot use. Held-out
    rows are ``test_rows`` (given in code), else ``config.test_data``, else the ``hf_test_split`` of an HF
    ``train_data``, else a seeded ``test_fraction`` split of the readable training rows. With
    ``bad_rows="raise"`` the error raised is the one the in-memory path raises: the first unreadable row of the
    training source, then of the held-out source, then the first training row that fails ``check``.
    """
    rows = open_rows(config, format, config.train_data, config.hf_split, "train", "train_data")
    count = len(rows)
    readable = np.zeros(count, dtype=bool)
    good = np.zeros(count, dtype=bool)
    pending: tuple[int, TinkerflowError] | None = None
    with _progress(count, config.train_data, progress) as bar:
        for index in range(count):
            if index % 1024 == 1023:
                bar.update(1024)
            try:
                value = rows.parse(index)
            except ChatFormatError:
                if config.bad_rows == "raise":
                    raise
                continue
            readable[index] = True
            if pending is not None:
                continue  # an error is due; only unreadable rows could come before it
            try:
                check(SourcedRow(rows.where(index), value))
                good[index] = True
            except TinkerflowError as error:
                if config.bad_rows == "raise":
                    pending = (index, error)
    held_out = _held_out(config, format, test_rows)
    readable_positions = np.flatnonzero(readable)
    if held_out is None:
        train_index, test_index = split_indices(len(readable_positions), config.test_fraction, config.seed)
        train = readable_positions[train_index]
        test = [SourcedRow(rows.where(int(p)), rows.parse(int(p))) for p in readable_positions[test_index]]
        held_out_skipped = 0
    else:
        train, (test, held_out_skipped) = readable_positions, held_out
    if pending is not None:
        failed, due = pending
        if bool(np.isin(failed, train)):
            raise due
        for position in train[train > failed]:  # the failing row is held out: check the training rows first
            check(SourcedRow(rows.where(int(position)), rows.parse(int(position))))
            good[position] = True
    kept = train[good[train]]
    skipped = int(count - len(readable_positions)) + held_out_skipped + int(len(train) - len(kept))
    return StreamedSplit(rows=rows, train=kept, test=test, skipped=skipped)


def streamed(split: StreamedSplit[T], make: Callable[[SourcedRow[T]], D]) -> StreamedRows[D]:
    """The training items of ``split``, each made by ``make`` when it is read."""
    return StreamedRows(split.rows, split.train, make)
