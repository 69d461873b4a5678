"""Run configurations: attrs records, validated on construction, (de)serialized with the one converter.

Every field does something (the loops read each one); ``tinkerflow sl --config file.json key=value ...`` builds
one from a JSON file plus dotted overrides and prints the resolved config before any work starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Literal, TypeAlias, TypeVar, cast, get_args

import attrs

from tinkerflow._validate import finite_float, in_range, require_type
from tinkerflow.errors import ConfigError
from tinkerflow.serde import structure, unstructure
from tinkerflow.supervised import LRSchedule, Reduction

__all__ = ["BackendName", "BadRowPolicy", "SLConfig", "TrainOn", "apply_overrides", "config_to_dict"]

BackendName: TypeAlias = Literal["local", "tinker"]
BadRowPolicy: TypeAlias = Literal["raise", "skip"]
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


def _positive(value: int, where: str, field: str) -> None:
    require_type(value, int, where, field)
    if value <= 0:
        raise ConfigError(where, field, f"must be positive, got {value}.")


@attrs.frozen
class SLConfig:
    """Supervised fine-tuning of a chat model on a JSONL dataset of conversations.

    Attributes:
        base_model: model to train (hub name or local folder for the local backend; a Tinker model name).
        backend: ``local`` (torch on this machine, the default) or ``tinker`` (the service; needs TINKER_API_KEY).
        renderer: renderer name; ``None`` picks the model family's renderer.
        train_data: JSONL file of conversations (``{"messages": [...]}`` per line).
        test_data: held-out JSONL; ``None`` splits ``test_fraction`` of ``train_data`` off instead.
        test_fraction: share of ``train_data`` held out when there is no ``test_data`` (seeded split).
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
        bad_rows: ``raise`` on a bad data row (naming file and line), or ``skip`` it and count it in the metrics.
        run_dir: where config, metrics, checkpoints and plots go; an existing run there is resumed.
    """

    train_data: str
    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    backend: BackendName = "local"
    renderer: str | None = None
    test_data: str | None = None
    test_fraction: float = 0.1
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

    def __attrs_post_init__(self) -> None:
        where = "SLConfig"
        require_type(self.train_data, str, where, "train_data")
        if not self.train_data:
            raise ConfigError(where, "train_data", "is empty.", "give the path of a JSONL file of conversations.")
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


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # bare strings need no quotes: run_dir=runs/x


def apply_overrides(data: Mapping[str, object], overrides: Sequence[str], cls: type[C]) -> C:
    """``cls`` built from ``data`` with ``key=value`` overrides applied (dotted keys reach nested records).

    Values are JSON when they parse as JSON (``max_steps=20``, ``renderer=null``), else plain strings.
    Unknown keys and invalid values raise a :class:`~tinkerflow.errors.TinkerflowError` naming them.
    """
    merged: dict[str, object] = json.loads(json.dumps(dict(data)))
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
        target[parts[-1]] = _parse_value(raw)
    return structure(merged, cls)


def config_to_dict(config: object) -> dict[str, object]:
    """A config as plain JSON-ready data."""
    return cast("dict[str, object]", unstructure(config))
