"""A pipeline run's position and a pipeline's description, as plain records (private; re-exported). Pure.

:class:`PipelineState` is the exact, checkpointable position of a run (a few ints, JSON with any cattrs
converter); :class:`PipelineInfo` and :class:`StageInfo` describe a pipeline in strings and ints for a run directory.
"""

from __future__ import annotations

import attrs

from tinkerflow._validate import int_at_least, require_type
from tinkerflow.errors import ConfigError

__all__ = ["STATE_VERSION", "PipelineInfo", "PipelineState", "StageInfo"]

STATE_VERSION = 1
"""The format version of :class:`PipelineState` this tinkerflow writes and reads."""


@attrs.frozen
class PipelineState:
    """A run's position, exact and small: JSON-serializable with any cattrs converter (plain ints only).

    The next output of the run is the ``skip``-th output (0-based) produced by the items at positions
    ``position, position + 1, ...`` of epoch ``epoch``'s order. ``seed``, ``window`` and ``source_length`` say
    which order that is; restoring into a pipeline with a different shuffle or source is refused.

    Attributes:
        epoch: the epoch the next output belongs to (``== epochs`` once a finite run is exhausted).
        position: index into that epoch's order (``0 <= position < source_length``).
        skip: outputs already produced from the items at ``position`` on.
        skipped: items dropped by the ``"skip"`` error policy at positions before this one (all epochs).
        seed: the shuffle seed (``None``: no shuffle).
        window: the shuffle window (``None``: per-epoch shuffle or no shuffle).
        source_length: the number of items in the source.
        version: the format version of this record.
    """

    epoch: int = 0
    position: int = 0
    skip: int = 0
    skipped: int = 0
    seed: int | None = None
    window: int | None = None
    source_length: int = 0
    version: int = STATE_VERSION

    def __attrs_post_init__(self) -> None:
        for name in ("epoch", "position", "skip", "skipped", "source_length", "version"):
            int_at_least(getattr(self, name), "PipelineState", name, 0)
        for name in ("seed", "window"):
            value = getattr(self, name)
            if value is not None:
                require_type(value, int, "PipelineState", name)
        if self.version != STATE_VERSION:
            raise ConfigError(
                "PipelineState", "version", f"is {self.version}; this tinkerflow reads version {STATE_VERSION}."
            )
        if self.source_length and self.position >= self.source_length:
            raise ConfigError(
                "PipelineState",
                "position",
                f"is {self.position} but the source has {self.source_length} items.",
                "a position past the end is written as position 0 of the next epoch.",
            )


@attrs.frozen
class StageInfo:
    """One step of a pipeline, described: kind, name, and the item types it takes and outputs."""

    kind: str
    name: str
    in_type: str
    out_type: str


@attrs.frozen
class PipelineInfo:
    """A pipeline described in plain strings and ints (JSON-serializable; the run directory records it)."""

    source: str
    order: str
    epochs: int | None
    stages: tuple[StageInfo, ...]
    batching: str
    output_type: str
    chunk_size: int
    on_error: str
