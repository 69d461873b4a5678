"""Public hypothesis strategies for tinkerflow's records, for property-testing your own code.

Needs ``hypothesis`` (``pip install 'tinkerflow[testing]'``). Every strategy builds *valid* records (they are
validated on construction), and each takes keyword arguments that narrow what it draws::

    from hypothesis import given
    from tinkerflow import testing as tft

    @given(tft.conversations(max_messages=4))
    def test_my_renderer_never_crashes(conversation):
        my_render(conversation)

Strategies: :func:`texts`, :func:`tool_calls`, :func:`unparsed_tool_calls`, :func:`tool_specs`,
:func:`content_parts`, :func:`messages`, :func:`conversations`, :func:`token_arrays`, :func:`model_inputs`,
:func:`datums`, :func:`sampling_params`, :func:`sampled_sequences`, :func:`sample_responses`,
:func:`loss_fn_outputs`, :func:`forward_backward_outputs`, :func:`adam_params`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TypedDict, Unpack

import numpy as np
from hypothesis import strategies as st

from tinkerflow.chat import (
    ContentPart,
    Conversation,
    ImagePart,
    Message,
    Role,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolSpec,
    UnparsedToolCall,
)
from tinkerflow.datum import Datum
from tinkerflow.model_input import Chunk, ImageChunk, ModelInput, TokenChunk
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams
from tinkerflow.training import AdamParams, ForwardBackwardOutput, LossFnOutput

__all__ = [
    "ContentOptions",
    "ModelInputOptions",
    "adam_params",
    "content_parts",
    "conversations",
    "datums",
    "float32_arrays",
    "forward_backward_outputs",
    "loss_fn_outputs",
    "messages",
    "model_inputs",
    "sample_responses",
    "sampled_sequences",
    "sampling_params",
    "texts",
    "token_arrays",
    "tool_calls",
    "tool_specs",
    "unparsed_tool_calls",
]

# Strings that look like control tokens of common chat templates: user content must stay plain text.
_TRICKY = [
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|end_header_id|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "User:",
    "\n\n",
    " ",
    "",
    "é",
    "日本語",
    "🙂",
]


def texts(*, max_size: int = 40, tricky: bool = True) -> st.SearchStrategy[str]:
    """Unicode text (no surrogates), mixed with chat-template look-alikes when ``tricky``."""
    plain = st.text(st.characters(exclude_categories=["Cs"]), max_size=max_size)
    if not tricky:
        return plain
    return st.one_of(plain, st.sampled_from(_TRICKY), st.lists(st.sampled_from(_TRICKY), max_size=3).map("".join))


_names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), texts(max_size=10, tricky=False))
_json_objects = st.dictionaries(_names, _json_scalars, max_size=4)


def tool_calls(*, with_id: bool | None = None) -> st.SearchStrategy[ToolCall]:
    """Tool calls with JSON-object arguments; ``with_id`` forces an id on (True) or off (False)."""
    ids = st.none() if with_id is False else _names if with_id else st.one_of(st.none(), _names)
    return st.builds(
        lambda name, arguments, id_: ToolCall(name=name, arguments=json.dumps(arguments), id=id_),
        _names,
        _json_objects,
        ids,
    )


def unparsed_tool_calls() -> st.SearchStrategy[UnparsedToolCall]:
    return st.builds(UnparsedToolCall, raw_text=texts(), error=texts(max_size=20, tricky=False))


def tool_specs() -> st.SearchStrategy[ToolSpec]:
    schema = st.builds(
        lambda props: {"type": "object", "properties": {key: {"type": "string"} for key in props}},
        st.lists(_names, max_size=3, unique=True),
    )
    return st.builds(ToolSpec.create, _names, texts(max_size=30, tricky=False), schema)


def _png_bytes() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=1, max_size=32).map(lambda body: b"\x89PNG\r\n\x1a\n" + body)


def content_parts(role: Role = "assistant", *, images: bool = True) -> st.SearchStrategy[ContentPart]:
    """Parts allowed in a ``role`` message: text always, thinking for assistants, images when ``images``."""
    options: list[st.SearchStrategy[ContentPart]] = [st.builds(TextPart, texts())]
    if role == "assistant":
        options.append(st.builds(ThinkingPart, texts()))
    if images:
        options.append(st.builds(ImagePart, _png_bytes(), st.sampled_from(["png", "jpeg"])))
    return st.one_of(*options)


@st.composite
def messages(
    draw: st.DrawFn,
    *,
    roles: Sequence[Role] = ("system", "user", "assistant", "tool"),
    parts: bool = True,
    images: bool = False,
    tool_use: bool = True,
    trainable: bool | None = None,
) -> Message:
    """Valid messages of the given ``roles``; ``parts`` allows part-list content, ``tool_use`` tool calls/results.

    ``trainable`` fixes the per-message flag (None: leave it unset).
    """
    role: Role = draw(st.sampled_from(list(roles)))
    content: str | tuple[ContentPart, ...]
    if parts and draw(st.booleans()):
        content = tuple(draw(st.lists(content_parts(role, images=images), max_size=3)))
    else:
        content = draw(texts())
    calls: tuple[ToolCall, ...] = ()
    unparsed: tuple[UnparsedToolCall, ...] = ()
    call_id: str | None = None
    if tool_use and role == "assistant":
        calls = tuple(draw(st.lists(tool_calls(), max_size=2)))
        unparsed = tuple(draw(st.lists(unparsed_tool_calls(), max_size=1)))
    if tool_use and role == "tool":
        call_id = draw(st.one_of(st.none(), _names))
    name = draw(st.one_of(st.none(), _names)) if role == "tool" else None
    return Message(
        role=role,
        content=content,
        tool_calls=calls,
        unparsed_tool_calls=unparsed,
        tool_call_id=call_id,
        name=name,
        trainable=trainable,
    )


class ContentOptions(TypedDict, total=False):
    """Keyword options of :func:`messages` that :func:`conversations` passes on to every turn (same defaults)."""

    parts: bool
    images: bool


@st.composite
def conversations(
    draw: st.DrawFn,
    *,
    min_messages: int = 1,
    max_messages: int = 6,
    system: bool | None = None,
    tools: bool = True,
    **options: Unpack[ContentOptions],
) -> Conversation:
    """Conversations shaped like chats: an optional system message, then alternating user/assistant turns,
    with tool results following assistant tool calls when ``tools``.

    ``system`` forces a leading system message on (True) or off (False); ``options`` (``parts``, ``images``) are
    :func:`messages`'s, for every turn.
    """
    count = draw(st.integers(min_messages, max(min_messages, max_messages)))
    result: list[Message] = []
    has_system = draw(st.booleans()) if system is None else system
    if has_system:
        result.append(draw(messages(roles=("system",), parts=False, tool_use=False)))
    role: Role = "user"
    while len(result) < count:
        message = draw(messages(roles=(role,), tool_use=tools, **options))
        result.append(message)
        if tools and message.tool_calls and len(result) < count:
            for call in message.tool_calls:
                if len(result) >= count:
                    break
                result.append(Message(role="tool", content=draw(texts()), tool_call_id=call.id, name=call.name))
            role = "assistant"
        else:
            role = "assistant" if role == "user" else "user"
    specs = tuple(draw(st.lists(tool_specs(), max_size=2, unique_by=lambda spec: spec.name))) if tools else ()
    return Conversation(messages=tuple(result), tools=specs)


def token_arrays(*, min_size: int = 0, max_size: int = 64, vocab_size: int = 1000) -> st.SearchStrategy[np.ndarray]:
    """1-D int64 token-id arrays with ids below ``vocab_size``."""
    return st.lists(st.integers(0, vocab_size - 1), min_size=min_size, max_size=max_size).map(
        lambda ids: np.asarray(ids, dtype=np.int64)
    )


def float32_arrays(length: int, *, low: float = -100.0, high: float = 100.0) -> st.SearchStrategy[np.ndarray]:
    """1-D finite float32 arrays of exactly ``length`` entries."""
    element = st.floats(low, high, allow_nan=False, allow_infinity=False, width=32)
    return st.lists(element, min_size=length, max_size=length).map(lambda xs: np.asarray(xs, dtype=np.float32))


@st.composite
def model_inputs(
    draw: st.DrawFn, *, min_length: int = 0, max_length: int = 64, images: bool = False, vocab_size: int = 1000
) -> ModelInput:
    """Model inputs of ``min_length..max_length`` positions; with ``images``, image chunks are mixed in."""
    total = draw(st.integers(min_length, max_length))
    chunks: list[Chunk] = []
    remaining = total
    while remaining > 0:
        if images and remaining >= 1 and draw(st.booleans()):
            size = draw(st.integers(1, min(remaining, 8)))
            chunks.append(ImageChunk(data=draw(_png_bytes()), format="png", expected_tokens=size))
        else:
            size = draw(st.integers(1, remaining))
            chunks.append(TokenChunk(tokens_T=draw(token_arrays(min_size=size, max_size=size, vocab_size=vocab_size))))
        remaining -= size
    return ModelInput(chunks=tuple(chunks))


_ALL_INPUTS = ("weights", "logprobs", "advantages", "mask", "sequence_ratio_mask")


class ModelInputOptions(TypedDict, total=False):
    """Keyword options of :func:`model_inputs` that :func:`datums` passes on (same defaults)."""

    min_length: int
    max_length: int
    images: bool


@st.composite
def datums(
    draw: st.DrawFn,
    *,
    loss_inputs: Sequence[str] | None = None,
    vocab_size: int = 1000,
    **options: Unpack[ModelInputOptions],
) -> Datum:
    """Valid datums; ``loss_inputs`` names the optional inputs to fill (default: a random subset), ``options``
    (``min_length``, ``max_length``, ``images``) are :func:`model_inputs`'s."""
    model_input = draw(model_inputs(vocab_size=vocab_size, **options))
    length = model_input.length
    chosen = list(loss_inputs) if loss_inputs is not None else draw(st.lists(st.sampled_from(_ALL_INPUTS), unique=True))
    fields: dict[str, np.ndarray] = {}
    for key in chosen:
        if key in ("mask", "sequence_ratio_mask"):
            bits = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=length, max_size=length))
            fields[f"{key}_T"] = np.asarray(bits, dtype=np.float32)
        elif key == "logprobs":
            fields["logprobs_T"] = draw(float32_arrays(length, low=-30.0, high=0.0))
        else:
            fields[f"{key}_T"] = draw(float32_arrays(length))
    targets = draw(token_arrays(min_size=length, max_size=length, vocab_size=vocab_size))
    return Datum(model_input=model_input, target_tokens_T=targets, **fields)


def sampling_params() -> st.SearchStrategy[SamplingParams]:
    stops = st.one_of(
        st.tuples(st.just(()), st.just(())),
        st.tuples(st.lists(texts(max_size=5, tricky=False).filter(bool), max_size=3).map(tuple), st.just(())),
        st.tuples(st.just(()), st.lists(st.integers(0, 10**5), max_size=3).map(tuple)),
    )
    return st.builds(
        lambda max_tokens, temperature, top_p, top_k, stop, seed: SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            stop_strings=stop[0],
            stop_tokens=stop[1],
            seed=seed,
        ),
        st.one_of(st.none(), st.integers(1, 4096)),
        st.floats(0.0, 2.0),
        st.floats(0.0, 1.0, exclude_min=True),
        st.one_of(st.just(-1), st.integers(1, 100)),
        stops,
        st.one_of(st.none(), st.integers(0, 2**31 - 1)),
    )


@st.composite
def _topk(draw: st.DrawFn, length: int) -> tuple[np.ndarray, np.ndarray]:
    k = draw(st.integers(1, 3))
    ids = draw(st.lists(st.integers(0, 999), min_size=length * k, max_size=length * k))
    values = draw(float32_arrays(length * k, low=-30.0, high=0.0))
    return np.asarray(ids, dtype=np.int64).reshape(length, k), values.reshape(length, k)


@st.composite
def sampled_sequences(draw: st.DrawFn, *, max_length: int = 32, topk: bool = True) -> SampledSequence:
    tokens = draw(token_arrays(max_size=max_length))
    length = tokens.shape[0]
    logprobs = draw(st.one_of(st.none(), float32_arrays(length, low=-30.0, high=0.0)))
    ids, values = draw(_topk(length)) if topk and draw(st.booleans()) else (None, None)
    return SampledSequence(
        tokens_T=tokens,
        stop_reason=draw(st.sampled_from(["length", "stop"])),
        logprobs_T=logprobs,
        sequence_id=draw(_names),
        topk_token_ids_T_K=ids,
        topk_logprobs_T_K=values,
    )


@st.composite
def sample_responses(draw: st.DrawFn, *, max_samples: int = 4, topk: bool = True) -> SampleResponse:
    sequences = tuple(draw(st.lists(sampled_sequences(topk=topk), min_size=1, max_size=max_samples)))
    prompt: np.ndarray | None = None
    ids = values = None
    if draw(st.booleans()):
        length = draw(st.integers(1, 16))
        prompt = draw(float32_arrays(length, low=-30.0, high=0.0)).copy()
        prompt[0] = np.nan
        if topk and draw(st.booleans()):
            ids, values = draw(_topk(length))
    return SampleResponse(
        sequences=sequences, prompt_logprobs_T=prompt, topk_prompt_token_ids_T_K=ids, topk_prompt_logprobs_T_K=values
    )


@st.composite
def loss_fn_outputs(draw: st.DrawFn, *, max_length: int = 32) -> LossFnOutput:
    length = draw(st.integers(0, max_length))
    logprobs = draw(float32_arrays(length, low=-30.0, high=0.0))
    loss = draw(st.one_of(st.none(), float32_arrays(length)))
    return LossFnOutput(logprobs_T=logprobs, elementwise_loss_T=loss)


def forward_backward_outputs() -> st.SearchStrategy[ForwardBackwardOutput]:
    metrics = st.dictionaries(
        st.sampled_from(["loss:sum", "tokens:sum", "clipfrac:mean", "kl:mean"]),
        st.floats(-1e6, 1e6, allow_nan=False),
    )
    return st.builds(ForwardBackwardOutput, loss_fn_outputs=st.lists(loss_fn_outputs(), max_size=4), metrics=metrics)


def adam_params() -> st.SearchStrategy[AdamParams]:
    return st.builds(
        AdamParams,
        learning_rate=st.floats(0.0, 1.0),
        beta1=st.floats(0.0, 1.0, exclude_max=True),
        beta2=st.floats(0.0, 1.0, exclude_max=True),
        eps=st.floats(1e-12, 1e-3),
        weight_decay=st.floats(0.0, 1.0),
        grad_clip_norm=st.floats(0.0, 100.0),
    )
