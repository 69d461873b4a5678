"""On-policy distillation, pure parts: prompt environments, the held-out KL measure and the run's config.

On-policy distillation (tinker-cookbook 0.6.1, ``distillation/train_on_policy.py``): the student samples answers to
prompts; a teacher scores the student's own tokens; each sampled token's advantage is the negative reverse KL
``-(log p_student - log p_teacher)`` (times ``kl_coef``), added to the environment's group-centered reward
advantages, which are zero for a reward-free prompt environment. It is RL with the KL term against a chosen
reference (``RLConfig.kl_reference``) in ``kl_mode="distillation"``
(:func:`tinkerflow.rl.kl.reverse_kl_advantages`); the loop is RL's.

* :class:`PromptEnv`: one answer to a prompt, reward 0 (the cookbook's ``PromptOnlyEnv``); given a ``teacher``
  scorer, its reward is instead minus the answer's per-token reverse KL to the teacher (:func:`sequence_reverse_kl`),
  which is how the held-out prompts measure the student's distance to the teacher in the RL loop's evaluations.
* :func:`prompt_messages`: the prompt of a chat row (its messages before the final assistant answer).
* :func:`prompt_dataset`: the prompts as an :class:`~tinkerflow.rl.envs.datasets.ListRLDataset`.
* :class:`DistillConfig`: the ``tinkerflow distill`` config, and :meth:`DistillConfig.rl_config`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Sequence
from typing import Protocol

import numpy as np

from tinkerflow._validate import require_type
from tinkerflow.chat import Conversation, Message
from tinkerflow.errors import ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.render import Renderer, Termination
from tinkerflow.rl.envs.base import ProblemGroupBuilder, SingleTurnEnv
from tinkerflow.rl.envs.datasets import ListRLDataset
from tinkerflow.rl.types import StepResult, StopCondition
from tinkerflow.sampling import SampledSequence

__all__ = [
    "LogprobScorer",
    "PromptEnv",
    "prompt_dataset",
    "prompt_messages",
    "sequence_reverse_kl",
]

#: The metrics tag of prompt environments.
DISTILL_TAG = "distill"


class LogprobScorer(Protocol):
    """What scores a sequence (a teacher): the logprob of each of its tokens given the ones before (the first
    entry has no context). A shell ``SamplingClient`` is one."""

    def compute_logprobs(self, prompt: ModelInput) -> Awaitable[np.ndarray]: ...


def sequence_reverse_kl(student_logprobs_T: np.ndarray, teacher_logprobs_T: np.ndarray) -> float:
    """The mean over a sampled answer's tokens of ``log p_student - log p_teacher``: a one-sample estimate of the
    per-token reverse KL from the student to the teacher (0.0 for an empty answer).

    Raises:
        ShapeError-like ValidationError: the two arrays differ in length; NaN or infinite logprobs.
    """
    where = "sequence_reverse_kl"
    student = np.asarray(student_logprobs_T, dtype=np.float64)
    teacher = np.asarray(teacher_logprobs_T, dtype=np.float64)
    if student.ndim != 1 or student.shape != teacher.shape:
        raise ValidationError(
            where,
            "teacher_logprobs_T",
            f"has shape {teacher.shape} but the student's logprobs have {student.shape}.",
            "give one teacher logprob per sampled token.",
        )
    if not (np.isfinite(student).all() and np.isfinite(teacher).all()):
        raise ValidationError(where, "teacher_logprobs_T", "holds NaN or infinite logprobs.", "check the scorer.")
    return float((student - teacher).mean()) if student.size else 0.0


def prompt_messages(conversation: Conversation) -> tuple[Message, ...]:
    """The prompt of a chat row: its messages without a final assistant answer; it must end on a user message.

    Raises:
        ValidationError: nothing is left, or the prompt does not end on a user (or tool) message.
    """
    require_type(conversation, Conversation, "prompt_messages", "conversation")
    messages = tuple(conversation.messages)
    if messages and messages[-1].role == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1].role not in ("user", "tool"):
        raise ValidationError(
            "prompt_messages",
            "conversation.messages",
            "has no user message before its final answer (nothing for the student to answer).",
            "give rows whose messages end on a user message, optionally followed by the assistant's answer.",
        )
    return messages


class PromptEnv(SingleTurnEnv):
    """One answer to ``messages``. Without ``teacher`` the reward is 0 (distillation's signal is the KL term);
    with one, the reward is ``-sequence_reverse_kl`` of the answer (the sampled logprobs against the teacher's)
    and the metric ``teacher_kl`` its KL (held-out measurement)."""

    _where = "PromptEnv"

    def __init__(
        self,
        renderer: Renderer,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        teacher: LogprobScorer | None = None,
    ) -> None:
        require_type(renderer, Renderer, self._where, "renderer")
        self.renderer = renderer
        self.messages = tuple(messages)
        self.max_tokens = max_tokens
        self.teacher = teacher
        self.done = False
        self._observation: ModelInput | None = None

    def _prompt(self) -> tuple[Message, ...]:
        return self.messages

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        observation, stop = await super().initial_observation()
        self._observation = observation
        return observation, stop

    async def step(self, action: SampledSequence) -> StepResult:
        message, termination = self._act(action)
        well_formed = termination is Termination.STOP_SEQUENCE
        metrics = {"format": float(well_formed)}
        reward = 0.0
        if self.teacher is not None:
            kl = await self._teacher_kl(action)
            metrics["teacher_kl"] = kl
            reward = -kl
        return StepResult(
            reward=reward,
            done=True,
            parse_error=not termination.is_clean,
            metrics=metrics,
            logs={"response": message.text()},
        )

    async def _teacher_kl(self, action: SampledSequence) -> float:
        assert self.teacher is not None
        if self._observation is None or action.logprobs_T is None:
            raise ValidationError(
                self._where, "action.logprobs_T", "is missing.", "sample with logprobs after initial_observation."
            )
        length = action.tokens_T.shape[0]
        if length == 0:
            return 0.0
        scores = np.asarray(
            await self.teacher.compute_logprobs(self._observation.append_tokens(action.tokens_T)), dtype=np.float64
        )
        return sequence_reverse_kl(action.logprobs_T, scores[-length:])


def prompt_dataset(
    prompts: Sequence[Sequence[Message]],
    renderer: Renderer,
    *,
    group_size: int,
    batch_size: int,
    steps: int,
    seed: int,
    max_tokens: int | None,
    teacher: LogprobScorer | None = None,
) -> ListRLDataset:
    """The prompts as ``group_size`` :class:`PromptEnv` answers each, ``batch_size`` prompts a batch, as many
    seeded-shuffle epochs as ``steps`` batches need."""
    builders = [
        ProblemGroupBuilder(
            functools.partial(PromptEnv, renderer, tuple(messages), max_tokens=max_tokens, teacher=teacher),
            group_size,
            (DISTILL_TAG,),
        )
        for messages in prompts
    ]
    per_epoch = max(-(-len(builders) // batch_size), 1)
    return ListRLDataset(builders, batch_size, seed, epochs=max(math.ceil(steps / per_epoch), 1))
