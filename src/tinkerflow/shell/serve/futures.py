"""Futures of the server: each request that does model work gets an id at once and its answer later. (Shell.)

:class:`FutureBoard` records a future in the :class:`~tinkerflow.shell.serve.store.Store` before the work starts,
stores the encoded answer (or the error) when it finishes, and lets ``/api/v1/retrieve_future`` wait for it without
polling (a long poll bounded by a timeout). It also bounds the number of futures in flight: past ``max_pending``
a new request is refused with 429 and the SDK retries it later, so a burst never grows memory without limit.

A request that repeats an ``(owner, seq_id)`` already seen (a client that lost the answer to its submission and
sent it again) gets the first request's id back instead of running twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import attrs

from tinkerflow.errors import TinkerflowError
from tinkerflow.shell.serve.errors import ServeError

if TYPE_CHECKING:
    from tinkerflow.shell.backends.protocol import APIFuture
    from tinkerflow.shell.serve.store import FutureRecord, Store

__all__ = ["JSON", "PROTOBUF", "FutureBoard", "Launched", "Payload"]

log = logging.getLogger("tinkerflow.serve")

T = TypeVar("T")
_LOST: Final = "the server lost this request's answer (it could not be stored, or the server is stopping); resubmit."
PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"


@attrs.frozen
class Payload:
    """An encoded answer: its content type and body."""

    content_type: str
    body: bytes


@attrs.frozen
class Launched:
    """What a submission answers: the future's id (an earlier one for a repeated submission)."""

    request_id: str
    repeated: bool


class FutureBoard:
    """Futures in flight and their durable records (see the module docstring)."""

    def __init__(self, store: Store, max_pending: int) -> None:
        self._store = store
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: dict[str, concurrent.futures.Future[None]] = {}
        self._closed = False
        self._write_lock = threading.Lock()  # held while an answer is written, so close() waits for the write

    def close(self) -> None:
        """Stop recording answers: work that finishes after this leaves its future pending in the store, and the
        next start of the server marks it failed (its answer is lost with the process, as in a crash)."""
        with self._write_lock, self._lock:
            self._closed = True

    @property
    def pending(self) -> int:
        """How many futures are in flight."""
        with self._lock:
            return len(self._pending)

    def launch(
        self,
        *,
        owner: str,
        seq_id: int | None,
        kind: str,
        start: Callable[[], APIFuture[T]],
        encode: Callable[[T], Payload],
    ) -> Launched:
        """Record a future, start its work and store its answer when the work finishes.

        ``start`` runs now, in the caller's thread (so requests of one client start in the order they arrive); a
        :class:`~tinkerflow.errors.TinkerflowError` it raises is the caller's mistake and becomes a 400 with no
        future left behind. ``encode`` runs when the work is done, on the worker's thread.
        """
        with self._lock:
            if self._closed:
                raise ServeError(503, "server", "the server is shutting down; retry against its next start.")
            if len(self._pending) >= self.max_pending:
                raise ServeError(
                    429,
                    "queue",
                    f"the server has {len(self._pending)} requests in flight (its limit, --max-pending); "
                    "the SDK retries this request after a pause.",
                )
            request_id = f"{kind}-{secrets.token_hex(12)}"
            earlier = self._store.add_future(request_id, owner, seq_id, kind)
            if earlier is not None:
                return Launched(earlier, repeated=True)
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._pending[request_id] = done
        try:
            work = start()
        except TinkerflowError as error:
            self._forget(request_id)
            raise ServeError(400, getattr(error, "field", kind), str(error)) from error
        except BaseException:
            self._forget(request_id)
            raise
        work.future().add_done_callback(lambda finished: self._finish(request_id, finished, encode))
        return Launched(request_id, repeated=False)

    def _forget(self, request_id: str) -> None:
        self._store.discard_future(request_id)
        with self._lock:
            done = self._pending.pop(request_id)
        done.set_result(None)

    def _finish(self, request_id: str, finished: concurrent.futures.Future[T], encode: Callable[[T], Payload]) -> None:
        payload: Payload | None = None
        error_text, category = "", "server"
        try:
            if finished.cancelled():
                error_text = "the request was cancelled."
            elif (error := finished.exception()) is not None:
                error_text, category = _describe(error), _category(error)
            else:
                payload = encode(finished.result())
        except BaseException as error:  # an answer that cannot be encoded still ends the future
            payload, error_text = None, f"the server could not encode the answer: {_describe(error)}"
        try:
            with self._write_lock:  # never after close(): the store may be closed by then (the record stays pending)
                if not self._closed:
                    self._store_answer(request_id, payload, error_text, category)
        finally:
            with self._lock:
                done = self._pending.pop(request_id, None)
            if done is not None:
                done.set_result(None)

    def _store_answer(self, request_id: str, payload: Payload | None, error_text: str, category: str) -> None:
        try:
            if payload is not None:
                self._store.finish_future(request_id, payload.content_type, payload.body)
            else:
                self._store.fail_future(request_id, error_text, category)
        except Exception as error:  # e.g. a full disk: record the failure if that much still fits
            log.exception("could not store the answer of %s", request_id)
            with contextlib.suppress(Exception):
                self._store.fail_future(
                    request_id, f"the server could not store the answer: {_describe(error)}", "server"
                )

    async def wait(self, request_id: str, timeout: float) -> FutureRecord:
        """The future's record once it has finished, or its pending record after ``timeout`` seconds.

        Raises:
            ServeError: 404 when no future has this id.
        """
        record = self._store.future(request_id)
        if record is None:
            raise ServeError(404, "request_id", f"no request {request_id!r} on this server.")
        if record.state != "pending":
            return record
        with self._lock:
            done = self._pending.get(request_id)
        if done is not None:
            await asyncio.wait({asyncio.wrap_future(done)}, timeout=timeout)
        finished = self._store.future(request_id)
        if finished is None:  # deleted meanwhile: cannot happen while the server runs, but never answer None
            raise ServeError(404, "request_id", f"no request {request_id!r} on this server.")
        if finished.state == "pending" and done is None:
            # pending in the store but in flight nowhere: its answer could not be stored (or the server is
            # stopping). Say so instead of "try again", which the SDK would repeat at once, forever.
            return attrs.evolve(finished, state="failed", error=_LOST, category="server")
        return finished

    def wait_all(self, timeout: float) -> Sequence[str]:
        """Block until the futures in flight finish (at most ``timeout`` seconds); returns the ids still pending."""
        with self._lock:
            waiting = dict(self._pending)
        concurrent.futures.wait(list(waiting.values()), timeout=timeout)
        with self._lock:
            return sorted(set(waiting) & set(self._pending))


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _category(error: BaseException) -> str:
    return "user" if isinstance(error, TinkerflowError) else "server"
