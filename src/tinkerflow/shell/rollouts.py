"""Rollouts (shell): run environments against a policy, concurrently, and survive broken environments.

::

    policy = RolloutPolicy(max_concurrency=64, episode_timeout_s=120, on_failure="drop")
    completer = BatchingTokenCompleter(sampler, max_tokens=256)
    groups = await rollout_batch(dataset.get_batch(step), completer, policy, id_prefix=f"step{step}")

What happens:

* every builder's ``make_envs()`` is called (concurrently); each environment plays one episode
  (:func:`run_episode`): initial observation, then ``completer(observation, stop)`` -> ``env.step(action)`` until
  ``done``;
* at most ``policy.max_concurrency`` episodes run at once across the whole batch (an ``asyncio.Semaphore``);
* time bounds: ``policy.episode_timeout_s`` bounds an episode's **wall-clock** time from the moment it gets its
  concurrency slot (waiting for a slot does not count): the environment's calls and sampling alike. Past it the
  episode is stopped and counted a ``timeout`` failure, even when its last call did return (late). With a slow
  backend, lower ``max_concurrency`` or raise the timeout: every episode holding a slot is on the clock, also
  while its sampling request waits behind the others'. ``policy.sample_timeout_s`` also bounds each completer
  call (a stalled remote sampler). ``policy.max_turns`` caps the turns of an episode: one that reaches it without
  ``done`` is *truncated*: it ends there and is kept with the rewards it got, and its last transition's metrics
  get ``"turn_cap": 1.0`` (``0.0`` on the last transition of the episodes that ended by themselves), so the
  metrics log shows ``step/turn_cap``, the fraction of capped episodes;
* environments that block: with ``policy.env_threads`` (the default) each episode's environment calls
  (``initial_observation``, ``step``) run on a private event loop on a worker thread
  (:class:`~tinkerflow.shell.deadlines.EnvThread`), so a call that blocks (a synchronous ``time.sleep``, a
  runaway grader, ``while True``) is timed out like any other. The rollout loop waits for a call without doing
  anything else for at most ``ENV_INLINE_WAIT_S`` (0.5 s) once it has begun, or until it first yields (awaits
  I/O): a call that finishes within that window resumes its episode exactly where running it on the loop would
  have, so runs stay reproducible (the members of a group still reach the sampler together); a blocking call
  therefore stalls the other episodes for at most that long. A thread cannot be killed: a timed-out call is
  cancelled at its next ``await`` and, if it never yields, its thread is **abandoned** (a daemon thread, left to
  finish on its own). Environments that share asyncio objects across the members of a group (a coordinator with
  an ``asyncio.Condition``, as in multiplayer games) need ``env_threads=False``: their calls then run on the
  rollout loop, where a blocking call cannot be interrupted, but one that returns past the deadline is still a
  ``timeout`` failure, never a success. ``make_envs`` and ``compute_group_rewards`` always run on the rollout
  loop (bounded by ``episode_timeout_s`` the same way);
* a member whose episode raises, times out or yields a non-finite reward (``NonFiniteError`` from the env's
  ``StepResult``/``MessageStep``) is handled by ``policy.on_failure``:

  - ``"fail_fast"``: every other episode of the batch is cancelled and :class:`RolloutError` is raised, naming
    the group, the member and the kind of failure (the original exception is its ``__cause__``);
  - ``"retry"``: the member is played again on a fresh environment, up to ``max_retries`` more times; the fresh
    environment is ``(await builder.make_envs())[member]``, so ``make_envs`` must return new environments on
    every call, in the same member order (the cookbook's and :class:`ProblemGroupBuilder`'s behaviour). A member
    that still fails is dropped as below. Each trajectory's ``metrics_G`` gets ``"rollout/retries"``;
  - ``"drop"``: the member is left out of the group and recorded as a
    :class:`~tinkerflow.rl.types.RolloutFailure` (``kind``: ``exception``/``timeout``/``non_finite_reward``); the
    other members are kept and the run goes on;

* ``compute_group_rewards`` is called once per group with the finished members' trajectories (member order;
  failed members are not passed). A non-finite group reward drops that member (``non_finite_reward``; under
  ``retry`` too, as the group reward depends on the whole group). Failures of ``make_envs`` or of
  ``compute_group_rewards`` (an exception, a wrong-length answer, an answer not a ``(reward, metrics)`` pair of a
  number and a mapping of names to numbers, or a hang past the episode timeout) and of ``tags()`` (not strings)
  fail the whole group: under ``drop``/``retry`` it is returned with no trajectories and a failure with ``index = -1``.

Every returned group is in builder order, with id ``f"{id_prefix}/{k}"``; groups with no trajectories are kept
(so their failures are counted) and dropped later by :func:`tinkerflow.rl.advantages.compute_advantages`.

Every transition's ``metrics`` carry ``"parse_error"`` (0/1, from ``StepResult.parse_error``) unless the env set it.

Sampling runs on the backend's own threads (the APIFuture is awaited, never blocked on), so environment work
overlaps sampling.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Final, Literal, TypeVar

import attrs

from tinkerflow._validate import attrs_int_at_least, require_type
from tinkerflow.errors import ConfigError, NonFiniteError, TinkerflowError, ValidationError
from tinkerflow.rl.types import (
    Env,
    EnvGroupBuilder,
    FailureKind,
    Metrics,
    RolloutFailure,
    StepResult,
    Trajectory,
    TrajectoryGroup,
    Transition,
)
from tinkerflow.sampling import SampledSequence
from tinkerflow.shell.completers import TokenCompleter
from tinkerflow.shell.deadlines import ENV_INLINE_WAIT_S, DeadlineError, EnvThread, until, within

__all__ = [
    "ENV_INLINE_WAIT_S",
    "FailurePolicy",
    "RolloutError",
    "RolloutPolicy",
    "rollout_batch",
    "rollout_group",
    "run_episode",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

FailurePolicy = Literal["fail_fast", "retry", "drop"]
_POLICIES: Final = ("fail_fast", "retry", "drop")
#: Member index of a failure that belongs to the whole group (``make_envs`` or ``compute_group_rewards``).
GROUP_FAILURE: Final = -1
_MESSAGE_LIMIT: Final = 500
#: The metric on the last transition of every episode when ``max_turns`` is set: 1 when the cap ended it.
TURN_CAP_METRIC: Final = "turn_cap"


def _timeout(instance: object, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(
            "RolloutPolicy", attribute.name, f"must be a positive number of seconds or None, got {value!r}."
        )


def _on_failure(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _POLICIES:
        raise ConfigError("RolloutPolicy", "on_failure", f"unknown policy {value!r}.", f"use one of {_POLICIES}.")


def _flag(instance: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise ConfigError("RolloutPolicy", attribute.name, f"must be true or false, got {value!r}.")


@attrs.frozen
class RolloutPolicy:
    """How rollouts run and what a failing environment costs.

    Attributes:
        max_concurrency: most episodes running at once, across all groups of a batch.
        episode_timeout_s: wall-clock limit of one episode attempt, from the moment it gets a concurrency slot:
            its environment's calls and its sampling alike. ``None``: no limit. Also bounds each ``make_envs``
            and ``compute_group_rewards`` call.
        sample_timeout_s: limit on each completer (sampling) call; ``None``: no limit.
        on_failure: ``"fail_fast"`` (raise :class:`RolloutError`), ``"retry"`` (play the member again on a fresh
            env, then drop it) or ``"drop"`` (record the failure, keep the other members).
        max_retries: extra attempts per member under ``"retry"`` (ignored by the other policies).
        max_turns: most turns (actions) of an episode; one that reaches it without ``done`` is truncated (kept,
            its last transition's metrics get ``"turn_cap": 1.0``). ``None``: no cap.
        env_threads: run each episode's environment calls on a worker thread, where a call that blocks can be
            timed out (see the module docstring); ``False`` runs them on the rollout loop (for environments that
            share asyncio objects across episodes).
    """

    max_concurrency: int = attrs.field(default=64, validator=attrs_int_at_least("RolloutPolicy", 1))
    episode_timeout_s: float | None = attrs.field(default=None, validator=_timeout)
    sample_timeout_s: float | None = attrs.field(default=None, validator=_timeout)
    on_failure: FailurePolicy = attrs.field(default="fail_fast", validator=_on_failure)
    max_retries: int = attrs.field(default=1, validator=attrs_int_at_least("RolloutPolicy", 0))
    max_turns: int | None = attrs.field(default=None, validator=attrs_int_at_least("RolloutPolicy", 1, allow_none=True))
    env_threads: bool = attrs.field(default=True, validator=_flag)

    @property
    def retries(self) -> int:
        """Extra attempts a failing member gets: ``max_retries`` under ``"retry"``, else 0."""
        return self.max_retries if self.on_failure == "retry" else 0


Stage = Literal["make_envs", "episode", "group_rewards"]


class RolloutError(TinkerflowError):
    """A rollout failed under ``on_failure="fail_fast"``.

    Attributes:
        group_id: the group.
        member: the member index, or ``None`` when the group itself failed (``make_envs``,
            ``compute_group_rewards``).
        kind: ``"exception"``, ``"timeout"`` or ``"non_finite_reward"``.
        stage: ``"make_envs"``, ``"episode"`` or ``"group_rewards"``.
        detail: the underlying error, as text (the exception itself is ``__cause__``).
    """

    def __init__(self, group_id: str, member: int | None, kind: FailureKind, stage: Stage, detail: str) -> None:
        self.group_id = group_id
        self.member = member
        self.kind = kind
        self.stage = stage
        self.detail = detail
        who = f"group {group_id!r}" if member is None else f"group {group_id!r} member {member}"
        super().__init__(f"rollout of {who} failed in {stage} ({kind}): {detail}")


def _late(what: str, policy: RolloutPolicy) -> str:
    return f"{what} ran past {policy.episode_timeout_s} s"


def _describe(error: BaseException) -> str:
    if isinstance(error, DeadlineError):
        return str(error)
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _kind(error: BaseException) -> FailureKind:
    if isinstance(error, DeadlineError):
        return "timeout"
    if isinstance(error, NonFiniteError) and error.field.split(".")[-1].startswith(("reward", "group_rewards")):
        return "non_finite_reward"
    return "exception"


async def run_episode(
    env: Env,
    completer: TokenCompleter,
    *,
    timeout_s: float | None = None,
    sample_timeout_s: float | None = None,
    max_turns: int | None = None,
    env_threads: bool = True,
) -> Trajectory:
    """Play one episode of ``env`` with ``completer`` and return its trajectory.

    ``timeout_s`` bounds the episode's wall-clock time (environment calls and sampling alike), ``sample_timeout_s``
    each completer call; past either a ``TimeoutError`` subclass is raised (also when a call returned, but late).
    ``max_turns`` truncates the episode (see the module docstring). With ``env_threads`` the environment's calls
    run on a worker thread (see :class:`RolloutPolicy`). No other error handling: :func:`rollout_group` applies
    the policy.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    late = f"the episode ran past its {timeout_s:g} s" if timeout_s is not None else ""
    worker = EnvThread() if env_threads else None

    async def in_env(start: Callable[[], Awaitable[T]]) -> T:
        if worker is not None:
            return await worker.call(start, deadline, late)
        return await until(start(), deadline, late)

    try:
        observation, stop = await in_env(env.initial_observation)
        transitions: list[Transition] = []
        while True:
            sampling = until(completer(observation, stop), deadline, late)
            action = await within(sampling, sample_timeout_s, f"sampling ran past {sample_timeout_s} s")
            require_type(action, SampledSequence, "run_episode", "completer()")
            result = await in_env(functools.partial(env.step, action))
            require_type(result, StepResult, "run_episode", "env.step()")
            capped = not result.done and max_turns is not None and len(transitions) + 1 >= max_turns
            metrics = result.metrics
            if "parse_error" not in metrics:
                metrics = {**metrics, "parse_error": float(result.parse_error)}
            if max_turns is not None and (result.done or capped):
                metrics = {**metrics, TURN_CAP_METRIC: float(capped)}
            if metrics is not result.metrics:
                result = attrs.evolve(result, metrics=metrics)
            transitions.append(Transition.from_sample(observation, action, result))
            if result.done or capped:
                return Trajectory(transitions=transitions, final_observation=result.next_observation)
            observation, stop = result.next_observation, result.next_stop
    finally:
        if worker is not None:
            worker.close()


async def _gather_or_cancel(coroutines: Sequence[Coroutine[object, object, T]]) -> list[T]:
    """Run the coroutines as tasks; on the first exception (or our own cancellation) cancel the rest, wait for
    them, and re-raise it. Results in input order."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    if not tasks:
        return []
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failed = [task for task in tasks if task in done and not task.cancelled() and task.exception() is not None]
    if failed:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        error = failed[0].exception()
        assert error is not None
        raise error
    return [task.result() for task in tasks]


@attrs.frozen
class _Finished:
    index: int
    trajectory: Trajectory
    retries: int


async def _play_member(
    builder: EnvGroupBuilder,
    env: Env,
    index: int,
    completer: TokenCompleter,
    policy: RolloutPolicy,
    group_id: str,
    limiter: asyncio.Semaphore,
) -> _Finished | RolloutFailure:
    attempt = 0
    errors: list[str] = []
    while True:
        try:
            async with limiter:
                trajectory = await run_episode(
                    env,
                    completer,
                    timeout_s=policy.episode_timeout_s,
                    sample_timeout_s=policy.sample_timeout_s,
                    max_turns=policy.max_turns,
                    env_threads=policy.env_threads,
                )
            return _Finished(index, trajectory, attempt)
        except Exception as error:
            kind, detail = _kind(error), _describe(error)
            if policy.on_failure == "fail_fast":
                raise RolloutError(group_id, index, kind, "episode", detail) from error
            errors.append(detail)
            if attempt >= policy.retries:
                if attempt:
                    detail = f"{detail} (after {attempt + 1} attempts; earlier: {' | '.join(errors[:-1])})"
                logger.warning("rollout of group %r member %d dropped (%s): %s", group_id, index, kind, detail)
                return RolloutFailure(index=index, kind=kind, message=detail)
            attempt += 1
            logger.warning("rollout of group %r member %d failed (%s), retrying: %s", group_id, index, kind, detail)
            try:
                envs = await within(builder.make_envs(), policy.episode_timeout_s, _late("make_envs", policy))
                if len(envs) <= index:
                    raise ValidationError(
                        "rollout_group",
                        "make_envs()",
                        f"returned {len(envs)} environments on a retry, member {index} needs more.",
                        "return the same number of fresh environments on every call.",
                    )
                env = envs[index]
            except Exception as make_error:
                detail = f"make_envs for a retry failed: {_describe(make_error)}"
                return RolloutFailure(index=index, kind=_kind(make_error), message=detail)


def _failed_group(
    group_id: str,
    failures: Sequence[RolloutFailure],
    error: Exception,
    stage: Stage,
    policy: RolloutPolicy,
    tags: tuple[str, ...],
) -> TrajectoryGroup:
    kind, detail = _kind(error), _describe(error)
    if policy.on_failure == "fail_fast":
        raise RolloutError(group_id, None, kind, stage, detail) from error
    logger.warning("rollout of group %r failed in %s (%s): %s", group_id, stage, kind, detail)
    failure = RolloutFailure(index=GROUP_FAILURE, kind=kind, message=f"{stage}: {detail}")
    return TrajectoryGroup(
        group_id=group_id,
        trajectories=(),
        member_indices=(),
        group_rewards_G=(),
        metrics_G=(),
        failures=(*failures, failure),
        tags=tags,
    )


def _tags_of(builder: EnvGroupBuilder) -> tuple[str, ...]:
    """The builder's tags (a bare string is one tag); anything but strings is a ``ValidationError``."""
    tags = builder.tags()
    items = (tags,) if isinstance(tags, str) else tuple(tags) if isinstance(tags, list | tuple) else None
    if items is None or not all(isinstance(tag, str) for tag in items):
        raise ValidationError("rollout_group", "tags()", f"returned {tags!r:.60}, not a list of strings.")
    return items


def _reward_and_metrics(answer: object, index: int) -> tuple[object, dict[str, float]]:
    """One answer of ``compute_group_rewards``: a ``(reward, metrics)`` pair, the metrics mapping names to numbers
    (the reward is checked by the caller); else a ``ValidationError`` naming the member."""
    if not isinstance(answer, tuple | list) or len(answer) != 2:
        raise ValidationError("rollout_group", f"group_rewards[{index}]", f"is {answer!r:.60}, not (reward, metrics).")
    reward, metrics = answer
    if not isinstance(metrics, Mapping) or not all(
        isinstance(key, str) and isinstance(value, int | float) and not isinstance(value, bool)
        for key, value in metrics.items()
    ):
        raise ValidationError("rollout_group", f"group_metrics[{index}]", f"is {metrics!r:.60}, not names to numbers.")
    return reward, {key: float(value) for key, value in metrics.items()}


async def _rollout_group(
    builder: EnvGroupBuilder,
    completer: TokenCompleter,
    policy: RolloutPolicy,
    group_id: str,
    limiter: asyncio.Semaphore,
) -> TrajectoryGroup:
    tags: tuple[str, ...] = ()
    try:
        tags = _tags_of(builder)
        envs = list(await within(builder.make_envs(), policy.episode_timeout_s, _late("make_envs", policy)))
    except Exception as error:
        return _failed_group(group_id, (), error, "make_envs", policy, tags)
    outcomes = await _gather_or_cancel(
        [_play_member(builder, env, index, completer, policy, group_id, limiter) for index, env in enumerate(envs)]
    )
    finished = [outcome for outcome in outcomes if isinstance(outcome, _Finished)]
    failures = [outcome for outcome in outcomes if isinstance(outcome, RolloutFailure)]
    if not finished:
        return TrajectoryGroup(group_id, (), (), (), (), failures=failures, tags=tags)
    try:
        answers = list(
            await within(
                builder.compute_group_rewards([item.trajectory for item in finished]),
                policy.episode_timeout_s,
                _late("compute_group_rewards", policy),
            )
        )
        if len(answers) != len(finished):
            raise ValidationError(
                "rollout_group",
                "compute_group_rewards()",
                f"returned {len(answers)} rewards for {len(finished)} trajectories.",
                "return one (reward, metrics) per trajectory, in order.",
            )
        pairs = [_reward_and_metrics(answer, item.index) for item, answer in zip(finished, answers, strict=True)]
    except Exception as error:
        return _failed_group(group_id, failures, error, "group_rewards", policy, tags)
    kept: list[tuple[_Finished, float, Metrics]] = []
    for item, (reward, metrics) in zip(finished, pairs, strict=True):
        if isinstance(reward, bool) or not isinstance(reward, int | float):
            problem = ValidationError("rollout_group", f"group_rewards[{item.index}]", f"is not a number: {reward!r}.")
            return _failed_group(group_id, failures, problem, "group_rewards", policy, tags)
        if not math.isfinite(reward):
            detail = f"compute_group_rewards gave member {item.index} the reward {reward}"
            if policy.on_failure == "fail_fast":
                raise RolloutError(group_id, item.index, "non_finite_reward", "group_rewards", detail)
            logger.warning("rollout of group %r member %d dropped: %s", group_id, item.index, detail)
            failures.append(RolloutFailure(index=item.index, kind="non_finite_reward", message=detail))
            continue
        if policy.on_failure == "retry":
            metrics = {**metrics, "rollout/retries": float(item.retries)}
        kept.append((item, float(reward), metrics))
    failures.sort(key=lambda failure: failure.index)
    return TrajectoryGroup(
        group_id=group_id,
        trajectories=[item.trajectory for item, _, _ in kept],
        member_indices=[item.index for item, _, _ in kept],
        group_rewards_G=[reward for _, reward, _ in kept],
        metrics_G=[metrics for _, _, metrics in kept],
        failures=failures,
        tags=tags,
    )


async def rollout_group(
    builder: EnvGroupBuilder,
    completer: TokenCompleter,
    policy: RolloutPolicy,
    group_id: str,
) -> TrajectoryGroup:
    """Roll out one group (at most ``policy.max_concurrency`` of its episodes at once); see the module docstring.

    Raises:
        RolloutError: under ``on_failure="fail_fast"``, on the first failure (the other episodes are cancelled).
    """
    require_type(policy, RolloutPolicy, "rollout_group", "policy")
    require_type(group_id, str, "rollout_group", "group_id")
    return await _rollout_group(builder, completer, policy, group_id, asyncio.Semaphore(policy.max_concurrency))


async def rollout_batch(
    builders: Sequence[EnvGroupBuilder],
    completer: TokenCompleter,
    policy: RolloutPolicy,
    id_prefix: str,
) -> list[TrajectoryGroup]:
    """Roll out every group of a batch concurrently, at most ``policy.max_concurrency`` episodes at once across
    all of them. Group ``k`` gets the id ``f"{id_prefix}/{k}"``; results are in builder order.

    Raises:
        RolloutError: under ``on_failure="fail_fast"``, on the first failure (every other episode is cancelled).
    """
    require_type(policy, RolloutPolicy, "rollout_batch", "policy")
    require_type(id_prefix, str, "rollout_batch", "id_prefix")
    limiter = asyncio.Semaphore(policy.max_concurrency)
    return await _gather_or_cancel(
        [
            _rollout_group(builder, completer, policy, f"{id_prefix}/{index}", limiter)
            for index, builder in enumerate(builders)
        ]
    )
