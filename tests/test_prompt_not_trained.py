"""The generation prompt of the trained turn is never trained: an independent check of the packer's prompt zeroing.

Under ``last_assistant_message`` / ``last_assistant_turn``, tinker-cookbook 0.6.1 gives weight 0 to the prefix of
the example equal to ``build_generation_prompt(messages[:boundary])`` (so a prefilled ``<think>`` is never
trained). The packer finds that prefix its own way (it reuses the conversation's pieces and zeroes whole units for
a chunk at once); here the prompt is built by :func:`tinkerflow.render.build_generation_prompt`, which renders
every message again, and the weights over it must be 0, conversation by conversation, in batches of any size.
"""

from __future__ import annotations

import functools

import attrs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.helpers import cached_tokenizer, writable

from tinkerflow import Conversation
from tinkerflow import testing as tft
from tinkerflow.errors import TinkerflowError
from tinkerflow.model_input import TokenChunk
from tinkerflow.render import Renderer, TrainOnWhat, build_generation_prompt, build_supervised_batch, get_renderer

# renderer name -> offline tokenizer; the thinking-disabled, DeepSeek thinking and Qwen3.5 formats end their
# generation prompt inside the trained turn's output (an empty thinking block, "<think>" or "<think>\n"), so their
# zeroing does real work
_FAMILIES = {
    "qwen3": "qwen3",
    "qwen3_disable_thinking": "qwen3",
    "qwen3_instruct": "qwen3",
    "qwen3_5": "qwen3",
    "qwen3_5_disable_thinking": "qwen3",
    "deepseekv3": "deepseek_v3",
    "deepseekv3_thinking": "deepseek_v3",
}


@functools.cache
def _get(name: str) -> Renderer:
    return get_renderer(name, cached_tokenizer(_FAMILIES[name]))


def _tokens(chunks: tuple[object, ...]) -> list[int] | None:
    """The ids of a model input's chunks, or None when one is not a token chunk."""
    ids: list[int] = []
    for chunk in chunks:
        if not isinstance(chunk, TokenChunk):
            return None
        ids += chunk.tokens_T.tolist()
    return ids


def _boundary(conversation: Conversation, mode: TrainOnWhat) -> int | None:
    """The message the trained turn's generation prompt stops before (the cookbook's rule)."""
    messages = conversation.messages
    if mode is TrainOnWhat.LAST_ASSISTANT_MESSAGE:
        boundary = len(messages) - 1
    else:
        users = [index for index, message in enumerate(messages) if message.role == "user"]
        boundary = (users[-1] if users else -1) + 1
    if 0 <= boundary < len(messages) and messages[boundary].role == "assistant":
        return boundary
    return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.sampled_from(sorted(_FAMILIES)),
    st.sampled_from([TrainOnWhat.LAST_ASSISTANT_MESSAGE, TrainOnWhat.LAST_ASSISTANT_TURN]),
    st.lists(tft.conversations(max_messages=6, tools=True, parts=True), min_size=1, max_size=5),
    st.integers(1, 4),
)
def test_the_generation_prompt_is_never_trained(
    name: str, mode: TrainOnWhat, drawn: list[Conversation], batch_size: int
) -> None:
    renderer = _get(name)
    conversations = [writable(conversation) for conversation in drawn]
    try:
        examples = build_supervised_batch(renderer, conversations, mode, batch_size=batch_size)
    except TinkerflowError:
        event("a conversation this renderer cannot write")
        return
    for conversation, example in zip(conversations, examples, strict=True):
        boundary = _boundary(conversation, mode)
        if boundary is None or renderer.prepare(conversation.messages, conversation.tools) != conversation.messages:
            continue
        try:
            prefix = attrs.evolve(conversation, messages=conversation.messages[:boundary])
            prompt = _tokens(build_generation_prompt(renderer, prefix).chunks)
        except TinkerflowError:
            continue
        tokens = _tokens(example.model_input.chunks)
        if prompt is None or tokens is None or tokens[: len(prompt)] != prompt:
            event("the example does not start with the prompt")
            continue
        weights = example.weights_T.tolist()
        assert not any(weights[: len(prompt)]), (name, mode, boundary)
        event(f"{name}: the prompt checked")
