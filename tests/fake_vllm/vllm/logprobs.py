"""``vllm/logprobs.py`` of 0.33.0: ``Logprob`` and the ``{token id: Logprob}`` entries, built as
``append_logprobs_for_next_position`` builds them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def position_entry(token: int, rank: int, top_ids: list[int], top_logprobs: list[float], logprob: float) -> dict:
    """``{token: Logprob(logprob, rank), top_i: Logprob(.., rank i)}`` in vLLM's order: the token first, then the
    top k with ranks 1..k (a top token equal to it overwrites its entry, as in vLLM's dict comprehension)."""
    ids = [token, *top_ids]
    values = [logprob, *top_logprobs]
    ranks = [rank, *range(1, len(top_ids) + 1)]
    return {i: Logprob(logprob=v, rank=r) for i, v, r in zip(ids, values, ranks, strict=True)}
