"""Packed supervised batches: many conversations' examples as one token array, one weight array and offsets.

Packing runs in three steps per chunk of ``batch_size`` conversations: :func:`render_chunks` (pure Python: plans
and the texts to encode), :func:`encode_chunk` (one batch call of the tokenizer) and :func:`pack_chunk` (the ids
concatenated into one array, weights per position, the generation prompt of a trained turn zeroed).
:func:`packed_batches` runs them in order; :func:`tinkerflow.shell.io.prefetch.packed_batches` runs the tokenizer a
chunk or two ahead on helper threads, with the same results.

In the ``last_assistant_message`` / ``last_assistant_turn`` modes the prefix equal to the generation prompt of
the trained turn is zeroed (so a prefilled ``<think>`` is never trained), as tinker-cookbook 0.6.1 does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import NamedTuple, Protocol

import numpy as np

from tinkerflow.arrays import frozen_array
from tinkerflow.render.assemble import assemble, encode_flat, encode_units
from tinkerflow.render.control import encode_control_text
from tinkerflow.render.plan import (
    ConversationLike,
    Plan,
    Unit,
    plan_conversation,
    resolve_train_on,
)
from tinkerflow.render.records import Piece, RenderContext, SupervisedExample, TrainOn, TrainOnWhat
from tinkerflow.render.renderer import Renderer
from tinkerflow.tokenizers import Tokenizer

__all__ = [
    "BatchPacker",
    "PackedBatch",
    "RenderedChunk",
    "encode_chunk",
    "pack_chunk",
    "packed_batches",
    "render_chunks",
]


class PackedBatch(NamedTuple):
    """Supervised examples of several conversations, packed (what :func:`packed_batches` yields).

    Conversation ``i`` of the batch is ``tokens_N[offsets[i]:offsets[i + 1]]`` with weights
    ``weights_N[offsets[i]:offsets[i + 1]]`` (unshifted, 0 or 1), unless it holds an image: then its range is
    empty and ``images[i]`` is its example.
    """

    tokens_N: np.ndarray
    weights_N: np.ndarray
    offsets: np.ndarray
    images: dict[int, SupervisedExample]


class RenderedChunk(NamedTuple):
    """A chunk of conversations rendered to pieces, before tokenization (what :func:`render_chunks` yields)."""

    plans: list[Plan]
    pieces: list[Piece]
    """The pieces of the text-only plans' units, in order."""
    texts: list[str]
    """The non-empty ``str`` pieces, in order: what the tokenizer encodes."""


def render_chunks(
    renderer: Renderer,
    conversations: Sequence[ConversationLike],
    train_on: TrainOn = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
    *,
    batch_size: int = 64,
) -> Iterator[RenderedChunk]:
    """``conversations``, ``batch_size`` at a time, validated and rendered to pieces (lazily, chunk by chunk).

    Raises (when the chunk is reached) the :class:`~tinkerflow.render.records.RenderError` of the chunk's first
    conversation that has one; a bad ``train_on`` on the first chunk.
    """
    where = f"render[{renderer.name}]"
    mode = resolve_train_on(train_on, where)
    step = max(1, batch_size)
    for start in range(0, len(conversations), step):
        plans = [plan_conversation(renderer, item, mode, where) for item in conversations[start : start + step]]
        pieces = [piece for plan in plans if not plan.images for unit in plan.units for piece in unit]
        yield RenderedChunk(plans, pieces, [piece for piece in pieces if type(piece) is str and piece])


def encode_chunk(tokenizer: Tokenizer, chunk: RenderedChunk) -> list[list[int]]:
    """The ids of every text of ``chunk``, in one batch call of the tokenizer."""
    return tokenizer.encode_batch(chunk.texts) if chunk.texts else []


def packed_batches(
    renderer: Renderer,
    conversations: Sequence[ConversationLike],
    train_on: TrainOn = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
    *,
    batch_size: int = 64,
) -> Iterator[PackedBatch]:
    """The supervised examples of ``conversations``, ``batch_size`` at a time, packed (see :class:`PackedBatch`):
    the same tokens and weights as :func:`~tinkerflow.render.build.build_supervised_example`, without a record per
    conversation (for consumers that process a batch with array operations, e.g.
    :func:`tinkerflow.supervised.conversation_datums`).

    Each batch's text is tokenized in one call, on this thread (the overlapped version, with the same results, is
    :func:`tinkerflow.shell.io.prefetch.packed_batches`). An error is raised for the first conversation (in
    order) that has one, after the batches before it.
    """
    for chunk in render_chunks(renderer, conversations, train_on, batch_size=batch_size):
        yield pack_chunk(renderer, chunk, encode_chunk(renderer.tokenizer, chunk))


class BatchPacker(Protocol):
    """A function with :func:`packed_batches`' signature and results (the sequential one, or the shell's
    overlapped one)."""

    def __call__(
        self, renderer: Renderer, conversations: Sequence[ConversationLike], train_on: TrainOn, *, batch_size: int
    ) -> Iterator[PackedBatch]: ...


def pack_chunk(renderer: Renderer, chunk: RenderedChunk, encoded: Sequence[Sequence[int]]) -> PackedBatch:
    """A rendered chunk and the encodings of its texts (``encode_chunk``, in order) -> one packed token/weight
    array (the second half of packing; pure given the encodings).

    Every piece becomes one part (a run of ids); the parts are joined and packed into one array in one call
    (:func:`_int64_array`), and per-unit lengths (for the weights) come from cumulative part lengths, so the
    Python work is one step per piece, plus the generation-prompt check per conversation (its zeroing done for the
    whole chunk at once, unit by unit).
    """
    plans, pieces = chunk.plans, chunk.pieces
    text_plans = [plan for plan in plans if not plan.images]
    next_encoding = iter(encoded).__next__
    parts: list[Sequence[int]] = [
        piece if type(piece) is tuple else (piece,) if type(piece) is int else next_encoding() if piece else ()
        for piece in pieces
    ]
    part_ends = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=part_ends[1:])
    tokens_N = _int64_array(parts)
    unit_lengths = np.fromiter(map(len, chain.from_iterable(plan.units for plan in text_plans)), dtype=np.int64)
    unit_ends = np.zeros(len(unit_lengths) + 1, dtype=np.int64)
    np.cumsum(unit_lengths, out=unit_ends[1:])
    unit_token_ends = part_ends[unit_ends]  # where each unit ends in tokens_N (a leading 0 first)
    unit_weights = np.fromiter(chain.from_iterable(plan.weights for plan in text_plans), dtype=np.float32)
    unit_token_lengths = np.diff(unit_token_ends)
    weights_N = np.repeat(unit_weights, unit_token_lengths)
    ends = unit_token_ends.tolist()  # Python ints: read a few times per conversation below
    offsets: list[int] = []
    images: dict[int, SupervisedExample] = {}
    prompt_ends: list[int] = []  # per conversation: the end of its untrained generation prompt
    first_unit = 0  # the plan's first unit in `units`
    for index, plan in enumerate(plans):
        start = ends[first_unit]
        offsets.append(start)
        if plan.images:
            segments = encode_units(renderer, plan.units)
            model_input, weights_T, _ = assemble(renderer, segments, plan.weights)
            images[index] = SupervisedExample(model_input=model_input, weights_T=frozen_array(weights_T))
            prompt_ends.append(start)
            continue
        if plan.boundary is not None:
            start += _prompt_length(renderer, plan, tokens_N, ends, first_unit)
        prompt_ends.append(start)
        first_unit += len(plan.units)
    offsets.append(ends[first_unit])
    offsets_N = np.asarray(offsets, dtype=np.int64)
    # zero the trained positions inside a generation prompt: only the few weighted (non-empty) units are looked
    # at; a unit starts inside its conversation's range (an image plan's range is empty), hence side="right"
    trained = np.flatnonzero((unit_weights != 0) & (unit_token_lengths > 0))
    if trained.size:
        starts = unit_token_ends[trained]
        plan_of = np.searchsorted(offsets_N, starts, side="right") - 1
        stops = np.minimum(unit_token_ends[trained + 1], np.asarray(prompt_ends, dtype=np.int64)[plan_of])
        inside = stops > starts
        for start, stop in zip(starts[inside].tolist(), stops[inside].tolist(), strict=True):
            weights_N[start:stop] = 0.0
    return PackedBatch(frozen_array(tokens_N), frozen_array(weights_N), frozen_array(offsets_N), images)


def _int64_array(parts: list[Sequence[int]]) -> np.ndarray:
    """The ids of ``parts``, concatenated, as an ``int64`` array (read-only).

    The parts are joined into one list, which :mod:`struct` packs in one call: measured faster than
    ``np.fromiter`` over the chained parts (about 11 ns against 17 ns per id, ``benchmarks/bench_render.py``'s
    chats), the one step of packing that visits every token.
    """
    ids: list[int] = []
    for part in parts:
        ids += part
    return np.frombuffer(struct.pack(f"{len(ids)}q", *ids), dtype=np.int64)


_new_tuple = tuple.__new__


def _prompt_context(plan: Plan, index: int, boundary: int, prompt_turn: int) -> RenderContext:
    """The context of message ``index`` in the generation prompt of ``messages[:boundary]``: as the full
    conversation renders it (the plan's contexts, or built alone when the renderer's ``render_units`` fast path
    made the units), in the prompt's last assistant turn from ``prompt_turn`` on; the prompt's last message has
    ``is_last`` set and no next message."""
    is_last = index == boundary - 1
    in_last_turn = index >= prompt_turn
    if plan.contexts is not None:
        context = plan.contexts[index]
        if is_last:
            return context._replace(is_last=True, next_message=None, in_last_assistant_turn=in_last_turn)
        if context.in_last_assistant_turn != in_last_turn:
            return context._replace(in_last_assistant_turn=in_last_turn)
        return context
    messages = plan.messages
    previous = messages[index - 1] if index > 0 else None
    following = None if is_last else messages[index + 1]
    # RenderContext(idx, is_last, prev_message, next_message, last_user_index, in_last_assistant_turn, tools)
    return _new_tuple(RenderContext, (index, is_last, previous, following, plan.last_user, in_last_turn, plan.tools))


def _ids_of(tokenizer: Tokenizer, pending: list[Unit]) -> list[int]:
    """The ids of ``pending`` units, concatenated (the tokenizer only when they hold text)."""
    if any(type(piece) is str and piece for unit in pending for piece in unit):
        return encode_flat(tokenizer, pending)[0]
    ids: list[int] = []
    for unit in pending:
        for piece in unit:
            if type(piece) is int:
                ids.append(piece)
            elif type(piece) is tuple:
                ids.extend(piece)
    return ids


def _prompt_length(renderer: Renderer, plan: Plan, tokens_N: np.ndarray, ends: list[int], first_unit: int) -> int:
    """Length of the prefix of the plan's tokens (``tokens_N`` from ``ends[first_unit]``, ``ends`` the unit end
    positions) equal to ``build_generation_prompt(messages[:boundary])``, or 0.

    The prompt renders messages ``0..boundary-2`` exactly as the full conversation does (their contexts are
    equal, unless the renderer's :meth:`~tinkerflow.render.renderer.Renderer.turn_start` puts the prompt's last
    turn elsewhere: then the messages from the earlier of the two starts are rendered again too), so only message
    ``boundary-1`` (now last) and the suffix are rendered again, and their encodings are reused when their pieces
    did not change; only the tokens after the shared part are compared.
    """
    messages, units, boundary, turn_start = plan.messages, plan.units, plan.boundary, plan.turn_start
    assert boundary is not None
    last_user = plan.last_user  # also the prefix's: the boundary message is an assistant message
    # the prompt's last assistant turn: the plan's under the default rule (both start after the last user message
    # before the boundary) and when the prompt is messages[:-1]; a family's own rule may start it elsewhere
    prompt_turn = turn_start
    if boundary != len(messages) - 1 and type(renderer).turn_start is not Renderer.turn_start:
        prompt_turn = renderer.turn_start(messages[:boundary])
    # messages before `first` have the same context in the prompt as in the conversation
    first = max(0, boundary - 1 if prompt_turn == turn_start else min(boundary - 1, prompt_turn, turn_start))
    shared = plan.first + 2 * first  # the units before `shared` are the prompt's too
    pending: list[Unit] = []
    context_free = renderer.context_free_roles
    for index in range(first, boundary):
        message = messages[index]
        if not pending and message.role in context_free and type(message.content) is str and not message.tool_calls:
            shared += 2  # renders in the prompt as in the conversation (Renderer.context_free_roles)
            continue
        rendered = renderer.render_message(message, _prompt_context(plan, index, boundary, prompt_turn))
        if not pending and rendered.header == units[shared] and rendered.output == units[shared + 1]:
            shared += 2
        else:
            pending.extend((rendered.header, rendered.output))
    previous = messages[boundary - 1] if boundary else None
    # the suffix's context (plan.suffix_context of messages[:boundary]), built without the slice:
    # RenderContext(idx, is_last, prev_message, next_message, last_user_index, in_last_assistant_turn, tools)
    context = _new_tuple(RenderContext, (boundary, True, previous, None, last_user, True, plan.tools))
    suffix = renderer.generation_suffix("assistant", context)
    prefill = (
        None
        if type(renderer).generation_prefill is Renderer.generation_prefill
        else renderer.generation_prefill(messages[:boundary], None)
    )
    base = ends[first_unit]
    if not pending and not prefill and suffix == units[shared]:
        # the suffix has the pieces of the boundary's header, so it has its tokens too: no encoding, no compare
        return ends[first_unit + shared + 1] - base
    pending.append(suffix)
    extra = _ids_of(renderer.tokenizer, pending)
    if prefill:
        extra.extend(encode_control_text(renderer.tokenizer, prefill, renderer.control_regex))
    middle = ends[first_unit + shared]
    end = middle + len(extra)
    if end > ends[first_unit + len(units)] or tokens_N[middle:end].tolist() != extra:
        if renderer.disables_thinking:
            raise renderer._error(
                f"messages[{boundary}].content",
                "this renderer's generation prompt closes the thinking block (thinking disabled), but the trained "
                "turn reasons, so the example would train reasoning after a prompt that forbids it.",
                "use the thinking variant of this renderer, or remove the thinking from the turn.",
            )
        return 0
    return end - base
