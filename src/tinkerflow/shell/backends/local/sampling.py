"""The local sampling client: KV-cache decoding, prompt logprobs and top-k, on this machine. (Shell.)

One prefill of the prompt, a KV cache repeated for ``num_samples`` rows, batched decoding; top-k, top-p,
temperature (0 = greedy), stop strings or stop tokens (the stopping token is kept), a seeded generator. The logprob
reported for a sampled token is the model's ``log_softmax`` of the raw logits (before temperature, top-k and
top-p), i.e. what a forward pass of the same weights gives it. Requests run on the client's worker thread.
"""

from __future__ import annotations

import inspect
import math
import pathlib
import secrets
import threading
from collections.abc import Mapping
from typing import Any, Final, Protocol, cast

import numpy as np
import torch

from tinkerflow.errors import ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams, StopReason
from tinkerflow.shell.backends.base import SamplingClientBase
from tinkerflow.shell.backends.local.batches import prompt_tokens, to_numpy
from tinkerflow.shell.backends.local.checkpoint import LocalPath, read_meta, read_weights
from tinkerflow.shell.backends.local.lora import LoraSetup, merge_adapters
from tinkerflow.shell.backends.local.models import BaseModel
from tinkerflow.shell.backends.protocol import APIFuture, Worker
from tinkerflow.tokenizers import Tokenizer

__all__ = ["LocalSamplingClient", "ModelSource", "sampler_from_path", "sampler_from_weights"]

#: Tinker's padding in top-k prompt logprobs where there is nothing to report (position 0).
_TOPK_PAD_LOGPROB: Final = -99999.0


class LocalSamplingClient(SamplingClientBase[np.ndarray]):
    """Samples from fixed weights on this machine (see the module docstring); ``sample`` and ``compute_logprobs``
    come from :class:`~tinkerflow.shell.backends.base.SamplingClientBase`, the prompts they run are token arrays."""

    def __init__(self, base: BaseModel, model: torch.nn.Module, source: str) -> None:
        self._base = base
        self._model = model
        self.source = source
        self._worker = Worker("tinkerflow-sampler")
        self._counter = 0
        self._lock = threading.Lock()
        # transformers >= 5.2x names the KV cache ``cache``; earlier versions ``past_key_values``.
        parameters = inspect.signature(type(model).forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def get_tokenizer(self) -> Tokenizer:
        return self._base.tokenizer

    def get_base_model(self) -> str:
        return self._base.name

    def close(self) -> None:
        self._worker.close()

    # -- the hooks of SamplingClientBase (arguments checked there, in the caller's thread) ------------------------

    def _checked_prompt(self, prompt: ModelInput, where: str) -> np.ndarray:
        return prompt_tokens(prompt, self._base, where)

    def _compute_logprobs(self, tokens: np.ndarray) -> APIFuture[np.ndarray]:
        return self._worker.submit(lambda: self._prompt_logprobs(tokens, 0)[0])

    def _sample(
        self, tokens: np.ndarray, num_samples: int, params: SamplingParams, prompt_logprobs: bool, topk: int
    ) -> APIFuture[SampleResponse]:
        where = "sample"
        room = self._base.max_context - tokens.size
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        if max_tokens > room or room <= 0:
            raise ValidationError(
                where,
                "prompt",
                f"{tokens.size} prompt tokens + max_tokens {max_tokens} exceed the model's context of "
                f"{self._base.max_context}.",
                "shorten the prompt or lower max_tokens.",
            )
        for index, token in enumerate(params.stop_tokens):
            if token >= self._base.vocab_size:
                raise ValidationError(
                    where, f"sampling_params.stop_tokens[{index}]", f"{token} is outside the vocabulary."
                )
        # torch generators take 64-bit seeds: any int maps to one, deterministically
        seed = params.seed % (1 << 64) if params.seed is not None else secrets.randbits(63)
        with self._lock:
            first_id = self._counter
            self._counter += num_samples
        return self._worker.submit(
            lambda: self._run_sample(
                tokens, num_samples, params, max_tokens, seed, prompt_logprobs or topk > 0, topk, first_id
            )
        )

    # -- jobs --------------------------------------------------------------------------------------------------

    def _prompt_logprobs(
        self, tokens: np.ndarray, topk: int
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        ids = torch.from_numpy(np.array(tokens)).to(self._base.device)[None]
        with torch.inference_mode():
            logits = cast("torch.Tensor", self._model(input_ids=ids, use_cache=False).logits)[0].float()
            return _score_prompt(logits, ids[0], topk)

    def _run_sample(
        self,
        tokens: np.ndarray,
        num_samples: int,
        params: SamplingParams,
        max_tokens: int,
        seed: int,
        prompt_scores: bool,
        topk: int,
        first_id: int,
    ) -> SampleResponse:
        device = self._base.device
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        tokenizer = self._base.tokenizer
        stop_tokens = torch.tensor(params.stop_tokens, dtype=torch.long, device=device)
        window = max((len(text.encode("utf-8")) for text in params.stop_strings), default=0) + 4
        with torch.inference_mode():
            ids = torch.from_numpy(np.array(tokens)).to(device)[None]
            output = self._model(input_ids=ids, use_cache=True, logits_to_keep=0 if prompt_scores else 1)
            logits = cast("torch.Tensor", output.logits)[0].float()
            scored = _score_prompt(logits, ids[0], topk) if prompt_scores else (None, None, None)
            cache = _output_cache(output)
            if num_samples > 1:
                cache.batch_repeat_interleave(num_samples)
            next_logits = logits[-1:].expand(num_samples, -1)
            sampled = torch.zeros((num_samples, max_tokens), dtype=torch.long, device=device)
            sampled_lp = torch.zeros((num_samples, max_tokens), dtype=torch.float32, device=device)
            lengths = [max_tokens] * num_samples
            reasons: list[StopReason] = ["length"] * num_samples
            running = set(range(num_samples))
            for step in range(max_tokens):
                logprobs = torch.log_softmax(next_logits, dim=-1)
                choice = _choose(next_logits, params, generator)
                sampled[:, step] = choice
                sampled_lp[:, step] = logprobs.gather(1, choice[:, None])[:, 0]
                if stop_tokens.numel():
                    hits = torch.isin(choice, stop_tokens).tolist()
                    for row in [row for row in running if hits[row]]:
                        lengths[row], reasons[row] = step + 1, "stop"
                        running.discard(row)
                if params.stop_strings:
                    for row in sorted(running):
                        tail = tokenizer.decode(sampled[row, max(0, step + 1 - window) : step + 1].tolist())
                        if any(stop in tail for stop in params.stop_strings):
                            lengths[row], reasons[row] = step + 1, "stop"
                            running.discard(row)
                if not running or step + 1 == max_tokens:
                    break
                output = self._model(input_ids=choice[:, None], use_cache=True, **{self._cache_argument: cache})
                cache = _output_cache(output)
                next_logits = cast("torch.Tensor", output.logits)[:, -1].float()
            tokens_np = to_numpy(sampled)
            logprobs_np = to_numpy(sampled_lp)
        sequences = tuple(
            SampledSequence(
                tokens_T=tokens_np[row, : lengths[row]],
                stop_reason=reasons[row],
                logprobs_T=logprobs_np[row, : lengths[row]],
                sequence_id=f"local-sample-{first_id + row}",
            )
            for row in range(num_samples)
        )
        prompt_lp, topk_ids, topk_lp = scored
        return SampleResponse(
            sequences=sequences,
            prompt_logprobs_T=prompt_lp,
            topk_prompt_token_ids_T_K=topk_ids,
            topk_prompt_logprobs_T_K=topk_lp,
        )


def _output_cache(output: object) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def _score_prompt(
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


def _choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """Draw one token per row: greedy at temperature 0, else softmax(logits / T) after top-k and top-p."""
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
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
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ----------------------------------------------------------------------------------------------------------------
# Samplers of trained weights


class ModelSource(Protocol):
    """Where clients find base models and checkpoints (the ``LocalBackend``)."""

    @property
    def checkpoint_dir(self) -> pathlib.Path: ...

    def base_model(self, name: str) -> BaseModel: ...


def sampler_from_weights(
    base: BaseModel, lora: LoraSetup | None, weights: Mapping[str, torch.Tensor], source: str
) -> LocalSamplingClient:
    """A sampler whose model has the trained weights, LoRA deltas merged into the base (``W + scale * B @ A``)."""
    if lora is None:
        model = base.build(clone=True)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                parameter.copy_(weights[name].to(parameter.dtype))
        return LocalSamplingClient(base, model, source)
    model = base.build()
    merge_adapters(model, lora, weights)
    return LocalSamplingClient(base, model, source)


def sampler_from_path(path: LocalPath, models: ModelSource) -> LocalSamplingClient:
    """A sampler of the weights saved at ``path`` (a ``local://`` checkpoint under ``models.checkpoint_dir``)."""
    directory = path.directory(models.checkpoint_dir)
    meta = read_meta(directory, str(path))
    base = models.base_model(meta.base_model)
    lora = None if meta.lora_rank is None else LoraSetup(meta.lora_rank, meta.target_modules, meta.lora_alpha)
    return sampler_from_weights(base, lora, read_weights(directory, meta, base.device), str(path))
