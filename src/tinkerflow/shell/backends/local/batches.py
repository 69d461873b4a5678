"""Requests as tensors for the local backend: input checks, datum batches, micro-batches, packing. (Shell.)

Everything that checks a request runs in the caller's thread before anything is queued, so bad input raises from
the submitting call and no weights change. The tensor helpers run on the clients' worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import torch

from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SamplingParams
from tinkerflow.shell.backends.local.models import BaseModel
from tinkerflow.shell.backends.protocol import check_prompt

__all__ = [
    "Batch",
    "Packed",
    "check_room",
    "encode_data",
    "microbatches",
    "pack",
    "packed_inputs",
    "prompt_tokens",
    "resolve_device",
    "to_numpy",
]


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy of ``tensor`` (bf16/fp16 upcast to fp32)."""
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    array: np.ndarray = tensor.cpu().numpy()
    return array.copy()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or CUDA when available and the CPU otherwise; a device torch does not know, or a CUDA device
    this machine lacks, is a :class:`ConfigError` naming ``device`` (not a crash at the first tensor)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(
            "LocalBackend", "device", f"{device!r} is not a device ({error}).", "use cpu, cuda or cuda:N."
        ) from error
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise ConfigError(
                "LocalBackend",
                "device",
                f"{device!r}: this machine has {count} CUDA device(s).",
                "use cpu, or a CUDA device it has.",
            )
    return resolved


def _check_tokens(tokens: np.ndarray, vocab_size: int, where: str, field: str) -> None:
    if tokens.size and int(tokens.max()) >= vocab_size:
        bad = int(tokens.max())
        raise ValidationError(
            where,
            field,
            f"holds token id {bad}, outside the model's vocabulary of {vocab_size} ids.",
            "tokenize with this model's tokenizer.",
        )


def prompt_tokens(prompt: ModelInput, base: BaseModel, where: str) -> np.ndarray:
    """The prompt's tokens, checked: text only, non-empty, inside the vocabulary and the context."""
    check_prompt(prompt, where)
    if prompt.has_images:
        raise ValidationError(where, "prompt", "holds an image chunk; the local backend runs text-only models.")
    tokens = prompt.to_tokens()
    if tokens.size == 0:
        raise ValidationError(where, "prompt", "is empty.", "give at least one token.")
    _check_tokens(tokens, base.vocab_size, where, "prompt")
    if tokens.size > base.max_context:
        raise ValidationError(
            where,
            "prompt",
            f"has {tokens.size} tokens, longer than the model's context of {base.max_context}.",
            "shorten the prompt.",
        )
    return tokens


@attrs.frozen(eq=False)
class Batch:
    """Datums as token arrays, checked against the model."""

    data: tuple[Datum, ...]
    inputs_D: tuple[np.ndarray, ...]


def encode_data(data: Sequence[Datum], base: BaseModel, where: str) -> Batch:
    """The datums' input tokens, each checked: text only, inside the vocabulary and the context."""
    inputs: list[np.ndarray] = []
    for index, datum in enumerate(data):
        if datum.model_input.has_images:
            raise ValidationError(
                where, f"data[{index}].model_input", "holds an image chunk; the local backend runs text-only models."
            )
        tokens = datum.model_input.to_tokens()
        _check_tokens(tokens, base.vocab_size, where, f"data[{index}].model_input")
        _check_tokens(datum.target_tokens_T, base.vocab_size, where, f"data[{index}].target_tokens_T")
        if tokens.size > base.max_context:
            raise ValidationError(
                where,
                f"data[{index}].model_input",
                f"has {tokens.size} positions, more than the model's context of {base.max_context}.",
                "truncate it (supervised_datum(..., max_length=...)).",
            )
        inputs.append(tokens)
    return Batch(data=tuple(data), inputs_D=tuple(inputs))


def microbatches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Groups of datum indices whose padded size (count x longest) stays within ``budget`` tokens.

    Datums are taken longest first (ties in order), so each group holds sequences of similar length and the
    decoder's padding stays small; a datum longer than ``budget`` is a group of its own.
    """
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # longest first: the group's first datum is its longest
        if current and lengths[current[0]] * (len(current) + 1) > budget:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups


@attrs.frozen(eq=False)
class Packed:
    """The datums ``group`` as one decoder input and, packed without padding, their real positions.

    Attributes:
        ids: right-padded input ids ``[D, T]`` for the decoder (padding never affects the real positions:
            attention is causal).
        positions: indices into the flattened ``[D * T]`` of the real positions, datum after datum (``[N]``).
        targets: the target token of each real position (``[N]``).
        offsets: where each datum's positions start in ``[N]``, and ``N`` last (``D + 1`` values).
    """

    ids: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    offsets: tuple[int, ...]

    def split(self, values_N: torch.Tensor) -> list[torch.Tensor]:
        """``values_N`` (one per real position) cut into one tensor per datum."""
        return [values_N[start:end] for start, end in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


def pack(batch: Batch, group: Sequence[int], device: torch.device) -> Packed:
    """The datums ``group`` as a :class:`Packed` on ``device``."""
    lengths = [batch.inputs_D[index].size for index in group]
    longest = max(lengths)
    ids = np.zeros((len(group), longest), dtype=np.int64)
    for row, index in enumerate(group):
        ids[row, : lengths[row]] = batch.inputs_D[index]
    positions = np.concatenate([row * longest + np.arange(length) for row, length in enumerate(lengths)])
    targets = np.concatenate([batch.data[index].target_tokens_T for index in group]).astype(np.int64)
    offsets = (0, *np.cumsum(lengths).tolist())
    return Packed(
        ids=torch.from_numpy(ids).to(device),
        positions=torch.from_numpy(positions.astype(np.int64)).to(device),
        targets=torch.from_numpy(targets).to(device),
        offsets=tuple(int(offset) for offset in offsets),
    )


def packed_inputs(
    batch: Batch, group: Sequence[int], keys: Sequence[str], device: torch.device
) -> dict[str, torch.Tensor]:
    """The loss inputs ``keys`` of the datums ``group``, packed like :func:`pack`'s positions (``[N]`` each)."""
    result: dict[str, torch.Tensor] = {}
    for key in keys:
        values = np.concatenate([batch.data[index].loss_inputs()[key] for index in group]).astype(np.float32)
        result[key] = torch.from_numpy(values).to(device)
    return result


def check_room(prompt_size: int, params: SamplingParams, max_context: int, vocab_size: int) -> int:
    """The request's ``max_tokens`` (the room left by default), after the checks every sampling engine makes:
    the prompt plus ``max_tokens`` fit the context, stop tokens are in the vocabulary."""
    where = "sample"
    room = max_context - prompt_size
    max_tokens = params.max_tokens if params.max_tokens is not None else room
    if max_tokens > room or room <= 0:
        raise ValidationError(
            where,
            "prompt",
            f"{prompt_size} prompt tokens + max_tokens {max_tokens} exceed the model's context of {max_context}.",
            "shorten the prompt or lower max_tokens.",
        )
    for index, token in enumerate(params.stop_tokens):
        if token >= vocab_size:
            raise ValidationError(where, f"sampling_params.stop_tokens[{index}]", f"{token} is outside the vocabulary.")
    return max_tokens
