"""Deadlines of rollouts (shell): awaiting until a loop time, and environment calls on a worker thread.

:func:`until` awaits something until a deadline of the running loop's clock, and counts a call that returned only
after the deadline (it blocked the loop) as late too: a :class:`DeadlineError`, never a success.

:class:`EnvThread` runs one episode's environment calls on a private event loop on a daemon thread, so a call
that blocks (a synchronous ``time.sleep``, a runaway grader) can be timed out like any other:

* the rollout loop first waits, without running anything else, until the worker has begun the call (at most
  ``ENV_START_WAIT_S``: a thread that has not even started is a busy machine, not a blocking environment), then
  until the call finishes or first yields (at most ``ENV_INLINE_WAIT_S``). A call that finishes within that
  window resumes its episode exactly where running it on the loop would have (same loop round), which keeps
  runs reproducible: the members of a group still reach a batching sampler together;
* a call that yields (awaits I/O) or still runs is then awaited without blocking the other episodes, until the
  deadline;
* the call runs in a copy of the episode task's context, and the context variables it sets are set in the
  episode's task when it returns, as if it had run there (an environment may pass per-episode state, e.g. a
  sampling seed, to the completer that way);
* past the deadline (or when the episode is cancelled) the call is cancelled on its loop, at its next ``await``,
  and given ``UNWIND_S`` to run its ``except``/``finally`` blocks. A thread cannot be killed: a call that never
  yields is **abandoned** (its daemon thread finishes on its own; its loop closes once the call returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Final, Generic, TypeVar

__all__ = ["ENV_INLINE_WAIT_S", "ENV_START_WAIT_S", "UNWIND_S", "DeadlineError", "EnvThread", "until", "within"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds the rollout loop waits, doing nothing else, for an environment call that has begun on its worker
#: thread and has neither finished nor yielded; a call that finishes within it resumes its episode as if it had
#: run on the loop.
ENV_INLINE_WAIT_S: Final = 0.5
#: Seconds the rollout loop waits for the worker thread to begin a call (thread start-up on a busy machine).
ENV_START_WAIT_S: Final = 5.0
#: Seconds a cancelled or timed-out environment call gets to unwind before its episode goes on without it.
UNWIND_S: Final = 0.5


class DeadlineError(TimeoutError):
    """An awaited call ran past its deadline (a ``TimeoutError``, told apart from an environment's own)."""


def _discard(awaitable: Awaitable[object]) -> None:
    """Close a coroutine that will never be awaited (so Python does not warn)."""
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


async def until(awaitable: Awaitable[T], deadline: float | None, message: str) -> T:
    """``await awaitable`` until the running loop's time ``deadline`` (``None``: no limit); past it (also when the
    awaitable returned, but only after the deadline: it blocked the loop), raise :class:`DeadlineError` with
    ``message``. An awaitable's own ``TimeoutError`` reaches the caller unchanged."""
    if deadline is None:
        return await awaitable
    loop = asyncio.get_running_loop()
    if loop.time() >= deadline:
        _discard(awaitable)
        raise DeadlineError(message)
    limit = asyncio.timeout_at(deadline)
    try:
        async with limit:
            result = await awaitable
    except TimeoutError as error:
        if limit.expired():
            raise DeadlineError(message) from error
        raise
    if loop.time() > deadline:
        raise DeadlineError(message)
    return result


async def within(awaitable: Awaitable[T], seconds: float | None, message: str) -> T:
    """``await awaitable`` within ``seconds`` from now (see :func:`until`)."""
    if seconds is None:
        return await awaitable
    return await until(awaitable, asyncio.get_running_loop().time() + seconds, message)


class _Call(Generic[T]):
    """One environment call on an :class:`EnvThread`: its outcome, and who to tell when it is known.

    Started and finished on the worker loop, read on the rollout loop (guarded by a lock).
    """

    def __init__(self, start: Callable[[], Awaitable[T]], context: contextvars.Context) -> None:
        self._start = start
        self.context = context
        self._lock = threading.Lock()
        self.begun = threading.Event()  # the worker began the call
        self.settled = threading.Event()  # it finished, or yielded for the first time
        self._finished = False
        self._value: T | None = None
        self._error: BaseException | None = None
        self._notify: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._task: asyncio.Task[T] | None = None

    def begin(self) -> None:
        """On the worker loop: start the call, and note when it first yields."""

        async def run() -> T:
            try:
                return await self._start()  # the environment's method is called here, on the worker thread
            except (KeyboardInterrupt, SystemExit) as error:  # never let an environment stop the worker loop
                raise RuntimeError(f"the environment raised {type(error).__name__}") from error

        loop = asyncio.get_running_loop()
        self._task = loop.create_task(run(), context=self.context)
        self._task.add_done_callback(self._finish)
        loop.call_soon(self._probe)  # runs right after the call's first step: it finished or it yielded
        self.begun.set()

    def _probe(self) -> None:
        if self._task is not None and self._task.done():
            self._finish(self._task)
        self.settled.set()

    def _finish(self, task: asyncio.Task[T]) -> None:
        with self._lock:
            if self._finished:
                return
            if task.cancelled():
                self._error = RuntimeError("the environment's call was cancelled")
            elif task.exception() is not None:
                self._error = task.exception()
            else:
                self._value = task.result()
            self._finished = True
            notify = self._notify
        self.settled.set()
        if notify is not None:
            loop, future = notify
            with contextlib.suppress(RuntimeError):  # the rollout loop is gone: nobody waits any more
                loop.call_soon_threadsafe(_resolve, future)

    def cancel(self) -> None:
        """On the worker loop: cancel the call (it stops at its next ``await``)."""
        if self._task is not None:
            self._task.cancel()

    def attach(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None] | None:
        """A future of ``loop`` resolved when the call finishes; ``None`` when it has finished already."""
        with self._lock:
            if self._finished:
                return None
            future = loop.create_future()
            self._notify = (loop, future)
            return future

    def outcome(self) -> T:
        """The finished call's value (or its error, raised)."""
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when the call finished without error


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_UNSET: Final = object()


def _adopt(context: contextvars.Context) -> None:
    """Set in the running task's context the variables a finished call set in ``context`` (its copy)."""
    for variable, value in context.items():
        if variable.get(_UNSET) is not value:
            variable.set(value)


def _left(seconds: float, deadline: float | None, now: float) -> float:
    return seconds if deadline is None else min(seconds, max(0.0, deadline - now))


class EnvThread:
    """A private event loop on a daemon thread, where one episode's environment calls run (see the module
    docstring). :meth:`close` it when the episode ends; a thread blocked in an abandoned call ends when the call
    returns."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="tinkerflow-env", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            leftover = asyncio.all_tasks(loop)  # tasks the environment started and left behind
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.wait(leftover, timeout=UNWIND_S))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:  # best effort: the episode is over either way
            logger.debug("closing an environment thread failed", exc_info=True)
        finally:
            loop.close()

    async def call(self, start: Callable[[], Awaitable[T]], deadline: float | None, message: str) -> T:
        """``await start()`` on the worker loop, until the rollout loop's time ``deadline`` (see :func:`until`)."""
        rollout = asyncio.get_running_loop()
        call = _Call(start, contextvars.copy_context())
        self._loop.call_soon_threadsafe(call.begin)
        # these waits block the rollout loop, as the call itself would if it ran there
        call.begun.wait(_left(ENV_START_WAIT_S, deadline, rollout.time()))
        call.settled.wait(_left(ENV_INLINE_WAIT_S, deadline, rollout.time()))
        finished = call.attach(rollout)
        if finished is not None:  # it yielded or still runs: wait without blocking the other episodes
            limit = asyncio.timeout_at(deadline)
            try:
                async with limit:
                    await asyncio.shield(finished)
            except (TimeoutError, asyncio.CancelledError) as error:
                self._loop.call_soon_threadsafe(call.cancel)
                await asyncio.wait({finished}, timeout=UNWIND_S)  # let it unwind; a blocked thread is abandoned
                if isinstance(error, TimeoutError) and limit.expired():
                    raise DeadlineError(message) from None
                raise
        if deadline is not None and rollout.time() > deadline:
            raise DeadlineError(message)  # it returned, but late: never a success
        _adopt(call.context)
        return call.outcome()

    def close(self) -> None:
        """Stop the worker loop once its current call (if any) returns."""
        with contextlib.suppress(RuntimeError):  # already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
