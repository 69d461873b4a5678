"""Forward and backward passes of the local training client: target logprobs, built-in and custom losses. (Shell.)

Losses are exactly the formulas of :mod:`tinkerflow.losses` (summed per token, no normalization), reporting
per-datum target logprobs and ``loss:sum``. Custom losses follow Tinker: differentiate the user's loss in the
logprobs, back-propagate ``sum(dloss/dlp * lp)``; ``loss:sum`` is the custom loss, ``surrogate_loss:sum`` the
surrogate's value. A batch runs in micro-batches whose gradients add up (same result, bounded memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, cast

import numpy as np
import torch

from tinkerflow import losses
from tinkerflow.errors import NonFiniteError, ValidationError
from tinkerflow.losses import LossFnType
from tinkerflow.shell.backends.local.batches import Batch, loss_inputs, padded, to_numpy
from tinkerflow.shell.backends.local.losses import builtin_loss_elementwise
from tinkerflow.shell.backends.protocol import CustomLossFn
from tinkerflow.training import ForwardBackwardOutput, LossFnOutput

__all__ = ["PlainHead", "run_builtin", "run_custom", "target_logprobs"]

#: Architectures whose causal-LM head is exactly ``lm_head(decoder(input_ids).last_hidden_state)`` (no logit
#: scaling or soft-capping), for which :class:`PlainHead` may split the head by position.
_PLAIN_HEAD_TYPES: Final = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[target]`` per row (in fp32 at least: bf16/fp16 logits are upcast)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def target_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(target_t | input_<=t)`` for a right-padded batch ``[D, T]``."""
    output = model(input_ids=input_ids, use_cache=False)
    logits = cast("torch.Tensor", output.logits)
    count, length, vocab = logits.shape
    return _token_logprobs(logits.reshape(count * length, vocab), targets.reshape(-1)).view(count, length)


class PlainHead:
    """The decoder and the unembedding of a plain causal LM, called separately.

    Training then runs the unembedding (and its backward) with autograd only at the positions whose loss can have a
    non-zero gradient (weighted completion tokens in SFT, tokens with an advantage in RL), and without autograd at
    the others (prompt tokens), whose logprobs are still reported. Same values and gradients, less work.
    """

    def __init__(self, causal_lm: torch.nn.Module) -> None:
        self.decoder = cast("torch.nn.Module", causal_lm.model)
        self.head = cast("torch.nn.Module", causal_lm.lm_head)

    @staticmethod
    def of(model: torch.nn.Module) -> PlainHead | None:
        """The split head of ``model`` (a peft model or a plain causal LM), or ``None`` when it is not plain."""
        unwrap = getattr(model, "get_base_model", None)
        causal_lm = cast("torch.nn.Module", unwrap()) if callable(unwrap) else model
        config = getattr(causal_lm, "config", None)
        plain = (
            getattr(config, "model_type", None) in _PLAIN_HEAD_TYPES
            and getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) is None
            and isinstance(getattr(causal_lm, "model", None), torch.nn.Module)
            and isinstance(getattr(causal_lm, "lm_head", None), torch.nn.Module)
        )
        return PlainHead(causal_lm) if plain else None

    def target_logprobs(self, input_ids: torch.Tensor, targets: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """As :func:`target_logprobs`, differentiable only at the positions where ``active`` is true."""
        hidden = cast("torch.Tensor", self.decoder(input_ids=input_ids, use_cache=False).last_hidden_state)
        count, length, width = hidden.shape
        flat_hidden = hidden.reshape(count * length, width)
        flat_targets = targets.reshape(-1)
        live = torch.nonzero(active.reshape(-1)).squeeze(1)
        idle = torch.nonzero(~active.reshape(-1)).squeeze(1)
        with torch.no_grad():
            idle_logprobs = _token_logprobs(self.head(flat_hidden[idle]), flat_targets[idle])
        live_logprobs = _token_logprobs(self.head(flat_hidden[live]), flat_targets[live])
        result = torch.zeros(count * length, dtype=live_logprobs.dtype, device=hidden.device)
        result = result.index_put((idle,), idle_logprobs).index_put((live,), live_logprobs)
        return result.view(count, length)


def _active_positions(
    loss_fn: LossFnType, inputs: Mapping[str, torch.Tensor], config: Mapping[str, float], mask: torch.Tensor
) -> torch.Tensor:
    """Positions whose per-token loss can have a non-zero derivative in the learner's logprob (see
    :mod:`tinkerflow.losses`: ``-w`` for cross-entropy, a multiple of ``A`` for the policy losses, and
    ``-(A - beta (lp - q))`` for DRO)."""
    if loss_fn == "cross_entropy":
        return mask & (inputs["weights"] != 0)
    if loss_fn == "dro" and config["beta"] != 0.0:
        return mask
    return mask & (inputs["advantages"] != 0)


def run_builtin(
    model: torch.nn.Module,
    head: PlainHead | None,
    batch: Batch,
    groups: Sequence[Sequence[int]],
    loss_fn: LossFnType,
    config: Mapping[str, float],
    *,
    backward: bool,
    device: torch.device,
) -> ForwardBackwardOutput:
    """A built-in loss over ``batch`` in the micro-batches ``groups``; with ``backward``, its gradient accumulates."""
    keys = [key for key in losses.LOSS_INPUTS[loss_fn] if key != "target_tokens"]
    logprobs_D: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(batch.data)
    total = 0.0
    for group in groups:
        ids, targets, mask = padded(batch, group, device)
        with torch.set_grad_enabled(backward):
            inputs = loss_inputs(batch, group, keys, ids.shape, device)
            if backward and head is not None:
                logprobs = head.target_logprobs(ids, targets, _active_positions(loss_fn, inputs, config, mask))
            else:
                logprobs = target_logprobs(model, ids, targets)
            safe = torch.where(mask, logprobs, torch.zeros_like(logprobs))
            elementwise = builtin_loss_elementwise(loss_fn, safe, inputs, config)
            loss = torch.where(mask, elementwise, torch.zeros_like(elementwise)).sum()
        if backward:
            torch.autograd.backward([loss])
        total += float(loss.detach())
        values = to_numpy(logprobs.float())
        for row, index in enumerate(group):
            logprobs_D[index] = values[row, : batch.inputs_D[index].size].astype(np.float32)
    check_finite_outputs(logprobs_D)
    return ForwardBackwardOutput(
        loss_fn_outputs=tuple(LossFnOutput(logprobs_T=lp) for lp in logprobs_D), metrics={"loss:sum": total}
    )


def check_finite_outputs(logprobs_D: Sequence[np.ndarray]) -> None:
    """Raise :class:`NonFiniteError` when the model's target logprobs hold NaN or infinity (diverged weights)."""
    for index, logprobs in enumerate(logprobs_D):
        if not np.isfinite(logprobs).all():
            raise NonFiniteError(
                "forward", f"logprobs_D[{index}]", "the model's log-probabilities are not finite: its weights "
                "diverged.",
                "lower the learning rate, or clip gradients (AdamParams.grad_clip_norm).",
            )  # fmt: skip


def _user_loss(
    loss_fn: CustomLossFn, batch: Batch, leaves: list[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The custom loss of the logprob leaves and its metrics, checked to be a differentiable scalar."""
    where = "forward_backward_custom"
    result = loss_fn(batch.data, leaves)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ValidationError(where, "loss_fn", "must return (loss, metrics).")
    loss, user_metrics = result
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValidationError(where, "loss_fn", "must return a scalar torch.Tensor as its loss.")
    metrics: dict[str, float] = {}
    for key, value in dict(user_metrics).items():
        number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        metrics[str(key)] = number
    if not loss.requires_grad:
        raise ValidationError(where, "loss_fn", "returned a loss that does not depend on the logprobs.")
    return loss, metrics


def run_custom(
    model: torch.nn.Module,
    batch: Batch,
    groups: Sequence[Sequence[int]],
    loss_fn: CustomLossFn,
    *,
    device: torch.device,
) -> ForwardBackwardOutput:
    """A custom loss of the per-datum logprobs: its gradient in the logprobs is back-propagated through the model.

    One micro-batch keeps its graph between the two passes; several are run again for the backward pass.
    """
    keep_graph = len(groups) == 1
    graphs: list[tuple[Sequence[int], torch.Tensor, torch.Tensor]] = []
    leaves: list[torch.Tensor] = [torch.zeros(0)] * len(batch.data)
    for group in groups:
        ids, targets, mask = padded(batch, group, device)
        with torch.set_grad_enabled(keep_graph):
            logprobs = target_logprobs(model, ids, targets)
        if keep_graph:
            graphs.append((group, logprobs, mask))
        for row, index in enumerate(group):
            length = batch.inputs_D[index].size
            leaf = logprobs[row, :length].detach().clone()
            leaves[index] = (leaf if leaf.dtype == torch.float64 else leaf.float()).requires_grad_(True)
    loss, metrics = _user_loss(loss_fn, batch, leaves)
    grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
    grad_D = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads, strict=True)]
    surrogate = 0.0
    if not keep_graph:
        graphs = []
        for group in groups:
            ids, targets, mask = padded(batch, group, device)
            graphs.append((group, target_logprobs(model, ids, targets), mask))
    for group, logprobs, mask in graphs:
        upstream = torch.zeros_like(logprobs)
        for row, index in enumerate(group):
            upstream[row, : batch.inputs_D[index].size] = grad_D[index].to(upstream.dtype)
        surrogate_loss = (torch.where(mask, logprobs, torch.zeros_like(logprobs)) * upstream).sum()
        torch.autograd.backward([surrogate_loss])
        surrogate += float(surrogate_loss.detach())
    metrics["loss:sum"] = float(loss.detach().sum())
    metrics["surrogate_loss:sum"] = surrogate
    values_D = [to_numpy(leaf).astype(np.float32) for leaf in leaves]
    check_finite_outputs(values_D)
    outputs = tuple(LossFnOutput(logprobs_T=values) for values in values_D)
    return ForwardBackwardOutput(loss_fn_outputs=outputs, metrics=metrics)
