"""What the kill and restart tests share: a ``tinkerflow serve`` subprocess that a test can SIGKILL and start again
on the same store and port, a client subprocess, bounded waits, and the trainable parameters a ``tinker://``
checkpoint holds (read from the server's store with the local backend).

Every wait is bounded, every process is killed by its own id in ``finally`` blocks (a context manager here), and
the children run with one torch thread and no telemetry.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[3]
T = TypeVar("T")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this one's, with the repository importable (``tests.*``), one torch
    thread, no SDK telemetry and no hub."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
            "TINKER_TELEMETRY": "0",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def wait_for(what: str, check: Callable[[], T | None], timeout: float, *, alive: Callable[[], bool] | None = None) -> T:
    """Poll ``check`` until it returns something other than ``None`` (at most ``timeout`` seconds; ``alive`` false
    ends the wait early). Raises ``AssertionError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if alive is not None and not alive():
            value = check()  # it may have finished just now
            if value is not None:
                return value
            raise AssertionError(f"gave up waiting for {what}: the process ended")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.02)


def kill_hard(process: subprocess.Popen[bytes]) -> int:
    """SIGKILL ``process`` (by its id) unless it has ended; returns its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    return process.wait(timeout=30)


_LISTENING = re.compile(r"TINKER_BASE_URL=(http://127\.0\.0\.1:(\d+))")


def _accepts(port: int) -> bool | None:
    """True once a TCP connection to ``127.0.0.1:port`` is accepted (``None`` while it is refused)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return None


class ServerProcess:
    """``tinkerflow serve`` in a subprocess on ``store`` (``--exit-after`` bounds its life even if a test forgets it).

    :meth:`start` returns once it listens (its announcement on stdout names the port); :meth:`kill` is ``kill -9``.
    Start it again with ``port=`` the old port to come back where clients point.
    """

    def __init__(self, store: pathlib.Path, logs: pathlib.Path, *, port: int = 0, exit_after: float = 300) -> None:
        self.store = store
        self.logs = logs
        self.requested_port = port
        self.exit_after = exit_after
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.port = 0

    def _spawn(self, stdout: pathlib.Path, stderr: pathlib.Path) -> subprocess.Popen[bytes]:
        arguments = ["--host", "127.0.0.1", "--port", str(self.requested_port), "--store", str(self.store)]
        arguments += ["--exit-after", str(self.exit_after), "--device", "cpu"]
        with stdout.open("wb") as out, stderr.open("wb") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "tinkerflow.cli", "serve", *arguments],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=child_env(),
                cwd=REPO,
            )

    def start(self, timeout: float = 90.0) -> ServerProcess:
        """Start the server; returns once it listens. A port asked for by number that is not free yet (the killed
        server's) is tried again a few times."""
        self.logs.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            stdout = self.logs / f"server-{time.monotonic_ns()}.out"
            stderr = stdout.with_suffix(".err")
            process = self.process = self._spawn(stdout, stderr)
            try:
                match = wait_for(
                    "the server to listen",
                    lambda: _LISTENING.search(stdout.read_text(errors="replace")),  # noqa: B023 - used in this pass
                    timeout,
                    alive=lambda: process.poll() is None,  # noqa: B023 - used in this pass
                )
            except AssertionError:
                kill_hard(process)
                log = stderr.read_text(errors="replace")
                if self.requested_port and "address already in use" in log.lower() and attempt < 4:
                    time.sleep(0.5)
                    continue
                raise AssertionError(f"tinkerflow serve did not start:\n{log[-3000:]}") from None
            self.base_url, self.port = match.group(1), int(match.group(2))
            # belt and braces: the server listens before it announces (test_restart.py checks that); wait until it does
            wait_for("the server to accept connections", lambda: _accepts(self.port), 30, alive=lambda: self.running)
            return self
        raise AssertionError("tinkerflow serve did not start")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """``kill -9`` the server: no shutdown, no cleanup; work in flight is lost."""
        if self.process is not None:
            kill_hard(self.process)

    def stderr_text(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.logs.glob("server-*.err")))


@contextlib.contextmanager
def server_process(store: pathlib.Path, logs: pathlib.Path, *, port: int = 0) -> Iterator[ServerProcess]:
    """A started :class:`ServerProcess`, killed when the block ends (whatever happened)."""
    server = ServerProcess(store, logs, port=port)
    try:
        yield server.start()
    finally:
        server.kill()


def start_client(arguments: Sequence[str], log: pathlib.Path, base_url: str, api_key: str) -> subprocess.Popen[bytes]:
    """``python -m tests.serve.scripts.loop_client ARGUMENTS`` pointed at ``base_url`` through the environment
    (``TINKER_BASE_URL`` / ``TINKER_API_KEY``, as ``tinkerflow sl|rl|dpo`` reads it); output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.serve.scripts.loop_client", *arguments],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(TINKER_BASE_URL=base_url, TINKER_API_KEY=api_key),
            cwd=REPO,
        )


def pending_futures(store: pathlib.Path) -> list[tuple[str, str]]:
    """``(request_id, kind)`` of every future the server's store records as pending (read-only; safe while it runs
    or after it died)."""
    uri = f"file:{store / 'server.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        rows = db.execute("SELECT request_id, kind FROM futures WHERE state='pending' ORDER BY created").fetchall()
    return [(str(request_id), str(kind)) for request_id, kind in rows]


def futures_of_kind(store: pathlib.Path, kind: str) -> int:
    """How many futures of ``kind`` (``"forward_backward"``, ...) the store records, in any state."""
    uri = f"file:{store / 'server.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        return int(db.execute("SELECT count(*) FROM futures WHERE kind=?", (kind,)).fetchone()[0])


def checkpoint_params(store: pathlib.Path, tinker_path: str) -> dict[str, np.ndarray]:
    """The trainable parameters a ``tinker://`` checkpoint of the server on ``store`` holds (its files, read with
    the local backend: what the server loads when a client resumes from that path)."""
    from tinkerflow.shell.backends.local.backend import LocalBackend
    from tinkerflow.shell.serve.paths import to_local

    with LocalBackend(checkpoint_dir=store / "checkpoints", device="cpu") as backend:
        client = backend.create_training_client_from_state(to_local(tinker_path), with_optimizer=False).result()
        return client.get_trainable_parameters().result()
