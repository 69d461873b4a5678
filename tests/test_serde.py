"""Every record round-trips through JSON exactly; bad JSON gives a SerializationError naming the path."""

from __future__ import annotations

import json
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkerflow import Conversation, Datum, Message, ModelInput, SampleResponse, SamplingParams
from tinkerflow import testing as tft
from tinkerflow.errors import SerializationError
from tinkerflow.serde import from_json, structure, to_json, unstructure

RECORD_STRATEGIES: dict[str, st.SearchStrategy[object]] = {
    "ToolCall": tft.tool_calls(),
    "UnparsedToolCall": tft.unparsed_tool_calls(),
    "ToolSpec": tft.tool_specs(),
    "Message": tft.messages(images=True),
    "Conversation": tft.conversations(images=True),
    "ModelInput": tft.model_inputs(images=True),
    "Datum": tft.datums(images=True),
    "SamplingParams": tft.sampling_params(),
    "SampledSequence": tft.sampled_sequences(),
    "SampleResponse": tft.sample_responses(),
    "LossFnOutput": tft.loss_fn_outputs(),
    "ForwardBackwardOutput": tft.forward_backward_outputs(),
    "AdamParams": tft.adam_params(),
}


@pytest.mark.parametrize("name", sorted(RECORD_STRATEGIES))
def test_json_round_trip_is_exact(name: str) -> None:
    @given(RECORD_STRATEGIES[name])
    def check(record: object) -> None:
        text = to_json(record)
        json.loads(text)  # standard JSON: no NaN/Infinity tokens
        assert "NaN" not in text or "NaN" in json.dumps(json.loads(text))
        back = from_json(text, type(record))
        assert back == record
        assert to_json(back) == text

    check()


def test_every_public_record_has_a_round_trip_property() -> None:
    import tinkerflow

    records = {name for name in tinkerflow.__all__ if isinstance(getattr(tinkerflow, name), type)}
    records -= {
        "TinkerflowError",
        "ValidationError",
        "TextPart",
        "ThinkingPart",
        "ImagePart",
        "TokenChunk",
        "ImageChunk",
    }
    # parts and chunks are covered inside Message / ModelInput round trips
    assert records <= set(RECORD_STRATEGIES), records - set(RECORD_STRATEGIES)


def test_content_parts_are_tagged() -> None:
    data = unstructure(Message(role="user", content="hi"))
    assert data == {
        "role": "user",
        "content": "hi",
        "tool_calls": [],
        "unparsed_tool_calls": [],
        "tool_call_id": None,
        "name": None,
        "trainable": None,
    }
    parts = json.loads(
        '{"role": "assistant", "content": [{"type": "thinking", "thinking": "t"}, {"type": "text", "text": "a"}]}'
    )
    message = structure(parts, Message)
    assert message.thinking() == "t"
    assert message.text() == "a"


def test_nan_prompt_logprobs_become_null() -> None:
    response = SampleResponse(sequences=(), prompt_logprobs_T=[float("nan"), -1.0])
    text = to_json(response)
    assert json.loads(text)["prompt_logprobs_T"] == [None, -1.0]
    assert from_json(text, SampleResponse) == response


@pytest.mark.parametrize(
    ("text", "cls", "fragment"),
    [
        ("{", Message, "invalid JSON"),
        ('{"role": "robot"}', Message, "role"),
        ('{"messages": []}', Conversation, "empty"),
        ('{"role": "user", "colour": 1}', Message, "colour"),
        ('{"role": "user", "content": 5}', Message, "content"),
        (
            '{"model_input": {"chunks": [{"type": "tokens", "tokens_T": [1]}]}, "target_tokens_T": [1, 2]}',
            Datum,
            "Datum",
        ),
        ('{"chunks": [{"type": "image", "data": "***", "format": "png", "expected_tokens": 1}]}', ModelInput, "base64"),
        ('{"chunks": [{"type": "video"}]}', ModelInput, "chunks"),
        ('{"temperature": -1}', SamplingParams, "temperature"),
    ],
)
def test_bad_json_raises_serialization_error(text: str, cls: type, fragment: str) -> None:
    with pytest.raises(SerializationError) as info:
        from_json(text, cls)
    assert fragment in str(info.value) or fragment in repr(info.value.__cause__), str(info.value)


def test_no_pickle_in_the_package() -> None:
    source = pathlib.Path(__file__).parents[1] / "src" / "tinkerflow"
    offenders = [
        str(path)
        for path in source.rglob("*.py")
        if "import pickle" in path.read_text() or "cloudpickle" in path.read_text()
    ]
    assert offenders == []
