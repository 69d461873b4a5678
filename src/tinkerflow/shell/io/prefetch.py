"""Work ahead on helper threads (shell: starts threads).

:func:`prefetch` maps a function over an iterator on background threads (one by default), a bounded number of
items ahead, and yields each item with its result in order: while the consumer (this thread) processes item ``k``
and produces the next items, the helpers work on the items before. It pays off when the function releases the GIL
(a Rust tokenizer, numpy, I/O); the results and the errors are those of the sequential loop.

:func:`packed_batches` is the core's :func:`tinkerflow.render.packing.packed_batches` with the tokenizer run this
way: the core renders the next chunks while the tokenizer encodes chunk ``k``, and packs chunk ``k`` when its
encoding is done. It is a :class:`tinkerflow.render.packing.BatchPacker`, so the overlapped datums are
``tinkerflow.supervised.conversation_datums(conversations, renderer=r, packer=prefetch.packed_batches)``: the same
datums, bit for bit, or the same error.

How many helpers (:func:`encode_workers`): the Rust ``tokenizers`` library encodes a batch on its own thread pool
unless ``TOKENIZERS_PARALLELISM`` turns that off. With its pool, one helper feeds it. With it off (as training
scripts often set, to avoid its warning on ``fork``), each batch is encoded on the calling thread, so one helper
per CPU encodes chunks side by side. On two cores (``benchmarks/bench_render.py``) that path rendered in 0.97-1.0x
the wall-clock time of the library's own pool on the bare texts and 1.10-1.15x that of the bare texts on two
helper threads; one helper feeding the pool took 1.07-1.29x the pool's time (its workers compete with the
rendering thread for the two cores).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from tinkerflow._validate import positive_int
from tinkerflow.render import Renderer, TrainOn, TrainOnWhat
from tinkerflow.render.packing import PackedBatch, encode_chunk, pack_chunk, render_chunks
from tinkerflow.render.plan import ConversationLike
from tinkerflow.tokenizers import FastTokenizer

__all__ = ["AHEAD", "encode_workers", "packed_batches", "prefetch"]

T = TypeVar("T")
R = TypeVar("R")

AHEAD = 2
"""Items submitted to the helper thread ahead of the one the consumer waits for, by default."""

MAX_ENCODE_WORKERS = 8
"""At most this many helper threads encode at once (:func:`encode_workers`)."""

_SEQUENTIAL = frozenset({"", "off", "false", "f", "no", "n", "0"})
"""``TOKENIZERS_PARALLELISM`` values (lower-cased) with which the Rust library encodes a batch on one thread."""


def encode_workers() -> int:
    """Helper threads worth giving a FastTokenizer's batch calls in this process: 1 while the Rust library runs
    each batch on its own thread pool (``TOKENIZERS_PARALLELISM`` unset or on, its default); the CPUs this process
    may use (at most :data:`MAX_ENCODE_WORKERS`) when the variable turns that pool off (``false``, ``0``, ``off``,
    ... as the library reads it).

    A process forked after the library's pool was used turns the pool off without the variable: it gets one
    helper here (the previous, slower but correct behaviour).
    """
    value = os.environ.get("TOKENIZERS_PARALLELISM")
    if value is None or value.lower() not in _SEQUENTIAL:
        return 1
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_ENCODE_WORKERS, available))


def prefetch(
    items: Iterable[T], function: Callable[[T], R], *, ahead: int = AHEAD, workers: int = 1
) -> Generator[tuple[T, R], None, None]:
    """``(item, function(item))`` for each item, in order, ``function`` running on ``workers`` helper threads.

    Up to ``ahead`` items are taken from ``items`` (on the consumer's thread) and submitted before the first
    result is awaited; after each result is taken, the next item is taken and submitted, so the helpers work
    while the consumer handles a result (``ahead`` below ``workers`` leaves helpers idle). The output equals
    ``((item, function(item)) for item in items)``:

    * an exception raised by ``function`` is raised when its item's turn comes;
    * an exception raised by ``items`` itself is raised after the results of the items before it;
    * nothing runs on the helper thread once the consumer stops iterating: ``close()`` (or dropping the
      generator) cancels the pending work and joins the threads.

    Raises:
        ConfigError: ``ahead`` or ``workers`` is not a positive int (at the call, not at the first ``next``).
    """
    ahead = positive_int(ahead, "prefetch", "ahead")
    return _prefetch(iter(items), function, ahead, positive_int(workers, "prefetch", "workers"))


def _prefetch(
    source: Iterator[T], function: Callable[[T], R], ahead: int, workers: int
) -> Generator[tuple[T, R], None, None]:
    """:func:`prefetch`'s generator (the arguments checked)."""
    queued: deque[tuple[T, Future[R]]] = deque()
    failure: Exception | None = None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinkerflow-prefetch") as pool:

        def take() -> None:
            nonlocal failure
            while failure is None and len(queued) < ahead:
                try:
                    item = next(source)
                except StopIteration:
                    return
                except Exception as caught:  # raised in order, after the results of the earlier items
                    failure = caught
                    return
                queued.append((item, pool.submit(function, item)))

        try:
            take()
            while queued:
                item, future = queued.popleft()
                take()
                yield item, future.result()
        finally:
            for _, pending in queued:
                pending.cancel()
    if failure is not None:
        raise failure


def packed_batches(
    renderer: Renderer,
    conversations: Sequence[ConversationLike],
    train_on: TrainOn = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
    *,
    batch_size: int = 64,
    workers: int | None = None,
) -> Iterator[PackedBatch]:
    """:func:`tinkerflow.render.packing.packed_batches` (same batches, same errors in the same order), each
    chunk's text tokenized on helper threads while the next chunks are rendered.

    ``workers``: helper threads (default :func:`encode_workers`); up to ``workers + 1`` chunks are encoded ahead.
    Sequential when there is only one chunk, or when the tokenizer is not a
    :class:`~tinkerflow.tokenizers.FastTokenizer` (the one known to be safe to share between threads).

    Raises:
        ConfigError: ``workers`` is given and is not a positive int (at the first ``next``).
    """
    helpers = encode_workers() if workers is None else positive_int(workers, "packed_batches", "workers")
    chunks = render_chunks(renderer, conversations, train_on, batch_size=batch_size)
    tokenizer = renderer.tokenizer
    if len(conversations) <= max(1, batch_size) or not isinstance(tokenizer, FastTokenizer):
        for chunk in chunks:
            yield pack_chunk(renderer, chunk, encode_chunk(tokenizer, chunk))
        return
    ahead = max(AHEAD, helpers + 1)
    for chunk, encoded in prefetch(chunks, lambda chunk: encode_chunk(tokenizer, chunk), ahead=ahead, workers=helpers):
        yield pack_chunk(renderer, chunk, encoded)
