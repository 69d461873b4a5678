"""The check pass of a streamed dataset (shell): every row checked once, the held-out rows split off.

:func:`scan_split` reads a file source (JSONL, ``hf:``, ``hf-disk:``) chunk by chunk, parses each row and runs the
recipe's checks on the chunk (render it, measure it: one batched call per chunk), keeping one status byte per row;
then it splits the rows as the in-memory loader does (:func:`tinkerflow.shell.io.data.load_split`:
``test_data``, the ``hf_test_split``, or the seeded ``test_fraction`` split of the readable rows). What it keeps
is the positions of the good training rows (8 bytes each), the line index of a JSONL file (24 bytes a line) and
the held-out rows, which evaluation reads every time anyway. The errors are the in-memory loader's, in its order.
:mod:`tinkerflow.shell.io.streaming` then reads the chosen rows again when a batch needs them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Generic, TextIO, TypeVar

import attrs
import numpy as np
from tqdm import tqdm

from tinkerflow.chat_format import ChatFormatError, SourcedRow, collect_rows
from tinkerflow.config import DataConfig
from tinkerflow.errors import TinkerflowError
from tinkerflow.rows import MEMORY_TEST_SOURCE, DataError
from tinkerflow.shell.io.data import RowFormat, load_source, memory_rows
from tinkerflow.shell.io.streaming import ITER_CHUNK, IndexedRows, StreamedRows, one_by_one, open_rows
from tinkerflow.supervised import split_indices

__all__ = ["Check", "StreamedSplit", "passes", "per_row", "scan_split", "streamed"]

T = TypeVar("T")
D = TypeVar("D")

#: Rows at least this many get a progress bar while they are checked.
PROGRESS_MIN_ROWS = 20_000

#: What the check of one row found (one byte per row): usable, unreadable, left out without being bad (a tie
#: dropped under ``ties="drop"``), or failed at check stage ``s`` (``FAILED + s``: a bad row; ``FATAL + s``: an
#: error no bad-row policy skips).
USABLE, UNREADABLE, LEFT_OUT, FAILED, FATAL = 0, 1, 2, 8, 64

#: One check of a chunk of rows: per row, ``True`` to keep it, ``False`` to leave it out (not a bad row), or the
#: error that makes it a bad row.
Check = Callable[[Sequence[SourcedRow[T]]], Sequence["bool | TinkerflowError"]]


def per_row(
    check: Callable[[SourcedRow[T]], bool],
) -> Callable[[Sequence[SourcedRow[T]]], list[bool | TinkerflowError]]:
    """A :data:`Check` of a function that checks one row (returns keep / leave out, raises for a bad row)."""
    return one_by_one(check)


def passes(make_many: Callable[[Sequence[SourcedRow[T]]], Sequence[object]]) -> Check[T]:
    """A :data:`Check` that keeps the rows ``make_many`` makes an item of (the others are bad rows)."""

    def check(rows: Sequence[SourcedRow[T]]) -> list[bool | TinkerflowError]:
        return [outcome if isinstance(outcome, TinkerflowError) else True for outcome in make_many(rows)]

    return check


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


def _scan(
    rows: IndexedRows[T],
    checks: Sequence[Check[T]],
    fatal: tuple[type[Exception], ...],
    config: DataConfig,
    progress: TextIO | None,
) -> np.ndarray:
    status = np.full(len(rows), UNREADABLE, dtype=np.uint8)
    with _progress(len(rows), config.train_data, progress) as bar:
        for start in range(0, len(rows), ITER_CHUNK):
            stop = min(len(rows), start + ITER_CHUNK)
            alive: list[tuple[int, SourcedRow[T]]] = []
            for index in range(start, stop):
                try:
                    alive.append((index, SourcedRow(rows.where(index), rows.parse(index))))
                except ChatFormatError:
                    if config.bad_rows == "raise":
                        raise
            for stage, check in enumerate(checks):
                kept: list[tuple[int, SourcedRow[T]]] = []
                for (index, row), outcome in zip(alive, check([row for _, row in alive]), strict=True):
                    if outcome is True:
                        kept.append((index, row))
                    elif outcome is False:
                        status[index] = LEFT_OUT
                    else:
                        status[index] = (FATAL if isinstance(outcome, fatal) else FAILED) + stage
                alive = kept
            for index, _ in alive:
                status[index] = USABLE
            bar.update(stop - start)
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
        (outcome,) = check([row])
        if isinstance(outcome, TinkerflowError):
            raise outcome
        if not outcome:
            return
    raise DataError(
        row.where,
        "row",
        "failed its check when the data was scanned but passes now: the data changed on disk.",
        "do not edit a data file while a run reads it.",
    )


def streamed(
    split: StreamedSplit[T],
    make_many: Callable[[Sequence[SourcedRow[T]]], Sequence[D | TinkerflowError]],
    *,
    item_type: object = object,
    name: str = "items",
) -> StreamedRows[D]:
    """The training items of ``split``, made by ``make_many`` (one outcome per row) when they are read."""
    return StreamedRows(split.rows, split.train, make_many, item_type=item_type, name=name)
