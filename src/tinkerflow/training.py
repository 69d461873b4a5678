"""Training records: optimizer parameters and forward/backward results."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import cast

import attrs
import numpy as np

from tinkerflow._validate import finite_float, in_range, require_type
from tinkerflow.arrays import Float32_T, as_float32_1d
from tinkerflow.datum import arrays_equal
from tinkerflow.errors import ValidationError

__all__ = ["AdamParams", "ForwardBackwardOutput", "LossFnOutput", "loop_adam"]

_ARRAY_EQ = attrs.cmp_using(eq=arrays_equal)


@attrs.frozen
class AdamParams:
    """Adam(W) step parameters, as Tinker's ``AdamParams`` (weight decay is decoupled; clip norm 0 = none)."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0

    def __attrs_post_init__(self) -> None:
        where = "AdamParams"
        in_range(self.learning_rate, where, "learning_rate", low=0.0)
        in_range(self.beta1, where, "beta1", low=0.0, high=1.0, high_open=True)
        in_range(self.beta2, where, "beta2", low=0.0, high=1.0, high_open=True)
        in_range(self.eps, where, "eps", low=0.0, low_open=True)
        in_range(self.weight_decay, where, "weight_decay", low=0.0)
        in_range(self.grad_clip_norm, where, "grad_clip_norm", low=0.0)


def loop_adam(learning_rate: float) -> AdamParams:
    """The Adam step every training loop (SL, DPO, RL) takes: ``beta1`` 0.9, ``beta2`` 0.95, ``eps`` 1e-8, as the
    cookbook's loops; only the learning rate changes from step to step."""
    return AdamParams(learning_rate=learning_rate, beta1=0.9, beta2=0.95, eps=1e-8)


def _logprobs(value: object) -> np.ndarray:
    return as_float32_1d(value, "LossFnOutput", "logprobs_T")


def _optional_loss(value: object) -> np.ndarray | None:
    return None if value is None else as_float32_1d(value, "LossFnOutput", "elementwise_loss_T")


@attrs.frozen
class LossFnOutput:
    """Per-datum output of a forward(/backward) pass: logprobs of the target tokens (and optional per-token loss)."""

    logprobs_T: Float32_T = attrs.field(converter=_logprobs, eq=_ARRAY_EQ, hash=False)
    elementwise_loss_T: Float32_T | None = attrs.field(default=None, converter=_optional_loss, eq=_ARRAY_EQ, hash=False)

    def __attrs_post_init__(self) -> None:
        loss = self.elementwise_loss_T
        if loss is not None and loss.shape != self.logprobs_T.shape:
            raise ValidationError(
                "LossFnOutput", "elementwise_loss_T", f"has shape {loss.shape}, logprobs_T {self.logprobs_T.shape}."
            )


def _metrics(value: object) -> Mapping[str, float]:
    if not isinstance(value, Mapping):
        raise ValidationError("ForwardBackwardOutput", "metrics", f"expected a mapping, got {type(value).__name__}.")
    items = cast("Mapping[object, object]", value)
    clean: dict[str, float] = {}
    for key, number in items.items():
        require_type(key, str, "ForwardBackwardOutput", "metrics key")
        clean[cast("str", key)] = finite_float(number, "ForwardBackwardOutput", f"metrics[{key!r}]")
    return types.MappingProxyType(clean)


def _outputs(value: object) -> tuple[LossFnOutput, ...]:
    return tuple(cast("list[LossFnOutput]", value))


@attrs.frozen
class ForwardBackwardOutput:
    """Result of ``forward`` / ``forward_backward``: one :class:`LossFnOutput` per datum, and summed metrics.

    Metric keys follow Tinker's ``name:reduction`` form; the loss is ``metrics["loss:sum"]``.
    """

    loss_fn_outputs: tuple[LossFnOutput, ...] = attrs.field(converter=_outputs)
    metrics: Mapping[str, float] = attrs.field(factory=dict, converter=_metrics)
    loss_fn_output_type: str = "ArrayRecord"

    def __attrs_post_init__(self) -> None:
        for index, output in enumerate(self.loss_fn_outputs):
            require_type(output, LossFnOutput, "ForwardBackwardOutput", f"loss_fn_outputs[{index}]")
        require_type(self.loss_fn_output_type, str, "ForwardBackwardOutput", "loss_fn_output_type")

    @property
    def loss(self) -> float:
        """``metrics["loss:sum"]``; raises if the backend did not report it."""
        if "loss:sum" not in self.metrics:
            raise ValidationError("ForwardBackwardOutput", "metrics", "has no 'loss:sum' entry.")
        return self.metrics["loss:sum"]

    @property
    def logprobs_D(self) -> tuple[np.ndarray, ...]:
        """The per-datum target logprobs, in datum order."""
        return tuple(output.logprobs_T for output in self.loss_fn_outputs)
