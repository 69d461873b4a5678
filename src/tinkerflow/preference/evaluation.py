"""DPO evaluation, pure numpy: held-out DPO loss, implicit-reward and policy accuracy from sequence logprobs.

The DPO loop (:mod:`tinkerflow.shell.recipes.dpo`) runs forward passes of the held-out pairs and hands their
per-token logprobs here; its metrics rows hold the :class:`DPOEval` fields as ``eval_*``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import numpy as np

from tinkerflow.datum import Datum
from tinkerflow.errors import ValidationError
from tinkerflow.preference.dpo import dpo_loss, sequence_logprobs
from tinkerflow.preference.pairs import DPOPairs

__all__ = [
    "DPOEval",
    "datum_weights",
    "eval_from_row",
    "evaluate_pairs",
    "policy_accuracy",
    "policy_eval",
    "weight_sums",
]


@attrs.frozen
class DPOEval:
    """Held-out DPO metrics of the policy at one point of training.

    Attributes:
        dpo_loss: the DPO loss against the reference (``log 2`` when the policy is the reference).
        accuracy: implicit-reward accuracy: fraction of pairs with ``pi_c - ref_c > pi_r - ref_r`` (strictly; 0
            when the policy is the reference, so it only says how far training moved the policy the right way).
        policy_accuracy: the policy's own preference: fraction of pairs whose chosen completion has the higher
            *per-token* (length-normalized) logprob ``sum_t w_t lp_t / sum_t w_t`` under the policy, reference
            ignored. Length-normalized so a shorter completion does not win by being short; it is meaningful
            before training too.
        margin / chosen_reward / rejected_reward: as in :class:`tinkerflow.preference.DPOMetrics`.
        pairs: held-out pairs evaluated.
    """

    dpo_loss: float
    accuracy: float
    policy_accuracy: float
    margin: float
    chosen_reward: float
    rejected_reward: float
    pairs: int

    def as_row(self, prefix: str = "eval_") -> dict[str, float | int]:
        """The metrics keyed ``eval_dpo_loss``, ``eval_accuracy``, ... (``prefix`` + field name)."""
        return {prefix + key: value for key, value in attrs.asdict(self).items()}


def datum_weights(datum: Datum) -> np.ndarray:
    """A DPO datum's completion weights (every DPO datum has them)."""
    if datum.weights_T is None:
        raise ValidationError("dpo", "weights_T", "a DPO datum needs weights.", "build datums with dpo_pairs.")
    return datum.weights_T


def weight_sums(datums: Sequence[Datum]) -> np.ndarray:
    """Each datum's total weight (its completion's token count under 0/1 weights), float64."""
    return np.array([float(np.sum(datum_weights(datum), dtype=np.float64)) for datum in datums])


def policy_accuracy(policy_D: np.ndarray, weight_sums_D: np.ndarray) -> float:
    """Fraction of pairs whose chosen side has the higher per-token policy logprob (interleaved inputs)."""
    per_token = np.divide(policy_D, weight_sums_D, out=np.zeros_like(policy_D), where=weight_sums_D > 0)
    return float((per_token[0::2] > per_token[1::2]).mean())


def policy_eval(
    policy_D: np.ndarray, weight_sums_D: np.ndarray, ref_c: np.ndarray, ref_r: np.ndarray, beta: float
) -> DPOEval:
    """:class:`DPOEval` of interleaved policy sequence logprobs against the reference ones."""
    metrics = dpo_loss(policy_D[0::2], policy_D[1::2], ref_c, ref_r, beta).metrics
    return DPOEval(
        dpo_loss=metrics.dpo_loss,
        accuracy=metrics.accuracy,
        policy_accuracy=policy_accuracy(policy_D, weight_sums_D),
        margin=metrics.margin,
        chosen_reward=metrics.chosen_reward,
        rejected_reward=metrics.rejected_reward,
        pairs=int(policy_D.shape[0] // 2),
    )


def evaluate_pairs(
    logprobs_D: Sequence[np.ndarray],
    pairs: DPOPairs,
    ref_chosen_B: np.ndarray,
    ref_rejected_B: np.ndarray,
    beta: float,
) -> DPOEval:
    """:class:`DPOEval` of ``pairs`` from the policy's per-token logprobs of ``pairs.interleaved()``."""
    datums = pairs.interleaved()
    policy_D = sequence_logprobs(logprobs_D, [datum_weights(datum) for datum in datums])
    return policy_eval(policy_D, weight_sums(datums), ref_chosen_B, ref_rejected_B, beta)


def eval_from_row(row: Mapping[str, object]) -> DPOEval | None:
    """The evaluation logged in a metrics row (``eval_*`` keys), if the row holds one."""
    values: dict[str, float] = {}
    for field in attrs.fields(DPOEval):
        value = row.get("eval_" + field.name)
        if not isinstance(value, (int, float)):
            return None
        values[field.name] = float(value)
    return DPOEval(
        dpo_loss=values["dpo_loss"],
        accuracy=values["accuracy"],
        policy_accuracy=values["policy_accuracy"],
        margin=values["margin"],
        chosen_reward=values["chosen_reward"],
        rejected_reward=values["rejected_reward"],
        pairs=int(values["pairs"]),
    )
