"""Streamed datasets (tinkerflow.shell.io.streaming): a file's rows are checked once and read again when a batch
needs them. The streamed data must be the in-memory loader's exactly (items, order, held-out rows, counts, the
error raised), so the batches and the resume positions are too; and it must not hold the rows."""

from __future__ import annotations

import json
import pathlib
import tracemalloc
from collections.abc import Sequence

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.byte_renderer import ByteRenderer

from tinkerflow.chat_format import ChatFormatError
from tinkerflow.config import SLConfig
from tinkerflow.errors import ConfigError, TinkerflowError
from tinkerflow.pipeline import PipelineState
from tinkerflow.preference.config import DPOConfig
from tinkerflow.preference.dpo_data import DPOData, dpo_data
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.envs import ListRLDataset, math_boxed
from tinkerflow.rl.envs.math_boxed import MathProblem
from tinkerflow.rows import DataError
from tinkerflow.shell.io.data import chat_format, load_split, preference_format
from tinkerflow.shell.io.sources import index_lines
from tinkerflow.shell.io.streaming import JsonlRows, StreamedPairs, StreamedRows, one_by_one
from tinkerflow.shell.recipes.dpo import prepare_dpo_data
from tinkerflow.shell.recipes.dpo_reference import interleaved
from tinkerflow.shell.recipes.rl import environment_datasets
from tinkerflow.shell.recipes.sl import prepare_sl_data, train_pipeline
from tinkerflow.sl_data import SLData, sl_data
from tinkerflow.supervised import split_indices

# Row kinds: a good conversation, an unreadable line, a row the loop cannot use (too long, or nothing to train
# on), and a blank line (not a row at all).
GOOD, UNREADABLE, TOO_LONG, NO_ASSISTANT, BLANK = range(5)


def _line(kind: int, i: int) -> str:
    if kind == UNREADABLE:
        return ['{"messages": [', '{"messages": [{"role": "robot", "content": "x"}]}', "[1, 2]"][i % 3]
    if kind == BLANK:
        return ["", "   ", "\t \t          "][i % 3]
    messages: list[dict[str, str]] = [{"role": "user", "content": f"question {i}?"}]
    if kind == TOO_LONG:
        messages.append({"role": "assistant", "content": "x" * 200})
    elif kind == GOOD:
        messages.append({"role": "assistant", "content": "yes" if i % 2 else f"no {i}"})
    return json.dumps({"messages": messages})


def _write(path: pathlib.Path, kinds: list[int]) -> pathlib.Path:
    path.write_text("".join(_line(kind, i) + "\n" for i, kind in enumerate(kinds)))
    return path


def _config(tmp_path: pathlib.Path, **fields: object) -> SLConfig:
    base: dict[str, object] = {
        "train_data": str(tmp_path / "train.jsonl"),
        "run_dir": str(tmp_path / "run"),
        "learning_rate": 1.0,
        "max_length": 64,
        "num_samples_shown": 2,
    }
    base.update(fields)
    return SLConfig(**base)  # type: ignore[arg-type]


def _in_memory(config: SLConfig, renderer: ByteRenderer) -> SLData:
    return sl_data(load_split(config, chat_format()), renderer, config)


def _outcome(make: object) -> tuple[str, object]:
    try:
        data = make()  # type: ignore[operator]  # a thunk
    except TinkerflowError as error:
        return "error", (type(error).__name__, str(error))
    assert isinstance(data, SLData)
    return "data", attrs.evolve(data, train=tuple(data.train))


row_kinds = st.lists(st.sampled_from([GOOD] * 6 + [UNREADABLE, TOO_LONG, NO_ASSISTANT, BLANK]), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kinds=row_kinds,
    test_kinds=st.none() | st.lists(st.sampled_from([GOOD, GOOD, UNREADABLE, TOO_LONG]), min_size=1, max_size=6),
    fraction=st.sampled_from([0.0, 0.2, 0.5]),
    policy=st.sampled_from(["raise", "skip"]),
    seed=st.integers(0, 3),
)
def test_streamed_data_is_the_in_memory_data(
    tmp_path: pathlib.Path,
    kinds: list[int],
    test_kinds: list[int] | None,
    fraction: float,
    policy: str,
    seed: int,
) -> None:
    """Same training datums in the same order, same held-out rows, counts and prompts; or the same error."""
    train = _write(tmp_path / "train.jsonl", kinds)
    test = None if test_kinds is None else str(_write(tmp_path / "test.jsonl", test_kinds))
    config = _config(
        tmp_path, train_data=str(train), test_data=test, test_fraction=fraction, bad_rows=policy, seed=seed
    )
    renderer = ByteRenderer()
    streamed = _outcome(lambda: prepare_sl_data(config, renderer))
    assert streamed == _outcome(lambda: _in_memory(config, renderer))
    if streamed[0] == "data":
        assert isinstance(prepare_sl_data(config, renderer).train, StreamedRows)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    count=st.integers(1, 40),
    batch_size=st.integers(1, 7),
    epochs=st.integers(1, 3),
    seed=st.integers(0, 5),
    stop=st.integers(0, 30),
)
def test_streamed_batches_and_resume_equal_in_memory(
    tmp_path: pathlib.Path, count: int, batch_size: int, epochs: int, seed: int, stop: int
) -> None:
    """The pipeline over streamed datums yields the in-memory batches; a position saved mid-run restores to the
    same remaining batches."""
    _write(tmp_path / "train.jsonl", [GOOD] * count)
    config = _config(tmp_path, batch_size=batch_size, epochs=epochs, seed=seed, test_fraction=0.0)
    renderer = ByteRenderer()
    streamed, memory = prepare_sl_data(config, renderer), _in_memory(config, renderer)
    expected = list(train_pipeline(memory, config).iterate())
    assert list(train_pipeline(streamed, config).iterate()) == expected
    iterator = train_pipeline(streamed, config).iterate()
    head = [next(iterator) for _ in range(min(stop, len(expected)))]
    state = PipelineState(**attrs.asdict(iterator.state()))
    assert head + list(train_pipeline(streamed, config).iterate(state)) == expected


def test_streamed_rows_hold_no_row(tmp_path: pathlib.Path) -> None:
    """What stays in memory after the check is a few bytes per row (positions and the line index), not rows:
    the in-memory loader keeps about 1.4 KB per conversation."""
    rows = 20_000
    _write(tmp_path / "train.jsonl", [GOOD] * rows)
    config = _config(tmp_path, test_fraction=0.0)
    renderer = ByteRenderer()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        data = prepare_sl_data(config, renderer)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(data.train) == rows
    assert held / rows < 64, f"{held / rows:.0f} bytes per row stay in memory"
    assert data.train[rows - 1] == data.train[-1]
    assert [datum.length for datum in data.train[3:6]] == [data.train[i].length for i in range(3, 6)]


def test_a_row_changed_on_disk_is_named(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "train.jsonl", [GOOD] * 5)
    config = _config(tmp_path, test_fraction=0.0)
    data = prepare_sl_data(config, ByteRenderer())
    lines = path.read_text().splitlines()
    lines[2] = _line(UNREADABLE, 1).ljust(len(lines[2]))  # the same length: the line index still fits
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="data changed on disk") as caught:
        _ = data.train[2]
    assert caught.value.where == f"{path}:3"
    with pytest.raises(IndexError):
        _ = data.train[5]


def test_jsonl_rows_skip_blank_lines_like_the_reader(tmp_path: pathlib.Path) -> None:
    """Lines of only whitespace (however long, CRLF endings included) are not rows; row names are file:line."""
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\r\n' + b" " * 40 + b"\n\n\t\r\n" + b'  {"b": 2}\n' + b"\x0b\x0c\n" + b'{"c": 3}')
    rows = JsonlRows(path, lambda line, where: (json.loads(line), where))
    assert len(rows) == 3
    assert [rows.parse(i) for i in range(3)] == [
        ({"a": 1}, f"{path}:1"),
        ({"b": 2}, f"{path}:5"),
        ({"c": 3}, f"{path}:7"),
    ]
    assert np.array_equal(StreamedRows(rows, np.array([2, 0]), one_by_one(lambda row: row.where)).positions, [2, 0])
    assert list(StreamedRows(rows, np.array([2, 0]), one_by_one(lambda row: row.where))) == [f"{path}:7", f"{path}:1"]


# -- DPO: comparisons ----------------------------------------------------------------------------------------------

PAIR_GOOD, PAIR_UNREADABLE, PAIR_TIE, PAIR_SAME, PAIR_LONG = range(5)


def _pair_line(kind: int, i: int) -> str:
    if kind == PAIR_UNREADABLE:
        return [
            '{"prompt": ',
            '{"prompt": "q", "chosen": "y"}',
            '{"prompt": "q", "chosen": "a", "rejected": "b", "x": 1}',
        ][i % 3]
    if kind == PAIR_TIE:
        return json.dumps({"prompt": f"q{i}?", "completion_a": "yes", "completion_b": "no", "label": "tie"})
    if kind == PAIR_SAME:
        return json.dumps({"prompt": f"q{i}?", "chosen": "same", "rejected": "same"})
    if kind == PAIR_LONG:
        return json.dumps({"prompt": f"q{i}?", "chosen": "yes " * 40, "rejected": "no"})
    return json.dumps({"prompt": f"q{i}?", "chosen": "yes!" if i % 2 else f"sure {i}", "rejected": "no"})


def _dpo_outcome(make: object) -> tuple[str, object]:
    try:
        data = make()  # type: ignore[operator]  # a thunk
    except TinkerflowError as error:
        return "error", (type(error).__name__, str(error))
    assert isinstance(data, DPOData)
    train = data.train
    pairs = (tuple(train.chosen), tuple(train.rejected), tuple(train.indices), tuple(train.interleaved()))
    return "data", (pairs, data.test, data.skipped_rows, data.dropped_ties)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kinds=st.lists(st.sampled_from([PAIR_GOOD] * 5 + [PAIR_UNREADABLE, PAIR_TIE, PAIR_SAME, PAIR_LONG]), max_size=25),
    fraction=st.sampled_from([0.0, 0.3]),
    policy=st.sampled_from(["raise", "skip"]),
    ties=st.sampled_from(["raise", "drop"]),
    seed=st.integers(0, 3),
)
def test_streamed_comparisons_are_the_in_memory_ones(
    tmp_path: pathlib.Path, kinds: list[int], fraction: float, policy: str, ties: str, seed: int
) -> None:
    """Same pairs (chosen, rejected, ranks), held-out pairs, bad-row and tie counts; or the same error."""
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(_pair_line(kind, i) + "\n" for i, kind in enumerate(kinds)))
    config = DPOConfig(
        train_data=str(path),
        run_dir=str(tmp_path / "run"),
        max_length=48,
        test_fraction=fraction,
        bad_rows=policy,  # type: ignore[arg-type]
        ties=ties,  # type: ignore[arg-type]
        seed=seed,
    )
    renderer = ByteRenderer()
    streamed = _dpo_outcome(lambda: prepare_dpo_data(config, renderer))
    in_memory = _dpo_outcome(lambda: dpo_data(load_split(config, preference_format(config.layout)), renderer, config))
    assert streamed == in_memory
    if streamed[0] == "data":
        data = prepare_dpo_data(config, renderer)
        assert isinstance(data.train, StreamedPairs)
        batch = list(range(len(data.train)))[::-1]
        assert interleaved(data.train, batch) == [
            datum for i in batch for datum in (data.train.chosen[i], data.train.rejected[i])
        ]


# -- RL: problems ----------------------------------------------------------------------------------------------------


def _problem(builder: object) -> MathProblem:
    problem = builder.make_env.args[1]  # type: ignore[attr-defined]  # ProblemGroupBuilder(make_env=partial(...))
    assert isinstance(problem, MathProblem)
    return problem


@settings(max_examples=40, deadline=None)
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_problem_rows_refuse_any_unknown_key(key: str) -> None:
    row = {"problem": "1+1?", "answer": "2", key: "x"}
    if key in ("problem", "answer", "id"):
        assert math_boxed.problem_from_json(row, "p.jsonl:1") == MathProblem("1+1?", "2")
        return
    with pytest.raises(ChatFormatError) as caught:
        math_boxed.problem_from_json(row, "p.jsonl:1")
    assert (caught.value.where, caught.value.field) == ("p.jsonl:1", key)


def test_problem_rows_name_the_field_and_the_fix() -> None:
    with pytest.raises(ChatFormatError, match="did you mean 'answer'") as caught:
        math_boxed.problem_from_json({"problem": "1+1?", "anwser": "2"}, "p.jsonl:3")
    assert caught.value.field == "anwser"
    for row, field in (
        ({"problem": "1+1?"}, "answer"),
        ({"problem": "", "answer": "2"}, "problem"),
        ({"problem": "q", "answer": 2}, "answer"),
        ({"problem": "q", "answer": "so \\boxed{}"}, "answer"),
        (["q", "2"], "row"),
    ):
        with pytest.raises(ChatFormatError) as caught:
            math_boxed.problem_from_json(row, "p.jsonl:3")
        assert caught.value.field == field
    solution = {"question": "q", "solution": "so \\boxed{\\frac{1}{2}}."}
    parsed = math_boxed.problem_from_json(solution, "w", question_key="question", answer_key="solution")
    assert parsed == MathProblem("q", "\\frac{1}{2}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    good=st.lists(st.booleans(), min_size=1, max_size=25),
    groups=st.integers(1, 4),
    steps=st.integers(1, 12),
    fraction=st.sampled_from([0.0, 0.25]),
    seed=st.integers(0, 3),
)
def test_streamed_problems_batch_like_the_in_memory_list(
    tmp_path: pathlib.Path, good: list[bool], groups: int, steps: int, fraction: float, seed: int
) -> None:
    """Batch ``i`` holds the problems a ListRLDataset over the parsed good rows holds; held-out problems too."""
    path = tmp_path / "problems.jsonl"
    rows = [
        {"problem": f"{i} + 1?", "answer": str(i + 1)} if ok else {"problem": "q", "answr": "1"}
        for i, ok in enumerate(good)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = RLConfig(
        env="math_boxed",
        env_args={"data": str(path), "bad_rows": "skip", "test_fraction": fraction, "fewshot": False},
        groups_per_batch=groups,
        steps=steps,
        seed=seed,
        eval_groups=2,
    )
    problems = [MathProblem(str(row["problem"]), str(row["answer"])) for row in rows if "answer" in row]
    if not problems:
        with pytest.raises(ConfigError, match="no usable problem"):
            environment_datasets(config, ByteRenderer())
        return
    train, test = environment_datasets(config, ByteRenderer())
    train_index, test_index = split_indices(len(problems), fraction, seed)
    kept = [problems[i] for i in train_index]
    per_epoch = -(-len(kept) // groups)
    expected = ListRLDataset(kept, groups, seed, epochs=max(1, -(-steps // per_epoch)))
    assert len(train) == len(expected) >= steps
    for index in range(len(train)):
        assert [_problem(b) for b in train.get_batch(index)] == list(expected.get_batch(index))
    if test_index.size:
        assert test is not None
        assert [_problem(b) for b in test.get_batch(0)] == list(
            ListRLDataset([problems[i] for i in test_index], 2, seed + 7919).get_batch(0)
        )
    else:
        assert test is None


def test_env_args_of_the_data_are_checked(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"problem": "q", "answer": "1"}) + "\n")
    for args, field in (
        ({"data": str(tmp_path / "missing.jsonl")}, "path"),
        ({"data": str(path), "bad_rows": "ignore"}, "env_args['bad_rows']"),
        ({"data": str(path), "test_fraction": "half"}, "env_args['test_fraction']"),
        ({"data": 3}, "env_args['data']"),
        ({"data": str(path), "colour": "red"}, "env_args"),
    ):
        with pytest.raises(TinkerflowError) as caught:
            environment_datasets(RLConfig(env="math_boxed", env_args=args), ByteRenderer())
        assert caught.value.field == field, args


def test_streamed_pairs_are_read_in_chunks(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Iterating a side (or both interleaved) reads the pairs a chunk at a time, not one call per pair."""
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(_pair_line(PAIR_GOOD, i) + "\n" for i in range(40)))
    config = DPOConfig(train_data=str(path), run_dir=str(tmp_path / "run"), max_length=48, test_fraction=0.0)
    data = prepare_dpo_data(config, ByteRenderer())
    assert isinstance(data.train, StreamedPairs)
    calls: list[int] = []
    original = StreamedRows.read

    def counted(self: StreamedRows[object], indices: Sequence[int]) -> list[object]:
        calls.append(len(indices))
        return original(self, indices)

    monkeypatch.setattr(StreamedRows, "read", counted)
    both = list(data.train.interleaved())
    assert calls == [40]
    assert both[0::2] == list(data.train.chosen)
    assert both[1::2] == list(data.train.rejected)
    assert len(both) == 80


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.sampled_from(['{"a": 1}', "", " ", "\t\t", "   \r", ' {"b": 2}', "\x0b", "x", "\r"]), max_size=30
    ),
    final_newline=st.booleans(),
)
def test_the_line_index_keeps_the_lines_the_reader_keeps(
    tmp_path: pathlib.Path, lines: list[str], final_newline: bool
) -> None:
    """index_lines (blocks, no mmap) finds exactly the non-blank lines jsonl_rows yields, with their numbers."""
    path = tmp_path / "lines.jsonl"
    path.write_bytes(("\n".join(lines) + ("\n" if final_newline and lines else "")).encode())
    starts, ends, numbers = index_lines(path)
    data = path.read_bytes()
    expected = [(number, line) for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]
    assert [(int(n), data[s:e]) for s, e, n in zip(starts, ends, numbers, strict=True)] == expected
