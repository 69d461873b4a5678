"""RLHF (shell): train a pairwise judge with SL on comparisons, then RL whose reward is the judge's verdict.

Two stages, each a run directory of its own that resumes by itself:

1. **Reward model.** :func:`~tinkerflow.preference.reward_model.reward_model_conversations` turns the labelled
   comparisons into judge conversations (both presentation orders) and
   :func:`~tinkerflow.shell.recipes.sl.run_sl` trains on them in ``rm_config.run_dir``. Held-out judge accuracy is
   measured with the base model before and with the trained weights after. When the stage has finished,
   ``reward_model.json`` in its run directory records the
   judge's sampler weights; a rerun finds it (after checking ``config.json`` and ``state.json``) and skips the
   stage.
2. **Policy.** The judge's weights become a :class:`PairwiseJudge`; every prompt becomes a
   :class:`~tinkerflow.rl.envs.preference.PreferenceEnvGroupBuilder` (``rl_config.group_size`` single-turn
   envs, a pure environment of the core);
   :func:`~tinkerflow.shell.recipes.rl.run_rl` trains the policy in ``rl_config.run_dir``. Each group's samples play a
   tournament judged in both presentation orders; a sample's reward is its win fraction (mean 0.5 per group; advantages
   are ``reward - 0.5``), plus an
   optional format penalty for responses that did not end on the stop sequence. Before/after, the policy's greedy
   answers to the held-out prompts are judged against the labelled-chosen completions (win rate).

The judge's probability that ``x`` beats ``y``: with ``x`` shown first, ``p1 = softmax(lp_A, lp_B)[A]`` where
``lp_A``/``lp_B`` are the judge's sequence logprobs of answering ``A``/``B`` (one ``compute_logprobs`` call each);
with ``x`` shown second, ``p2 = softmax(lp_A, lp_B)[B]``; the estimate is ``(p1 + p2) / 2``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Final, Literal, TextIO, TypeAlias

import attrs
import numpy as np

from tinkerflow.chat import Conversation, Message
from tinkerflow.config import SLConfig
from tinkerflow.errors import ValidationError
from tinkerflow.preference.records import Comparison, LabeledComparison
from tinkerflow.preference.reward_model import (
    JUDGE_ANSWERS,
    JUDGE_INSTRUCTION,
    JudgeMetrics,
    answer_probability,
    judge_conversation,
    judge_metrics,
    reward_model_conversations,
)
from tinkerflow.render import Renderer, build_generation_prompt, build_supervised_example, parse_response
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.envs.base import stop_condition_for
from tinkerflow.rl.envs.preference import (
    Judge,
    PreferenceEnv,
    PreferenceEnvGroupBuilder,
    parse_answer,
    preference_dataset,
)
from tinkerflow.sampling import SamplingParams
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.backends.protocol import APIFuture, Backend, SamplingClient
from tinkerflow.shell.io.run_dir import RunDirError, atomic_write_text, read_state
from tinkerflow.shell.recipes.rl import RLResult, run_rl
from tinkerflow.shell.recipes.sl import prepare_sl_data, run_sl

__all__ = [
    "REWARD_MODEL_FILE",
    "Judge",
    "PairwiseJudge",
    "PreferenceEnv",
    "PreferenceEnvGroupBuilder",
    "RLHFResult",
    "RLHFStage",
    "RewardModelResult",
    "evaluate_judge",
    "policy_win_rate",
    "preference_dataset",
    "run_rlhf",
    "train_reward_model",
]

#: The record of a finished reward-model stage, in ``rm_config.run_dir``.
REWARD_MODEL_FILE: Final = "reward_model.json"

#: The stage an ``after_step`` hook of :func:`run_rlhf` is called from.
RLHFStage: TypeAlias = Literal["reward_model", "policy"]


# -- the judge --------------------------------------------------------------------------------------------------


def _answer_logprob(scores_T: np.ndarray, weights_T: np.ndarray) -> float:
    """The sequence logprob of the weighted (answer) tokens, from per-token logprobs with NaN at position 0."""
    mask = np.asarray(weights_T) > 0
    if not mask.any():
        raise ValidationError(
            "PairwiseJudge", "renderer", "weights no token of the judge's answer.", "use a chat renderer."
        )
    scores = np.asarray(scores_T, dtype=np.float64)
    if scores.shape != mask.shape:
        raise ValidationError(
            "PairwiseJudge", "compute_logprobs", f"gave {scores.shape[0]} logprobs for {mask.shape[0]} tokens."
        )
    picked = scores[mask]
    if np.any(np.isnan(picked)):
        raise ValidationError("PairwiseJudge", "compute_logprobs", "gave no logprob for a token of the answer.")
    return float(picked.sum())


class PairwiseJudge:
    """A judge over a sampler of its weights (see the module docstring for the probability).

    Args:
        sampler: samples from the judge's weights (only ``compute_logprobs`` is used).
        renderer: the judge model's renderer; the answer is the weighted tokens of the last assistant message.
        instruction: the judge's instruction (the one it was trained with).
    """

    def __init__(self, sampler: SamplingClient, renderer: Renderer, *, instruction: str = JUDGE_INSTRUCTION) -> None:
        self.sampler = sampler
        self.renderer = renderer
        self.instruction = instruction

    async def prob_answer_a(self, comparison: Comparison) -> float:
        """The judge's probability of answering ``A`` for ``comparison`` as shown (``completion_a`` first)."""
        futures: list[APIFuture[np.ndarray]] = []
        weights: list[np.ndarray] = []
        for answer in JUDGE_ANSWERS:  # both requests in flight before either is awaited
            conversation = judge_conversation(comparison, order="ab", answer=answer, instruction=self.instruction)
            example = build_supervised_example(self.renderer, conversation, "last_assistant_message")
            futures.append(self.sampler.compute_logprobs(example.model_input))
            weights.append(np.asarray(example.weights_T))
        logprobs = [
            _answer_logprob(await future, weights_T) for future, weights_T in zip(futures, weights, strict=True)
        ]
        return answer_probability(logprobs[0], logprobs[1])

    async def presentation_probabilities(
        self, prompt: Conversation, completion_a: Sequence[Message], completion_b: Sequence[Message]
    ) -> tuple[float, float]:
        """``(P(a better) shown first, P(a better) shown second)``: the two presentation orders, not averaged."""
        comparison = Comparison(prompt=prompt, completion_a=tuple(completion_a), completion_b=tuple(completion_b))
        first, second = await asyncio.gather(self.prob_answer_a(comparison), self.prob_answer_a(comparison.swapped()))
        return first, 1.0 - second

    async def prob_first_better(
        self, prompt: Conversation, completion_a: Sequence[Message], completion_b: Sequence[Message]
    ) -> float:
        """The probability that ``completion_a`` is better, averaged over both presentation orders."""
        first, second = await self.presentation_probabilities(prompt, completion_a, completion_b)
        return 0.5 * (first + second)

    async def judge_matches(
        self, prompt: Conversation, matches: Sequence[tuple[Sequence[Message], Sequence[Message]]]
    ) -> list[float]:
        """:meth:`prob_first_better` of every match, all judged concurrently."""
        return list(await asyncio.gather(*(self.prob_first_better(prompt, a, b) for a, b in matches)))


async def evaluate_judge(
    judge: Judge, labeled: Sequence[LabeledComparison], *, limit: int | None = None
) -> JudgeMetrics:
    """The judge's agreement with ``labeled`` (ties skipped; the first ``limit`` non-tied comparisons)."""
    comparisons = [item for item in labeled if not item.is_tie][:limit]

    async def prob_chosen(item: LabeledComparison) -> float:
        chosen, rejected = item.chosen_rejected()
        return await judge.prob_first_better(item.comparison.prompt, chosen, rejected)

    probabilities = await asyncio.gather(*(prob_chosen(item) for item in comparisons))
    return judge_metrics(np.asarray(probabilities, dtype=np.float64))


# -- evaluation of the policy ------------------------------------------------------------------------------------


async def policy_win_rate(
    judge: Judge,
    sampler: SamplingClient,
    renderer: Renderer,
    labeled: Sequence[LabeledComparison],
    *,
    max_tokens: int,
    limit: int | None = None,
    seed: int = 0,
) -> float | None:
    """Mean probability, by ``judge``, that the policy's greedy answer to each held-out prompt beats the
    labelled-chosen completion (ties skipped; the first ``limit``); ``None`` without comparisons."""
    comparisons = [item for item in labeled if not item.is_tie][:limit]
    if not comparisons:
        return None
    stop = stop_condition_for(renderer, max_tokens)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        stop_tokens=stop.stop_tokens,
        stop_strings=stop.stop_strings,
        seed=seed,
    )

    async def one(item: LabeledComparison) -> float:
        prompt = item.comparison.prompt
        response = await sampler.sample(build_generation_prompt(renderer, prompt), 1, params)
        answer = parse_answer(renderer, response.sequences[0].tokens_T)[0]
        chosen, _ = item.chosen_rejected()
        return await judge.prob_first_better(prompt, (answer,), chosen)

    return float(np.mean(await asyncio.gather(*(one(item) for item in comparisons))))


# -- the stages -------------------------------------------------------------------------------------------------


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@attrs.frozen
class RewardModelResult:
    """A finished reward-model stage (saved as ``reward_model.json`` in its run directory).

    Attributes:
        steps: SL steps trained.
        final_checkpoint: the training state after the last step.
        sampler_checkpoint: the judge's weights for sampling (what stage 2 loads).
        eval_nll_before / eval_nll_after: held-out NLL of the judge's answers (SL's ``eval_nll``).
        accuracy_before / accuracy_after: held-out :class:`~tinkerflow.preference.reward_model.JudgeMetrics`
            of the base model and of the trained judge.
    """

    steps: int
    final_checkpoint: str
    sampler_checkpoint: str
    eval_nll_before: float | None
    eval_nll_after: float | None
    accuracy_before: JudgeMetrics
    accuracy_after: JudgeMetrics


@attrs.frozen
class RLHFResult:
    """What :func:`run_rlhf` reports.

    Attributes:
        reward_model: the judge's stage.
        reward_model_reused: stage 1 had finished in an earlier run and was skipped.
        policy: the RL stage's result.
        win_rate_before / win_rate_after: :func:`policy_win_rate` of the base policy and of the trained one
            against the held-out chosen completions (``None`` without held-out comparisons).
    """

    reward_model: RewardModelResult
    reward_model_reused: bool
    policy: RLResult
    win_rate_before: float | None
    win_rate_after: float | None


def _finished_reward_model(config: SLConfig) -> RewardModelResult | None:
    """The recorded result of a finished stage 1 in ``config.run_dir`` (checked against its run), or ``None``."""
    run_dir = pathlib.Path(config.run_dir)
    record = run_dir / REWARD_MODEL_FILE
    if not record.exists():
        return None
    config_file = run_dir / "config.json"
    if not config_file.exists() or config_file.read_text(encoding="utf-8") != to_json(config, indent=2):
        raise RunDirError(
            f"{run_dir}: holds a reward model trained with another config (see its config.json); "
            "use a new run_dir, or the same config to reuse it."
        )
    result = from_json(record.read_bytes(), RewardModelResult)
    state = read_state(run_dir)
    if state is None or state.step != result.steps:
        raise RunDirError(
            f"{run_dir}: {REWARD_MODEL_FILE} says {result.steps} steps but state.json says "
            f"{None if state is None else state.step}; move the run directory away to start over."
        )
    return result


def train_reward_model(
    config: SLConfig,
    backend: Backend,
    renderer: Renderer,
    comparisons_train: Sequence[LabeledComparison],
    comparisons_test: Sequence[LabeledComparison],
    *,
    both_orders: bool = True,
    instruction: str = JUDGE_INSTRUCTION,
    eval_limit: int | None = 64,
    out: TextIO | None = None,
    after_step: Callable[[int], None] | None = None,
) -> tuple[RewardModelResult, bool]:
    """Stage 1 (see the module docstring): ``(result, reused)``; ``reused`` when an earlier run had finished it.

    Trains on ``reward_model_conversations(comparisons_train, both_orders=both_orders)`` and evaluates SL's
    held-out NLL on both orders of ``comparisons_test`` (ties dropped). ``config.train_data`` only labels the
    in-memory rows (e.g. ``"<memory:rlhf>"``); pass the same comparisons again to resume. ``eval_limit`` bounds the
    held-out comparisons judged for accuracy (4 ``compute_logprobs`` calls each).
    """
    finished = _finished_reward_model(config)
    if finished is not None:
        if out is not None:
            out.write(f"reward model: reusing the finished stage in {config.run_dir}\n")
        return finished, True
    train_rows = reward_model_conversations(comparisons_train, both_orders=both_orders, instruction=instruction)
    test_rows = reward_model_conversations(comparisons_test, both_orders=True, instruction=instruction)
    data = prepare_sl_data(config, renderer, train_rows=train_rows, test_rows=test_rows)
    base = backend.create_sampling_client(base_model=config.base_model).result()
    before = asyncio.run(
        evaluate_judge(PairwiseJudge(base, renderer, instruction=instruction), comparisons_test, limit=eval_limit)
    )
    sl = run_sl(config, backend, renderer, data=data, out=out, after_step=after_step, sinks=None)
    sampler = backend.create_sampling_client(model_path=sl.sampler_checkpoint).result()
    after = asyncio.run(
        evaluate_judge(PairwiseJudge(sampler, renderer, instruction=instruction), comparisons_test, limit=eval_limit)
    )
    result = RewardModelResult(
        steps=sl.steps,
        final_checkpoint=sl.final_checkpoint,
        sampler_checkpoint=sl.sampler_checkpoint,
        eval_nll_before=_finite_or_none(sl.eval_nll_before),
        eval_nll_after=_finite_or_none(sl.eval_nll_after),
        accuracy_before=before,
        accuracy_after=after,
    )
    atomic_write_text(pathlib.Path(config.run_dir) / REWARD_MODEL_FILE, to_json(result, indent=2))
    if out is not None:
        out.write(f"judge held-out accuracy: {_rate(before.accuracy)} -> {_rate(after.accuracy)}\n")
    return result, False


def _stage_hook(after_step: Callable[[RLHFStage, int], None] | None, stage: RLHFStage) -> Callable[[int], None] | None:
    if after_step is None:
        return None
    hook = after_step

    def call(step: int) -> None:
        hook(stage, step)

    return call


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run_rlhf(
    rm_config: SLConfig,
    rl_config: RLConfig,
    backend: Backend,
    renderer: Renderer,
    comparisons_train: Sequence[LabeledComparison],
    comparisons_test: Sequence[LabeledComparison],
    prompts: Sequence[Conversation],
    *,
    judge_renderer: Renderer | None = None,
    both_orders: bool = True,
    instruction: str = JUDGE_INSTRUCTION,
    format_coef: float = 0.0,
    opponents: int | None = None,
    eval_limit: int | None = 64,
    decode: Callable[[np.ndarray], str] | None = None,
    out: TextIO | None = None,
    after_step: Callable[[RLHFStage, int], None] | None = None,
) -> RLHFResult:
    """Train a pairwise judge on ``comparisons_train`` (stage 1, ``rm_config``), then a policy on ``prompts`` with
    the judge's tournament rewards (stage 2, ``rl_config``). See the module docstring.

    ``renderer`` renders the policy (and the judge unless ``judge_renderer`` is given: when the two base models
    differ). ``rl_config.group_size`` answers per prompt, ``groups_per_batch`` prompts per step,
    ``max_tokens``/``temperature`` for sampling; ``rl_config.env`` only names the run (e.g. ``"rlhf"``).
    ``opponents`` limits each answer's matches (``None``: all pairs; cost ``group_size * (group_size - 1) * 2``
    ``compute_logprobs`` calls per group). ``eval_limit`` bounds the held-out comparisons used for the judge's
    accuracy and the policy's win rate. ``after_step(stage, step)`` runs after each logged step (tests kill a run
    with it). Both stages resume from their run directories; a finished stage 1 is skipped.
    """
    judge_view = judge_renderer if judge_renderer is not None else renderer
    reward_model, reused = train_reward_model(
        rm_config,
        backend,
        judge_view,
        comparisons_train,
        comparisons_test,
        both_orders=both_orders,
        instruction=instruction,
        eval_limit=eval_limit,
        out=out,
        after_step=_stage_hook(after_step, "reward_model"),
    )
    judge_sampler = backend.create_sampling_client(model_path=reward_model.sampler_checkpoint).result()
    judge = PairwiseJudge(judge_sampler, judge_view, instruction=instruction)
    dataset = preference_dataset(
        prompts,
        judge,
        renderer,
        group_size=rl_config.group_size,
        batch_size=rl_config.groups_per_batch,
        steps=rl_config.steps,
        seed=rl_config.seed,
        max_tokens=rl_config.max_tokens,
        format_coef=format_coef,
        opponents=opponents,
    )
    policy = run_rl(
        rl_config,
        backend,
        dataset,
        decode=decode if decode is not None else (lambda tokens: parse_response(renderer, tokens).message.text()),
        out=out,
        after_step=_stage_hook(after_step, "policy"),
    )
    base_policy = backend.create_sampling_client(base_model=rl_config.base_model).result()
    trained_policy = backend.create_sampling_client(model_path=policy.sampler_checkpoint).result()
    win_rate = functools.partial(
        policy_win_rate,
        judge,
        renderer=renderer,
        labeled=comparisons_test,
        max_tokens=rl_config.max_tokens,
        limit=eval_limit,
        seed=rl_config.seed,
    )
    win_before, win_after = asyncio.run(win_rate(base_policy)), asyncio.run(win_rate(trained_policy))
    if out is not None and win_after is not None:
        out.write(f"policy win rate vs chosen completions (judged): {_rate(win_before)} -> {_rate(win_after)}\n")
    return RLHFResult(
        reward_model=reward_model,
        reward_model_reused=reused,
        policy=policy,
        win_rate_before=win_before,
        win_rate_after=win_after,
    )
