"""Stages, composition and its type checks, descriptions, sources, errors and the built-in Datum stages."""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Iterable, Sequence
from typing import TypeVar

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.pipeline_stages import add1, drop_div5, dup_even, not_div3, vec_neg

from tinkerflow import Datum, ModelInput
from tinkerflow.errors import ConfigError, TinkerflowError, ValidationError
from tinkerflow.pipeline import (
    CompositionError,
    Pipeline,
    PipelineInfo,
    SequenceSource,
    Stage,
    StageError,
    compose,
    datum_length,
    filter_stage,
    flat_map_stage,
    length_filter,
    stage,
    vectorized_stage,
)
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.io.sources import JsonlSource
from tinkerflow.testing import datums

T = TypeVar("T")


# -- stage functions (module level, so worker processes can import them) ------------------------------------------


def double(x: int) -> int:
    return 2 * x


def is_odd(x: int) -> bool:
    return x % 2 == 1


def to_str(x: int) -> str:
    return str(x)


def str_len(s: str) -> int:
    return len(s)


def maybe(x: int) -> int | None:
    return x if x else None


def first(xs: tuple[T, ...]) -> T:
    return xs[0]


def pair(x: int) -> tuple[int, ...]:
    return (x, x)


def halve(x: float) -> float:
    return x / 2


def fails_on_7(x: int) -> int:
    if x == 7:
        raise ValueError("seven is not allowed")
    return x


def unannotated(x):  # type: ignore[no-untyped-def]  # deliberately unannotated: the stage must refuse it
    return x


def scale(x: int, factor: int) -> int:
    return x * factor


@attrs.frozen
class Doc:
    text: str


@attrs.frozen
class Tokens:
    ids: tuple[int, ...]


def tokenize(doc: Doc) -> Tokens:
    return Tokens(tuple(ord(c) for c in doc.text))


def to_datum(tokens: Tokens) -> Datum:
    ids = tokens.ids or (0,)
    return Datum(ModelInput.from_tokens(list(ids)), list(ids))


OPS: dict[str, Stage[int, int]] = {
    "add1": stage(add1),
    "double": stage(double),
    "not_div3": filter_stage(not_div3),
    "dup_even": flat_map_stage(dup_even),
    "drop_div5": flat_map_stage(drop_div5),
    "vec_neg": vectorized_stage(vec_neg, size=3),
}
ops = st.sampled_from(sorted(OPS)).map(lambda name: OPS[name])
chains = st.lists(ops, min_size=1, max_size=4).map(lambda parts: compose(*parts))


# -- composition ----------------------------------------------------------------------------------------------


@given(chains, chains, chains, st.lists(st.integers(-50, 50), max_size=30))
def test_composition_is_associative(
    a: Stage[int, int], b: Stage[int, int], c: Stage[int, int], items: list[int]
) -> None:
    left = compose(compose(a, b), c)
    right = compose(a, compose(b, c))
    assert left == right == (a | b) | c == a | (b | c) == compose(a, b, c)
    assert left.apply_all(items) == right.apply_all(items)


@given(chains, st.lists(st.integers(-50, 50), max_size=30))
def test_a_stage_does_what_its_steps_do_one_by_one(chain: Stage[int, int], items: list[int]) -> None:
    expected: list[int] = list(items)
    for step in chain.steps:
        if step.kind == "map":
            expected = [step.fn(x) for x in expected]  # type: ignore[misc]  # test oracle over int steps
        elif step.kind == "filter":
            expected = [x for x in expected if step.fn(x)]
        elif step.kind == "flat_map":
            expected = [y for x in expected for y in step.fn(x)]  # type: ignore[attr-defined]  # iterable outputs
        else:
            expected = list(step.fn(expected))  # type: ignore[call-overload]  # vectorized: list in, list out
    assert list(chain.apply_all(items)) == expected
    assert [y for x in items for y in chain.apply(x)] == expected


def test_kinds_and_types_come_from_annotations() -> None:
    chain = compose(tokenize, to_datum, length_filter(max_tokens=8))
    assert [step.kind for step in chain.steps] == ["map", "map", "filter"]
    assert chain.in_type is Doc
    assert chain.out_type is Datum
    assert flat_map_stage(dup_even).out_type is int
    assert vectorized_stage(vec_neg).in_type is int
    assert filter_stage(is_odd).out_type is int


def test_a_mismatch_names_both_stages_and_both_types() -> None:
    with pytest.raises(CompositionError) as caught:
        compose(add1, to_str, double)
    error = caught.value
    assert isinstance(error, ConfigError)
    assert isinstance(error, ValidationError)
    assert error.where == "compose"
    assert error.field == "steps[1] -> steps[2]"
    assert "'to_str' outputs str" in str(error)
    assert "'double' takes int" in str(error)
    with pytest.raises(CompositionError, match="'tokenize' outputs Tokens, but stage 'length_filter"):
        compose(tokenize, length_filter(max_tokens=3))
    with pytest.raises(CompositionError, match="'double' outputs int"):
        stage(double) | str_len  # type: ignore[operator]  # the runtime check is what this test is about


def test_type_rules_unions_numbers_typevars() -> None:
    with pytest.raises(CompositionError, match=r"outputs int \| None"):
        compose(maybe, add1)
    compose(maybe, filter_stage(lambda x: x is not None, in_type=int | None))
    assert compose(add1, halve).out_type is float  # float accepts int
    chain = compose(pair, first)
    assert chain.out_type is int  # T bound from tuple[int, ...]
    with pytest.raises(CompositionError, match="'first' outputs int, but stage 'str_len' takes str"):
        compose(pair, first, str_len)
    compose(flat_map_stage(dup_even), vectorized_stage(vec_neg))  # Sequence parameter, item types match


def test_plain_callables_partials_and_lambdas() -> None:
    times3 = functools.partial(scale, factor=3)
    chain = compose(add1, times3)
    assert chain.apply_all([1, 2]) == (6, 9)
    assert chain.steps[1].name == "scale(partial)"
    assert (add1 | stage(double)).apply(1) == (4,)
    lam: Stage[int, int] = stage(lambda x: x * 10, in_type=int, out_type=int, name="times10")
    assert compose(add1, lam).apply(1) == (20,)


def test_stages_refuse_what_they_cannot_type() -> None:
    with pytest.raises(ConfigError, match="has no type annotation") as caught:
        stage(unannotated)
    assert "in_type=" in caught.value.fix
    with pytest.raises(ConfigError, match="exactly one required positional argument"):
        stage(scale)  # type: ignore[arg-type]  # the runtime check is what this test is about
    with pytest.raises(ConfigError, match="a filter must return bool"):
        filter_stage(add1)  # type: ignore[arg-type]  # the runtime check is what this test is about
    with pytest.raises(ConfigError, match="must return an iterable"):
        flat_map_stage(add1)  # type: ignore[arg-type]  # as above
    with pytest.raises(ConfigError, match="got no stages"):
        compose()


def test_describe_lists_steps_with_types() -> None:
    chain = compose(tokenize, to_datum, length_filter(min_tokens=1, max_tokens=2048))
    text = chain.describe()
    assert "1. map        tokenize" in text
    assert "Doc -> Tokens" in text
    assert "3. filter     length_filter(1..2048)" in text
    assert "Datum -> Datum" in text
    assert repr(chain) == "Stage(tokenize | to_datum | length_filter(1..2048): Doc -> Datum)"


def test_pipeline_describe_and_info_record_the_pipeline() -> None:
    docs = [Doc("hello"), Doc(""), Doc("a longer text")]
    pipeline = (
        Pipeline.from_source(docs, item_type=Doc, name="docs")
        .shuffle(7, window=2)
        .repeat(3)
        .then(tokenize, to_datum, length_filter(max_tokens=6))
        .batch_by_tokens(16, length=datum_length, max_items=4)
        .on_error("skip")
    )
    text = pipeline.describe()
    for fragment in (
        "Pipeline -> tuple[Datum, ...]",
        "docs: 3 items of Doc",
        "shuffle within windows of 2 items (seed 7); epochs: 3",
        "tokenize",
        "Doc -> Tokens",
        "Tokens -> Datum",
        "batches of at most 16 tokens by datum_length and at most 4 items",
        "on error: skip",
    ):
        assert fragment in text, fragment
    info = pipeline.info()
    assert [s.name for s in info.stages] == ["tokenize", "to_datum", "length_filter(0..6)"]
    assert from_json(to_json(info), PipelineInfo) == info
    assert "tokenize | to_datum" in repr(pipeline)


def test_pipeline_checks_the_source_type_and_batch_order() -> None:
    with pytest.raises(CompositionError, match="the source outputs str, but stage 'add1' takes int") as caught:
        Pipeline.from_source(["a"], item_type=str).then(add1)  # type: ignore[arg-type]  # runtime check under test
    assert caught.value.where == "Pipeline"
    assert Pipeline.from_source([1]).then(add1).item_type is int  # an untyped source (Any) feeds anything
    with pytest.raises(ConfigError, match="already batched"):
        Pipeline.from_source([1], item_type=int).batch(2).then(add1)  # type: ignore[arg-type]  # runtime check under test
    with pytest.raises(CompositionError):
        Pipeline.from_source([1], item_type=int).then(add1).then(str_len)  # type: ignore[arg-type]  # as above


def test_pipeline_rejects_bad_settings() -> None:
    base = Pipeline.from_source([1, 2, 3], item_type=int)
    with pytest.raises(ConfigError, match="epochs"):
        base.repeat(0)
    with pytest.raises(ConfigError, match="chunk_size"):
        base.with_chunk_size(0)
    with pytest.raises(ConfigError, match="error_policy"):
        base.on_error("ignore")  # type: ignore[arg-type]  # runtime refusal
    with pytest.raises(ConfigError, match="seed"):
        base.shuffle(-1)
    with pytest.raises(ConfigError, match="size"):
        base.batch(0)
    with pytest.raises(ConfigError, match="already set"):
        base.batch(2).batch(2)


# -- errors ---------------------------------------------------------------------------------------------------


def test_a_failing_stage_names_stage_location_and_cause() -> None:
    pipeline = Pipeline.from_source(list(range(10)), item_type=int, name="numbers").then(add1, fails_on_7)
    iterator = pipeline.iterate()
    with pytest.raises(StageError) as caught:
        list(iterator)
    error = caught.value
    assert isinstance(error, TinkerflowError)
    assert (error.stage, error.location, error.epoch, error.position) == ("fails_on_7", "numbers[6]", 0, 6)
    assert error.cause == "ValueError: seven is not allowed"
    assert isinstance(error.__cause__, ValueError)
    assert "stage 'fails_on_7' failed on numbers[6] (epoch 0, position 6): ValueError" in str(error)
    assert "on_error('skip')" in str(error)
    assert "fails_on_7" in error.details
    with pytest.raises(StageError, match="item 6"):
        compose(add1, fails_on_7).apply_all(range(10))


def test_skip_policy_drops_and_counts() -> None:
    items = [7, 1, 6, 7, 2, 7]
    pipeline = Pipeline.from_source(items, item_type=int).then(fails_on_7, double).on_error("skip").with_chunk_size(4)
    iterator = pipeline.iterate()
    assert list(iterator) == [2, 12, 4]
    assert iterator.skipped == 3
    assert iterator.state().skipped == 3
    assert [e.location for e in iterator.recent_errors] == ["items[0]", "items[3]", "items[5]"]


def test_state_record_validates() -> None:
    pipeline = Pipeline.from_source([1, 2, 3], item_type=int).shuffle(1)
    state = pipeline.initial_state()
    assert (state.seed, state.window, state.source_length) == (1, None, 3)
    with pytest.raises(ConfigError, match=r"state\.seed"):
        Pipeline.from_source([1, 2, 3], item_type=int).shuffle(2).iterate(state)
    with pytest.raises(ConfigError, match=r"state\.source_length"):
        Pipeline.from_source([1, 2], item_type=int).shuffle(1).iterate(state)
    with pytest.raises(ConfigError, match="position"):
        attrs.evolve(state, position=3)
    with pytest.raises(ValidationError):
        attrs.evolve(state, skip=-1)


# -- sources --------------------------------------------------------------------------------------------------


def _write(path: pathlib.Path, lines: Iterable[str]) -> pathlib.Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def value_of(row: dict[str, object]) -> int:
    value = row["v"]
    assert isinstance(value, int)
    return value


def test_jsonl_source_reads_lazily_with_line_locations(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "data.jsonl", ['{"v": 1}', "", '{"v": 2}', "   ", '{"v": 3}', "[4]", '{"v": 5'])
    source = JsonlSource(path)
    assert len(source) == 5  # blank lines are not items
    assert source.read(range(0, 3)) == [{"v": 1}, {"v": 2}, {"v": 3}]
    assert source.read([2, 0]) == [{"v": 3}, {"v": 1}]
    assert [source.location(i) for i in range(5)] == [f"{path}:{n}" for n in (1, 3, 5, 6, 7)]
    pipeline = Pipeline.from_source(source).then(value_of)
    with pytest.raises(StageError) as caught:
        list(pipeline)
    assert (caught.value.stage, caught.value.location) == ("source", f"{path}:6")
    assert "expected a JSON object" in caught.value.cause
    iterator = pipeline.on_error("skip").iterate()
    assert list(iterator) == [1, 2, 3]
    assert iterator.skipped == 2
    assert [e.location for e in iterator.recent_errors] == [f"{path}:6", f"{path}:7"]
    assert "JSONDecodeError" in iterator.recent_errors[1].cause


def test_jsonl_source_edge_cases(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert list(Pipeline.from_source(JsonlSource(empty))) == []
    no_newline = tmp_path / "last.jsonl"
    no_newline.write_bytes(b'{"v": 1}\r\n{"v": 2}')
    assert list(Pipeline.from_source(JsonlSource(no_newline)).then(value_of)) == [1, 2]
    with pytest.raises(ConfigError, match="not a readable file"):
        len(JsonlSource(tmp_path / "missing.jsonl"))


def test_hugging_face_dataset_is_a_source() -> None:
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([{"v": i} for i in range(20)])
    pipeline = Pipeline.from_source(dataset, item_type=dict[str, object]).then(value_of).shuffle(3).batch(8)
    batches = list(pipeline)
    assert [len(b) for b in batches] == [8, 8, 4]
    assert sorted(x for b in batches for x in b) == list(range(20))


def test_sequence_source_needs_random_access() -> None:
    with pytest.raises(ConfigError, match="len\\(\\) and integer indexing"):
        SequenceSource(iter([1, 2]))  # type: ignore[arg-type]  # runtime refusal
    assert SequenceSource(np.arange(5)).read(range(1, 3)) == [1, 2]


# -- built-in Datum stages ------------------------------------------------------------------------------------


@given(st.lists(datums(max_length=12), max_size=12), st.integers(0, 6), st.integers(0, 12))
def test_length_filter_keeps_datums_within_bounds(items: list[Datum], low: int, span: int) -> None:
    kept = length_filter(min_tokens=low, max_tokens=low + span).apply_all(items)
    assert list(kept) == [d for d in items if low <= d.length <= low + span]
    assert all(datum_length(d) == d.length for d in items)


def test_length_filter_validates_bounds() -> None:
    with pytest.raises(ConfigError, match="below min_tokens"):
        length_filter(min_tokens=5, max_tokens=2)


def test_state_json_is_plain() -> None:
    pipeline = Pipeline.from_source(list(range(5)), item_type=int).shuffle(9, window=2).batch(2)
    iterator = pipeline.iterate()
    next(iterator)
    text = to_json(iterator.state())
    assert json.loads(text) == {
        "epoch": 0,
        "position": 0,
        "skip": 2,
        "skipped": 0,
        "seed": 9,
        "window": 2,
        "source_length": 5,
        "version": 1,
    }


def vec_checked(xs: Sequence[int]) -> list[int]:
    if 7 in xs:
        raise ValueError("a batch with 7")
    return [x * 10 for x in xs]


def vec_short(xs: Sequence[int]) -> list[int]:
    return [x for x in xs if x != 3]


def test_vectorized_errors_are_located_item_by_item() -> None:
    pipeline = Pipeline.from_source(list(range(10)), item_type=int).then(vectorized_stage(vec_checked, size=4))
    with pytest.raises(StageError) as caught:
        list(pipeline)
    assert (caught.value.stage, caught.value.location) == ("vec_checked", "items[7]")
    iterator = pipeline.on_error("skip").iterate()
    assert list(iterator) == [0, 10, 20, 30, 40, 50, 60, 80, 90]
    assert iterator.skipped == 1
    with pytest.raises(StageError, match=r"returned 0 outputs for 1 inputs") as short:
        list(Pipeline.from_source(list(range(5)), item_type=int).then(vectorized_stage(vec_short)))
    assert short.value.location == "items[3]"
