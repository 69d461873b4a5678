"""Environment building blocks over a renderer: message-level envs, single-turn problems, group builders.

* :class:`MessageEnv`: a multi-turn environment that talks in chat messages. It holds the conversation, renders
  each observation with :func:`~tinkerflow.render.build_generation_prompt`, parses each action with
  :func:`~tinkerflow.render.parse_response` and hands the parsed message (and its termination) to the
  subclass's async :meth:`MessageEnv.respond` hook, which answers a :class:`MessageStep`.
* :class:`ProblemEnv`: one question, one answer, graded: ``reward = correct + format_coef * (format_ok - 1)``
  (the cookbook's ``ProblemEnv`` formula).
* :class:`ProblemOptions`: the options of an environment of problems (worked examples, format weight, answer
  length), checked once.
* :class:`ProblemGroupBuilder`: ``group_size`` fresh copies of one environment (the samples of one prompt);
  :class:`ProblemBuilder` makes one from an environment factory, a problem and its options.

Pure: no clock, no network, no global randomness. Environments are single use (one episode each).
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Generic, TypeVar

import attrs
import numpy as np

from tinkerflow._validate import attrs_int_at_least, in_range, int_at_least, require_type
from tinkerflow.chat import Conversation, Message, ToolSpec
from tinkerflow.errors import ConfigError, NonFiniteError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.render import Renderer, RenderError, Termination, build_generation_prompt, parse_response
from tinkerflow.rl.types import Env, Metrics, StepResult, StopCondition, Trajectory
from tinkerflow.sampling import SampledSequence

__all__ = [
    "MessageEnv",
    "MessageStep",
    "ProblemBuilder",
    "ProblemEnv",
    "ProblemGroupBuilder",
    "ProblemOptions",
    "SingleTurnEnv",
    "always_well_formatted",
    "as_tags",
    "parse_tokens",
    "stop_condition_for",
]


def stop_condition_for(renderer: Renderer, max_tokens: int | None = None) -> StopCondition:
    """The stop condition of one assistant message for ``renderer`` (its stop tokens or strings)."""
    stops = renderer.stop_sequences()
    return StopCondition(stop_tokens=stops.tokens, stop_strings=stops.strings, max_tokens=max_tokens)


def parse_tokens(renderer: Renderer, tokens_T: Sequence[int] | np.ndarray) -> tuple[Message, Termination]:
    """:func:`~tinkerflow.render.parse_response`, except that tokens it rejects (more than one stop token) give
    their decoded text as the message and ``Termination.MALFORMED`` instead of raising."""
    tokens = np.asarray(tokens_T, dtype=np.int64)
    try:
        parsed = parse_response(renderer, tokens)
    except RenderError:
        return Message(role="assistant", content=renderer.tokenizer.decode(tokens)), Termination.MALFORMED
    return parsed.message, parsed.termination


def _check_step(where: str, done: bool, action: object) -> None:
    """What every env's ``step`` checks first: the episode has not ended and ``action`` is a sampled sequence."""
    if done:
        raise ValidationError(where, "step", "called after the episode ended.", "environments are single use.")
    require_type(action, SampledSequence, where, "action")


def _finite_reward(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(where, "reward", f"must be a number, got {type(value).__name__}.")
    if not math.isfinite(value):
        raise NonFiniteError(where, "reward", f"is {value}.", "rewards must be finite; fix the environment's grader.")
    return float(value)


def _metrics(value: Mapping[str, float]) -> dict[str, float]:
    return {str(key): float(number) for key, number in value.items()}


def _logs(value: Mapping[str, str]) -> dict[str, str]:
    return {str(key): str(text) for key, text in value.items()}


def _messages(value: Sequence[Message]) -> tuple[Message, ...]:
    return tuple(value)


@attrs.frozen
class MessageStep:
    """What a :class:`MessageEnv` answers to one parsed assistant message.

    Attributes:
        reward: the turn's reward (finite).
        done: the episode ends here.
        messages: messages to append to the conversation after the assistant's (user replies, tool results);
            the next observation is the whole conversation rendered again. Ignored when ``done``.
        max_tokens: limit of the next action (``None``: the env's default).
        mask_turn: exclude this action's tokens from training.
        metrics / logs: as in :class:`~tinkerflow.rl.types.StepResult`.
    """

    reward: float
    done: bool
    messages: tuple[Message, ...] = attrs.field(default=(), converter=_messages)
    max_tokens: int | None = None
    mask_turn: bool = False
    metrics: dict[str, float] = attrs.field(factory=dict, converter=_metrics)
    logs: dict[str, str] = attrs.field(factory=dict, converter=_logs)

    def __attrs_post_init__(self) -> None:
        _finite_reward(self.reward, "MessageStep")
        require_type(self.done, bool, "MessageStep", "done")
        for index, message in enumerate(self.messages):
            require_type(message, Message, "MessageStep", f"messages[{index}]")


class MessageEnv(abc.ABC):
    """A multi-turn environment at the message level, over a renderer (subclass it; implement :meth:`respond`).

    The env holds the conversation (``initial`` messages, then each parsed assistant message and the messages
    :meth:`respond` adds). Each observation is the whole conversation rendered as a generation prompt, so with a
    renderer that has the extension property every observation extends the previous observation plus action,
    and the turns of an episode assemble into a single datum.

    A response is *malformed* when it did not end on the renderer's stop sequence (cut off at ``max_tokens``,
    unparseable) or holds a tool call that could not be parsed (``message.unparsed_tool_calls``). A malformed
    response gets ``parse_error_reward`` and ``parse_error=True`` (and ``mask_turn`` when ``mask_parse_errors``).
    With ``end_on_parse_error`` (default) the episode ends there and :meth:`respond` is not called; otherwise the
    message is appended and :meth:`respond` is called as usual, its reward added to the penalty.

    Args:
        renderer: renders the conversation and parses actions.
        initial: the conversation before the first action (a :class:`~tinkerflow.chat.Conversation` brings its
            tools along).
        tools: tools offered to the model (in addition to the conversation's).
        max_tokens: default limit of each action.
        parse_error_reward: reward of a malformed response.
        end_on_parse_error: end the episode on a malformed response.
        mask_parse_errors: mask malformed turns out of training.
        max_observation_tokens: end the episode (``metrics["context_overflow"] = 1``) when the next observation
            would be longer than this, instead of failing the sampler call.
    """

    def __init__(
        self,
        renderer: Renderer,
        initial: Conversation | Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        max_tokens: int | None = None,
        parse_error_reward: float = -1.0,
        end_on_parse_error: bool = True,
        mask_parse_errors: bool = False,
        max_observation_tokens: int | None = None,
    ) -> None:
        where = type(self).__name__
        require_type(renderer, Renderer, where, "renderer")
        if isinstance(initial, Conversation):
            messages, conversation_tools = initial.messages, initial.tools
        else:
            messages, conversation_tools = tuple(initial), ()
        for index, message in enumerate(messages):
            require_type(message, Message, where, f"initial[{index}]")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ConfigError(where, "max_tokens", f"must be a positive int or None, got {max_tokens!r}.")
        if max_observation_tokens is not None and (
            not isinstance(max_observation_tokens, int) or max_observation_tokens < 1
        ):
            raise ConfigError(
                where, "max_observation_tokens", f"must be a positive int, got {max_observation_tokens!r}."
            )
        self.renderer = renderer
        self.messages: tuple[Message, ...] = messages
        self.tools: tuple[ToolSpec, ...] = (*conversation_tools, *tools)
        self.max_tokens = max_tokens
        self.parse_error_reward = _finite_reward(parse_error_reward, where)
        self.end_on_parse_error = end_on_parse_error
        self.mask_parse_errors = mask_parse_errors
        self.max_observation_tokens = max_observation_tokens
        self.turns = 0
        self.done = False

    # -- the hook ----------------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def respond(self, message: Message, termination: Termination) -> MessageStep:
        """React to the assistant's parsed ``message`` (already appended to :attr:`messages`): grade it, run its
        tool calls, write the next user turn. ``termination`` is ``MALFORMED`` only when
        ``end_on_parse_error`` is off."""

    # -- the Env protocol ---------------------------------------------------------------------------------------

    @property
    def conversation(self) -> Conversation:
        """The conversation so far, with the tools."""
        return Conversation(messages=self.messages, tools=self.tools)

    def stop_condition(self, max_tokens: int | None = None) -> StopCondition:
        """The stop condition of the next action."""
        return stop_condition_for(self.renderer, max_tokens if max_tokens is not None else self.max_tokens)

    def render(self) -> ModelInput:
        """The current observation: the conversation as a generation prompt."""
        if not self.messages:
            return build_generation_prompt(self.renderer, ())
        return build_generation_prompt(self.renderer, self.conversation)

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        return self.render(), self.stop_condition()

    async def step(self, action: SampledSequence) -> StepResult:
        where = type(self).__name__
        _check_step(where, self.done, action)
        self.turns += 1
        message, termination = parse_tokens(self.renderer, action.tokens_T)
        malformed = termination is Termination.MALFORMED or bool(message.unparsed_tool_calls)
        metrics: dict[str, float] = {"parse_error": float(malformed)}
        logs: dict[str, str] = {}
        if malformed:
            logs["parse_error"] = (
                "response cut off or without its stop sequence"
                if termination is Termination.MALFORMED
                else "; ".join(call.error for call in message.unparsed_tool_calls)
            )
            if self.end_on_parse_error:
                self.done = True
                return StepResult(
                    reward=self.parse_error_reward,
                    done=True,
                    parse_error=True,
                    mask_turn=self.mask_parse_errors,
                    metrics=metrics,
                    logs=logs,
                )
        self.messages = (*self.messages, message)
        answer = await self.respond(message, termination)
        require_type(answer, MessageStep, where, "respond()")
        reward = answer.reward + (self.parse_error_reward if malformed else 0.0)
        metrics.update(answer.metrics)
        logs.update(answer.logs)
        mask = answer.mask_turn or (malformed and self.mask_parse_errors)
        if answer.done:
            self.done = True
            return StepResult(
                reward=reward, done=True, parse_error=malformed, mask_turn=mask, metrics=metrics, logs=logs
            )
        self.messages = (*self.messages, *answer.messages)
        observation = self.render()
        if self.max_observation_tokens is not None and observation.length > self.max_observation_tokens:
            self.done = True
            metrics["context_overflow"] = 1.0
            return StepResult(
                reward=reward, done=True, parse_error=malformed, mask_turn=mask, metrics=metrics, logs=logs
            )
        return StepResult(
            reward=reward,
            done=False,
            next_observation=observation,
            next_stop=self.stop_condition(answer.max_tokens),
            parse_error=malformed,
            mask_turn=mask,
            metrics=metrics,
            logs=logs,
        )


def always_well_formatted(text: str) -> bool:
    """A format check that accepts any response."""
    return True


class SingleTurnEnv(abc.ABC):
    """What the single-turn environments share (:class:`ProblemEnv`, ``PreferenceEnv``): the observation is
    :meth:`_prompt` rendered as a generation prompt; the one action ends the episode. Subclasses set ``renderer``,
    ``max_tokens`` and ``done = False`` and say what the prompt is."""

    _where: ClassVar[str]
    renderer: Renderer
    max_tokens: int | None
    done: bool

    @abc.abstractmethod
    def _prompt(self) -> Conversation | Sequence[Message]:
        """The conversation the model answers."""

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        prompt = build_generation_prompt(self.renderer, self._prompt())
        return prompt, stop_condition_for(self.renderer, self.max_tokens)

    def _act(self, action: SampledSequence) -> tuple[Message, Termination]:
        """Check ``action``, end the episode and parse the action (:func:`parse_tokens`)."""
        _check_step(self._where, self.done, action)
        self.done = True
        return parse_tokens(self.renderer, action.tokens_T)


class ProblemEnv(SingleTurnEnv):
    """A single-turn problem: ask a question, grade the one answer.

    ``reward = correct + format_coef * (format_ok - 1)``, as the cookbook's ``ProblemEnv``: a correct,
    well-formatted answer earns 1, a wrong well-formatted one 0, and a badly formatted one ``format_coef`` less.
    ``correct = grader(text)``; ``format_ok`` needs the response to end on the renderer's stop sequence (with
    ``require_stop_sequence``; else a clean EOS also counts) and ``format_check(text)``. ``text`` is the
    visible text of the parsed message (thinking excluded). The grader sees the text even when the format is
    bad (as in the cookbook). ``parse_error`` is set when the response did not end cleanly.

    Args:
        renderer: renders the prompt and parses the answer.
        question: the user message.
        grader: ``text -> bool``, whether the answer is correct.
        format_check: ``text -> bool``, whether the answer has the required form.
        prefix: messages before the question (system prompt, few-shot examples).
        reference_answer: shown in the logs.
        format_coef: weight of the format term.
        require_stop_sequence: only a stop-sequence ending counts as well formed.
        max_tokens: limit of the answer.
    """

    _where = "ProblemEnv"

    def __init__(
        self,
        renderer: Renderer,
        question: str,
        grader: Callable[[str], bool],
        *,
        format_check: Callable[[str], bool] = always_well_formatted,
        prefix: Sequence[Message] = (),
        reference_answer: str = "",
        format_coef: float = 0.1,
        require_stop_sequence: bool = True,
        max_tokens: int | None = None,
    ) -> None:
        require_type(renderer, Renderer, "ProblemEnv", "renderer")
        require_type(question, str, "ProblemEnv", "question")
        if not math.isfinite(format_coef) or format_coef < 0:
            raise ConfigError("ProblemEnv", "format_coef", f"must be finite and >= 0, got {format_coef!r}.")
        self.renderer = renderer
        self.question = question
        self.grader = grader
        self.format_check = format_check
        self.prefix = tuple(prefix)
        self.reference_answer = reference_answer
        self.format_coef = float(format_coef)
        self.require_stop_sequence = require_stop_sequence
        self.max_tokens = max_tokens
        self.done = False

    @property
    def messages(self) -> tuple[Message, ...]:
        """The prompt: prefix plus the question."""
        return (*self.prefix, Message(role="user", content=self.question))

    def _prompt(self) -> tuple[Message, ...]:
        return self.messages

    async def step(self, action: SampledSequence) -> StepResult:
        message, termination = self._act(action)
        text = message.text()
        well_formed = termination is Termination.STOP_SEQUENCE if self.require_stop_sequence else termination.is_clean
        format_ok = bool(well_formed and self.format_check(text))
        correct = bool(self.grader(text))
        reward = float(correct) + self.format_coef * (float(format_ok) - 1.0)
        return StepResult(
            reward=reward,
            done=True,
            parse_error=not termination.is_clean,
            metrics={"format": float(format_ok), "correct": float(correct)},
            logs={"question": self.question, "response": text, "reference_answer": self.reference_answer},
        )


def as_tags(value: Sequence[str] | str) -> tuple[str, ...]:
    """An attrs converter: one tag or several -> a tuple of tags."""
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen
class ProblemGroupBuilder:
    """An :class:`~tinkerflow.rl.types.EnvGroupBuilder` of ``group_size`` fresh environments from ``make_env``
    (any single-use env: a :class:`ProblemEnv`, a :class:`MessageEnv`, ...). Rewards are per step only, so the
    group rewards are zeros. ``tags`` name the metrics groups (``("arithmetic",)``)."""

    make_env: Callable[[], Env]
    group_size: int = attrs.field(validator=attrs_int_at_least("ProblemGroupBuilder"))
    env_tags: tuple[str, ...] = attrs.field(default=(), converter=as_tags)

    async def make_envs(self) -> Sequence[Env]:
        return [self.make_env() for _ in range(self.group_size)]

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        return [(0.0, {}) for _ in trajectories]

    def tags(self) -> tuple[str, ...]:
        return self.env_tags


@attrs.frozen
class ProblemOptions:
    """How an environment of problems (:class:`ProblemEnv`) asks and grades each one (``math_boxed`` uses it as
    is; ``arithmetic.ArithmeticOptions`` extends it).

    Attributes:
        fewshot: put the environment's worked examples before the question.
        format_coef: weight of the format term (finite, >= 0).
        max_tokens: limit of the answer (a positive int, or ``None`` for none).
    """

    fewshot: bool | int = True
    format_coef: float = 0.1
    max_tokens: int | None = None

    def __attrs_post_init__(self) -> None:
        where = type(self).__name__
        in_range(self.format_coef, where, "format_coef", low=0.0)
        int_at_least(self.max_tokens, where, "max_tokens", allow_none=True)


ProblemT = TypeVar("ProblemT")
OptionsT = TypeVar("OptionsT")


@attrs.frozen
class ProblemBuilder(Generic[ProblemT, OptionsT]):
    """An environment module's ``builder``: ``builder(renderer, problem, group_size, options)`` is a
    :class:`ProblemGroupBuilder` of ``group_size`` fresh ``make_env(renderer, problem, options)`` environments
    tagged ``tag``; ``options`` defaults to ``defaults``. With ``check``, one environment is made at once, so a
    bad problem fails there rather than at the first rollout."""

    make_env: Callable[[Renderer, ProblemT, OptionsT], Env]
    tag: str
    defaults: OptionsT
    check: bool = False

    def __call__(
        self, renderer: Renderer, problem: ProblemT, group_size: int, options: OptionsT | None = None
    ) -> ProblemGroupBuilder:
        chosen = self.defaults if options is None else options
        if self.check:
            self.make_env(renderer, problem, chosen)
        make = functools.partial(self.make_env, renderer, problem, chosen)
        return ProblemGroupBuilder(make, group_size, (self.tag,))
