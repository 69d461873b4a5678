"""Run configurations: attrs records, validated on construction, (de)serialized with the one converter.

Every field does something (the loops read each one); ``tinkerflow sl --config file.json key=value ...`` builds
one from a JSON file plus dotted overrides and prints the resolved config before any work starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final, Literal, TypeAlias, TypeVar, cast, get_args, get_origin, get_type_hints

import attrs

from tinkerflow._validate import finite_float, in_range, require_type
from tinkerflow.errors import ConfigError
from tinkerflow.serde import structure, unstructure
from tinkerflow.supervised import LRSchedule, Reduction

__all__ = [
    "HF_DISK_PREFIX",
    "HF_PREFIX",
    "BackendName",
    "BadRowPolicy",
    "SLConfig",
    "SinkName",
    "TrainOn",
    "apply_overrides",
    "config_to_dict",
    "is_hf_source",
]

BackendName: TypeAlias = Literal["local", "tinker"]
BadRowPolicy: TypeAlias = Literal["raise", "skip"]
#: Extra metrics sinks a run can log to (besides ``metrics.jsonl``), when their package is installed.
SinkName: TypeAlias = Literal["wandb", "tensorboard"]
TrainOn: TypeAlias = Literal[
    "last_assistant_message",
    "last_assistant_turn",
    "all_assistant_messages",
    "all_messages",
    "all_tokens",
    "all_user_and_system_messages",
    "customized",
]

C = TypeVar("C")

#: ``hf:org/name``: a dataset on the Hugging Face hub (read with ``datasets.load_dataset``).
HF_PREFIX: Final = "hf:"
#: ``hf-disk:/path``: a dataset saved with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.
HF_DISK_PREFIX: Final = "hf-disk:"


def is_hf_source(source: str | None) -> bool:
    """Whether a data source names a Hugging Face dataset (``hf:org/name`` or ``hf-disk:/path``)."""
    return source is not None and source.startswith((HF_PREFIX, HF_DISK_PREFIX))


def _check_source(source: str, where: str, field: str) -> None:
    for prefix, what in ((HF_PREFIX, "org/name"), (HF_DISK_PREFIX, "/path/of/saved/dataset")):
        rest = source[len(prefix) :] if source.startswith(prefix) else None
        if rest is not None and (not rest or rest != rest.strip()):
            raise ConfigError(where, field, f"{source!r} names no dataset.", f"write {prefix}{what}.")


def _sink_names(value: object) -> tuple[SinkName, ...]:
    """``log_to`` as a tuple (a single name is accepted for one sink)."""
    if isinstance(value, str):
        return (cast("SinkName", value),)
    if not isinstance(value, (list, tuple)):
        raise ConfigError("SLConfig", "log_to", f"must be a list of sink names, got {type(value).__name__}.")
    return tuple(cast("list[SinkName]", value))


def _positive(value: int, where: str, field: str) -> None:
    require_type(value, int, where, field)
    if value <= 0:
        raise ConfigError(where, field, f"must be positive, got {value}.")


@attrs.frozen
class SLConfig:
    """Supervised fine-tuning of a chat model on a dataset of conversations (JSONL, Hugging Face, or in memory).

    Attributes:
        base_model: model to train (hub name or local folder for the local backend; a Tinker model name).
        backend: ``local`` (torch on this machine, the default) or ``tinker`` (the service; needs TINKER_API_KEY).
        renderer: renderer name; ``None`` picks the model family's renderer.
        train_data: the conversations: a JSONL file (``{"messages": [...]}`` per line), a Hugging Face hub dataset
            ``hf:org/name``, or a dataset saved with ``save_to_disk`` ``hf-disk:/path`` (HF needs the ``hf``
            extra). Code passing conversations to ``prepare_sl_data(train_rows=...)`` sets a label here.
        test_data: held-out data, spelled like ``train_data``; ``None`` takes the ``hf_test_split`` of an HF
            ``train_data`` if set, else splits ``test_fraction`` of ``train_data`` off.
        test_fraction: share of ``train_data`` held out when there is no other held-out data (seeded split).
        hf_split: split of an HF ``train_data`` (``None``: ``train``; a saved single dataset has no splits).
        hf_test_split: split of the held-out HF data (``None``: ``test`` when ``test_data`` is an HF dataset);
            with no ``test_data``, the held-out rows are this split of ``train_data``'s dataset.
        hf_subset: the configuration (subset) name of ``hf:`` hub datasets that have several.
        hf_messages_field: the HF column holding each row's messages (a ``tools`` column is read when present).
        train_on: which tokens carry loss weight (see the rendering guide).
        max_length: sequences are cut from the right to this many tokens.
        reduction: per-datum weight scaling (``mean``: each conversation counts equally; ``sum``: each token does).
        batch_size: conversations per optimizer step.
        epochs: passes over the training data (each with its own seeded shuffle).
        max_steps: stop after this many steps (``None``: run all epochs).
        learning_rate: Adam learning rate; ``None`` takes the recommended LoRA rate of the model family.
        lr_schedule: warmup and decay.
        lora_rank: rank of the LoRA adapters.
        seed: seeds shuffling, LoRA initialization and sampling.
        eval_every: evaluate held-out NLL and bits per byte every this many steps (0: only before and after).
        save_every: checkpoint (state for resume + weights for sampling) every this many steps (0: only at the end).
        num_samples_shown: held-out prompts answered by the model before and after training.
        sample_max_tokens: most tokens per shown sample.
        bad_rows: ``raise`` on a bad data row (naming its source and position), or ``skip`` it and count it.
        run_dir: where config, metrics, checkpoints and plots go; an existing run there is resumed.
        log_to: extra metrics sinks: ``wandb`` (respects ``WANDB_MODE``, ``WANDB_PROJECT``) and/or ``tensorboard``
            (event files in ``run_dir/tensorboard``); each needs its package installed (checked before training).
    """

    train_data: str
    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    backend: BackendName = "local"
    renderer: str | None = None
    test_data: str | None = None
    test_fraction: float = 0.1
    hf_split: str | None = None
    hf_test_split: str | None = None
    hf_subset: str | None = None
    hf_messages_field: str = "messages"
    train_on: TrainOn = "all_assistant_messages"
    max_length: int = 512
    reduction: Reduction = "mean"
    batch_size: int = 8
    epochs: int = 1
    max_steps: int | None = None
    learning_rate: float | None = None
    lr_schedule: LRSchedule = attrs.field(factory=lambda: LRSchedule(kind="linear", warmup_steps=0, final_ratio=0.1))
    lora_rank: int = 8
    seed: int = 0
    eval_every: int = 10
    save_every: int = 20
    num_samples_shown: int = 3
    sample_max_tokens: int = 48
    bad_rows: BadRowPolicy = "raise"
    run_dir: str = "runs/sl"
    log_to: tuple[SinkName, ...] = attrs.field(default=(), converter=_sink_names)

    def __attrs_post_init__(self) -> None:
        where = "SLConfig"
        require_type(self.train_data, str, where, "train_data")
        if not self.train_data:
            raise ConfigError(where, "train_data", "is empty.", "give the path of a JSONL file of conversations.")
        _check_source(self.train_data, where, "train_data")
        if self.test_data is not None:
            require_type(self.test_data, str, where, "test_data")
            if not self.test_data:
                raise ConfigError(where, "test_data", "is empty.", "give held-out data, or null to split train_data.")
            _check_source(self.test_data, where, "test_data")
        self._check_hf_fields(where)
        require_type(self.base_model, str, where, "base_model")
        if self.backend not in ("local", "tinker"):
            raise ConfigError(where, "backend", f"must be 'local' or 'tinker', got {self.backend!r}.")
        fraction = finite_float(self.test_fraction, where, "test_fraction")
        in_range(fraction, where, "test_fraction", low=0.0, high=1.0, high_open=True)
        if self.train_on not in get_args(TrainOn):
            raise ConfigError(where, "train_on", f"unknown mode {self.train_on!r}.", f"use one of {get_args(TrainOn)}.")
        if self.reduction not in ("none", "sum", "mean"):
            raise ConfigError(where, "reduction", f"unknown reduction {self.reduction!r}.", "use none, sum or mean.")
        for field in ("max_length", "batch_size", "epochs", "lora_rank", "sample_max_tokens"):
            _positive(getattr(self, field), where, field)
        if self.max_length < 2:
            raise ConfigError(where, "max_length", "must be at least 2.")
        if self.max_steps is not None:
            _positive(self.max_steps, where, "max_steps")
        if self.learning_rate is not None:
            in_range(
                finite_float(self.learning_rate, where, "learning_rate"), where, "learning_rate", low=0.0, low_open=True
            )
        require_type(self.lr_schedule, LRSchedule, where, "lr_schedule")
        for field in ("seed", "eval_every", "save_every", "num_samples_shown"):
            value = getattr(self, field)
            require_type(value, int, where, field)
            if value < 0:
                raise ConfigError(where, field, f"must be >= 0, got {value}.")
        if self.bad_rows not in ("raise", "skip"):
            raise ConfigError(where, "bad_rows", f"must be 'raise' or 'skip', got {self.bad_rows!r}.")
        require_type(self.run_dir, str, where, "run_dir")
        for index, sink in enumerate(self.log_to):
            if sink not in get_args(SinkName):
                raise ConfigError(where, f"log_to[{index}]", f"unknown sink {sink!r}.", "use wandb and/or tensorboard.")
            if sink in self.log_to[:index]:
                raise ConfigError(where, f"log_to[{index}]", f"{sink!r} is listed twice.", "list each sink once.")

    def _check_hf_fields(self, where: str) -> None:
        train_hf, test_hf = is_hf_source(self.train_data), is_hf_source(self.test_data)
        for field in ("hf_split", "hf_test_split", "hf_subset", "hf_messages_field"):
            value = getattr(self, field)
            if value is not None:
                require_type(value, str, where, field)
                if not value:
                    raise ConfigError(where, field, "is empty.", "give a name, or null for the default.")
        hf_fix = "name a Hugging Face dataset (hf:org/name or hf-disk:/path), or remove this field."
        if self.hf_split is not None and not train_hf:
            raise ConfigError(where, "hf_split", "applies only to a Hugging Face train_data.", hf_fix)
        if self.hf_test_split is not None and not (test_hf or (self.test_data is None and train_hf)):
            raise ConfigError(
                where,
                "hf_test_split",
                "applies only to Hugging Face held-out data (an HF test_data, or an HF train_data without test_data).",
                hf_fix,
            )
        hub = any(source is not None and source.startswith(HF_PREFIX) for source in (self.train_data, self.test_data))
        if self.hf_subset is not None and not hub:
            raise ConfigError(where, "hf_subset", "applies only to hub datasets (hf:org/name).", hf_fix)
        if self.hf_messages_field != "messages" and not (train_hf or test_hf):
            raise ConfigError(where, "hf_messages_field", "applies only to Hugging Face datasets.", hf_fix)


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings need no quotes: run_dir=runs/x


def _tuple_fields(cls: type) -> frozenset[str]:
    try:
        hints = get_type_hints(cls)
    except (NameError, TypeError):  # annotations that do not resolve at run time: no shorthand for them
        return frozenset()
    return frozenset(name for name, hint in hints.items() if get_origin(hint) is tuple)


def apply_overrides(data: Mapping[str, object], overrides: Sequence[str], cls: type[C]) -> C:
    """``cls`` built from ``data`` with ``key=value`` overrides applied (dotted keys reach nested records).

    Values are JSON when they parse as JSON (``max_steps=20``, ``renderer=null``), else plain strings; a plain
    string given to a top-level tuple field is a one-item tuple (``log_to=tensorboard``). Unknown keys and
    invalid values raise a :class:`~tinkerflow.errors.TinkerflowError` naming them.
    """
    merged: dict[str, object] = json.loads(json.dumps(dict(data)))
    tuple_fields = _tuple_fields(cls)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError("overrides", override, "is not of the form key=value.", "write e.g. max_steps=20.")
        target = merged
        parts = key.split(".")
        for part in parts[:-1]:
            child = target.get(part)
            if child is None:
                child = {}
                target[part] = child
            if not isinstance(child, dict):
                raise ConfigError("overrides", key, f"{part!r} is not a nested record.")
            target = cast("dict[str, object]", child)
        value = _parse_value(raw)
        if len(parts) == 1 and isinstance(value, str) and key in tuple_fields:
            value = [value]
        target[parts[-1]] = value
    return structure(merged, cls)


def config_to_dict(config: object) -> dict[str, object]:
    """A config as plain JSON-ready data."""
    return cast("dict[str, object]", unstructure(config))
