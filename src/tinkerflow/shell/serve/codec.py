"""The server's half of the ``tinker==0.38.0`` protobuf wire format. (Shell: it imports ``tinker``.)

The SDK ships one direction of each conversion (``tinker.proto.request_conv`` encodes a forward/backward request,
``tinker.proto.response_conv`` decodes sample and forward/backward responses); this module is the inverse of both:

- :func:`maybe_decompress` undoes ``Content-Encoding: zstd`` (the SDK compresses large forward/backward bodies);
- :func:`decode_forward_backward_request` reads a ``ForwardBackwardRequest`` body into a
  :class:`DecodedForwardBackward` whose ``data`` are real ``tinker.types.Datum``;
- :func:`encode_forward_backward_output` and :func:`encode_sample_response` write the bytes that the SDK's
  ``deserialize_forward_backward_output`` and ``deserialize_sample_response`` read back into equal records.

A malformed body raises :class:`WireFormatError` (a ``ValueError``) naming the field at fault; the server answers it
with a 4xx. The encoders raise a plain ``ValueError`` for a record they cannot write (a server bug, not the client's).

What the wire (or the SDK's reader) cannot carry, so does not round-trip:

- ``SampledSequence.sequence_id`` (no proto field; the SDK client stamps it itself), the list form of top-k logprobs
  (refused: pass ``TopkLogprobs``), a top-k matrix with no rows or no columns (read back as ``None``), and an empty
  logprobs list (read back as ``None``, the reader tests the bytes for truth);
- a forward/backward output of a 0-d tensor (read back with shape ``[1]``), a tensor whose trailing dimensions hold
  no elements (read back with a leading dimension of 0), and a sparse output tensor (sent dense);
- in requests, a tensor of shape ``[]`` or ``None`` (both are an empty shape on the wire; read as ``shape=None``),
  empty provenance span lists (read as ``None``), and ``ImageChunk.override_dimensions`` (the public type has no
  such field; ignored).

Request tensors may also arrive as int32 or bfloat16 (widened to the public int64 and float32, as the SDK's reader
does). ``prompt_alt_tokens.tokens`` is written in its public int64 (the proto comment says int32; the SDK reads both).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple

import attrs
import numpy as np
import numpy.typing as npt
import tinker.types as tt
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # protobuf ships no stubs
from tinker.proto import tinker_public_pb2 as pb
from tinker.types.topk_logprobs import TopkLogprobs

__all__ = [
    "DecodedForwardBackward",
    "WireFormatError",
    "decode_forward_backward_request",
    "encode_forward_backward_output",
    "encode_sample_response",
    "maybe_decompress",
]

_Span = tt.PromptProvenanceSpan | tt.SampledProvenanceSpan
_Chunk = tt.EncodedTextChunk | tt.ImageChunk | tt.DmelChunk
_Array = npt.NDArray[Any]


class WireFormatError(ValueError):
    """A request body that is not the wire format: ``field`` names the part at fault, ``message`` what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@attrs.frozen
class DecodedForwardBackward:
    """A decoded ``ForwardBackwardRequest``: ``loss_fn_config`` is ``None`` when the request carried none."""

    model_id: str
    seq_id: int
    loss_fn: str
    forward_only: bool
    loss_fn_config: dict[str, float | str] | None
    data: list[tt.Datum]


class _WireDtype(NamedTuple):
    name: str
    storage: np.dtype[Any]
    public: Literal["float32", "int64"]


_WIRE_DTYPES: Final[Mapping[int, _WireDtype]] = {
    pb.DTYPE_FLOAT32: _WireDtype("float32", np.dtype(np.float32), "float32"),
    pb.DTYPE_INT64: _WireDtype("int64", np.dtype(np.int64), "int64"),
    pb.DTYPE_INT32: _WireDtype("int32", np.dtype(np.int32), "int64"),
    pb.DTYPE_BFLOAT16: _WireDtype("bfloat16", np.dtype(np.uint16), "float32"),
}
_INT32: Final = _WIRE_DTYPES[pb.DTYPE_INT32]
_INT64: Final = _WIRE_DTYPES[pb.DTYPE_INT64]
_PUBLIC_TO_WIRE: Final[Mapping[str, tuple[pb.DType.ValueType, np.dtype[Any]]]] = {
    "float32": (pb.DTYPE_FLOAT32, np.dtype(np.float32)),
    "int64": (pb.DTYPE_INT64, np.dtype(np.int64)),
}
_IMAGE_FORMATS: Final[Mapping[str, Literal["png", "jpeg"]]] = {"png": "png", "jpeg": "jpeg"}
_STOP_REASONS: Final[Mapping[str, pb.StopReason.ValueType]] = {
    "stop": pb.STOP_REASON_STOP,
    "length": pb.STOP_REASON_LENGTH,
}
_ZSTD_INPUT_SLICE: Final = 1 << 14


# --- request side ---------------------------------------------------------------------------------------------------


def maybe_decompress(body: bytes, content_encoding: str | None, *, max_size: int | None = None) -> bytes:
    """``body`` with its ``Content-Encoding`` undone: identity (``None``, ``""``, ``"identity"``) or ``"zstd"``.

    ``max_size`` (bytes) bounds the decompressed size, so a small body cannot expand without limit. Raises
    :class:`WireFormatError` for another encoding, corrupt zstd data or an oversized body, and a plain ``ValueError``
    when the body is zstd but the ``zstandard`` module is not installed.
    """
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "zstd":
        raise WireFormatError("Content-Encoding", f"{content_encoding!r} is not supported (send identity or zstd)")
    try:
        import zstandard
    except ImportError as exc:
        raise ValueError("Content-Encoding 'zstd' needs the zstandard module, which is not installed") from exc
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    parts: list[bytes] = []
    total = 0
    try:  # fed in slices so that the size bound is checked before a compressed bomb expands far past it
        for start in range(0, len(body), _ZSTD_INPUT_SLICE):
            part = decompressor.decompress(body[start : start + _ZSTD_INPUT_SLICE])
            total += len(part)
            if max_size is not None and total > max_size:
                raise WireFormatError("body", f"decompresses to more than {max_size} bytes")
            parts.append(part)
    except zstandard.ZstdError as exc:
        raise WireFormatError("body", f"not valid zstd data ({exc})") from exc
    if not decompressor.eof:
        raise WireFormatError("body", "the zstd data ends before its frame does")
    return b"".join(parts)


def decode_forward_backward_request(body: bytes) -> DecodedForwardBackward:
    """Read a (decompressed) ``ForwardBackwardRequest`` proto body; raises :class:`WireFormatError` if malformed."""
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except DecodeError as exc:
        raise WireFormatError("body", f"not a valid ForwardBackwardRequest protobuf ({exc})") from exc
    return DecodedForwardBackward(
        model_id=msg.model_id,
        seq_id=msg.seq_id,
        loss_fn=msg.loss_fn,
        forward_only=msg.forward_only,
        loss_fn_config=_decode_loss_fn_config(msg),
        data=[_decode_datum(datum, f"data[{i}]") for i, datum in enumerate(msg.data)],
    )


def _decode_loss_fn_config(msg: pb.ForwardBackwardRequest) -> dict[str, float | str] | None:
    """``loss_fn_config_v2`` when set, else the legacy float map, else ``None``."""
    if msg.loss_fn_config_v2:
        config: dict[str, float | str] = {}
        for key, value in msg.loss_fn_config_v2.items():
            arm = value.WhichOneof("value")
            if arm is None:
                raise WireFormatError(f"loss_fn_config_v2[{key!r}]", "neither number nor text is set")
            config[key] = value.text if arm == "text" else value.number
        return config
    if msg.loss_fn_config:
        return {key: float(value) for key, value in msg.loss_fn_config.items()}
    return None


def _decode_datum(msg: pb.Datum, path: str) -> tt.Datum:
    chunks: list[tt.ModelInputChunk] = [
        _decode_chunk(chunk, f"{path}.model_input[{j}]") for j, chunk in enumerate(msg.model_input)
    ]
    inputs = {name: _decode_tensor(t, f"{path}.loss_fn_inputs[{name!r}]") for name, t in msg.loss_fn_inputs.items()}
    has_spans = len(msg.model_input_spans) > 0 or len(msg.loss_fn_input_spans) > 0
    input_spans = [_decode_span(s, f"{path}.model_input_spans[{k}]") for k, s in enumerate(msg.model_input_spans)]
    loss_spans = [_decode_span(s, f"{path}.loss_fn_input_spans[{k}]") for k, s in enumerate(msg.loss_fn_input_spans)]
    try:
        return tt.Datum(
            model_input=tt.ModelInput(chunks=chunks),
            loss_fn_inputs=inputs,
            model_input_spans=input_spans if has_spans else None,
            loss_fn_input_spans=loss_spans if has_spans else None,
        )
    except (ValueError, TypeError, AssertionError) as exc:  # the SDK's own checks (pydantic's errors are ValueErrors)
        raise WireFormatError(path, str(exc)) from exc


def _decode_chunk(msg: pb.Chunk, path: str) -> _Chunk:
    kind = msg.WhichOneof("chunk")
    if kind == "encoded_text":
        tokens = _read(msg.encoded_text.tokens, _INT32, f"{path}.encoded_text.tokens")
        return tt.EncodedTextChunk(tokens=tokens.tolist())
    if kind == "image":
        image = msg.image
        image_format = _IMAGE_FORMATS.get(image.format)
        if image_format is None:
            raise WireFormatError(f"{path}.image.format", f"{image.format!r} is not 'png' or 'jpeg'")
        expected = image.expected_tokens if image.HasField("expected_tokens") else None
        return tt.ImageChunk(data=image.data, format=image_format, expected_tokens=expected)
    if kind == "dmel":
        return tt.DmelChunk(dmel=msg.dmel.dmel)
    raise WireFormatError(path, "the chunk sets none of encoded_text, image, dmel")


def _decode_span(msg: pb.ProvenanceSpan, path: str) -> _Span:
    arm = msg.WhichOneof("span")
    if arm is None:
        raise WireFormatError(path, "the span sets neither prompt_tokens nor sampled_tokens")
    inner = msg.prompt_tokens if arm == "prompt_tokens" else msg.sampled_tokens
    span_type = tt.PromptProvenanceSpan if arm == "prompt_tokens" else tt.SampledProvenanceSpan
    try:
        return span_type(sequence_id=inner.sequence_id, offset=inner.offset, length=inner.length)
    except ValueError as exc:
        raise WireFormatError(f"{path}.{arm}", str(exc)) from exc


def _decode_tensor(msg: pb.Tensor, path: str) -> tt.TensorData:
    dtype = _WIRE_DTYPES.get(msg.dtype)
    if dtype is None:
        raise WireFormatError(f"{path}.dtype", f"unknown dtype {msg.dtype}")
    shape = list(msg.shape)
    if any(dim < 0 for dim in shape):
        raise WireFormatError(f"{path}.shape", f"negative dimension in {shape}")
    if msg.WhichOneof("encoding") == "sparse_csr":
        return _decode_csr(msg.sparse_csr, dtype, shape, path)
    values = _read(msg.dense, dtype, path)
    if shape and values.size != math.prod(shape):
        raise WireFormatError(path, f"{values.size} {dtype.name} values for shape {shape}")
    try:
        return tt.TensorData(data=values, dtype=dtype.public, shape=shape or None)
    except ValueError as exc:  # numpy cannot make the shape (a dimension too large for an index)
        raise WireFormatError(f"{path}.shape", f"{shape} cannot be made: {exc}") from exc


def _decode_csr(msg: pb.SparseCsr, dtype: _WireDtype, shape: list[int], path: str) -> tt.TensorData:
    """A sparse CSR tensor, checked against torch's invariants so that densifying it later cannot fail."""
    if len(shape) != 2:
        raise WireFormatError(f"{path}.shape", f"a sparse CSR tensor needs a 2-D shape, got {shape}")
    nrows, ncols = shape
    values = _read(msg.values, dtype, f"{path}.sparse_csr.values")
    crow = _read(msg.crow_indices, _INT64, f"{path}.sparse_csr.crow_indices")
    col = _read(msg.col_indices, _INT64, f"{path}.sparse_csr.col_indices")
    nnz = values.size
    if crow.size != nrows + 1:
        raise WireFormatError(f"{path}.sparse_csr.crow_indices", f"{crow.size} entries for {nrows} rows (need rows+1)")
    if crow[0] != 0 or crow[-1] != nnz or np.any(np.diff(crow) < 0):
        raise WireFormatError(f"{path}.sparse_csr.crow_indices", f"must rise from 0 to the {nnz} values, got {crow}")
    if col.size != nnz:
        raise WireFormatError(f"{path}.sparse_csr.col_indices", f"{col.size} column indices for {nnz} values")
    if nnz and (col.min() < 0 or col.max() >= ncols):
        raise WireFormatError(f"{path}.sparse_csr.col_indices", f"an index is outside [0, {ncols})")
    steps = np.diff(col)
    same_row = np.ones(steps.size, dtype=bool)
    row_starts = crow[1:-1]
    same_row[row_starts[(row_starts > 0) & (row_starts < nnz)] - 1] = False
    if np.any(steps[same_row] <= 0):
        raise WireFormatError(f"{path}.sparse_csr.col_indices", "must be increasing within each row")
    return tt.TensorData(
        data=values,
        dtype=dtype.public,
        shape=shape,
        sparse_crow_indices=crow.tolist(),
        sparse_col_indices=col.tolist(),
    )


def _read(raw: bytes, dtype: _WireDtype, path: str) -> _Array:
    """``raw`` as a fresh writable array of the public dtype (int32 widened to int64, bfloat16 to float32)."""
    itemsize = dtype.storage.itemsize
    if len(raw) % itemsize:
        raise WireFormatError(path, f"{len(raw)} bytes is not a whole number of {dtype.name} values ({itemsize} each)")
    stored = np.frombuffer(raw, dtype=dtype.storage)
    if dtype.name == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.int64 if dtype.public == "int64" else np.float32)


# --- response side --------------------------------------------------------------------------------------------------


def encode_forward_backward_output(output: tt.ForwardBackwardOutput) -> bytes:
    """``output`` as ``ForwardBackwardOutput`` proto bytes: the per-datum outputs packed into ``ArrayRecord`` chunks
    (one per run of datums whose fields agree in dtype and trailing shape; one chunk in the usual case).

    Raises ``ValueError`` when the datums do not all have the same field names (the wire cannot carry that)."""
    msg = pb.ForwardBackwardOutput(loss_fn_output_type=output.loss_fn_output_type)
    for key, value in output.metrics.items():
        msg.metrics[key] = float(value)
    rows = [{name: _dense(td) for name, td in datum.items()} for datum in output.loss_fn_outputs]
    if not rows:
        return _serialized(msg)
    names = list(rows[0])
    for i, row in enumerate(rows):
        if set(row) != set(names):
            raise ValueError(f"loss_fn_outputs[{i}] has fields {sorted(row)}, loss_fn_outputs[0] {sorted(names)}")
    signatures = [tuple((row[name].dtype, row[name].shape[1:]) for name in names) for row in rows]
    ends = [i for i in range(1, len(rows)) if signatures[i] != signatures[i - 1]] + [len(rows)]
    start = 0
    for end in ends:
        record = msg.loss_fn_outputs.add()
        record.type_tag = output.loss_fn_output_type
        record.num_datums = end - start
        for name in names:
            _pack(record.fields[name], [row[name] for row in rows[start:end]])
        start = end
    return _serialized(msg)


def _pack(msg: pb.BatchedTensor, arrays: Sequence[_Array]) -> None:
    """Ragged per-datum arrays of one dtype and trailing shape as one ``BatchedTensor`` (byte offsets)."""
    first = arrays[0]
    msg.dtype = pb.DTYPE_FLOAT32 if first.dtype == np.float32 else pb.DTYPE_INT64
    msg.trailing_shape.extend(first.shape[1:])
    sizes = np.array([array.size for array in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(sizes * first.dtype.itemsize, out=offsets[1:])
    msg.offsets = offsets.tobytes()
    msg.data = np.concatenate([array.ravel() for array in arrays]).tobytes()


def _dense(td: tt.TensorData) -> _Array:
    """``td``'s values as a dense array of its public dtype (a sparse CSR tensor is densified with zeros)."""
    _, storage = _PUBLIC_TO_WIRE[td.dtype]
    values = np.asarray(td._numpy, dtype=storage)
    if td.sparse_crow_indices is None:
        return values
    if td.shape is None or td.sparse_col_indices is None:
        raise ValueError("a sparse CSR TensorData needs shape and sparse_col_indices")
    crow: npt.NDArray[np.int64] = np.asarray(td.sparse_crow_indices, dtype=np.int64)
    col: npt.NDArray[np.int64] = np.asarray(td.sparse_col_indices, dtype=np.int64)
    dense = np.zeros(td.shape, dtype=storage)
    dense[np.repeat(np.arange(td.shape[0]), np.diff(crow)), col] = values
    return dense


def encode_sample_response(response: tt.SampleResponse) -> bytes:
    """``response`` as ``SampleResponse`` proto bytes (see the module docstring for what does not round-trip).

    Raises ``ValueError`` for an unknown stop reason, list-form top-k logprobs or mismatched top-k matrices."""
    msg = pb.SampleResponse(prompt_cache_hit_tokens=response.prompt_cache_hit_tokens)
    for i, sequence in enumerate(response.sequences):
        _encode_sequence(msg.sequences.add(), sequence, f"sequences[{i}]")
    prompt_logprobs = _prompt_logprobs(response)
    if prompt_logprobs is not None:
        msg.prompt_logprobs = prompt_logprobs.tobytes()
    if response.topk_prompt_logprobs_np is not None:
        _encode_topk(msg.topk_prompt_logprobs, response.topk_prompt_logprobs_np, "topk_prompt_logprobs_np")
    elif response.topk_prompt_logprobs is not None:
        raise ValueError("topk_prompt_logprobs: the list form is not supported; set topk_prompt_logprobs_np")
    if response.target_prompt_logprobs is not None:
        _encode_tensor(msg.target_prompt_logprobs, response.target_prompt_logprobs, "target_prompt_logprobs")
    alt = response.prompt_alt_tokens
    if alt is not None:
        _encode_tensor(msg.prompt_alt_tokens.tokens, alt.tokens, "prompt_alt_tokens.tokens")
        _encode_tensor(msg.prompt_alt_tokens.logprobs, alt.logprobs, "prompt_alt_tokens.logprobs")
    return _serialized(msg)


def _encode_sequence(msg: pb.SampledSequence, sequence: tt.SampledSequence, path: str) -> None:
    stop_reason = _STOP_REASONS.get(sequence.stop_reason)
    if stop_reason is None:
        raise ValueError(f"{path}.stop_reason: {sequence.stop_reason!r} is not 'stop' or 'length'")
    msg.stop_reason = stop_reason
    tokens = sequence.tokens_np if sequence.tokens_np is not None else sequence.tokens
    msg.tokens = np.asarray(tokens, dtype=np.int32).tobytes()
    logprobs = sequence.logprobs_np if sequence.logprobs_np is not None else sequence.logprobs
    if logprobs is not None:
        msg.logprobs = np.asarray(logprobs, dtype=np.float32).tobytes()
    if sequence.topk_logprobs_np is not None:
        _encode_topk(msg.topk_sampled_logprobs, sequence.topk_logprobs_np, f"{path}.topk_logprobs_np")
    elif sequence.topk_logprobs is not None:
        raise ValueError(f"{path}.topk_logprobs: the list form is not supported; set topk_logprobs_np")


def _prompt_logprobs(response: tt.SampleResponse) -> _Array | None:
    """The prompt logprobs as float32 with NaN where the list form has ``None`` (the SDK reads NaN back as None)."""
    if response.prompt_logprobs_np is not None:
        return np.asarray(response.prompt_logprobs_np, dtype=np.float32)
    values = response.prompt_logprobs
    if values is None:
        return None
    cells = np.array(values, dtype=object).reshape(-1)
    cells[np.equal(cells, np.array(None, dtype=object))] = np.nan
    return cells.astype(np.float32)


def _serialized(msg: Any) -> bytes:
    data: bytes = msg.SerializeToString()
    return data


def _encode_topk(msg: pb.TopkLogprobs, topk: TopkLogprobs, path: str) -> None:
    token_ids = np.asarray(topk.token_ids, dtype=np.int32)
    logprobs = np.asarray(topk.logprobs, dtype=np.float32)
    if token_ids.ndim != 2 or token_ids.shape != logprobs.shape:
        raise ValueError(f"{path}: token_ids {token_ids.shape} and logprobs {logprobs.shape} must be (length, k) alike")
    msg.SetInParent()
    msg.length, msg.k = token_ids.shape
    msg.token_ids = token_ids.tobytes()
    msg.logprobs = logprobs.tobytes()


def _encode_tensor(msg: pb.Tensor, td: tt.TensorData, path: str) -> None:
    """``td`` as a ``Tensor`` in its own dtype, dense or sparse CSR as it is, with its shape always written."""
    wire_dtype, storage = _PUBLIC_TO_WIRE[td.dtype]
    values = np.asarray(td._numpy, dtype=storage)
    msg.dtype = wire_dtype
    if td.sparse_crow_indices is None:
        msg.shape.extend(td.shape if td.shape is not None else values.shape)
        msg.dense = values.tobytes()
        return
    if td.shape is None or td.sparse_col_indices is None:
        raise ValueError(f"{path}: a sparse CSR TensorData needs shape and sparse_col_indices")
    msg.shape.extend(td.shape)
    msg.sparse_csr.values = values.tobytes()
    msg.sparse_csr.crow_indices = np.asarray(td.sparse_crow_indices, dtype=np.int64).tobytes()
    msg.sparse_csr.col_indices = np.asarray(td.sparse_col_indices, dtype=np.int64).tobytes()
