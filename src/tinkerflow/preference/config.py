"""The DPO run configuration: an attrs record, validated on construction, (de)serialized with the one converter.

Every field does something (the loop in :mod:`tinkerflow.shell.recipes.dpo` or the ``tinkerflow dpo`` command reads each
one; ``tests/test_dpo_loop.py`` checks it). tinker-cookbook's DPO config declares fields it never reads; this one
does not. Defaults follow the cookbook's DPO: ``beta`` 0.1, learning rate 1e-5, linear decay to 0.
"""

from __future__ import annotations

from typing import cast, get_args

import attrs

from tinkerflow._validate import finite_float, in_range, require_type
from tinkerflow.config import HF_DISK_PREFIX, HF_PREFIX, BackendName, BadRowPolicy, SinkName, is_hf_source
from tinkerflow.errors import ConfigError
from tinkerflow.preference.data import PREFERENCE_LAYOUTS, PreferenceLayout
from tinkerflow.preference.dpo import DPOTrainOn, TiePolicy
from tinkerflow.supervised import LRSchedule

__all__ = ["DPOConfig"]

_WHERE = "DPOConfig"


def _sink_names(value: object) -> tuple[SinkName, ...]:
    """``log_to`` as a tuple (a single name is accepted for one sink)."""
    if isinstance(value, str):
        return (cast("SinkName", value),)  # checked against SinkName in __attrs_post_init__
    if not isinstance(value, (list, tuple)):
        raise ConfigError(_WHERE, "log_to", f"must be a list of sink names, got {type(value).__name__}.")
    return tuple(cast("list[SinkName]", value))


def _linear() -> LRSchedule:
    return LRSchedule(kind="linear", warmup_steps=0, final_ratio=0.0)


def _check_source(source: object, field: str, *, optional: bool) -> None:
    if source is None and optional:
        return
    require_type(source, str, _WHERE, field)
    assert isinstance(source, str)
    if not source:
        fix = "give held-out data, or null to split train_data." if optional else "give a preference JSONL file."
        raise ConfigError(_WHERE, field, "is empty.", fix)
    for prefix, what in ((HF_PREFIX, "org/name"), (HF_DISK_PREFIX, "/path/of/saved/dataset")):
        rest = source[len(prefix) :] if source.startswith(prefix) else None
        if rest is not None and (not rest or rest != rest.strip()):
            raise ConfigError(_WHERE, field, f"{source!r} names no dataset.", f"write {prefix}{what}.")


def _non_negative(value: object, field: str) -> None:
    require_type(value, int, _WHERE, field)
    assert isinstance(value, int)
    if value < 0:
        raise ConfigError(_WHERE, field, f"must be >= 0, got {value}.")


def _positive(value: object, field: str) -> None:
    require_type(value, int, _WHERE, field)
    assert isinstance(value, int)
    if value <= 0:
        raise ConfigError(_WHERE, field, f"must be positive, got {value}.")


@attrs.frozen
class DPOConfig:
    """Direct Preference Optimization of a chat model on labeled comparisons (see ``docs/preferences.md``).

    Attributes:
        train_data: the comparisons: a JSONL file in any layout of :mod:`tinkerflow.preference.data`
            (prompt/chosen/rejected, chosen/rejected, a/b/label, the cookbook's), a Hugging Face hub dataset
            ``hf:org/name`` or a saved one ``hf-disk:/path`` (HF needs the ``hf`` extra). Code passing comparisons
            to ``prepare_dpo_data(train_rows=...)`` sets a label here.
        test_data: held-out comparisons, spelled like ``train_data``; ``None`` takes the ``hf_test_split`` of an
            HF ``train_data`` if set, else splits ``test_fraction`` of ``train_data`` off.
        test_fraction: share of ``train_data`` held out when there is no other held-out data (seeded split).
        hf_split: split of an HF ``train_data`` (``None``: ``train``).
        hf_test_split: split of the held-out HF data (``None``: ``test`` when ``test_data`` is an HF dataset);
            with no ``test_data``, the held-out rows are this split of ``train_data``'s dataset.
        hf_subset: the configuration (subset) name of ``hf:`` hub datasets that have several.
        layout: force one row layout (``None``: detected per row from its keys).
        base_model: model to train (hub name or local folder for the local backend; a Tinker model name).
        backend: ``local`` (torch on this machine, the default) or ``tinker`` (the service; needs TINKER_API_KEY).
        renderer: renderer name; ``None`` picks the model family's renderer.
        reference_model: the frozen reference the policy is compared with; ``None`` (the default, as in the
            cookbook) is a frozen copy of the initial weights. A named model must share the tokenizer.
        train_on: which tokens of ``prompt + completion`` form the sequence whose logprob DPO compares
            (:data:`tinkerflow.preference.DPOTrainOn`; ``auto`` weights exactly the completion).
        max_length: most tokens of a rendered ``prompt + completion``; a longer side makes its pair a bad row
            (named, or skipped under ``bad_rows=skip``), never a silently cut comparison.
        ties: tied comparisons are an error (``raise``, naming the row) or left out and counted (``drop``).
        beta: the KL coefficient of the DPO loss (how far the policy may move from the reference).
        learning_rate: Adam learning rate at the start of the schedule.
        lr_schedule: warmup and decay (default: linear from ``learning_rate`` to 0, the cookbook's).
        batch_size: comparisons (pairs) per optimizer step; a batch is always whole pairs (chosen and rejected of
            a comparison are never split), and the last batch of an epoch may be smaller (none is dropped).
        epochs: passes over the training pairs (each with its own seeded shuffle).
        max_steps: stop after this many steps (``None``: run all epochs).
        lora_rank: rank of the LoRA adapters.
        seed: seeds the train/test split, shuffling and LoRA initialization.
        eval_every: held-out DPO metrics every this many steps (0: only before and after training).
        save_every: checkpoint every this many steps (0: only at the end).
        bad_rows: ``raise`` on a bad row (unreadable, unrenderable or too long; the error names its source and
            position), or ``skip`` it and count it.
        run_dir: where config, metrics, reference logprobs, checkpoints and the chart go; an existing run there
            is resumed.
        log_to: extra metrics sinks: ``wandb`` and/or ``tensorboard``, each needing its package.
    """

    train_data: str
    test_data: str | None = None
    test_fraction: float = 0.1
    hf_split: str | None = None
    hf_test_split: str | None = None
    hf_subset: str | None = None
    layout: PreferenceLayout | None = None
    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    backend: BackendName = "local"
    renderer: str | None = None
    reference_model: str | None = None
    train_on: DPOTrainOn = "auto"
    max_length: int = 1024
    ties: TiePolicy = "raise"
    beta: float = 0.1
    learning_rate: float = 1e-5
    lr_schedule: LRSchedule = attrs.field(factory=_linear)
    batch_size: int = 8
    epochs: int = 1
    max_steps: int | None = None
    lora_rank: int = 32
    seed: int = 0
    eval_every: int = 10
    save_every: int = 20
    bad_rows: BadRowPolicy = "raise"
    run_dir: str = "runs/dpo"
    log_to: tuple[SinkName, ...] = attrs.field(default=(), converter=_sink_names)

    def __attrs_post_init__(self) -> None:
        _check_source(self.train_data, "train_data", optional=False)
        _check_source(self.test_data, "test_data", optional=True)
        fraction = finite_float(self.test_fraction, _WHERE, "test_fraction")
        in_range(fraction, _WHERE, "test_fraction", low=0.0, high=1.0, high_open=True)
        self._check_hf_fields()
        if self.layout is not None and self.layout not in PREFERENCE_LAYOUTS:
            raise ConfigError(
                _WHERE, "layout", f"unknown layout {self.layout!r}.", f"use one of {PREFERENCE_LAYOUTS} or null."
            )
        require_type(self.base_model, str, _WHERE, "base_model")
        if not self.base_model:
            raise ConfigError(_WHERE, "base_model", "is empty.", "name the model to train.")
        if self.backend not in get_args(BackendName):
            raise ConfigError(_WHERE, "backend", f"must be 'local' or 'tinker', got {self.backend!r}.")
        for field in ("renderer", "reference_model"):
            value = getattr(self, field)
            if value is not None:
                require_type(value, str, _WHERE, field)
                if not value:
                    raise ConfigError(_WHERE, field, "is empty.", "give a name, or null for the default.")
        if self.train_on not in get_args(DPOTrainOn):
            raise ConfigError(
                _WHERE, "train_on", f"unknown mode {self.train_on!r}.", f"use one of {get_args(DPOTrainOn)}."
            )
        for field in ("max_length", "batch_size", "epochs", "lora_rank"):
            _positive(getattr(self, field), field)
        if self.max_length < 2:
            raise ConfigError(_WHERE, "max_length", "must be at least 2.")
        if self.ties not in get_args(TiePolicy):
            raise ConfigError(_WHERE, "ties", f"must be 'raise' or 'drop', got {self.ties!r}.")
        beta = finite_float(self.beta, _WHERE, "beta")
        in_range(beta, _WHERE, "beta", low=0.0, low_open=True)
        rate = finite_float(self.learning_rate, _WHERE, "learning_rate")
        in_range(rate, _WHERE, "learning_rate", low=0.0, low_open=True)
        require_type(self.lr_schedule, LRSchedule, _WHERE, "lr_schedule")
        if self.max_steps is not None:
            _positive(self.max_steps, "max_steps")
        for field in ("seed", "eval_every", "save_every"):
            _non_negative(getattr(self, field), field)
        if self.bad_rows not in get_args(BadRowPolicy):
            raise ConfigError(_WHERE, "bad_rows", f"must be 'raise' or 'skip', got {self.bad_rows!r}.")
        require_type(self.run_dir, str, _WHERE, "run_dir")
        if not self.run_dir:
            raise ConfigError(_WHERE, "run_dir", "is empty.", "give the directory the run writes to.")
        for index, sink in enumerate(self.log_to):
            if sink not in get_args(SinkName):
                raise ConfigError(
                    _WHERE, f"log_to[{index}]", f"unknown sink {sink!r}.", "use wandb and/or tensorboard."
                )
            if sink in self.log_to[:index]:
                raise ConfigError(_WHERE, f"log_to[{index}]", f"{sink!r} is listed twice.", "list each sink once.")

    def _check_hf_fields(self) -> None:
        train_hf, test_hf = is_hf_source(self.train_data), is_hf_source(self.test_data)
        for field in ("hf_split", "hf_test_split", "hf_subset"):
            value = getattr(self, field)
            if value is not None:
                require_type(value, str, _WHERE, field)
                if not value:
                    raise ConfigError(_WHERE, field, "is empty.", "give a name, or null for the default.")
        fix = "name a Hugging Face dataset (hf:org/name or hf-disk:/path), or remove this field."
        if self.hf_split is not None and not train_hf:
            raise ConfigError(_WHERE, "hf_split", "applies only to a Hugging Face train_data.", fix)
        if self.hf_test_split is not None and not (test_hf or (self.test_data is None and train_hf)):
            raise ConfigError(
                _WHERE,
                "hf_test_split",
                "applies only to Hugging Face held-out data (an HF test_data, or an HF train_data without test_data).",
                fix,
            )
        hub = any(source is not None and source.startswith(HF_PREFIX) for source in (self.train_data, self.test_data))
        if self.hf_subset is not None and not hub:
            raise ConfigError(_WHERE, "hf_subset", "applies only to hub datasets (hf:org/name).", fix)
