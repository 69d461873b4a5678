"""Tinker's built-in losses in torch, token-wise, differentiable in the learner's logprobs. (Shell: torch.)

Each function mirrors a numpy reference formula of :mod:`tinkerflow.losses` (same per-token value, and autograd
gives the reference's ``dloss_dlogprobs_T``); tests check the pairs against each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.losses import LossFnType

__all__ = ["builtin_loss_elementwise", "sequence_ratio"]


def sequence_ratio(
    logprobs_N: torch.Tensor, sampling_N: torch.Tensor, ratio_mask_N: torch.Tensor, offsets: Sequence[int]
) -> torch.Tensor:
    """GSPO's ratio applied token-wise, ``sg(s) * exp(lp - sg(lp))``, for datums packed one after another in
    ``[N]`` values (datum ``d`` at ``offsets[d]:offsets[d + 1]``, ``N`` last): each datum's ``s`` is
    ``exp(mean(lp - q))`` over its positions where ``ratio_mask`` is 1 (``s = 1`` for a datum with none). The
    value is ``s`` at every position of the datum and the derivative in a position's ``lp`` is ``s``."""
    if logprobs_N.dim() != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != logprobs_N.shape[0]:
        raise ValidationError(
            "sequence_ratio",
            "offsets",
            f"must run from 0 to N over packed [N] values; got {len(offsets)} offsets for shape "
            f"{tuple(logprobs_N.shape)}.",
            "pass Packed.offsets with the packed loss inputs.",
        )
    lengths = torch.diff(torch.tensor(list(offsets), dtype=torch.int64))
    datum_N = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths).to(logprobs_N.device)
    zeros = torch.zeros(lengths.shape[0], dtype=logprobs_N.dtype, device=logprobs_N.device)
    count = zeros.index_add(0, datum_N, ratio_mask_N.to(logprobs_N.dtype))
    total = zeros.index_add(0, datum_N, (ratio_mask_N * (logprobs_N - sampling_N)).to(logprobs_N.dtype))
    log_ratio = torch.where(count > 0, total / count.clamp(min=1), zeros).detach()
    return torch.exp(log_ratio[datum_N] + logprobs_N - logprobs_N.detach())


def builtin_loss_elementwise(
    loss_fn: LossFnType,
    logprobs: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    config: Mapping[str, float],
    *,
    offsets: Sequence[int] | None = None,
) -> torch.Tensor:
    """Per-token loss of ``loss_fn`` (``inputs`` are the loss inputs by Tinker name, shaped as ``logprobs``).

    ``logprobs`` are the learner's target logprobs (``lp``); ``inputs["logprobs"]`` the sampling ones (``q``).
    ``config`` is a resolved config (:func:`tinkerflow.losses.resolve_loss_config`). Any shape, except for
    ``gspo``, whose sequence ratio is per datum: it takes packed ``[N]`` values and the datums' ``offsets``
    (``Packed.offsets``: where each datum starts, ``N`` last).

    Raises:
        ConfigError: ``stable_reinforce`` (its formula is not published) or another loss without an implementation.
        ValidationError: ``gspo`` without valid ``offsets`` (a caller's bug: the datums' boundaries are needed).
    """
    if loss_fn == "cross_entropy":
        return -inputs["weights"] * logprobs
    if loss_fn == "stable_reinforce":
        raise ConfigError(
            "LocalBackend",
            "loss_fn",
            "stable_reinforce is not implemented by the local backend: Tinker has not published its formula.",
            "use ppo, cispo or gspo locally, or TinkerBackend.",
        )
    sampling = inputs["logprobs"]
    advantages = inputs["advantages"]
    if loss_fn == "dro":
        beta = config["beta"]
        return -(logprobs * advantages - 0.5 * beta * (logprobs - sampling) ** 2)
    if loss_fn == "gspo":
        if offsets is None:
            raise ValidationError(
                "builtin_loss_elementwise", "offsets", "is missing; gspo's ratio is per datum.", "pass packed.offsets."
            )
        ratio = sequence_ratio(logprobs, sampling, inputs["sequence_ratio_mask"], offsets)
    else:
        ratio = torch.exp(logprobs - sampling)
    if loss_fn == "importance_sampling":
        return -(ratio * advantages)
    low, high = config["clip_low_threshold"], config["clip_high_threshold"]
    clipped = torch.clamp(ratio, low, high)
    if loss_fn in ("ppo", "gspo"):
        return -torch.minimum(ratio * advantages, clipped * advantages)
    if loss_fn == "cispo":
        return -(clipped.detach() * logprobs * advantages)
    raise ConfigError("LocalBackend", "loss_fn", f"loss {loss_fn!r} is not implemented by the local backend.")
