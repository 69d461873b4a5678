"""Group advantages: each trajectory's total reward centered on its group's mean (optionally divided by the std).

Pure (numpy only). Matches tinker-cookbook 0.6.1's ``compute_advantages`` (``reward - mean(reward)`` per group, no
std normalization by default: "Dr. GRPO") and its ``remove_constant_reward_groups``, with two deliberate
differences:

* When every group is dropped the result is empty and the training step must be **skipped**; the cookbook keeps
  one constant group and still takes an optimizer step with zero gradient (Adam's momentum moves the weights).
* Centering is computed in float64 from the float64 total rewards and rounded to float32 once; the cookbook
  rounds the rewards to float32 first and centers in float32, so its advantages can differ in the last float32
  bit (and it collapses rewards closer together than float32 resolves to zero advantage).

Groups and trajectories are identified by id (``group_id``, ``f"{group_id}/{member_index}"``), never by position.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal, TypeAlias

import attrs
import numpy as np

from tinkerflow._validate import require_type, str_tuple
from tinkerflow.arrays import Float32_G, as_float32_1d
from tinkerflow.datum import arrays_equal
from tinkerflow.errors import ConfigError, ShapeError, ValidationError
from tinkerflow.rl.types import TrajectoryGroup, unique_groups

__all__ = [
    "AdvantageConfig",
    "AdvantageResult",
    "ConstantGroupPolicy",
    "GroupAdvantages",
    "compute_advantages",
    "group_advantages",
    "is_constant",
]

#: What happens to a group whose members all got the same total reward (zero advantage everywhere).
ConstantGroupPolicy: TypeAlias = Literal["keep", "drop"]

_ARRAY_EQ = attrs.cmp_using(eq=arrays_equal)


def _require(value: object, kind: type, where: str, field: str) -> None:
    """``require_type`` for non-numeric kinds, with the cheap ``isinstance`` first (called once per trajectory)."""
    if not isinstance(value, kind):
        require_type(value, kind, where, field)


def _groups_tuple(value: Iterable[GroupAdvantages]) -> tuple[GroupAdvantages, ...]:
    return tuple(value)


@attrs.frozen
class AdvantageConfig:
    """How rewards become advantages.

    Attributes:
        normalize_std: divide the centered rewards by ``std + std_eps`` (population std, ``ddof=0``, of the
            group's total rewards), as in GRPO. Off by default, as in the cookbook.
        constant_groups: ``"keep"`` a group whose rewards are all equal (its advantages are all zero) or
            ``"drop"`` it (the cookbook's ``remove_constant_reward_groups``).
        std_eps: added to the std before dividing (positive, finite).
    """

    normalize_std: bool = False
    constant_groups: ConstantGroupPolicy = "keep"
    std_eps: float = 1e-6

    def __attrs_post_init__(self) -> None:
        where = "AdvantageConfig"
        require_type(self.normalize_std, bool, where, "normalize_std")
        if self.constant_groups not in ("keep", "drop"):
            raise ConfigError(
                where, "constant_groups", f"must be 'keep' or 'drop', got {self.constant_groups!r}.", "pick one."
            )
        if isinstance(self.std_eps, bool) or not isinstance(self.std_eps, int | float):
            raise ConfigError(where, "std_eps", f"must be a number, got {type(self.std_eps).__name__}.")
        if not (math.isfinite(self.std_eps) and self.std_eps > 0):
            raise ConfigError(where, "std_eps", f"must be positive and finite, got {self.std_eps!r}.", "use 1e-6.")


def _float32_g(value: object) -> np.ndarray:
    return as_float32_1d(value, "GroupAdvantages", "advantages_G")


def _rewards_g(value: object) -> np.ndarray:
    return as_float32_1d(value, "GroupAdvantages", "rewards_G")


@attrs.frozen
class GroupAdvantages:
    """The advantage of each trajectory of one group, with the total rewards it came from (both float32).

    ``advantages_G[i]`` and ``rewards_G[i]`` belong to ``trajectory_ids[i]``; look them up with
    :meth:`advantage_of`.
    """

    group_id: str
    trajectory_ids: tuple[str, ...] = attrs.field(converter=str_tuple)
    advantages_G: Float32_G = attrs.field(converter=_float32_g, eq=_ARRAY_EQ, hash=False)
    rewards_G: Float32_G = attrs.field(converter=_rewards_g, eq=_ARRAY_EQ, hash=False)

    def __attrs_post_init__(self) -> None:
        where = "GroupAdvantages"
        _require(self.group_id, str, where, "group_id")
        size = len(self.trajectory_ids)
        for index, trajectory_id in enumerate(self.trajectory_ids):
            _require(trajectory_id, str, where, f"trajectory_ids[{index}]")
        for name in ("advantages_G", "rewards_G"):
            length = int(getattr(self, name).shape[0])
            if length != size:
                raise ShapeError(
                    where, name, f"has {length} entries for {size} trajectory ids.", "give one per trajectory."
                )
        if len(set(self.trajectory_ids)) != size:
            raise ValidationError(where, "trajectory_ids", "repeats an id.", "give each trajectory its own id.")

    def advantage_of(self, trajectory_id: str) -> float:
        """The advantage of the trajectory named ``trajectory_id``."""
        try:
            index = self.trajectory_ids.index(trajectory_id)
        except ValueError:
            raise ValidationError(
                "GroupAdvantages.advantage_of",
                "trajectory_id",
                f"{trajectory_id!r} is not a trajectory of group {self.group_id!r}.",
                "use an id from trajectory_ids.",
            ) from None
        return float(self.advantages_G[index])

    def by_trajectory(self) -> dict[str, float]:
        """``{trajectory_id: advantage}``."""
        return dict(zip(self.trajectory_ids, self.advantages_G.tolist(), strict=True))


@attrs.frozen
class AdvantageResult:
    """The groups kept for training, with their advantages, and the ids of the groups dropped.

    An empty ``kept`` means there is nothing to train on: skip the step (take no optimizer step).
    """

    kept: tuple[GroupAdvantages, ...] = attrs.field(converter=_groups_tuple)
    dropped_group_ids: tuple[str, ...] = attrs.field(default=(), converter=str_tuple)

    def __attrs_post_init__(self) -> None:
        where = "AdvantageResult"
        for index, group in enumerate(self.kept):
            _require(group, GroupAdvantages, where, f"kept[{index}]")
        for index, group_id in enumerate(self.dropped_group_ids):
            _require(group_id, str, where, f"dropped_group_ids[{index}]")
        ids = [group.group_id for group in self.kept] + list(self.dropped_group_ids)
        if len(set(ids)) != len(ids):
            raise ValidationError(
                where, "kept", "names a group id twice (kept or dropped).", "give every group a unique group_id."
            )

    @property
    def is_empty(self) -> bool:
        """No group is left: the step must be skipped."""
        return not self.kept

    @property
    def has_signal(self) -> bool:
        """Some kept trajectory has a nonzero advantage (with ``constant_groups="keep"`` a step can have none)."""
        return any(bool(np.any(group.advantages_G != 0)) for group in self.kept)

    @property
    def kept_group_ids(self) -> tuple[str, ...]:
        return tuple(group.group_id for group in self.kept)

    def by_group(self) -> dict[str, GroupAdvantages]:
        """``{group_id: GroupAdvantages}`` of the kept groups."""
        return {group.group_id: group for group in self.kept}

    def by_trajectory(self) -> dict[str, float]:
        """``{trajectory_id: advantage}`` over every kept group."""
        result: dict[str, float] = {}
        for group in self.kept:
            result.update(group.by_trajectory())
        return result


def is_constant(rewards_G: np.ndarray) -> bool:
    """Whether every reward equals the first (exact comparison, as the cookbook's ``all_same``)."""
    return bool(rewards_G.size == 0 or np.all(rewards_G == rewards_G[0]))


def group_advantages(rewards_G: np.ndarray, config: AdvantageConfig = AdvantageConfig()) -> np.ndarray:
    """Centered (and optionally std-normalized) rewards of one group, computed in float64, returned as float32.

    A constant group gets exactly zero advantages.
    """
    rewards = np.asarray(rewards_G, dtype=np.float64)
    if is_constant(rewards):  # exactly zero (the mean of equal floats need not equal them)
        return np.zeros(rewards.shape[0], dtype=np.float32)
    centered: np.ndarray = rewards - rewards.mean()
    if config.normalize_std:
        centered = centered / (rewards.std() + config.std_eps)
    return centered.astype(np.float32)


def compute_advantages(
    groups: Sequence[TrajectoryGroup], config: AdvantageConfig = AdvantageConfig()
) -> AdvantageResult:
    """The advantages of every trajectory, centered within its group.

    A group with no trajectories (every member failed) is dropped; so is a constant-reward group when
    ``config.constant_groups == "drop"``. When nothing is kept, the result is empty: skip the step.

    Raises:
        ValidationError: ``groups`` is not a sequence of :class:`TrajectoryGroup`, or two groups share a
            ``group_id``.
    """
    where = "compute_advantages"
    require_type(config, AdvantageConfig, where, "config")
    kept: list[GroupAdvantages] = []
    dropped: list[str] = []
    for _, group in unique_groups(groups, where, set()):
        if not group.trajectories:
            dropped.append(group.group_id)
            continue
        rewards_G = group.total_rewards_G()
        if config.constant_groups == "drop" and is_constant(rewards_G):
            dropped.append(group.group_id)
            continue
        kept.append(
            GroupAdvantages(
                group_id=group.group_id,
                trajectory_ids=group.trajectory_ids,
                advantages_G=group_advantages(rewards_G, config),
                rewards_G=rewards_G.astype(np.float32),
            )
        )
    return AdvantageResult(kept=tuple(kept), dropped_group_ids=tuple(dropped))
