"""Reinforcement-learning records and protocols (pure: no torch, no network, no clock).

Data flows as records:

* an environment (:class:`Env`, single use) gives an initial observation and a :class:`StopCondition`; each
  sampled action (a :class:`~tinkerflow.sampling.SampledSequence`) goes to ``await env.step(action)`` which
  answers a :class:`StepResult` (reward, next observation, done);
* the rollout records each (observation, action, reward) as a :class:`Transition`; an episode is a
  :class:`Trajectory`;
* an :class:`EnvGroupBuilder` makes a group of environments (the samples of one prompt, or the players of one
  game) and may add group-level rewards once every member has finished: a :class:`TrajectoryGroup`;
* an :class:`RLDataset` hands out builders batch by batch.

Identity: every group carries a ``group_id`` and each trajectory is named ``f"{group_id}/{index}"``
(:func:`trajectory_id`). Metrics, transcripts and datums are keyed by these ids, never by list position, so
filtering groups cannot misalign them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final, Literal, Protocol, TypeAlias, get_args, runtime_checkable

import attrs
import numpy as np

from tinkerflow._validate import (
    float_tuple,
    int_at_least,
    int_items,
    int_tuple,
    logprobs,
    require_type,
    str_items,
    str_tuple,
    token_ids,
)
from tinkerflow.arrays import Float32_T, Int64_T
from tinkerflow.datum import arrays_equal
from tinkerflow.errors import NonFiniteError, ShapeError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SampledSequence, StopReason, check_stops

__all__ = [
    "PARSE_ERROR_MASKED_METRIC_KEY",
    "Env",
    "EnvGroupBuilder",
    "FailureKind",
    "Metrics",
    "RLDataset",
    "RolloutFailure",
    "StepResult",
    "StopCondition",
    "Trajectory",
    "TrajectoryGroup",
    "Transition",
    "trajectory_id",
    "unique_groups",
]

#: Numeric values aggregated into the metrics log (means over a batch).
Metrics: TypeAlias = Mapping[str, float]

#: Why a rollout of one group member failed: it raised, it exceeded its time limit, or its reward was not finite.
FailureKind: TypeAlias = Literal["exception", "timeout", "non_finite_reward"]

_ARRAY_EQ = attrs.cmp_using(eq=arrays_equal)

#: The metric tinker-cookbook environments set (to 1.0) on a turn whose parse failed and which must not be trained
#: on. A :class:`Transition` whose ``metrics`` hold it at ``>= 1.0`` is a masked turn (``mask_turn`` becomes true),
#: as in the cookbook's ``trajectory_to_data``.
PARSE_ERROR_MASKED_METRIC_KEY: Final = "parse_error_masked"


def trajectory_id(group_id: str, index: int) -> str:
    """The id of member ``index`` of group ``group_id`` (``"group/3"``)."""
    return f"{group_id}/{index}"


def _metrics(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValidationError("metrics", "metrics", f"must be a mapping of str to float, got {type(value).__name__}.")
    out: dict[str, float] = {}
    for key, number in value.items():
        if not isinstance(key, str) or isinstance(number, bool) or not isinstance(number, int | float):
            raise ValidationError("metrics", f"metrics[{key!r}]", f"must map str to a number, got {number!r}.")
        out[key] = float(number)
    return out


def _metrics_tuple(value: Sequence[object]) -> tuple[dict[str, float], ...]:
    return tuple(_metrics(item) for item in value)


def _logs(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValidationError("logs", "logs", f"must be a mapping of str to str, got {type(value).__name__}.")
    return {str(key): str(text) for key, text in value.items()}


def _finite(value: float, where: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(where, field, f"must be a number, got {type(value).__name__}.")
    if not math.isfinite(value):
        raise NonFiniteError(where, field, f"is {value}.", "rewards must be finite; fix the environment's grader.")
    return float(value)


def _require_items(items: Sequence[object], kind: type, where: str, field: str) -> None:
    """Every item of ``items`` is a ``kind`` (bools never count as ints); else a ``ValidationError`` naming
    ``field[index]``."""
    for index, item in enumerate(items):
        require_type(item, kind, where, f"{field}[{index}]")


# Typed tuple converters (one per element type: mypy's attrs plugin does not solve a generic one).
def _transitions(value: Iterable[Transition]) -> tuple[Transition, ...]:
    return tuple(value)


def _trajectories(value: Iterable[Trajectory]) -> tuple[Trajectory, ...]:
    return tuple(value)


def _failures(value: Iterable[RolloutFailure]) -> tuple[RolloutFailure, ...]:
    return tuple(value)


def _action_tokens(value: object) -> np.ndarray:
    return token_ids(value, "Transition", "action_tokens_T")


def _action_logprobs(value: object) -> np.ndarray:
    return logprobs(value, "Transition", "action_logprobs_T")


@attrs.frozen
class StopCondition:
    """When sampling one action stops: on one of ``stop_tokens`` (ids ``>= 0``) / ``stop_strings`` (a list, never a
    bare string), or after ``max_tokens``."""

    stop_tokens: tuple[int, ...] = attrs.field(default=(), converter=int_items)
    stop_strings: tuple[str, ...] = attrs.field(default=(), converter=str_items)
    max_tokens: int | None = None

    def __attrs_post_init__(self) -> None:
        check_stops(self.stop_strings, self.stop_tokens, "StopCondition")  # as SamplingParams, no bare string
        if self.stop_tokens and self.stop_strings:
            raise ValidationError(
                "StopCondition", "stop_strings", "given together with stop_tokens.", "use one kind of stop condition."
            )
        int_at_least(self.max_tokens, "StopCondition", "max_tokens", allow_none=True)


@attrs.frozen
class StepResult:
    """What an environment answers to one action.

    Attributes:
        reward: immediate reward for the action (finite).
        done: the episode ended with this action.
        next_observation: what the model reads next (ignored when ``done``; give ``ModelInput.empty()``).
        next_stop: stop condition of the next action.
        parse_error: the action could not be parsed; the turn is kept in the transcript but carries no loss
            (mask 0, advantage 0 on its tokens) when the environment asks for masking (``mask_turn``).
        mask_turn: exclude this action's tokens from training.
        metrics: numbers averaged into the metrics log.
        logs: text shown in transcripts.
    """

    reward: float
    done: bool
    next_observation: ModelInput = attrs.field(factory=ModelInput.empty)
    next_stop: StopCondition = attrs.field(factory=StopCondition)
    parse_error: bool = False
    mask_turn: bool = False
    metrics: dict[str, float] = attrs.field(factory=dict, converter=_metrics)
    logs: dict[str, str] = attrs.field(factory=dict, converter=_logs)

    def __attrs_post_init__(self) -> None:
        _finite(self.reward, "StepResult", "reward")
        require_type(self.done, bool, "StepResult", "done")
        require_type(self.next_observation, ModelInput, "StepResult", "next_observation")
        require_type(self.next_stop, StopCondition, "StepResult", "next_stop")


@attrs.frozen
class Transition:
    """One observation, the action sampled for it (tokens with their sampling logprobs) and its reward.

    Action tokens are ints (booleans refused); sampling logprobs are finite and ``<= 0`` (up to
    :data:`tinkerflow._validate.LOGPROB_TOLERANCE` of rounding).

    ``mask_turn``: the action's tokens carry no loss (mask 0, advantage 0). A transition whose ``metrics`` set
    :data:`PARSE_ERROR_MASKED_METRIC_KEY` to ``>= 1.0`` (the cookbook's flag) is masked too: ``mask_turn`` is made
    true on construction. ``sequence_id`` is the sampled sequence's id (``SampledSequence.sequence_id``; ``""``
    when the sampler gave none); with ids on every action, the assembly attaches provenance spans to the datums.
    """

    observation: ModelInput
    action_tokens_T: Int64_T = attrs.field(converter=_action_tokens, eq=_ARRAY_EQ, hash=False)
    action_logprobs_T: Float32_T = attrs.field(converter=_action_logprobs, eq=_ARRAY_EQ, hash=False)
    reward: float
    done: bool
    stop_reason: StopReason = "stop"
    mask_turn: bool = False
    parse_error: bool = False
    metrics: dict[str, float] = attrs.field(factory=dict, converter=_metrics)
    logs: dict[str, str] = attrs.field(factory=dict, converter=_logs)
    sequence_id: str = ""

    def __attrs_post_init__(self) -> None:
        where = "Transition"
        require_type(self.sequence_id, str, where, "sequence_id")
        if not self.mask_turn and self.metrics.get(PARSE_ERROR_MASKED_METRIC_KEY, 0.0) >= 1.0:
            object.__setattr__(self, "mask_turn", True)  # the cookbook's flag; set once, during construction
        require_type(self.observation, ModelInput, where, "observation")
        if self.action_logprobs_T.shape != self.action_tokens_T.shape:
            raise ShapeError(
                where,
                "action_logprobs_T",
                f"has length {self.action_logprobs_T.shape[0]}, action_tokens_T has {self.action_tokens_T.shape[0]}.",
                "give one sampling logprob per action token.",
            )
        if not np.all(np.isfinite(self.action_logprobs_T)):
            raise NonFiniteError(where, "action_logprobs_T", "holds NaN or infinity.", "check the sampler's output.")
        _finite(self.reward, where, "reward")
        require_type(self.done, bool, where, "done")
        if self.stop_reason not in get_args(StopReason):
            raise ValidationError(where, "stop_reason", f"must be 'length' or 'stop', got {self.stop_reason!r}.")

    @classmethod
    def from_sample(cls, observation: ModelInput, action: SampledSequence, result: StepResult) -> Transition:
        """The transition of ``action`` (sampled for ``observation``) and the environment's ``result``."""
        if action.logprobs_T is None:
            raise ValidationError(
                "Transition.from_sample", "action.logprobs_T", "is missing.", "sample with logprobs (RL needs them)."
            )
        return cls(
            observation=observation,
            action_tokens_T=action.tokens_T,
            action_logprobs_T=action.logprobs_T,
            reward=result.reward,
            done=result.done,
            stop_reason=action.stop_reason,
            mask_turn=result.mask_turn,
            parse_error=result.parse_error,
            metrics=result.metrics,
            logs=result.logs,
            sequence_id=action.sequence_id,
        )


@attrs.frozen
class Trajectory:
    """One episode: its transitions in order and the observation after the last action."""

    transitions: tuple[Transition, ...] = attrs.field(converter=_transitions)
    final_observation: ModelInput = attrs.field(factory=ModelInput.empty)

    def __attrs_post_init__(self) -> None:
        _require_items(self.transitions, Transition, "Trajectory", "transitions")

    @property
    def total_step_reward(self) -> float:
        """Sum of the per-step rewards."""
        return float(sum(transition.reward for transition in self.transitions))


@attrs.frozen
class RolloutFailure:
    """A group member whose rollout failed (kept for metrics; it yields no trajectory); ``index`` is ``-1`` when the
    whole group failed (``make_envs``, ``compute_group_rewards``)."""

    index: int
    kind: FailureKind
    message: str

    def __attrs_post_init__(self) -> None:
        require_type(self.index, int, "RolloutFailure", "index")
        if self.index < -1:
            raise ValidationError("RolloutFailure", "index", f"must be a member index or -1, got {self.index}.")
        if self.kind not in get_args(FailureKind):
            kinds = ", ".join(repr(kind) for kind in get_args(FailureKind))
            raise ValidationError("RolloutFailure", "kind", f"must be one of {kinds}, got {self.kind!r}.")
        require_type(self.message, str, "RolloutFailure", "message")


@attrs.frozen
class TrajectoryGroup:
    """The finished members of one group.

    Attributes:
        group_id: unique within a run (the loop names groups ``"step{n}/{k}"``).
        trajectories: finished members, in member order (failed members are left out and listed in ``failures``).
        member_indices: the member index of each trajectory (ids are ``f"{group_id}/{member_index}"``).
        group_rewards_G: group-level reward of each trajectory (from ``compute_group_rewards``), added to the
            per-step rewards.
        metrics_G: group-level metrics of each trajectory.
        failures: members that failed, with why.
        tags: names under which the group's metrics are also aggregated (``env/arithmetic``).
    """

    group_id: str
    trajectories: tuple[Trajectory, ...] = attrs.field(converter=_trajectories)
    member_indices: tuple[int, ...] = attrs.field(converter=int_tuple)
    group_rewards_G: tuple[float, ...] = attrs.field(converter=float_tuple)
    metrics_G: tuple[dict[str, float], ...] = attrs.field(converter=_metrics_tuple)
    failures: tuple[RolloutFailure, ...] = attrs.field(default=(), converter=_failures)
    tags: tuple[str, ...] = attrs.field(default=(), converter=str_tuple)

    def __attrs_post_init__(self) -> None:
        where = "TrajectoryGroup"
        require_type(self.group_id, str, where, "group_id")
        size = len(self.trajectories)
        for name, value in (
            ("member_indices", self.member_indices),
            ("group_rewards_G", self.group_rewards_G),
            ("metrics_G", self.metrics_G),
        ):
            if len(value) != size:
                raise ShapeError(where, name, f"has {len(value)} entries for {size} trajectories.", "give one each.")
        for index, reward in enumerate(self.group_rewards_G):
            _finite(reward, where, f"group_rewards_G[{index}]")
        if len(set(self.member_indices)) != size:
            raise ValidationError(where, "member_indices", "repeats an index.", "give each member its own index.")

    @property
    def trajectory_ids(self) -> tuple[str, ...]:
        """``f"{group_id}/{member_index}"`` for each trajectory."""
        return tuple(trajectory_id(self.group_id, index) for index in self.member_indices)

    def total_rewards_G(self) -> np.ndarray:
        """Per-step rewards summed, plus the group reward, per trajectory (float64)."""
        return np.array(
            [t.total_step_reward + g for t, g in zip(self.trajectories, self.group_rewards_G, strict=True)],
            dtype=np.float64,
        )


def unique_groups(
    groups: Iterable[TrajectoryGroup], where: str, seen: set[str]
) -> Iterator[tuple[int, TrajectoryGroup]]:
    """Each ``(index, group)`` of ``groups``, checked as it comes: a :class:`TrajectoryGroup` whose ``group_id`` no
    earlier group had (a ``ValidationError`` naming ``groups[index]`` otherwise). ``seen`` collects the ids."""
    for index, group in enumerate(groups):
        if not isinstance(group, TrajectoryGroup):
            require_type(group, TrajectoryGroup, where, f"groups[{index}]")  # raises, naming the type
        if group.group_id in seen:
            raise ValidationError(
                where, f"groups[{index}].group_id", f"{group.group_id!r} appears twice.", "give each group a unique id."
            )
        seen.add(group.group_id)
        yield index, group


@runtime_checkable
class Env(Protocol):
    """A single-use environment: one episode, then discard it."""

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        """The first observation and the stop condition of the first action."""
        ...

    async def step(self, action: SampledSequence) -> StepResult:
        """Take one sampled action; answer its reward, the next observation and whether the episode ended."""
        ...


class EnvGroupBuilder(Protocol):
    """Makes the environments of one group and, once all have finished, their group-level rewards."""

    async def make_envs(self) -> Sequence[Env]:
        """The group's environments (fresh ones on every call)."""
        ...

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        """One (reward, metrics) per finished trajectory, in order; return zeros when rewards are per step only."""
        ...

    def tags(self) -> tuple[str, ...]:
        """Names under which this group's metrics are also aggregated."""
        ...


class RLDataset(Protocol):
    """Batches of environment-group builders, addressed by index (deterministic, so a run can resume)."""

    def __len__(self) -> int:
        """Number of batches."""
        ...

    def get_batch(self, index: int) -> Sequence[EnvGroupBuilder]:
        """The builders of batch ``index`` (``0 <= index < len(self)``)."""
        ...
