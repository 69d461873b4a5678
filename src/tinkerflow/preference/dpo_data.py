"""DPO data, pure: labeled comparisons -> checked pairs of datums under the tie and bad-row policies.

:func:`dpo_data` turns the rows a source gave (:class:`tinkerflow.rows.SplitRows`) into the pairs the DPO loop
trains and evaluates on: ties raise (naming the row) or are dropped and counted, each comparison is rendered to a
chosen and a rejected datum (0/1 weights on the completion), and a side longer than ``max_length`` makes its pair a
bad row: comparisons are never cut.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from tinkerflow.chat_format import SourcedRow
from tinkerflow.datum import Datum
from tinkerflow.errors import TinkerflowError, ValidationError
from tinkerflow.preference.config import DPOConfig
from tinkerflow.preference.pairs import DPOPairs, comparison_datums, dpo_pairs
from tinkerflow.preference.records import LabeledComparison, TieError, no_preference
from tinkerflow.render import Renderer
from tinkerflow.rows import DataError, SplitRows

__all__ = ["DPOData", "checked_pairs", "dpo_data", "too_long"]


@attrs.frozen
class DPOData:
    """The pairs the loop trains and evaluates on, prepared up front (pure data).

    Attributes:
        train / test: chosen and rejected datums per comparison; ``indices`` are positions in the source's
            readable rows (ties and bad rows leave gaps).
        skipped_rows: bad rows skipped under ``bad_rows="skip"`` (unreadable, unrenderable, too long).
        dropped_ties: tied comparisons left out under ``ties="drop"``.
    """

    train: DPOPairs
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


def checked_pairs(
    rows: Sequence[SourcedRow[LabeledComparison]], renderer: Renderer, config: DPOConfig
) -> tuple[DPOPairs, int, int]:
    """Ties handled, pairs that express no preference (an empty completion, two identical ones: rows given in code
    as records) made bad rows, comparisons rendered (one batched call; a failure is retried row by row to name the
    row), lengths checked. Returns the pairs, bad rows skipped and ties dropped."""
    kept: list[tuple[int, SourcedRow[LabeledComparison]]] = []
    ties = 0
    bad = 0
    for position, row in enumerate(rows):
        if not row.value.is_tie:
            problem = no_preference(row.value.comparison)
            if problem is None:
                kept.append((position, row))
            elif config.bad_rows == "raise":
                raise DataError(row.where, *problem)
            else:
                bad += 1
        elif config.ties == "raise":
            raise TieError(
                row.where,
                "label",
                "is 'tie': a tied comparison has no chosen and rejected completion.",
                "set ties=drop to leave ties out (they are counted), or relabel the row.",
            )
        else:
            ties += 1
    rendered: list[tuple[Datum, Datum]] | None = None
    if kept:
        try:
            batch = dpo_pairs([row.value for _, row in kept], renderer, ties="raise", train_on=config.train_on)
            rendered = list(zip(batch.chosen, batch.rejected, strict=True))
        except TinkerflowError:
            rendered = None  # some row fails: render one by one below, to name it (or skip it)
    chosen: list[Datum] = []
    rejected: list[Datum] = []
    indices: list[int] = []
    for number, (position, row) in enumerate(kept):
        try:
            if rendered is not None:
                pair = rendered[number]
            else:
                try:
                    pair = comparison_datums(row.value, renderer, train_on=config.train_on)
                except ValidationError as error:
                    raise DataError(row.where, error.field, f"{error.problem} (in {error.where})", error.fix) from error
            too_long(pair, row.where, config.max_length)
        except TinkerflowError:
            if config.bad_rows == "raise":
                raise
            bad += 1
            continue
        chosen.append(pair[0])
        rejected.append(pair[1])
        indices.append(position)
    return DPOPairs(chosen=chosen, rejected=rejected, indices=indices), bad, ties


def dpo_data(rows: SplitRows[LabeledComparison], renderer: Renderer, config: DPOConfig) -> DPOData:
    """:class:`DPOData` of the rows a source gave (see the module docstring).

    Raises:
        TieError: a tie with ``ties="raise"``, naming the row.
        DataError: a row that cannot be rendered or is too long (``bad_rows="raise"``), or no training pair at all.
    """
    train, bad_train, ties_train = checked_pairs(rows.train, renderer, config)
    test, bad_test, ties_test = checked_pairs(rows.test, renderer, config)
    if len(train) == 0:
        raise DataError(
            rows.train_source, "rows", "no usable training comparison.", "check the data, bad_rows and ties settings."
        )
    return DPOData(
        train=train, test=test, skipped_rows=rows.skipped + bad_train + bad_test, dropped_ties=ties_train + ties_test
    )
