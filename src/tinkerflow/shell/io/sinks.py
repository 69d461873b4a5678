"""Metrics sinks: the :class:`MetricsSink` protocol, Weights & Biases and TensorBoard. (Shell: files, a clock.)

The JSONL metrics log of a run is always written; these sinks receive the same rows when a config asks for them
(``log_to=["wandb", "tensorboard"]``). Each sink's package is imported lazily, only when the sink is made, so
tinkerflow does not depend on either; :func:`check_sinks` tells before any work starts which package is missing.

Only numeric values of a row are forwarded (strings and ``None`` are left to the JSONL log; NaN is kept).

Resume: a resumed run logs again the steps after its last checkpoint (identical values, see
:mod:`tinkerflow.shell.io.run`).

* TensorBoard: each process writes a new event file in ``<run_dir>/tensorboard`` that begins with a session
  start at the first step it logs, so TensorBoard discards the points the killed process wrote from that step
  on (its "orphaned data" purge) and shows each step once.
* W&B: the run id is kept in ``<run_dir>/wandb_id.txt`` and the run is resumed (``resume="allow"``); the
  re-logged steps carry the values it already has (online, W&B may warn that they are not new steps and drop
  them). Files go to ``<run_dir>/wandb``.
  ``WANDB_MODE`` (``offline`` logs without an account or network), ``WANDB_PROJECT`` (default ``tinkerflow``),
  ``WANDB_ENTITY`` and ``WANDB_CONSOLE`` (default ``off``: stdout is not captured) are respected.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

from tinkerflow.config import SinkName
from tinkerflow.errors import ConfigError, TinkerflowError
from tinkerflow.shell.io.run_dir import atomic_write_text

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run as WandbRun

__all__ = [
    "SINK_PACKAGES",
    "MetricValue",
    "MetricsSink",
    "TensorBoardSink",
    "WandbSink",
    "check_sinks",
    "close_sinks",
    "make_sinks",
    "numeric_metrics",
]

#: A value of a metrics row.
MetricValue: TypeAlias = float | int | str | None


class MetricsSink(Protocol):
    """Somewhere else metrics rows go (the JSONL log of :mod:`tinkerflow.shell.io.run` is always written)."""

    def log(self, step: int, row: Mapping[str, MetricValue]) -> None:
        """Record one step's row."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...


#: The package each sink needs (what to ``pip install``).
SINK_PACKAGES: Final[Mapping[str, str]] = {"wandb": "wandb", "tensorboard": "tensorboard"}

TENSORBOARD_DIR: Final = "tensorboard"
WANDB_ID_FILE: Final = "wandb_id.txt"


def _missing(sink: str, field: str) -> ConfigError:
    package = SINK_PACKAGES[sink]
    return ConfigError(
        "log_to",
        field,
        f"the {sink} sink needs the {package!r} package, which is not installed.",
        f"pip install {package}, or remove {sink!r} from log_to.",
    )


def check_sinks(names: Sequence[str]) -> None:
    """Raise :class:`ConfigError` (naming the package to install) if a requested sink cannot be made.

    Cheap: looks the packages up without importing them.
    """
    for index, name in enumerate(names):
        if name not in SINK_PACKAGES:
            raise ConfigError("log_to", f"log_to[{index}]", f"unknown sink {name!r}.", "use wandb and/or tensorboard.")
        if importlib.util.find_spec(SINK_PACKAGES[name]) is None:
            raise _missing(name, f"log_to[{index}]")


def numeric_metrics(row: Mapping[str, MetricValue]) -> dict[str, float]:
    """The numeric values of a metrics row, as floats (booleans, strings and ``None`` are dropped)."""
    return {
        key: float(value)
        for key, value in row.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class _RecordWriter(Protocol):
    def write(self, data: bytes) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class TensorBoardSink:
    """Scalars in TensorBoard event files under ``log_dir`` (``tensorboard`` package; no torch or TensorFlow).

    The event file is created at the first :meth:`log` (so a run that never logs leaves none); it starts with a
    session start at that step (see the module docstring). Every row is flushed.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError as error:
            raise _missing("tensorboard", "log_to") from error
        self.log_dir = pathlib.Path(log_dir)
        self._event_pb2, self._summary_pb2, self._record_writer = event_pb2, summary_pb2, RecordWriter
        self._writer: _RecordWriter | None = None
        self.path: pathlib.Path | None = None

    def _open(self, step: int) -> _RecordWriter:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads the files of a directory in name order: a sequence number keeps a resumed process's
        # file (and its purge) after the killed one's even within one second.
        sequence = sum(1 for path in self.log_dir.iterdir() if "tfevents" in path.name)
        self.path = self.log_dir / f"events.out.tfevents.{sequence:06d}.{int(time.time()):010d}.{socket.gethostname()}"
        writer: _RecordWriter = self._record_writer(open(self.path, "wb"))  # noqa: SIM115 - closed in close()
        event = self._event_pb2
        writer.write(event.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        start = event.SessionLog(status=event.SessionLog.START)
        writer.write(event.Event(wall_time=time.time(), step=step, session_log=start).SerializeToString())
        return writer

    def log(self, step: int, row: Mapping[str, MetricValue]) -> None:
        if self._writer is None:
            self._writer = self._open(step)
        summary = self._summary_pb2.Summary(
            value=[
                self._summary_pb2.Summary.Value(tag=key, simple_value=value)
                for key, value in numeric_metrics(row).items()
            ]
        )
        self._writer.write(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary).SerializeToString())
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


class WandbSink:
    """Rows logged to a Weights & Biases run (``wandb`` package), with the config as the run's config.

    ``project`` defaults to ``WANDB_PROJECT`` or ``tinkerflow``, ``name`` to the run directory's name. The mode
    comes from ``WANDB_MODE`` (e.g. ``offline``). See the module docstring for resume.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config: Mapping[str, object],
        *,
        project: str | None = None,
        name: str | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError as error:
            raise _missing("wandb", "log_to") from error
        directory = pathlib.Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        id_file = directory / WANDB_ID_FILE
        run_id = id_file.read_text(encoding="utf-8").strip() if id_file.exists() else uuid.uuid4().hex[:12]
        if not id_file.exists():
            atomic_write_text(id_file, run_id + "\n")
        try:
            self._run: WandbRun | None = wandb.init(
                dir=str(directory),
                project=project or os.environ.get("WANDB_PROJECT") or "tinkerflow",
                name=name or directory.resolve().name,
                id=run_id,
                resume="allow",
                config=dict(config),
                # stdout is not captured unless WANDB_CONSOLE asks for it (wandb reads that variable itself)
                settings=None if "WANDB_CONSOLE" in os.environ else wandb.Settings(console="off"),
            )
        except Exception as error:
            raise TinkerflowError(
                f"W&B: could not start a run ({error}); log in with `wandb login`, or set WANDB_MODE=offline."
            ) from error
        self.run_id = run_id

    def log(self, step: int, row: Mapping[str, MetricValue]) -> None:
        if self._run is None:
            raise TinkerflowError("W&B sink: log after close.")
        self._run.log(numeric_metrics(row), step=step)

    def close(self) -> None:
        if self._run is not None:
            run, self._run = self._run, None
            run.finish()


def make_sinks(
    names: Sequence[SinkName], run_dir: str | os.PathLike[str], config: Mapping[str, object]
) -> tuple[MetricsSink, ...]:
    """The sinks ``names`` asks for, writing under ``run_dir``; ``config`` is logged where the sink keeps one.

    Raises:
        ConfigError: a sink is unknown or its package is not installed (naming the package).
    """
    check_sinks(names)
    sinks: list[MetricsSink] = []
    try:
        for name in names:
            if name == "wandb":
                sinks.append(WandbSink(run_dir, config))
            else:
                sinks.append(TensorBoardSink(pathlib.Path(run_dir) / TENSORBOARD_DIR))
    except BaseException:
        close_sinks(sinks)
        raise
    return tuple(sinks)


def close_sinks(sinks: Sequence[MetricsSink]) -> None:
    """Close every sink, ignoring their errors (for cleanup after another error)."""
    for sink in sinks:
        with contextlib.suppress(Exception):  # best effort while another error propagates
            sink.close()
