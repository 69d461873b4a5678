"""The rendering functions users call: supervised examples (one, a batch, or one per turn), generation prompts
and response parsing.

* :func:`build_supervised_example`: tokens plus per-token weights for one conversation, for every
  :class:`~tinkerflow.render.records.TrainOnWhat` mode;
* :func:`build_supervised_batch`: the same for many conversations, tokenized a batch at a time;
* :func:`build_supervised_examples`: one example per assistant message for renderers without the extension
  property;
* :func:`build_generation_prompt`: the prompt to sample the next message from, with an optional prefill;
* :func:`parse_response`: sampled tokens back into a message plus an explicit
  :class:`~tinkerflow.render.records.Termination`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tinkerflow.chat import Conversation, Role
from tinkerflow.model_input import ModelInput, TokenChunk
from tinkerflow.render.assemble import assemble, encode_units, prefill_tokens
from tinkerflow.render.packing import BatchPacker, packed_batches
from tinkerflow.render.plan import (
    ConversationLike,
    Unit,
    message_contexts,
    resolve_train_on,
    split_conversation,
    suffix_context,
    turn_start_of,
)
from tinkerflow.render.records import ParsedResponse, RenderError, SupervisedExample, TrainOn, TrainOnWhat
from tinkerflow.render.renderer import Renderer

__all__ = [
    "build_generation_prompt",
    "build_supervised_batch",
    "build_supervised_example",
    "build_supervised_examples",
    "parse_response",
]


def build_supervised_example(
    renderer: Renderer,
    conversation: ConversationLike,
    train_on: TrainOn = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
) -> SupervisedExample:
    """Render a conversation to a model input and one weight per position (unshifted).

    Args:
        renderer: the renderer (from :func:`tinkerflow.render.get_renderer`).
        conversation: a :class:`~tinkerflow.chat.Conversation` (messages plus tools) or a sequence of messages.
        train_on: which tokens carry weight 1 (:class:`TrainOnWhat`); every other token has weight 0.

    Raises:
        RenderError: the conversation has something this renderer cannot write (named by message index and
            field), ``trainable`` flags disagree with ``train_on``, or a thinking-disabled renderer is asked to
            train a turn that reasoned.
    """
    return build_supervised_batch(renderer, (conversation,), train_on)[0]


def build_supervised_batch(
    renderer: Renderer,
    conversations: Sequence[ConversationLike],
    train_on: TrainOn = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
    *,
    batch_size: int = 64,
    packer: BatchPacker = packed_batches,
) -> tuple[SupervisedExample, ...]:
    """:func:`build_supervised_example` for many conversations, the text of ``batch_size`` conversations
    tokenized in one call (the fast way to render a dataset). Same results, in order.

    ``packer`` renders and packs the batches: :func:`tinkerflow.render.packing.packed_batches` (everything on this
    thread) by default; the shell's :func:`tinkerflow.shell.io.prefetch.packed_batches` gives the same examples
    with the tokenizer on helper threads."""
    results: list[SupervisedExample] = []
    for batch in packer(renderer, conversations, train_on, batch_size=batch_size):
        bounds = batch.offsets.tolist()
        for index in range(len(bounds) - 1):
            example = batch.images.get(index)
            if example is None:
                start, stop = bounds[index], bounds[index + 1]
                model_input = ModelInput(chunks=(TokenChunk(tokens_T=batch.tokens_N[start:stop]),))
                example = SupervisedExample(model_input=model_input, weights_T=batch.weights_N[start:stop])
            results.append(example)
    return tuple(results)


def build_supervised_examples(
    renderer: Renderer,
    conversation: ConversationLike,
    train_on: TrainOn = TrainOnWhat.LAST_ASSISTANT_TURN,
) -> tuple[SupervisedExample, ...]:
    """Supervised examples for a conversation: one when the renderer has the extension property, otherwise one
    per trained assistant message (each ending at that message, ``last_assistant_message`` weights), so every
    turn is trained on exactly the context it was sampled from. ``last_assistant_turn`` trains the assistant
    messages from :meth:`Renderer.turn_start` on (of all messages but a final assistant message).

    Without the extension property only the assistant-only modes (``last_assistant_message``,
    ``last_assistant_turn``, ``all_assistant_messages``) can be split; others raise :class:`RenderError`.
    """
    where = f"render[{renderer.name}]"
    mode = resolve_train_on(train_on, where)
    if renderer.has_extension_property:
        return (build_supervised_example(renderer, conversation, mode),)
    messages, tools = split_conversation(conversation, where)
    if mode is TrainOnWhat.LAST_ASSISTANT_MESSAGE:
        candidates = range(len(messages) - 1, len(messages))
    elif mode is TrainOnWhat.LAST_ASSISTANT_TURN:
        # the renderer's last turn (Renderer.turn_start): the one a final assistant message ends, else the open one
        history = messages[:-1] if messages and messages[-1].role == "assistant" else messages
        candidates = range(turn_start_of(renderer, history), len(messages))
    elif mode is TrainOnWhat.ALL_ASSISTANT_MESSAGES:
        candidates = range(len(messages))
    else:
        raise RenderError(
            where,
            "train_on",
            f"{mode.value!r} cannot be split into one example per turn for a renderer without the extension "
            "property (it weights messages the model does not produce).",
            "use an assistant-only mode, or build_supervised_example for a single (inexact) sequence.",
        )
    return tuple(
        build_supervised_example(
            renderer, Conversation(messages=messages[: index + 1], tools=tools), TrainOnWhat.LAST_ASSISTANT_MESSAGE
        )
        for index in candidates
        if messages[index].role == "assistant"
    )


def build_generation_prompt(
    renderer: Renderer,
    conversation: ConversationLike,
    *,
    prefill: str | None = None,
    role: Role = "assistant",
) -> ModelInput:
    """The prompt to sample the next ``role`` message from: BOS, every message, the next header, the prefill.

    ``conversation`` may be an empty sequence. ``prefill`` is text the sampled message starts with, written as
    the model would write it (control-token spellings in it become control tokens).
    """
    where = f"render[{renderer.name}]"
    if isinstance(conversation, Conversation):
        original, tools = conversation.messages, conversation.tools
    else:
        original, tools = split_conversation(conversation, where) if len(conversation) else ((), ())
    renderer.validate(original, tools)
    messages = renderer.prepare(original, tools)
    contexts = message_contexts(messages, turn_start_of(renderer, messages), tools)
    units: list[Unit] = []
    bos = renderer.bos_tokens()
    if bos:
        units.append(bos)
    for message, ctx in zip(messages, contexts, strict=True):
        rendered = renderer.render_message(message, ctx)
        units.append(rendered.header)
        units.append(rendered.output)
    units.append(renderer.generation_suffix(role, suffix_context(messages, tools)))
    encoded = encode_units(renderer, units)
    model_input, _, _ = assemble(renderer, encoded, [0.0] * len(units))
    tail = prefill_tokens(renderer, messages, prefill)
    return model_input.append_tokens(tail) if tail else model_input


def parse_response(renderer: Renderer, tokens_T: Sequence[int] | np.ndarray) -> ParsedResponse:
    """Parse sampled tokens (what followed the generation prompt) into a message and a :class:`Termination`.

    Raises:
        RenderError: the tokens hold more than one stop token (sampling used the wrong stop sequences).
    """
    tokens = tokens_T.tolist() if isinstance(tokens_T, np.ndarray) else [int(token) for token in tokens_T]
    return renderer.parse_response(tokens)
