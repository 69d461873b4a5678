"""Continuous batching for the local sampling client: concurrent requests share decode steps. (Shell: a thread.)

A :class:`Scheduler` owns one model and one engine thread. Each loop of the thread:

1. **admits** queued work, first in, first out: a job (a prompt scoring) runs at once; sample requests join the
   running batch while it has room (``max_rows`` sequences, ``max_tokens`` cache positions, prompt plus
   ``max_tokens`` per sequence). The prompts admitted together are prefilled in left-padded forward passes, grouped
   by length (:func:`_prefill_groups`; a request that wants prompt logprobs alone, as it needs every position's
   logits); a request's prompt is prefilled once and its KV cache row copied for its ``num_samples`` sequences;
2. **draws** one token for every sequence of the batch. The randomness is the request's: a generator seeded from
   its seed draws one uniform per sequence of the request at each step, so the tokens a request gets do not depend on
   what else is batched with it (up to float rounding of the logits in a different batch shape), and a sequence's
   tokens do not depend on whether its siblings have stopped;
3. **retires** each sequence that hit a stop token, a stop string or ``max_tokens`` (a request's future completes
   when its last sequence does), so a long request never holds back short ones;
4. **decodes** one step for the sequences left (their rows left-padded in one KV cache, see
   :class:`~tinkerflow.shell.backends.local.decoding.BatchCache`).

The thread starts when work arrives and ends when nothing is queued or running; :meth:`Scheduler.close` waits for
the queued work. An error in a forward pass fails the requests it concerned, never the thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

import numpy as np
import torch

from tinkerflow.errors import ValidationError
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams, StopReason
from tinkerflow.shell.backends.local.decoding import BatchCache, choose_tokens, output_cache, score_prompt
from tinkerflow.shell.backends.local.invariant import (
    PREFILL_LOGITS,
    padded_rows,
    prefill_width,
    row_lengths,
    rows_are_invariant,
    use_row_attention,
)
from tinkerflow.shell.backends.protocol import APIFuture
from tinkerflow.tokenizers import Tokenizer

__all__ = ["SampleRequest", "Scheduler"]

T = TypeVar("T")

_LOG = logging.getLogger(__name__)

#: Padded prompt positions per prefill forward pass: the prompts admitted together are prefilled in groups of about
#: this size (a longer prompt alone).
PREFILL_TOKENS: Final = 2048
#: A prefill group's padding, at most this fraction of its prompts' own positions (one prompt alone excepted).
PREFILL_PADDING: Final = 0.25


class SampleRequest:
    """One ``sample`` call: its checked arguments, its generator and the sequences it has drawn so far."""

    def __init__(
        self,
        tokens: np.ndarray,
        num_samples: int,
        params: SamplingParams,
        *,
        max_tokens: int,
        seed: int,
        prompt_scores: bool,
        topk: int,
        first_id: int,
    ) -> None:
        self.tokens = tokens
        self.num_samples = num_samples
        self.params = params
        self.max_tokens = max_tokens
        self.prompt_scores = prompt_scores
        self.topk = topk
        self.first_id = first_id
        self.future: concurrent.futures.Future[SampleResponse] = concurrent.futures.Future()
        self.generator = torch.Generator()  # on the CPU whatever the model's device: the same draws everywhere
        self.generator.manual_seed(seed)
        self.stop_tokens = frozenset(params.stop_tokens)
        self.window = max((len(text.encode("utf-8")) for text in params.stop_strings), default=0) + 4
        self.sampled: list[list[int]] = [[] for _ in range(num_samples)]
        self.logprobs: list[list[float]] = [[] for _ in range(num_samples)]
        self.reasons: list[StopReason] = ["length"] * num_samples
        self.live = num_samples
        self.scored: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None] = (None, None, None)

    @property
    def row_cost(self) -> int:
        """Cache positions one of its sequences may reach."""
        return int(self.tokens.size) + self.max_tokens

    def record(self, sample: int, token: int, logprob: float, tokenizer: Tokenizer) -> bool:
        """Append a drawn token to sequence ``sample``; whether the sequence goes on."""
        sequence = self.sampled[sample]
        sequence.append(token)
        self.logprobs[sample].append(logprob)
        stops = self.params.stop_strings
        if token in self.stop_tokens or (
            stops and any(stop in tokenizer.decode(sequence[-self.window :]) for stop in stops)
        ):
            self.reasons[sample] = "stop"
        elif len(sequence) < self.max_tokens:
            return True
        self.live -= 1
        return False

    def response(self) -> SampleResponse:
        sequences = tuple(
            SampledSequence(
                tokens_T=np.array(self.sampled[row], dtype=np.int64),
                stop_reason=self.reasons[row],
                logprobs_T=np.array(self.logprobs[row], dtype=np.float32),
                sequence_id=f"local-sample-{self.first_id + row}",
            )
            for row in range(self.num_samples)
        )
        prompt_lp, topk_ids, topk_lp = self.scored
        return SampleResponse(
            sequences=sequences,
            prompt_logprobs_T=prompt_lp,
            topk_prompt_token_ids_T_K=topk_ids,
            topk_prompt_logprobs_T_K=topk_lp,
        )


class _Row:
    """One sequence of the running batch: its request, its index there, the position of its next input token."""

    __slots__ = ("position", "request", "sample")

    def __init__(self, request: SampleRequest, sample: int, position: int) -> None:
        self.request = request
        self.sample = sample
        self.position = position


class _Job:
    def __init__(self, run: Callable[[], Any]) -> None:
        self.run = run
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


class Scheduler:
    """Runs sample requests and jobs against ``model`` on one engine thread (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        device: torch.device,
        cache_argument: str,
        *,
        max_rows: int,
        max_tokens: int,
        deterministic: bool = True,
        name: str = "tinkerflow-sampler",
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._device = device
        self._cache_argument = cache_argument
        self.max_rows = max_rows
        self.max_tokens = max_tokens
        self._name = name
        self._lock = threading.Lock()
        self._queue: collections.deque[SampleRequest | _Job] = collections.deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.deterministic = deterministic
        self._mergeable: bool | None = None  # probed by the engine thread's first run
        self._padded = False  # decode rows padded to a multiple of 4, attention row by row (batch-invariant)
        # the running batch (engine thread only)
        self._rows: list[_Row] = []
        self._cache: BatchCache | None = None
        self._logits: torch.Tensor | None = None
        #: called on the engine thread after each decode step with the number of sequences it decoded (for tests and
        #: benchmarks: batch sizes; a hook that blocks holds the engine between two steps).
        self.on_step: Callable[[int], None] | None = None

    # -- the caller's side ------------------------------------------------------------------------------------

    def submit(self, request: SampleRequest) -> APIFuture[SampleResponse]:
        self._enqueue(request)
        return APIFuture(request.future)

    def submit_job(self, run: Callable[[], T]) -> APIFuture[T]:
        job = _Job(run)
        self._enqueue(job)
        return cast("APIFuture[T]", APIFuture(job.future))

    def queued(self) -> int:
        """Requests and jobs waiting to be admitted."""
        with self._lock:
            return len(self._queue)

    def close(self) -> None:
        """Refuse new work, finish what is queued or running and let the thread end."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _enqueue(self, item: SampleRequest | _Job) -> None:
        with self._lock:
            if self._closed:
                raise ValidationError("sample", "client", "this sampling client is closed.", "create a new one.")
            self._queue.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name)
                self._thread.start()

    # -- the engine thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                if self._mergeable is None:
                    self._mergeable, self._padded = self._probe()
                while True:
                    with self._lock:
                        if not self._queue and not self._rows:
                            self._thread = None
                            return
                        taken = self._take()
                    self._admit(taken)
                    if self._rows:
                        self._step()
        except BaseException as error:  # not an Exception (those fail their requests): fail all, then end
            with self._lock:
                pending = [*self._queue, *(row.request for row in self._rows)]
                self._queue.clear()
                self._thread = None
            self._reset()
            for item in pending:
                if not item.future.done():
                    item.future.set_exception(error)
            raise

    @property
    def batch_invariant(self) -> bool | None:
        """Whether requests are batched batch-invariantly (None until the engine's first run probed it)."""
        return None if self._mergeable is None else self._padded

    def _probe(self) -> tuple[bool, bool]:
        """``(batch requests together, batch-invariantly)``: the KV cache must splice (a one-token forward pass),
        and, to be invariant, the attention must be replaceable and this machine's matrix products row-invariant
        (:mod:`~tinkerflow.shell.backends.local.invariant`). Without invariance, a deterministic scheduler serves
        one request at a time; a scheduler made with ``deterministic=False`` batches with the model's own attention
        (faster, equal only up to rounding)."""
        one = torch.zeros((1, 1), dtype=torch.long, device=self._device)
        try:
            if not BatchCache(output_cache(self._forward(one, torch.ones_like(one), one)), one).mergeable:
                return False, False
        except Exception:  # a model that cannot run this cannot run requests either: they will say why
            return False, False
        if not self.deterministic:
            return True, False
        if use_row_attention(self._model) and rows_are_invariant(self._model, self.max_rows, max_tokens=PREFILL_TOKENS):
            return True, True
        _LOG.warning(
            "%s: this machine's matrix products are not batch-invariant for this model, so requests run one at a "
            "time to keep results reproducible; pass deterministic=False to batch them anyway.",
            self._name,
        )
        return False, False

    def _take(self) -> list[SampleRequest | _Job]:
        """Queued work to admit now (under the lock): first in, first out, while the batch has room."""
        taken: list[SampleRequest | _Job] = []
        rows = len(self._rows)
        tokens = sum(row.request.row_cost for row in self._rows)
        while self._queue:
            item = self._queue[0]
            if isinstance(item, SampleRequest):
                wanted = item.num_samples * item.row_cost
                if rows and (
                    not self._mergeable or rows + item.num_samples > self.max_rows or tokens + wanted > self.max_tokens
                ):
                    break
                rows, tokens = rows + item.num_samples, tokens + wanted
            taken.append(self._queue.popleft())
        return taken

    def _admit(self, taken: list[SampleRequest | _Job]) -> None:
        fresh: list[SampleRequest] = []
        for item in taken:
            if not item.future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            if isinstance(item, _Job):
                try:
                    item.future.set_result(item.run())
                except Exception as error:
                    item.future.set_exception(error)
            else:
                fresh.append(item)
        parts: list[tuple[list[SampleRequest], BatchCache, torch.Tensor]] = []
        for group in _prefill_groups(fresh, self._padded):
            parts.extend(self._prefill_or_fail(group))
        if parts:
            try:
                self._join(parts)
            except Exception as error:
                for requests, _, _ in parts:
                    for request in requests:
                        request.future.set_exception(error)

    def _prefill_or_fail(
        self, group: list[SampleRequest]
    ) -> list[tuple[list[SampleRequest], BatchCache, torch.Tensor]]:
        """``group`` prefilled together; when that fails, each request alone, so an error fails only its own."""
        try:
            return [(group, *self._prefill(group))]
        except Exception as error:
            if len(group) == 1:
                group[0].future.set_exception(error)
                return []
        return [part for request in group for part in self._prefill_or_fail([request])]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, **kwargs: object) -> Any:
        return self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)

    def _prefill(self, requests: list[SampleRequest]) -> tuple[BatchCache, torch.Tensor]:
        """Prefill ``requests``' prompts in one forward pass, left-padded: the cache rows and the last position's
        logits, one per sequence (a prompt's row copied for each of its samples). Batch-invariantly, a prompt's
        numbers equal its prefill alone (see :mod:`~tinkerflow.shell.backends.local.invariant`)."""
        lengths = [int(request.tokens.size) for request in requests]
        width = prefill_width(max(lengths)) if self._padded else max(lengths)
        ids = np.zeros((len(requests), width), dtype=np.int64)
        positions = np.zeros((len(requests), width), dtype=np.int64)
        for row, (request, length) in enumerate(zip(requests, lengths, strict=True)):
            ids[row, width - length :] = request.tokens
            positions[row, width - length :] = np.arange(length)
        ids_t = torch.from_numpy(ids).to(self._device)
        mask = (torch.arange(width)[None] >= torch.tensor([width - length for length in lengths])[:, None]).long()
        mask = mask.to(self._device)
        scores = requests[0].prompt_scores  # such a request is prefilled alone
        keep = 0 if scores else (PREFILL_LOGITS if self._padded else 1)
        rowwise = row_lengths(lengths) if self._padded else contextlib.nullcontext()
        with rowwise:
            output = self._forward(ids_t, mask, torch.from_numpy(positions).to(self._device), logits_to_keep=keep)
        logits = cast("torch.Tensor", output.logits)
        if scores:
            start = width - lengths[0]
            requests[0].scored = score_prompt(logits[0, start:].float(), ids_t[0, start:], requests[0].topk)
        cache = BatchCache(output_cache(output), mask)
        last = logits[:, -1].float()
        copies = [row for row, request in enumerate(requests) for _ in range(request.num_samples)]
        if copies != list(range(len(requests))):
            index = torch.tensor(copies, device=self._device)
            cache.select(index)
            last = last[index]
        return cache, last

    def _join(self, parts: list[tuple[list[SampleRequest], BatchCache, torch.Tensor]]) -> None:
        """Add prefilled requests' sequences to the running batch (one copy of the cache)."""
        rows = [
            _Row(request, sample, request.tokens.size)
            for requests, _, _ in parts
            for request in requests
            for sample in range(request.num_samples)
        ]
        caches = [part for _, part, _ in parts]
        last = torch.cat([logits for _, _, logits in parts])
        if self._cache is None or self._logits is None:
            cache, kept, self._logits, self._rows = caches[0], 0, last, rows
            cache.merge(*caches[1:])
            self._cache = cache
        else:
            kept = len(self._rows)
            self._cache.merge(*caches)
            self._logits = torch.cat([self._logits, last])
            self._rows = self._rows + rows
        if self._padded:
            start = self._cache.rows - len(rows)
            self._select([*range(kept), *range(start, start + len(rows))])

    def _select(self, indices: list[int]) -> None:
        """Keep the cache rows ``indices`` (in order) and, batch-invariantly, pad them with copies of the first to a
        multiple of four rows (their results are discarded)."""
        assert self._cache is not None
        if self._padded and indices:
            indices = indices + [indices[0]] * (padded_rows(len(indices)) - len(indices))
        if indices != list(range(self._cache.rows)):
            self._cache.select(torch.tensor(indices, device=self._device))

    def _step(self) -> None:
        """Draw a token for every sequence, retire the finished ones, decode one step for the rest."""
        try:
            chosen, finished = self._draw()
        except Exception as error:
            self._fail_batch(error)
            return
        for request in finished:
            request.future.set_result(request.response())
        try:
            self._decode(chosen)
        except Exception as error:
            self._fail_batch(error)

    def _draw(self) -> tuple[torch.Tensor, list[SampleRequest]]:
        logits, rows = self._logits, self._rows
        assert logits is not None  # rows exist, so a prefill gave their logits
        by_request: dict[int, list[int]] = {}
        by_params: dict[tuple[float, int, float], list[int]] = {}
        for index, row in enumerate(rows):
            by_request.setdefault(id(row.request), []).append(index)
            params = row.request.params
            by_params.setdefault((params.temperature, params.top_k, params.top_p), []).append(index)
        uniforms = torch.zeros(len(rows), dtype=torch.float64)
        for indices in by_request.values():
            request = rows[indices[0]].request
            if request.params.temperature != 0.0:  # one uniform per sample, live or not: siblings stay independent
                drawn = torch.rand(request.num_samples, generator=request.generator, dtype=torch.float64)
                uniforms[indices] = drawn[[rows[index].sample for index in indices]]
        if len(by_params) == 1:
            chosen = choose_tokens(logits, rows[0].request.params, uniforms)
        else:
            chosen = torch.empty(len(rows), dtype=torch.long, device=logits.device)
            for indices in by_params.values():
                where = torch.tensor(indices, device=logits.device)
                chosen[where] = choose_tokens(logits[where], rows[indices[0]].request.params, uniforms[indices])
        chosen_lp = torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None])[:, 0]
        finished: list[SampleRequest] = []
        keep: list[int] = []
        for index, (token, logprob) in enumerate(zip(chosen.tolist(), chosen_lp.tolist(), strict=True)):
            row = rows[index]
            if row.request.record(row.sample, token, logprob, self._tokenizer):
                keep.append(index)
            elif row.request.live == 0:
                finished.append(row.request)
        if len(keep) < len(rows):
            self._rows = [rows[index] for index in keep]
            if keep and self._cache is not None:
                self._select(keep)
                chosen = chosen[torch.tensor(keep, device=logits.device)]
        return chosen, finished

    def _decode(self, chosen: torch.Tensor) -> None:
        if not self._rows or self._cache is None:
            self._reset()
            return
        mask = self._cache.extend()
        real, ghosts = len(self._rows), self._cache.rows - len(self._rows)
        tokens = torch.cat([chosen, chosen[:1].expand(ghosts)])[:, None]
        positions = torch.tensor([[row.position] for row in self._rows + self._rows[:1] * ghosts], device=self._device)
        rowwise = row_lengths(self._cache.lengths()) if self._padded else contextlib.nullcontext()
        with rowwise:
            output = self._forward(tokens, mask, positions, **{self._cache_argument: self._cache.cache})
        self._cache.cache = output_cache(output)
        self._logits = cast("torch.Tensor", output.logits)[:real, -1].float()
        for row in self._rows:
            row.position += 1
        if self.on_step is not None:
            self.on_step(len(self._rows))

    def _fail_batch(self, error: Exception) -> None:
        requests = {id(row.request): row.request for row in self._rows}
        self._reset()
        for request in requests.values():
            if not request.future.done():
                request.future.set_exception(error)

    def _reset(self) -> None:
        self._rows, self._cache, self._logits = [], None, None


def _prefill_groups(requests: list[SampleRequest], padded: bool) -> list[list[SampleRequest]]:
    """``requests`` grouped for prefill: one that wants prompt logprobs alone (it needs every position's logits),
    the others shortest first, each group's padded positions within :data:`PREFILL_TOKENS` and at most
    :data:`PREFILL_PADDING` more than its prompts' own positions (prompts of similar lengths share a pass)."""
    groups = [[request] for request in requests if request.prompt_scores]
    group: list[SampleRequest] = []
    real = 0
    for request in sorted((r for r in requests if not r.prompt_scores), key=lambda r: r.tokens.size):
        size = int(request.tokens.size)
        width = prefill_width(size) if padded else size  # the widest so far: shortest first
        positions = width * (len(group) + 1)
        if group and (positions > PREFILL_TOKENS or positions > (1 + PREFILL_PADDING) * (real + size)):
            groups.append(group)
            group, real = [], 0
        group.append(request)
        real += size
    if group:
        groups.append(group)
    return groups
