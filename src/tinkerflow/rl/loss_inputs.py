"""RL losses as typed configs, and the datums each one sends to ``forward_backward`` (only the inputs it needs).

``LossConfig`` is one of :class:`ImportanceSamplingLoss`, :class:`PPOLoss`, :class:`CISPOLoss`, :class:`DROLoss`,
:class:`GSPOLoss`, :class:`StableReinforceLoss`. Each names its Tinker loss (``.loss_fn``) and gives its
``loss_fn_config`` (``.config()``, keys as in :data:`tinkerflow.losses.LOSS_CONFIG_DEFAULTS`); values are validated
on construction with the same rules as the backends (:func:`tinkerflow.losses.resolve_loss_config`).

Provenance spans of the assembled datums are kept. ``gspo`` gets ``sequence_ratio_mask`` = the datum's action mask
(its trained action tokens, as tinker-cookbook's ``rl_loop`` recipe takes the sequence ratio over the sampled
tokens); ``stable_reinforce`` needs spans on every datum (a ``ValidationError`` naming the datum otherwise).
"""

from __future__ import annotations

import abc
from typing import Literal, TypeAlias

import attrs
import numpy as np

from tinkerflow._validate import require_type
from tinkerflow.datum import LOSS_INPUT_FIELDS, Datum
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.losses import LOSS_INPUTS, LossFnType, check_provenance, resolve_loss_config
from tinkerflow.rl.assembly import RLBatch, _trusted_datum

__all__ = [
    "CISPOLoss",
    "DROLoss",
    "GSPOLoss",
    "ImportanceSamplingLoss",
    "LossConfig",
    "PPOLoss",
    "StableReinforceLoss",
    "loss_datums",
]


def _validate(where: str, loss_fn: LossFnType, config: dict[str, float]) -> None:
    for key, value in config.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(where, key, f"must be a number, got {type(value).__name__}.")
    resolve_loss_config(loss_fn, config, where=where)


@attrs.frozen
class ImportanceSamplingLoss:
    """``importance_sampling``: ``-exp(lp - q) * A`` per token (REINFORCE with an importance ratio)."""

    @property
    def loss_fn(self) -> Literal["importance_sampling"]:
        return "importance_sampling"

    def config(self) -> dict[str, float]:
        return {}


@attrs.frozen
class _CheckedLoss(abc.ABC):
    """A loss whose ``config()`` is validated on construction, as the backends would (the subclass names
    ``loss_fn`` and gives ``config``)."""

    def __attrs_post_init__(self) -> None:
        _validate(type(self).__name__, self.loss_fn, self.config())

    @property
    @abc.abstractmethod
    def loss_fn(self) -> LossFnType:
        """The Tinker loss this config is for."""

    @abc.abstractmethod
    def config(self) -> dict[str, float]:
        """The ``loss_fn_config`` sent with ``forward_backward``."""


@attrs.frozen
class _ClippedRatioLoss(_CheckedLoss):
    """A loss whose importance ratio is clipped to ``[clip_low, clip_high]`` (PPO, CISPO)."""

    clip_low: float = 0.8
    clip_high: float = 1.2

    def config(self) -> dict[str, float]:
        return {"clip_low_threshold": self.clip_low, "clip_high_threshold": self.clip_high}


@attrs.frozen
class PPOLoss(_ClippedRatioLoss):
    """``ppo``: the clipped surrogate, the ratio clipped to ``[clip_low, clip_high]``."""

    @property
    def loss_fn(self) -> Literal["ppo"]:
        return "ppo"


@attrs.frozen
class CISPOLoss(_ClippedRatioLoss):
    """``cispo``: ``-sg(clip(r)) * lp * A``, the ratio clipped to ``[clip_low, clip_high]`` and not differentiated."""

    @property
    def loss_fn(self) -> Literal["cispo"]:
        return "cispo"


@attrs.frozen
class DROLoss(_CheckedLoss):
    """``dro``: ``-(lp * A - beta / 2 * (lp - q) ** 2)``; ``beta`` (>= 0) has no default, as in Tinker's docs."""

    beta: float

    @property
    def loss_fn(self) -> Literal["dro"]:
        return "dro"

    def config(self) -> dict[str, float]:
        return {"beta": self.beta}


@attrs.frozen
class GSPOLoss(_ClippedRatioLoss):
    """``gspo``: PPO's clipped surrogate with the sequence-level ratio ``exp(mean(lp - q))`` over each datum's action
    tokens, clipped to ``[clip_low, clip_high]`` (GSPO, Zheng et al. 2025, as Tinker documents it)."""

    @property
    def loss_fn(self) -> Literal["gspo"]:
        return "gspo"


@attrs.frozen
class StableReinforceLoss(_CheckedLoss):
    """``stable_reinforce`` (Tinker's; its formula is not published): needs provenance spans on every datum.
    ``kl_coeff`` is sent only when given (Tinker documents no default)."""

    kl_coeff: float | None = None

    @property
    def loss_fn(self) -> Literal["stable_reinforce"]:
        return "stable_reinforce"

    def config(self) -> dict[str, float]:
        return {} if self.kl_coeff is None else {"kl_coeff": self.kl_coeff}


LossConfig: TypeAlias = ImportanceSamplingLoss | PPOLoss | CISPOLoss | DROLoss | GSPOLoss | StableReinforceLoss

_LOSS_TYPES = (ImportanceSamplingLoss, PPOLoss, CISPOLoss, DROLoss, GSPOLoss, StableReinforceLoss)


def loss_datums(batch: RLBatch, loss: LossConfig) -> tuple[Datum, ...]:
    """The batch's datums with exactly the loss inputs ``loss`` needs (``target_tokens``, ``logprobs``,
    ``advantages``, and for ``gspo`` ``sequence_ratio_mask``, the action mask unless the datum has one) and their
    provenance spans; ``mask_T`` and anything else is dropped. The model inputs are shared, not copied.

    Raises:
        ValidationError: ``loss`` is not a :data:`LossConfig`, a datum lacks an input the loss needs, or (for
            ``stable_reinforce``) provenance spans, or has a nonzero advantage outside its sampled tokens.
    """
    where = "loss_datums"
    require_type(batch, RLBatch, where, "batch")
    require_type(loss, _LOSS_TYPES, where, "loss")
    needed = [LOSS_INPUT_FIELDS[key] for key in LOSS_INPUTS[loss.loss_fn]]
    result: list[Datum] = []
    for index, datum in enumerate(batch.datums):
        fields: dict[str, np.ndarray] = {}
        for name in needed:
            value = getattr(datum, name)
            if value is None and name == "sequence_ratio_mask_T":
                value = datum.mask_T
            if value is None:
                raise ValidationError(
                    where,
                    f"batch.datums[{index}].{name}",
                    f"is missing; loss {loss.loss_fn!r} needs it.",
                    "assemble the batch with assemble_batch.",
                )
            fields[name] = value
        if all(getattr(datum, name) is None for name in LOSS_INPUT_FIELDS.values() if name not in needed):
            result.append(datum)  # already exactly these inputs
        else:
            result.append(
                _trusted_datum(
                    datum.model_input,
                    model_input_spans=datum.model_input_spans,
                    loss_fn_input_spans=datum.loss_fn_input_spans,
                    **fields,
                )
            )  # arrays and spans of a validated datum, shared
    check_provenance(loss.loss_fn, result, where)
    return tuple(result)
