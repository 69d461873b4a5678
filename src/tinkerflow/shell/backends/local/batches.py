"""Requests as tensors for the local backend: input checks, datum batches, micro-batches, padding. (Shell.)

Everything that checks a request runs in the caller's thread before anything is queued, so bad input raises from
the submitting call and no weights change. The tensor helpers run on the clients' worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import torch

from tinkerflow.datum import Datum
from tinkerflow.errors import ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.shell.backends.local.models import BaseModel
from tinkerflow.shell.backends.protocol import check_prompt

__all__ = [
    "Batch",
    "encode_data",
    "loss_inputs",
    "microbatches",
    "padded",
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
    """``device``, or CUDA when available and the CPU otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    """Consecutive groups of datum indices whose padded size (count x longest) stays within ``budget`` tokens."""
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index, length in enumerate(lengths):
        candidate = max(longest, length)
        if current and candidate * (len(current) + 1) > budget:
            groups.append(current)
            current, candidate = [], length
        current.append(index)
        longest = candidate
    if current:
        groups.append(current)
    return groups


def padded(batch: Batch, group: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, targets and a validity mask for the datums ``group`` (padding never affects the
    real positions: attention is causal)."""
    longest = max(batch.inputs_D[index].size for index in group)
    ids = np.zeros((len(group), longest), dtype=np.int64)
    targets = np.zeros((len(group), longest), dtype=np.int64)
    mask = np.zeros((len(group), longest), dtype=bool)
    for row, index in enumerate(group):
        length = batch.inputs_D[index].size
        ids[row, :length] = batch.inputs_D[index]
        targets[row, :length] = batch.data[index].target_tokens_T
        mask[row, :length] = True
    return torch.from_numpy(ids).to(device), torch.from_numpy(targets).to(device), torch.from_numpy(mask).to(device)


def loss_inputs(
    batch: Batch, group: Sequence[int], keys: Sequence[str], shape: torch.Size, device: torch.device
) -> dict[str, torch.Tensor]:
    """The loss inputs ``keys`` of the datums ``group``, right-padded with zeros to ``shape``."""
    result: dict[str, torch.Tensor] = {}
    for key in keys:
        array = np.zeros(tuple(shape), dtype=np.float32)
        for row, index in enumerate(group):
            values = batch.data[index].loss_inputs()[key]
            array[row, : values.shape[0]] = values
        result[key] = torch.from_numpy(array).to(device)
    return result
