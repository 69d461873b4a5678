"""Rows of data sources, the pure part: the error a bad source or row raises, row naming, and the held-out split.

Reading files and Hugging Face datasets is the shell's (:mod:`tinkerflow.shell.io.data`); what is decided about
rows once they are read (which are held out, how bad rows are counted) lives here so SL and DPO share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Generic, TypeVar

import attrs

from tinkerflow.chat_format import SourcedRow
from tinkerflow.errors import ValidationError
from tinkerflow.supervised import split_indices

__all__ = ["MEMORY_SOURCE", "MEMORY_TEST_SOURCE", "DataError", "SplitRows", "split_rows"]

T = TypeVar("T")

#: Where rows given in code are said to come from (``<memory>[3]``; held-out rows ``<memory:test>[3]``).
MEMORY_SOURCE: Final = "<memory>"
MEMORY_TEST_SOURCE: Final = "<memory:test>"


class DataError(ValidationError):
    """A data source or row that cannot be used; ``where`` names the source and row."""


@attrs.frozen
class SplitRows(Generic[T]):
    """The rows a loop trains and evaluates on, with where the training rows came from.

    Attributes:
        train: the training rows, each with its source and position.
        test: the held-out rows.
        skipped: bad rows skipped while reading (``bad_rows="skip"``), both parts together.
        train_source: the training source's name (a path, ``hf:org/name`` or ``<memory>``), for errors.
    """

    train: list[SourcedRow[T]]
    test: list[SourcedRow[T]]
    skipped: int
    train_source: str


def split_rows(
    rows: Sequence[SourcedRow[T]],
    skipped: int,
    held_out: tuple[list[SourcedRow[T]], int] | None,
    *,
    test_fraction: float,
    seed: int,
    train_source: str,
) -> SplitRows[T]:
    """The held-out rows given (``held_out``: rows and their skipped count), else a seeded ``test_fraction``
    split of ``rows`` (:func:`tinkerflow.supervised.split_indices`)."""
    if held_out is not None:
        return SplitRows(list(rows), held_out[0], skipped + held_out[1], train_source)
    train_index, test_index = split_indices(len(rows), test_fraction, seed)
    return SplitRows([rows[i] for i in train_index], [rows[i] for i in test_index], skipped, train_source)
