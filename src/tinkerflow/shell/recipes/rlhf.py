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
   :class:`PreferenceEnvGroupBuilder` (``rl_config.group_size`` single-turn envs);
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
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Final, Literal, Protocol, TextIO, TypeAlias

import attrs
import numpy as np

from tinkerflow._validate import finite_float, require_type
from tinkerflow.chat import Conversation, Message
from tinkerflow.config import SLConfig
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.preference.records import Comparison, LabeledComparison
from tinkerflow.preference.reward_model import (
    JUDGE_ANSWERS,
    JUDGE_INSTRUCTION,
    JudgeMetrics,
    answer_probability,
    judge_conversation,
    judge_metrics,
    reward_model_conversations,
    tournament_pairs,
    win_fraction_rewards,
)
from tinkerflow.render import Renderer, Termination, build_generation_prompt
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.envs import ListRLDataset, parse_tokens, stop_condition_for
from tinkerflow.rl.types import Env, Metrics, StepResult, StopCondition, Trajectory
from tinkerflow.sampling import SampledSequence, SamplingParams
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.backends.protocol import APIFuture, Backend, SamplingClient
from tinkerflow.shell.io.run_dir import RunDirError, atomic_write_text, read_state
from tinkerflow.shell.recipes.rl import RLResult, run_rl
from tinkerflow.shell.recipes.sl import ChatRenderer, RendererAdapter, prepare_sl_data, run_sl

__all__ = [
    "REWARD_MODEL_FILE",
    "AnyRenderer",
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

#: A chat renderer of :mod:`tinkerflow.render`, or the narrow :class:`~tinkerflow.shell.recipes.sl.ChatRenderer` of the
#: SL loop (whose stop condition is its stop tokens).
AnyRenderer: TypeAlias = Renderer | ChatRenderer

#: The record of a finished reward-model stage, in ``rm_config.run_dir``.
REWARD_MODEL_FILE: Final = "reward_model.json"

#: The stage an ``after_step`` hook of :func:`run_rlhf` is called from.
RLHFStage: TypeAlias = Literal["reward_model", "policy"]


def _chat(renderer: AnyRenderer) -> ChatRenderer:
    return RendererAdapter(renderer) if isinstance(renderer, Renderer) else renderer


# -- the judge --------------------------------------------------------------------------------------------------


class Judge(Protocol):
    """A pairwise preference model."""

    async def prob_first_better(
        self, prompt: Conversation, completion_a: Sequence[Message], completion_b: Sequence[Message]
    ) -> float:
        """The probability that ``completion_a`` is a better answer to ``prompt`` than ``completion_b``."""
        ...


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
        renderer: the judge model's renderer (a :class:`tinkerflow.render.Renderer` or a
            :class:`~tinkerflow.shell.recipes.sl.ChatRenderer`); the answer is the weighted tokens of the last assistant
            message.
        instruction: the judge's instruction (the one it was trained with).
    """

    def __init__(self, sampler: SamplingClient, renderer: AnyRenderer, *, instruction: str = JUDGE_INSTRUCTION) -> None:
        self.sampler = sampler
        self.renderer = _chat(renderer)
        self.instruction = instruction

    async def prob_answer_a(self, comparison: Comparison) -> float:
        """The judge's probability of answering ``A`` for ``comparison`` as shown (``completion_a`` first)."""
        futures: list[APIFuture[np.ndarray]] = []
        weights: list[np.ndarray] = []
        for answer in JUDGE_ANSWERS:  # both requests in flight before either is awaited
            conversation = judge_conversation(comparison, order="ab", answer=answer, instruction=self.instruction)
            model_input, weights_T = self.renderer.supervised_example(conversation, "last_assistant_message")
            futures.append(self.sampler.compute_logprobs(model_input))
            weights.append(np.asarray(weights_T))
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


# -- the policy's environments ----------------------------------------------------------------------------------


def _observation(renderer: AnyRenderer, prompt: Conversation) -> ModelInput:
    if isinstance(renderer, Renderer):
        return build_generation_prompt(renderer, prompt)
    return renderer.generation_prompt(prompt)


def _stop(renderer: AnyRenderer, max_tokens: int | None) -> StopCondition:
    if isinstance(renderer, Renderer):
        return stop_condition_for(renderer, max_tokens)
    return StopCondition(stop_tokens=renderer.stop_tokens(), max_tokens=max_tokens)


def _parse(renderer: AnyRenderer, tokens_T: np.ndarray) -> tuple[Message, bool]:
    """The assistant message in ``tokens_T`` and whether it ended cleanly on the stop sequence."""
    tokens = np.asarray(tokens_T, dtype=np.int64)
    if isinstance(renderer, Renderer):
        message, termination = parse_tokens(renderer, tokens)
        return message, termination is Termination.STOP_SEQUENCE
    ended = bool(tokens.size) and int(tokens[-1]) in renderer.stop_tokens()
    return renderer.parse_response(tokens), ended


def _format_coef(value: object, where: str) -> float:
    coef = finite_float(value, where, "format_coef")
    if coef < 0:
        raise ConfigError(where, "format_coef", f"must be >= 0, got {coef}.")
    return coef


class PreferenceEnv:
    """One answer to ``prompt``; its reward comes from the group's tournament, so the step reward is only the
    format term ``format_coef * (well_formed - 1)`` (0 by default). ``well_formed``: the response ended on the
    renderer's stop sequence (a :class:`~tinkerflow.render.Renderer`: ``Termination.STOP_SEQUENCE``; a
    :class:`~tinkerflow.shell.recipes.sl.ChatRenderer`: its last token is a stop token)."""

    def __init__(
        self, renderer: AnyRenderer, prompt: Conversation, *, max_tokens: int | None = None, format_coef: float = 0.0
    ) -> None:
        require_type(prompt, Conversation, "PreferenceEnv", "prompt")
        self.renderer = renderer
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.format_coef = _format_coef(format_coef, "PreferenceEnv")
        self.done = False

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        return _observation(self.renderer, self.prompt), _stop(self.renderer, self.max_tokens)

    async def step(self, action: SampledSequence) -> StepResult:
        if self.done:
            raise ValidationError(
                "PreferenceEnv", "step", "called after the episode ended.", "environments are single use."
            )
        require_type(action, SampledSequence, "PreferenceEnv", "action")
        self.done = True
        message, well_formed = _parse(self.renderer, action.tokens_T)
        return StepResult(
            reward=self.format_coef * (float(well_formed) - 1.0),
            done=True,
            parse_error=not well_formed,
            metrics={"format": float(well_formed)},
            logs={"response": message.text()},
        )


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("PreferenceEnvGroupBuilder", attribute.name, f"must be a positive int, got {value!r}.")


def _opponents(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError("PreferenceEnvGroupBuilder", "opponents", f"must be a positive int or None, got {value!r}.")


def _tags(value: Sequence[str] | str) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _schedule(n: int, opponents: int | None) -> tuple[tuple[int, int], ...]:
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
    renderer: AnyRenderer
    group_size: int = attrs.field(validator=_positive)
    max_tokens: int | None = None
    format_coef: float = 0.0
    opponents: int | None = attrs.field(default=None, validator=_opponents)
    env_tags: tuple[str, ...] = attrs.field(default=("rlhf",), converter=_tags)

    def __attrs_post_init__(self) -> None:
        require_type(self.prompt, Conversation, "PreferenceEnvGroupBuilder", "prompt")
        _format_coef(self.format_coef, "PreferenceEnvGroupBuilder")

    async def make_envs(self) -> Sequence[Env]:
        return [
            PreferenceEnv(self.renderer, self.prompt, max_tokens=self.max_tokens, format_coef=self.format_coef)
            for _ in range(self.group_size)
        ]

    def response(self, trajectory: Trajectory) -> Message:
        """The assistant message a (single-turn) trajectory answered."""
        if not trajectory.transitions:
            return Message(role="assistant", content="")
        return _parse(self.renderer, trajectory.transitions[0].action_tokens_T)[0]

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        n = len(trajectories)
        if n == 0:
            return []
        responses = [self.response(trajectory) for trajectory in trajectories]
        pairs = _schedule(n, self.opponents)
        probabilities = await asyncio.gather(
            *(self.judge.prob_first_better(self.prompt, (responses[i],), (responses[j],)) for i, j in pairs)
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
    renderer: AnyRenderer,
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


async def policy_win_rate(
    judge: Judge,
    sampler: SamplingClient,
    renderer: AnyRenderer,
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
    stop = _stop(renderer, max_tokens)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        stop_tokens=stop.stop_tokens,
        stop_strings=stop.stop_strings,
        seed=seed,
    )

    async def one(item: LabeledComparison) -> float:
        prompt = item.comparison.prompt
        response = await sampler.sample(_observation(renderer, prompt), 1, params)
        answer = _parse(renderer, response.sequences[0].tokens_T)[0]
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
    renderer: AnyRenderer,
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
    chat = _chat(renderer)
    train_rows = reward_model_conversations(comparisons_train, both_orders=both_orders, instruction=instruction)
    test_rows = reward_model_conversations(comparisons_test, both_orders=True, instruction=instruction)
    data = prepare_sl_data(config, chat, train_rows=train_rows, test_rows=test_rows)
    base = backend.create_sampling_client(base_model=config.base_model).result()
    before = asyncio.run(
        evaluate_judge(PairwiseJudge(base, renderer, instruction=instruction), comparisons_test, limit=eval_limit)
    )
    sl = run_sl(config, backend, chat, data=data, out=out, after_step=after_step, sinks=None)
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
    renderer: AnyRenderer,
    comparisons_train: Sequence[LabeledComparison],
    comparisons_test: Sequence[LabeledComparison],
    prompts: Sequence[Conversation],
    *,
    judge_renderer: AnyRenderer | None = None,
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
    chat = _chat(renderer)
    policy = run_rl(
        rl_config,
        backend,
        dataset,
        decode=decode if decode is not None else (lambda tokens: chat.parse_response(tokens).text()),
        out=out,
        after_step=_stage_hook(after_step, "policy"),
    )
    base_policy = backend.create_sampling_client(base_model=rl_config.base_model).result()
    trained_policy = backend.create_sampling_client(model_path=policy.sampler_checkpoint).result()

    def win_rate(sampler: SamplingClient) -> float | None:
        return asyncio.run(
            policy_win_rate(
                judge,
                sampler,
                renderer,
                comparisons_test,
                max_tokens=rl_config.max_tokens,
                limit=eval_limit,
                seed=rl_config.seed,
            )
        )

    win_before, win_after = win_rate(base_policy), win_rate(trained_policy)
    if out is not None and win_after is not None:
        out.write(f"policy win rate vs chosen completions (judged): {_rate(win_before)} -> {_rate(win_after)}\n")
    return RLHFResult(
        reward_model=reward_model,
        reward_model_reused=reused,
        policy=policy,
        win_rate_before=win_before,
        win_rate_after=win_after,
    )
