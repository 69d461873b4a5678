"""Supervised data, pure: conversations -> checked datums, the held-out byte count and the prompts shown.

:func:`sl_data` turns the rows a source gave (:class:`tinkerflow.rows.SplitRows`) into what the SL loop
trains and evaluates on: each conversation rendered with :func:`tinkerflow.render.build_supervised_example`,
too-long or unrenderable rows raised or counted under the bad-row policy, the held-out text's UTF-8 bytes (for
bits per byte) and the held-out prompts whose answers are shown before and after training.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from tinkerflow.chat import Conversation
from tinkerflow.chat_format import SourcedRow
from tinkerflow.config import SLConfig
from tinkerflow.datum import Datum
from tinkerflow.errors import TinkerflowError
from tinkerflow.render import Renderer, SupervisedExample, build_supervised_batch, build_supervised_example
from tinkerflow.render.packing import BatchPacker, packed_batches
from tinkerflow.rows import DataError, SplitRows
from tinkerflow.supervised import supervised_datum

__all__ = [
    "SLData",
    "checked_datum",
    "checked_datums",
    "datum_outcomes",
    "shown_prompts",
    "sl_data",
    "sl_data_of",
    "text_bytes",
]


@attrs.frozen
class SLData:
    """Everything the SL loop trains and evaluates on, prepared up front (pure data).

    Attributes:
        train: the training datums: a tuple, or (rows streamed from a file) a sequence that renders each datum
            when it is read, so the data is never held in memory.
        test: the held-out datums.
        test_bytes: UTF-8 bytes of the held-out trained text (the denominator of bits per byte).
        prompts: held-out prompts (a conversation without its last assistant message) and that message's text.
        skipped_rows: bad rows skipped under ``bad_rows="skip"``.
        test_conversations: the held-out conversations of ``test``, in order (the ``evals`` with ``data: null``).
    """

    train: Sequence[Datum]
    test: tuple[Datum, ...]
    test_bytes: int
    prompts: tuple[tuple[Conversation, str], ...]
    skipped_rows: int
    test_conversations: tuple[Conversation, ...] = ()


def checked_datum(row: SourcedRow[Conversation], renderer: Renderer, config: SLConfig) -> Datum:
    """``row`` rendered to a datum (``config.train_on``, ``config.reduction``).

    Raises:
        DataError: the row renders to more than ``config.max_length`` tokens, or has no token to train on (no
            weight > 0: e.g. no assistant message), naming the row.
        TinkerflowError: the renderer refuses the conversation.
    """
    return _datum_of(row, build_supervised_example(renderer, row.value, config.train_on), config)


def _datum_of(row: SourcedRow[Conversation], example: SupervisedExample, config: SLConfig) -> Datum:
    if example.model_input.length > config.max_length:
        raise DataError(
            row.where,
            "messages",
            f"renders to {example.model_input.length} tokens, more than max_length={config.max_length}.",
            "raise max_length, shorten the row, or set bad_rows=skip.",
        )
    datum = supervised_datum(example.model_input, example.weights_T, reduction=config.reduction)
    if datum.weights_T is None or not bool((datum.weights_T > 0).any()):
        raise DataError(
            row.where,
            "messages",
            f"has nothing to train on: no token carries weight under train_on={config.train_on!r} (e.g. the "
            "row has no assistant message).",
            "add the assistant reply, choose another train_on, or set bad_rows=skip to leave such rows out.",
        )
    return datum


def datum_outcomes(
    rows: Sequence[SourcedRow[Conversation]],
    renderer: Renderer,
    config: SLConfig,
    *,
    packer: BatchPacker = packed_batches,
) -> list[Datum | TinkerflowError]:
    """:func:`checked_datum` of each row, the error in its place where it raises; the rows are rendered in one
    batched call (:func:`tinkerflow.render.build_supervised_batch` with ``packer``: same tokens, much faster),
    and one by one, to tell which fails, when that call raises."""
    examples: Sequence[SupervisedExample] | None = None
    if len(rows) > 1:
        try:
            examples = build_supervised_batch(renderer, [row.value for row in rows], config.train_on, packer=packer)
        except TinkerflowError:
            examples = None
    outcomes: list[Datum | TinkerflowError] = []
    for index, row in enumerate(rows):
        try:
            if examples is None:
                outcomes.append(checked_datum(row, renderer, config))
            else:
                outcomes.append(_datum_of(row, examples[index], config))
        except TinkerflowError as error:
            outcomes.append(error)
    return outcomes


def checked_datums(
    rows: Sequence[SourcedRow[Conversation]],
    renderer: Renderer,
    config: SLConfig,
    *,
    packer: BatchPacker = packed_batches,
) -> tuple[list[Datum], list[Conversation], int]:
    """Each row rendered by :func:`checked_datum` (:func:`datum_outcomes`, with ``packer``); a row it refuses raises
    (``bad_rows="raise"``) or is counted. Returns the datums, the conversations kept and the number of bad rows."""
    datums: list[Datum] = []
    kept: list[Conversation] = []
    skipped = 0
    for row, outcome in zip(rows, datum_outcomes(rows, renderer, config, packer=packer), strict=True):
        if isinstance(outcome, TinkerflowError):
            if config.bad_rows == "raise":
                raise outcome
            skipped += 1
        else:
            datums.append(outcome)
            kept.append(row.value)
    return datums, kept, skipped


def text_bytes(renderer: Renderer, tokens_T: np.ndarray) -> int:
    """UTF-8 bytes of the text of ``tokens_T``, the tokenizer's added (special) tokens left out."""
    special = np.fromiter(renderer.tokenizer.added_tokens.values(), dtype=np.int64)
    plain = tokens_T[~np.isin(tokens_T, special)]
    return len(renderer.tokenizer.decode(plain).encode("utf-8"))


def shown_prompts(conversations: Sequence[Conversation], limit: int) -> tuple[tuple[Conversation, str], ...]:
    """The first ``limit`` conversations that end in an assistant message after something else, as (the
    conversation without that message, its text)."""
    prompts: list[tuple[Conversation, str]] = []
    for conversation in conversations:
        if len(prompts) >= limit:
            break
        last = conversation.messages[-1]
        if last.role == "assistant" and len(conversation.messages) > 1:
            prompts.append((Conversation(messages=conversation.messages[:-1], tools=conversation.tools), last.text()))
    return tuple(prompts)


def sl_data(
    rows: SplitRows[Conversation], renderer: Renderer, config: SLConfig, *, packer: BatchPacker = packed_batches
) -> SLData:
    """:class:`SLData` of the rows a source gave (see the module docstring); ``packer`` as for
    :func:`tinkerflow.render.build_supervised_batch` (the shell passes its overlapped one).

    Raises:
        DataError: a bad row under ``bad_rows="raise"``, or no usable training conversation at all (every row was
            bad or had nothing to train on): before any training work.
    """
    train, _, bad_train = checked_datums(rows.train, renderer, config, packer=packer)
    skipped = rows.skipped + bad_train
    return sl_data_of(train, rows.test, renderer, config, skipped=skipped, source=rows.train_source, packer=packer)


def sl_data_of(
    train: Sequence[Datum],
    test_rows: Sequence[SourcedRow[Conversation]],
    renderer: Renderer,
    config: SLConfig,
    *,
    skipped: int,
    source: str,
    packer: BatchPacker = packed_batches,
) -> SLData:
    """:class:`SLData` of training datums already checked (a tuple, or a sequence that renders them when read:
    the streamed rows of a file) and the held-out rows (rendered with ``packer``); ``skipped`` counts the bad rows
    so far.

    Raises:
        DataError: a bad held-out row under ``bad_rows="raise"``, or no training datum at all.
    """
    test, test_kept, bad_test = checked_datums(test_rows, renderer, config, packer=packer)
    if not len(train):
        raise DataError(
            source,
            "rows",
            f"no usable training conversation: {skipped} bad rows were skipped (unreadable, longer than "
            "max_length, or with no token to train on).",
            "check the data, train_on and bad_rows.",
        )
    test_bytes = sum(
        text_bytes(renderer, datum.target_tokens_T[datum.weights_T > 0])
        for datum in test
        if datum.weights_T is not None
    )
    return SLData(
        train=train if not isinstance(train, list) else tuple(train),
        test=tuple(test),
        test_bytes=test_bytes,
        prompts=shown_prompts(test_kept, config.num_samples_shown),
        skipped_rows=skipped + bad_test,
        test_conversations=tuple(test_kept),
    )
