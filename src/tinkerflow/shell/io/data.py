"""The one data-source loader (shell): JSONL files, rows given in code, and Hugging Face datasets.

A source is named like a config's ``train_data``: a JSONL path, ``hf:org/name`` (``datasets.load_dataset``) or
``hf-disk:/path`` (``datasets.load_from_disk``; the ``datasets`` package is imported only then); rows given in
code are a sequence of records or row dicts. Every kind goes through one bad-row policy
(:func:`tinkerflow.chat_format.collect_rows`) and names each row the same way: ``file:line``, ``<memory>[i]``,
``hf:org/name[split][row]``. What a row *means* is a :class:`RowFormat` of pure parsers from the core (chat
conversations, preference comparisons); :func:`load_split` adds the held-out rows the config asks for (its
``test_data``, the ``hf_test_split`` of an HF ``train_data``, or a seeded ``test_fraction`` split).
"""

from __future__ import annotations

import functools
import importlib
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import Generic, Protocol, TypeVar, cast

import attrs

from tinkerflow.chat import Conversation
from tinkerflow.chat_format import (
    ChatFormatError,
    SourcedRow,
    chat_row_from_json,
    collect_rows,
    conversation_from_json,
    parse_chat_line,
)
from tinkerflow.config import HF_DISK_PREFIX, HF_PREFIX, BadRowPolicy, DataConfig, is_hf_source
from tinkerflow.errors import ConfigError
from tinkerflow.preference.data import (
    PREFERENCE_KEYS,
    PreferenceLayout,
    labeled_comparison_from_json,
    parse_preference_line,
    preference_row_from_hf,
    preference_rows_from_hf,
)
from tinkerflow.preference.records import LabeledComparison
from tinkerflow.rows import MEMORY_SOURCE, MEMORY_TEST_SOURCE, DataError, SplitRows, split_rows

__all__ = [
    "DataError",
    "HFDataset",
    "RowFormat",
    "chat_format",
    "hf_rows",
    "jsonl_rows",
    "load_chat_hf",
    "load_chat_jsonl",
    "load_preference_hf",
    "load_preference_jsonl",
    "load_source",
    "load_split",
    "memory_rows",
    "open_hf_dataset",
    "parse_chat_rows",
    "preference_format",
]

T = TypeVar("T")
#: Rows as ``(where, parse)``: the row's name and a thunk that parses it (raising ``ChatFormatError`` if bad).
Rows = Iterator[tuple[str, Callable[[], T]]]


class HFDataset(Protocol):
    """The part of ``datasets.Dataset`` the loader uses."""

    @property
    def column_names(self) -> list[str]: ...
    def select_columns(self, column_names: list[str]) -> HFDataset: ...
    def __iter__(self) -> Iterator[Mapping[str, object]]: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> Mapping[str, object]: ...


@attrs.frozen
class RowFormat(Generic[T]):
    """What one kind of row means: pure parsers of the core, for each way a row arrives.

    Attributes:
        what: the rows' plural name in errors (``conversations``, ``comparisons``).
        record: rows given in code that already are records pass through unparsed.
        parse_line: one JSONL line (bytes) and its name -> a record.
        parse_mapping: one row dict (given in code, or an HF row) and its name -> a record.
        parse_hf: one row of a Hugging Face dataset and its name -> a record (``None``: ``parse_mapping``).
        hf_columns: the columns an HF dataset's rows are read with (``None``: all); may raise a
            :class:`~tinkerflow.rows.DataError` naming a missing column.
    """

    what: str
    record: type[T]
    parse_line: Callable[[bytes, str], T]
    parse_mapping: Callable[[Mapping[str, object], str], T]
    parse_hf: Callable[[Mapping[str, object], str], T] | None = None
    hf_columns: Callable[[str, str, list[str]], list[str]] | None = None


def jsonl_rows(path: str | pathlib.Path, parse_line: Callable[[bytes, str], T]) -> Rows[T]:
    """The non-blank lines of a JSONL file, named ``file:line``."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise DataError(str(file), "path", "does not exist or is not a file.", "check the data path in the config.")
    with open(file, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                text = line[:-1] if line.endswith(b"\n") else line  # without its newline: errors name its columns
                yield f"{file}:{number}", functools.partial(parse_line, text, f"{file}:{number}")


def _parse_given(row: object, where: str, format: RowFormat[T]) -> T:
    if isinstance(row, format.record):
        return row
    return format.parse_mapping(cast("Mapping[str, object]", row), where)


def memory_rows(rows: Sequence[object], source: str, format: RowFormat[T]) -> Rows[T]:
    """Rows given in code (records, or row dicts), named ``<memory>[i]``."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise DataError(source, "rows", f"must be a sequence of {format.what}, got {type(rows).__name__}.")
    for index, row in enumerate(rows):
        yield f"{source}[{index}]", functools.partial(_parse_given, row, f"{source}[{index}]", format)


def _import_datasets(source: str, where: str, field: str) -> ModuleType:
    try:
        return importlib.import_module("datasets")
    except ImportError as error:
        raise ConfigError(
            where,
            field,
            f"reading {source} needs the Hugging Face `datasets` package, which is not installed.",
            "pip install 'tinkerflow[hf]'.",
        ) from error


def open_hf_dataset(
    source: str, split: str | None, default_split: str, subset: str | None, field: str, *, where: str = "data"
) -> tuple[HFDataset, str]:
    """The dataset (one split: ``split``, else ``default_split`` where there are splits) ``source`` names and the
    prefix its rows are named with; ``where``/``field`` name the config field in errors."""
    datasets = _import_datasets(source, where, field)
    fix = "check the name, the split and (for hf:) network access or the HF cache."
    if source.startswith(HF_PREFIX):
        name, split = source[len(HF_PREFIX) :], split or default_split
        try:
            loaded: object = datasets.load_dataset(name, subset, split=split)
        except Exception as error:  # the hub, the cache and the builders raise many kinds of errors
            raise DataError(source, field, f"could not be loaded (split {split!r}): {error}", fix) from error
        return cast("HFDataset", loaded), f"{source}[{split}]"
    try:
        loaded = datasets.load_from_disk(source[len(HF_DISK_PREFIX) :])
    except Exception as error:
        raise DataError(
            source, field, f"could not be loaded: {error}", "give the folder save_to_disk wrote."
        ) from error
    if isinstance(loaded, datasets.DatasetDict):
        splits = cast("Mapping[str, HFDataset]", loaded)
        split = split or default_split
        if split not in splits:
            raise DataError(
                source, field, f"has no split {split!r} (it has {sorted(splits)}).", "set hf_split / hf_test_split."
            )
        return splits[split], f"{source}[{split}]"
    if split is not None:
        raise DataError(
            source,
            field,
            f"is a single dataset without splits, but split {split!r} was asked for.",
            "remove hf_split / hf_test_split, or save a DatasetDict.",
        )
    return cast("HFDataset", loaded), source


def hf_rows(
    source: str,
    split: str | None,
    format: RowFormat[T],
    *,
    default_split: str,
    subset: str | None,
    field: str,
    where: str = "data",
) -> Rows[T]:
    """The rows of a Hugging Face dataset (``hf:`` or ``hf-disk:``), named ``source[split][row]``."""
    dataset, prefix = open_hf_dataset(source, split, default_split, subset, field, where=where)
    selected = dataset
    if format.hf_columns is not None:
        selected = dataset.select_columns(format.hf_columns(source, field, dataset.column_names))
    parse = format.parse_hf if format.parse_hf is not None else format.parse_mapping
    for index, row in enumerate(selected):
        yield f"{prefix}[{index}]", functools.partial(parse, row, f"{prefix}[{index}]")


def load_source(
    config: DataConfig, format: RowFormat[T], source: str, split: str | None, default_split: str, field: str
) -> tuple[list[SourcedRow[T]], int]:
    """The rows of one source of ``config`` (JSONL or HF) under its bad-row policy, and the skipped count."""
    if is_hf_source(source):
        rows = hf_rows(
            source,
            split,
            format,
            default_split=default_split,
            subset=config.hf_subset,
            field=field,
            where=type(config).__name__,
        )
        return collect_rows(rows, config.bad_rows)
    return collect_rows(jsonl_rows(source, format.parse_line), config.bad_rows)


def load_split(
    config: DataConfig,
    format: RowFormat[T],
    *,
    train_rows: Sequence[object] | None = None,
    test_rows: Sequence[object] | None = None,
) -> SplitRows[T]:
    """The training and held-out rows of ``config`` (the module docstring says where each comes from).

    Training rows are ``train_rows`` when given (named ``<memory>[i]``), else ``config.train_data``. Held-out rows
    are ``test_rows`` (``<memory:test>[i]``), else ``config.test_data``, else the ``hf_test_split`` of an HF
    ``train_data``, else a seeded ``test_fraction`` split of the training rows.
    """
    if train_rows is not None:
        rows, skipped = collect_rows(memory_rows(train_rows, MEMORY_SOURCE, format), config.bad_rows)
        source = MEMORY_SOURCE
    else:
        rows, skipped = load_source(config, format, config.train_data, config.hf_split, "train", "train_data")
        source = config.train_data
    held_out: tuple[list[SourcedRow[T]], int] | None = None
    if test_rows is not None:
        held_out = collect_rows(memory_rows(test_rows, MEMORY_TEST_SOURCE, format), config.bad_rows)
    elif config.test_data is not None:
        held_out = load_source(config, format, config.test_data, config.hf_test_split, "test", "test_data")
    elif config.hf_test_split is not None:
        held_out = load_source(config, format, config.train_data, config.hf_test_split, "test", "hf_test_split")
    return split_rows(
        rows, skipped, held_out, test_fraction=config.test_fraction, seed=config.seed, train_source=source
    )


# -- chat conversations ----------------------------------------------------------------------------------------


def _hf_chat_row(row: Mapping[str, object], where: str, messages_field: str) -> Conversation:
    try:
        return conversation_from_json({"messages": row.get(messages_field), "tools": row.get("tools")}, where)
    except ChatFormatError as error:
        if messages_field == "messages" or not error.field.startswith("messages"):
            raise
        raise ChatFormatError(
            error.where, messages_field + error.field[len("messages") :], error.problem, error.fix
        ) from error


def _chat_columns(messages_field: str) -> Callable[[str, str, list[str]], list[str]]:
    def columns(source: str, field: str, names: list[str]) -> list[str]:
        if messages_field not in names:
            raise DataError(
                source, field, f"has no column {messages_field!r} (it has {names}).", "set hf_messages_field."
            )
        return [messages_field, *(["tools"] if "tools" in names and messages_field != "tools" else [])]

    return columns


def chat_format(messages_field: str = "messages") -> RowFormat[Conversation]:
    """Conversations in the common chat format (``{"messages": [...], "tools": [...]}``); HF rows hold the
    messages in the ``messages_field`` column (and a ``tools`` column when present)."""
    return RowFormat(
        what="conversations",
        record=Conversation,
        parse_line=parse_chat_line,
        parse_mapping=chat_row_from_json,
        parse_hf=functools.partial(_hf_chat_row, messages_field=messages_field),
        hf_columns=_chat_columns(messages_field),
    )


def load_chat_jsonl(path: str | pathlib.Path, policy: BadRowPolicy = "raise") -> tuple[list[Conversation], int]:
    """Conversations of a JSONL file and the number of skipped bad rows (``policy="skip"``).

    Blank lines are ignored. With ``policy="raise"`` the first bad row raises :class:`ChatFormatError` naming
    ``file:line`` and the field.
    """
    rows, skipped = collect_rows(jsonl_rows(path, parse_chat_line), policy)
    return [row.value for row in rows], skipped


def parse_chat_rows(
    rows: Sequence[Conversation | Mapping[str, object]], policy: BadRowPolicy = "raise", *, source: str = MEMORY_SOURCE
) -> tuple[list[Conversation], int]:
    """Conversations given in code (records, or OpenAI-style row dicts parsed like JSONL rows) and the number of
    skipped bad rows; errors name the row as ``<memory>[i]``."""
    kept, skipped = collect_rows(memory_rows(rows, source, chat_format()), policy)
    return [row.value for row in kept], skipped


def load_chat_hf(
    source: str,
    split: str | None = None,
    *,
    subset: str | None = None,
    messages_field: str = "messages",
    policy: BadRowPolicy = "raise",
) -> tuple[list[Conversation], int]:
    """Conversations of a Hugging Face dataset and the number of skipped bad rows (needs the ``hf`` extra).

    ``source`` is ``hf:org/name`` (``datasets.load_dataset(name, subset, split=split or "train")``) or
    ``hf-disk:/path`` (``datasets.load_from_disk``: a ``DatasetDict``'s ``split``, default ``train``, or a single
    dataset, which takes no split). Each row's ``messages_field`` column holds the messages in the common chat
    format (a ``tools`` column is read when present); bad rows are named ``hf:org/name[split][row]``.
    """
    format = chat_format(messages_field)
    rows = hf_rows(source, split, format, default_split="train", subset=subset, field="source", where="load_chat_hf")
    kept, skipped = collect_rows(rows, policy)
    return [row.value for row in kept], skipped


# -- preference comparisons ------------------------------------------------------------------------------------


def preference_format(layout: PreferenceLayout | None = None) -> RowFormat[LabeledComparison]:
    """Labeled comparisons in any layout of :mod:`tinkerflow.preference.data` (or the one ``layout`` forces); an HF
    dataset's rows are read with only the columns some layout knows (its score or id columns are left out)."""
    return RowFormat(
        what="comparisons",
        record=LabeledComparison,
        parse_line=lambda line, where: parse_preference_line(line, where, layout=layout),
        parse_mapping=lambda row, where: labeled_comparison_from_json(row, where, layout=layout),
        parse_hf=lambda row, where: preference_row_from_hf(row, where, layout=layout),
        hf_columns=_preference_columns,
    )


def _preference_columns(source: str, field: str, names: list[str]) -> list[str]:
    known = [name for name in names if name in PREFERENCE_KEYS]
    if not known:
        raise DataError(
            source,
            field,
            f"has none of the preference columns {sorted(PREFERENCE_KEYS)} (it has {names}).",
            "give it prompt/chosen/rejected, chosen/rejected, prompt/completion_a/completion_b/label or "
            "comparison/label columns.",
        )
    return known


def _check_policy(policy: object, where: str) -> None:
    if policy not in ("raise", "skip"):
        raise ConfigError(where, "policy", f"must be 'raise' or 'skip', got {policy!r}.")


def load_preference_jsonl(
    path: str | pathlib.Path, policy: BadRowPolicy = "raise", *, layout: PreferenceLayout | None = None
) -> tuple[list[LabeledComparison], int]:
    """The labeled comparisons of a JSONL file and the number of bad rows skipped (``policy="skip"``).

    Blank lines are ignored. With ``policy="raise"`` the first bad row raises
    :class:`~tinkerflow.preference.PreferenceFormatError` naming ``file:line`` and the field. Ties are kept
    (they are data, not errors); pairing decides what to do with them.
    """
    _check_policy(policy, "load_preference_jsonl")
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError("load_preference_jsonl", "path", f"{file} does not exist or is not a file.")
    rows, skipped = collect_rows(jsonl_rows(file, preference_format(layout).parse_line), policy)
    return [row.value for row in rows], skipped


def load_preference_hf(
    name: str,
    split: str,
    *,
    policy: BadRowPolicy = "raise",
    layout: PreferenceLayout | None = None,
    **load_kwargs: object,
) -> tuple[list[LabeledComparison], int]:
    """``datasets.load_dataset(name, split=split, **load_kwargs)`` read by
    :func:`tinkerflow.preference.preference_rows_from_hf`.

    Raises:
        ConfigError: the ``datasets`` package is not installed (``pip install 'tinkerflow[hf]'``).
    """
    datasets = _import_datasets(name, "load_preference_hf", "name")
    dataset = datasets.load_dataset(name, split=split, **load_kwargs)
    return preference_rows_from_hf(dataset, policy=policy, source=f"{name}:{split}", layout=layout)
