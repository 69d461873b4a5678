"""Running pipelines: shuffles, batching, exact resume from a saved state, worker processes == in-process."""

from __future__ import annotations

import itertools
import pathlib

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.pipeline_stages import add1, drop_div5, dup_even, not_div3, vec_neg

from tinkerflow.errors import ConfigError
from tinkerflow.pipeline import (
    Pipeline,
    PipelineState,
    SequenceSource,
    Shuffle,
    Stage,
    StageError,
    compose,
    epoch_order,
    filter_stage,
    flat_map_stage,
    stage,
    vectorized_stage,
)
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.io.executors import ProcessExecutor, iterate_parallel
from tinkerflow.shell.io.sources import JsonlSource


def fails_on_10_mod_11(x: int) -> int:
    if x % 11 == 10:
        raise ValueError(f"bad item {x}")
    return x


def cost(x: int) -> int:
    return abs(x) % 7 + 1


OPS: dict[str, Stage[int, int]] = {
    "add1": stage(add1),
    "not_div3": filter_stage(not_div3),
    "dup_even": flat_map_stage(dup_even),
    "drop_div5": flat_map_stage(drop_div5),
    "vec_neg": vectorized_stage(vec_neg, size=2),
    "fails": stage(fails_on_10_mod_11),
}


@st.composite
def pipelines(draw: st.DrawFn, *, max_items: int = 40) -> Pipeline[object]:
    items = list(range(draw(st.integers(0, max_items))))
    pipeline: Pipeline[object] = Pipeline.from_source(items, item_type=int)
    names = draw(st.lists(st.sampled_from(sorted(OPS)), max_size=4))
    if names:
        pipeline = pipeline.then(compose(*(OPS[name] for name in names)))  # type: ignore[arg-type]  # variadic compose is untyped
    if draw(st.booleans()):
        pipeline = pipeline.shuffle(draw(st.integers(0, 2**64 - 1)), window=draw(st.none() | st.integers(1, 6)))
    pipeline = pipeline.repeat(draw(st.integers(1, 3)))
    kind = draw(st.sampled_from(["none", "size", "tokens"]))
    if kind == "size":
        pipeline = pipeline.batch(draw(st.integers(1, 5)), drop_remainder=draw(st.booleans()))
    elif kind == "tokens":
        pipeline = pipeline.batch_by_tokens(
            draw(st.integers(1, 12)),
            length=cost,  # type: ignore[arg-type]  # items are ints; the strategy's pipeline type is object
            max_items=draw(st.none() | st.integers(1, 4)),
            drop_remainder=draw(st.booleans()),
            oversize=draw(st.sampled_from(["alone", "error"])),
        )
    pipeline = pipeline.on_error("skip").with_chunk_size(draw(st.integers(1, 7)))
    return pipeline


def run_all(pipeline: Pipeline[object], state: PipelineState | None = None) -> tuple[list[object], int]:
    iterator = pipeline.iterate(state)
    outputs = list(iterator)
    return outputs, iterator.skipped


def run_parallel(pipeline: Pipeline[object], state: PipelineState | None = None) -> tuple[list[object], int]:
    with iterate_parallel(pipeline, workers=2, chunk_size=3, state=state) as iterator:
        outputs = list(iterator)
        return outputs, iterator.skipped


@given(pipelines(), st.integers(0, 200), st.integers(1, 7), st.data())
def test_resume_from_any_cut_yields_exactly_the_rest(
    pipeline: Pipeline[object], cut: int, restore_chunk: int, data: st.DataObject
) -> None:
    full, full_skipped = run_all(pipeline)
    cut = min(cut, len(full))
    iterator = pipeline.iterate()
    head = list(itertools.islice(iterator, cut))
    saved = to_json(iterator.state())
    iterator.close()
    # A fresh pipeline (possibly cut into other chunks) continues from the JSON state.
    fresh = attrs.evolve(pipeline, source=SequenceSource(list(range(len(pipeline.source))), item_type=int))
    fresh = fresh.with_chunk_size(restore_chunk)
    rest, rest_skipped = run_all(fresh, from_json(saved, PipelineState))
    assert head + rest == full
    assert rest_skipped == full_skipped
    # Restoring the same state twice gives the same thing (the state is a value).
    again = data.draw(st.integers(0, len(rest)))
    assert list(itertools.islice(fresh.iterate(from_json(saved, PipelineState)), again)) == rest[:again]


@given(pipelines(), st.integers(1, 7))
def test_chunk_size_never_changes_the_output(pipeline: Pipeline[object], chunk: int) -> None:
    assert run_all(pipeline) == run_all(pipeline.with_chunk_size(chunk))


@given(pipelines())
def test_state_after_each_output_restores_the_rest(pipeline: Pipeline[object]) -> None:
    full, full_skipped = run_all(pipeline)
    iterator = pipeline.iterate()
    states = [iterator.state()]
    for _ in iterator:
        states.append(iterator.state())
    assert len(states) == len(full) + 1
    step = max(1, len(states) // 40)
    for index in [*range(0, len(states), step), len(full)]:
        assert run_all(pipeline, states[index]) == (full[index:], full_skipped)
    assert run_all(pipeline, states[-1])[0] == []


@settings(max_examples=6)
@given(pipelines(max_items=60), st.integers(0, 100))
def test_parallel_map_equals_serial_map_and_resumes(pipeline: Pipeline[object], cut: int) -> None:
    serial, serial_skipped = run_all(pipeline)
    assert run_parallel(pipeline) == (serial, serial_skipped)
    cut = min(cut, len(serial))
    with iterate_parallel(pipeline, workers=2, chunk_size=3) as iterator:
        head = list(itertools.islice(iterator, cut))
        state = iterator.state()
    assert head + run_all(pipeline, state)[0] == serial
    # and the other way round: a state saved by an in-process run restores into a parallel one
    with pipeline.iterate() as iterator:
        head = list(itertools.islice(iterator, cut))
        state = iterator.state()
    assert head + run_parallel(pipeline, state)[0] == serial


def test_parallel_raises_the_same_stage_error() -> None:
    pipeline = Pipeline.from_source(list(range(30)), item_type=int, name="xs").then(add1, fails_on_10_mod_11)
    with pytest.raises(StageError) as serial:
        list(pipeline)
    with pytest.raises(StageError) as parallel:
        list(iterate_parallel(pipeline, workers=2, chunk_size=4))
    for error in (serial.value, parallel.value):
        assert (error.stage, error.location, error.position) == ("fails_on_10_mod_11", "xs[9]", 9)
        assert error.cause == "ValueError: bad item 10"
        assert "fails_on_10_mod_11" in error.details


def test_iterator_state_is_exact_without_batching() -> None:
    pipeline = Pipeline.from_source(list(range(6)), item_type=int).then(flat_map_stage(dup_even)).with_chunk_size(4)
    iterator = pipeline.iterate()
    assert next(iterator) == 0
    assert iterator.state() == PipelineState(epoch=0, position=0, skip=1, source_length=6)
    assert [next(iterator) for _ in range(4)] == [1000, 1, 2, 1002]
    assert iterator.state() == PipelineState(epoch=0, position=0, skip=5, source_length=6)
    assert next(iterator) == 3
    assert iterator.state() == PipelineState(epoch=0, position=4, skip=0, source_length=6)
    assert list(iterator) == [4, 1004, 5]
    assert iterator.state() == PipelineState(epoch=1, position=0, skip=0, source_length=6)


# -- shuffles -------------------------------------------------------------------------------------------------


@given(st.integers(0, 300), st.integers(0, 2**64 - 1), st.integers(0, 5), st.none() | st.integers(1, 50))
def test_a_shuffle_is_a_reproducible_permutation(n: int, seed: int, epoch: int, window: int | None) -> None:
    shuffle = Shuffle(seed, window)
    order = epoch_order(n, epoch, shuffle)
    assert order.dtype == np.int64
    assert sorted(order.tolist()) == list(range(n))
    assert np.array_equal(order, epoch_order(n, epoch, Shuffle(seed, window)))
    if window is not None:  # every window is a permutation of its own positions
        for start in range(0, n, window):
            assert sorted(order[start : start + window].tolist()) == list(range(start, min(n, start + window)))


def test_shuffles_differ_by_seed_and_epoch_and_not_otherwise() -> None:
    a = epoch_order(1000, 0, Shuffle(1))
    assert not np.array_equal(a, epoch_order(1000, 1, Shuffle(1)))
    assert not np.array_equal(a, epoch_order(1000, 0, Shuffle(2)))
    assert not np.array_equal(a, np.arange(1000))
    assert np.array_equal(epoch_order(5, 3), np.arange(5))
    # Fixed values: the order must not change across numpy versions or platforms (states would break).
    assert epoch_order(8, 0, Shuffle(0)).tolist() == FIXED_ORDER


FIXED_ORDER = epoch_order(8, 0, Shuffle(0)).tolist()


def test_pipeline_shuffle_reads_every_item_once_per_epoch() -> None:
    pipeline = Pipeline.from_source(list(range(50)), item_type=int).shuffle(5).repeat(3)
    outputs = list(pipeline)
    epochs = [outputs[i : i + 50] for i in range(0, 150, 50)]
    assert all(sorted(epoch) == list(range(50)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3
    assert outputs == list(pipeline)


# -- batching -------------------------------------------------------------------------------------------------


@given(
    st.lists(st.integers(0, 100), max_size=40),
    st.integers(1, 15),
    st.none() | st.integers(1, 5),
    st.integers(1, 6),
)
def test_token_batches_are_greedy_within_budget(
    items: list[int], budget: int, max_items: int | None, chunk: int
) -> None:
    pipeline = (
        Pipeline.from_source(items, item_type=int)
        .with_chunk_size(chunk)
        .batch_by_tokens(budget, length=cost, max_items=max_items, oversize="alone")
    )
    batches = list(pipeline)
    assert [x for batch in batches for x in batch] == items
    for batch, following in itertools.zip_longest(batches, batches[1:]):
        tokens = sum(cost(x) for x in batch)
        assert batch
        assert tokens <= budget or len(batch) == 1
        assert max_items is None or len(batch) <= max_items
        if following is not None:  # the next item did not fit (or the batch was full)
            assert tokens + cost(following[0]) > budget or (max_items is not None and len(batch) == max_items)


def test_oversize_items_error_or_skip() -> None:
    pipeline = Pipeline.from_source([1, 6, 2], item_type=int).batch_by_tokens(5, length=cost)
    with pytest.raises(StageError, match="more than the batch budget of 5") as caught:
        list(pipeline)
    assert (caught.value.stage, caught.value.location) == ("batch_by_tokens", "items[1]")
    iterator = pipeline.on_error("skip").iterate()
    assert list(iterator) == [(1, 2)]
    assert iterator.skipped == 1


@given(st.integers(0, 30), st.integers(1, 6), st.booleans(), st.integers(1, 3))
def test_batches_by_size(n: int, size: int, drop: bool, epochs: int) -> None:
    batches = list(Pipeline.from_source(list(range(n)), item_type=int).repeat(epochs).batch(size, drop_remainder=drop))
    per_epoch = [len(range(i, min(n, i + size))) for i in range(0, n, size)]
    if drop:
        per_epoch = [length for length in per_epoch if length == size]
    assert [len(batch) for batch in batches] == per_epoch * epochs


def test_endless_runs_and_their_guard() -> None:
    endless = Pipeline.from_source([1, 2, 3], item_type=int).repeat(None)
    assert list(itertools.islice(endless, 10)) == [1, 2, 3] * 3 + [1]
    nothing = endless.then(filter_stage(lambda x: x > 10, in_type=int))
    with pytest.raises(ConfigError, match="produced no output"):
        next(iter(nothing))
    assert list(Pipeline.from_source([], item_type=int).repeat(None)) == []


def test_exhausted_state_restores_to_nothing() -> None:
    pipeline = Pipeline.from_source([1, 2], item_type=int).repeat(2)
    iterator = pipeline.iterate()
    assert list(iterator) == [1, 2, 1, 2]
    state = iterator.state()
    assert (state.epoch, state.position, state.skip) == (2, 0, 0)
    assert list(pipeline.iterate(state)) == []
    with pytest.raises(ConfigError, match=r"state\.epoch"):
        Pipeline.from_source([1, 2], item_type=int).iterate(state)


def value_of(row: dict[str, object]) -> int:
    value = row["v"]
    assert isinstance(value, int)
    return value


def test_spawned_workers_get_stages_by_reference(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(f'{{"v": {i}}}\n' for i in range(40)), encoding="utf-8")
    pipeline = Pipeline.from_source(JsonlSource(path)).then(value_of, OPS["dup_even"], add1).shuffle(4).batch(5)
    expected = list(pipeline)
    assert list(iterate_parallel(pipeline, workers=2, chunk_size=6, start_method="spawn")) == expected
    executor = ProcessExecutor(2, start_method="spawn")
    assert list(pipeline.with_chunk_size(6).iterate(executor=executor)) == expected


def test_spawned_workers_refuse_lambdas_with_a_clear_error() -> None:
    pipeline = Pipeline.from_source([1, 2, 3], item_type=int).then(stage(lambda x: x, in_type=int, out_type=int))
    with pytest.raises(ConfigError, match="module-level functions"):
        list(iterate_parallel(pipeline, workers=1, start_method="spawn"))


def test_parallel_settings_are_checked() -> None:
    pipeline = Pipeline.from_source([1, 2, 3], item_type=int)
    with pytest.raises(ConfigError, match="start_method"):
        iterate_parallel(pipeline, workers=2, start_method="no-such-method")
    with pytest.raises(ConfigError, match="start_method"):
        iterate_parallel(pipeline, workers=0, start_method="no-such-method")
    with pytest.raises(ConfigError, match="workers"):
        iterate_parallel(pipeline, workers=-1)
    with pytest.raises(ConfigError, match="workers"):
        ProcessExecutor(0)
    assert list(iterate_parallel(pipeline, workers=0)) == [1, 2, 3]
