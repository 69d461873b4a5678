"""The serve codec against the ``tinker`` SDK itself: requests the SDK encodes decode to the same fields, and responses
the codec encodes are read back by the SDK's own decoders into equal records. Malformed bodies raise
``WireFormatError`` naming the field at fault."""

from __future__ import annotations

import contextlib
import re
import typing
from collections.abc import Callable

import numpy as np
import pytest
import tinker.types as tt
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tinker.proto import tinker_public_pb2 as pb
from tinker.proto.request_conv import forward_backward_request_to_proto
from tinker.proto.response_conv import deserialize_forward_backward_output, deserialize_sample_response
from tinker.types.topk_logprobs import TopkLogprobs

from tinkerflow.shell.serve.codec import (
    WireFormatError,
    decode_forward_backward_request,
    encode_forward_backward_output,
    encode_sample_response,
    maybe_decompress,
)

TOKENS = st.integers(0, 2**31 - 1)
FLOAT32 = st.floats(width=32, allow_nan=False)
NAMES = st.text(min_size=1, max_size=8)
STOP_REASONS: tuple[tt.StopReason, ...] = ("stop", "length")
LOSS_FNS: tuple[tt.LossFnType, ...] = typing.get_args(tt.LossFnType)
NP_DTYPES: dict[str, np.dtype[typing.Any]] = {"float32": np.dtype(np.float32), "int64": np.dtype(np.int64)}


def assert_tensor_equal(actual: tt.TensorData, expected: tt.TensorData) -> None:
    """Same dtype, shape, CSR indices and values, bit for bit."""
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.sparse_crow_indices == expected.sparse_crow_indices
    assert actual.sparse_col_indices == expected.sparse_col_indices
    assert actual._numpy.dtype == NP_DTYPES[actual.dtype]
    assert actual._numpy.shape == np.asarray(expected._numpy).shape
    assert actual._numpy.tobytes() == np.asarray(expected._numpy, dtype=NP_DTYPES[expected.dtype]).tobytes()


# --- strategies -----------------------------------------------------------------------------------------------------


@st.composite
def csr_tensors(draw: st.DrawFn, dtype: str) -> tt.TensorData:
    """A sparse CSR tensor as ``TensorData.from_torch_sparse`` makes them (column indices sorted within a row)."""
    rows, cols = draw(st.integers(0, 4)), draw(st.integers(1, 5))
    mask = np.array(draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols)), dtype=bool)
    mask = mask.reshape(rows, cols)
    elements = FLOAT32 if dtype == "float32" else st.integers(-(2**63), 2**63 - 1)
    values = draw(st.lists(elements, min_size=int(mask.sum()), max_size=int(mask.sum())))
    crow = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)
    return tt.TensorData(
        data=np.array(values, dtype=NP_DTYPES[dtype]),
        dtype=typing.cast("typing.Literal['float32', 'int64']", dtype),
        shape=[rows, cols],
        sparse_crow_indices=crow.tolist(),
        sparse_col_indices=np.nonzero(mask)[1].tolist(),
    )


@st.composite
def dense_tensors(draw: st.DrawFn, dtype: str, length: int) -> tt.TensorData:
    elements = FLOAT32 if dtype == "float32" else st.integers(-(2**63), 2**63 - 1)
    values = np.array(draw(st.lists(elements, min_size=length, max_size=length)), dtype=NP_DTYPES[dtype])
    if draw(st.booleans()):
        return tt.TensorData.from_numpy(values)
    literal = typing.cast("typing.Literal['float32', 'int64']", dtype)
    return tt.TensorData(data=values.tolist(), dtype=literal, shape=None)  # no shape: an empty one on the wire


def spans() -> st.SearchStrategy[list[tt.PromptProvenanceSpan | tt.SampledProvenanceSpan]]:
    fields = {"sequence_id": NAMES, "offset": st.integers(0, 100), "length": st.integers(0, 100)}
    one = st.builds(tt.PromptProvenanceSpan, **fields) | st.builds(tt.SampledProvenanceSpan, **fields)
    return st.lists(one, min_size=1, max_size=3)


def chunks() -> st.SearchStrategy[tt.EncodedTextChunk | tt.ImageChunk | tt.DmelChunk]:
    text = st.builds(tt.EncodedTextChunk, tokens=st.lists(TOKENS, max_size=6))
    image = st.builds(
        tt.ImageChunk,
        data=st.binary(max_size=8),
        format=st.sampled_from(["png", "jpeg"]),
        expected_tokens=st.none() | st.integers(0, 64),
    )
    dmel = st.builds(tt.DmelChunk, dmel=st.binary(max_size=8))
    return st.one_of(text, text, image, dmel)


@st.composite
def datums(draw: st.DrawFn) -> tt.Datum:
    model_chunks: list[tt.ModelInputChunk] = list(draw(st.lists(chunks(), min_size=1, max_size=4)))
    length = sum(len(c.tokens) for c in model_chunks if isinstance(c, tt.EncodedTextChunk))
    inputs: dict[str, tt.TensorData] = {}
    if draw(st.booleans()):
        inputs["target_tokens"] = draw(csr_tensors("int64"))
        inputs["weights"] = draw(csr_tensors("float32"))
    else:
        inputs["target_tokens"] = draw(dense_tensors("int64", length))
        inputs["weights"] = draw(dense_tensors("float32", length))
    for name in draw(st.lists(st.sampled_from(["advantages", "logprobs"]), unique=True)):
        inputs[name] = draw(dense_tensors("float32", length))
    provenance = draw(st.none() | st.tuples(spans(), spans()))
    return tt.Datum(
        model_input=tt.ModelInput(chunks=model_chunks),
        loss_fn_inputs=inputs,
        model_input_spans=None if provenance is None else provenance[0],
        loss_fn_input_spans=None if provenance is None else provenance[1],
    )


@st.composite
def forward_backward_requests(draw: st.DrawFn) -> tt.ForwardBackwardRequest:
    config = draw(st.none() | st.dictionaries(NAMES, st.floats(allow_nan=False) | st.text(max_size=8), max_size=3))
    fb_input = tt.ForwardBackwardInput(
        data=draw(st.lists(datums(), max_size=4)),
        loss_fn=draw(st.sampled_from(LOSS_FNS)),
        loss_fn_config=config,
    )
    return tt.ForwardBackwardRequest(
        forward_backward_input=fb_input, model_id=draw(st.text(max_size=12)), seq_id=draw(st.integers(0, 2**31 - 1))
    )


def sdk_body(request: tt.ForwardBackwardRequest, forward_only: bool) -> bytes:
    """The body the SDK posts (``AsyncTrainingResource.forward_backward``), uncompressed."""
    msg = forward_backward_request_to_proto(request)
    msg.forward_only = forward_only
    body: bytes = msg.SerializeToString()
    return body


# --- requests -------------------------------------------------------------------------------------------------------


@settings(max_examples=40)
@given(request=forward_backward_requests(), forward_only=st.booleans())
def test_decoding_an_sdk_request_gives_back_its_fields(request: tt.ForwardBackwardRequest, forward_only: bool) -> None:
    decoded = decode_forward_backward_request(sdk_body(request, forward_only))
    fb_input = request.forward_backward_input
    assert decoded.model_id == request.model_id
    assert decoded.seq_id == request.seq_id
    assert decoded.loss_fn == fb_input.loss_fn
    assert decoded.forward_only is forward_only
    assert decoded.loss_fn_config == (dict(fb_input.loss_fn_config) if fb_input.loss_fn_config else None)
    assert len(decoded.data) == len(fb_input.data)
    for actual, expected in zip(decoded.data, fb_input.data, strict=True):
        assert isinstance(actual, tt.Datum)
        assert actual.model_input == expected.model_input
        assert actual.model_input_spans == expected.model_input_spans
        assert actual.loss_fn_input_spans == expected.loss_fn_input_spans
        assert actual.loss_fn_inputs.keys() == expected.loss_fn_inputs.keys()
        for name, tensor in expected.loss_fn_inputs.items():
            assert_tensor_equal(actual.loss_fn_inputs[name], tensor)


@settings(max_examples=15)
@given(request=forward_backward_requests(), data=st.data())
def test_a_corrupted_body_decodes_or_raises_wire_format_error(
    request: tt.ForwardBackwardRequest, data: st.DataObject
) -> None:
    body = bytearray(sdk_body(request, forward_only=False))
    for _ in range(data.draw(st.integers(1, 3)) if body else 0):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(WireFormatError):
        decode_forward_backward_request(bytes(body))


def test_a_zstd_body_round_trips() -> None:
    request = tt.ForwardBackwardRequest(
        forward_backward_input=tt.ForwardBackwardInput(
            data=[
                tt.Datum(
                    model_input=tt.ModelInput.from_ints([1, 2, 3]),
                    loss_fn_inputs={"weights": tt.TensorData(data=[1.0, 0.0, 1.0], dtype="float32")},
                )
            ],
            loss_fn="cross_entropy",
        ),
        model_id="m",
        seq_id=7,
    )
    body = sdk_body(request, forward_only=True)
    compressed = zstandard.ZstdCompressor().compress(body)
    assert maybe_decompress(compressed, "zstd") == body
    assert maybe_decompress(compressed, " ZSTD ") == body
    assert maybe_decompress(body, None) == body
    assert maybe_decompress(body, "identity") == body
    streaming = zstandard.ZstdCompressor().compressobj()  # a frame without its content size in the header
    assert maybe_decompress(streaming.compress(body) + streaming.flush(), "zstd") == body
    large = np.random.default_rng(0).bytes(1 << 17)  # incompressible: many input slices
    assert maybe_decompress(zstandard.ZstdCompressor(level=1).compress(large), "zstd") == large
    decoded = decode_forward_backward_request(maybe_decompress(compressed, "zstd"))
    assert decoded.seq_id == 7
    assert decoded.forward_only is True
    assert decoded.loss_fn_config is None
    assert decoded.data[0].model_input.to_ints() == [1, 2, 3]


def test_unreadable_encodings_name_what_is_wrong() -> None:
    with pytest.raises(WireFormatError, match=r"^Content-Encoding: 'gzip' is not supported"):
        maybe_decompress(b"x", "gzip")
    with pytest.raises(WireFormatError, match=r"^body: not valid zstd data"):
        maybe_decompress(b"not zstd at all", "zstd")
    truncated = zstandard.ZstdCompressor().compress(b"hello" * 100)[:-3]
    with pytest.raises(WireFormatError, match=r"^body: the zstd data ends before its frame does"):
        maybe_decompress(truncated, "zstd")
    with pytest.raises(WireFormatError, match=r"^body: the zstd data ends before its frame does"):
        maybe_decompress(b"", "zstd")
    with pytest.raises(WireFormatError, match=r"^body: decompresses to more than 100 bytes"):
        maybe_decompress(zstandard.ZstdCompressor().compress(b"a" * 1000), "zstd", max_size=100)


def test_the_legacy_float_config_is_read_when_v2_is_absent() -> None:
    msg = pb.ForwardBackwardRequest(loss_fn="ppo", loss_fn_config={"clip_low_threshold": 0.5})
    assert decode_forward_backward_request(msg.SerializeToString()).loss_fn_config == {"clip_low_threshold": 0.5}
    msg.loss_fn_config_v2["clip_low_threshold"].number = 0.25
    msg.loss_fn_config_v2["mode"].text = "mean"
    assert decode_forward_backward_request(msg.SerializeToString()).loss_fn_config == {
        "clip_low_threshold": 0.25,
        "mode": "mean",
    }


def _valid_request() -> pb.ForwardBackwardRequest:
    datums = [
        tt.Datum(
            model_input=tt.ModelInput.from_ints([1, 2, 3]),
            loss_fn_inputs={
                "target_tokens": tt.TensorData(data=[2, 3, 4], dtype="int64", shape=[3]),
                "weights": tt.TensorData(data=[1.0] * 3, dtype="float32", shape=[3]),
            },
        )
        for _ in range(4)
    ]
    request = tt.ForwardBackwardRequest(
        forward_backward_input=tt.ForwardBackwardInput(data=datums, loss_fn="cross_entropy"), model_id="m", seq_id=1
    )
    return forward_backward_request_to_proto(request)


def _set_csr(tensor: pb.Tensor, crow: list[int], col: list[int], shape: list[int], nnz: int = 2) -> None:
    tensor.shape[:] = shape
    tensor.sparse_csr.values = np.ones(nnz, dtype=np.float32).tobytes()
    tensor.sparse_csr.crow_indices = np.array(crow, dtype=np.int64).tobytes()
    tensor.sparse_csr.col_indices = np.array(col, dtype=np.int64).tobytes()


def _weights(msg: pb.ForwardBackwardRequest, i: int = 0) -> pb.Tensor:
    tensor: pb.Tensor = msg.data[i].loss_fn_inputs["weights"]
    return tensor


W0 = "data[0].loss_fn_inputs['weights']"
CSR = W0 + ".sparse_csr"


def _shape(m: pb.ForwardBackwardRequest, shape: list[int], datum: int = 0) -> None:
    _weights(m, datum).shape[:] = shape


def _huge_empty(m: pb.ForwardBackwardRequest) -> None:
    _shape(m, [2**62, 2**62, 0])
    _weights(m).dense = b""


MALFORMED: list[tuple[Callable[[pb.ForwardBackwardRequest], object], str]] = [
    (lambda m: _shape(m, [12], datum=3), "data[3].loss_fn_inputs['weights']: 3 float32 values for shape [12]"),
    (
        lambda m: setattr(_weights(m, 2), "dense", b"\0" * 10),
        "data[2].loss_fn_inputs['weights']: 10 bytes is not a whole number of float32 values",
    ),
    (
        lambda m: setattr(m.data[0].loss_fn_inputs["target_tokens"], "dtype", 9),
        "data[0].loss_fn_inputs['target_tokens'].dtype: unknown dtype 9",
    ),
    (lambda m: _shape(m, [-3]), W0 + ".shape: negative dimension in [-3]"),
    (_huge_empty, W0 + ".shape: [4611686018427387904, 4611686018427387904, 0] cannot be made"),
    (
        lambda m: setattr(m.data[1].model_input[0].encoded_text, "tokens", b"\1" * 5),
        "data[1].model_input[0].encoded_text.tokens: 5 bytes is not a whole number of int32 values",
    ),
    (lambda m: m.data[0].model_input.add(), "data[0].model_input[1]: the chunk sets none of encoded_text, image, dmel"),
    (
        lambda m: setattr(m.data[0].model_input.add().image, "format", "gif"),
        "data[0].model_input[1].image.format: 'gif' is not 'png' or 'jpeg'",
    ),
    (lambda m: _set_csr(_weights(m), [0, 2], [0, 1], [3]), W0 + ".shape: a sparse CSR tensor needs a 2-D shape"),
    (lambda m: _set_csr(_weights(m), [0, 2], [0, 1], [2, 3]), CSR + ".crow_indices: 2 entries for 2 rows"),
    (lambda m: _set_csr(_weights(m), [0, 2, 1], [0, 1], [2, 3]), CSR + ".crow_indices: must rise from 0 to the 2"),
    (lambda m: _set_csr(_weights(m), [0, 1, 2], [0, 3], [2, 3]), CSR + ".col_indices: an index is outside [0, 3)"),
    (lambda m: _set_csr(_weights(m), [0, 2, 2], [1, 1], [2, 3]), CSR + ".col_indices: must be increasing within"),
    (lambda m: _set_csr(_weights(m), [0, 1, 3], [0, 1], [2, 3], nnz=3), CSR + ".col_indices: 2 column indices for 3"),
    (
        lambda m: m.data[0].model_input_spans.add(),
        "data[0].model_input_spans[0]: the span sets neither prompt_tokens nor sampled_tokens",
    ),
    (
        lambda m: setattr(m.data[0].loss_fn_input_spans.add().prompt_tokens, "length", -1),
        "data[0].loss_fn_input_spans[0].prompt_tokens: PromptProvenanceSpan.length must be >= 0",
    ),
    (
        lambda m: setattr(m.data[0].model_input_spans.add().sampled_tokens, "length", 2),
        "data[0].model_input_spans[0].sampled_tokens: SampledProvenanceSpan.sequence_id must be non-empty",
    ),
    (lambda m: m.loss_fn_config_v2["beta"].SetInParent(), "loss_fn_config_v2['beta']: neither number nor text is set"),
]


@pytest.mark.parametrize(("corrupt", "message"), MALFORMED)
def test_a_malformed_request_names_the_field(
    corrupt: Callable[[pb.ForwardBackwardRequest], object], message: str
) -> None:
    msg = _valid_request()
    corrupt(msg)
    with pytest.raises(WireFormatError, match="^" + re.escape(message)):
        decode_forward_backward_request(msg.SerializeToString())


def test_a_body_that_is_not_a_proto_names_the_body() -> None:
    with pytest.raises(WireFormatError, match=r"^body: not a valid ForwardBackwardRequest protobuf") as caught:
        decode_forward_backward_request(b"\xff\xff\xff")
    assert caught.value.field == "body"
    assert isinstance(caught.value, ValueError)


# --- forward/backward outputs ---------------------------------------------------------------------------------------

OUTPUT_FIELDS = {"logprobs": "float32", "elementwise_loss": "float32", "token_ids": "int64", "topk_logprobs": "float32"}


@st.composite
def forward_backward_outputs(draw: st.DrawFn) -> tt.ForwardBackwardOutput:
    names = draw(st.lists(st.sampled_from(sorted(OUTPUT_FIELDS)), unique=True, max_size=3))
    datums: list[dict[str, tt.TensorData]] = []
    for _ in range(draw(st.integers(0, 4))):
        length = draw(st.integers(0, 6))
        datum: dict[str, tt.TensorData] = {}
        for name in names:
            shape = (length, draw(st.integers(1, 3))) if name == "topk_logprobs" else (length,)  # ragged K per datum
            dtype = NP_DTYPES[OUTPUT_FIELDS[name]]
            elements = FLOAT32 if dtype == np.float32 else st.integers(-(2**63), 2**63 - 1)
            datum[name] = tt.TensorData.from_numpy(draw(hnp.arrays(dtype, shape, elements=elements)))
        datums.append(datum)
    return tt.ForwardBackwardOutput(
        loss_fn_output_type=draw(st.sampled_from(["ArrayRecord", "TorchLossReturn"])),
        loss_fn_outputs=datums,
        metrics=draw(st.dictionaries(NAMES, st.floats(allow_nan=False), max_size=3)),
    )


@settings(max_examples=40)
@given(output=forward_backward_outputs())
def test_the_sdk_reads_an_encoded_output_back(output: tt.ForwardBackwardOutput) -> None:
    decoded = deserialize_forward_backward_output(encode_forward_backward_output(output))
    assert decoded.loss_fn_output_type == output.loss_fn_output_type
    assert decoded.metrics == output.metrics
    assert len(decoded.loss_fn_outputs) == len(output.loss_fn_outputs)
    for actual, expected in zip(decoded.loss_fn_outputs, output.loss_fn_outputs, strict=True):
        assert actual.keys() == expected.keys()
        for name, tensor in expected.items():
            assert_tensor_equal(actual[name], tensor)


def test_an_output_packs_into_one_record_with_byte_offsets() -> None:
    output = tt.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[{"logprobs": tt.TensorData.from_numpy(np.arange(n, dtype=np.float32))} for n in (3, 0, 2)],
        metrics={"loss:sum": 1.5},
    )
    msg = pb.ForwardBackwardOutput.FromString(encode_forward_backward_output(output))
    (record,) = msg.loss_fn_outputs
    assert record.num_datums == 3
    assert np.frombuffer(record.fields["logprobs"].offsets, dtype=np.int64).tolist() == [0, 12, 12, 20]
    assert list(record.fields["logprobs"].trailing_shape) == []
    sparse = tt.TensorData(
        data=[5.0], dtype="float32", shape=[2, 2], sparse_crow_indices=[0, 0, 1], sparse_col_indices=[1]
    )
    dense = deserialize_forward_backward_output(
        encode_forward_backward_output(tt.ForwardBackwardOutput("ArrayRecord", [{"x": sparse}]))
    )
    assert dense.loss_fn_outputs[0]["x"].tolist() == [[0.0, 0.0], [0.0, 5.0]]


def test_outputs_with_different_fields_are_refused() -> None:
    one = tt.TensorData.from_numpy(np.zeros(2, dtype=np.float32))
    output = tt.ForwardBackwardOutput("ArrayRecord", [{"logprobs": one}, {"elementwise_loss": one}])
    with pytest.raises(ValueError, match=r"loss_fn_outputs\[1\] has fields \['elementwise_loss'\]"):
        encode_forward_backward_output(output)


def test_datums_without_fields_keep_their_count() -> None:
    decoded = deserialize_forward_backward_output(
        encode_forward_backward_output(tt.ForwardBackwardOutput("ArrayRecord", [{}, {}], {"loss": 0.5}))
    )
    assert decoded.loss_fn_outputs == [{}, {}]
    assert decoded.metrics == {"loss": 0.5}


# --- sample responses -----------------------------------------------------------------------------------------------


@st.composite
def topks(draw: st.DrawFn, length: int) -> TopkLogprobs:
    k = draw(st.integers(1, 3))
    return TopkLogprobs(
        token_ids=draw(hnp.arrays(np.int32, (length, k), elements=TOKENS)),
        logprobs=draw(hnp.arrays(np.float32, (length, k), elements=FLOAT32)),
    )


@st.composite
def sampled_sequences(draw: st.DrawFn) -> tt.SampledSequence:
    length = draw(st.integers(0, 6))
    tokens = draw(hnp.arrays(np.int32, (length,), elements=TOKENS))
    logprobs = draw(st.none() | hnp.arrays(np.float32, (length,), elements=FLOAT32))
    topk = draw(st.none() | topks(length))
    stop_reason = draw(st.sampled_from(STOP_REASONS))
    if draw(st.booleans()):  # the list form the SDK also accepts
        return tt.SampledSequence(
            stop_reason=stop_reason,
            sequence_id="s",
            _tokens_list=tokens.tolist(),
            _logprobs_list=None if logprobs is None else logprobs.tolist(),
            topk_logprobs_np=topk,
        )
    return tt.SampledSequence(
        stop_reason=stop_reason, sequence_id="s", tokens_np=tokens, logprobs_np=logprobs, topk_logprobs_np=topk
    )


@st.composite
def sample_responses(draw: st.DrawFn) -> tt.SampleResponse:
    prompt_length = draw(st.integers(1, 6))
    prompt = [None, *draw(st.lists(FLOAT32, min_size=prompt_length - 1, max_size=prompt_length - 1))]
    prompt_form = draw(st.sampled_from(["none", "numpy", "list"]))
    alt = None
    if draw(st.booleans()):
        k = draw(st.integers(1, 2))
        alt = tt.PromptAltTokens(
            tokens=tt.TensorData.from_numpy(draw(hnp.arrays(np.int64, (prompt_length - 1, k), elements=TOKENS))),
            logprobs=tt.TensorData.from_numpy(draw(hnp.arrays(np.float32, (prompt_length - 1, k), elements=FLOAT32))),
        )
    return tt.SampleResponse(
        sequences=draw(st.lists(sampled_sequences(), min_size=1, max_size=4)),
        prompt_logprobs_np=np.array([np.nan if v is None else v for v in prompt], np.float32)
        if prompt_form == "numpy"
        else None,
        _prompt_logprobs_list=prompt if prompt_form == "list" else None,
        topk_prompt_logprobs_np=draw(st.none() | topks(prompt_length)),
        target_prompt_logprobs=draw(st.none() | dense_tensors("float32", prompt_length) | csr_tensors("float32")),
        prompt_alt_tokens=alt,
        prompt_cache_hit_tokens=draw(st.integers(0, 1000)),
    )


def assert_topk_equal(actual: TopkLogprobs | None, expected: TopkLogprobs | None) -> None:
    if expected is None or expected.token_ids.size == 0:  # the SDK reads an empty matrix back as None
        assert actual is None
        return
    assert actual is not None
    assert actual.token_ids.dtype == np.int32
    assert np.array_equal(actual.token_ids, expected.token_ids)
    assert actual.logprobs.tobytes() == expected.logprobs.tobytes()


def _shaped(tensor: tt.TensorData) -> tt.TensorData:
    """``tensor`` as the wire carries it: the shape is always written."""
    if tensor.shape is not None:
        return tensor
    return tt.TensorData(data=tensor._numpy, dtype=tensor.dtype, shape=list(tensor._numpy.shape))


@settings(max_examples=40)
@given(response=sample_responses())
def test_the_sdk_reads_an_encoded_sample_response_back(response: tt.SampleResponse) -> None:
    decoded = deserialize_sample_response(encode_sample_response(response))
    assert len(decoded.sequences) == len(response.sequences)
    for actual, expected in zip(decoded.sequences, response.sequences, strict=True):
        assert actual.stop_reason == expected.stop_reason
        assert actual.tokens_np is not None
        assert actual.tokens_np.dtype == np.int32
        assert actual.tokens == expected.tokens
        assert actual.logprobs == (expected.logprobs or None)  # an empty list is read back as None
        assert_topk_equal(actual.topk_logprobs_np, expected.topk_logprobs_np)
    assert decoded.prompt_logprobs == response.prompt_logprobs  # None at the leading position, both ways
    assert_topk_equal(decoded.topk_prompt_logprobs_np, response.topk_prompt_logprobs_np)
    assert decoded.prompt_cache_hit_tokens == response.prompt_cache_hit_tokens
    if response.target_prompt_logprobs is None:
        assert decoded.target_prompt_logprobs is None
    else:
        assert decoded.target_prompt_logprobs is not None
        assert_tensor_equal(decoded.target_prompt_logprobs, _shaped(response.target_prompt_logprobs))
    if response.prompt_alt_tokens is None:
        assert decoded.prompt_alt_tokens is None
    else:
        assert decoded.prompt_alt_tokens is not None
        assert_tensor_equal(decoded.prompt_alt_tokens.tokens, response.prompt_alt_tokens.tokens)
        assert_tensor_equal(decoded.prompt_alt_tokens.logprobs, response.prompt_alt_tokens.logprobs)


def test_the_prompt_logprobs_carry_nan_for_the_missing_first_position() -> None:
    response = tt.SampleResponse(sequences=[], _prompt_logprobs_list=[None, -1.5, -0.25])
    msg = pb.SampleResponse.FromString(encode_sample_response(response))
    assert np.isnan(np.frombuffer(msg.prompt_logprobs, dtype=np.float32)[0])
    assert deserialize_sample_response(msg.SerializeToString()).prompt_logprobs == [None, -1.5, -0.25]


def test_sample_responses_the_wire_cannot_carry_are_refused() -> None:
    bad_stop = tt.SampleResponse(sequences=[tt.SampledSequence(stop_reason="eos", sequence_id="s")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"sequences\[0\]\.stop_reason: 'eos'"):
        encode_sample_response(bad_stop)
    listed = tt.SampledSequence(stop_reason="stop", sequence_id="s", _topk_logprobs_list=[[(1, -0.5)]])
    with pytest.raises(ValueError, match=r"sequences\[0\]\.topk_logprobs: the list form is not supported"):
        encode_sample_response(tt.SampleResponse(sequences=[listed]))
