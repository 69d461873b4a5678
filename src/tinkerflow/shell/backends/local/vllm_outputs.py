"""Pure conversions between tinkerflow's sampling records and vLLM's: request keywords in, outputs back. (Shell.)

No vLLM import here: the few vLLM objects read are described by the protocols below (the names and structures of
vLLM 0.33.0: ``vllm/outputs.py`` ``RequestOutput`` / ``CompletionOutput``, ``vllm/logprobs.py`` ``Logprob``), and the
request is built as the keyword arguments of ``vllm.SamplingParams`` (``vllm/sampling_params.py``), so everything
here runs and is tested without vLLM.

What makes vLLM's answer equal the local sampler's (:mod:`~tinkerflow.shell.backends.local.scheduler`):

* one vLLM request per sample (``n=1``): vLLM refuses ``n > 1`` at temperature 0 (``_verify_greedy_sampling``), and
  a seeded request's samples get the seeds ``seed + index``, as vLLM gives the children of an ``n > 1`` request
  (``v1/engine/parallel_sampling.py``); only the first carries the prompt logprobs;
* ``ignore_eos=True``: the local sampler stops at EOS only when asked (a stop token), as vLLM does with
  ``stop_token_ids`` (``v1/core/sched/utils.py`` ``check_stop``: the stopping token stays in ``token_ids``);
* stop strings: vLLM keeps the token that completes a stop string in ``token_ids`` (and drops any after it) whatever
  ``include_stop_str_in_output`` says (``v1/engine/detokenizer.py``), which is the local rule; the text is not used.
  Detokenizing is on only when there are stop strings (vLLM refuses stop strings without it), special tokens
  spelled out (``skip_special_tokens=False``) as the local sampler decodes them;
* logprobs: ``logprobs=0`` returns the sampled token's logprob only, ``prompt_logprobs=k`` the prompt token's plus the
  top ``k`` (ranks 1..k; the prompt token keeps its own rank when outside them), position 0 ``None``; the engine
  runs with ``logprobs_mode="raw_logprobs"`` (the model's ``log_softmax`` before temperature, top-k and top-p).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Protocol

import numpy as np

from tinkerflow.errors import TinkerflowError
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams, StopReason

__all__ = [
    "CompletionLike",
    "LogprobLike",
    "RequestOutputLike",
    "VllmRequestError",
    "prompt_scores",
    "sample_kwargs",
    "sample_seeds",
    "to_response",
]

#: Tinker's padding of top-k prompt logprobs where there is nothing to report (position 0), as the local sampler.
TOPK_PAD_LOGPROB: Final = -99999.0
_SEED_RANGE: Final = 1 << 63  # vLLM sends seeds through msgpack as signed 64-bit ints


class VllmRequestError(TinkerflowError):
    """vLLM finished a sequence for another reason than a stop or the length (``abort``, ``error``, ...)."""


class LogprobLike(Protocol):
    """``vllm.logprobs.Logprob``: a logprob and its rank among the vocabulary (1 = most likely)."""

    @property
    def logprob(self) -> float: ...

    @property
    def rank(self) -> int | None: ...


class CompletionLike(Protocol):
    """``vllm.outputs.CompletionOutput``: one generated sequence."""

    @property
    def token_ids(self) -> Sequence[int]: ...

    @property
    def logprobs(self) -> Sequence[Mapping[int, LogprobLike]] | None: ...

    @property
    def finish_reason(self) -> str | None: ...


class RequestOutputLike(Protocol):
    """``vllm.outputs.RequestOutput``: a request's sequences and prompt logprobs (``None`` at position 0)."""

    @property
    def prompt_logprobs(self) -> Sequence[Mapping[int, LogprobLike] | None] | None: ...

    @property
    def outputs(self) -> Sequence[CompletionLike]: ...

    @property
    def finished(self) -> bool: ...


def sample_seeds(seed: int | None, num_samples: int) -> list[int | None]:
    """Each sample's vLLM seed: ``seed + index`` (as vLLM seeds the children of an ``n > 1`` request), in range."""
    if seed is None:
        return [None] * num_samples
    return [(seed + index) % _SEED_RANGE for index in range(num_samples)]


def sample_kwargs(
    params: SamplingParams, *, max_tokens: int, seed: int | None, prompt_topk: int | None
) -> dict[str, object]:
    """Keyword arguments of ``vllm.SamplingParams`` for one sample of ``params`` (``output_kind`` is the caller's:
    an enum of vLLM). ``prompt_topk``: ``None`` for no prompt logprobs, else how many top tokens per position."""
    return {
        "n": 1,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": 0 if params.top_k == -1 else params.top_k,  # 0 disables top-k in vLLM 0.33
        "seed": seed,
        "max_tokens": max_tokens,
        "stop": list(params.stop_strings),
        "stop_token_ids": list(params.stop_tokens),
        "ignore_eos": True,
        "include_stop_str_in_output": True,
        "logprobs": 0,
        "prompt_logprobs": prompt_topk,
        "detokenize": bool(params.stop_strings),
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
    }


def _stop_reason(reason: str | None) -> StopReason:
    if reason == "stop":
        return "stop"
    if reason == "length":
        return "length"
    raise VllmRequestError(f"vLLM ended a sequence with finish_reason={reason!r} (expected 'stop' or 'length').")


def _sequence(completion: CompletionLike, sequence_id: str) -> SampledSequence:
    tokens = [int(token) for token in completion.token_ids]
    entries = completion.logprobs
    if entries is None or len(entries) < len(tokens):
        raise VllmRequestError(f"vLLM returned {len(tokens)} tokens without a logprob for each.")
    logprobs = [float(entries[index][token].logprob) for index, token in enumerate(tokens)]
    return SampledSequence(
        tokens_T=np.array(tokens, dtype=np.int64),
        stop_reason=_stop_reason(completion.finish_reason),
        logprobs_T=np.array(logprobs, dtype=np.float32),
        sequence_id=sequence_id,
    )


def prompt_scores(
    prompt: Sequence[int], entries: Sequence[Mapping[int, LogprobLike] | None] | None, topk: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The local sampler's prompt scores from vLLM's ``prompt_logprobs``: logprobs (NaN at 0) and, ``topk > 0``, the
    top-k ids and logprobs per position (entries of rank 1..k, by rank; row 0 padded with id 0 and -99999)."""
    if entries is None or len(entries) != len(prompt):
        raise VllmRequestError(f"vLLM returned no prompt logprob for some of the {len(prompt)} prompt tokens.")
    scores = np.full(len(prompt), np.nan, dtype=np.float32)
    for position in range(1, len(prompt)):
        entry = entries[position]
        if entry is None or prompt[position] not in entry:
            raise VllmRequestError(f"vLLM returned no logprob for prompt position {position}.")
        scores[position] = entry[prompt[position]].logprob
    if topk <= 0:
        return scores, None, None
    ids = np.zeros((len(prompt), topk), dtype=np.int64)
    values = np.full((len(prompt), topk), TOPK_PAD_LOGPROB, dtype=np.float32)
    for position in range(1, len(prompt)):
        entry = entries[position] or {}
        ranked = sorted(
            ((rank, token, item.logprob) for token, item in entry.items() if (rank := item.rank) is not None),
            key=lambda triple: triple[0],
        )
        top = [(token, logprob) for rank, token, logprob in ranked if rank <= topk]
        if len(top) != topk:
            raise VllmRequestError(f"vLLM returned {len(top)} top prompt logprobs at {position}, expected {topk}.")
        ids[position] = [token for token, _ in top]
        values[position] = [logprob for _, logprob in top]
    return scores, ids, values


def to_response(
    outputs: Sequence[RequestOutputLike], prompt: Sequence[int], *, first_id: int, scored: bool, topk: int
) -> SampleResponse:
    """The :class:`SampleResponse` of the final outputs of a request's samples (one vLLM request each, the first
    with prompt logprobs when ``scored``): sequence ids ``vllm-sample-<first_id + index>``."""
    sequences: list[SampledSequence] = []
    for index, output in enumerate(outputs):
        if not output.finished or len(output.outputs) != 1:
            raise VllmRequestError("vLLM returned an unfinished request or not one sequence per request.")
        sequences.append(_sequence(output.outputs[0], f"vllm-sample-{first_id + index}"))
    if not scored:
        return SampleResponse(sequences=tuple(sequences))
    scores, ids, values = prompt_scores(prompt, outputs[0].prompt_logprobs, topk)
    return SampleResponse(
        sequences=tuple(sequences),
        prompt_logprobs_T=scores,
        topk_prompt_token_ids_T_K=ids,
        topk_prompt_logprobs_T_K=values,
    )
