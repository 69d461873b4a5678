"""Exact conversion between tinkerflow records and the ``tinker`` SDK's types (``tinker.types``).

This is the boundary with the Tinker service. ``tinker`` is imported inside each function, so importing this module
(and ``tinkerflow``) stays light. Every conversion is exact in both directions for everything tinkerflow models;
values the SDK can express and tinkerflow cannot (image asset pointers, unknown loss-input keys, sparse tensors)
raise :class:`~tinkerflow.errors.InteropError` rather than being dropped.

Normalizations (the only places where SDK -> tinkerflow -> SDK is not the identity): a ``SamplingParams.stop`` of a
single string becomes a one-element list and ``[]`` becomes ``None``; list-backed SDK sequences come back
numpy-backed; ``Datum.mask`` is not sent to the service unless ``keep_mask=True``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, cast

import attrs
import numpy as np

from tinkerflow.datum import LOSS_INPUT_FIELDS, Datum
from tinkerflow.errors import InteropError
from tinkerflow.model_input import Chunk, ImageChunk, ModelInput, TokenChunk
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams
from tinkerflow.training import AdamParams, ForwardBackwardOutput, LossFnOutput

if TYPE_CHECKING:
    import tinker.types as tt
    from tinker.types.topk_logprobs import TopkLogprobs

__all__ = [
    "adam_params_from_tinker",
    "adam_params_to_tinker",
    "datum_from_tinker",
    "datum_to_tinker",
    "forward_backward_output_from_tinker",
    "forward_backward_output_to_tinker",
    "model_input_from_tinker",
    "model_input_to_tinker",
    "sample_response_from_tinker",
    "sample_response_to_tinker",
    "sampled_sequence_from_tinker",
    "sampled_sequence_to_tinker",
    "sampling_params_from_tinker",
    "sampling_params_to_tinker",
    "tensor_from_tinker",
    "tensor_to_tinker",
]


def model_input_to_tinker(model_input: ModelInput) -> tt.ModelInput:
    """tinkerflow ``ModelInput`` -> ``tinker.types.ModelInput`` (token chunks become ``EncodedTextChunk``)."""
    import tinker.types as tt

    chunks: list[tt.EncodedTextChunk | tt.ImageChunk] = []
    for chunk in model_input.chunks:
        if isinstance(chunk, TokenChunk):
            chunks.append(tt.EncodedTextChunk(tokens=chunk.tokens_T.tolist()))
        else:
            chunks.append(tt.ImageChunk(data=chunk.data, format=chunk.format, expected_tokens=chunk.expected_tokens))
    return tt.ModelInput(chunks=list(chunks))


def model_input_from_tinker(model_input: tt.ModelInput) -> ModelInput:
    """``tinker.types.ModelInput`` -> tinkerflow ``ModelInput``."""
    import tinker.types as tt

    chunks: list[Chunk] = []
    for index, chunk in enumerate(model_input.chunks):
        if isinstance(chunk, tt.EncodedTextChunk):
            chunks.append(TokenChunk(tokens_T=list(chunk.tokens)))
        elif isinstance(chunk, tt.ImageChunk):
            if chunk.expected_tokens is None:
                raise InteropError(
                    f"ModelInput.chunks[{index}]: image chunk without expected_tokens; set it (the number of "
                    "positions the image occupies) so lengths are known."
                )
            chunks.append(ImageChunk(data=chunk.data, format=chunk.format, expected_tokens=chunk.expected_tokens))
        else:
            raise InteropError(
                f"ModelInput.chunks[{index}]: {type(chunk).__name__} has no tinkerflow counterpart; "
                "use encoded text or inline image chunks."
            )
    return ModelInput(chunks=tuple(chunks))


def tensor_to_tinker(array: np.ndarray) -> tt.TensorData:
    """A 1-D/2-D int64 or float32 array -> ``TensorData`` (same dtype and shape)."""
    import tinker.types as tt

    return tt.TensorData(data=array, dtype="int64" if array.dtype.kind in "iu" else "float32", shape=list(array.shape))


def tensor_from_tinker(tensor: tt.TensorData, where: str) -> np.ndarray:
    """``TensorData`` -> numpy array, refusing sparse tensors."""
    if tensor.sparse_crow_indices is not None:
        raise InteropError(f"{where}: sparse TensorData is not supported; send it dense.")
    return tensor.to_numpy()


def datum_to_tinker(datum: Datum, *, keep_mask: bool = False) -> tt.Datum:
    """tinkerflow ``Datum`` -> ``tinker.types.Datum``; loss inputs keyed by their Tinker names.

    ``mask`` is tinkerflow bookkeeping and is left out unless ``keep_mask`` (the service masks by zero advantages).
    """
    import tinker.types as tt

    inputs = {key: tensor_to_tinker(array) for key, array in datum.loss_inputs().items() if keep_mask or key != "mask"}
    return tt.Datum(model_input=model_input_to_tinker(datum.model_input), loss_fn_inputs=inputs)


def datum_from_tinker(datum: tt.Datum) -> Datum:
    """``tinker.types.Datum`` -> tinkerflow ``Datum`` (validated). Unknown loss-input keys raise."""
    fields: dict[str, np.ndarray] = {}
    for key, tensor in datum.loss_fn_inputs.items():
        name = LOSS_INPUT_FIELDS.get(key)
        if name is None:
            raise InteropError(
                f"Datum.loss_fn_inputs[{key!r}]: unknown loss input; tinkerflow knows {sorted(LOSS_INPUT_FIELDS)}."
            )
        fields[name] = tensor_from_tinker(tensor, f"Datum.loss_fn_inputs[{key!r}]")
    if "target_tokens_T" not in fields:
        raise InteropError("Datum.loss_fn_inputs: 'target_tokens' is missing; every loss needs it.")
    return Datum(model_input=model_input_from_tinker(datum.model_input), **fields)


def sampling_params_to_tinker(params: SamplingParams) -> tt.SamplingParams:
    """tinkerflow ``SamplingParams`` -> ``tinker.types.SamplingParams``."""
    import tinker.types as tt

    stop: list[str] | list[int] | None
    if params.stop_strings:
        stop = list(params.stop_strings)
    elif params.stop_tokens:
        stop = list(params.stop_tokens)
    else:
        stop = None
    return tt.SamplingParams(
        max_tokens=params.max_tokens,
        seed=params.seed,
        stop=stop,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
    )


def sampling_params_from_tinker(params: tt.SamplingParams) -> SamplingParams:
    """``tinker.types.SamplingParams`` -> tinkerflow ``SamplingParams`` (stop split into strings or token ids)."""
    stop = params.stop
    stop_strings: tuple[str, ...] = ()
    stop_tokens: tuple[int, ...] = ()
    if isinstance(stop, str):
        stop_strings = (stop,)
    elif stop:
        items = list(stop)
        if all(isinstance(item, str) for item in items):
            stop_strings = tuple(cast("list[str]", items))
        elif all(isinstance(item, int) and not isinstance(item, bool) for item in items):
            stop_tokens = tuple(cast("list[int]", items))
        else:
            raise InteropError("SamplingParams.stop: mixes strings and token ids; Tinker takes one kind.")
    return SamplingParams(
        max_tokens=params.max_tokens,
        temperature=float(params.temperature),
        top_p=float(params.top_p),
        top_k=params.top_k,
        stop_strings=stop_strings,
        stop_tokens=stop_tokens,
        seed=params.seed,
    )


def _topk_from_tinker(topk: TopkLogprobs | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    if topk is None:
        return None, None
    return topk.token_ids, topk.logprobs


def _topk_to_tinker(ids: np.ndarray | None, logprobs: np.ndarray | None) -> TopkLogprobs | None:
    if ids is None or logprobs is None:
        return None
    from tinker.types.topk_logprobs import TopkLogprobs

    return TopkLogprobs(token_ids=ids.astype(np.int32), logprobs=logprobs.astype(np.float32))


def sampled_sequence_from_tinker(sequence: tt.SampledSequence) -> SampledSequence:
    """``tinker.types.SampledSequence`` -> tinkerflow ``SampledSequence``."""
    tokens = sequence.tokens_np if sequence.tokens_np is not None else sequence.tokens
    logprobs = sequence.logprobs_np if sequence.logprobs_np is not None else sequence.logprobs
    if sequence.topk_logprobs_np is None and sequence.topk_logprobs is not None:
        raise InteropError("SampledSequence.topk_logprobs: list form is not supported; request numpy top-k logprobs.")
    topk_ids, topk_logprobs = _topk_from_tinker(sequence.topk_logprobs_np)
    return SampledSequence(
        tokens_T=tokens,
        stop_reason=sequence.stop_reason,
        logprobs_T=logprobs,
        sequence_id=sequence.sequence_id,
        topk_token_ids_T_K=topk_ids,
        topk_logprobs_T_K=topk_logprobs,
    )


def sampled_sequence_to_tinker(sequence: SampledSequence) -> tt.SampledSequence:
    """tinkerflow ``SampledSequence`` -> ``tinker.types.SampledSequence`` (int32 tokens, float32 logprobs)."""
    import tinker.types as tt

    return tt.SampledSequence(
        stop_reason=sequence.stop_reason,
        sequence_id=sequence.sequence_id,
        tokens_np=sequence.tokens_T.astype(np.int32),
        logprobs_np=None if sequence.logprobs_T is None else sequence.logprobs_T.copy(),
        topk_logprobs_np=_topk_to_tinker(sequence.topk_token_ids_T_K, sequence.topk_logprobs_T_K),
    )


def sample_response_from_tinker(response: tt.SampleResponse) -> SampleResponse:
    """``tinker.types.SampleResponse`` -> tinkerflow ``SampleResponse`` (missing prompt logprobs become NaN)."""
    prompt: object = response.prompt_logprobs_np
    if prompt is None and response.prompt_logprobs is not None:
        prompt = [np.nan if value is None else value for value in response.prompt_logprobs]
    if response.topk_prompt_logprobs_np is None and response.topk_prompt_logprobs is not None:
        raise InteropError("SampleResponse.topk_prompt_logprobs: list form is not supported; use the numpy form.")
    topk_ids, topk_logprobs = _topk_from_tinker(response.topk_prompt_logprobs_np)
    return SampleResponse(
        sequences=tuple(sampled_sequence_from_tinker(sequence) for sequence in response.sequences),
        prompt_logprobs_T=prompt,
        topk_prompt_token_ids_T_K=topk_ids,
        topk_prompt_logprobs_T_K=topk_logprobs,
    )


def sample_response_to_tinker(response: SampleResponse) -> tt.SampleResponse:
    """tinkerflow ``SampleResponse`` -> ``tinker.types.SampleResponse``."""
    import tinker.types as tt

    return tt.SampleResponse(
        sequences=[sampled_sequence_to_tinker(sequence) for sequence in response.sequences],
        prompt_logprobs_np=None if response.prompt_logprobs_T is None else response.prompt_logprobs_T.copy(),
        topk_prompt_logprobs_np=_topk_to_tinker(response.topk_prompt_token_ids_T_K, response.topk_prompt_logprobs_T_K),
    )


_OUTPUT_KEYS = {"logprobs": "logprobs_T", "elementwise_loss": "elementwise_loss_T"}


def forward_backward_output_from_tinker(output: tt.ForwardBackwardOutput) -> ForwardBackwardOutput:
    """``tinker.types.ForwardBackwardOutput`` -> tinkerflow ``ForwardBackwardOutput``."""
    outputs: list[LossFnOutput] = []
    for index, item in enumerate(output.loss_fn_outputs):
        fields: dict[str, np.ndarray] = {}
        for key, tensor in item.items():
            name = _OUTPUT_KEYS.get(key)
            if name is None:
                raise InteropError(
                    f"ForwardBackwardOutput.loss_fn_outputs[{index}][{key!r}]: unknown output; "
                    f"tinkerflow knows {sorted(_OUTPUT_KEYS)}."
                )
            fields[name] = tensor_from_tinker(tensor, f"ForwardBackwardOutput.loss_fn_outputs[{index}][{key!r}]")
        if "logprobs_T" not in fields:
            raise InteropError(f"ForwardBackwardOutput.loss_fn_outputs[{index}]: no 'logprobs'.")
        outputs.append(LossFnOutput(**fields))
    return ForwardBackwardOutput(
        loss_fn_outputs=tuple(outputs),
        metrics=dict(output.metrics),
        loss_fn_output_type=output.loss_fn_output_type,
    )


def forward_backward_output_to_tinker(output: ForwardBackwardOutput) -> tt.ForwardBackwardOutput:
    """tinkerflow ``ForwardBackwardOutput`` -> ``tinker.types.ForwardBackwardOutput``."""
    import tinker.types as tt

    items: list[dict[str, tt.TensorData]] = []
    for item in output.loss_fn_outputs:
        converted = {"logprobs": tensor_to_tinker(item.logprobs_T)}
        if item.elementwise_loss_T is not None:
            converted["elementwise_loss"] = tensor_to_tinker(item.elementwise_loss_T)
        items.append(converted)
    return tt.ForwardBackwardOutput(
        loss_fn_output_type=output.loss_fn_output_type, loss_fn_outputs=items, metrics=dict(output.metrics)
    )


#: The fields Adam's parameters share on both sides, in order.
_ADAM_FIELDS: Final[tuple[str, ...]] = tuple(field.name for field in attrs.fields(AdamParams))


def adam_params_to_tinker(params: AdamParams) -> tt.AdamParams:
    """tinkerflow ``AdamParams`` -> ``tinker.types.AdamParams``."""
    import tinker.types as tt

    return tt.AdamParams(**{name: getattr(params, name) for name in _ADAM_FIELDS})


def adam_params_from_tinker(params: tt.AdamParams) -> AdamParams:
    """``tinker.types.AdamParams`` -> tinkerflow ``AdamParams``."""
    return AdamParams(**{name: getattr(params, name) for name in _ADAM_FIELDS})
