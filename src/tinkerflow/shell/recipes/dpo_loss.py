"""The DPO loss in torch (shell): a custom loss for ``forward_backward_custom``, so autograd gives the gradient.

Its metrics come from the numpy core (:func:`tinkerflow.preference.dpo_loss`,
:mod:`tinkerflow.preference.evaluation`); ``tests/test_dpo_loop.py`` checks that loss and gradients agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tinkerflow.datum import Datum
from tinkerflow.errors import ShapeError
from tinkerflow.preference.dpo import dpo_loss
from tinkerflow.preference.evaluation import datum_weights, policy_accuracy, weight_sums
from tinkerflow.shell.backends.protocol import CustomLossFn

if TYPE_CHECKING:
    import torch

__all__ = ["dpo_loss_fn"]


def dpo_loss_fn(
    ref_chosen_B: Sequence[float] | np.ndarray,
    ref_rejected_B: Sequence[float] | np.ndarray,
    beta: float,
    *,
    report: Callable[[Mapping[str, float]], None] | None = None,
) -> CustomLossFn:
    """The DPO loss of one batch as a custom loss for ``forward_backward_custom``.

    The batch is ``B`` pairs sent interleaved ``(chosen_0, rejected_0, ...)`` with 0/1 weights on the
    completions; ``ref_*_B`` are the reference's sequence logprobs. The closure computes, in float64 torch (so
    autograd gives the gradient the backend back-propagates), the sequence logprobs ``sum_t w_t * lp_t`` and
    ``-mean(logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))))``; its metrics come from the numpy core
    (:func:`tinkerflow.preference.dpo_loss`: ``dpo_loss``, ``accuracy``, ``margin``, ``chosen_reward``,
    ``rejected_reward``) plus ``policy_accuracy`` (see
    :class:`~tinkerflow.preference.evaluation.DPOEval`) and ``tokens`` (weighted tokens).
    ``tests/test_dpo_loop.py`` checks that its loss and per-token gradients equal
    :func:`~tinkerflow.preference.dpo_loss` / :func:`~tinkerflow.preference.dpo_token_gradients`.

    ``report`` receives the metrics (on the thread that runs the loss).
    """
    ref_chosen = np.array(ref_chosen_B, dtype=np.float64)  # private writable copies (torch shares their memory)
    ref_rejected = np.array(ref_rejected_B, dtype=np.float64)
    if ref_chosen.ndim != 1 or ref_chosen.shape != ref_rejected.shape:
        raise ShapeError(
            "dpo_loss_fn",
            "ref_rejected_B",
            f"shapes {ref_chosen.shape} and {ref_rejected.shape}.",
            "give one reference value per pair on each side.",
        )
    pairs = ref_chosen.shape[0]

    def loss_fn(data: Sequence[Datum], logprobs_D: Sequence[torch.Tensor]) -> tuple[torch.Tensor, Mapping[str, float]]:
        import torch

        if len(data) != 2 * pairs or len(logprobs_D) != len(data):
            raise ShapeError(
                "dpo_loss_fn",
                "data",
                f"got {len(data)} datums and {len(logprobs_D)} logprob tensors for {pairs} pairs.",
                "send each pair's chosen and rejected datum, interleaved.",
            )
        weights_D = [datum_weights(datum) for datum in data]
        lengths = np.fromiter((array.shape[0] for array in weights_D), dtype=np.int64, count=len(weights_D))
        flat_lp = torch.cat([logprobs.reshape(-1) for logprobs in logprobs_D]).to(torch.float64)
        if flat_lp.shape[0] != int(lengths.sum()):
            raise ShapeError("dpo_loss_fn", "logprobs_D", "the logprobs do not match the datums' lengths.")
        weights = np.concatenate(weights_D).astype(np.float64)
        flat_w = torch.from_numpy(weights).to(flat_lp.device)
        segment = torch.from_numpy(np.repeat(np.arange(len(data)), lengths)).to(flat_lp.device)
        sequence_D = torch.zeros(len(data), dtype=torch.float64, device=flat_lp.device).index_add(
            0, segment, flat_lp * flat_w
        )
        ref_c = torch.from_numpy(ref_chosen).to(flat_lp.device)
        ref_r = torch.from_numpy(ref_rejected).to(flat_lp.device)
        z = beta * ((sequence_D[0::2] - ref_c) - (sequence_D[1::2] - ref_r))
        loss = -torch.nn.functional.logsigmoid(z).mean()
        policy_D = sequence_D.detach().cpu().numpy()
        output = dpo_loss(policy_D[0::2], policy_D[1::2], ref_chosen, ref_rejected, beta)
        sums = weight_sums(data)
        metrics = {
            **output.metrics.as_dict(),
            "policy_accuracy": policy_accuracy(policy_D, sums),
            "tokens": float(sums.sum()),
        }
        if report is not None:
            report(metrics)
        return loss, metrics

    return loss_fn
