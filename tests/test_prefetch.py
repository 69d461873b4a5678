"""shell.io.prefetch: mapping on a helper thread, a bounded number of items ahead, equals the sequential loop
(results, order and errors); the overlapped conversation_datums is checked against the core's in
tests/test_conversation_datum.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow import Conversation, Message
from tinkerflow.errors import ConfigError
from tinkerflow.render import get_renderer
from tinkerflow.shell.io import prefetch
from tinkerflow.shell.io.tokenizers import offline_tokenizer
from tinkerflow.supervised import conversation_datums


class _SourceError(Exception):
    pass


class _WorkError(Exception):
    pass


def _source(values: list[int], fail_at: int | None) -> Iterator[int]:
    for index, value in enumerate(values):
        if index == fail_at:
            raise _SourceError(index)
        yield value


def _work(value: int, fail_on: int | None) -> int:
    if value == fail_on:
        raise _WorkError(value)
    return value * 7 + 1


def _run(iterator: Iterator[tuple[int, int]]) -> tuple[list[tuple[int, int]], BaseException | None]:
    got: list[tuple[int, int]] = []
    try:
        for pair in iterator:
            got.append(pair)
    except (_SourceError, _WorkError) as error:
        return got, error
    return got, None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 20), max_size=12),
    st.one_of(st.none(), st.integers(0, 12)),
    st.one_of(st.none(), st.integers(0, 20)),
    st.integers(1, 4),
    st.integers(1, 3),
)
def test_prefetch_equals_sequential(
    values: list[int], fail_at: int | None, fail_on: int | None, ahead: int, workers: int
) -> None:
    """Same pairs in the same order, and the same error after the same pairs, whatever fails where, on one or
    several helper threads."""
    expected = _run((value, _work(value, fail_on)) for value in _source(values, fail_at))
    actual = _run(
        prefetch.prefetch(_source(values, fail_at), lambda value: _work(value, fail_on), ahead=ahead, workers=workers)
    )
    assert actual[0] == expected[0]
    assert type(actual[1]) is type(expected[1])
    assert repr(actual[1]) == repr(expected[1])


def test_prefetch_runs_on_one_helper_thread_a_bounded_number_ahead() -> None:
    taken: list[int] = []
    threads: set[str] = set()

    def source() -> Iterator[int]:
        for value in range(10):
            taken.append(value)
            yield value

    def work(value: int) -> int:
        threads.add(threading.current_thread().name)
        return -value

    iterator = prefetch.prefetch(source(), work, ahead=3)
    first = next(iterator)
    assert first == (0, 0)
    assert len(taken) == 4  # 3 submitted before the first result, one more after it was taken
    assert list(iterator) == [(value, -value) for value in range(1, 10)]
    assert len(threads) == 1
    assert next(iter(threads)).startswith("tinkerflow-prefetch")
    assert threading.current_thread().name not in threads


def test_prefetch_stops_when_the_consumer_stops() -> None:
    calls: list[int] = []
    iterator = prefetch.prefetch(iter(range(100)), calls.append, ahead=2)
    next(iterator)
    iterator.close()  # cancels the pending work, joins the thread
    assert len(calls) <= 3
    assert not any(thread.name.startswith("tinkerflow-prefetch") for thread in threading.enumerate())


def test_prefetch_refuses_a_bad_ahead_at_the_call() -> None:
    with pytest.raises(ConfigError, match="ahead"):
        prefetch.prefetch([1], abs, ahead=0)
    with pytest.raises(ConfigError, match="workers"):
        prefetch.prefetch([1], abs, workers=0)


def test_several_workers_run_side_by_side_and_keep_the_order() -> None:
    """With three workers and three items ahead, the items run at once (each waits for the other two to start),
    and the results come back in the items' order though the last one finishes first."""
    started = threading.Barrier(3, timeout=10)
    finished: list[int] = []
    threads: set[str] = set()

    def work(value: int) -> int:
        threads.add(threading.current_thread().name)
        if value < 3:
            started.wait()  # raises BrokenBarrierError (the test fails) unless all three run side by side
            threading.Event().wait(0.05 * (3 - value))  # item 2 finishes first, item 0 last
        finished.append(value)
        return value * 10

    assert list(prefetch.prefetch(range(6), work, ahead=3, workers=3)) == [(v, v * 10) for v in range(6)]
    assert finished.index(2) < finished.index(1) < finished.index(0)
    assert len(threads) == 3
    assert not any(thread.name.startswith("tinkerflow-prefetch") for thread in threading.enumerate())


@pytest.mark.parametrize(
    ("value", "pooled"),
    [
        (None, True),
        ("true", True),
        ("1", True),
        ("TRUE", True),
        ("false", False),
        ("0", False),
        ("OFF", False),
        ("", False),
        ("no", False),
    ],
)
def test_encode_workers_follows_the_tokenizers_parallelism_variable(
    monkeypatch: pytest.MonkeyPatch, value: str | None, pooled: bool
) -> None:
    """One helper while the Rust library encodes batches on its own pool; one per usable CPU (at most 8) when
    TOKENIZERS_PARALLELISM turns the pool off, read as the library reads it."""
    if value is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", value)
    monkeypatch.setattr(prefetch.os, "sched_getaffinity", lambda _pid: set(range(12)), raising=False)
    assert prefetch.encode_workers() == (1 if pooled else prefetch.MAX_ENCODE_WORKERS)
    monkeypatch.setattr(prefetch.os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert prefetch.encode_workers() == (1 if pooled else 2)


def test_packed_batches_refuses_bad_workers() -> None:
    renderer = get_renderer("llama3", offline_tokenizer("llama3"))
    chats = [Conversation(messages=(Message(role="user", content="q"), Message(role="assistant", content="a")))]
    with pytest.raises(ConfigError, match="workers"):
        next(prefetch.packed_batches(renderer, chats * 3, batch_size=1, workers=0))


def test_overlapped_conversation_datums_worked_example() -> None:
    renderer = get_renderer("llama3", offline_tokenizer("llama3"))
    chats = [
        Conversation(
            messages=(Message(role="user", content=f"question {i}"), Message(role="assistant", content="a" * i))
        )
        for i in range(1, 40)
    ]
    overlapped = conversation_datums(
        chats, renderer=renderer, max_length=12, batch_size=8, packer=prefetch.packed_batches
    )
    assert overlapped == conversation_datums(chats, renderer=renderer, max_length=12, batch_size=8)
    assert len(overlapped) == len(chats)
