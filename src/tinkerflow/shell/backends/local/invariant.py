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

Prompts admitted together are prefilled in one left-padded forward pass whose numbers, per prompt, equal its
prefill alone: the width is a multiple of four (so every matrix product has a row count the probe checked),
attention runs per prompt over its own positions (:class:`row_lengths` with each prompt's length), and the
unembedding sees the last four positions of each row (:func:`prefill_width`, :data:`PREFILL_LOGITS`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Final, cast

import torch

from tinkerflow.shell.backends.local.attention import switch_attention
from tinkerflow.shell.backends.local.openmp import single_threaded

__all__ = [
    "PREFILL_LOGITS",
    "ROW_ATTENTION",
    "padded_rows",
    "prefill_width",
    "row_lengths",
    "rows_are_invariant",
    "use_row_attention",
]

#: The attention implementation name this module registers with transformers.
ROW_ATTENTION: Final = "tinkerflow_rows"

#: Rows with at most this many queries attend on one OpenMP thread (their calls are too small to share).
SMALL_ROW_QUERIES: Final = 128

#: Row counts are padded to a multiple of this.
ROW_MULTIPLE: Final = 4

_state = threading.local()


#: Positions per row whose logits a batch-invariant prefill computes (only the last is used): the unembedding's row
#: count is then a multiple of four for any number of prompts.
PREFILL_LOGITS: Final = ROW_MULTIPLE


def prefill_width(longest: int) -> int:
    """The padded width of a batch-invariant prefill whose longest prompt has ``longest`` tokens (a multiple of
    :data:`ROW_MULTIPLE`, so the decoder's row count, width times prompts, is one too)."""
    return padded_rows(max(longest, 1))


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
    queries = query.shape[2]
    keys = key.shape[2]
    if 1 < queries < keys:
        raise ValueError(f"row attention: {queries} queries over {keys} keys (a prefill has as many as keys)")
    groups = query.shape[1] // key.shape[1]
    return _rows(query, key, value, lengths, queries, groups, scaling), None


def _rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lengths: list[int] | None,
    queries: int,
    groups: int,
    scaling: float | None,
) -> torch.Tensor:
    rows, keys = query.shape[0], key.shape[2]
    spans = [keys if lengths is None else lengths[row] for row in range(rows)]
    # a small row's call (every decode step's, a short prompt's) runs on one OpenMP thread (see ``openmp``),
    # decided by the row's own size, so a row gets the same bits alone or batched; one switch for a batch of them
    cpu = query.device.type == "cpu"
    every_row_small = cpu and min(queries, max(spans)) <= SMALL_ROW_QUERIES
    if queries == 1 and every_row_small and _runs_are_invariant(query, key, groups):
        with single_threaded():
            return _decode_runs(query, key, value, spans, groups, scaling)
    outputs = []
    with single_threaded() if every_row_small else contextlib.nullcontext():
        for row, length in enumerate(spans):
            first = keys - length
            # a decode step's one query, or a left-padded prefill's last ``length`` queries (its real positions)
            tail = min(queries, length)
            # views, not copies: SDPA gives a strided slice the bits of the same values contiguous (the tests
            # compare against each row alone, whose keys are contiguous), and copying cost 40% of the attention
            q = query[row : row + 1, :, queries - tail :]
            k = key[row : row + 1, :, first:]
            v = value[row : row + 1, :, first:]
            small = cpu and tail <= SMALL_ROW_QUERIES and not every_row_small
            with single_threaded() if small else contextlib.nullcontext():
                out = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=tail > 1, scale=scaling, enable_gqa=groups > 1
                )
            if tail < queries:  # the padding positions' outputs: zeros (no real position attends to them)
                out = torch.cat([out.new_zeros((1, out.shape[1], queries - tail, out.shape[3])), out], dim=2)
            outputs.append(out)
    return torch.cat(outputs).transpose(1, 2).contiguous()


def _decode_runs(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    spans: list[int],
    groups: int,
    scaling: float | None,
) -> torch.Tensor:
    """A decode step's attention (one query per row), consecutive rows of one key length in one call: the samples
    of a request, and the prompts of one length that a prefill admitted together (it orders them by length), are
    such runs. Views of the cache, no copies; on one thread, where :func:`_runs_are_invariant` found a row's bits
    the same in a run as alone."""
    keys = key.shape[2]
    outputs = []
    start = 0
    while start < len(spans):
        end = start + 1
        while end < len(spans) and spans[end] == spans[start]:
            end += 1
        first = keys - spans[start]
        outputs.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[start:end],
                key[start:end, :, first:],
                value[start:end, :, first:],
                scale=scaling,
                enable_gqa=groups > 1,
            )
        )
        start = end
    return torch.cat(outputs).transpose(1, 2).contiguous()


_run_checks: dict[tuple[torch.dtype, str, int, int, int], bool] = {}


def _runs_are_invariant(query: torch.Tensor, key: torch.Tensor, groups: int) -> bool:
    """Whether, on one thread, SDPA gives each of several one-query rows sharing a key length the same bits as
    that row alone, for this dtype, device and head layout (checked once, on random data of a few lengths and run
    sizes, before :func:`_decode_runs` relies on it)."""
    heads, dim = query.shape[1], query.shape[3]
    probe = (query.dtype, query.device.type, heads, key.shape[1], dim)
    if probe not in _run_checks:
        generator = torch.Generator().manual_seed(0)
        invariant = True
        with torch.inference_mode(), single_threaded():
            for length, run in ((1, 3), (7, 2), (33, 5), (130, 4), (517, 3)):
                q, k, v = (
                    torch.randn(run, count, length if index else 1, dim, generator=generator).to(query)
                    for index, count in enumerate((heads, key.shape[1], key.shape[1]))
                )
                together = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=groups > 1)
                for row in range(run):
                    alone = torch.nn.functional.scaled_dot_product_attention(
                        q[row : row + 1], k[row : row + 1], v[row : row + 1], enable_gqa=groups > 1
                    )
                    invariant = invariant and torch.equal(alone, together[row : row + 1])
        _run_checks[probe] = invariant
    return _run_checks[probe]


def _fallback(module: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return cast("Callable[..., tuple[torch.Tensor, torch.Tensor | None]]", ALL_ATTENTION_FUNCTIONS["sdpa"])


def use_row_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` to :func:`row_attention` (registering it once); False, model untouched, where its
    attention implementation is not PyTorch's SDPA, which this module stands in for (it then keeps its own).
    Training models keep their attention: the switch copies the model's configs (see ``switch_attention``)."""
    return switch_attention(model, ROW_ATTENTION, row_attention)


def rows_are_invariant(model: torch.nn.Module, max_rows: int, *, max_tokens: int = 0, seed: int = 0) -> bool:
    """Whether this machine's matrix products give a row the same bits for every padded row count up to
    ``max_rows`` (decode steps), and for a sample of padded counts up to ``max_tokens`` (prefills: powers of two,
    their neighbours and halfway points), for each distinct ``nn.Linear`` shape of ``model`` (checked on random
    data of that shape, the output width capped at 4096 columns: the kernels block rows, not columns, by ``M``)."""
    shapes = sorted(
        {
            (min(module.out_features, 4096), module.in_features, module.weight.dtype, module.weight.device)
            for module in model.modules()
            if isinstance(module, torch.nn.Linear)
        },
        key=str,
    )
    wanted = {ROW_MULTIPLE, 2 * ROW_MULTIPLE, *range(3 * ROW_MULTIPLE, padded_rows(max_rows) + 1, ROW_MULTIPLE)}
    power = 64
    while power <= padded_rows(max_tokens):
        wanted |= {power - ROW_MULTIPLE, power, power + ROW_MULTIPLE, power + power // 2}
        power *= 2
    counts = sorted(count for count in wanted if count <= max(padded_rows(max_rows), padded_rows(max_tokens)))
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
