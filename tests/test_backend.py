"""APIFuture (blocking and async forms) and the per-client FIFO worker that gives submission order."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow.errors import ValidationError
from tinkerflow.shell.backends.protocol import APIFuture, Backend, SamplingClient, TrainingClient, Worker
from tinkerflow.tokenizers import Tokenizer


def test_completed_and_failed_futures() -> None:
    assert APIFuture.completed(3).result() == 3
    assert APIFuture.completed(3).done()
    failed = APIFuture.failed(ValidationError("x", "y", "bad."))
    with pytest.raises(ValidationError, match="bad"):
        failed.result()


def test_await_and_result_async() -> None:
    async def main() -> tuple[int, int]:
        return await APIFuture.completed(1), await APIFuture.completed(2).result_async(timeout=1.0)

    assert asyncio.run(main()) == (1, 2)


def test_await_does_not_block_the_event_loop() -> None:
    pending: concurrent.futures.Future[int] = concurrent.futures.Future()
    future: APIFuture[int] = APIFuture(pending)

    async def main() -> list[str]:
        events: list[str] = []

        async def other() -> None:
            events.append("other ran")
            pending.set_result(7)

        waiter = asyncio.ensure_future(future.result_async())
        await other()
        events.append(f"got {await waiter}")
        return events

    assert asyncio.run(main()) == ["other ran", "got 7"]


def test_result_timeout() -> None:
    future: APIFuture[int] = APIFuture(concurrent.futures.Future())
    with pytest.raises(TimeoutError):
        future.result(timeout=0.01)


def test_map_converts_and_propagates_errors() -> None:
    source: concurrent.futures.Future[int] = concurrent.futures.Future()
    mapped = APIFuture(source).map(lambda value: value * 2)
    assert not mapped.done()
    source.set_result(21)
    assert mapped.result(timeout=1) == 42
    assert APIFuture.failed(KeyError("k")).map(lambda value: value).future().exception() is not None
    broken = APIFuture.completed(1).map(lambda value: 1 // 0)
    with pytest.raises(ZeroDivisionError):
        broken.result()


@settings(max_examples=20)
@given(st.lists(st.floats(0, 0.002), min_size=1, max_size=25))
def test_worker_applies_requests_in_submission_order(delays: list[float]) -> None:
    worker = Worker("order-test")
    applied: list[int] = []
    lock = threading.Lock()

    def job(index: int, delay: float) -> int:
        time.sleep(delay)
        with lock:
            applied.append(index)
        return index

    futures = [worker.submit(lambda i=i, d=d: job(i, d)) for i, d in enumerate(delays)]
    assert [future.result(timeout=10) for future in futures] == list(range(len(delays)))
    assert applied == list(range(len(delays)))
    worker.close()


def test_local_and_tinker_backends_satisfy_the_protocols() -> None:
    """Structural check (the type checker does the real one): every protocol method exists on both backends."""
    from tinkerflow.shell.backends.hf_tokenizer import HFTokenizer
    from tinkerflow.shell.backends.local.backend import LocalBackend, LocalSamplingClient, LocalTrainingClient
    from tinkerflow.shell.backends.local.models import ByteTokenizer
    from tinkerflow.shell.backends.tinker import TinkerBackend, TinkerSamplingClient, TinkerTrainingClient

    pairs = [
        (Backend, (LocalBackend, TinkerBackend)),
        (TrainingClient, (LocalTrainingClient, TinkerTrainingClient)),
        (SamplingClient, (LocalSamplingClient, TinkerSamplingClient)),
    ]
    for protocol, implementations in pairs:
        names = [name for name in vars(protocol) if not name.startswith("_")]
        for implementation in implementations:
            missing = [name for name in names if not hasattr(implementation, name)]
            assert missing == [], f"{implementation.__name__} lacks {missing}"

    class Sized:
        eos_token_id = 2

        def __len__(self) -> int:
            return 10

    assert isinstance(ByteTokenizer(300), Tokenizer)
    assert isinstance(HFTokenizer(Sized(), "x"), Tokenizer)
