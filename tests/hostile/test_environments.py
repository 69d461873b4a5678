"""Hostile RL environments: an environment or a group builder that raises, returns garbage, answers with a
non-finite or non-numeric reward, or never answers. Under ``on_failure="drop"`` the member (or the whole group)
is recorded as a :class:`~tinkerflow.rl.types.RolloutFailure` of the right kind and the rest of the group is
kept; under ``"fail_fast"`` a :class:`~tinkerflow.shell.rollouts.RolloutError` names the group, the member, the
stage and the kind. Never a raw exception, never a hang, never a garbage episode counted a success.

The time-bound cases (never-ending and blocking environments, a whole RL run with them) are in
``test_time_bounds.py``."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Final, TypeVar

import attrs
import numpy as np
import pytest

from tinkerflow.model_input import ModelInput
from tinkerflow.rl.types import Env, Metrics, StepResult, StopCondition, Trajectory
from tinkerflow.sampling import SampledSequence
from tinkerflow.shell.rollouts import RolloutError, RolloutPolicy, rollout_group

pytestmark = pytest.mark.hostile("environments")

T = TypeVar("T")
PROMPT: Final = (256, 72, 105, 58)
TIMEOUT_S: Final = 0.3
GROUP: Final = -1  # the failure index of a whole group


def _run(coroutine: Coroutine[object, object, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, 30.0)  # a hang fails the test instead of hanging it

    return asyncio.run(bounded())


async def _instant(observation: ModelInput, stop: StopCondition) -> SampledSequence:
    return SampledSequence(tokens_T=np.array([65, 66]), stop_reason="stop", logprobs_T=np.array([-0.1, -0.2]))


class Good:
    """One turn, reward 1."""

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        return ModelInput.from_tokens(PROMPT), StopCondition(max_tokens=4)

    async def step(self, action: SampledSequence) -> StepResult:
        return StepResult(reward=1.0, done=True)


class RaisesFirst(Good):
    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        raise RuntimeError("the environment's server is down")


class RaisesInStep(Good):
    async def step(self, action: SampledSequence) -> StepResult:
        raise ValueError("cannot grade")


class Returns(Good):
    """``step`` returns ``value`` (not a StepResult)."""

    def __init__(self, value: object) -> None:
        self.value = value

    async def step(self, action: SampledSequence) -> StepResult:
        return self.value  # type: ignore[return-value]  # the garbage is the point


class ObservationIs(Good):
    """``initial_observation`` returns ``value``."""

    def __init__(self, value: object) -> None:
        self.value = value

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        return self.value  # type: ignore[return-value]


class NanReward(Good):
    async def step(self, action: SampledSequence) -> StepResult:
        return StepResult(reward=math.nan, done=True)


class SyncStep(Good):
    def step(self, action: SampledSequence) -> StepResult:  # type: ignore[override]  # not a coroutine
        return StepResult(reward=1.0, done=True)


class AwaitsForever(Good):
    async def step(self, action: SampledSequence) -> StepResult:
        await asyncio.Event().wait()  # never set
        raise AssertionError("unreachable")


MEMBER_CASES: dict[str, tuple[Callable[[], Env], str]] = {
    "initial_observation raises": (RaisesFirst, "exception"),
    "step raises": (RaisesInStep, "exception"),
    "step returns None": (lambda: Returns(None), "exception"),
    "step returns a dict": (lambda: Returns({"reward": 1.0, "done": True}), "exception"),
    "step returns a tuple": (lambda: Returns((1.0, True)), "exception"),
    "step returns a float": (lambda: Returns(1.0), "exception"),
    "observation None": (lambda: ObservationIs(None), "exception"),
    "observation without stop": (lambda: ObservationIs(ModelInput.from_tokens(PROMPT)), "exception"),
    "observation a token list": (lambda: ObservationIs(([1, 2], StopCondition())), "exception"),
    "step reward nan": (NanReward, "non_finite_reward"),
    "step not a coroutine": (SyncStep, "exception"),
    "step awaits forever": (AwaitsForever, "timeout"),
}


@attrs.define
class Builder:
    """A group builder: ``factories`` make the members; ``rewards``, ``make`` and ``tags_of`` may be hostile."""

    factories: list[Callable[[], Env]]
    rewards: Callable[[Sequence[Trajectory]], object] = lambda trajectories: [(0.0, {}) for _ in trajectories]
    make: Callable[[list[Env]], object] = lambda envs: envs
    tags_of: Callable[[], object] = lambda: ("hostile",)

    async def make_envs(self) -> Sequence[Env]:
        made = self.make([factory() for factory in self.factories])
        if asyncio.iscoroutine(made):
            return await made  # type: ignore[no-any-return]
        return made  # type: ignore[return-value]

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        answer = self.rewards(trajectories)
        if asyncio.iscoroutine(answer):
            return await answer  # type: ignore[no-any-return]
        return answer  # type: ignore[return-value]

    def tags(self) -> tuple[str, ...]:
        return self.tags_of()  # type: ignore[return-value]


def _policy(on_failure: str) -> RolloutPolicy:
    return RolloutPolicy(episode_timeout_s=TIMEOUT_S, on_failure=on_failure, env_threads=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(("make", "kind"), list(MEMBER_CASES.values()), ids=list(MEMBER_CASES))
def test_a_hostile_member_is_dropped_and_the_rest_of_its_group_kept(make: Callable[[], Env], kind: str) -> None:
    group = _run(rollout_group(Builder([Good, make, Good]), _instant, _policy("drop"), "g"))
    assert group.member_indices == (0, 2)
    assert [(failure.index, failure.kind) for failure in group.failures] == [(1, kind)]
    assert all(t.transitions[-1].reward == 1.0 for t in group.trajectories)


@pytest.mark.parametrize(("make", "kind"), list(MEMBER_CASES.values()), ids=list(MEMBER_CASES))
def test_a_hostile_member_fails_fast_naming_itself(make: Callable[[], Env], kind: str) -> None:
    with pytest.raises(RolloutError) as caught:
        _run(rollout_group(Builder([Good, make]), _instant, _policy("fail_fast"), "g"))
    error = caught.value
    assert (error.group_id, error.member, error.stage, error.kind) == ("g", 1, "episode", kind)
    assert "rollout of group 'g' member 1 failed in episode" in str(error)


async def _forever() -> object:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _raise(error: Exception) -> Callable[..., object]:
    def hostile(*args: object) -> object:
        raise error

    return hostile


# (builder changes, failure kind, stage)
GROUP_CASES: dict[str, tuple[dict[str, object], str, str]] = {
    "make_envs raises": ({"make": _raise(RuntimeError("no envs"))}, "exception", "make_envs"),
    "make_envs returns None": ({"make": lambda envs: None}, "exception", "make_envs"),
    "make_envs returns an int": ({"make": lambda envs: 5}, "exception", "make_envs"),
    "make_envs never answers": ({"make": lambda envs: _forever()}, "timeout", "make_envs"),
    "rewards raise": ({"rewards": _raise(KeyError("judge"))}, "exception", "group_rewards"),
    "rewards too few": ({"rewards": lambda ts: [(0.0, {})]}, "exception", "group_rewards"),
    "rewards too many": ({"rewards": lambda ts: [(0.0, {})] * 5}, "exception", "group_rewards"),
    "rewards None": ({"rewards": lambda ts: None}, "exception", "group_rewards"),
    "reward text": ({"rewards": lambda ts: [("1", {}) for _ in ts]}, "exception", "group_rewards"),
    "reward bool": ({"rewards": lambda ts: [(True, {}) for _ in ts]}, "exception", "group_rewards"),
    "reward None": ({"rewards": lambda ts: [(None, {}) for _ in ts]}, "exception", "group_rewards"),
    "rewards never answer": ({"rewards": lambda ts: _forever()}, "timeout", "group_rewards"),
}


@pytest.mark.parametrize(("changes", "kind", "stage"), list(GROUP_CASES.values()), ids=list(GROUP_CASES))
def test_a_hostile_group_builder_fails_its_group(changes: dict[str, object], kind: str, stage: str) -> None:
    builder = Builder([Good, Good], **changes)  # type: ignore[arg-type]
    group = _run(rollout_group(builder, _instant, _policy("drop"), "g"))
    assert group.trajectories == ()
    assert [(failure.index, failure.kind) for failure in group.failures] == [(GROUP, kind)]
    assert group.failures[0].message.startswith(f"{stage}: ")
    builder = Builder([Good, Good], **changes)  # type: ignore[arg-type]
    with pytest.raises(RolloutError) as caught:
        _run(rollout_group(builder, _instant, _policy("fail_fast"), "g"))
    assert (caught.value.member, caught.value.stage, caught.value.kind) == (None, stage, kind)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_group_reward_drops_only_that_member(value: float) -> None:
    builder = Builder([Good, Good, Good], rewards=lambda ts: [(1.0, {}), (value, {}), (0.0, {})])
    group = _run(rollout_group(builder, _instant, _policy("drop"), "g"))
    assert group.member_indices == (0, 2)
    assert [(failure.index, failure.kind) for failure in group.failures] == [(1, "non_finite_reward")]
    builder = Builder([Good, Good, Good], rewards=lambda ts: [(1.0, {}), (value, {}), (0.0, {})])
    with pytest.raises(RolloutError) as caught:
        _run(rollout_group(builder, _instant, _policy("fail_fast"), "g"))
    assert (caught.value.member, caught.value.kind) == (1, "non_finite_reward")


# bugs the suite found, fixed since (issue 15); each id says what went wrong before the fix
@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"rewards": lambda ts: [1.0 for _ in ts]}, id="rewards not pairs (raw TypeError)"),
        pytest.param({"rewards": lambda ts: [(1.0, "x") for _ in ts]}, id="reward metrics text (escaped drop)"),
        pytest.param({"tags_of": _raise(RuntimeError("no tags"))}, id="tags raise (escaped drop)"),
        pytest.param({"tags_of": lambda: 5}, id="tags an int (raw TypeError)"),
        pytest.param({"tags_of": lambda: ["a", 5]}, id="a tag an int"),
        pytest.param({"rewards": lambda ts: [(1.0, {"m": "x"}) for _ in ts]}, id="a group metric text"),
    ],
)
def test_garbage_from_a_group_builder_fails_the_group_under_drop(changes: dict[str, object]) -> None:
    builder = Builder([Good, Good], **changes)  # type: ignore[arg-type]
    group = _run(rollout_group(builder, _instant, _policy("drop"), "g"))
    assert group.trajectories == ()
    assert [failure.index for failure in group.failures] == [GROUP]
    with pytest.raises(RolloutError) as caught:
        _run(rollout_group(Builder([Good, Good], **changes), _instant, _policy("fail_fast"), "g"))  # type: ignore[arg-type]
    assert caught.value.member is None
