"""Metrics of one batch of rollouts, computed from records keyed by group and trajectory id (never list position).

Keys (all floats):

========================================== =============================================================
``reward/mean``, ``/std``, ``/min``,       total reward (step rewards + group reward) over every finished
``/max``                                   trajectory (population std); absent when there is none
``env/<tag>/reward_mean``,                 the same mean, and the trajectory count, over the groups carrying
``env/<tag>/trajectories``                 ``<tag>``
``episode/turns_mean``                     transitions per trajectory
``episode/action_tokens_mean``,            action tokens per trajectory, and in the whole batch
``tokens/action_total``
``episode/observation_tokens_mean``        observation positions of the first turn (the prompt)
``turns/masked_frac``                      fraction of transitions whose action is masked (parse errors)
``turns/truncated_frac``                   fraction of transitions whose sampling stopped on ``max_tokens``
``groups/total``, ``groups/kept``,         groups in the batch, kept for training, dropped (constant-reward or
``groups/dropped``                         no finished member)
``groups/constant_frac``                   fraction of groups with members whose total rewards are all equal
``advantage/abs_mean``,                    mean ``|advantage|`` over kept trajectories, fraction that are 0
``advantage/zero_frac``
``failures/<kind>``, ``failures/total``    failed members by kind (``exception``, ``timeout``,
                                           ``non_finite_reward``)
``step/<key>``, ``group/<key>``            mean of each environment step metric over the transitions that
                                           carry it, and of each group metric over the trajectories
========================================== =============================================================
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import get_args

import numpy as np

from tinkerflow._validate import require_type
from tinkerflow.errors import ValidationError
from tinkerflow.rl.advantages import AdvantageResult, is_constant
from tinkerflow.rl.types import FailureKind, TrajectoryGroup, unique_groups

__all__ = ["rollout_metrics"]


def _mean_of(values: dict[str, list[float]], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{key}": float(np.mean(items)) for key, items in sorted(values.items()) if items}


def rollout_metrics(groups: Sequence[TrajectoryGroup], advantages: AdvantageResult) -> dict[str, float]:
    """The metrics of one batch (see the module docstring for the keys).

    Raises:
        ValidationError: two groups share an id, or ``advantages`` names a kept group that is not in ``groups``.
    """
    where = "rollout_metrics"
    require_type(advantages, AdvantageResult, where, "advantages")
    rewards: dict[str, float] = {}  # trajectory id -> total reward
    tag_members: dict[str, list[str]] = defaultdict(list)  # tag -> trajectory ids
    turns: dict[str, int] = {}
    action_tokens: dict[str, int] = {}
    prompt_tokens: dict[str, int] = {}
    transitions = masked = truncated = 0
    step_metrics: dict[str, list[float]] = defaultdict(list)
    group_metrics: dict[str, list[float]] = defaultdict(list)
    failures = dict.fromkeys(get_args(FailureKind), 0)
    constant = 0
    seen: set[str] = set()
    for _, group in unique_groups(groups, where, seen):
        for failure in group.failures:
            failures[failure.kind] = failures.get(failure.kind, 0) + 1
        totals_G = group.total_rewards_G()
        if group.trajectories and is_constant(totals_G):
            constant += 1
        for trajectory_id, trajectory, total, metrics in zip(
            group.trajectory_ids, group.trajectories, totals_G.tolist(), group.metrics_G, strict=True
        ):
            rewards[trajectory_id] = total
            for tag in group.tags:
                tag_members[tag].append(trajectory_id)
            turns[trajectory_id] = len(trajectory.transitions)
            action_tokens[trajectory_id] = sum(t.action_tokens_T.shape[0] for t in trajectory.transitions)
            prompt_tokens[trajectory_id] = trajectory.transitions[0].observation.length if trajectory.transitions else 0
            for transition in trajectory.transitions:
                transitions += 1
                masked += transition.mask_turn
                truncated += transition.stop_reason == "length"
                for key, value in transition.metrics.items():
                    step_metrics[key].append(value)
            for key, value in metrics.items():
                group_metrics[key].append(value)
    missing = [group_id for group_id in advantages.kept_group_ids if group_id not in seen]
    if missing:
        raise ValidationError(
            where, "advantages", f"names kept groups {missing} that are not in groups.", "pass the same batch."
        )
    out: dict[str, float] = {}
    if rewards:
        values = np.fromiter(rewards.values(), dtype=np.float64, count=len(rewards))
        out.update(
            {
                "reward/mean": float(values.mean()),
                "reward/std": float(values.std()),
                "reward/min": float(values.min()),
                "reward/max": float(values.max()),
                "episode/turns_mean": float(np.mean(list(turns.values()))),
                "episode/action_tokens_mean": float(np.mean(list(action_tokens.values()))),
                "episode/observation_tokens_mean": float(np.mean(list(prompt_tokens.values()))),
            }
        )
    for tag, members in sorted(tag_members.items()):
        out[f"env/{tag}/reward_mean"] = float(np.mean([rewards[member] for member in members]))
        out[f"env/{tag}/trajectories"] = float(len(members))
    out["tokens/action_total"] = float(sum(action_tokens.values()))
    out["turns/masked_frac"] = masked / transitions if transitions else 0.0
    out["turns/truncated_frac"] = truncated / transitions if transitions else 0.0
    n_groups = len(seen)
    out["groups/total"] = float(n_groups)
    out["groups/kept"] = float(len(advantages.kept))
    out["groups/dropped"] = float(sum(1 for group_id in advantages.dropped_group_ids if group_id in seen))
    out["groups/constant_frac"] = constant / n_groups if n_groups else 0.0
    by_trajectory = advantages.by_trajectory()
    if by_trajectory:
        kept_values = np.fromiter(by_trajectory.values(), dtype=np.float64, count=len(by_trajectory))
        out["advantage/abs_mean"] = float(np.abs(kept_values).mean())
        out["advantage/zero_frac"] = float(np.mean(kept_values == 0))
    for kind, count in sorted(failures.items()):
        out[f"failures/{kind}"] = float(count)
    out["failures/total"] = float(sum(failures.values()))
    out.update(_mean_of(step_metrics, "step"))
    out.update(_mean_of(group_metrics, "group"))
    return out
