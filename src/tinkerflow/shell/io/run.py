"""What every training loop shares: the run directory, resume, metrics, progress, checkpoints, the final chart.

The SL, RL and DPO loops differ in what a step does; they share how a run starts, logs, saves and resumes, and
this module is that shared part (so exact resume is implemented once):

* :meth:`Run.open` compares the config with the one in ``config.json`` field by field (a run directory holds one
  run: resuming with a changed value is an error naming every changed field; a field added since, with its
  default, is not a change), rewrites ``config.json`` with the complete current config, reads ``state.json`` and
  opens the metrics log at the resume step (rows of the killed run after its last checkpoint are dropped; they
  are written again identically);
* :meth:`Run.open` also checks, before anything depends on it, that the checkpoint to resume from is whole (the
  local backend's sha256 per file): if it is corrupt or missing, the run resumes from the previous good one of the
  history in ``states/`` (or starts over when none is good), and says so;
* :meth:`Run.training_client` creates a fresh LoRA client or restores the checkpointed one with its optimizer; on
  the local backend it first removes what killed checkpoint writes left, and a resumed client continues the run
  id of its checkpoint (one run id per run directory); with a retention policy it also removes the run's orphans
  (see below);
* :meth:`Run.log` appends one metrics row (flushed and fsynced), forwards it to the optional sinks (W&B,
  TensorBoard) and updates the progress bar (:mod:`tinkerflow.shell.io.progress`);
* :meth:`Run.checkpoint` saves the backend state and, once it is durable, ``state.json`` with the loop's data
  position and any loop-specific bookkeeping; then applies the retention policy (``keep_last``, ``keep_every``:
  older checkpoints are deleted, never one a kept state still needs);
* retention needs a backend that deletes checkpoints: the local one (:class:`CheckpointStore`) or the Tinker
  service (:class:`CheckpointService`). It owns only what the loops name under the run's own run id
  (:func:`~tinkerflow.shell.io.run_dir.loop_owned`), never ``final``, ``reference`` or a user's name. A kill
  during retention or between a save and its state leaves orphans: checkpoints no state references, under the
  run ids recorded in ``states/run-ids.json`` before anything is saved under them. The start removes them (saying
  so), each checkpoint those below its step. Each removal is one atomic delete, found again from what is on disk,
  so a kill during the cleanup leaves orphans the next start removes;
* :meth:`Run.close` closes the progress bar, the log and the sinks; :meth:`Run.write_chart` writes a
  self-contained HTML chart of chosen metrics (:mod:`tinkerflow.shell.io.charts`).
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TextIO, runtime_checkable

import attrs

from tinkerflow.config import RESULT_NEUTRAL_FIELDS, RunConfig, SinkName
from tinkerflow.config_fields import config_differences, config_to_dict
from tinkerflow.errors import TinkerflowError, ValidationError
from tinkerflow.serde import structure, to_json
from tinkerflow.shell.backends.protocol import APIFuture, Backend, TrainingClient
from tinkerflow.shell.io.charts import metrics_chart_html
from tinkerflow.shell.io.progress import Progress
from tinkerflow.shell.io.run_dir import (
    MetricsLog,
    RunDirError,
    RunState,
    atomic_write_text,
    checkpoint_parts,
    forget_state,
    loop_owned,
    read_history,
    read_state,
    record_run_id,
    recorded_run_ids,
    referenced_paths,
    retained_steps,
    write_state,
)
from tinkerflow.shell.io.sinks import MetricsSink, MetricValue, close_sinks, make_sinks

__all__ = ["CheckpointService", "CheckpointStore", "MetricsSink", "Progress", "Run", "check_resumable_config"]

LOCAL_SCHEME = "local://"
TINKER_SCHEME = "tinker://"

CONFIG_FILE = "config.json"


def check_resumable_config(config_file: pathlib.Path, config: object) -> None:
    """Raise :class:`RunDirError` unless the run saved in ``config_file`` has the same config as ``config``, but for
    the fields that change results at most by float rounding (:data:`~tinkerflow.config.RESULT_NEUTRAL_FIELDS`:
    the local backend's memory settings), which a resumed run may change.

    The saved JSON is structured into ``config``'s class (fields added since take their defaults) and compared
    field by field, nested records included; the error names every changed field with its old and new value.
    """
    text = config_file.read_text(encoding="utf-8")
    if text == to_json(config, indent=2):
        return
    where = config_file.parent
    fix = "use a new run_dir to start over, or the same config to resume."
    if not attrs.has(type(config)):  # not a record: only the exact JSON can match
        raise RunDirError(f"{where}: holds a run with another config (see its {CONFIG_FILE}); {fix}")
    try:
        saved = structure(json.loads(text), type(config))
    except (json.JSONDecodeError, TinkerflowError) as error:
        raise RunDirError(
            f"{where}: holds a run with another config ({CONFIG_FILE} does not load as a "
            f"{type(config).__name__}: {error}); {fix}"
        ) from error
    changes = [change for change in config_differences(saved, config) if change.field not in RESULT_NEUTRAL_FIELDS]
    if changes:
        listed = "; ".join(str(change) for change in changes)
        raise RunDirError(f"{where}: holds a run with another config (changed: {listed}); {fix}")


@runtime_checkable
class CheckpointStore(Protocol):
    """What a backend with checkpoints on this machine (the local one) offers a run directory beyond
    :class:`~tinkerflow.shell.backends.protocol.Backend`: cleanup, deletion, and resumes that continue a run."""

    @property
    def checkpoint_dir(self) -> pathlib.Path: ...

    def remove_partial_checkpoints(self) -> list[pathlib.Path]: ...

    def delete_checkpoint(self, path: str) -> bool: ...

    def create_training_client_from_state(
        self, path: str, *, with_optimizer: bool = False, continue_run: bool = False
    ) -> APIFuture[TrainingClient]: ...


@runtime_checkable
class CheckpointService(Protocol):
    """What a backend whose checkpoints live on a service (``tinker://``; ``TinkerBackend``) offers for retention."""

    def delete_checkpoint(self, path: str) -> bool: ...

    def list_checkpoints(self, run_id: str) -> list[str]: ...


@attrs.frozen
class _Deleter:
    """Where retention deletes: the paths of one scheme, listed per run id and deleted one by one (atomically)."""

    scheme: str
    delete: Callable[[str], bool]
    listing: Callable[[str], list[str]]

    @classmethod
    def of(cls, backend: object) -> _Deleter | None:
        if isinstance(backend, CheckpointStore):
            root = backend.checkpoint_dir
            return cls(LOCAL_SCHEME, backend.delete_checkpoint, lambda run_id: _local_checkpoints(root, run_id))
        if isinstance(backend, CheckpointService):
            return cls(TINKER_SCHEME, backend.delete_checkpoint, backend.list_checkpoints)
        return None

    def run_id(self, path: str) -> str | None:
        parts = checkpoint_parts(path)
        return parts[1] if parts is not None and parts[0] == self.scheme else None


def _local_checkpoints(root: pathlib.Path, run_id: str) -> list[str]:
    """The ``local://`` paths of the state and sampler checkpoints under ``root/<run_id>`` (hidden leftovers of
    writes and deletions are :meth:`CheckpointStore.remove_partial_checkpoints`' business)."""
    found: list[str] = []
    for kind in ("weights", "sampler_weights"):
        folder = root / run_id / kind
        if folder.is_dir():
            names = (entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
            found.extend(f"{LOCAL_SCHEME}{run_id}/{kind}/{name}" for name in sorted(names))
    return found


def _run_id_of(client: TrainingClient) -> str | None:
    """The run id a fresh client writes under (its ``get_info().model_id``; ``None`` when it cannot say)."""
    get_info = getattr(client, "get_info", None)  # test doubles of the loops may not implement it
    return str(get_info().model_id) if callable(get_info) else None


def _checkpoint_problem(run_dir: pathlib.Path, state: RunState) -> str | None:
    """Why the checkpoints ``state`` needs are not whole (missing, or a file whose sha256 differs), or ``None``:
    whole, or not checkable here (another backend, or a checkpoint directory that is not where it was)."""
    root = run_dir / state.checkpoint_root if state.checkpoint_root is not None else None
    if root is None or not root.is_dir():
        return None
    from tinkerflow.shell.backends.local.checkpoint import CheckpointError, LocalPath, verify_checkpoint

    for path in sorted(referenced_paths(state)):
        if path.startswith(LOCAL_SCHEME):
            try:
                verify_checkpoint(LocalPath.parse(path).directory(root), path)
            except (CheckpointError, ValidationError) as error:
                return str(error)
    return None


def _resumable_state(run_dir: pathlib.Path, state: RunState) -> tuple[RunState | None, str]:
    """The latest state whose checkpoints are whole (``state``, else the history's previous ones; ``None``: none
    is, start over) and the message that says so when it is not ``state``. History entries after the chosen
    state (a timeline being redone) are forgotten."""
    candidates = [state, *reversed([old for old in read_history(run_dir) if old.step < state.step])]
    problems: list[str] = []
    chosen: RunState | None = None
    for candidate in candidates:
        problem = _checkpoint_problem(run_dir, candidate)
        if problem is None:
            chosen = candidate
            break
        problems.append(f"step {candidate.step}: {problem}")
    for old in read_history(run_dir):
        if chosen is None or old.step > chosen.step:
            forget_state(run_dir, old.step)
    if not problems:
        return chosen, ""
    where = (
        f"resuming from the previous good checkpoint, step {chosen.step} ({chosen.checkpoint})"
        if chosen is not None
        else "no earlier checkpoint is whole: starting over from step 0"
    )
    return chosen, f"checkpoint not usable ({'; '.join(problems)}); {where}.\n"


def _recorded_root(checkpoint_dir: pathlib.Path, run_dir: pathlib.Path) -> str:
    """How a state records the checkpoint directory: relative to the run directory when inside it."""
    root, base = pathlib.Path(checkpoint_dir).resolve(), run_dir.resolve()
    return root.relative_to(base).as_posix() if root.is_relative_to(base) else str(root)


class Run:
    """An opened run directory (see the module docstring). Use :meth:`open`; close with :meth:`close`."""

    def __init__(
        self,
        run_dir: pathlib.Path,
        state: RunState | None,
        metrics: MetricsLog,
        progress: Progress,
        out: TextIO,
        sinks: Sequence[MetricsSink],
        *,
        keep_last: int | None = None,
        keep_every: int | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.state = state
        self.metrics = metrics
        self.progress = progress
        self.out = out
        self.sinks = tuple(sinks)
        self.last_checkpoint = state.checkpoint if state is not None else ""
        self.keep_last = keep_last
        self.keep_every = keep_every
        self._store: CheckpointStore | None = None
        self._root: str | None = None
        self._deleter: _Deleter | None = None

    @classmethod
    def open(
        cls,
        run_dir: str | pathlib.Path,
        config: object,
        *,
        total_steps: int,
        out: TextIO | None = None,
        progress_label: str = "loss",
        sinks: Sequence[MetricsSink] = (),
    ) -> Run:
        """Open (creating or resuming) the run in ``run_dir`` with the config record ``config``.

        A resumed run continues from the latest checkpoint whose files are whole (see the module docstring).
        ``config``'s ``keep_last`` / ``keep_every`` (a :class:`~tinkerflow.config.RunConfig`) are the retention.

        Raises:
            RunDirError: ``run_dir`` holds a run whose config differs (naming each changed field), or its
                resume state is unreadable.
        """
        directory = pathlib.Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        state = read_state(directory)
        config_file = directory / CONFIG_FILE
        if state is not None and config_file.exists():
            check_resumable_config(config_file, config)
        atomic_write_text(config_file, to_json(config, indent=2))
        note = ""
        if state is not None:
            state, note = _resumable_state(directory, state)
        else:  # a fresh start: states of an earlier run here (state.json removed to start over) are no fallback
            for old in read_history(directory):
                forget_state(directory, old.step)
        start = state.step if state is not None else 0
        stream = out if out is not None else sys.stdout
        metrics = MetricsLog(directory / "metrics.jsonl", resume_step=start)
        keep = (config.keep_last, config.keep_every) if isinstance(config, RunConfig) else (None, None)
        run = cls(
            directory,
            state,
            metrics,
            Progress(total_steps, start, stream, progress_label),
            stream,
            sinks,
            keep_last=keep[0],
            keep_every=keep[1],
        )
        if note:
            run.write(note)
        return run

    @classmethod
    def start(
        cls,
        run_dir: str | pathlib.Path,
        config: object,
        *,
        log_to: Sequence[SinkName],
        sinks: Sequence[MetricsSink] | None,
        total_steps: int,
        out: TextIO | None = None,
        progress_label: str = "loss",
    ) -> Run:
        """:meth:`open` for a loop's config record: ``sinks=None`` makes the sinks ``log_to`` names (W&B,
        TensorBoard; :func:`tinkerflow.shell.io.sinks.make_sinks`), and closes them again if opening fails."""
        made = sinks is None
        run_sinks = make_sinks(log_to, run_dir, config_to_dict(config)) if sinks is None else tuple(sinks)
        try:
            return cls.open(
                run_dir, config, total_steps=total_steps, out=out, progress_label=progress_label, sinks=run_sinks
            )
        except BaseException:
            if made:
                close_sinks(run_sinks)
            raise

    @property
    def start_step(self) -> int:
        """The first step this process runs (0 for a fresh run)."""
        return self.state.step if self.state is not None else 0

    @property
    def resumed(self) -> bool:
        return self.state is not None

    def training_client(self, backend: Backend, base_model: str, *, lora_rank: int, seed: int) -> TrainingClient:
        """A fresh LoRA training client, or the one restored from the last checkpoint (weights and optimizer).

        With a :class:`CheckpointStore` backend (the local one) partial checkpoints of killed writes are removed
        first, and a restored client continues its checkpoint's run id. With a retention policy and a backend that
        can delete (a :class:`CheckpointStore` or :class:`CheckpointService`), the run's orphans are removed (see
        the module docstring); with another backend the policy is not applied (and a message says so)."""
        if isinstance(backend, CheckpointStore):
            self._store = backend
            self._root = _recorded_root(backend.checkpoint_dir, self.run_dir)
            removed = backend.remove_partial_checkpoints()
            if removed:
                names = ", ".join(path.name for path in removed)
                self.write(f"removed {len(removed)} partial checkpoint(s) left by killed writes: {names}\n")
        if self.keep_last is not None:
            self._deleter = _Deleter.of(backend)
            if self._deleter is None:
                self.write("keep_last / keep_every are not applied: this backend cannot delete its checkpoints.\n")
            else:
                self._remove_orphans()
        if self.state is None:
            client = backend.create_lora_training_client(base_model, rank=lora_rank, seed=seed).result()
        else:
            self.write(f"resuming at step {self.state.step} from {self.state.checkpoint}\n")
            client = (
                self._store.create_training_client_from_state(
                    self.state.checkpoint, with_optimizer=True, continue_run=True
                ).result()
                if self._store is not None
                else backend.create_training_client_from_state(self.state.checkpoint, with_optimizer=True).result()
            )
        run_id = _run_id_of(client) if self._deleter is not None else None
        if run_id is not None:  # before anything is saved under it: its orphans are found at the next start
            record_run_id(self.run_dir, run_id)
        return client

    def _protected(self) -> frozenset[str]:
        """Every path a state on disk references (``state.json``, the history) or the resumed state needs."""
        states = [*read_history(self.run_dir), *([self.state] if self.state is not None else [])]
        on_disk = read_state(self.run_dir)
        states.extend([on_disk] if on_disk is not None else [])
        return frozenset().union(*(referenced_paths(state) for state in states))

    def _remove_orphans(self) -> None:
        """Remove the loop-owned checkpoints under the run's run ids (recorded, or of a state's own checkpoint: never
        the run id of a path a state merely references) that no state references, and say which."""
        assert self._deleter is not None
        states = [*read_history(self.run_dir), *([self.state] if self.state is not None else [])]
        run_ids = {self._deleter.run_id(state.checkpoint) for state in states}  # what the run saved itself
        run_ids.update(recorded_run_ids(self.run_dir))
        removed = self._sweep(sorted(run_id for run_id in run_ids if run_id), self._protected(), below=None)
        if removed:
            names = ", ".join("/".join(path.split("/")[-2:]) for path in removed)
            self.write(
                f"removed {len(removed)} checkpoint(s) no state references (left by an interrupted run or an "
                f"interrupted retention): {names}\n"
            )

    def _sweep(self, run_ids: Sequence[str], protected: frozenset[str], *, below: int | None) -> list[str]:
        """Delete the loop-owned checkpoints of ``run_ids`` that are not ``protected`` (and, with ``below``, whose
        step is lower); the paths deleted."""
        assert self._deleter is not None
        removed: list[str] = []
        for run_id in run_ids:
            for path in self._deleter.listing(run_id):
                step = loop_owned(path)
                if step is None or path in protected or (below is not None and step >= below):
                    continue
                if self._deleter.run_id(path) == run_id and self._deleter.delete(path):
                    removed.append(path)
        return removed

    def write(self, text: str) -> None:
        """Write a message to the run's stream (clearing and redrawing the progress bar around it)."""
        self.progress.write(text)

    def log(self, step: int, row: Mapping[str, MetricValue], progress_value: float) -> None:
        """Append step ``step``'s metrics row durably, forward it to the sinks, update the progress line."""
        self.metrics.log(step, row)
        for sink in self.sinks:
            sink.log(step, row)
        self.progress.update(step, progress_value)

    def checkpoint(
        self,
        client: TrainingClient,
        step: int,
        data_state_json: str,
        *,
        extra_json: str = "{}",
        sampler_checkpoint: str | None = None,
    ) -> str:
        """Save the client's state as of ``step`` completed steps, record it as the resume point, then delete the
        checkpoints the retention policy no longer keeps."""
        path = client.save_state(f"step-{step:06d}").result()
        state = RunState(
            step=step,
            checkpoint=path,
            data_state_json=data_state_json,
            sampler_checkpoint=sampler_checkpoint,
            extra_json=extra_json,
            checkpoint_root=self._root if path.startswith(LOCAL_SCHEME) else None,
        )
        write_state(self.run_dir, state)
        self.last_checkpoint = path
        self._apply_retention(state)
        return path

    def _apply_retention(self, latest: RunState) -> None:
        """Delete the checkpoints of the states ``keep_last`` / ``keep_every`` no longer keep (each state's entry
        first, then its checkpoints), sparing any path a kept state needs (``state.json``'s, RL sampler paths of
        in-flight batches, the KL reference); then the loop-owned checkpoints of the run below ``latest.step`` that
        no kept state references (RL sampler weights no checkpoint recorded, orphans of a kill)."""
        deleter = self._deleter
        if self.keep_last is None or deleter is None:
            return
        history = [state for state in read_history(self.run_dir) if state.step <= latest.step]
        kept = retained_steps(
            [state.step for state in history], keep_last=self.keep_last, keep_every=self.keep_every
        ) | {latest.step}
        needed = set(referenced_paths(latest)).union(
            *(referenced_paths(state) for state in history if state.step in kept)
        )
        for state in history:
            if state.step in kept:
                continue
            forget_state(self.run_dir, state.step)
            for path in sorted(referenced_paths(state) - needed):
                if deleter.run_id(path) is not None:
                    deleter.delete(path)
        run_id = deleter.run_id(latest.checkpoint)
        if run_id is not None:
            self._sweep([run_id], frozenset(needed), below=latest.step)

    def write_chart(self, keys: Sequence[str], title: str, filename: str) -> pathlib.Path:
        """A self-contained HTML chart of ``keys`` over the steps of the metrics log."""
        target = self.run_dir / filename
        atomic_write_text(target, metrics_chart_html(MetricsLog.read(self.run_dir / "metrics.jsonl"), keys, title))
        return target

    def close(self) -> None:
        """Close the progress bar, the metrics log and the sinks (errors of one sink do not hide the others)."""
        self.progress.close()
        self.metrics.close()
        errors: list[BaseException] = []
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as error:
                errors.append(error)
        if errors:
            raise TinkerflowError(f"closing metrics sinks failed: {errors[0]}") from errors[0]
