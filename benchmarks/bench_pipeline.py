"""Overhead of a tinkerflow pipeline against a hand-written generator doing the same work.

Three trivial stages (map, filter, map) over 1M small items, consumed at C speed (``deque(maxlen=0)``) so the
figure is the pipeline's own overhead, not the consumer's. The target (issue 8) is a ratio of at most 1.5.
Also measured: the same with batches of 32 against a hand-written batching generator, a seeded per-epoch
shuffle, the cost of taking and restoring a state, and an expensive stage run in this process against the same
run in 2 worker processes (``tinkerflow.shell.io.executors.iterate_parallel``; the outputs are checked equal).

Run: ``python benchmarks/bench_pipeline.py`` (``--quick``: 100k items, fewer repeats). The last line is one JSON
object with the figures.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Iterator

from _common import best_of, emit
from tinkerflow.pipeline import Pipeline, PipelineState, filter_stage
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.io.executors import iterate_parallel

N_ITEMS = 1_000_000
BATCH = 32
N_EXPENSIVE = 4_000
WORKERS = 2


def add1(x: int) -> int:
    return x + 1


def keep(x: int) -> bool:
    return x % 3 != 0


def double(x: int) -> int:
    return 2 * x


def hand_written(items: list[int]) -> Iterator[int]:
    for x in items:
        y = add1(x)
        if keep(y):
            yield double(y)


def hand_written_batches(items: list[int]) -> Iterator[tuple[int, ...]]:
    batch: list[int] = []
    for x in items:
        y = add1(x)
        if keep(y):
            batch.append(double(y))
            if len(batch) == BATCH:
                yield tuple(batch)
                batch = []
    if batch:
        yield tuple(batch)


def expensive(x: int) -> int:
    """About a millisecond of pure-Python work per item: a stage worth sending to a worker."""
    total = x
    for i in range(20_000):
        total = (total * 31 + i) % 1_000_003
    return total


def consume(iterable: object) -> None:
    collections.deque(iterable, maxlen=0)  # type: ignore[call-overload]  # benchmark glue: any iterable


def parallel_figures(n_items: int, repeats: int) -> dict[str, object]:
    """An expensive map stage over ``n_items`` in this process and in ``WORKERS`` worker processes."""
    pipeline = Pipeline.from_source(list(range(n_items)), item_type=int).then(expensive).with_chunk_size(64)
    assert list(iterate_parallel(pipeline, workers=WORKERS)) == list(pipeline)
    serial = best_of(lambda: consume(pipeline.iterate()), repeats=repeats)
    parallel = best_of(lambda: consume(iterate_parallel(pipeline, workers=WORKERS)), repeats=repeats)
    print(
        f"expensive stage x{n_items}: in this process {serial * 1e3:.0f} ms; {WORKERS} workers "
        f"{parallel * 1e3:.0f} ms; speed-up {serial / parallel:.2f}"
    )
    return {
        "expensive_items": n_items,
        "workers": WORKERS,
        "expensive_in_process_ms": round(serial * 1e3, 1),
        "expensive_parallel_ms": round(parallel * 1e3, 1),
        "parallel_speedup": round(serial / parallel, 3),
    }


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    n_items = N_ITEMS // 10 if quick else N_ITEMS
    repeats = 2 if quick else 5
    items = list(range(n_items))
    pipeline = Pipeline.from_source(items, item_type=int).then(add1, filter_stage(keep), double)
    batched = pipeline.batch(BATCH)
    shuffled = Pipeline.from_source(items, item_type=int).shuffle(0).then(add1, filter_stage(keep), double)

    assert list(pipeline) == list(hand_written(items))
    assert list(batched) == list(hand_written_batches(items))

    hand = best_of(lambda: consume(hand_written(items)), repeats=repeats)
    ours = best_of(lambda: consume(pipeline.iterate()), repeats=repeats)
    hand_batched = best_of(lambda: consume(hand_written_batches(items)), repeats=repeats)
    ours_batched = best_of(lambda: consume(batched.iterate()), repeats=repeats)
    ours_shuffled = best_of(lambda: consume(shuffled.iterate()), repeats=min(3, repeats))

    iterator = pipeline.iterate()
    consume(zip(range(n_items // 2), iterator, strict=False))
    calls = 10_000
    start = time.perf_counter()
    for _ in range(calls):
        state = iterator.state()
    state_us = (time.perf_counter() - start) / calls * 1e6
    start = time.perf_counter()
    next(pipeline.iterate(from_json(to_json(state), PipelineState)))
    restore_ms = (time.perf_counter() - start) * 1e3

    ratio = ours / hand
    ratio_batched = ours_batched / hand_batched
    print(f"hand-written generator: {hand * 1e3:.1f} ms; pipeline: {ours * 1e3:.1f} ms; ratio {ratio:.3f}")
    print(f"batched x{BATCH}: hand-written {hand_batched * 1e3:.1f} ms; pipeline {ours_batched * 1e3:.1f} ms")
    print(f"per-epoch shuffle: {ours_shuffled * 1e3:.1f} ms; state(): {state_us:.2f} us; restore: {restore_ms:.2f} ms")
    parallel = parallel_figures(N_EXPENSIVE // 4 if quick else N_EXPENSIVE, repeats)
    emit(
        "pipeline_overhead",
        {
            "items": n_items,
            "quick": quick,
            "stages": 3,
            "hand_written_ms": round(hand * 1e3, 2),
            "pipeline_ms": round(ours * 1e3, 2),
            "ratio": round(ratio, 3),
            "target_ratio": 1.5,
            "within_target": ratio <= 1.5,
            "batched_hand_written_ms": round(hand_batched * 1e3, 2),
            "batched_pipeline_ms": round(ours_batched * 1e3, 2),
            "batched_ratio": round(ratio_batched, 3),
            "shuffled_pipeline_ms": round(ours_shuffled * 1e3, 2),
            "state_us": round(state_us, 3),
            "restore_first_item_ms": round(restore_ms, 3),
            **parallel,
        },
    )


if __name__ == "__main__":
    main()
