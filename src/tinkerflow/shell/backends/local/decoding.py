"""The pieces of the local sampler's decoding: token choice, prompt scores and KV-cache surgery. (Shell.)

* :func:`choose_tokens` draws one token per row from given uniforms (inverse CDF of ``softmax(logits / T)`` after
  top-k and top-p; argmax at temperature 0), so the randomness belongs to whoever drew the uniforms: a request's own
  generator, whatever else is in the batch.
* :class:`BatchCache` is the running batch's KV cache: a transformers ``DynamicCache`` whose rows are left-padded to
  one length, with the 0/1 mask of real positions. Rows join (:meth:`BatchCache.merge`) and leave
  (:meth:`BatchCache.select`) between decode steps; the columns no row needs any more are dropped.
"""

from __future__ import annotations

import math
from typing import Any, Final, cast

import numpy as np
import torch

from tinkerflow.sampling import SamplingParams
from tinkerflow.shell.backends.local.batches import to_numpy

__all__ = ["BatchCache", "choose_tokens", "left_padded", "output_cache", "score_prompt"]

#: Tinker's padding in top-k prompt logprobs where there is nothing to report (position 0).
_TOPK_PAD_LOGPROB: Final = -99999.0


def output_cache(output: object) -> object:
    """The KV cache a transformers forward pass returned (``cache`` from 5.2x on, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def score_prompt(
    logits: torch.Tensor, ids: torch.Tensor, topk: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Prompt logprobs (NaN at 0) and optionally the top-k per position (row 0 padded as Tinker pads)."""
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    scores = np.full(ids.shape[0], np.nan, dtype=np.float32)
    scores[1:] = to_numpy(logprobs.gather(1, ids[1:, None])[:, 0])
    if topk <= 0:
        return scores, None, None
    k = min(topk, logits.shape[-1])
    top = torch.topk(logprobs, k, dim=-1)
    topk_ids = np.zeros((ids.shape[0], k), dtype=np.int64)
    topk_lp = np.full((ids.shape[0], k), _TOPK_PAD_LOGPROB, dtype=np.float32)
    topk_ids[1:] = to_numpy(top.indices)
    topk_lp[1:] = to_numpy(top.values)
    return scores, topk_ids, topk_lp


def _filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``softmax(logits / T)`` per row after top-k and top-p (``T > 0``)."""
    scaled = logits / params.temperature
    vocab = scaled.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    if params.top_p < 1.0:
        ordered, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        drop = before > params.top_p
        drop[:, 0] = False
        scaled = scaled.scatter(1, order, ordered.masked_fill(drop, -math.inf))
    return torch.softmax(scaled, dim=-1)


def choose_tokens(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None) -> torch.Tensor:
    """One token per row of ``logits`` ``[R, V]``: the argmax at temperature 0 (``uniforms`` unused), else the token
    where ``uniforms[r]`` (in [0, 1)) falls in the row's cumulative distribution (float64, never a token of
    probability zero)."""
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
    if uniforms is None:
        raise ValueError("choose_tokens: sampling at a temperature needs uniforms")
    probs = _filtered_probs(logits.float(), params).double()
    cdf = torch.cumsum(probs, dim=-1)
    target = uniforms.to(device=cdf.device, dtype=cdf.dtype)[:, None] * cdf[:, -1:]
    index = torch.searchsorted(cdf, target, right=True)[:, 0]
    vocab = probs.shape[-1]
    last_possible = vocab - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(dim=-1)
    return torch.minimum(index, last_possible)


def left_padded(prompts: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, mask)`` ``[B, L]`` of ``prompts`` left-padded with token 0 (mask 0 on the padding)."""
    width = max(prompt.size for prompt in prompts)
    ids = np.zeros((len(prompts), width), dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - prompt.size :] = prompt
        mask[row, width - prompt.size :] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


def _plain_layers(cache: object) -> list[Any] | None:
    """The layers of a ``DynamicCache`` of plain full-attention layers (keys/values ``[B, H, L, D]``), else None."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers before the layered caches: rows are only selected, never merged
        return None
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list) or not layers:
        return None
    return layers if all(type(layer) is DynamicLayer for layer in layers) else None


def _pad_columns(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class BatchCache:
    """The running batch's KV cache and its mask of real positions ``[B, L]`` (rows left-padded).

    ``mergeable`` is false for caches this class cannot splice (sliding-window, hybrid or older transformers
    caches): such a batch holds one request's rows at a time, which only leave it.
    """

    def __init__(self, cache: object, mask: torch.Tensor) -> None:
        self.cache: Any = cache  # a transformers Cache
        self.mask = mask
        self.mergeable = _plain_layers(cache) is not None

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def merge(self, *others: BatchCache) -> None:
        """Append ``others``' rows, in order (all padded on the left to the longest length; one copy)."""
        mine = _plain_layers(self.cache)
        theirs = [_plain_layers(other.cache) for other in others]
        if mine is None or any(layers is None or len(layers) != len(mine) for layers in theirs):
            raise ValueError("BatchCache.merge: these caches cannot be merged")
        width = max(cache.mask.shape[1] for cache in (self, *others))
        for index, layer in enumerate(mine):
            parts = [layer, *(cast("list[Any]", layers)[index] for layers in theirs)]
            layer.keys = torch.cat([_pad_columns(part.keys, width, 2) for part in parts])
            layer.values = torch.cat([_pad_columns(part.values, width, 2) for part in parts])
        self.mask = torch.cat([_pad_columns(cache.mask, width, 1) for cache in (self, *others)])

    def lengths(self) -> list[int]:
        """Each row's count of real positions (its real keys are the last ones: rows are left-padded)."""
        return cast("list[int]", self.mask.sum(dim=1).tolist())

    def select(self, rows: torch.Tensor) -> None:
        """Keep ``rows`` (indices, in this order; repeats copy a row), then drop the leading columns no row uses."""
        self.mask = self.mask[rows]
        layers = _plain_layers(self.cache)
        if layers is None:
            self.cache.batch_select_indices(rows)
            return
        first = int(self.mask.argmax(dim=1).min()) if self.mask.shape[1] else 0
        for layer in layers:
            layer.keys = layer.keys[rows, :, first:]
            layer.values = layer.values[rows, :, first:]
        self.mask = self.mask[:, first:]

    def extend(self) -> torch.Tensor:
        """The mask for a decode step (one more real column per row), kept as the batch's mask."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        return self.mask
