"""The DPO run configuration: an attrs record, validated on construction, (de)serialized with the one converter.

Every field does something (the loop in :mod:`tinkerflow.shell.recipes.dpo` or the ``tinkerflow dpo`` command reads
each one; ``tests/test_dpo_loop.py`` checks it). tinker-cookbook's DPO config declares fields it never reads; this
one does not. Defaults follow the cookbook's DPO: ``beta`` 0.1, learning rate 1e-5, linear decay to 0. The fields
every run shares are documented in :class:`tinkerflow.config.RunConfig` and :class:`tinkerflow.config.DataConfig`.
"""

from __future__ import annotations

from typing import get_args

import attrs

from tinkerflow._validate import in_range, int_at_least, require_type
from tinkerflow.config import DataConfig, field_order, linear_decay, optional_name
from tinkerflow.errors import ConfigError
from tinkerflow.preference.data import PREFERENCE_LAYOUTS, PreferenceLayout
from tinkerflow.preference.pairs import DPOTrainOn, TiePolicy
from tinkerflow.supervised import LRSchedule

__all__ = ["DPOConfig"]

_WHERE = "DPOConfig"


@attrs.frozen(
    kw_only=True,
    field_transformer=field_order(
        "train_data", "test_data", "test_fraction", "hf_split", "hf_test_split", "hf_subset", "layout", "base_model",
        "backend", "renderer", "reference_model", "train_on", "max_length", "ties", "beta", "learning_rate",
        "lr_schedule", "batch_size", "epochs", "max_steps", "lora_rank", "seed", "eval_every", "save_every",
        "keep_last", "keep_every", "bad_rows", "run_dir", "log_to", "evals", "local",
    ),
)  # fmt: skip
class DPOConfig(DataConfig):
    """Direct Preference Optimization of a chat model on labeled comparisons (see ``docs/preferences.md``).

    ``train_data`` and ``test_data`` hold comparisons in any layout of :mod:`tinkerflow.preference.data`
    (prompt/chosen/rejected, chosen/rejected, a/b/label, the cookbook's); ``batch_size`` counts pairs (a batch is
    always whole pairs); ``eval_every`` computes the held-out DPO metrics; ``bad_rows`` covers unreadable,
    unrenderable and too long rows.

    Attributes:
        layout: force one row layout (``None``: detected per row from its keys).
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
        lora_rank: rank of the LoRA adapters.
        run_dir: where config, metrics, reference logprobs, checkpoints and the chart go; an existing run there
            is resumed.
    """

    layout: PreferenceLayout | None = None
    reference_model: str | None = None
    train_on: DPOTrainOn = "auto"
    max_length: int = 1024
    ties: TiePolicy = "raise"
    beta: float = 0.1
    learning_rate: float = 1e-5
    lr_schedule: LRSchedule = attrs.field(factory=linear_decay(0.0))
    lora_rank: int = 32
    run_dir: str = "runs/dpo"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.layout is not None and self.layout not in PREFERENCE_LAYOUTS:
            raise ConfigError(
                _WHERE, "layout", f"unknown layout {self.layout!r}.", f"use one of {PREFERENCE_LAYOUTS} or null."
            )
        optional_name(self.reference_model, _WHERE, "reference_model")
        if self.train_on not in get_args(DPOTrainOn):
            raise ConfigError(
                _WHERE, "train_on", f"unknown mode {self.train_on!r}.", f"use one of {get_args(DPOTrainOn)}."
            )
        int_at_least(self.max_length, _WHERE, "max_length", 2)
        if self.ties not in get_args(TiePolicy):
            raise ConfigError(_WHERE, "ties", f"must be 'raise' or 'drop', got {self.ties!r}.")
        for field in ("beta", "learning_rate"):
            in_range(getattr(self, field), _WHERE, field, low=0.0, low_open=True)
        require_type(self.lr_schedule, LRSchedule, _WHERE, "lr_schedule")
