"""SL data sources: JSONL files, conversations given in code, and Hugging Face datasets (hub and save_to_disk).

The same rows through every source give the same prepared data; bad rows are named by source and position
(``file:line``, ``<memory>[i]``, ``hf:org/name[split][i]``) and follow the bad-row policy everywhere.
"""

from __future__ import annotations

import io
import json
import pathlib
import sys

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.byte_renderer import ByteRenderer
from tests.fakes import FakeBackend

from tinkerflow.chat import Conversation, Message
from tinkerflow.chat_format import ChatFormatError, conversation_from_json
from tinkerflow.config import SLConfig
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.render import build_supervised_example
from tinkerflow.shell.io.data import (
    DataError,
    chat_format,
    load_chat_hf,
    load_chat_jsonl,
    load_split,
    parse_chat_rows,
)
from tinkerflow.shell.io.run_dir import MetricsLog
from tinkerflow.shell.recipes.sl import SLData, prepare_sl_data, run_sl
from tinkerflow.supervised import supervised_datum

try:
    import datasets
except ImportError:  # the optional hf extra: the HF tests are skipped, the others run
    datasets = None

needs_datasets = pytest.mark.skipif(
    datasets is None, reason="needs the datasets package (pip install 'tinkerflow[hf]')"
)


def _row(i: int) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": "be brief"} if i % 3 == 0 else {"role": "user", "content": "hi"},
            {"role": "user", "content": f"question {i}?"},
            {"role": "assistant", "content": "yes" if i % 2 else "no"},
        ]
    }


ROWS = [_row(i) for i in range(20)]
BAD_ROW: dict[str, object] = {"messages": [{"role": "robot", "content": "x"}]}


def _config(tmp_path: pathlib.Path, **overrides: object) -> SLConfig:
    fields: dict[str, object] = {
        "train_data": "<memory>",
        "run_dir": str(tmp_path / "run"),
        "batch_size": 4,
        "learning_rate": 1.0,
        "num_samples_shown": 2,
        "max_length": 64,
        "test_fraction": 0.25,
    }
    fields.update(overrides)
    return SLConfig(**fields)  # type: ignore[arg-type]


def _write_jsonl(path: pathlib.Path, rows: list[dict[str, object]]) -> pathlib.Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _save(path: pathlib.Path, splits: dict[str, list[dict[str, object]]] | list[dict[str, object]]) -> str:
    if isinstance(splits, list):
        datasets.Dataset.from_list(splits).save_to_disk(str(path))
    else:
        datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(
            str(path)
        )
    return f"hf-disk:{path}"


def _same(a: SLData, b: SLData) -> None:
    # records compare arrays exactly; streamed training datums are read (rendered) to be compared
    assert attrs.evolve(a, train=tuple(a.train)) == attrs.evolve(b, train=tuple(b.train))


# -- the same rows through every source give the same data -------------------------------------------------------


@needs_datasets
def test_every_source_gives_the_same_data(tmp_path: pathlib.Path) -> None:
    renderer = ByteRenderer()
    from_file = prepare_sl_data(_config(tmp_path, train_data=str(_write_jsonl(tmp_path / "d.jsonl", ROWS))), renderer)
    from_dicts = prepare_sl_data(_config(tmp_path), renderer, train_rows=ROWS)
    records = [conversation_from_json(row) for row in ROWS]
    from_records = prepare_sl_data(_config(tmp_path), renderer, train_rows=records)
    mixed = [records[i] if i % 2 else ROWS[i] for i in range(len(ROWS))]
    from_mixed = prepare_sl_data(_config(tmp_path), renderer, train_rows=mixed)
    from_disk = prepare_sl_data(_config(tmp_path, train_data=_save(tmp_path / "single", ROWS)), renderer)
    from_disk_dict = prepare_sl_data(
        _config(tmp_path, train_data=_save(tmp_path / "dict", {"train": ROWS, "other": ROWS[:2]})), renderer
    )
    for data in (from_dicts, from_records, from_mixed, from_disk, from_disk_dict):
        _same(data, from_file)
    assert len(from_file.train) == 15
    assert len(from_file.test) == 5


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 50), min_size=1, max_size=12), st.sampled_from([0.0, 0.3]))
def test_memory_rows_equal_jsonl_rows(tmp_path: pathlib.Path, ids: list[int], fraction: float) -> None:
    rows = [_row(i) for i in ids]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    renderer = ByteRenderer()
    config = _config(tmp_path, test_fraction=fraction)
    _same(
        prepare_sl_data(attrs.evolve(config, train_data=str(path)), renderer),
        prepare_sl_data(config, renderer, train_rows=rows),
    )
    assert parse_chat_rows(rows) == (load_chat_jsonl(path)[0], 0)


def test_held_out_rows_in_memory(tmp_path: pathlib.Path) -> None:
    renderer = ByteRenderer()
    data = prepare_sl_data(_config(tmp_path), renderer, train_rows=ROWS[:8], test_rows=ROWS[8:11])
    assert (len(data.train), len(data.test)) == (8, 3)
    # memory held-out rows beat config.test_data, which is then not read at all
    config = _config(tmp_path, test_data=str(tmp_path / "missing.jsonl"))
    assert prepare_sl_data(config, renderer, train_rows=ROWS[:8], test_rows=ROWS[8:11]) == data
    # training rows in memory, held-out rows from the config's file
    test_file = _write_jsonl(tmp_path / "test.jsonl", ROWS[8:11])
    _same(prepare_sl_data(_config(tmp_path, test_data=str(test_file)), renderer, train_rows=ROWS[:8]), data)


def test_memory_bad_rows_are_named_and_follow_the_policy(tmp_path: pathlib.Path) -> None:
    renderer = ByteRenderer()
    rows = [*ROWS[:6], BAD_ROW, {"messages": []}, *ROWS[6:8]]
    with pytest.raises(ChatFormatError) as info:
        prepare_sl_data(_config(tmp_path), renderer, train_rows=rows)
    assert (info.value.where, info.value.field) == ("<memory>[6]", "messages[0].role")
    skipped = prepare_sl_data(_config(tmp_path, bad_rows="skip"), renderer, train_rows=rows)
    assert skipped.skipped_rows == 2
    assert len(skipped.train) + len(skipped.test) == 8
    with pytest.raises(ChatFormatError) as info:
        prepare_sl_data(_config(tmp_path), renderer, train_rows=ROWS[:4], test_rows=[ROWS[0], "not a row"])  # type: ignore[list-item]
    assert info.value.where == "<memory:test>[1]"
    with pytest.raises(DataError, match="sequence of conversations"):
        prepare_sl_data(_config(tmp_path), renderer, train_rows="messages")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no usable training conversation") as error:
        prepare_sl_data(_config(tmp_path, bad_rows="skip"), renderer, train_rows=[BAD_ROW])
    assert error.value.where == "<memory>"


def test_too_long_row_is_named_by_its_position(tmp_path: pathlib.Path) -> None:
    long_row: dict[str, object] = {
        "messages": [{"role": "user", "content": "x" * 500}, {"role": "assistant", "content": "y"}]
    }
    path = _write_jsonl(tmp_path / "long.jsonl", [*ROWS[:3], long_row])
    for config, rows, where in (
        (_config(tmp_path, train_data=str(path), test_fraction=0.0), None, f"{path}:4"),
        (_config(tmp_path, test_fraction=0.0), [*ROWS[:3], long_row], "<memory>[3]"),
    ):
        with pytest.raises(DataError, match="max_length") as info:
            prepare_sl_data(config, ByteRenderer(), train_rows=rows)
        assert info.value.where == where


# -- Hugging Face datasets ---------------------------------------------------------------------------------------


@needs_datasets
def test_hf_disk_splits_and_held_out_split(tmp_path: pathlib.Path) -> None:
    source = _save(tmp_path / "dd", {"train": ROWS[:12], "validation": ROWS[12:16], "test": ROWS[16:]})
    renderer = ByteRenderer()
    reference = prepare_sl_data(_config(tmp_path), renderer, train_rows=ROWS[:12], test_rows=ROWS[12:16])
    _same(prepare_sl_data(_config(tmp_path, train_data=source, hf_test_split="validation"), renderer), reference)
    # an HF test_data defaults to its "test" split; hf_split picks the training split
    swapped = prepare_sl_data(_config(tmp_path, train_data=source, hf_split="validation", test_data=source), renderer)
    _same(swapped, prepare_sl_data(_config(tmp_path), renderer, train_rows=ROWS[12:16], test_rows=ROWS[16:]))
    with pytest.raises(DataError, match="no split 'dev'") as info:
        prepare_sl_data(_config(tmp_path, train_data=source, hf_split="dev"), renderer)
    assert "['test', 'train', 'validation']" in info.value.problem
    single = _save(tmp_path / "single", ROWS)
    with pytest.raises(DataError, match="single dataset without splits"):
        prepare_sl_data(_config(tmp_path, train_data=single, hf_test_split="test"), renderer)
    with pytest.raises(DataError, match="could not be loaded"):
        prepare_sl_data(_config(tmp_path, train_data=f"hf-disk:{tmp_path / 'nothing'}"), renderer)


@needs_datasets
def test_hf_bad_rows_are_named_with_split_and_row(tmp_path: pathlib.Path) -> None:
    rows = [{"conversation": row["messages"], "id": i} for i, row in enumerate([*ROWS[:5], BAD_ROW, ROWS[5], BAD_ROW])]
    source = _save(tmp_path / "dd", {"train": rows})
    config = _config(tmp_path, train_data=source, hf_messages_field="conversation")
    with pytest.raises(ChatFormatError) as info:
        prepare_sl_data(config, ByteRenderer())
    assert info.value.where == f"{source}[train][5]"
    assert info.value.field == "conversation[0].role"  # the dataset's own column name
    skipped = prepare_sl_data(attrs.evolve(config, bad_rows="skip"), ByteRenderer())
    assert skipped.skipped_rows == 2
    assert len(skipped.train) + len(skipped.test) == 6
    with pytest.raises(DataError, match="no column 'messages'") as missing:
        prepare_sl_data(attrs.evolve(config, hf_messages_field="messages"), ByteRenderer())
    assert "conversation" in missing.value.problem
    single = _save(tmp_path / "single", [*ROWS[:2], BAD_ROW])
    with pytest.raises(ChatFormatError) as info:
        load_chat_hf(single)
    assert info.value.where == f"{single}[2]"
    assert load_chat_hf(single, policy="skip") == (parse_chat_rows(ROWS[:2])[0], 1)


@needs_datasets
def test_hf_tools_column_is_read(tmp_path: pathlib.Path) -> None:
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    rows: list[dict[str, object]] = [{**ROWS[0], "tools": [tool]}, {**ROWS[1], "tools": [tool]}]
    loaded, skipped = load_chat_hf(_save(tmp_path / "tools", rows))
    assert skipped == 0
    assert loaded == [conversation_from_json(row) for row in rows]
    assert loaded[0].tools[0].name == "f"


@needs_datasets
def test_hf_hub_source_calls_load_dataset(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []

    def load_dataset(name: str, subset: str | None, *, split: str) -> object:
        calls.append((name, subset, split))
        return datasets.Dataset.from_list(ROWS[:10] if split == "train" else [ROWS[10], BAD_ROW])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    config = _config(tmp_path, train_data="hf:org/chat", hf_subset="en", hf_test_split="test")
    with pytest.raises(ChatFormatError) as info:
        prepare_sl_data(config, ByteRenderer())
    assert info.value.where == "hf:org/chat[test][1]"
    assert calls == [("org/chat", "en", "train"), ("org/chat", "en", "test")]
    data = prepare_sl_data(attrs.evolve(config, bad_rows="skip"), ByteRenderer())
    assert (len(data.train), len(data.test), data.skipped_rows) == (10, 1, 1)

    def unreachable(name: str, subset: str | None, *, split: str) -> object:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match="no network") as error:
        prepare_sl_data(config, ByteRenderer())
    assert error.value.where == "hf:org/chat"


def test_missing_datasets_package_says_what_to_install(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ConfigError, match=r"pip install 'tinkerflow\[hf\]'") as info:
        prepare_sl_data(_config(tmp_path, train_data="hf:org/chat"), ByteRenderer())
    assert info.value.field == "train_data"
    assert isinstance(info.value, ValidationError)


@needs_datasets
def test_run_sl_trains_on_a_saved_hf_dataset(tmp_path: pathlib.Path) -> None:
    source = _save(tmp_path / "dd", {"train": ROWS, "test": ROWS[:4]})
    config = _config(tmp_path, train_data=source, hf_test_split="test", max_steps=4, eval_every=2, save_every=2)
    result = run_sl(config, FakeBackend(), ByteRenderer(), out=io.StringIO())
    assert result.eval_nll_after is not None
    assert result.eval_nll_before is not None
    assert result.eval_nll_after < result.eval_nll_before
    assert [row["step"] for row in MetricsLog.read(tmp_path / "run" / "metrics.jsonl")] == [0, 1, 2, 3]


def test_conversation_records_are_used_as_given(tmp_path: pathlib.Path) -> None:
    conversation = Conversation(
        messages=(Message(role="user", content="two plus two?"), Message(role="assistant", content="four"))
    )
    config = _config(tmp_path, test_fraction=0.0)
    data = prepare_sl_data(config, ByteRenderer(), train_rows=[conversation] * 3)
    example = build_supervised_example(ByteRenderer(), conversation, config.train_on)
    model_input, weights = example.model_input, example.weights_T
    assert data.train == (supervised_datum(model_input, weights, reduction=config.reduction),) * 3
    assert data.test == ()


@pytest.mark.parametrize("parallelism", ["false", "true"])
def test_prepared_data_renders_with_the_tokenizer_ahead_and_equals_the_core(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, parallelism: str
) -> None:
    """prepare_sl_data renders with the shell's overlapped packer (the tokenizer on helper threads: two when
    TOKENIZERS_PARALLELISM is off, one otherwise); the data equals the core's sequential rendering, rows too long
    or with nothing to train on counted the same, in memory and streamed from a file."""
    from tinkerflow.render import get_renderer
    from tinkerflow.shell.io import prefetch
    from tinkerflow.shell.io.tokenizers import offline_tokenizer
    from tinkerflow.sl_data import sl_data

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", parallelism)
    monkeypatch.setattr(prefetch.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    used: list[int] = []
    original = prefetch.prefetch

    def counting(*args: object, **kwargs: object) -> object:
        used.append(kwargs["workers"])  # type: ignore[arg-type]
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(prefetch, "prefetch", counting)
    renderer = get_renderer("qwen3", offline_tokenizer("qwen3"))
    rows: list[dict[str, object]] = [_row(i) for i in range(300)]
    rows[70] = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "y"}]}
    rows[140] = {"messages": [{"role": "user", "content": "no answer"}]}
    config = _config(tmp_path, bad_rows="skip", test_fraction=0.1)
    sequential = sl_data(load_split(config, chat_format(None), train_rows=rows), renderer, config)
    assert sequential.skipped_rows == 2
    _same(prepare_sl_data(config, renderer, train_rows=rows), sequential)
    path = _write_jsonl(tmp_path / "rows.jsonl", rows)
    from_file = prepare_sl_data(attrs.evolve(config, train_data=str(path)), renderer)
    _same(
        from_file,
        sl_data(load_split(attrs.evolve(config, train_data=str(path)), chat_format(None)), renderer, config),
    )
    assert used
    assert set(used) == {2 if parallelism == "false" else 1}
