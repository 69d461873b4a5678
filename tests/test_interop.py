"""Exact conversion to and from tinker.types, both directions, as properties."""

from __future__ import annotations

import numpy as np
import pytest
import tinker.types as tt
from hypothesis import given
from hypothesis import strategies as st
from tinker.types.topk_logprobs import TopkLogprobs

from tinkerflow import Datum, ForwardBackwardOutput, LossFnOutput, ModelInput, SamplingParams
from tinkerflow import interop as io
from tinkerflow import testing as tft
from tinkerflow.errors import InteropError


@given(tft.datums(images=True))
def test_datum_round_trip(datum: Datum) -> None:
    sdk = io.datum_to_tinker(datum, keep_mask=True)
    assert sdk.model_input.length == datum.length
    for key, array in datum.loss_inputs().items():
        tensor = sdk.loss_fn_inputs[key]
        assert tensor.dtype == ("int64" if key == "target_tokens" else "float32")
        np.testing.assert_array_equal(tensor.to_numpy(), array)
    assert io.datum_from_tinker(sdk) == datum


@given(tft.datums(loss_inputs=("advantages", "logprobs", "mask")))
def test_mask_is_not_sent_by_default(datum: Datum) -> None:
    sdk = io.datum_to_tinker(datum)
    assert "mask" not in sdk.loss_fn_inputs
    import attrs

    assert io.datum_from_tinker(sdk) == attrs.evolve(datum, mask_T=None)


@given(tft.model_inputs(images=True))
def test_model_input_round_trip(model_input: ModelInput) -> None:
    sdk = io.model_input_to_tinker(model_input)
    assert sdk.length == model_input.length
    assert io.model_input_from_tinker(sdk) == model_input


@given(st.lists(st.lists(st.integers(0, 10**6), max_size=20), max_size=4))
def test_sdk_model_input_round_trip(chunks: list[list[int]]) -> None:
    sdk = tt.ModelInput(chunks=[tt.EncodedTextChunk(tokens=tokens) for tokens in chunks])
    back = io.model_input_to_tinker(io.model_input_from_tinker(sdk))
    assert back.chunks == sdk.chunks


@given(tft.sampling_params())
def test_sampling_params_round_trip(params: SamplingParams) -> None:
    sdk = io.sampling_params_to_tinker(params)
    assert io.sampling_params_from_tinker(sdk) == params


def test_sdk_sampling_params_normalization() -> None:
    assert io.sampling_params_from_tinker(tt.SamplingParams(stop="END")).stop_strings == ("END",)
    assert io.sampling_params_from_tinker(tt.SamplingParams(stop=[1, 2])).stop_tokens == (1, 2)
    assert io.sampling_params_to_tinker(io.sampling_params_from_tinker(tt.SamplingParams(stop=[]))).stop is None
    with pytest.raises(InteropError, match="mixes"):
        io.sampling_params_from_tinker(tt.SamplingParams.model_construct(stop=["a", 1]))


@given(tft.sample_responses())
def test_sample_response_round_trip(response: object) -> None:
    from tinkerflow import SampleResponse

    assert isinstance(response, SampleResponse)
    sdk = io.sample_response_to_tinker(response)
    for ours, theirs in zip(response.sequences, sdk.sequences, strict=True):
        assert theirs.tokens == ours.tokens_T.tolist()
        assert theirs.stop_reason == ours.stop_reason
    assert io.sample_response_from_tinker(sdk) == response


def test_sdk_list_backed_sample_response() -> None:
    sdk = tt.SampleResponse(
        sequences=[
            tt.SampledSequence(stop_reason="stop", sequence_id="s0", _tokens_list=[5, 6], _logprobs_list=[-0.5, -0.25])
        ],
        _prompt_logprobs_list=[None, -1.5, -2.0],
    )
    ours = io.sample_response_from_tinker(sdk)
    assert ours.sequences[0].tokens_T.tolist() == [5, 6]
    assert ours.sequences[0].logprobs_T is not None
    assert ours.sequences[0].logprobs_T.tolist() == [-0.5, -0.25]
    assert ours.prompt_logprobs_T is not None
    assert np.isnan(ours.prompt_logprobs_T[0])
    back = io.sample_response_to_tinker(ours)
    assert back.prompt_logprobs == [None, -1.5, -2.0] or np.isnan(back.prompt_logprobs[0])  # type: ignore[index]
    assert back.sequences[0].tokens == [5, 6]


def test_sdk_topk_round_trip() -> None:
    topk = TopkLogprobs(
        token_ids=np.array([[1, 2]], dtype=np.int32), logprobs=np.array([[-0.1, -2.0]], dtype=np.float32)
    )
    sdk = tt.SampleResponse(
        sequences=[
            tt.SampledSequence(
                stop_reason="length",
                sequence_id="x",
                tokens_np=np.array([9], dtype=np.int32),
                logprobs_np=np.array([-0.1], dtype=np.float32),
                topk_logprobs_np=topk,
            )
        ]
    )
    back = io.sample_response_to_tinker(io.sample_response_from_tinker(sdk))
    assert back.sequences[0].topk_logprobs == sdk.sequences[0].topk_logprobs


@given(tft.forward_backward_outputs())
def test_forward_backward_output_round_trip(output: ForwardBackwardOutput) -> None:
    sdk = io.forward_backward_output_to_tinker(output)
    assert dict(sdk.metrics) == dict(output.metrics)
    assert io.forward_backward_output_from_tinker(sdk) == output


@given(tft.adam_params())
def test_adam_params_round_trip(params: object) -> None:
    from tinkerflow import AdamParams

    assert isinstance(params, AdamParams)
    assert io.adam_params_from_tinker(io.adam_params_to_tinker(params)) == params


def test_sdk_adam_defaults_survive() -> None:
    sdk = tt.AdamParams()
    assert io.adam_params_to_tinker(io.adam_params_from_tinker(sdk)) == sdk


def test_unknown_loss_input_raises() -> None:
    sdk = tt.Datum(
        model_input=tt.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={
            "target_tokens": tt.TensorData.from_numpy(np.array([2, 3])),
            "rewards": tt.TensorData.from_numpy(np.array([1.0, 1.0], dtype=np.float32)),
        },
    )
    with pytest.raises(InteropError, match="rewards"):
        io.datum_from_tinker(sdk)


def test_missing_targets_raises() -> None:
    sdk = tt.Datum(model_input=tt.ModelInput.from_ints([1]), loss_fn_inputs={})
    with pytest.raises(InteropError, match="target_tokens"):
        io.datum_from_tinker(sdk)


def test_asset_pointer_chunk_raises() -> None:
    pointer = tt.ImageAssetPointerChunk(format="png", location="s3://x", expected_tokens=4)
    with pytest.raises(InteropError, match="ImageAssetPointerChunk"):
        io.model_input_from_tinker(tt.ModelInput(chunks=[pointer]))


def test_unknown_output_key_raises() -> None:
    sdk = tt.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {
                "logprobs": tt.TensorData.from_numpy(np.zeros(2, np.float32)),
                "x": tt.TensorData.from_numpy(np.zeros(2, np.float32)),
            }
        ],
    )
    with pytest.raises(InteropError, match="'x'"):
        io.forward_backward_output_from_tinker(sdk)
    assert LossFnOutput  # imported for the type of outputs above
