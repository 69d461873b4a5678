"""Rollout transcripts: records of what the model saw and did, and a browsable HTML page of them. Pure.

The RL loop decodes each trajectory into an :class:`EpisodeTranscript` (one row of ``transcripts.jsonl`` per
episode, keyed by step and trajectory id) and renders :func:`transcripts_html` from those rows.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence

import attrs
import numpy as np

from tinkerflow.rl.types import TrajectoryGroup

__all__ = ["EpisodeTranscript", "TurnTranscript", "episode_transcripts", "transcripts_html"]


@attrs.frozen
class TurnTranscript:
    """One turn: the new part of the observation, the action, and the step's reward."""

    observation: str
    action: str
    reward: float
    masked: bool = False


@attrs.frozen
class EpisodeTranscript:
    """One decoded episode of a step."""

    step: int
    trajectory_id: str
    total_reward: float
    advantage: float | None
    turns: tuple[TurnTranscript, ...]


def episode_transcripts(
    step: int,
    groups: Sequence[TrajectoryGroup],
    decode: Callable[[np.ndarray], str],
    advantages: Mapping[str, float] | None = None,
) -> list[EpisodeTranscript]:
    """Decode every trajectory of ``groups``; an observation that extends the previous sequence shows only the
    new tokens. ``advantages`` maps trajectory ids to their advantage (absent for dropped groups)."""
    out: list[EpisodeTranscript] = []
    for group in groups:
        totals = group.total_rewards_G()
        for trajectory, trajectory_id, total in zip(group.trajectories, group.trajectory_ids, totals, strict=True):
            turns: list[TurnTranscript] = []
            previous = np.zeros(0, dtype=np.int64)
            for transition in trajectory.transitions:
                observation = (
                    transition.observation.to_tokens()
                    if not transition.observation.has_images
                    else np.zeros(0, dtype=np.int64)
                )
                extends = observation.size >= previous.size and np.array_equal(observation[: previous.size], previous)
                new = observation[previous.size :] if extends else observation
                turns.append(
                    TurnTranscript(
                        observation=decode(new),
                        action=decode(transition.action_tokens_T),
                        reward=transition.reward,
                        masked=transition.mask_turn,
                    )
                )
                previous = np.concatenate([observation, transition.action_tokens_T])
            out.append(
                EpisodeTranscript(
                    step=step,
                    trajectory_id=trajectory_id,
                    total_reward=float(total),
                    advantage=None if advantages is None else advantages.get(trajectory_id),
                    turns=tuple(turns),
                )
            )
    return out


def transcripts_html(episodes: Sequence[EpisodeTranscript], title: str = "RL rollouts") -> str:
    """A self-contained HTML page: one collapsible section per step, one block per episode."""
    by_step: dict[int, list[EpisodeTranscript]] = {}
    for episode in episodes:
        by_step.setdefault(episode.step, []).append(episode)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:auto}",
        ".ob{white-space:pre-wrap;background:#f3f3f3;padding:4px}",
        ".ac{white-space:pre-wrap;background:#e6f0ff;padding:4px}",
        ".masked{opacity:.5} .ep{border:1px solid #ccc;margin:6px 0;padding:6px}",
        "</style></head><body>",
        f"<h2>{html.escape(title)}</h2>",
    ]
    for step in sorted(by_step):
        rows = by_step[step]
        mean = sum(e.total_reward for e in rows) / len(rows)
        parts.append(f"<details><summary>step {step}: {len(rows)} episodes, mean reward {mean:.3f}</summary>")
        for episode in rows:
            advantage = "" if episode.advantage is None else f", advantage {episode.advantage:+.3f}"
            parts.append(
                f"<div class='ep'><b>{html.escape(episode.trajectory_id)}</b>: reward {episode.total_reward:.3f}"
                f"{advantage}"
            )
            for turn in episode.turns:
                css = "ac masked" if turn.masked else "ac"
                parts.append(f"<div class='ob'>{html.escape(turn.observation)}</div>")
                parts.append(f"<div class='{css}'>{html.escape(turn.action)}</div><small>reward {turn.reward}</small>")
            parts.append("</div>")
        parts.append("</details>")
    parts.append("</body></html>")
    return "".join(parts)
