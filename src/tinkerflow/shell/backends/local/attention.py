"""Attention implementations the local engine registers with transformers, and switching a model to one. (Shell.)

:func:`train_attention` (``"tinkerflow_train"``) is the causal self-attention of bf16/fp16 training passes, written
as three batched products (``baddbmm`` with the causal mask as its addend, ``softmax``, ``bmm``) over the query
heads that share a key/value head. On the CPU it measured about twice as fast as PyTorch's flash-attention kernel
for these shapes, forward and backward (figures in docs/backends.md). Its scores are rounded to the input's dtype
before the softmax, as transformers' ``eager`` attention does (the flash kernel keeps them in fp32), and it holds
one layer's ``[heads, tokens, tokens]`` probabilities for the backward pass, so the training client uses it only
on the CPU (GPUs have fast flash kernels), with a bf16/fp16 base and activation checkpointing (one layer's
probabilities at a time), and only up to :data:`MAX_SCORES` scores per call. Everything else (fp32, a mask,
decoding, dropout, soft-capping, attention sinks, longer passes) goes to transformers' ``sdpa`` unchanged.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from typing import Any, Final, cast

import torch

__all__ = [
    "MAX_SCORES",
    "TRAIN_ATTENTION",
    "causal_attention",
    "switch_attention",
    "train_attention",
    "use_train_attention",
]

#: The attention implementation name :func:`use_train_attention` registers with transformers.
TRAIN_ATTENTION: Final = "tinkerflow_train"

#: Dtypes :func:`train_attention` computes itself (for the others the flash kernel is as fast or faster).
_LOW_PRECISION: Final = (torch.bfloat16, torch.float16)

#: The most attention scores (``batch x heads x tokens x tokens``) :func:`train_attention` materializes at once
#: (128 MB in bf16; an 8 x 512 step's 2,048-token pass of SmolLM2 holds 9.4 million); longer passes go to ``sdpa``,
#: whose memory grows with the tokens, not their square.
MAX_SCORES: Final = 1 << 26

#: Keyword arguments that change attention beyond a causal mask: their presence sends a call to ``sdpa``.
_SPECIAL: Final = ("softcap", "s_aux", "sinks", "position_bias", "output_attentions")

_registered = threading.Lock()

AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def switch_attention(model: torch.nn.Module, name: str, function: AttentionFunction) -> bool:
    """Register ``function`` with transformers as attention implementation ``name`` (once, with the ``sdpa`` mask
    builder) and switch ``model`` to it; False, model untouched, where the model's attention is not ``sdpa`` or
    ``name`` already. The model gets its own copies of its configs (models built on the same base weights share
    the config object, and the others keep their attention)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    holders = [sub for sub in model.modules() if hasattr(getattr(sub, "config", None), "_attn_implementation")]
    originals: dict[int, Any] = {id(sub.config): sub.config for sub in holders}  # PretrainedConfig (untyped)
    if not originals or any(config._attn_implementation not in ("sdpa", name) for config in originals.values()):
        return False
    with _registered:
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, function)
            AttentionMaskInterface.register(name, sdpa_mask)
    copies = {key: copy.copy(config) for key, config in originals.items()}
    for config in copies.values():
        config._attn_implementation = name
    for sub in holders:
        sub.config = copies[id(sub.config)]
    return True


def use_train_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` to :func:`train_attention`; whether it was switched (see :func:`switch_attention`)."""
    return switch_attention(model, TRAIN_ATTENTION, train_attention)


@functools.lru_cache(maxsize=4)
def _causal_addend(length: int, groups: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[groups * length, length]``: 0 on and below the diagonal, -inf above, once per query head of a group."""
    mask = torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu(1)
    return mask.repeat(groups, 1)


def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal softmax attention, ``[B, H, T, D]`` queries over ``[B, KV, T, D]`` keys and values (``H`` a multiple
    of ``KV``; query head ``h`` reads key/value head ``h // (H // KV)``, as transformers' ``repeat_kv``): ``[B, H,
    T, D]``. The ``H // KV`` query heads of a key/value head are stacked into one ``[H // KV * T, T]`` product."""
    batch, heads, length, width = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    stacked = query.reshape(batch * kv_heads, groups * length, width)
    keys = key.reshape(batch * kv_heads, length, width).transpose(1, 2)
    addend = _causal_addend(length, groups, query.dtype, query.device).expand(batch * kv_heads, -1, -1)
    probabilities = torch.softmax(torch.baddbmm(addend, stacked, keys, alpha=scale), dim=-1)
    out = torch.bmm(probabilities, value.reshape(batch * kv_heads, length, width))
    return out.view(batch, heads, length, width)


def _sdpa() -> AttentionFunction:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return cast("AttentionFunction", ALL_ATTENTION_FUNCTIONS["sdpa"])


def train_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: :func:`causal_attention` for an unmasked causal bf16/fp16 pass over as
    many queries as keys, transformers' ``sdpa`` otherwise. Returns ``([B, T, H, D], None)`` as ``sdpa`` does."""
    causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", True))
    length = query.shape[2]
    own = (
        attention_mask is None
        and causal
        and dropout == 0.0
        and length > 1
        and key.shape[2] == length
        and query.dtype in _LOW_PRECISION
        and key.dtype == query.dtype
        and query.shape[1] % key.shape[1] == 0
        and query.shape[0] * query.shape[1] * length * length <= MAX_SCORES
        and all(kwargs.get(name) in (None, False) for name in _SPECIAL)
    )
    if not own:
        out, _ = _sdpa()(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
        return out, None
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return causal_attention(query, key, value, scale).transpose(1, 2).contiguous(), None
