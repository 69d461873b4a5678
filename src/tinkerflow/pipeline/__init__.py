"""Composable typed pipelines: stages, their composition, and lazy, batched, parallel, resumable runs.

A **stage** is a pure function over items with typed input and output (:func:`stage`, :func:`filter_stage`,
:func:`flat_map_stage`, :func:`vectorized_stage`); :func:`compose` (or ``|``) joins stages and checks, when it
joins them, that each output type feeds the next input type. A :class:`Pipeline` is a value: a source, a seeded
order, epochs, stages, batching (by count or by token budget) and how to run them (in this process or in worker
processes, with the same output). Its run position is a :class:`PipelineState` of plain ints: save it as JSON,
restore it, and the run continues with exactly the items it had not produced.

Pure core, except at two marked points: :class:`JsonlSource` reads a file, and running with ``num_workers > 0``
starts processes. See ``docs/pipeline.md``.
"""

from tinkerflow.pipeline._builtin import LengthBounds, datum_length, length_filter
from tinkerflow.pipeline._order import Shuffle, epoch_order
from tinkerflow.pipeline._run import (
    BatchBySize,
    BatchByTokens,
    Pipeline,
    PipelineInfo,
    PipelineIterator,
    PipelineState,
    StageInfo,
)
from tinkerflow.pipeline._source import Indexable, JsonlSource, SequenceSource, Source
from tinkerflow.pipeline._stage import (
    CompositionError,
    ErrorPolicy,
    Stage,
    StageError,
    StageKind,
    Step,
    compose,
    filter_stage,
    flat_map_stage,
    stage,
    vectorized_stage,
)

__all__ = [
    "BatchBySize",
    "BatchByTokens",
    "CompositionError",
    "ErrorPolicy",
    "Indexable",
    "JsonlSource",
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
    "Step",
    "compose",
    "datum_length",
    "epoch_order",
    "filter_stage",
    "flat_map_stage",
    "length_filter",
    "stage",
    "vectorized_stage",
]
