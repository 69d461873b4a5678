"""Hypothesis strategies for RL records: transitions, trajectories, trajectory groups and batches of groups.

Needs ``hypothesis``. The trajectories exercise what the assembly must get right: single- and multi-turn episodes,
observations that extend the previous sequence (with the chunk boundaries drawn anew each turn, since only the flat
tokens matter), prefix breaks (a fresh observation, or the previous sequence with one element changed or cut
short), turns masked for a parse error, image chunks, and optionally empty observations and actions::

    from hypothesis import given
    from tinkerflow.rl import testing as rlt

    @given(rlt.trajectory_group_lists(max_groups=4))
    def test_my_step(groups):
        ...
"""

from __future__ import annotations

from typing import Literal, TypeAlias, TypedDict, Unpack

import numpy as np
from hypothesis import strategies as st

from tinkerflow.model_input import Chunk, ImageChunk, ModelInput, TokenChunk
from tinkerflow.rl.types import PARSE_ERROR_MASKED_METRIC_KEY, RolloutFailure, Trajectory, TrajectoryGroup, Transition

__all__ = [
    "IMAGE_POOL",
    "GroupOptions",
    "RewardKind",
    "TrajectoryOptions",
    "observations",
    "rewards",
    "trajectories",
    "trajectory_group_lists",
    "trajectory_groups",
]

#: A few distinct images (two of the same length) so that equal images meet again in later observations.
IMAGE_POOL: tuple[ImageChunk, ...] = (
    ImageChunk(data=b"\x89PNG-a", format="png", expected_tokens=1),
    ImageChunk(data=b"\x89PNG-b", format="png", expected_tokens=3),
    ImageChunk(data=b"\x89PNG-c", format="png", expected_tokens=3),
    ImageChunk(data=b"\xff\xd8-d", format="jpeg", expected_tokens=2),
)

#: How a group's rewards are drawn: 0/1, all equal (a constant group), multiples of 1/8, or any finite float.
RewardKind: TypeAlias = Literal["binary", "constant", "dyadic", "float"]

_Flat = list[int | ImageChunk]
_SEEDS = st.integers(0, 2**32 - 1)


def _trajectory(transitions: list[Transition]) -> Trajectory:
    return Trajectory(transitions=transitions, final_observation=ModelInput.empty())


def rewards(kind: RewardKind = "float") -> st.SearchStrategy[float]:
    """Finite rewards of one kind (``"constant"`` draws like ``"dyadic"``; the group makes them equal)."""
    if kind == "binary":
        return st.sampled_from([0.0, 1.0])
    if kind in ("dyadic", "constant"):
        return st.integers(-64, 64).map(lambda n: n / 8)
    return st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def _flat_elements(
    draw: st.DrawFn, rng: np.random.Generator, min_size: int, max_size: int, images: bool, vocab_size: int
) -> _Flat:
    """Tokens (and, with ``images``, about one image in four); hypothesis draws the length, ``rng`` the values."""
    size = draw(st.integers(min_size, max_size))
    tokens = rng.integers(0, vocab_size, size).tolist()
    if not images:
        return list(tokens)
    picks = rng.integers(0, 4 * len(IMAGE_POOL), size).tolist()
    return [IMAGE_POOL[pick] if pick < len(IMAGE_POOL) else token for token, pick in zip(tokens, picks, strict=True)]


def _as_model_input(draw: st.DrawFn, rng: np.random.Generator, flat: _Flat) -> ModelInput:
    """``flat`` as chunks; when drawn, runs of tokens are split at random points into several token chunks."""
    split = draw(st.booleans())
    chunks: list[Chunk] = []
    run: list[int] = []

    def flush() -> None:
        while run:
            size = int(rng.integers(1, len(run) + 1)) if split else len(run)
            chunks.append(TokenChunk(tokens_T=run[:size]))
            del run[:size]

    for element in flat:
        if isinstance(element, ImageChunk):
            flush()
            chunks.append(element)
        else:
            run.append(element)
    flush()
    return ModelInput(chunks=tuple(chunks))


@st.composite
def observations(
    draw: st.DrawFn, *, min_length: int = 0, max_length: int = 12, images: bool = False, vocab_size: int = 1000
) -> ModelInput:
    """Observations of ``min_length..max_length`` flat elements (tokens, and image chunks with ``images``)."""
    rng = np.random.default_rng(draw(_SEEDS))
    return _as_model_input(draw, rng, _flat_elements(draw, rng, min_length, max_length, images, vocab_size))


def _action(
    draw: st.DrawFn, rng: np.random.Generator, min_size: int, max_size: int, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    size = draw(st.integers(min_size, max_size))
    tokens = rng.integers(0, vocab_size, size)
    logprobs = -rng.exponential(1.0, size).astype(np.float32)
    return tokens, logprobs


def _changed(rng: np.random.Generator, flat: _Flat, vocab_size: int) -> _Flat:
    """``flat`` with one element replaced by a different one (so it is no longer a prefix match)."""
    index = int(rng.integers(0, len(flat)))
    old = flat[index]
    new: int | ImageChunk
    if isinstance(old, ImageChunk):
        others = [image for image in IMAGE_POOL if image != old]
        new = others[int(rng.integers(0, len(others)))]
    else:
        new = (old + 1 + int(rng.integers(0, vocab_size - 1))) % vocab_size
    return [*flat[:index], new, *flat[index + 1 :]]


@st.composite
def trajectories(
    draw: st.DrawFn,
    *,
    min_turns: int = 1,
    max_turns: int = 4,
    max_observation: int = 10,
    max_action: int = 6,
    prefix_breaks: bool = True,
    masked_turns: bool = True,
    images: bool = False,
    empty: bool = False,
    step_rewards: bool = True,
    vocab_size: int = 1000,
    sequence_ids: bool = False,
    masked_metric: bool = False,
) -> Trajectory:
    """Episodes of ``min_turns..max_turns`` transitions.

    Each later observation extends the previous sequence (observation + action) with new elements, unless
    ``prefix_breaks`` draws a break: a fresh observation, the previous sequence with one element changed, or the
    previous sequence cut short. ``masked_turns`` marks some turns ``mask_turn``; ``images`` mixes image chunks
    into observations; ``empty`` allows empty observations and actions (sequences the cookbook refuses to turn
    into datums: fewer than 2 positions, or ending with an image); ``step_rewards`` gives some turns a reward.
    ``sequence_ids`` gives actions sampled-sequence ids (every action in about 3 trajectories of 4, otherwise some
    actions lack one), so the assembly attaches provenance spans; ``masked_metric`` sets the cookbook's
    ``parse_error_masked`` metric on some turns, to values on both sides of its 1.0 threshold.
    """
    turns = draw(st.integers(min_turns, max_turns))
    rng = np.random.default_rng(draw(_SEEDS))
    id_gaps = sequence_ids and draw(st.integers(0, 3)) == 0
    prefix = draw(st.sampled_from(["s", "seq-", "a/"])) if sequence_ids else ""
    low = 0 if empty else 1
    sequence: _Flat = []
    result: list[Transition] = []
    for turn in range(turns):
        mode = "fresh"
        if turn > 0:
            modes = ["extend", "extend", "extend", "fresh", "changed", "cut"] if prefix_breaks else ["extend"]
            mode = draw(st.sampled_from(modes))
            if (mode == "changed" and not sequence) or (mode == "cut" and len(sequence) < 2):
                mode = "extend"
        if mode == "fresh":
            flat = _flat_elements(draw, rng, low, max_observation, images, vocab_size)
        else:
            base = sequence
            if mode == "changed":
                base = _changed(rng, sequence, vocab_size)
            elif mode == "cut":
                base = sequence[: draw(st.integers(1, len(sequence) - 1))]
            flat = base + _flat_elements(draw, rng, 0, max_observation, images, vocab_size)
        observation = _as_model_input(draw, rng, flat)
        tokens, logprobs = _action(draw, rng, low, max_action, vocab_size)
        reward = draw(rewards("dyadic")) if step_rewards and draw(st.booleans()) else 0.0
        metrics = {"turn": float(turn)}
        if masked_metric and draw(st.integers(0, 3)) == 0:
            metrics[PARSE_ERROR_MASKED_METRIC_KEY] = draw(st.sampled_from([0.0, 0.5, 0.999, 1.0, 1.0, 2.0]))
        sequence_id = ""
        if sequence_ids and not (id_gaps and draw(st.booleans())):
            sequence_id = f"{prefix}{turn}-{int(rng.integers(0, 10**6))}"
        result.append(
            Transition(
                observation=observation,
                action_tokens_T=tokens,
                action_logprobs_T=logprobs,
                reward=reward,
                done=turn == turns - 1,
                stop_reason=draw(st.sampled_from(["stop", "stop", "length"])),
                mask_turn=masked_turns and draw(st.integers(0, 4)) == 0,
                metrics=metrics,
                sequence_id=sequence_id,
            )
        )
        sequence = [*flat, *tokens.tolist()]
    return _trajectory(result)


class TrajectoryOptions(TypedDict, total=False):
    """Keyword options of :func:`trajectories` that :func:`trajectory_groups` passes on to every member (same
    defaults)."""

    max_observation: int
    max_action: int
    prefix_breaks: bool
    masked_turns: bool
    empty: bool
    vocab_size: int
    sequence_ids: bool
    masked_metric: bool


@st.composite
def trajectory_groups(
    draw: st.DrawFn,
    *,
    group_id: str | None = None,
    min_size: int = 1,
    max_size: int = 6,
    reward_kind: RewardKind | None = None,
    failures: bool = True,
    multi_turn: bool = True,
    images: bool = False,
    **options: Unpack[TrajectoryOptions],
) -> TrajectoryGroup:
    """Groups of ``min_size..max_size`` finished trajectories (plus, with ``failures``, some failed members).

    With ``images``, about half the trajectories mix image chunks into their observations. ``reward_kind``
    (default: drawn) chooses the group rewards; a ``"constant"`` group gets equal group rewards and
    no step rewards, so its total rewards are all equal. Tags come from a small set so tags are shared.
    ``options`` are :func:`trajectories`'s, for every member.
    """
    kind: RewardKind = (
        reward_kind
        if reward_kind is not None
        else draw(st.sampled_from(["binary", "binary", "constant", "dyadic", "float"]))
    )
    size = draw(st.integers(min_size, max_size))
    failed = draw(st.integers(0, 2)) if failures else 0
    order = draw(st.permutations(range(size + failed)))
    members = sorted(order[:size])

    def member_strategy(with_images: bool) -> st.SearchStrategy[Trajectory]:
        return trajectories(
            min_turns=1,
            max_turns=4 if multi_turn else 1,
            images=with_images,
            step_rewards=kind != "constant",
            **options,
        )

    # with images, about half the trajectories mix image chunks in
    trajectory_strategy = st.one_of(member_strategy(False), member_strategy(True)) if images else member_strategy(False)
    members_trajectories = [draw(trajectory_strategy) for _ in members]
    if kind == "constant":
        constant = draw(rewards("dyadic"))
        group_rewards = [constant] * size
    else:
        group_rewards = [draw(rewards(kind)) for _ in members]
    failure_list = tuple(
        RolloutFailure(
            index=index, kind=draw(st.sampled_from(["exception", "timeout", "non_finite_reward"])), message="boom"
        )
        for index in sorted(order[size:])
    )
    tags = tuple(draw(st.lists(st.sampled_from(["math", "arith", "game"]), max_size=2, unique=True)))
    return TrajectoryGroup(
        group_id=group_id if group_id is not None else draw(st.text("abcxyz0123", min_size=1, max_size=6)),
        trajectories=tuple(members_trajectories),
        member_indices=tuple(members),
        group_rewards_G=tuple(group_rewards),
        metrics_G=tuple({"format": float(draw(st.booleans()))} for _ in members),
        failures=failure_list,
        tags=tags,
    )


class GroupOptions(TrajectoryOptions, total=False):
    """Keyword options of :func:`trajectory_groups` that :func:`trajectory_group_lists` passes on (same defaults)."""

    reward_kind: RewardKind | None
    failures: bool
    multi_turn: bool
    images: bool


@st.composite
def trajectory_group_lists(
    draw: st.DrawFn,
    *,
    min_groups: int = 0,
    max_groups: int = 4,
    min_size: int = 0,
    max_size: int = 6,
    **options: Unpack[GroupOptions],
) -> list[TrajectoryGroup]:
    """A batch of groups with unique ids ``"step/0"``, ``"step/1"``, ... (some may have no finished member when
    ``min_size`` is 0). ``options`` are :func:`trajectory_groups`'s, for every group."""
    count = draw(st.integers(min_groups, max_groups))
    return [
        draw(trajectory_groups(group_id=f"step/{index}", min_size=min_size, max_size=max_size, **options))
        for index in range(count)
    ]
