"""DPO data, pure: labeled comparisons -> checked pairs of datums under the tie and bad-row policies.

:func:`dpo_data` turns the rows a source gave (:class:`tinkerflow.rows.SplitRows`) into the pairs the DPO loop
trains and evaluates on: ties raise (naming the row) or are dropped and counted, each comparison is rendered to a
chosen and a rejected datum (0/1 weights on the completion), and a side longer than ``max_length`` makes its pair a
bad row: comparisons are never cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs

from tinkerflow.chat_format import SourcedRow
from tinkerflow.datum import Datum
from tinkerflow.errors import TinkerflowError, ValidationError
from tinkerflow.preference.config import DPOConfig
from tinkerflow.preference.pairs import DPOPairs, comparison_datums, dpo_pairs
from tinkerflow.preference.records import LabeledComparison, TieError, no_preference
from tinkerflow.render import Renderer
from tinkerflow.rows import DataError, SplitRows

__all__ = [
    "DPOData",
    "Pairs",
    "checked_pair",
    "checked_pairs",
    "dpo_data",
    "dpo_data_of",
    "pair_outcomes",
    "pair_precheck",
    "too_long",
]


class Pairs(Protocol):
    """Chosen and rejected datums per comparison: a :class:`~tinkerflow.preference.pairs.DPOPairs`, or pairs read
    from their file when used (``tinkerflow.shell.io.streaming``)."""

    @property
    def chosen(self) -> Sequence[Datum]: ...
    @property
    def rejected(self) -> Sequence[Datum]: ...
    @property
    def indices(self) -> Sequence[int]: ...
    def __len__(self) -> int: ...
    def interleaved(self) -> Sequence[Datum]: ...


@attrs.frozen
class DPOData:
    """The pairs the loop trains and evaluates on, prepared up front (pure data).

    Attributes:
        train / test: chosen and rejected datums per comparison; ``indices`` are positions in the source's
            readable rows (ties and bad rows leave gaps). Training pairs streamed from a file are rendered when
            they are read.
        skipped_rows: bad rows skipped under ``bad_rows="skip"`` (unreadable, unrenderable, too long).
        dropped_ties: tied comparisons left out under ``ties="drop"``.
    """

    train: Pairs
    test: DPOPairs
    skipped_rows: int = 0
    dropped_ties: int = 0


def too_long(pair: tuple[Datum, Datum], where: str, max_length: int) -> None:
    """Raise :class:`~tinkerflow.rows.DataError` when a side of ``pair`` renders to more than ``max_length``
    tokens."""
    longest = max(datum.length + 1 for datum in pair)  # a datum holds the sequence shifted by one
    if longest > max_length:
        raise DataError(
            where,
            "completion",
            f"renders to {longest} tokens (prompt + completion), more than max_length={max_length}.",
            "raise max_length, shorten the row, or set bad_rows=skip (DPO never cuts a comparison).",
        )


def pair_precheck(row: SourcedRow[LabeledComparison], config: DPOConfig) -> bool:
    """The first check of a comparison: ``False`` for a tie left out (``ties="drop"``), else ``True``.

    Raises:
        TieError: a tie with ``ties="raise"``, naming the row (no bad-row policy skips it).
        DataError: a pair that expresses no preference (an empty completion, two identical ones: rows given in code
            as records), naming the row.
    """
    if row.value.is_tie:
        if config.ties == "raise":
            raise TieError(
                row.where,
                "label",
                "is 'tie': a tied comparison has no chosen and rejected completion.",
                "set ties=drop to leave ties out (they are counted), or relabel the row.",
            )
        return False
    problem = no_preference(row.value.comparison)
    if problem is not None:
        raise DataError(row.where, *problem)
    return True


def checked_pair(row: SourcedRow[LabeledComparison], renderer: Renderer, config: DPOConfig) -> tuple[Datum, Datum]:
    """The second check of a comparison: its chosen and rejected datums, no side longer than ``max_length``.

    Raises:
        DataError: the row cannot be weighted as ``train_on`` says, or a side is too long, naming the row.
        RenderError: the renderer cannot write a message.
    """
    try:
        pair = comparison_datums(row.value, renderer, train_on=config.train_on)
    except ValidationError as error:
        raise DataError(row.where, error.field, f"{error.problem} (in {error.where})", error.fix) from error
    too_long(pair, row.where, config.max_length)
    return pair


def pair_outcomes(
    rows: Sequence[SourcedRow[LabeledComparison]], renderer: Renderer, config: DPOConfig
) -> list[tuple[Datum, Datum] | TinkerflowError]:
    """:func:`checked_pair` of each comparison (none a tie), the error in its place where it raises; rendered in
    one batched call (:func:`~tinkerflow.preference.pairs.dpo_pairs`), and one by one, to tell which fails, when
    that call raises."""
    rendered: list[tuple[Datum, Datum]] | None = None
    if len(rows) > 1:
        try:
            batch = dpo_pairs([row.value for row in rows], renderer, ties="raise", train_on=config.train_on)
            rendered = list(zip(batch.chosen, batch.rejected, strict=True))
        except TinkerflowError:
            rendered = None
    outcomes: list[tuple[Datum, Datum] | TinkerflowError] = []
    for index, row in enumerate(rows):
        try:
            if rendered is None:
                outcomes.append(checked_pair(row, renderer, config))
            else:
                too_long(rendered[index], row.where, config.max_length)
                outcomes.append(rendered[index])
        except TinkerflowError as error:
            outcomes.append(error)
    return outcomes


def checked_pairs(
    rows: Sequence[SourcedRow[LabeledComparison]], renderer: Renderer, config: DPOConfig
) -> tuple[DPOPairs, int, int]:
    """:func:`pair_precheck` of every row (ties handled, pairs without a preference made bad rows), then the kept
    comparisons rendered and their lengths checked (:func:`pair_outcomes`). Returns the pairs, bad rows skipped and
    ties dropped."""
    kept: list[tuple[int, SourcedRow[LabeledComparison]]] = []
    ties = 0
    bad = 0
    for position, row in enumerate(rows):
        try:
            if pair_precheck(row, config):
                kept.append((position, row))
            else:
                ties += 1
        except TieError:
            raise
        except TinkerflowError:
            if config.bad_rows == "raise":
                raise
            bad += 1
    chosen: list[Datum] = []
    rejected: list[Datum] = []
    indices: list[int] = []
    for (position, _), outcome in zip(kept, pair_outcomes([row for _, row in kept], renderer, config), strict=True):
        if isinstance(outcome, TinkerflowError):
            if config.bad_rows == "raise":
                raise outcome
            bad += 1
            continue
        chosen.append(outcome[0])
        rejected.append(outcome[1])
        indices.append(position)
    return DPOPairs(chosen=chosen, rejected=rejected, indices=indices), bad, ties


def dpo_data(rows: SplitRows[LabeledComparison], renderer: Renderer, config: DPOConfig) -> DPOData:
    """:class:`DPOData` of the rows a source gave (see the module docstring).

    Raises:
        TieError: a tie with ``ties="raise"``, naming the row.
        DataError: a row that cannot be rendered or is too long (``bad_rows="raise"``), or no training pair at all.
    """
    train, bad_train, ties_train = checked_pairs(rows.train, renderer, config)
    return dpo_data_of(
        train, rows.test, renderer, config, skipped=rows.skipped + bad_train, ties=ties_train, source=rows.train_source
    )


def dpo_data_of(
    train: Pairs,
    test_rows: Sequence[SourcedRow[LabeledComparison]],
    renderer: Renderer,
    config: DPOConfig,
    *,
    skipped: int,
    ties: int,
    source: str,
) -> DPOData:
    """:class:`DPOData` of training pairs already checked and the held-out rows; ``skipped`` and ``ties`` count
    the bad rows and the dropped ties so far.

    Raises:
        TieError / DataError: a bad held-out row (as in :func:`dpo_data`), or no training pair at all.
    """
    test, bad_test, ties_test = checked_pairs(test_rows, renderer, config)
    if len(train) == 0:
        raise DataError(source, "rows", "no usable training comparison.", "check the data, bad_rows and ties settings.")
    return DPOData(train=train, test=test, skipped_rows=skipped + bad_test, dropped_ties=ties + ties_test)
