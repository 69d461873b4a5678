"""Run configurations: attrs records, validated on construction, (de)serialized with the one converter.

Every field does something (the loops read each one); ``tinkerflow sl --config file.json key=value ...`` builds
one from a JSON file plus dotted overrides (:func:`apply_overrides`, from :mod:`tinkerflow.config_fields`, which
also documents, templates and compares configs) and prints the resolved config before any work starts.

The records share their common fields through two kw-only bases: :class:`RunConfig` (what every training run
has: model, backend, renderer, LoRA rank, seed, cadence, run directory, sinks) and :class:`DataConfig` (what a
run over a data set of rows has: sources, held-out split, batches, epochs, bad-row policy). Each record keeps the
flat JSON layout and field order it always had (:func:`field_order`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Final, Literal, TypeAlias, cast, get_args

import attrs

from tinkerflow._validate import in_range, int_at_least, non_empty_str, require_type
from tinkerflow.config_fields import apply_overrides, config_to_dict
from tinkerflow.errors import ConfigError
from tinkerflow.evals.spec import EvalSpec, check_unique_names
from tinkerflow.render.records import TrainOnName
from tinkerflow.supervised import LRSchedule, Reduction

__all__ = [
    "HF_DISK_PREFIX",
    "HF_PREFIX",
    "RESULT_NEUTRAL_FIELDS",
    "BackendName",
    "BadRowPolicy",
    "DataConfig",
    "LocalOptions",
    "RunConfig",
    "SLConfig",
    "SinkName",
    "TrainOn",
    "apply_overrides",
    "config_to_dict",
    "field_order",
    "is_hf_source",
]

BackendName: TypeAlias = Literal["local", "tinker"]
BadRowPolicy: TypeAlias = Literal["raise", "skip"]
#: Extra metrics sinks a run can log to (besides ``metrics.jsonl``), when their package is installed.
SinkName: TypeAlias = Literal["wandb", "tensorboard"]
#: Which tokens carry loss weight (the render modes of :class:`tinkerflow.render.TrainOnWhat`, by value).
TrainOn: TypeAlias = TrainOnName


#: ``hf:org/name``: a dataset on the Hugging Face hub (read with ``datasets.load_dataset``).
HF_PREFIX: Final = "hf:"
#: ``hf-disk:/path``: a dataset saved with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
HF_DISK_PREFIX: Final = "hf-disk:"


def is_hf_source(source: str | None) -> bool:
    """Whether a data source names a Hugging Face dataset (``hf:org/name`` or ``hf-disk:/path``)."""
    return source is not None and source.startswith((HF_PREFIX, HF_DISK_PREFIX))


def _check_source(source: object, where: str, field: str, *, optional: bool, fix: str) -> None:
    """A data source field: a non-empty string, and an ``hf:``/``hf-disk:`` prefix followed by a name."""
    if source is None and optional:
        return
    source = non_empty_str(source, where, field, fix)
    for prefix, what in ((HF_PREFIX, "org/name"), (HF_DISK_PREFIX, "/path/of/saved/dataset")):
        rest = source[len(prefix) :] if source.startswith(prefix) else None
        if rest is not None and (not rest or rest != rest.strip()):
            raise ConfigError(where, field, f"{source!r} names no dataset.", f"write {prefix}{what}.")


def _eval_specs(value: object) -> tuple[EvalSpec, ...]:
    """``evals`` as a tuple (records are checked on validation)."""
    if isinstance(value, (list, tuple)):
        return tuple(cast("list[EvalSpec]", value))
    return cast("tuple[EvalSpec, ...]", value)


def _sink_names(value: object) -> tuple[SinkName, ...]:
    """``log_to`` as a tuple (a single name is accepted for one sink; other values are rejected on validation)."""
    if isinstance(value, str):
        return (cast("SinkName", value),)
    if isinstance(value, (list, tuple)):
        return tuple(cast("list[SinkName]", value))
    return cast("tuple[SinkName, ...]", value)


def optional_name(value: object, where: str, field: str) -> None:
    """An optional name field: ``None`` (the default is used) or a non-empty string."""
    if value is not None:
        non_empty_str(value, where, field, "give a name, or null for the default.")


def linear_decay(final_ratio: float) -> Callable[[], LRSchedule]:
    """A default factory of ``lr_schedule`` fields: linear decay to ``final_ratio`` of the rate, no warmup."""
    return functools.partial(LRSchedule, kind="linear", warmup_steps=0, final_ratio=final_ratio)


#: Weights' dtypes the local backend takes by name (``auto``: bf16 on CUDA, fp32 on CPU).
LocalDtype: TypeAlias = Literal["auto", "float32", "bfloat16", "float16"]


@attrs.frozen(kw_only=True)
class LocalOptions:
    """Settings of the local backend (``LocalBackend``'s arguments of the same names; docs/backends.md measures
    them). ``dtype``, ``device`` and ``sampling_engine`` change results; the memory settings trade speed for memory
    and change results at most by float rounding (the same sums in other groupings).

    Attributes:
        dtype: the base weights' dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``float32``, ``bfloat16`` or
            ``float16``; LoRA weights and optimizer state stay fp32. On CPUs with AVX-512 bf16 (AMD Zen 4,
            Intel Sapphire Rapids) ``bfloat16`` trains about 1.5x faster than ``float32``.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...; ``null``: CUDA when available.
        max_tokens_per_batch: padded tokens per forward/backward pass; larger batches run in several passes whose
            gradients add up (same result, bounded memory).
        logprob_chunk_tokens: positions whose ``[chunk, vocab]`` logits exist at once when training.
        checkpoint_layers: activation checkpointing of the decoder layers (far less memory, about a third more
            compute).
        return_freed_memory: how freed tensor memory goes back to the system (glibc): ``true`` (the lowest peak,
            slower steps), ``between_passes`` (faster; in fp32 a higher peak) or ``false`` (glibc's defaults).
        sampling_engine: what samples (rollouts, shown samples, evaluations): ``local`` (torch) or ``vllm`` (vLLM's
            engine on a GPU; needs ``pip install 'tinkerflow[vllm]'``; see docs/backends.md).
        vllm_options: with ``sampling_engine=vllm``, more vLLM engine arguments (e.g.
            ``{"gpu_memory_utilization": 0.6}``).
    """

    dtype: LocalDtype = "auto"
    device: str | None = None
    max_tokens_per_batch: int = 2048
    logprob_chunk_tokens: int = 256
    checkpoint_layers: bool = True
    return_freed_memory: Literal[True, False, "between_passes"] = True
    sampling_engine: Literal["local", "vllm"] = "local"
    vllm_options: dict[str, str | int | float | bool] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        where = "LocalOptions"
        if self.sampling_engine not in ("local", "vllm"):
            raise ConfigError(where, "sampling_engine", f"must be 'local' or 'vllm', got {self.sampling_engine!r}.")
        require_type(self.vllm_options, dict, where, "vllm_options")
        if self.vllm_options and self.sampling_engine != "vllm":
            raise ConfigError(where, "vllm_options", "only apply with sampling_engine=vllm.", "set it, or remove them.")
        if self.dtype not in get_args(LocalDtype):
            raise ConfigError(where, "dtype", f"unknown dtype {self.dtype!r}.", f"use one of {get_args(LocalDtype)}.")
        optional_name(self.device, where, "device")
        for field in ("max_tokens_per_batch", "logprob_chunk_tokens"):
            int_at_least(getattr(self, field), where, field, 1)
        if not isinstance(self.checkpoint_layers, bool):
            raise ConfigError(where, "checkpoint_layers", f"must be true or false, got {self.checkpoint_layers!r}.")
        if not isinstance(self.return_freed_memory, bool) and self.return_freed_memory != "between_passes":
            raise ConfigError(
                where,
                "return_freed_memory",
                f"must be true, false or 'between_passes', got {self.return_freed_memory!r}.",
            )


#: Config fields a resumed run may change: they bound memory and speed, and change results at most by float rounding.
RESULT_NEUTRAL_FIELDS: Final = frozenset(
    f"local.{name}"
    for name in ("max_tokens_per_batch", "logprob_chunk_tokens", "checkpoint_layers", "return_freed_memory")
)


def field_order(*names: str) -> Callable[[type, list[attrs.Attribute[Any]]], list[attrs.Attribute[Any]]]:
    """An attrs ``field_transformer`` that puts a record's fields (its own and inherited ones) in the order
    ``names`` gives, so the JSON layout of a config does not depend on which base declares a field."""
    rank = {name: index for index, name in enumerate(names)}

    def transform(cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
        missing = [field.name for field in fields if field.name not in rank]
        if missing:
            raise TypeError(f"{cls.__name__}: field_order does not place {missing}.")
        return sorted(fields, key=lambda field: rank[field.name])

    return transform


@attrs.frozen(kw_only=True)
class RunConfig:
    """What every training run's config has (a base record; SL, DPO and RL configs extend it).

    Attributes:
        base_model: model to train (hub name or local folder for the local backend; a Tinker model name).
        backend: ``local`` (torch on this machine, the default) or ``tinker`` (the service; needs TINKER_API_KEY).
        renderer: renderer name; ``None`` picks the model family's renderer.
        lora_rank: rank of the LoRA adapters.
        seed: seeds data order, shuffling, LoRA initialization and sampling.
        eval_every: evaluate on held-out data every this many steps (0: only before and after training).
        save_every: checkpoint (state for resume + weights for sampling) every this many steps (0: only at the end).
        keep_last: keep only this many latest checkpoints (``None``: keep all); older ones are deleted once the
            new ``state.json`` is durable, except a checkpoint a kept one still needs (on the local backend and on
            the Tinker service alike).
        keep_every: with ``keep_last``, also keep every checkpoint whose step is a multiple of this.
        run_dir: where config, metrics, checkpoints and charts go; an existing run there is resumed.
        log_to: extra metrics sinks: ``wandb`` (respects ``WANDB_MODE``, ``WANDB_PROJECT``) and/or ``tensorboard``
            (event files in ``run_dir/tensorboard``); each needs its package installed (checked before training).
        evals: evaluations run before training, every ``every`` (or ``eval_every``) steps and at the end, each a
            record ``{"name", "kind", "data", ...}`` (see docs/evals.md); logged as ``<name>/<kind>``.
        local: settings of the local backend (dtype, device, memory); with ``backend=tinker`` they must keep their
            defaults (the service decides).
    """

    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    backend: BackendName = "local"
    renderer: str | None = None
    lora_rank: int = 8
    seed: int = 0
    eval_every: int = 10
    save_every: int = 20
    keep_last: int | None = None
    keep_every: int | None = None
    run_dir: str = "runs/run"
    log_to: tuple[SinkName, ...] = attrs.field(default=(), converter=_sink_names)
    evals: tuple[EvalSpec, ...] = attrs.field(default=(), converter=_eval_specs)
    local: LocalOptions = attrs.field(factory=LocalOptions)

    def __attrs_post_init__(self) -> None:
        where = type(self).__name__
        require_type(self.local, LocalOptions, where, "local")
        if self.backend == "tinker" and self.local != LocalOptions():
            raise ConfigError(
                where,
                "local",
                "sets local backend options, but backend is 'tinker'.",
                "remove local, or use backend=local.",
            )
        check_unique_names(self.evals, where)
        for field in ("base_model", "run_dir"):
            non_empty_str(getattr(self, field), where, field, "give a value (see the field's documentation).")
        if self.backend not in get_args(BackendName):
            raise ConfigError(where, "backend", f"must be 'local' or 'tinker', got {self.backend!r}.")
        optional_name(self.renderer, where, "renderer")
        int_at_least(self.lora_rank, where, "lora_rank", 1)
        for field in ("seed", "eval_every", "save_every"):
            int_at_least(getattr(self, field), where, field, 0)
        self._check_retention(where)
        if not isinstance(self.log_to, tuple):
            raise ConfigError(where, "log_to", f"must be a list of sink names, got {type(self.log_to).__name__}.")
        for index, sink in enumerate(self.log_to):
            if sink not in get_args(SinkName):
                raise ConfigError(where, f"log_to[{index}]", f"unknown sink {sink!r}.", "use wandb and/or tensorboard.")
            if sink in self.log_to[:index]:
                raise ConfigError(where, f"log_to[{index}]", f"{sink!r} is listed twice.", "list each sink once.")

    def _check_retention(self, where: str) -> None:
        int_at_least(self.keep_last, where, "keep_last", 1, allow_none=True)
        int_at_least(self.keep_every, where, "keep_every", 1, allow_none=True)
        if self.keep_every is not None and self.keep_last is None:
            raise ConfigError(
                where,
                "keep_every",
                "has no effect without keep_last (every checkpoint is kept).",
                "set keep_last too, or remove keep_every.",
            )


@attrs.frozen(kw_only=True)
class DataConfig(RunConfig):
    """What a run over a data set of rows has (a base record; SL and DPO configs extend it).

    Attributes:
        train_data: the training rows: a JSONL file, a Hugging Face hub dataset ``hf:org/name``, or a dataset saved
            with ``save_to_disk`` ``hf-disk:/path`` (HF needs the ``hf`` extra). Code passing rows to the loop's
            ``prepare_*_data(train_rows=...)`` sets a label here.
        test_data: held-out data, spelled like ``train_data``; ``None`` takes the ``hf_test_split`` of an HF
            ``train_data`` if set, else splits ``test_fraction`` of ``train_data`` off.
        test_fraction: share of ``train_data`` held out when there is no other held-out data (seeded split).
        hf_split: split of an HF ``train_data`` (``None``: ``train``; a saved single dataset has no splits).
        hf_test_split: split of the held-out HF data (``None``: ``test`` when ``test_data`` is an HF dataset);
            with no ``test_data``, the held-out rows are this split of ``train_data``'s dataset.
        hf_subset: the configuration (subset) name of ``hf:`` hub datasets that have several.
        batch_size: rows per optimizer step; the last batch of an epoch may be smaller (none is dropped).
        epochs: passes over the training data (each with its own seeded shuffle).
        max_steps: stop after this many steps (``None``: run all epochs).
        bad_rows: ``raise`` on a bad data row (naming its source and position), or ``skip`` it and count it.
    """

    train_data: str
    test_data: str | None = None
    test_fraction: float = 0.1
    hf_split: str | None = None
    hf_test_split: str | None = None
    hf_subset: str | None = None
    batch_size: int = 8
    epochs: int = 1
    max_steps: int | None = None
    bad_rows: BadRowPolicy = "raise"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        where = type(self).__name__
        _check_source(self.train_data, where, "train_data", optional=False, fix="give a JSONL file or an hf: dataset.")
        _check_source(
            self.test_data, where, "test_data", optional=True, fix="give held-out data, or null to split train_data."
        )
        self._check_held_out_differs(where)
        in_range(self.test_fraction, where, "test_fraction", low=0.0, high=1.0, high_open=True)
        self._check_hf_fields(where)
        for field in ("batch_size", "epochs"):
            int_at_least(getattr(self, field), where, field, 1)
        int_at_least(self.max_steps, where, "max_steps", 1, allow_none=True)
        if self.bad_rows not in get_args(BadRowPolicy):
            raise ConfigError(where, "bad_rows", f"must be 'raise' or 'skip', got {self.bad_rows!r}.")

    def _check_held_out_differs(self, where: str) -> None:
        """``test_data`` naming the training rows themselves (the same file, or the same split of the same HF
        dataset) would report training fit as held-out metrics."""
        if self.test_data is None:
            return
        same_source = (
            self.test_data == self.train_data
            if is_hf_source(self.train_data)
            else os.path.normpath(self.test_data) == os.path.normpath(self.train_data)
        )
        same_split = not is_hf_source(self.train_data) or (self.hf_split or "train") == (self.hf_test_split or "test")
        if same_source and same_split:
            raise ConfigError(
                where,
                "test_data",
                f"is the training data itself ({self.test_data!r}): held-out metrics would measure the training rows.",
                "give other held-out data, or null to split test_fraction of train_data off.",
            )

    def _check_hf_fields(self, where: str) -> None:
        train_hf, test_hf = is_hf_source(self.train_data), is_hf_source(self.test_data)
        for field in ("hf_split", "hf_test_split", "hf_subset"):
            optional_name(getattr(self, field), where, field)
        fix = "name a Hugging Face dataset (hf:org/name or hf-disk:/path), or remove this field."
        if self.hf_split is not None and not train_hf:
            raise ConfigError(where, "hf_split", "applies only to a Hugging Face train_data.", fix)
        if self.hf_test_split is not None and not (test_hf or (self.test_data is None and train_hf)):
            raise ConfigError(
                where,
                "hf_test_split",
                "applies only to Hugging Face held-out data (an HF test_data, or an HF train_data without test_data).",
                fix,
            )
        hub = any(source is not None and source.startswith(HF_PREFIX) for source in (self.train_data, self.test_data))
        if self.hf_subset is not None and not hub:
            raise ConfigError(where, "hf_subset", "applies only to hub datasets (hf:org/name).", fix)

    def total_steps(self, rows: int) -> int:
        """Optimizer steps of a run over ``rows`` training rows: every epoch's batches, capped by ``max_steps``."""
        per_epoch = -(-rows // self.batch_size)
        return per_epoch * self.epochs if self.max_steps is None else min(self.max_steps, per_epoch * self.epochs)


@attrs.frozen(
    kw_only=True,
    field_transformer=field_order(
        "train_data", "base_model", "backend", "renderer", "test_data", "test_fraction", "hf_split", "hf_test_split",
        "hf_subset", "hf_messages_field", "train_on", "max_length", "reduction", "batch_size", "epochs", "max_steps",
        "learning_rate", "lr_schedule", "lora_rank", "seed", "eval_every", "save_every", "keep_last", "keep_every",
        "num_samples_shown", "sample_max_tokens", "bad_rows", "run_dir", "log_to", "evals", "local",
    ),
)  # fmt: skip
class SLConfig(DataConfig):
    """Supervised fine-tuning of a chat model on a dataset of conversations (JSONL, Hugging Face, or in memory).

    The shared fields are documented in :class:`RunConfig` and :class:`DataConfig`; ``train_data`` holds
    conversations (``{"messages": [...]}`` per JSONL line), ``eval_every`` evaluates held-out NLL and bits per byte.

    Attributes:
        hf_messages_field: the HF column holding each row's messages (a ``tools`` column is read when present).
        train_on: which tokens carry loss weight (see the rendering guide).
        max_length: sequences longer than this many tokens are bad rows (named, or skipped under ``bad_rows=skip``).
        reduction: per-datum weight scaling (``mean``: each conversation counts equally; ``sum``: each token does).
        learning_rate: Adam learning rate; ``None`` takes the recommended LoRA rate of the model family.
        lr_schedule: warmup and decay.
        num_samples_shown: held-out prompts answered by the model before and after training.
        sample_max_tokens: most tokens per shown sample.
        run_dir: where config, metrics, checkpoints and plots go; an existing run there is resumed.
    """

    hf_messages_field: str = "messages"
    train_on: TrainOn = "all_assistant_messages"
    max_length: int = 512
    reduction: Reduction = "mean"
    learning_rate: float | None = None
    lr_schedule: LRSchedule = attrs.field(factory=linear_decay(0.1))
    num_samples_shown: int = 3
    sample_max_tokens: int = 48
    run_dir: str = "runs/sl"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        where = "SLConfig"
        optional_name(self.hf_messages_field, where, "hf_messages_field")
        if self.hf_messages_field != "messages" and not (is_hf_source(self.train_data) or is_hf_source(self.test_data)):
            raise ConfigError(
                where,
                "hf_messages_field",
                "applies only to Hugging Face datasets.",
                "name a Hugging Face dataset (hf:org/name or hf-disk:/path), or remove this field.",
            )
        if self.train_on not in get_args(TrainOn):
            raise ConfigError(where, "train_on", f"unknown mode {self.train_on!r}.", f"use one of {get_args(TrainOn)}.")
        if self.reduction not in ("none", "sum", "mean"):
            raise ConfigError(where, "reduction", f"unknown reduction {self.reduction!r}.", "use none, sum or mean.")
        int_at_least(self.max_length, where, "max_length", 2)
        int_at_least(self.sample_max_tokens, where, "sample_max_tokens", 1)
        int_at_least(self.num_samples_shown, where, "num_samples_shown", 0)
        if self.learning_rate is not None:
            in_range(self.learning_rate, where, "learning_rate", low=0.0, low_open=True)
        require_type(self.lr_schedule, LRSchedule, where, "lr_schedule")
