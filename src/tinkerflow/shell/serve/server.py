"""Run the server: build the store, backend and engine, serve the app with uvicorn. (Shell.)

:func:`serve` blocks (the ``tinkerflow serve`` command); :class:`ServerThread` runs a server on a background thread
for tests and notebooks, on ``127.0.0.1`` and a free port, and stops it when its ``with`` block ends::

    with ServerThread(ServerConfig(store=tmp_path / "store", api_key="tml-local")) as server:
        client = tinker.ServiceClient(base_url=server.base_url, api_key="tml-local")
"""

from __future__ import annotations

import fcntl
import logging
import pathlib
import socket
import threading
import time
from collections.abc import Sequence
from typing import IO, Final

import attrs
import uvicorn

from tinkerflow._validate import positive_int
from tinkerflow.errors import ConfigError
from tinkerflow.shell.backends.local import LocalBackend
from tinkerflow.shell.serve.app import create_app
from tinkerflow.shell.serve.catalog import ModelCatalog
from tinkerflow.shell.serve.engine import Engine
from tinkerflow.shell.serve.hub_cache import install_tokenizers
from tinkerflow.shell.serve.store import Store

__all__ = ["DEFAULT_KEY", "ServerConfig", "ServerThread", "build_engine", "serve"]

log = logging.getLogger("tinkerflow.serve")
#: The key a server accepts when none is given (the SDK requires keys to start with ``tml-``).
DEFAULT_KEY: Final = "tml-tinkerflow-local"
_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """How to run a server.

    Attributes:
        store: folder of the server's database (``server.sqlite3``) and checkpoints (``checkpoints/``).
        host: the interface to bind; ``127.0.0.1`` unless you mean to expose it.
        port: the port; 0 picks a free one.
        api_key: the key every request must carry (``X-API-Key``; the SDK sends ``TINKER_API_KEY``).
        models: ``NAME=SOURCE`` entries served on top of the defaults (see :mod:`~tinkerflow.shell.serve.catalog`).
        only_listed_models: serve only ``models`` (no embedded or tiny defaults).
        max_pending: requests in flight before new ones are refused with 429.
        max_body_mb: the largest request body accepted, in MiB.
        device: the local backend's device (``"cpu"``, ``"cuda"``; default CUDA when available).
        max_tokens_per_batch: the local backend's micro-batch budget.
        session_timeout: seconds without a heartbeat after which a session ends and its runs' memory is freed.
        max_samplers: sampling sessions kept loaded at once (least recently used dropped first; a session on a
            saved checkpoint reloads when used again).
        keep_answers_hours: how long finished requests' answers are kept for retrieval.
    """

    store: pathlib.Path = attrs.field(converter=pathlib.Path)
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str = DEFAULT_KEY
    models: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    only_listed_models: bool = False
    max_pending: int = 256
    max_body_mb: int = 256
    device: str | None = None
    max_tokens_per_batch: int = 4096
    session_timeout: float = 600.0
    max_samplers: int = 16
    keep_answers_hours: float = 24.0

    def __attrs_post_init__(self) -> None:
        where = "ServerConfig"
        if not self.api_key.startswith("tml-"):
            raise ConfigError(where, "api_key", "the tinker SDK only sends keys that start with 'tml-'.", "")
        positive_int(self.max_pending, where, "max_pending")
        positive_int(self.max_body_mb, where, "max_body_mb")
        positive_int(self.max_samplers, where, "max_samplers")
        if self.api_key == DEFAULT_KEY and self.host not in _LOOPBACK:
            raise ConfigError(
                where, "api_key", f"binding {self.host} with the well-known default key.", "give a secret --api-key."
            )
        if not self.session_timeout > 0:
            raise ConfigError(where, "session_timeout", f"must be positive seconds, got {self.session_timeout}.")
        if not 0 <= self.port < 65536:
            raise ConfigError(where, "port", f"must be 0..65535, got {self.port}.")


def build_engine(config: ServerConfig) -> Engine:
    """The engine of ``config``: its store opened and recovered (requests left in flight fail, leftovers of killed
    checkpoint writes and deletions are removed), a fresh backend.

    Raises:
        ConfigError: the store folder cannot be created, written or locked (another server holds it).
    """
    try:
        config.store.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file in the way, no permission, a read-only disk
        raise ConfigError(
            "ServerConfig",
            "store",
            f"cannot create the store folder {config.store} ({error.strerror or error}).",
            "give --store a folder this user can create (not under a file).",
        ) from error
    lock = _lock_store(config.store)
    store = Store(config.store / "server.sqlite3")
    lost = store.recover()
    if lost:
        log.warning("%d requests were in flight when the server stopped; they now answer with an error.", lost)
    backend = LocalBackend(
        checkpoint_dir=config.store / "checkpoints",
        device=config.device,
        max_tokens_per_batch=config.max_tokens_per_batch,
    )
    for leftover in backend.remove_partial_checkpoints():  # killed checkpoint writes and deletions
        log.info("removed the leftover %s of a checkpoint write or deletion that did not finish.", leftover)
    catalog = ModelCatalog.from_options(config.models, include_defaults=not config.only_listed_models)
    engine = Engine(store, backend, catalog, max_pending=config.max_pending, max_samplers=config.max_samplers)
    engine.start_reaper(config.session_timeout, keep_answers=config.keep_answers_hours * 3600)
    engine.on_close(lock.close)  # the lock goes with the engine (and with the process, however it ends)
    return engine


def _lock_store(folder: pathlib.Path) -> IO[bytes]:
    """Hold ``<store>/server.lock`` for this process: two servers on one store would corrupt each other's state.

    Raises:
        ConfigError: another server holds the store, or the lock file cannot be written.
    """
    try:
        handle = (folder / "server.lock").open("ab")
    except OSError as error:
        raise ConfigError(
            "ServerConfig",
            "store",
            f"cannot write {folder / 'server.lock'} ({error.strerror or error}).",
            "give --store a folder this user can write.",
        ) from error
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        raise ConfigError(
            "ServerConfig", "store", f"another server is using {folder}.", "stop it, or give this one another --store."
        ) from error
    return handle


def _uvicorn(config: ServerConfig, engine: Engine) -> uvicorn.Server:
    app = create_app(engine, api_key=config.api_key, max_body_bytes=config.max_body_mb * 2**20)
    settings = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,  # request lines would be noise; the key is never in them either way
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(settings)


def serve(
    config: ServerConfig, *, stop: threading.Event | None = None, announce: bool = False, hf_home: str | None = None
) -> None:
    """Serve until interrupted (Ctrl-C) or ``stop`` is set, then let work in flight finish and close the store.

    With ``announce`` it prints where it listens and the two environment variables that point the SDK at it (the
    key itself is not printed unless it is the well-known default). With ``hf_home`` it first installs the served
    models' tokenizers there (:mod:`~tinkerflow.shell.serve.hub_cache`).
    """
    sock = _bound_socket(config.host, config.port)
    port = sock.getsockname()[1]
    engine = build_engine(config)
    server = _uvicorn(config, engine)
    if stop is not None:

        def watch() -> None:
            stop.wait()
            server.should_exit = True

        threading.Thread(target=watch, name="tinkerflow-serve-stop", daemon=True).start()
    if hf_home is not None:
        for name, outcome in install_tokenizers(engine.served_tokenizers(), hf_home).items():
            print(f"tokenizer {name}: {outcome}", flush=True)
    if announce:
        key_hint = "tml-tinkerflow-local" if config.api_key == DEFAULT_KEY else "<the key you gave the server>"
        print(
            f"tinkerflow serve: store {config.store}; models {', '.join(engine.catalog.names())}\n"
            f"  export TINKER_BASE_URL=http://{config.host}:{port} TINKER_API_KEY={key_hint}"
            + (f"\n  export HF_HOME={hf_home} HF_HUB_OFFLINE=1" if hf_home is not None else ""),
            flush=True,
        )
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()
        engine.store.close()
        sock.close()


def _bound_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6).

    It is made with ``IPPROTO_TCP`` on purpose: asyncio then sets ``TCP_NODELAY`` on every accepted connection.
    uvicorn writes a response's headers and body separately, and with Nagle's algorithm on, the body waits for the
    client's delayed ACK (~40 ms per answer on Linux; measured with benchmarks/bench_serve.py).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # listening before the address is announced: a client that connects at once is accepted
    except OSError as error:
        sock.close()
        raise ConfigError("ServerConfig", "host", f"cannot bind {host}:{port} ({error}).") from error
    return sock


class ServerThread:
    """A server on a background thread (see the module docstring). ``base_url`` is set once it listens."""

    def __init__(self, config: ServerConfig, *, start_timeout: float = 60.0) -> None:
        self.config = config
        self._start_timeout = start_timeout
        self._sock = _bound_socket(config.host, config.port)
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://{config.host}:{self.port}"
        self.engine = build_engine(config)
        self._server = _uvicorn(config, self.engine)
        self._thread = threading.Thread(target=self._run, name="tinkerflow-serve", daemon=True)

    def _run(self) -> None:
        self._server.run(sockets=[self._sock])

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("ServerThread", "start", "the server did not start (see the log above).")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting requests, let work in flight finish, close the store."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self.engine.close(timeout)
        self.engine.store.close()
        self._sock.close()

    @property
    def models(self) -> Sequence[str]:
        return self.engine.catalog.names()
