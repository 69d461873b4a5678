"""Inspect AI: tinkerflow samplers as an Inspect model provider, Inspect tasks as evaluations. (Shell.)

The provider ``tinkerflow`` (registered with Inspect's ``modelapi``; the package's ``inspect_ai`` entry point
imports it) runs any Inspect task against a tinkerflow sampler::

    inspect eval tinkerflow/arithmetic --model tinkerflow/tiny-llama -M renderer=role_colon
    inspect eval task.py --model tinkerflow/runs/sl-1                  # a run directory: its latest weights
    inspect eval task.py --model tinkerflow/tinker://<run>/sampler_weights/final --model-base-url http://...

What follows ``tinkerflow/`` names the sampler (:func:`open_sampler`): a base model the local backend loads
(``tiny-llama``, ``HuggingFaceTB/SmolLM2-135M-Instruct``, a folder with a transformers model), a ``local://``
checkpoint path (under ``-M checkpoint_dir``, default the local backend's), a checkpoint folder (with
``checkpoint.json``, wherever it lies), a run directory (its ``state.json``: the latest sampler weights, else the
latest state; a ``tinker://`` one is sampled on its server), a ``tinker://`` path (the Tinker API at
``--model-base-url`` or ``$TINKER_BASE_URL``, key ``$TINKER_API_KEY``), or ``live:<n>``, a sampler of this process
(:func:`register_sampler`).
Model args: ``renderer`` (default: the base model's family, as ``tinkerflow`` commands pick it), ``checkpoint_dir``,
``device``.

Each ``generate`` renders Inspect's messages with the renderer (system, user, assistant (text, reasoning, tool
calls), tool results; images and other media are refused) and the tools offered as tool specs, samples
``num_choices`` answers and parses them as the renderer parses an assistant turn. Generation settings:
``max_tokens`` (default 64), ``temperature`` (default 0: greedy, as tinkerflow's evaluator), ``top_p``, ``top_k``,
``seed`` (default 0) and ``stop_seqs`` (added to the renderer's stop strings; with a renderer that stops on tokens,
the answer is cut at the first one instead); the others are ignored. ``tool_choice="none"`` hides the tools, a
named function offers only that one (nothing forces a call).

:func:`tinkerflow.shell.evals.inspect_run.run_inspect_task` runs an Inspect task (``EvalSpec.task``: a registered
name such as ``tinkerflow/arithmetic`` or ``file.py@task``) against a live sampler registered here.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import attrs

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart, ToolCall, ToolSpec
from tinkerflow.errors import ConfigError
from tinkerflow.render import Renderer, Termination, build_generation_prompt
from tinkerflow.rl.envs.base import parse_tokens
from tinkerflow.sampling import SampledSequence, SamplingParams
from tinkerflow.shell.backends.protocol import SamplingClient
from tinkerflow.shell.evals.targets import open_target

try:
    from inspect_ai.model import (
        ChatCompletionChoice,
        ChatMessage,
        ChatMessageAssistant,
        ChatMessageSystem,
        ChatMessageTool,
        ChatMessageUser,
        Content,
        ContentReasoning,
        ContentText,
        GenerateConfig,
        Logprob,
        Logprobs,
        ModelAPI,
        ModelOutput,
        ModelUsage,
        StopReason,
        modelapi,
    )
    from inspect_ai.tool import ToolCall as InspectToolCall
    from inspect_ai.tool import ToolChoice, ToolFunction, ToolInfo
except ModuleNotFoundError as _missing:  # pragma: no cover - inspect-ai is installed wherever this runs in tests
    raise ConfigError(
        "EvalSpec", "kind", "'inspect' evaluations need the inspect-ai package.", "pip install inspect-ai."
    ) from _missing


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "PROVIDER",
    "Opened",
    "SamplerDefaults",
    "TinkerflowModelAPI",
    "inspect_messages_to_tinkerflow",
    "open_sampler",
    "register_sampler",
    "registered_sampler",
    "sampling_params",
    "unregister_sampler",
]

#: The provider's name: models are ``tinkerflow/<sampler>``.
PROVIDER: Final = "tinkerflow"
#: The answer length when neither the task nor the command line sets ``max_tokens``.
DEFAULT_MAX_TOKENS: Final = 64
_LIVE: Final = "live:"
_WHERE: Final = "inspect"


@attrs.frozen
class SamplerDefaults:
    """The generation settings a sampler uses where Inspect's ``GenerateConfig`` leaves them unset."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    seed: int = 0


@attrs.frozen
class Opened:
    """A sampler ready for Inspect: the client, its renderer, its defaults and what to call when done."""

    sampler: SamplingClient
    renderer: Renderer
    defaults: SamplerDefaults = SamplerDefaults()
    close: Callable[[], None] = attrs.field(default=lambda: None, eq=False)


# -- samplers of this process ----------------------------------------------------------------------------------------

_live: dict[str, Opened] = {}
_live_lock = threading.Lock()
_live_ids = itertools.count()


def register_sampler(
    sampler: SamplingClient,
    renderer: Renderer,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """Make ``sampler`` an Inspect model of this process: returns its name, ``tinkerflow/live:<n>`` (pass it as
    ``model=`` to ``inspect_ai.eval``). The settings are its defaults where a task sets none. Release it with
    :func:`unregister_sampler` (or use :func:`registered_sampler`)."""
    defaults = SamplerDefaults(max_tokens, temperature, seed)
    with _live_lock:
        key = f"{_LIVE}{next(_live_ids)}"
        _live[key] = Opened(sampler, renderer, defaults)
    return f"{PROVIDER}/{key}"


def unregister_sampler(model: str) -> None:
    """Forget a sampler :func:`register_sampler` named ``model`` (a no-op when it is already gone)."""
    with _live_lock:
        _live.pop(model.removeprefix(f"{PROVIDER}/"), None)


@contextlib.contextmanager
def registered_sampler(
    sampler: SamplingClient,
    renderer: Renderer,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float = 0.0,
    seed: int = 0,
) -> Iterator[str]:
    """:func:`register_sampler` for the block; yields the model name."""
    name = register_sampler(sampler, renderer, max_tokens=max_tokens, temperature=temperature, seed=seed)
    try:
        yield name
    finally:
        unregister_sampler(name)


# -- samplers named on the command line ------------------------------------------------------------------------------


def open_sampler(
    name: str,
    *,
    renderer: str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
) -> Opened:
    """The sampler ``name`` designates (a ``live:<n>`` sampler of this process, else
    :func:`tinkerflow.shell.evals.targets.open_target`) and its renderer (``renderer``, else the base model's
    family). ``close()`` the result when done (a live sampler's close does nothing)."""
    if name.startswith(_LIVE):
        with _live_lock:
            live = _live.get(name)
        if live is None:
            raise ConfigError(
                _WHERE, "model", f"{PROVIDER}/{name} is not registered in this process (any more).",
                "register the sampler with register_sampler() and use the name it returns.",
            )  # fmt: skip
        return live
    target = open_target(
        name, renderer=renderer, checkpoint_dir=checkpoint_dir, device=device, base_url=base_url, api_key=api_key
    )
    return Opened(target.sampler, target.renderer, close=target.close)


# -- Inspect messages and settings -> tinkerflow ---------------------------------------------------------------------


def _refuse(index: int, what: str) -> ConfigError:
    return ConfigError(
        _WHERE, f"messages[{index}]", f"holds {what}, which the {PROVIDER} provider cannot send.",
        "use text (and tools) only.",
    )  # fmt: skip


def _parts(message: ChatMessage, index: int) -> str | tuple[TextPart | ThinkingPart, ...]:
    if isinstance(message.content, str):
        return message.content
    parts: list[TextPart | ThinkingPart] = []
    for part in message.content:
        if isinstance(part, ContentText):
            parts.append(TextPart(part.text))
        elif isinstance(part, ContentReasoning) and isinstance(message, ChatMessageAssistant):
            if not part.redacted:
                parts.append(ThinkingPart(part.reasoning))
        else:
            raise _refuse(index, f"{part.type} content")
    if all(isinstance(part, TextPart) for part in parts):
        return "".join(part.text for part in parts if isinstance(part, TextPart))
    return tuple(parts)


def _tool_call(call: InspectToolCall) -> ToolCall:
    return ToolCall(name=call.function, arguments=json.dumps(call.arguments, ensure_ascii=False), id=call.id)


def inspect_messages_to_tinkerflow(messages: Sequence[ChatMessage]) -> tuple[Message, ...]:
    """Inspect chat messages as tinkerflow messages (text, reasoning and tool calls; other media raise
    :class:`~tinkerflow.errors.ConfigError`)."""
    converted = []
    for index, message in enumerate(messages):
        content = _parts(message, index)
        if isinstance(message, ChatMessageSystem):
            converted.append(Message(role="system", content=content))
        elif isinstance(message, ChatMessageUser):
            converted.append(Message(role="user", content=content))
        elif isinstance(message, ChatMessageAssistant):
            calls = tuple(_tool_call(call) for call in message.tool_calls or ())
            converted.append(Message(role="assistant", content=content, tool_calls=calls))
        elif isinstance(message, ChatMessageTool):
            text = message.text if message.error is None else f"Error: {message.error.message}"
            converted.append(
                Message(role="tool", content=text, tool_call_id=message.tool_call_id, name=message.function)
            )
        else:  # pragma: no cover - Inspect has no other message type
            raise _refuse(index, f"a {type(message).__name__}")
    return tuple(converted)


def _tool_specs(tools: Sequence[ToolInfo], tool_choice: ToolChoice) -> tuple[ToolSpec, ...]:
    if tool_choice == "none":
        return ()
    if isinstance(tool_choice, ToolFunction):
        tools = [tool for tool in tools if tool.name == tool_choice.name]
    return tuple(
        ToolSpec.create(tool.name, tool.description, tool.parameters.model_dump(exclude_none=True)) for tool in tools
    )


def sampling_params(config: GenerateConfig, renderer: Renderer, defaults: SamplerDefaults) -> SamplingParams:
    """The sampling parameters of one Inspect ``generate`` (see the module docstring). With no settings they are
    those of tinkerflow's evaluator for ``max_tokens``, ``temperature`` and ``seed`` set alike."""
    stops = renderer.stop_sequences()
    strings = tuple(stops.strings)
    if not stops.tokens:
        strings += tuple(text for text in config.stop_seqs or () if text and text not in strings)
    return SamplingParams(
        max_tokens=config.max_tokens if config.max_tokens is not None else defaults.max_tokens,
        temperature=config.temperature if config.temperature is not None else defaults.temperature,
        top_p=config.top_p if config.top_p is not None else 1.0,
        top_k=config.top_k if config.top_k is not None and config.top_k > 0 else -1,
        stop_strings=strings,
        stop_tokens=stops.tokens,
        seed=config.seed if config.seed is not None else defaults.seed,
    )


# -- tinkerflow answers -> Inspect -----------------------------------------------------------------------------------


def _cut(text: str, stop_seqs: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first of ``stop_seqs`` (excluded), and whether one was found."""
    ends = [found for found in (text.find(stop) for stop in stop_seqs if stop) if found >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def _choice(
    sequence: SampledSequence, renderer: Renderer, stop_seqs: Sequence[str], model: str, logprobs: bool
) -> ChatCompletionChoice:
    message, termination = parse_tokens(renderer, sequence.tokens_T)
    text, cut = _cut(message.text(), stop_seqs)
    content: list[Content] = []
    thinking = message.thinking()
    if thinking:
        content.append(ContentReasoning(reasoning=thinking))
    content.append(ContentText(text=text))
    calls = [
        InspectToolCall(id=call.id or f"call_{index}", function=call.name, arguments=call.arguments_dict())
        for index, call in enumerate(message.tool_calls)
    ] + [
        InspectToolCall(id=f"unparsed_{index}", function="", arguments={}, parse_error=f"{bad.error}: {bad.raw_text}")
        for index, bad in enumerate(message.unparsed_tool_calls)
    ]
    stop_reason: StopReason
    if cut:
        stop_reason = "stop"
    elif calls:
        stop_reason = "tool_calls"
    elif sequence.stop_reason == "length" and termination is Termination.MALFORMED:
        stop_reason = "max_tokens"
    else:
        stop_reason = "stop"
    lp = None
    if logprobs and sequence.logprobs_T is not None:
        decode = renderer.tokenizer.decode
        lp = Logprobs(
            content=[
                Logprob(token=decode([int(token)]), logprob=float(value))
                for token, value in zip(sequence.tokens_T, sequence.logprobs_T, strict=True)
            ]
        )
    assistant = ChatMessageAssistant(
        content=content if thinking else text, tool_calls=calls or None, model=model, source="generate"
    )
    return ChatCompletionChoice(message=assistant, stop_reason=stop_reason, logprobs=lp)


class TinkerflowModelAPI(ModelAPI):
    """The ``tinkerflow`` provider (see the module docstring). Inspect constructs it from ``--model
    tinkerflow/<sampler>`` and ``-M`` model args."""

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),  # noqa: B008 - Inspect's signature
        renderer: str | None = None,
        checkpoint_dir: str | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, api_key_vars=[], config=config)
        for field, value in (("renderer", renderer), ("checkpoint_dir", checkpoint_dir), ("device", device)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(_WHERE, field, f"must be a string, got {value!r}.")
        self._opened = open_sampler(
            model_name, renderer=renderer, checkpoint_dir=checkpoint_dir, device=device, base_url=base_url,
            api_key=api_key,
        )  # fmt: skip

    @property
    def opened(self) -> Opened:
        """The sampler this model runs, its renderer and defaults."""
        return self._opened

    def max_tokens(self) -> int | None:
        return self._opened.defaults.max_tokens

    def close(self) -> None:
        self._opened.close()

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        started = time.monotonic()
        opened = self._opened
        messages = inspect_messages_to_tinkerflow(input)
        specs = _tool_specs(tools, tool_choice)
        conversation = Conversation(messages, specs) if specs else messages
        prompt = build_generation_prompt(opened.renderer, conversation)
        params = sampling_params(config, opened.renderer, opened.defaults)
        count = config.num_choices if config.num_choices is not None and config.num_choices > 0 else 1
        response = await opened.sampler.sample(prompt, count, params)
        stop_seqs = tuple(config.stop_seqs or ())
        choices = [
            _choice(sequence, opened.renderer, stop_seqs, self.model_name, bool(config.logprobs))
            for sequence in response.sequences
        ]
        output_tokens = sum(int(sequence.tokens_T.shape[0]) for sequence in response.sequences)
        return ModelOutput(
            model=self.model_name,
            choices=choices,
            usage=ModelUsage(
                input_tokens=prompt.length, output_tokens=output_tokens, total_tokens=prompt.length + output_tokens
            ),
            time=time.monotonic() - started,
        )


# Inspect's registration of the provider: ``tinkerflow/<sampler>`` models are made by it (the class keeps its name).
modelapi(name=PROVIDER)(TinkerflowModelAPI)
