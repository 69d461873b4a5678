"""Tinker's built-in losses in torch, token-wise, differentiable in the learner's logprobs. (Shell: torch.)

Each function mirrors a numpy reference formula of :mod:`tinkerflow.losses` (same per-token value, and autograd
gives the reference's ``dloss_dlogprobs_T``); tests check the pairs against each other.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from tinkerflow.errors import ConfigError
from tinkerflow.losses import LossFnType

__all__ = ["builtin_loss_elementwise"]


def builtin_loss_elementwise(
    loss_fn: LossFnType,
    logprobs: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    config: Mapping[str, float],
) -> torch.Tensor:
    """Per-token loss of ``loss_fn`` (any shape; ``inputs`` are the loss inputs by Tinker name, same shape).

    ``logprobs`` are the learner's target logprobs (``lp``); ``inputs["logprobs"]`` the sampling ones (``q``).
    ``config`` is a resolved config (:func:`tinkerflow.losses.resolve_loss_config`).
    """
    if loss_fn == "cross_entropy":
        return -inputs["weights"] * logprobs
    sampling = inputs["logprobs"]
    advantages = inputs["advantages"]
    if loss_fn == "dro":
        beta = config["beta"]
        return -(logprobs * advantages - 0.5 * beta * (logprobs - sampling) ** 2)
    ratio = torch.exp(logprobs - sampling)
    if loss_fn == "importance_sampling":
        return -(ratio * advantages)
    low, high = config["clip_low_threshold"], config["clip_high_threshold"]
    clipped = torch.clamp(ratio, low, high)
    if loss_fn == "ppo":
        return -torch.minimum(ratio * advantages, clipped * advantages)
    if loss_fn == "cispo":
        return -(clipped.detach() * logprobs * advantages)
    raise ConfigError("LocalBackend", "loss_fn", f"loss {loss_fn!r} is not implemented by the local backend.")
