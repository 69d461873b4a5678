"""Composable typed pipelines: stages, their composition, and lazy, batched, resumable runs. Pure.

A **stage** is a pure function over items with typed input and output (:func:`stage`, :func:`filter_stage`,
:func:`flat_map_stage`, :func:`vectorized_stage`); :func:`compose` (or ``|``) joins stages and checks, when it
joins them, that each output type feeds the next input type. A :class:`Pipeline` is a value: a source, a seeded
order, epochs, stages and batching (by count or by token budget). Its run position is a :class:`PipelineState` of
plain ints: save it as JSON, restore it, and the run continues with exactly the items it had not produced.

Everything here is pure: :meth:`Pipeline.iterate` runs in this process, one chunk after the other. The effects
live in the shell: ``tinkerflow.shell.io.sources.JsonlSource`` reads a JSON-lines file, and
``tinkerflow.shell.io.executors`` runs the chunks in worker processes (a :class:`ChunkExecutor`) with the same
output and the same states. See ``docs/pipeline.md``.
"""

from tinkerflow.pipeline._batching import BatchBySize, BatchByTokens
from tinkerflow.pipeline._builtin import LengthBounds, datum_length, length_filter
from tinkerflow.pipeline._chunk import ChunkExecutor, ChunkOutput, ChunkPlan, ChunkResult, ChunkTask, run_in_process
from tinkerflow.pipeline._errors import CompositionError, ErrorPolicy, StageError
from tinkerflow.pipeline._iterator import PipelineIterator
from tinkerflow.pipeline._order import Shuffle, epoch_order
from tinkerflow.pipeline._pipeline import Pipeline
from tinkerflow.pipeline._source import Indexable, SequenceSource, Source
from tinkerflow.pipeline._stage import (
    Stage,
    StageLike,
    compose,
    filter_stage,
    flat_map_stage,
    stage,
    vectorized_stage,
)
from tinkerflow.pipeline._state import PipelineInfo, PipelineState, StageInfo
from tinkerflow.pipeline._steps import Step
from tinkerflow.pipeline._types import StageKind

__all__ = [
    "BatchBySize",
    "BatchByTokens",
    "ChunkExecutor",
    "ChunkOutput",
    "ChunkPlan",
    "ChunkResult",
    "ChunkTask",
    "CompositionError",
    "ErrorPolicy",
    "Indexable",
    "LengthBounds",
    "Pipeline",
    "PipelineInfo",
    "PipelineIterator",
    "PipelineState",
    "SequenceSource",
    "Shuffle",
    "Source",
    "Stage",
    "StageError",
    "StageInfo",
    "StageKind",
    "StageLike",
    "Step",
    "compose",
    "datum_length",
    "epoch_order",
    "filter_stage",
    "flat_map_stage",
    "length_filter",
    "run_in_process",
    "stage",
    "vectorized_stage",
]
