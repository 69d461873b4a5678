"""Every validation rule of every record raises a typed error that names the record and the field."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import numpy as np
import pytest

from tinkerflow import (
    AdamParams,
    Conversation,
    Datum,
    ForwardBackwardOutput,
    ImageChunk,
    ImagePart,
    LossFnOutput,
    Message,
    ModelInput,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    TextPart,
    ThinkingPart,
    TokenChunk,
    ToolCall,
    ToolSpec,
    UnparsedToolCall,
)
from tinkerflow.errors import (
    ConfigError,
    DTypeError,
    NonFiniteError,
    ShapeError,
    TinkerflowError,
    ValidationError,
)

MI3 = ModelInput.from_tokens([1, 2, 3])

# (description, constructor, error type, text that must appear: "Record.field")
CASES: list[tuple[str, Callable[[], object], type[ValidationError], str]] = [
    ("unknown role", lambda: Message(role="robot", content="x"), ValidationError, "Message.role"),  # type: ignore[arg-type]  # the bad value is the point
    ("content not text", lambda: Message(role="user", content=3), ValidationError, "Message.content"),  # type: ignore[arg-type]  # the bad value is the point
    ("part of wrong type", lambda: Message(role="user", content=("x",)), ValidationError, "Message.content[0]"),  # type: ignore[arg-type]  # the bad value is the point
    ("thinking in user", lambda: Message(role="user", content=(ThinkingPart("t"),)), ValidationError, "content[0]"),
    ("tool calls on user", lambda: Message(role="user", tool_calls=(ToolCall("f"),)), ValidationError, "tool_calls"),
    (
        "unparsed calls on tool",
        lambda: Message(role="tool", unparsed_tool_calls=(UnparsedToolCall("x", "e"),)),
        ValidationError,
        "Message.tool_calls",
    ),
    ("call id on user", lambda: Message(role="user", tool_call_id="c1"), ValidationError, "Message.tool_call_id"),
    ("trainable not bool", lambda: Message(role="user", trainable=1), ValidationError, "Message.trainable"),  # type: ignore[arg-type]  # the bad value is the point
    ("name not str", lambda: Message(role="user", name=5), ValidationError, "Message.name"),  # type: ignore[arg-type]  # the bad value is the point
    ("tool call item type", lambda: Message(role="assistant", tool_calls=("f",)), ValidationError, "tool_calls[0]"),  # type: ignore[arg-type]  # the bad value is the point
    ("empty tool name", lambda: ToolCall(name=""), ValidationError, "ToolCall.name"),
    ("arguments not json", lambda: ToolCall(name="f", arguments="{"), ValidationError, "ToolCall.arguments"),
    ("arguments not object", lambda: ToolCall(name="f", arguments="[1]"), ValidationError, "ToolCall.arguments"),
    ("tool call id type", lambda: ToolCall(name="f", id=3), ValidationError, "ToolCall.id"),  # type: ignore[arg-type]  # the bad value is the point
    (
        "unparsed raw type",
        lambda: UnparsedToolCall(raw_text=1, error="e"),
        ValidationError,
        "UnparsedToolCall.raw_text",
    ),  # type: ignore[arg-type]  # the bad value is the point
    ("empty spec name", lambda: ToolSpec(name=""), ValidationError, "ToolSpec.name"),
    ("spec params", lambda: ToolSpec(name="f", parameters="nope"), ValidationError, "ToolSpec.parameters"),
    ("spec description", lambda: ToolSpec(name="f", description=None), ValidationError, "ToolSpec.description"),  # type: ignore[arg-type]  # the bad value is the point
    ("text part type", lambda: TextPart(text=None), ValidationError, "TextPart.text"),  # type: ignore[arg-type]  # the bad value is the point
    ("thinking part type", lambda: ThinkingPart(thinking=1), ValidationError, "ThinkingPart.thinking"),  # type: ignore[arg-type]  # the bad value is the point
    ("empty image", lambda: ImagePart(data=b""), ValidationError, "ImagePart.data"),
    ("image format", lambda: ImagePart(data=b"x", format="gif"), ValidationError, "ImagePart.format"),  # type: ignore[arg-type]  # the bad value is the point
    ("image data type", lambda: ImagePart(data="x"), ValidationError, "ImagePart.data"),  # type: ignore[arg-type]  # the bad value is the point
    ("empty conversation", lambda: Conversation(messages=()), ValidationError, "Conversation.messages"),
    ("conversation item", lambda: Conversation(messages=("hi",)), ValidationError, "Conversation.messages[0]"),  # type: ignore[arg-type]  # the bad value is the point
    (
        "duplicate tools",
        lambda: Conversation(messages=(Message(role="user"),), tools=(ToolSpec("f"), ToolSpec("f"))),
        ValidationError,
        "Conversation.tools[1].name",
    ),
    ("negative token", lambda: TokenChunk(tokens_T=[1, -1]), ValidationError, "TokenChunk.tokens_T"),
    ("fractional token", lambda: TokenChunk(tokens_T=[1.5]), DTypeError, "TokenChunk.tokens_T"),
    ("2-d tokens", lambda: TokenChunk(tokens_T=[[1]]), ShapeError, "TokenChunk.tokens_T"),
    (
        "image tokens",
        lambda: ImageChunk(data=b"x", format="png", expected_tokens=0),
        ValidationError,
        "expected_tokens",
    ),
    (
        "image chunk data",
        lambda: ImageChunk(data=b"", format="png", expected_tokens=1),
        ValidationError,
        "ImageChunk.data",
    ),
    ("image chunk format", lambda: ImageChunk(data=b"x", format="bmp", expected_tokens=1), ValidationError, "format"),  # type: ignore[arg-type]  # the bad value is the point
    ("chunk type", lambda: ModelInput(chunks=([1, 2],)), ValidationError, "ModelInput.chunks[0]"),  # type: ignore[arg-type]  # the bad value is the point
    ("targets length", lambda: Datum(MI3, [1, 2]), ShapeError, "Datum.target_tokens_T"),
    ("weights length", lambda: Datum(MI3, [1, 2, 3], weights_T=[1.0]), ShapeError, "Datum.weights_T"),
    ("logprobs length", lambda: Datum(MI3, [1, 2, 3], logprobs_T=[0.0] * 4), ShapeError, "Datum.logprobs_T"),
    ("advantages length", lambda: Datum(MI3, [1, 2, 3], advantages_T=[0.0]), ShapeError, "Datum.advantages_T"),
    ("mask length", lambda: Datum(MI3, [1, 2, 3], mask_T=[1.0]), ShapeError, "Datum.mask_T"),
    ("ratio mask length", lambda: Datum(MI3, [1, 2, 3], sequence_ratio_mask_T=[1.0]), ShapeError, "sequence_ratio"),
    ("weights nan", lambda: Datum(MI3, [1, 2, 3], weights_T=[0, 1, math.nan]), NonFiniteError, "Datum.weights_T"),
    ("advantages inf", lambda: Datum(MI3, [1, 2, 3], advantages_T=[0, 1, math.inf]), NonFiniteError, "advantages_T"),
    ("targets float", lambda: Datum(MI3, [1.0, 2.5, 3.0]), DTypeError, "Datum.target_tokens_T"),
    ("targets negative", lambda: Datum(MI3, [1, -2, 3]), ValidationError, "Datum.target_tokens_T"),
    ("mask not binary", lambda: Datum(MI3, [1, 2, 3], mask_T=[0, 0.5, 1]), ValidationError, "Datum.mask_T"),
    ("weights 2-d", lambda: Datum(MI3, [1, 2, 3], weights_T=[[1, 2, 3]]), ShapeError, "Datum.weights_T"),
    ("model input type", lambda: Datum([1, 2, 3], [1, 2, 3]), ValidationError, "Datum.model_input"),  # type: ignore[arg-type]  # the bad value is the point
    ("max tokens", lambda: SamplingParams(max_tokens=0), ConfigError, "SamplingParams.max_tokens"),
    ("temperature", lambda: SamplingParams(temperature=-0.1), ConfigError, "SamplingParams.temperature"),
    ("temperature nan", lambda: SamplingParams(temperature=math.nan), NonFiniteError, "SamplingParams.temperature"),
    ("top_p zero", lambda: SamplingParams(top_p=0.0), ConfigError, "SamplingParams.top_p"),
    ("top_p high", lambda: SamplingParams(top_p=1.5), ConfigError, "SamplingParams.top_p"),
    ("top_k zero", lambda: SamplingParams(top_k=0), ConfigError, "SamplingParams.top_k"),
    ("top_k negative", lambda: SamplingParams(top_k=-2), ConfigError, "SamplingParams.top_k"),
    ("both stops", lambda: SamplingParams(stop_strings=("x",), stop_tokens=(1,)), ConfigError, "stop_tokens"),
    ("empty stop", lambda: SamplingParams(stop_strings=("",)), ConfigError, "SamplingParams.stop_strings[0]"),
    ("negative stop", lambda: SamplingParams(stop_tokens=(-1,)), ConfigError, "SamplingParams.stop_tokens[0]"),
    ("seed type", lambda: SamplingParams(seed="1"), ValidationError, "SamplingParams.seed"),  # type: ignore[arg-type]  # the bad value is the point
    ("temperature bool", lambda: SamplingParams(temperature=True), ValidationError, "temperature"),
    ("stop reason", lambda: SampledSequence([1], "eos"), ValidationError, "SampledSequence.stop_reason"),  # type: ignore[arg-type]  # the bad value is the point
    ("seq logprobs length", lambda: SampledSequence([1, 2], "stop", [0.0]), ShapeError, "SampledSequence.logprobs_T"),
    (
        "topk without logprobs",
        lambda: SampledSequence([1], "stop", topk_token_ids_T_K=[[1]]),
        ValidationError,
        "topk_token_ids_T_K",
    ),
    (
        "topk shapes",
        lambda: SampledSequence([1], "stop", topk_token_ids_T_K=[[1, 2]], topk_logprobs_T_K=[[0.0]]),
        ShapeError,
        "topk_logprobs_T_K",
    ),
    (
        "topk rows",
        lambda: SampledSequence([1], "stop", topk_token_ids_T_K=[[1], [2]], topk_logprobs_T_K=[[0.0], [0.0]]),
        ShapeError,
        "topk_token_ids_T_K",
    ),
    ("prompt inf", lambda: SampleResponse((), prompt_logprobs_T=[math.inf]), NonFiniteError, "prompt_logprobs_T"),
    ("response item", lambda: SampleResponse(sequences=(1,)), ValidationError, "SampleResponse.sequences[0]"),  # type: ignore[arg-type]  # the bad value is the point
    (
        "prompt topk without ids",
        lambda: SampleResponse((), topk_prompt_logprobs_T_K=[[0.0]]),
        ValidationError,
        "topk_prompt_token_ids_T_K",
    ),
    ("lr negative", lambda: AdamParams(learning_rate=-1.0), ConfigError, "AdamParams.learning_rate"),
    ("beta1 one", lambda: AdamParams(beta1=1.0), ConfigError, "AdamParams.beta1"),
    ("beta2 negative", lambda: AdamParams(beta2=-0.1), ConfigError, "AdamParams.beta2"),
    ("eps zero", lambda: AdamParams(eps=0.0), ConfigError, "AdamParams.eps"),
    ("weight decay", lambda: AdamParams(weight_decay=-1.0), ConfigError, "AdamParams.weight_decay"),
    ("clip norm", lambda: AdamParams(grad_clip_norm=-1.0), ConfigError, "AdamParams.grad_clip_norm"),
    ("lr inf", lambda: AdamParams(learning_rate=math.inf), NonFiniteError, "AdamParams.learning_rate"),
    ("loss shape", lambda: LossFnOutput([0.0], elementwise_loss_T=[0.0, 1.0]), ValidationError, "elementwise_loss_T"),
    ("logprobs nan", lambda: LossFnOutput([math.nan]), NonFiniteError, "LossFnOutput.logprobs_T"),
    ("metric nan", lambda: ForwardBackwardOutput((), {"loss:sum": math.nan}), NonFiniteError, "metrics"),
    ("metric key", lambda: ForwardBackwardOutput((), {1: 1.0}), ValidationError, "metrics"),  # type: ignore[dict-item]  # the bad value is the point
    ("metrics type", lambda: ForwardBackwardOutput((), [1.0]), ValidationError, "ForwardBackwardOutput.metrics"),  # type: ignore[arg-type]  # the bad value is the point
    ("output item", lambda: ForwardBackwardOutput(([0.0],)), ValidationError, "loss_fn_outputs[0]"),  # type: ignore[arg-type]  # the bad value is the point
]


@pytest.mark.parametrize(("description", "build", "error", "names"), CASES, ids=[case[0] for case in CASES])
def test_invalid_record_raises_typed_error(
    description: str, build: Callable[[], object], error: type[ValidationError], names: str
) -> None:
    with pytest.raises(error) as info:
        build()
    assert isinstance(info.value, TinkerflowError)
    assert names in str(info.value), f"{description}: {info.value}"
    assert info.value.problem


def test_records_are_frozen() -> None:
    message = Message(role="user", content="hi")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        message.content = "other"  # type: ignore[misc]  # mutation is what we check is refused
    datum = Datum(MI3, [1, 2, 3], weights_T=[0, 1, 1])
    with pytest.raises(ValueError, match="read-only"):
        datum.target_tokens_T[0] = 7
    assert datum.weights_T is not None
    with pytest.raises(ValueError, match="read-only"):
        datum.weights_T[0] = 7.0


def test_records_copy_their_inputs() -> None:
    weights = np.array([0.0, 1.0, 1.0], dtype=np.float32)
    datum = Datum(MI3, [1, 2, 3], weights_T=weights)
    weights[0] = 5.0
    assert datum.weights_T is not None
    assert datum.weights_T[0] == 0.0


def test_lists_become_tuples() -> None:
    message = Message(role="assistant", content=[TextPart("a")], tool_calls=[ToolCall("f")])  # type: ignore[arg-type]  # lists are accepted and converted
    assert isinstance(message.content, tuple)
    assert isinstance(message.tool_calls, tuple)
    conversation = Conversation(messages=[message])  # type: ignore[arg-type]  # lists are accepted and converted
    assert isinstance(conversation.messages, tuple)


def test_message_accessors() -> None:
    message = Message(role="assistant", content=(ThinkingPart("hm"), TextPart("a"), ImagePart(b"x"), TextPart("b")))
    assert message.text() == "ab"
    assert message.thinking() == "hm"
    assert len(message.images()) == 1
    assert Message(role="user", content="x").thinking() is None


def test_tool_call_helpers_round_trip() -> None:
    call = ToolCall.create("search", {"q": "ünïcode", "n": 3}, id="c1")
    assert call.arguments_dict() == {"q": "ünïcode", "n": 3}
    spec = ToolSpec.create("search", "find", {"type": "object"})
    assert spec.parameters_dict() == {"type": "object"}


def test_model_input_helpers() -> None:
    model_input = ModelInput.from_tokens([1, 2]).append_tokens([3])
    assert model_input.to_tokens().tolist() == [1, 2, 3]
    assert len(model_input.chunks) == 1
    with_image = ModelInput(chunks=(ImageChunk(b"x", "png", 4),)).append_tokens([5])
    assert with_image.length == 5
    assert with_image.has_images
    with pytest.raises(ValidationError, match=r"ModelInput\.chunks\[0\]"):
        with_image.to_tokens()
    assert ModelInput.empty().to_tokens().shape == (0,)
    with pytest.raises(DTypeError):
        ModelInput.from_tokens([1]).append_tokens([1.5])


def test_datum_loss_inputs_and_equality() -> None:
    datum = Datum(MI3, [1, 2, 3], weights_T=[0, 1, 1], mask_T=[0, 1, 1])
    assert set(datum.loss_inputs()) == {"target_tokens", "weights", "mask"}
    assert datum == Datum(ModelInput.from_tokens([1, 2, 3]), [1, 2, 3], weights_T=[0.0, 1.0, 1.0], mask_T=[0, 1, 1])
    assert datum != Datum(MI3, [1, 2, 3], weights_T=[0, 1, 1])
    assert datum != Datum(MI3, [1, 2, 4], weights_T=[0, 1, 1], mask_T=[0, 1, 1])
    assert datum.length == 3


def test_forward_backward_output_accessors() -> None:
    output = ForwardBackwardOutput((LossFnOutput([-1.0, -2.0]),), {"loss:sum": 3.0})
    assert output.loss == 3.0
    assert output.logprobs_D[0].tolist() == [-1.0, -2.0]
    with pytest.raises(ValidationError, match="loss:sum"):
        _ = ForwardBackwardOutput((), {}).loss
    with pytest.raises(TypeError):
        output.metrics["x"] = 1.0  # type: ignore[index]  # metrics are read-only; that is what we check


def test_sampling_params_single_stop_string() -> None:
    assert SamplingParams(stop_strings="END").stop_strings == ("END",)  # type: ignore[arg-type]  # a lone string is accepted
