"""Guess the number: a multi-turn :class:`~tinkerflow.rl.envs.base.MessageEnv`.

The env picks a secret integer in ``[low, high]``; the model guesses; the env answers ``Higher.`` or ``Lower.``
as the next user message, until the model finds the number (reward 1) or has used ``max_turns`` guesses
(reward 0). A reply that is not a single integer costs a turn and gets a reminder. Each observation is the
whole conversation rendered again, so with a renderer that has the extension property it extends the previous
observation plus the action, and the episode assembles into one datum.
"""

from __future__ import annotations

import re
from typing import Final

import attrs
import numpy as np

from tinkerflow._validate import int_at_least, positive_int, require_type
from tinkerflow.chat import Message
from tinkerflow.errors import ConfigError
from tinkerflow.render import Renderer, Termination
from tinkerflow.rl.envs.base import MessageEnv, MessageStep, ProblemBuilder, ProblemGroupBuilder
from tinkerflow.rl.envs.datasets import GeneratedRLDataset

__all__ = [
    "TAG",
    "GuessNumberEnv",
    "GuessNumberOptions",
    "builder",
    "dataset",
    "instructions",
    "make_env",
    "parse_guess",
]

TAG: Final = "guess_number"
_GUESS = re.compile(r"\s*(?:my guess is\s*:?\s*)?(-?\d+)\s*\.?\s*", re.IGNORECASE)


def instructions(low: int, high: int, max_turns: int) -> str:
    """The opening user message."""
    return (
        f"I am thinking of an integer between {low} and {high}. You have {max_turns} guesses. "
        "Reply with only your guess, a single integer. After each guess I will say whether my number is "
        "higher or lower."
    )


def parse_guess(text: str) -> int | None:
    """The guess in a reply that is a single integer (optionally ``My guess is N``); else ``None``."""
    match = _GUESS.fullmatch(text)
    return int(match.group(1)) if match else None


@attrs.frozen
class GuessNumberOptions:
    """The rules of a game: the secret lies in ``[low, high]``; the model has ``max_turns`` guesses of at most
    ``max_tokens`` tokens each (``None``: no limit)."""

    low: int = 1
    high: int = 16
    max_turns: int = 5
    max_tokens: int | None = 16

    def __attrs_post_init__(self) -> None:
        where = "GuessNumberOptions"
        for field in ("low", "high"):
            require_type(getattr(self, field), int, where, field)
        if self.high < self.low:
            raise ConfigError(where, "high", f"must be >= low ({self.low}), got {self.high}.")
        positive_int(self.max_turns, where, "max_turns")
        int_at_least(self.max_tokens, where, "max_tokens", allow_none=True)


_DEFAULTS: Final = GuessNumberOptions()


class GuessNumberEnv(MessageEnv):
    """One game. ``metrics``: ``found`` (0/1) and ``guesses`` at the end, ``invalid_guess`` per turn."""

    def __init__(
        self,
        renderer: Renderer,
        secret: int,
        *,
        low: int = 1,
        high: int = 16,
        max_turns: int = 5,
        max_tokens: int | None = 16,
        parse_error_reward: float = 0.0,
    ) -> None:
        if not low <= secret <= high:
            raise ConfigError("GuessNumberEnv", "secret", f"{secret} is outside [{low}, {high}].")
        positive_int(max_turns, "GuessNumberEnv", "max_turns")
        super().__init__(
            renderer,
            (Message(role="user", content=instructions(low, high, max_turns)),),
            max_tokens=max_tokens,
            parse_error_reward=parse_error_reward,
        )
        self.secret = secret
        self.low = low
        self.high = high
        self.max_turns = max_turns

    async def respond(self, message: Message, termination: Termination) -> MessageStep:
        guess = parse_guess(message.text())
        out_of_turns = self.turns >= self.max_turns
        if guess == self.secret:
            return MessageStep(reward=1.0, done=True, metrics={"found": 1.0, "guesses": float(self.turns)})
        if out_of_turns:
            return MessageStep(
                reward=0.0,
                done=True,
                metrics={"found": 0.0, "guesses": float(self.turns), "invalid_guess": float(guess is None)},
            )
        if guess is None:
            reply = f"Please reply with a single integer between {self.low} and {self.high}."
        else:
            reply = "Higher." if self.secret > guess else "Lower."
        return MessageStep(
            reward=0.0,
            done=False,
            messages=(Message(role="user", content=reply),),
            metrics={"invalid_guess": float(guess is None)},
        )


def make_env(renderer: Renderer, secret: int, options: GuessNumberOptions = _DEFAULTS) -> GuessNumberEnv:
    """One game with ``secret`` under ``options``' rules."""
    return GuessNumberEnv(renderer, secret, **attrs.asdict(options, recurse=False))


#: ``builder(renderer, secret, group_size, options)``: ``group_size`` games with the same secret (checked at
#: once), tagged ``"guess_number"``.
builder: Final = ProblemBuilder(make_env, TAG, _DEFAULTS, check=True)


def dataset(
    renderer: Renderer,
    *,
    batch_size: int,
    group_size: int,
    n_batches: int,
    seed: int = 0,
    low: int = 1,
    high: int = 16,
    max_turns: int = 5,
    max_tokens: int | None = 16,
) -> GeneratedRLDataset:
    """Games with secrets drawn uniformly from ``[low, high]`` (deterministic in ``seed`` and the batch index);
    ``low``, ``high``, ``max_turns`` and ``max_tokens`` as in :class:`GuessNumberOptions`."""
    options = GuessNumberOptions(low=low, high=high, max_turns=max_turns, max_tokens=max_tokens)

    def make(rng: np.random.Generator) -> ProblemGroupBuilder:
        return builder(renderer, int(rng.integers(low, high + 1)), group_size, options)

    make(np.random.default_rng(0))  # validate the options now, not at batch 0
    return GeneratedRLDataset(make, batch_size, n_batches, seed)
