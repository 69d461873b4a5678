"""RLHF environments, pure: single-turn answers rewarded by a tournament judged by a pairwise preference model.

Each prompt becomes a :class:`PreferenceEnvGroupBuilder` of ``group_size`` :class:`PreferenceEnv` answers; the
group's answers play the matches of :func:`~tinkerflow.preference.reward_model.tournament_pairs` (``opponents``
per member, or all pairs), each judged by a :class:`Judge`, and a member's reward is its win fraction (mean 0.5
per group) plus an optional format term. The judge that calls a sampler is the shell's
(:class:`tinkerflow.shell.recipes.rlhf.PairwiseJudge`); it judges a group's matches concurrently
(:class:`MatchJudge`), any other judge is awaited match by match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs
import numpy as np

from tinkerflow._validate import attrs_int_at_least, in_range, require_type
from tinkerflow.chat import Conversation, Message
from tinkerflow.errors import ConfigError
from tinkerflow.preference.reward_model import tournament_pairs, win_fraction_rewards
from tinkerflow.render import Renderer, Termination
from tinkerflow.rl.envs.base import SingleTurnEnv, as_tags, parse_tokens
from tinkerflow.rl.envs.datasets import ListRLDataset
from tinkerflow.rl.types import Env, Metrics, StepResult, Trajectory
from tinkerflow.sampling import SampledSequence

__all__ = [
    "Judge",
    "MatchJudge",
    "PreferenceEnv",
    "PreferenceEnvGroupBuilder",
    "parse_answer",
    "preference_dataset",
    "tournament_schedule",
]


class Judge(Protocol):
    """A pairwise preference model."""

    async def prob_first_better(
        self, prompt: Conversation, completion_a: Sequence[Message], completion_b: Sequence[Message]
    ) -> float:
        """The probability that ``completion_a`` is a better answer to ``prompt`` than ``completion_b``."""
        ...


@runtime_checkable
class MatchJudge(Protocol):
    """A judge that judges many matches of one prompt at once (concurrently)."""

    async def judge_matches(
        self, prompt: Conversation, matches: Sequence[tuple[Sequence[Message], Sequence[Message]]]
    ) -> list[float]:
        """``prob_first_better`` of each ``(completion_a, completion_b)`` match, in order."""
        ...


async def _judge_all(
    judge: Judge, prompt: Conversation, matches: Sequence[tuple[Sequence[Message], Sequence[Message]]]
) -> list[float]:
    if isinstance(judge, MatchJudge):
        return await judge.judge_matches(prompt, matches)
    return [await judge.prob_first_better(prompt, a, b) for a, b in matches]


def parse_answer(renderer: Renderer, tokens_T: np.ndarray) -> tuple[Message, bool]:
    """The assistant message in ``tokens_T`` and whether it ended cleanly on the renderer's stop sequence."""
    message, termination = parse_tokens(renderer, np.asarray(tokens_T, dtype=np.int64))
    return message, termination is Termination.STOP_SEQUENCE


class PreferenceEnv(SingleTurnEnv):
    """One answer to ``prompt``; its reward comes from the group's tournament, so the step reward is only the
    format term ``format_coef * (well_formed - 1)`` (0 by default). ``well_formed``: the response ended on the
    renderer's stop sequence (``Termination.STOP_SEQUENCE``)."""

    _where = "PreferenceEnv"

    def __init__(
        self, renderer: Renderer, prompt: Conversation, *, max_tokens: int | None = None, format_coef: float = 0.0
    ) -> None:
        require_type(prompt, Conversation, "PreferenceEnv", "prompt")
        self.renderer = renderer
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.format_coef = in_range(format_coef, "PreferenceEnv", "format_coef", low=0.0)
        self.done = False

    def _prompt(self) -> Conversation:
        return self.prompt

    async def step(self, action: SampledSequence) -> StepResult:
        message, termination = self._act(action)
        well_formed = termination is Termination.STOP_SEQUENCE
        return StepResult(
            reward=self.format_coef * (float(well_formed) - 1.0),
            done=True,
            parse_error=not well_formed,
            metrics={"format": float(well_formed)},
            logs={"response": message.text()},
        )


def tournament_schedule(n: int, opponents: int | None) -> tuple[tuple[int, int], ...]:
    """The tournament of ``n`` finished members: ``opponents`` each when a regular schedule exists, else one
    fewer (members dropped by failures can leave an odd group)."""
    if opponents is None or opponents >= n - 1:
        return tournament_pairs(n)
    if opponents % 2 and n % 2:
        opponents -= 1
    return tournament_pairs(n, opponents=opponents) if opponents > 0 else ()


@attrs.frozen
class PreferenceEnvGroupBuilder:
    """``group_size`` :class:`PreferenceEnv` answers to ``prompt``, rewarded by a tournament judged by ``judge``.

    :meth:`compute_group_rewards` parses each answer, judges every match of
    :func:`~tinkerflow.preference.reward_model.tournament_pairs` (``opponents`` per member; ``None``: all pairs)
    concurrently, and returns each member's win fraction with metrics ``win_fraction`` and ``matches``.
    """

    prompt: Conversation
    judge: Judge
    renderer: Renderer
    group_size: int = attrs.field(validator=attrs_int_at_least("PreferenceEnvGroupBuilder", 1))
    max_tokens: int | None = None
    format_coef: float = 0.0
    opponents: int | None = attrs.field(
        default=None, validator=attrs_int_at_least("PreferenceEnvGroupBuilder", 1, allow_none=True)
    )
    env_tags: tuple[str, ...] = attrs.field(default=("rlhf",), converter=as_tags)

    def __attrs_post_init__(self) -> None:
        require_type(self.prompt, Conversation, "PreferenceEnvGroupBuilder", "prompt")
        in_range(self.format_coef, "PreferenceEnvGroupBuilder", "format_coef", low=0.0)

    async def make_envs(self) -> Sequence[Env]:
        return [
            PreferenceEnv(self.renderer, self.prompt, max_tokens=self.max_tokens, format_coef=self.format_coef)
            for _ in range(self.group_size)
        ]

    def response(self, trajectory: Trajectory) -> Message:
        """The assistant message a (single-turn) trajectory answered."""
        if not trajectory.transitions:
            return Message(role="assistant", content="")
        return parse_answer(self.renderer, trajectory.transitions[0].action_tokens_T)[0]

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        n = len(trajectories)
        if n == 0:
            return []
        responses = [self.response(trajectory) for trajectory in trajectories]
        pairs = tournament_schedule(n, self.opponents)
        probabilities = await _judge_all(
            self.judge, self.prompt, [((responses[i],), (responses[j],)) for i, j in pairs]
        )
        rewards_G = win_fraction_rewards(n, dict(zip(pairs, probabilities, strict=True)))
        matches_G = np.zeros(n, dtype=np.int64)
        for i, j in pairs:
            matches_G[i] += 1
            matches_G[j] += 1
        return [
            (float(reward), {"win_fraction": float(reward), "matches": float(matches)})
            for reward, matches in zip(rewards_G, matches_G, strict=True)
        ]

    def tags(self) -> tuple[str, ...]:
        return self.env_tags


def preference_dataset(
    prompts: Sequence[Conversation],
    judge: Judge,
    renderer: Renderer,
    *,
    group_size: int,
    batch_size: int,
    steps: int | None = None,
    seed: int = 0,
    max_tokens: int | None = None,
    format_coef: float = 0.0,
    opponents: int | None = None,
) -> ListRLDataset:
    """A :class:`~tinkerflow.rl.envs.ListRLDataset` of one :class:`PreferenceEnvGroupBuilder` per prompt,
    ``batch_size`` groups per batch, reshuffled (seeded) every epoch; with ``steps`` it holds enough epochs for
    that many batches."""
    builders = [
        PreferenceEnvGroupBuilder(
            prompt=prompt,
            judge=judge,
            renderer=renderer,
            group_size=group_size,
            max_tokens=max_tokens,
            format_coef=format_coef,
            opponents=opponents,
        )
        for prompt in prompts
    ]
    if not builders:
        raise ConfigError("preference_dataset", "prompts", "is empty.", "give at least one prompt.")
    per_epoch = -(-len(builders) // batch_size)
    epochs = max(1, -(-steps // per_epoch)) if steps else 1
    return ListRLDataset(builders, batch_size, seed, epochs=epochs)
