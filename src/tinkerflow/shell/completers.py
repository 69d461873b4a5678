"""Completers: the policy as an async function, over a sampling client.

* :class:`TokenCompleter` (protocol): ``await completer(observation, stop) -> SampledSequence``, one action with
  its sampling logprobs. This is what rollouts call.
* :class:`SamplerTokenCompleter`: one ``sample(num_samples=1)`` request per call.
* :class:`BatchingTokenCompleter`: merges concurrent calls with the same observation and stop condition (the
  members of a group all start from the same prompt) into one ``sample(num_samples=k)`` request. Same
  distribution, far fewer requests; on the local backend the prompt is prefilled once and the k continuations
  are decoded as one batch.
* :class:`MessageCompleter`: conversation in, :class:`Completion` out: the parsed assistant message *with its
  tool calls* (and unparsed tool calls) and the parse :class:`~tinkerflow.render.Termination` (the cookbook's
  ``MessageCompleter`` dropped both: its issue 403).

This module awaits a sampler (an effect), so it lives in the shell (it was ``tinkerflow.rl.completers``); the core
never imports it. The rollouts (:mod:`tinkerflow.shell.rollouts`) and the RL recipes call it. It imports no torch;
the sampler protocol (:class:`tinkerflow.shell.backends.protocol.SamplingClient`) is imported for type checking
only. Parsing a sampled action into a message is the core's :func:`tinkerflow.rl.envs.parse_tokens`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

from tinkerflow._validate import in_range, int_at_least, positive_int, require_type
from tinkerflow.chat import Conversation, Message
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.render import Renderer, Termination, build_generation_prompt
from tinkerflow.rl.envs import parse_tokens, stop_condition_for
from tinkerflow.rl.types import StopCondition
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams

if TYPE_CHECKING:
    from tinkerflow.shell.backends.protocol import SamplingClient

__all__ = [
    "BatchingTokenCompleter",
    "Completion",
    "MessageCompleter",
    "SamplerTokenCompleter",
    "TokenCompleter",
]

_SEED_MODULUS = 1 << 63


@runtime_checkable
class TokenCompleter(Protocol):
    """The policy at the token level: one sampled action (tokens, logprobs, stop reason) for an observation."""

    async def __call__(self, observation: ModelInput, stop: StopCondition) -> SampledSequence:
        """Sample one continuation of ``observation`` that ends on ``stop`` (or at its ``max_tokens``)."""
        ...


def _check_options(where: str, temperature: float, max_tokens: int | None, seed: int | None) -> None:
    in_range(temperature, where, "temperature", low=0.0)
    int_at_least(max_tokens, where, "max_tokens", allow_none=True)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(where, "seed", f"must be an int or None, got {seed!r}.")


def _limit(own: int | None, stop: int | None) -> int | None:
    if own is None:
        return stop
    if stop is None:
        return own
    return min(own, stop)


def _params(
    temperature: float,
    max_tokens: int | None,
    stop: StopCondition,
    seed: int | None,
    context_window: int | None,
    length: int,
) -> SamplingParams:
    limit = _limit(max_tokens, stop.max_tokens)
    if context_window is not None:
        room = context_window - length
        if room <= 0:
            raise ValidationError(
                "TokenCompleter",
                "observation",
                f"has {length} tokens, which fills the context window of {context_window}.",
                "end the episode before the conversation outgrows the model (MessageEnv max_observation_tokens).",
            )
        limit = room if limit is None else min(limit, room)
    return SamplingParams(
        max_tokens=limit,
        temperature=temperature,
        stop_tokens=stop.stop_tokens,
        stop_strings=stop.stop_strings,
        seed=seed,
    )


def _sequences(response: object, count: int, where: str) -> tuple[SampledSequence, ...]:
    if not isinstance(response, SampleResponse):
        raise ValidationError(where, "response", f"expected a SampleResponse, got {type(response).__name__}.")
    if len(response.sequences) != count:
        raise ValidationError(
            where, "response.sequences", f"holds {len(response.sequences)} sequences, asked for {count}."
        )
    for index, sequence in enumerate(response.sequences):
        if sequence.logprobs_T is None:
            raise ValidationError(
                where, f"response.sequences[{index}].logprobs_T", "is missing.", "use a sampler that reports logprobs."
            )
    return response.sequences


class SamplerTokenCompleter:
    """A :class:`TokenCompleter` that sends one ``sample(num_samples=1)`` request per call.

    Args:
        sampler: a sampling client (:class:`tinkerflow.shell.backends.protocol.SamplingClient`).
        temperature: softmax temperature (RL samples at 1.0, the policy itself).
        max_tokens: most tokens per action; the stop condition's ``max_tokens`` lowers it further. ``None``: the
            stop condition's, else the backend's limit.
        seed: ``None`` for fresh randomness; else call ``k`` (counting from 0 on this completer) uses seed
            ``seed + k``, so a run that makes the same calls in the same order samples the same actions.
        context_window: when set, ``max_tokens`` is capped so prompt plus action fit in it.
    """

    __slots__ = ("_calls", "context_window", "max_tokens", "sampler", "seed", "temperature")

    def __init__(
        self,
        sampler: SamplingClient,
        temperature: float = 1.0,
        max_tokens: int | None = None,
        seed: int | None = None,
        *,
        context_window: int | None = None,
    ) -> None:
        _check_options("SamplerTokenCompleter", temperature, max_tokens, seed)
        self.sampler = sampler
        self.temperature = float(temperature)
        self.max_tokens = max_tokens
        self.seed = seed
        self.context_window = context_window
        self._calls = 0

    def _next_seed(self, count: int = 1) -> int | None:
        call = self._calls
        self._calls += count
        return None if self.seed is None else (self.seed + call) % _SEED_MODULUS

    async def __call__(self, observation: ModelInput, stop: StopCondition) -> SampledSequence:
        require_type(observation, ModelInput, "SamplerTokenCompleter", "observation")
        require_type(stop, StopCondition, "SamplerTokenCompleter", "stop")
        params = _params(
            self.temperature, self.max_tokens, stop, self._next_seed(), self.context_window, observation.length
        )
        response = await self.sampler.sample(observation, 1, params)
        return _sequences(response, 1, "SamplerTokenCompleter")[0]


@attrs.define(eq=False)
class _Pending:
    """Calls waiting to be sent as one request."""

    observation: ModelInput
    stop: StopCondition
    waiters: list[asyncio.Future[SampledSequence]] = attrs.field(factory=list)
    handle: asyncio.TimerHandle | asyncio.Handle | None = None


class BatchingTokenCompleter(SamplerTokenCompleter):
    """A :class:`TokenCompleter` that merges concurrent calls for the same observation and stop condition.

    Calls that arrive within ``window_s`` seconds of the first one (``0``: before the event loop runs its next
    round of callbacks, which catches the members of a group started together) and share the observation and
    stop condition are sent as one ``sample(num_samples=k)`` request, at most ``max_batch`` per request; each
    caller gets one of the k sequences. The samples are independent draws from the same distribution, as with
    separate requests. With ``seed`` set, request ``r`` uses ``seed + r``.

    A caller cancelled while its request is pending (an episode timeout) is left out of the request; one
    cancelled after the request was sent just drops its sequence. A failed request fails every caller in it.
    """

    __slots__ = ("_pending", "_tasks", "max_batch", "window_s")

    def __init__(
        self,
        sampler: SamplingClient,
        temperature: float = 1.0,
        max_tokens: int | None = None,
        seed: int | None = None,
        *,
        context_window: int | None = None,
        window_s: float = 0.0,
        max_batch: int = 64,
    ) -> None:
        super().__init__(sampler, temperature, max_tokens, seed, context_window=context_window)
        in_range(window_s, "BatchingTokenCompleter", "window_s", low=0.0)
        self.window_s = float(window_s)
        self.max_batch = positive_int(max_batch, "BatchingTokenCompleter", "max_batch")
        self._pending: dict[tuple[ModelInput, StopCondition], _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, observation: ModelInput, stop: StopCondition) -> SampledSequence:
        require_type(observation, ModelInput, "BatchingTokenCompleter", "observation")
        require_type(stop, StopCondition, "BatchingTokenCompleter", "stop")
        loop = asyncio.get_running_loop()
        key = (observation, stop)
        pending = self._pending.get(key)
        if pending is None:
            pending = _Pending(observation, stop)
            self._pending[key] = pending
            if self.window_s > 0:
                pending.handle = loop.call_later(self.window_s, self._flush, key, pending)
            else:
                pending.handle = loop.call_soon(self._flush, key, pending)
        waiter: asyncio.Future[SampledSequence] = loop.create_future()
        pending.waiters.append(waiter)
        if len(pending.waiters) >= self.max_batch:
            if pending.handle is not None:
                pending.handle.cancel()
            self._flush(key, pending)
        return await waiter

    def _flush(self, key: tuple[ModelInput, StopCondition], pending: _Pending) -> None:
        if self._pending.get(key) is pending:
            del self._pending[key]
        waiters = [waiter for waiter in pending.waiters if not waiter.done()]
        if not waiters:
            return
        task = asyncio.get_running_loop().create_task(self._send(pending.observation, pending.stop, waiters))
        self._tasks.add(task)  # keep a reference until it finishes (the loop holds only a weak one)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, observation: ModelInput, stop: StopCondition, waiters: list[asyncio.Future[SampledSequence]]
    ) -> None:
        try:
            params = _params(
                self.temperature, self.max_tokens, stop, self._next_seed(), self.context_window, observation.length
            )
            response = await self.sampler.sample(observation, len(waiters), params)
            sequences = _sequences(response, len(waiters), "BatchingTokenCompleter")
        except Exception as error:  # every caller of the request sees its failure
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            return
        for waiter, sequence in zip(waiters, sequences, strict=True):
            if not waiter.done():
                waiter.set_result(sequence)


@attrs.frozen
class Completion:
    """A sampled assistant message: the parsed message (tool calls and unparsed tool calls kept), how the
    response ended, and the sampled tokens with their logprobs."""

    message: Message
    termination: Termination
    tokens: SampledSequence

    def __attrs_post_init__(self) -> None:
        require_type(self.message, Message, "Completion", "message")
        require_type(self.termination, Termination, "Completion", "termination")
        require_type(self.tokens, SampledSequence, "Completion", "tokens")

    @property
    def is_clean(self) -> bool:
        """The response ended on the renderer's stop sequence (or EOS), not cut off."""
        return self.termination.is_clean


class MessageCompleter:
    """The policy at the message level: a conversation in, a :class:`Completion` out.

    Renders the conversation (tools included, when given a :class:`~tinkerflow.chat.Conversation`) with
    :func:`~tinkerflow.render.build_generation_prompt`, samples one response through ``completer`` with the
    renderer's stop sequences, and parses it with :func:`~tinkerflow.render.parse_response`. The returned
    message is the renderer's parse: content, thinking, ``tool_calls`` and ``unparsed_tool_calls`` are all kept,
    and the termination tells a clean stop from a cut-off response. Tokens the renderer cannot parse (two stop
    tokens) give the decoded text with ``Termination.MALFORMED``.
    """

    __slots__ = ("completer", "max_tokens", "renderer")

    def __init__(self, completer: TokenCompleter, renderer: Renderer, *, max_tokens: int | None = None) -> None:
        require_type(renderer, Renderer, "MessageCompleter", "renderer")
        _check_options("MessageCompleter", 1.0, max_tokens, None)
        self.completer = completer
        self.renderer = renderer
        self.max_tokens = max_tokens

    @classmethod
    def from_sampler(
        cls,
        sampler: SamplingClient,
        renderer: Renderer,
        *,
        temperature: float = 1.0,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> MessageCompleter:
        """A message completer over a :class:`SamplerTokenCompleter` of ``sampler``."""
        return cls(SamplerTokenCompleter(sampler, temperature, max_tokens, seed), renderer, max_tokens=max_tokens)

    async def __call__(self, conversation: Conversation | Sequence[Message]) -> Completion:
        prompt = build_generation_prompt(self.renderer, conversation)
        sequence = await self.completer(prompt, stop_condition_for(self.renderer, self.max_tokens))
        message, termination = parse_tokens(self.renderer, sequence.tokens_T)
        return Completion(message=message, termination=termination, tokens=sequence)
