"""Batch-invariant decoding for the local sampler: a sequence's numbers do not depend on what is batched with it.
(Shell: torch and transformers.)

A running batch shares each decode step's matrix products, so a sequence's logits would normally depend on the
batch's shape: BLAS kernels pick their blocking (and so the order of a dot product's additions) by the number of
rows. Two measures make a row's result the same whatever else runs beside it, bit for bit:

* **Rows in multiples of four.** The CPU kernels this engine was measured on compute a row of a ``[M, K] @ [K, N]``
  product identically for every ``M`` in ``{4, 8}`` and ``M >= 12`` (and differently for the other small ``M``).
  The scheduler therefore pads its decode batch to a multiple of four rows (:func:`padded_rows`), with copies of a
  live row whose results it discards. :func:`rows_are_invariant` checks the property on this machine, for the
  model's own matrix shapes, before the scheduler relies on it; where it fails, the scheduler serves one request at
  a time instead (see ``Scheduler``).
* **Attention row by row.** With rows left-padded to one cache length, a batched attention would reduce over a
  different number of (masked) key positions than the sequence alone. :func:`row_attention` (registered with
  transformers as the ``"tinkerflow_rows"`` attention implementation) computes each row's attention over exactly
  its own key positions, contiguous, as the sequence alone does. Outside the sampler's engine (training, a plain
  forward pass) it is transformers' ``sdpa`` attention, the one it replaces.

Prefill runs one request at a time, so a prompt's numbers never depend on other prompts either.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import torch

__all__ = ["ROW_ATTENTION", "padded_rows", "row_lengths", "rows_are_invariant", "use_row_attention"]

#: The attention implementation name this module registers with transformers.
ROW_ATTENTION: Final = "tinkerflow_rows"

#: Row counts are padded to a multiple of this.
ROW_MULTIPLE: Final = 4

_state = threading.local()
_registered = threading.Lock()


def padded_rows(rows: int) -> int:
    """``rows`` rounded up to a multiple of :data:`ROW_MULTIPLE` (``0`` stays ``0``)."""
    return -(-rows // ROW_MULTIPLE) * ROW_MULTIPLE


class row_lengths:  # noqa: N801  (a context manager used like a function)
    """Within this block, on this thread, row attention uses the last ``lengths[b]`` key positions of row ``b``
    (``None``: every position, causal when there are as many queries as keys)."""

    def __init__(self, lengths: Sequence[int] | None) -> None:
        self._lengths = None if lengths is None else list(lengths)

    def __enter__(self) -> None:
        self._previous = getattr(_state, "lengths", None)
        self._active = getattr(_state, "active", False)
        _state.lengths = self._lengths
        _state.active = True

    def __exit__(self, *exc: object) -> None:
        _state.lengths = self._previous
        _state.active = self._active


def row_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention-function signature: ``query [B, H, T, D]``, ``key``/``value`` ``[B, Hkv, S, D]``;
    returns ``[B, T, H, D]``. Per row over its own keys inside :class:`row_lengths`, else the original function."""
    if not getattr(_state, "active", False):
        return _fallback(module)(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    lengths: list[int] | None = _state.lengths
    rows, _, queries, _ = query.shape
    keys = key.shape[2]
    groups = query.shape[1] // key.shape[1]
    outputs = []
    for row in range(rows):
        length = keys if lengths is None else lengths[row]
        first = keys - length
        q = query[row : row + 1].contiguous()
        k = key[row : row + 1, :, first:].contiguous()
        v = value[row : row + 1, :, first:].contiguous()
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=queries > 1, scale=scaling, enable_gqa=groups > 1
        )
        outputs.append(out)
    return torch.cat(outputs).transpose(1, 2).contiguous(), None


def _fallback(module: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return cast("Callable[..., tuple[torch.Tensor, torch.Tensor | None]]", ALL_ATTENTION_FUNCTIONS["sdpa"])


def use_row_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` to :func:`row_attention` (registering it once); False, model untouched, where its
    attention implementation is not PyTorch's SDPA, which this module stands in for (it then keeps its own)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    holders = [sub for sub in model.modules() if hasattr(getattr(sub, "config", None), "_attn_implementation")]
    originals: dict[int, Any] = {id(sub.config): sub.config for sub in holders}  # PretrainedConfig (untyped)
    if not originals or any(
        config._attn_implementation not in ("sdpa", ROW_ATTENTION) for config in originals.values()
    ):
        return False
    with _registered:
        if ROW_ATTENTION not in AttentionInterface._global_mapping:
            AttentionInterface.register(ROW_ATTENTION, row_attention)
            AttentionMaskInterface.register(ROW_ATTENTION, sdpa_mask)
    # the model's own copies of its configs: models built on the same base weights share the config object, and
    # training models must keep plain SDPA
    copies = {key: copy.copy(config) for key, config in originals.items()}
    for config in copies.values():
        config._attn_implementation = ROW_ATTENTION
    for sub in holders:
        sub.config = copies[id(sub.config)]
    return True


def rows_are_invariant(model: torch.nn.Module, max_rows: int, *, seed: int = 0) -> bool:
    """Whether this machine's matrix products give a row the same bits for every padded row count up to
    ``max_rows``, for each distinct ``nn.Linear`` shape of ``model`` (checked on random data of that shape, the
    output width capped at 4096 columns: the kernels block rows, not columns, by ``M``)."""
    shapes = sorted(
        {
            (min(module.out_features, 4096), module.in_features, module.weight.dtype, module.weight.device)
            for module in model.modules()
            if isinstance(module, torch.nn.Linear)
        },
        key=str,
    )
    counts = sorted({ROW_MULTIPLE, 2 * ROW_MULTIPLE, *range(3 * ROW_MULTIPLE, padded_rows(max_rows) + 1, 4)})
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for out_features, in_features, dtype, device in shapes:
            weight = torch.randn(out_features, in_features, generator=generator).to(dtype=dtype, device=device)
            inputs = torch.randn(counts[-1], in_features, generator=generator).to(dtype=dtype, device=device)
            full = torch.nn.functional.linear(inputs, weight)
            for count in counts[:-1]:
                if not torch.equal(torch.nn.functional.linear(inputs[:count], weight), full[:count]):
                    return False
    return True
