"""What every training loop shares: the run directory, resume, metrics, progress, checkpoints, the final chart.

The SL, RL and DPO loops differ in what a step does; they share how a run starts, logs, saves and resumes, and
this module is that shared part (so exact resume is implemented once):

* :meth:`Run.open` compares the config with the one in ``config.json`` field by field (a run directory holds one
  run: resuming with a changed value is an error naming every changed field; a field added since, with its
  default, is not a change), rewrites ``config.json`` with the complete current config, reads ``state.json`` and
  opens the metrics log at the resume step (rows of the killed run after its last checkpoint are dropped; they
  are written again identically);
* :meth:`Run.training_client` creates a fresh LoRA client or restores the checkpointed one with its optimizer;
* :meth:`Run.log` appends one metrics row (flushed and fsynced), forwards it to the optional sinks (W&B,
  TensorBoard) and updates the progress bar (:mod:`tinkerflow.shell.io.progress`);
* :meth:`Run.checkpoint` saves the backend state and, once it is durable, ``state.json`` with the loop's data
  position and any loop-specific bookkeeping;
* :meth:`Run.close` closes the progress bar, the log and the sinks; :meth:`Run.write_chart` writes a
  self-contained HTML chart of chosen metrics (:mod:`tinkerflow.shell.io.charts`).
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

import attrs

from tinkerflow.config import SinkName
from tinkerflow.config_fields import config_differences, config_to_dict
from tinkerflow.errors import TinkerflowError
from tinkerflow.serde import structure, to_json
from tinkerflow.shell.backends.protocol import Backend, TrainingClient
from tinkerflow.shell.io.charts import metrics_chart_html
from tinkerflow.shell.io.progress import Progress
from tinkerflow.shell.io.run_dir import MetricsLog, RunDirError, RunState, atomic_write_text, read_state, write_state
from tinkerflow.shell.io.sinks import MetricsSink, MetricValue, close_sinks, make_sinks

__all__ = ["MetricsSink", "Progress", "Run", "check_resumable_config"]

CONFIG_FILE = "config.json"


def check_resumable_config(config_file: pathlib.Path, config: object) -> None:
    """Raise :class:`RunDirError` unless the run saved in ``config_file`` has the same config as ``config``.

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
    changes = config_differences(saved, config)
    if changes:
        listed = "; ".join(str(change) for change in changes)
        raise RunDirError(f"{where}: holds a run with another config (changed: {listed}); {fix}")


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
    ) -> None:
        self.run_dir = run_dir
        self.state = state
        self.metrics = metrics
        self.progress = progress
        self.out = out
        self.sinks = tuple(sinks)
        self.last_checkpoint = state.checkpoint if state is not None else ""

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
        start = state.step if state is not None else 0
        stream = out if out is not None else sys.stdout
        metrics = MetricsLog(directory / "metrics.jsonl", resume_step=start)
        return cls(directory, state, metrics, Progress(total_steps, start, stream, progress_label), stream, sinks)

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
        """A fresh LoRA training client, or the one restored from the last checkpoint (weights and optimizer)."""
        if self.state is None:
            return backend.create_lora_training_client(base_model, rank=lora_rank, seed=seed).result()
        self.write(f"resuming at step {self.state.step} from {self.state.checkpoint}\n")
        return backend.create_training_client_from_state(self.state.checkpoint, with_optimizer=True).result()

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
        """Save the client's state as of ``step`` completed steps, then record it as the resume point."""
        path = client.save_state(f"step-{step:06d}").result()
        state = RunState(
            step=step,
            checkpoint=path,
            data_state_json=data_state_json,
            sampler_checkpoint=sampler_checkpoint,
            extra_json=extra_json,
        )
        write_state(self.run_dir, state)
        self.last_checkpoint = path
        return path

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
