"""What every training loop shares: the run directory, resume, metrics, progress, checkpoints, the final plot.

The SL, RL and DPO loops differ in what a step does; they share how a run starts, logs, saves and resumes, and
this module is that shared part (so exact resume is implemented once):

* :meth:`Run.open` checks ``config.json`` (a run directory holds one run: resuming with another config is an
  error), reads ``state.json`` and opens the metrics log at the resume step (rows of the killed run after its
  last checkpoint are dropped; they are written again identically);
* :meth:`Run.training_client` creates a fresh LoRA client or restores the checkpointed one with its optimizer;
* :meth:`Run.log` appends one metrics row (flushed and fsynced), forwards it to the optional sinks (W&B,
  TensorBoard) and updates the progress line;
* :meth:`Run.checkpoint` saves the backend state and, once it is durable, ``state.json`` with the loop's data
  position and any loop-specific bookkeeping;
* :meth:`Run.close` closes the log and sinks and writes a self-contained HTML chart of chosen metrics.
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Protocol, TextIO

from tinkerflow.config import SinkName
from tinkerflow.errors import TinkerflowError
from tinkerflow.shell.backends.protocol import Backend, TrainingClient
from tinkerflow.shell.io.charts import metrics_chart_html
from tinkerflow.shell.io.run_dir import MetricsLog, RunDirError, RunState, atomic_write_text, read_state, write_state

__all__ = ["MetricsSink", "Progress", "Run"]

MetricValue = float | int | str | None


class MetricsSink(Protocol):
    """Somewhere else metrics rows go (the JSONL log is always written; sinks are extra)."""

    def log(self, step: int, row: Mapping[str, MetricValue]) -> None:
        """Record one step's row."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...


class Progress:
    """A one-line progress display with ETA (plain text, rewritten in place with ``\\r``)."""

    def __init__(self, total: int, start: int, stream: TextIO, label: str = "loss") -> None:
        self.total, self.start, self.stream, self.label = total, start, stream, label
        self.began = time.monotonic()

    def update(self, step: int, value: float) -> None:
        done = step + 1 - self.start
        elapsed = time.monotonic() - self.began
        eta = elapsed / done * (self.total - step - 1) if done > 0 else 0.0
        self.stream.write(
            f"\rstep {step + 1}/{self.total}  {self.label} {value:.4f}  {elapsed:5.0f}s elapsed, ETA {eta:4.0f}s "
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


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
        config_json: str,
        *,
        total_steps: int,
        out: TextIO | None = None,
        progress_label: str = "loss",
        sinks: Sequence[MetricsSink] = (),
    ) -> Run:
        """Open (creating or resuming) the run in ``run_dir`` whose config serializes to ``config_json``."""
        directory = pathlib.Path(run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        state = read_state(directory)
        config_file = directory / "config.json"
        if state is not None and config_file.exists() and config_file.read_text(encoding="utf-8") != config_json:
            raise RunDirError(
                f"{directory}: holds a run with another config (see its config.json); "
                "use a new run_dir to start over, or the same config to resume."
            )
        atomic_write_text(config_file, config_json)
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
        from tinkerflow.config import config_to_dict
        from tinkerflow.serde import to_json
        from tinkerflow.shell.io.sinks import close_sinks, make_sinks

        made = sinks is None
        run_sinks = make_sinks(log_to, run_dir, config_to_dict(config)) if sinks is None else tuple(sinks)
        try:
            return cls.open(
                run_dir,
                to_json(config, indent=2),
                total_steps=total_steps,
                out=out,
                progress_label=progress_label,
                sinks=run_sinks,
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
        self.out.write(f"resuming at step {self.state.step} from {self.state.checkpoint}\n")
        return backend.create_training_client_from_state(self.state.checkpoint, with_optimizer=True).result()

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
        """Close the progress line, the metrics log and the sinks (errors of one sink do not hide the others)."""
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
