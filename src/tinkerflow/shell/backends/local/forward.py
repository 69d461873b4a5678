"""Forward and backward passes of the local training client: target logprobs, built-in and custom losses. (Shell.)

Losses are exactly the formulas of :mod:`tinkerflow.losses` (summed per token, no normalization), reporting
per-datum target logprobs and ``loss:sum``. Custom losses follow Tinker: differentiate the user's loss in the
logprobs, back-propagate ``sum(dloss/dlp * lp)``; ``loss:sum`` is the custom loss, ``surrogate_loss:sum`` the
surrogate's value. A batch runs in micro-batches whose gradients add up (same result, bounded memory).

Memory: the loss sees only the datums' real positions (packed, no padding), and for the plain heads of
:class:`PlainHead` the unembedding runs in chunks of positions whose logits are recomputed in the backward pass
(:func:`chunked_logprobs`), so the ``[tokens, vocab]`` logits never exist at once, forward or backward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Final, cast

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from tinkerflow import losses
from tinkerflow.errors import NonFiniteError, ValidationError
from tinkerflow.losses import LossFnType
from tinkerflow.shell.backends.local.batches import Batch, Packed, pack, packed_inputs, to_numpy
from tinkerflow.shell.backends.local.losses import builtin_loss_elementwise
from tinkerflow.shell.backends.protocol import CustomLossFn
from tinkerflow.training import ForwardBackwardOutput, LossFnOutput

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "PlainHead",
    "checkpoint_layers",
    "chunked_logprobs",
    "packed_logprobs",
    "run_builtin",
    "run_custom",
    "target_logprobs",
]

#: Positions whose logits (``[chunk, vocab]``) are computed at once: 256 x 49152 fp32 logits are about 50 MB.
DEFAULT_CHUNK_TOKENS: Final = 256

#: Architectures whose causal-LM head is exactly ``lm_head(decoder(input_ids).last_hidden_state)`` (no logit
#: scaling or soft-capping), for which :class:`PlainHead` may split the head by position.
_PLAIN_HEAD_TYPES: Final = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[target]`` per row (in fp32 at least: bf16/fp16 logits are upcast)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def _head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _token_logprobs(cast("torch.Tensor", head(hidden)), targets)


def chunked_logprobs(
    head: torch.nn.Module, hidden_N: torch.Tensor, targets_N: torch.Tensor, chunk: int
) -> torch.Tensor:
    """``log_softmax(head(hidden))[target]`` per row of ``hidden_N`` (``[N, width]``), ``chunk`` rows at a time.

    Only one chunk's logits (``[chunk, vocab]``) exist at once. With autograd on, each chunk is checkpointed: its
    logits are dropped after the forward pass and computed again in the backward pass, so the backward pass holds
    one chunk's logits and their gradient at a time too (gradients reach ``hidden_N`` and the head's weights).
    """
    dtype = torch.promote_types(hidden_N.dtype, torch.float32)
    if hidden_N.shape[0] == 0:
        return torch.zeros(0, dtype=dtype, device=hidden_N.device)
    differentiable = torch.is_grad_enabled() and (
        hidden_N.requires_grad or any(parameter.requires_grad for parameter in head.parameters())
    )
    pieces: list[torch.Tensor] = []
    for start in range(0, hidden_N.shape[0], chunk):
        hidden, targets = hidden_N[start : start + chunk], targets_N[start : start + chunk]
        if differentiable:
            piece = checkpoint(_head_logprobs, head, hidden, targets, use_reentrant=False, preserve_rng_state=False)
            pieces.append(cast("torch.Tensor", piece))
        else:
            pieces.append(_head_logprobs(head, hidden, targets))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def checkpoint_layers(model: torch.nn.Module) -> int:
    """Checkpoint every decoder layer of ``model`` (activation checkpointing); the number of layers wrapped.

    With autograd on, a layer keeps only its inputs from the forward pass and runs again in the backward pass, so
    the activations kept for a backward pass are one hidden state per layer and position instead of every
    intermediate (about 18 times less for SmolLM2), for one more forward pass of the decoder. Without autograd
    (``forward``, sampling) the layers run as before. Parameter names and results are unchanged.
    """
    unwrap = getattr(model, "get_base_model", None)
    causal_lm = cast("torch.nn.Module", unwrap()) if callable(unwrap) else model
    layers = getattr(getattr(causal_lm, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        return 0
    for layer in layers:
        plain = layer.forward

        def forward(*args: object, _plain: Callable[..., object] = plain, **kwargs: object) -> object:
            if not torch.is_grad_enabled():
                return _plain(*args, **kwargs)
            bound = functools.partial(_plain, **kwargs)  # tensors among kwargs are saved as any other
            return checkpoint(bound, *args, use_reentrant=False, preserve_rng_state=False)

        layer.forward = forward  # an instance attribute: module names and parameters stay as they are
    return len(layers)


def target_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(target_t | input_<=t)`` for a right-padded batch ``[D, T]``, from the model's full logits (the path
    for heads :class:`PlainHead` cannot split)."""
    output = model(input_ids=input_ids, use_cache=False)
    logits = cast("torch.Tensor", output.logits)
    count, length, vocab = logits.shape
    return _token_logprobs(logits.reshape(count * length, vocab), targets.reshape(-1)).view(count, length)


class PlainHead:
    """The decoder and the unembedding of a plain causal LM, called separately.

    The unembedding then runs only at the datums' real positions (never the padding), in chunks
    (:func:`chunked_logprobs`), and with autograd only at the positions whose loss can have a non-zero gradient
    (weighted completion tokens in SFT, tokens with an advantage in RL); the others (prompt tokens) run without
    autograd and their logprobs are still reported. Same values and gradients, less work and memory.
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

    def target_logprobs(self, packed: Packed, active_N: torch.Tensor | None, chunk: int) -> torch.Tensor:
        """The target logprobs of ``packed``'s real positions (``[N]``), differentiable (when autograd is on) only
        where ``active_N`` is true (everywhere when it is ``None``)."""
        hidden = cast("torch.Tensor", self.decoder(input_ids=packed.ids, use_cache=False).last_hidden_state)
        hidden_N = hidden.reshape(-1, hidden.shape[-1])[packed.positions]
        if active_N is None or not torch.is_grad_enabled():
            return chunked_logprobs(self.head, hidden_N, packed.targets, chunk)
        live = torch.nonzero(active_N).squeeze(1)
        idle = torch.nonzero(~active_N).squeeze(1)
        with torch.no_grad():
            idle_logprobs = chunked_logprobs(self.head, hidden_N[idle], packed.targets[idle], chunk)
        live_logprobs = chunked_logprobs(self.head, hidden_N[live], packed.targets[live], chunk)
        result = torch.zeros(hidden_N.shape[0], dtype=live_logprobs.dtype, device=hidden_N.device)
        return result.index_put((idle,), idle_logprobs).index_put((live,), live_logprobs)


def packed_logprobs(
    model: torch.nn.Module, head: PlainHead | None, packed: Packed, active_N: torch.Tensor | None, chunk: int
) -> torch.Tensor:
    """The target logprobs of ``packed``'s real positions (``[N]``): through ``head`` when the model has a plain
    one, else from the model's full logits."""
    if head is not None:
        return head.target_logprobs(packed, active_N, chunk)
    targets = torch.zeros_like(packed.ids).reshape(-1)
    targets[packed.positions] = packed.targets
    return target_logprobs(model, packed.ids, targets.view_as(packed.ids)).reshape(-1)[packed.positions]


def _active_positions(
    loss_fn: LossFnType, inputs: Mapping[str, torch.Tensor], config: Mapping[str, float]
) -> torch.Tensor:
    """Positions whose per-token loss can have a non-zero derivative in the learner's logprob (see
    :mod:`tinkerflow.losses`: ``-w`` for cross-entropy, a multiple of ``A`` for the policy losses, and
    ``-(A - beta (lp - q))`` for DRO)."""
    if loss_fn == "cross_entropy":
        return inputs["weights"] != 0
    if loss_fn == "dro" and config["beta"] != 0.0:
        return torch.ones_like(inputs["advantages"], dtype=torch.bool)
    return inputs["advantages"] != 0


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
    chunk: int = DEFAULT_CHUNK_TOKENS,
    before_pass: Callable[[], object] | None = None,
) -> ForwardBackwardOutput:
    """A built-in loss over ``batch`` in the micro-batches ``groups``; with ``backward``, its gradient accumulates.

    The loss runs on the real positions only (packed, :func:`~tinkerflow.shell.backends.local.batches.pack`), the
    unembedding in chunks of ``chunk`` positions (:func:`chunked_logprobs`). ``before_pass`` (if any) runs before
    each micro-batch.
    """
    keys = [key for key in losses.LOSS_INPUTS[loss_fn] if key != "target_tokens"]
    logprobs_D: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(batch.data)
    total = 0.0
    between = before_pass if before_pass is not None else _nothing
    for group in groups:
        between()
        packed = pack(batch, group, device)
        with torch.set_grad_enabled(backward):
            inputs = packed_inputs(batch, group, keys, device)
            active = _active_positions(loss_fn, inputs, config) if backward else None
            logprobs = packed_logprobs(model, head, packed, active, chunk)
            loss = builtin_loss_elementwise(loss_fn, logprobs, inputs, config, offsets=packed.offsets).sum()
        if backward and loss.requires_grad:  # not when no position of the micro-batch has a gradient
            torch.autograd.backward([loss])
        total += float(loss.detach())
        for index, values in zip(group, packed.split(logprobs.detach()), strict=True):
            logprobs_D[index] = to_numpy(values).astype(np.float32)
        del loss, logprobs, inputs, packed
    check_finite_outputs(logprobs_D)
    return ForwardBackwardOutput(
        loss_fn_outputs=tuple(LossFnOutput(logprobs_T=lp) for lp in logprobs_D), metrics={"loss:sum": total}
    )


def _nothing() -> None:
    pass


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
    head: PlainHead | None = None,
    chunk: int = DEFAULT_CHUNK_TOKENS,
    before_pass: Callable[[], object] | None = None,
) -> ForwardBackwardOutput:
    """A custom loss of the per-datum logprobs: its gradient in the logprobs is back-propagated through the model.

    One micro-batch keeps its graph between the two passes; several are run again for the backward pass (with
    autograd only where the loss's gradient is non-zero). Logprobs are packed and chunked, and ``before_pass`` runs,
    as in :func:`run_builtin`.
    """
    between = before_pass if before_pass is not None else _nothing
    keep_graph = len(groups) == 1
    graphs: list[tuple[Packed, torch.Tensor]] = []
    leaves: list[torch.Tensor] = [torch.zeros(0)] * len(batch.data)
    for group in groups:
        between()
        packed = pack(batch, group, device)
        with torch.set_grad_enabled(keep_graph):
            logprobs = packed_logprobs(model, head, packed, None, chunk)
        if keep_graph:
            graphs.append((packed, logprobs))
        for index, values in zip(group, packed.split(logprobs.detach()), strict=True):
            leaf = values.clone()
            leaves[index] = (leaf if leaf.dtype == torch.float64 else leaf.float()).requires_grad_(True)
    loss, metrics = _user_loss(loss_fn, batch, leaves)
    grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
    grad_D = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads, strict=True)]
    surrogate = 0.0
    for number, group in enumerate(groups):
        upstream = torch.cat([grad_D[index] for index in group])
        if keep_graph:
            packed, logprobs = graphs[number]
        else:
            between()
            packed = pack(batch, group, device)
            logprobs = packed_logprobs(model, head, packed, upstream != 0, chunk)
        surrogate_loss = (logprobs * upstream.to(logprobs.dtype)).sum()
        if surrogate_loss.requires_grad:  # not when the loss has no gradient in this micro-batch
            torch.autograd.backward([surrogate_loss])
        surrogate += float(surrogate_loss.detach())
        del logprobs, surrogate_loss
    graphs.clear()
    metrics["loss:sum"] = float(loss.detach().sum())
    metrics["surrogate_loss:sum"] = surrogate
    values_D = [to_numpy(leaf).astype(np.float32) for leaf in leaves]
    check_finite_outputs(values_D)
    outputs = tuple(LossFnOutput(logprobs_T=values) for values in values_D)
    return ForwardBackwardOutput(loss_fn_outputs=outputs, metrics=metrics)
