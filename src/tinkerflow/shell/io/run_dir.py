"""Run directories: atomic files, a resumable metrics log, and the resume-state record. (Shell: does file I/O.)

Layout of a run directory::

    run/
      config.json        the run's config (cattrs JSON), written once, atomically
      pipeline.txt       what the data pipeline is (its description), for people
      state.json         RunState of the last completed checkpoint, written atomically *after* the checkpoint
      states/            step-NNNNNN.json: the RunState of every checkpoint kept (the history a resume falls
                         back on when the latest checkpoint is corrupt or missing), each written before state.json;
                         run-ids.json: the run ids the run writes checkpoints under (with a retention policy, a
                         start removes there the loop's checkpoints no state references)
      metrics.jsonl      one JSON object per step, flushed and fsynced per row
      checkpoints/...    backend checkpoints (the backend writes them atomically)

Exact resume: a restarted run reads ``state.json``, loads the checkpoint it names, and continues at
``state.step``. :class:`MetricsLog` drops rows at or after that step (written after the checkpoint by the
killed run, and about to be written again identically) and any torn last line, so the log never holds a
duplicated or half-written row.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TypeVar

import attrs

from tinkerflow.errors import TinkerflowError
from tinkerflow.serde import from_json, to_json

__all__ = [
    "MetricsLog",
    "RunDirError",
    "RunState",
    "atomic_write_bytes",
    "atomic_write_text",
    "checkpoint_parts",
    "forget_state",
    "loop_owned",
    "read_history",
    "read_state",
    "record_run_id",
    "recorded_run_ids",
    "referenced_paths",
    "retained_steps",
    "write_state",
]

T = TypeVar("T")

STATE_FILE = "state.json"
STATES_DIR = "states"
METRICS_FILE = "metrics.jsonl"
RUN_IDS_FILE = "run-ids.json"
_HISTORY_NAME = re.compile(r"step-([0-9]{6,})\.json")
_CHECKPOINT_PATH = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<run>[^/]+)/(?P<kind>[a-z_]+)/(?P<name>[^/]+)")
#: The checkpoints the loops name, which retention owns: training states ``weights/step-NNNNNN`` (Run.checkpoint)
#: and the RL loop's sampler weights of in-flight batches ``sampler_weights/sampler-NNNNNN``; NNNNNN is the number
#: of steps done when they were saved. ``final``, ``reference`` and any name a user chose are never retention's.
_LOOP_OWNED = {"weights": re.compile(r"step-([0-9]{6,})"), "sampler_weights": re.compile(r"sampler-([0-9]{6,})")}


class RunDirError(TinkerflowError):
    """A run directory is unusable (unreadable state, a config that differs from the one being resumed, ...)."""


def _fsync_dir(directory: pathlib.Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial one."""
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600 files; run files are meant to be read by people and tools
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


@attrs.frozen
class RunState:
    """Where a run stands after its last completed checkpoint.

    Attributes:
        step: optimizer steps completed (the next step to run).
        checkpoint: the backend path of the state saved at ``step`` (``local://...`` or ``tinker://...``).
        data_state_json: the data pipeline's position after ``step`` steps, as JSON text of its state record.
        sampler_checkpoint: weights for sampling saved at ``step``, when the loop saves them.
        extra_json: loop-specific JSON (e.g. the RL loop's staleness bookkeeping); ``"{}"`` when unused.
        checkpoint_root: the local backend's checkpoint directory (``local://`` paths resolve under it), relative
            to the run directory when inside it; lets a resume verify the checkpoint before loading it. ``None``
            for other backends (and states written before it was recorded).
    """

    step: int
    checkpoint: str
    data_state_json: str = "null"
    sampler_checkpoint: str | None = None
    extra_json: str = "{}"
    checkpoint_root: str | None = None


def _history_file(run_dir: str | os.PathLike[str], step: int) -> pathlib.Path:
    return pathlib.Path(run_dir) / STATES_DIR / f"step-{step:06d}.json"


def write_state(run_dir: str | os.PathLike[str], state: RunState) -> None:
    """Atomically record ``state`` as the run's resume point (``state.json``) after adding it to the history
    (``states/step-NNNNNN.json``). Call it only after the checkpoint is durable."""
    text = to_json(state, indent=2)
    atomic_write_text(_history_file(run_dir, state.step), text)
    atomic_write_text(pathlib.Path(run_dir) / STATE_FILE, text)


def read_state(run_dir: str | os.PathLike[str]) -> RunState | None:
    """The run's resume point, or ``None`` for a fresh run directory."""
    path = pathlib.Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return from_json(path.read_bytes(), RunState)
    except TinkerflowError as error:
        raise RunDirError(f"{path}: unreadable resume state ({error}); move it away to start over.") from error


def read_history(run_dir: str | os.PathLike[str]) -> list[RunState]:
    """The recorded states of the run's kept checkpoints, by step (``states/``; an unreadable file is left out:
    each is written atomically, so one can only be damaged on disk, and it is then no state to resume from)."""
    folder = pathlib.Path(run_dir) / STATES_DIR
    states: dict[int, RunState] = {}
    for file in sorted(folder.glob("step-*.json")) if folder.is_dir() else ():
        if _HISTORY_NAME.fullmatch(file.name):
            with contextlib.suppress(TinkerflowError, OSError):
                state = from_json(file.read_bytes(), RunState)
                states[state.step] = state
    return [states[step] for step in sorted(states)]


def forget_state(run_dir: str | os.PathLike[str], step: int) -> None:
    """Remove step ``step``'s state from the history (its checkpoint is being deleted, or was abandoned)."""
    with contextlib.suppress(FileNotFoundError):
        _history_file(run_dir, step).unlink()


def referenced_paths(state: RunState) -> frozenset[str]:
    """Every checkpoint path a state needs to be resumed from: its checkpoint, its sampler checkpoint, and every
    ``scheme://`` string in its ``extra_json`` (the RL loop's sampler paths of in-flight batches, its KL
    reference)."""
    found = {state.checkpoint} | ({state.sampler_checkpoint} if state.sampler_checkpoint else set())
    try:
        pending: list[object] = [json.loads(state.extra_json)]
    except json.JSONDecodeError:
        pending = []
    while pending:
        value = pending.pop()
        if isinstance(value, str) and "://" in value:
            found.add(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return frozenset(found)


def checkpoint_parts(path: str) -> tuple[str, str, str, str] | None:
    """``(scheme, run id, kind, name)`` of a checkpoint path ``scheme://<run id>/<kind>/<name>`` (``local://`` or
    ``tinker://``), or ``None`` for anything else."""
    match = _CHECKPOINT_PATH.fullmatch(path)
    return None if match is None else (match["scheme"], match["run"], match["kind"], match["name"])


def loop_owned(path: str) -> int | None:
    """The step number of a checkpoint the loops name and retention owns (``.../weights/step-NNNNNN``, the RL
    loop's ``.../sampler_weights/sampler-NNNNNN``), or ``None`` for any other path (``final``, ``reference``, a
    user's name): retention never deletes those."""
    parts = checkpoint_parts(path)
    pattern = _LOOP_OWNED.get(parts[2]) if parts is not None else None
    match = pattern.fullmatch(parts[3]) if pattern is not None and parts is not None else None
    return int(match[1]) if match is not None else None


def record_run_id(run_dir: str | os.PathLike[str], run_id: str) -> None:
    """Add ``run_id`` to the run ids the run directory writes checkpoints under (``states/run-ids.json``, rewritten
    atomically; call it before anything is saved under ``run_id``)."""
    known = recorded_run_ids(run_dir)
    if run_id not in known:
        text = json.dumps(sorted({*known, run_id}), indent=2) + "\n"
        atomic_write_text(pathlib.Path(run_dir) / STATES_DIR / RUN_IDS_FILE, text)


def recorded_run_ids(run_dir: str | os.PathLike[str]) -> list[str]:
    """The run ids :func:`record_run_id` recorded, sorted (none for an unreadable record)."""
    try:
        data = json.loads((pathlib.Path(run_dir) / STATES_DIR / RUN_IDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return sorted({item for item in data if isinstance(item, str) and item}) if isinstance(data, list) else []


def retained_steps(steps: Iterable[int], *, keep_last: int | None, keep_every: int | None) -> frozenset[int]:
    """The checkpoint steps a retention policy keeps: all of them when ``keep_last`` is ``None``; else the
    ``keep_last`` latest, and every step that is a multiple of ``keep_every`` (when given). The latest step is
    always kept (``keep_last >= 1``)."""
    ordered = sorted(set(steps))
    if keep_last is None:
        return frozenset(ordered)
    kept = set(ordered[-keep_last:]) if keep_last > 0 else set(ordered[-1:])
    if keep_every:
        kept.update(step for step in ordered if step % keep_every == 0)
    return frozenset(kept)


class MetricsLog:
    """Append-only JSONL metrics, one object per step, each row flushed and fsynced.

    Opening a log for a run resumed at ``resume_step`` keeps only complete rows with ``step < resume_step``
    (rewritten atomically), so the resumed run's rows follow without gaps or duplicates.
    """

    def __init__(self, path: str | os.PathLike[str], *, resume_step: int = 0) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [row for row in self.read(self.path) if _row_step(row) < resume_step]
        if self.path.exists():
            atomic_write_text(self.path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))
        self._rows_written = len(kept)
        self._handle: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[dict[str, object]]:
        """All complete rows of a metrics file (a torn last line from a killed writer is ignored)."""
        file = pathlib.Path(path)
        if not file.exists():
            return []
        rows: list[dict[str, object]] = []
        for line in file.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def log(self, step: int, metrics: Mapping[str, float | int | str | None]) -> None:
        """Append the row ``{"step": step, **metrics}`` durably."""
        if self._handle is None:
            raise RunDirError(f"{self.path}: the metrics log is closed.")
        row = {"step": step, **metrics}
        self._handle.write(json.dumps(row, sort_keys=True, allow_nan=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._rows_written += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[dict[str, object]]:
        return iter(self.read(self.path))


def _row_step(row: Mapping[str, object]) -> int:
    step = row.get("step")
    return step if isinstance(step, int) else -1
