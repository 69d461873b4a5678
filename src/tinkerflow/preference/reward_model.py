"""Pairwise reward model (a judge) for RLHF, pure core: judge prompts, its SL data, tournaments, win fractions.

The judge is a chat model asked which of two completions of one prompt is better; it answers with one letter.
:func:`judge_conversation` writes that question as a single user message (a fixed instruction, the prompt as a
transcript, the two completions under ``### Response A`` / ``### Response B``), optionally followed by the
assistant's answer ``"A"`` or ``"B"``. Trained with plain SL on :func:`reward_model_conversations` (each labelled
comparison in both presentation orders, so that "always answer A" earns nothing), the judge's probability that
``x`` beats ``y`` is read from its logprobs of the two answers (the shell's
:class:`~tinkerflow.shell.recipes.rlhf.PairwiseJudge`).

In RL the samples of one prompt play a tournament (:func:`tournament_pairs`) and each sample's reward is its win
fraction (:func:`win_fraction_rewards`)::

    P(i > j)  = mean over the presentations of {i, j} judged: P(first shown wins), or 1 - it when i was second
    reward_i  = mean over i's opponents j of P(i > j)              (0.5 for a member without opponents)

Rewards lie in ``[0, 1]``; in a regular schedule (every member plays as many matches) they sum to ``n / 2``, so a
group's mean reward is 0.5 and group-centred advantages are ``reward_i - 0.5``.

This plays the role of tinker-cookbook 0.6.1's ``ComparisonRendererFromChatRenderer`` +
``PairwisePreferenceGroupBuilder`` with deliberate differences: the judge's prompt is one user message (no system
markers between turns, so every renderer accepts it); its preference is a probability from logprobs, not one greedy
token mapped to -1/0/+1; the reward is a win fraction in ``[0, 1]`` (the cookbook's ``win_minus_loss`` in
``[-1, 1]`` is ``2 * reward - 1``); and the reduced tournament is a regular circulant schedule (every member plays
the same number of opponents) instead of chunks of the group.

Numpy only; no torch, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Literal, TypeAlias

import attrs
import numpy as np
from jaxtyping import Float64
from numpy.typing import ArrayLike

from tinkerflow._validate import finite_float, require_type
from tinkerflow.chat import Conversation, Message
from tinkerflow.errors import ConfigError, NonFiniteError, ShapeError, ValidationError
from tinkerflow.preference.pairs import TiePolicy
from tinkerflow.preference.records import Comparison, Label, LabeledComparison, TieError

__all__ = [
    "JUDGE_ANSWERS",
    "JUDGE_INSTRUCTION",
    "Float64_G",
    "JudgeAnswer",
    "JudgeMetrics",
    "JudgeOrder",
    "answer_probability",
    "judge_answer",
    "judge_conversation",
    "judge_metrics",
    "reward_model_conversations",
    "tournament_pairs",
    "win_fraction_rewards",
]

#: One float64 value per member of a group.
Float64_G = Float64[np.ndarray, "G"]

#: Which completion is shown first: ``"ab"`` shows ``completion_a`` as Response A, ``"ba"`` shows it as Response B.
JudgeOrder: TypeAlias = Literal["ab", "ba"]
#: What the judge answers: the letter of the response it prefers.
JudgeAnswer: TypeAlias = Literal["A", "B"]
JUDGE_ANSWERS: Final[tuple[JudgeAnswer, JudgeAnswer]] = ("A", "B")

#: The judge's fixed instruction (first paragraph of its user message).
JUDGE_INSTRUCTION: Final[str] = (
    "Compare two responses to the conversation below. Answer with the letter of the better response: A or B."
)

_ORDERS: Final[tuple[JudgeOrder, ...]] = ("ab", "ba")


def _check_order(order: object, where: str) -> JudgeOrder:
    if order not in _ORDERS:
        raise ConfigError(where, "order", f"must be 'ab' or 'ba', got {order!r}.")
    return "ab" if order == "ab" else "ba"


def _message_text(message: Message) -> str:
    """The visible text of a message (thinking left out) and its tool calls, one per line."""
    lines = [message.text()] if message.text() else []
    lines.extend(f"[tool call] {call.name} {call.arguments}" for call in message.tool_calls)
    return "\n".join(lines)


def _transcript(messages: Sequence[Message]) -> str:
    return "\n".join(f"{message.role}: {_message_text(message)}" for message in messages)


def _completion_text(completion: Sequence[Message]) -> str:
    if len(completion) == 1:
        return _message_text(completion[0])
    return _transcript(completion)


def judge_answer(label: Label, order: JudgeOrder) -> JudgeAnswer:
    """The letter the judge should answer for a comparison labelled ``label`` shown in ``order``.

    Raises:
        TieError: ``label`` is ``"tie"`` (no letter is right).
    """
    order = _check_order(order, "judge_answer")
    if label == "tie":
        raise TieError("judge_answer", "label", "is 'tie': neither letter is right.", "drop ties (ties='drop').")
    if label not in ("a", "b"):
        raise ValidationError("judge_answer", "label", f"must be 'a', 'b' or 'tie', got {label!r}.")
    first = "a" if order == "ab" else "b"
    return "A" if label == first else "B"


def judge_conversation(
    comparison: Comparison,
    *,
    order: JudgeOrder = "ab",
    answer: JudgeAnswer | None = None,
    instruction: str = JUDGE_INSTRUCTION,
) -> Conversation:
    """The judge's conversation for ``comparison``: one user message holding ``instruction``, the prompt as a
    ``role: text`` transcript and the two completions (``order="ab"``: ``completion_a`` as Response A;
    ``"ba"``: swapped), then, when ``answer`` is given, the assistant message ``answer``.

    Only text is shown: thinking parts and images are left out, tool calls appear as ``[tool call] name {args}``
    lines. The prompt's tools are not offered to the judge.
    """
    where = "judge_conversation"
    require_type(comparison, Comparison, where, "comparison")
    order = _check_order(order, where)
    require_type(instruction, str, where, "instruction")
    if answer is not None and answer not in JUDGE_ANSWERS:
        raise ValidationError(where, "answer", f"must be 'A', 'B' or None, got {answer!r}.")
    first, second = (
        (comparison.completion_a, comparison.completion_b)
        if order == "ab"
        else (comparison.completion_b, comparison.completion_a)
    )
    parts = [
        instruction,
        f"### Conversation\n{_transcript(comparison.prompt.messages)}",
        f"### Response A\n{_completion_text(first)}",
        f"### Response B\n{_completion_text(second)}",
    ]
    question = Message(role="user", content="\n\n".join(part for part in parts if part))
    if answer is None:
        return Conversation(messages=(question,))
    return Conversation(messages=(question, Message(role="assistant", content=answer)))


def reward_model_conversations(
    labeled_comparisons: Sequence[LabeledComparison],
    *,
    both_orders: bool = True,
    ties: TiePolicy = "drop",
    instruction: str = JUDGE_INSTRUCTION,
) -> list[Conversation]:
    """Supervised data for the judge: each labelled comparison as a judge conversation ending with the right letter.

    ``both_orders=True`` gives two conversations per comparison (orders ``"ab"`` then ``"ba"``), so the letter
    carries no information about the position and position bias is trained out. ``both_orders=False`` gives one,
    alternating the order (even positions ``"ab"``, odd ``"ba"``): data whose chosen completion is always ``a``
    (every chosen/rejected layout) then still has as many ``A`` as ``B`` answers.

    ``ties``: ``"drop"`` leaves tied comparisons out (no letter is right), ``"raise"`` raises :class:`TieError`.
    """
    where = "reward_model_conversations"
    if ties not in ("raise", "drop"):
        raise ConfigError(where, "ties", f"must be 'raise' or 'drop', got {ties!r}.")
    require_type(both_orders, bool, where, "both_orders")
    out: list[Conversation] = []
    for index, labeled in enumerate(labeled_comparisons):
        require_type(labeled, LabeledComparison, where, f"labeled_comparisons[{index}]")
        if labeled.is_tie:
            if ties == "raise":
                raise TieError(
                    where,
                    f"labeled_comparisons[{index}].label",
                    "is 'tie': a judge has no right letter to learn for it.",
                    "pass ties='drop' to leave ties out, or relabel the row.",
                )
            continue
        orders: tuple[JudgeOrder, ...] = _ORDERS if both_orders else (_ORDERS[index % 2],)
        out.extend(
            judge_conversation(
                labeled.comparison,
                order=order,
                answer=judge_answer(labeled.label, order),
                instruction=instruction,
            )
            for order in orders
        )
    return out


def answer_probability(logprob_a: float, logprob_b: float) -> float:
    """The judge's probability of answering ``A`` rather than ``B``: its two answers' sequence logprobs
    normalized against each other, ``exp(lp_a) / (exp(lp_a) + exp(lp_b)) = sigmoid(lp_a - lp_b)`` (0.5 when both
    are ``-inf``).

    Raises:
        ValidationError: a logprob is NaN or ``+inf`` or above 0 by more than rounding.
    """
    where = "answer_probability"
    values = np.array([logprob_a, logprob_b], dtype=np.float64)
    if np.any(np.isnan(values)) or np.any(values > 1e-4):
        raise ValidationError(where, "logprob", f"must be <= 0 (a log-probability), got {values.tolist()}.")
    if np.all(np.isneginf(values)):
        return 0.5
    return float(np.exp(values[0] - np.logaddexp(values[0], values[1])))


def _count(value: object, where: str, field: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < low:
        raise ConfigError(where, field, f"must be an int >= {low}, got {value!r}.")
    return int(value)


def tournament_pairs(n: int, *, opponents: int | None = None) -> tuple[tuple[int, int], ...]:
    """The matches of a tournament among ``n`` group members, as sorted ``(i, j)`` pairs with ``i < j``.

    ``opponents=None`` (or ``>= n - 1``): every unordered pair once (``n (n - 1) / 2`` matches). Otherwise a regular
    circulant schedule in which every member plays exactly ``opponents`` others: member ``i`` meets ``i + d mod n``
    for ``d = 1 .. opponents // 2``, and for odd ``opponents`` also ``i + n / 2`` (which needs ``n`` even). That
    keeps the judge's cost linear in ``n`` (``n * opponents / 2`` matches) and every win fraction comparable.

    Raises:
        ConfigError: ``n < 1``, ``opponents < 1``, or an odd ``opponents < n - 1`` with ``n`` odd (no regular
            schedule exists).
    """
    where = "tournament_pairs"
    n = _count(n, where, "n", 1)
    if opponents is None or _count(opponents, where, "opponents", 1) >= n - 1:
        first, second = np.triu_indices(n, k=1)
        return tuple(zip(first.tolist(), second.tolist(), strict=True))
    if opponents % 2 and n % 2:
        raise ConfigError(
            where,
            "opponents",
            f"{opponents} opponents each among {n} members: an odd number of opponents needs an even group.",
            "use an even number of opponents, or all pairs (None).",
        )
    members = np.arange(n)
    pairs: set[tuple[int, int]] = set()
    for offset in range(1, opponents // 2 + 1):
        other = (members + offset) % n
        pairs.update(zip(np.minimum(members, other).tolist(), np.maximum(members, other).tolist(), strict=True))
    if opponents % 2:
        half = members[: n // 2]
        pairs.update(zip(half.tolist(), (half + n // 2).tolist(), strict=True))
    return tuple(sorted(pairs))


def win_fraction_rewards(n: int, pair_probabilities: Mapping[tuple[int, int], float]) -> Float64_G:
    """Each member's reward: the mean over its opponents of the probability that it beats them.

    ``pair_probabilities[(i, j)]`` is the probability that ``i`` beats ``j`` as judged with ``i`` shown first. A
    pair judged in both presentation orders (keys ``(i, j)`` and ``(j, i)``) gets the mean of the two estimates,
    ``P(i > j) = (p[(i, j)] + 1 - p[(j, i)]) / 2``, so ``P(i > j) + P(j > i) = 1`` always. A member that played
    no match gets 0.5.

    Returns:
        float64 rewards in ``[0, 1]``, one per member (``rewards_G``).

    Raises:
        ConfigError: ``n < 1``.
        ValidationError: a key that is not two different members of ``range(n)``, or a probability outside
            ``[0, 1]`` (:class:`~tinkerflow.errors.NonFiniteError` for NaN/infinity).
    """
    where = "win_fraction_rewards"
    n = _count(n, where, "n", 1)
    if not isinstance(pair_probabilities, Mapping):
        raise ValidationError(
            where, "pair_probabilities", f"must be a mapping (i, j) -> probability, got {type(pair_probabilities)}."
        )
    keys = list(pair_probabilities)
    for key in keys:
        if (
            not isinstance(key, tuple)
            or len(key) != 2
            or any(isinstance(k, bool) or not isinstance(k, int | np.integer) for k in key)
        ):
            raise ValidationError(where, f"pair_probabilities[{key!r}]", "keys must be pairs of member indices.")
    pairs_M_2 = np.asarray(keys, dtype=np.int64).reshape(len(keys), 2)
    probs_M = np.asarray([pair_probabilities[key] for key in keys], dtype=np.float64).reshape(len(keys))
    if pairs_M_2.size and (pairs_M_2.min() < 0 or pairs_M_2.max() >= n):
        raise ValidationError(where, "pair_probabilities", f"names a member outside 0..{n - 1}.")
    if np.any(pairs_M_2[:, 0] == pairs_M_2[:, 1]):
        raise ValidationError(where, "pair_probabilities", "pairs a member with itself.", "pair different members.")
    if not np.all(np.isfinite(probs_M)):
        raise NonFiniteError(where, "pair_probabilities", "holds NaN or infinity.")
    if np.any((probs_M < 0.0) | (probs_M > 1.0)):
        raise ValidationError(where, "pair_probabilities", "holds a probability outside [0, 1].")
    first, second = pairs_M_2[:, 0], pairs_M_2[:, 1]
    wins_N_N = np.zeros((n, n), dtype=np.float64)
    counts_N_N = np.zeros((n, n), dtype=np.float64)
    np.add.at(wins_N_N, (first, second), probs_M)
    np.add.at(wins_N_N, (second, first), 1.0 - probs_M)
    np.add.at(counts_N_N, (first, second), 1.0)
    np.add.at(counts_N_N, (second, first), 1.0)
    played_N_N = counts_N_N > 0
    beats_N_N = np.divide(wins_N_N, counts_N_N, out=np.zeros_like(wins_N_N), where=played_N_N)
    opponents_N = played_N_N.sum(axis=1)
    rewards_G = np.full(n, 0.5, dtype=np.float64)
    np.divide(beats_N_N.sum(axis=1), opponents_N, out=rewards_G, where=opponents_N > 0)
    result: Float64_G = np.clip(rewards_G, 0.0, 1.0)
    return result


@attrs.frozen
class JudgeMetrics:
    """How well a judge agrees with labelled comparisons (ties excluded). The rates are ``None`` when ``count``
    is 0.

    Attributes:
        count: comparisons judged.
        accuracy: fraction where the judge gives the labelled-chosen completion probability > 0.5 (exactly 0.5
            counts as half right).
        mean_prob_chosen: mean probability of the chosen completion.
        nll: mean ``-log P(chosen)`` (nats; ``log 2 = 0.693`` for a judge that always says 0.5).
    """

    count: int
    accuracy: float | None
    mean_prob_chosen: float | None
    nll: float | None

    def __attrs_post_init__(self) -> None:
        where = "JudgeMetrics"
        require_type(self.count, int, where, "count")
        if self.count < 0:
            raise ValidationError(where, "count", f"must be >= 0, got {self.count}.")
        for name in ("accuracy", "mean_prob_chosen", "nll"):
            value = getattr(self, name)
            if (value is None) != (self.count == 0):
                raise ValidationError(where, name, "must be None exactly when count is 0.")
            if value is not None:
                finite_float(value, where, name)


def judge_metrics(prob_chosen: ArrayLike) -> JudgeMetrics:
    """:class:`JudgeMetrics` of the judge's probabilities that the labelled-chosen completion is better."""
    where = "judge_metrics"
    probs_N = np.asarray(prob_chosen, dtype=np.float64)
    if probs_N.ndim != 1:
        raise ShapeError(where, "prob_chosen", f"must be 1-D, got shape {probs_N.shape}.")
    if not np.all(np.isfinite(probs_N)):
        raise NonFiniteError(where, "prob_chosen", "holds NaN or infinity.")
    if np.any((probs_N < 0.0) | (probs_N > 1.0)):
        raise ValidationError(where, "prob_chosen", "holds a probability outside [0, 1].")
    if probs_N.size == 0:
        return JudgeMetrics(count=0, accuracy=None, mean_prob_chosen=None, nll=None)
    correct_N = np.where(probs_N > 0.5, 1.0, np.where(probs_N == 0.5, 0.5, 0.0))
    nll = float(-np.mean(np.log(np.maximum(probs_N, np.finfo(np.float64).tiny))))
    return JudgeMetrics(
        count=int(probs_N.size),
        accuracy=float(correct_N.mean()),
        mean_prob_chosen=float(probs_N.mean()),
        nll=nll,
    )
