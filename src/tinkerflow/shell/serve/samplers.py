"""Sampling sessions of the server: a session names fixed weights, its requests run on the local sampler. (Shell.)

A session is created from a base model or a ``tinker://`` sampler (or training) checkpoint, or by
``save_weights_and_get_sampling_client`` from a training run's current weights. Its sampler loads in the
background; requests queue behind the load, then run first in, first out on the sampler's own thread, so sampling
goes on while training runs. Sessions made from a base model or a checkpoint are records in the store and come
back after a restart (reloaded on first use); a session made from a run's in-memory weights does not.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from tinkerflow.errors import TinkerflowError
from tinkerflow.shell.backends.local import LocalBackend
from tinkerflow.shell.backends.local.backend import AnySamplingClient
from tinkerflow.shell.backends.local.checkpoint import LocalPath, read_meta
from tinkerflow.shell.backends.protocol import APIFuture
from tinkerflow.shell.serve.errors import ServeError
from tinkerflow.shell.serve.paths import to_local
from tinkerflow.shell.serve.store import SamplerRecord, Store

if TYPE_CHECKING:
    from tinkerflow.shell.serve.catalog import ModelCatalog

__all__ = ["SamplerPool", "chain", "close_later"]

A = TypeVar("A")
B = TypeVar("B")


def chain(first: APIFuture[A], then: Callable[[A], APIFuture[B]]) -> APIFuture[B]:
    """A future of ``then(value of first)``: starts the second call when the first finishes (errors propagate)."""
    out: concurrent.futures.Future[B] = concurrent.futures.Future()

    def relay(second: concurrent.futures.Future[B]) -> None:
        error = second.exception()
        if error is not None:
            out.set_exception(error)
        else:
            out.set_result(second.result())

    def start(done: concurrent.futures.Future[A]) -> None:
        error = done.exception()
        if error is not None:
            out.set_exception(error)
            return
        try:
            then(done.result()).future().add_done_callback(relay)
        except BaseException as exc:  # the second call's refusal belongs to whoever awaits
            out.set_exception(exc)

    first.future().add_done_callback(start)
    return APIFuture(out)


def close_later(samplers: list[APIFuture[AnySamplingClient]]) -> None:
    """Close loaded samplers on a background thread, each after its queued work (never on the event loop)."""
    if not samplers:
        return

    def close_all() -> None:
        for sampler in samplers:
            try:
                sampler.result().close()
            except Exception:  # a sampler that failed to load has nothing to close
                continue

    threading.Thread(target=close_all, name="tinkerflow-serve-close", daemon=True).start()


class SamplerPool:
    """The sampling sessions of one server (see the module docstring)."""

    def __init__(self, backend: LocalBackend, store: Store, catalog: ModelCatalog, *, max_loaded: int = 16) -> None:
        self._backend = backend
        self._store = store
        self._catalog = catalog
        self.max_loaded = max_loaded
        self._lock = threading.Lock()
        # least recently used first; an RL loop makes a new sampler every step, so only the last few stay loaded
        self._loaded: collections.OrderedDict[str, APIFuture[AnySamplingClient]] = collections.OrderedDict()

    def _keep(self, sampler_id: str, sampler: APIFuture[AnySamplingClient]) -> APIFuture[AnySamplingClient]:
        """Hold ``sampler`` (or the one already held under the id) as the most recently used; past ``max_loaded``
        the least recently used are dropped and closed in the background once their queued work is done."""
        with self._lock:
            kept = self._loaded.setdefault(sampler_id, sampler)
            self._loaded.move_to_end(sampler_id)
            evicted = []
            while len(self._loaded) > self.max_loaded:
                evicted.append(self._loaded.popitem(last=False)[1])
        close_later(evicted)
        return kept

    def anonymous(self, *, base_model: str | None, model_path: str | None) -> str:
        """The session of a sample request that names its weights instead of a session (one per weights)."""
        digest = hashlib.sha256(f"{base_model}\n{model_path}".encode()).hexdigest()[:16]
        return self.create("anonymous", int(digest, 16), base_model=base_model, model_path=model_path)

    def create(self, session_id: str, seq_id: int | None, *, base_model: str | None, model_path: str | None) -> str:
        """A new session (``<session>:sample:<seq id>``, as the service names them) on a base model or a
        ``tinker://`` checkpoint; its sampler starts loading now. A repeated ``(session, seq id)`` answers the id
        it got the first time."""
        sampler_id = f"{session_id}:sample:{seq_id if seq_id is not None else secrets.token_hex(6)}"
        if self._store.sampler(sampler_id) is not None:
            return sampler_id
        if model_path is None and base_model is None:
            raise ServeError(400, "base_model", "give base_model or model_path.")
        if model_path is not None:
            source, local = None, to_local(model_path, "model_path")
            served = self._checkpoint_base(local, model_path)
        else:
            source, local, served = self._catalog.source(base_model), None, str(base_model)
        self._keep(sampler_id, self._load(source, local))
        self._store.add_sampler(SamplerRecord(sampler_id, session_id, served, model_path, time.time()))
        return sampler_id

    def adopt(self, sampler_id: str, session_id: str, sampler: APIFuture[AnySamplingClient], base_model: str) -> None:
        """Register a sampler made from a training run's current weights (lost on restart)."""
        self._keep(sampler_id, sampler)
        self._store.add_sampler(SamplerRecord(sampler_id, session_id, base_model, None, time.time(), from_run=True))

    def get(self, sampler_id: object) -> APIFuture[AnySamplingClient]:
        """The (maybe still loading) sampler of a session; reloads a stored session after a restart.

        Raises:
            ServeError: 404 for an unknown session or one whose in-memory weights went with a restart.
        """
        if not isinstance(sampler_id, str):
            raise ServeError(400, "sampling_session_id", f"expected a string, got {sampler_id!r}.")
        record = self._store.sampler(sampler_id)
        if record is None:
            raise ServeError(404, "sampling_session_id", f"no sampling session {sampler_id!r} on this server.")
        session = self._store.session(record.session_id)
        if session is not None and session.finished:
            raise ServeError(410, "sampling_session_id", f"its session {record.session_id!r} has ended.")
        with self._lock:
            loaded = self._loaded.get(sampler_id)
            if loaded is not None:
                self._loaded.move_to_end(sampler_id)
                return loaded
        if record.from_run:
            raise ServeError(
                404,
                "sampling_session_id",
                f"sampling session {sampler_id!r} held a training run's in-memory weights, which are no longer "
                f"loaded (a restart, or more than {self.max_loaded} samplers loaded since: --max-samplers); "
                "create a sampling client from a saved tinker:// path.",
            )
        source = None if record.model_path is not None else self._catalog.source(record.base_model)
        local = None if record.model_path is None else to_local(record.model_path, "model_path")
        return self._keep(sampler_id, self._load(source, local))

    def release(self, sampler_ids: list[str]) -> list[APIFuture[AnySamplingClient]]:
        """Forget the loaded samplers of ``sampler_ids`` (a stored session reloads on its next request); returns
        them so the caller can close them off the event loop."""
        with self._lock:
            return [self._loaded.pop(sampler_id) for sampler_id in sampler_ids if sampler_id in self._loaded]

    def release_all(self) -> list[APIFuture[AnySamplingClient]]:
        """Forget every loaded sampler (the server is stopping); returns them to close."""
        with self._lock:
            loaded = list(self._loaded.values())
            self._loaded.clear()
        return loaded

    def record(self, sampler_id: str) -> SamplerRecord:
        record = self._store.sampler(sampler_id)
        if record is None:
            raise ServeError(404, "sampler_id", f"no sampling session {sampler_id!r} on this server.")
        return record

    def _load(self, source: str | None, local_path: str | None) -> APIFuture[AnySamplingClient]:
        try:
            if local_path is not None:
                return self._backend.create_sampling_client(model_path=local_path)
            return self._backend.create_sampling_client(base_model=source)
        except TinkerflowError as error:
            raise ServeError(400, "model_path" if local_path else "base_model", str(error)) from error

    def _checkpoint_base(self, local_path: str, tinker_path: str) -> str:
        """The served base model name of a checkpoint (read from its metadata; 404 when it does not exist)."""
        try:
            meta = read_meta(LocalPath.parse(local_path).directory(self._backend.checkpoint_dir), tinker_path)
        except TinkerflowError as error:
            raise ServeError(404, "model_path", str(error)) from error
        return self._catalog.served_name(meta.base_model)
