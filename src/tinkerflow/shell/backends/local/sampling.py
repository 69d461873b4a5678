"""The local sampling client: continuously batched KV-cache decoding, prompt logprobs and top-k. (Shell.)

Concurrent ``sample`` calls on one client (threads of one process, or the requests ``tinkerflow serve`` receives)
share decode steps: see :mod:`~tinkerflow.shell.backends.local.scheduler`. A request's prompt is prefilled once
and its KV cache copied for its ``num_samples`` sequences; each sequence ends on its own (stop token or stop string,
the stopping token kept, or ``max_tokens``). Temperature 0 is greedy, else ``softmax(logits / T)`` after top-k and
top-p, drawn with the request's own seeded generator, so its tokens do not depend on what else is batched. The
logprob reported for a sampled token is the model's ``log_softmax`` of the raw logits (before temperature, top-k
and top-p), i.e. what a forward pass of the same weights gives it.
"""

from __future__ import annotations

import inspect
import pathlib
import secrets
import threading
from collections.abc import Mapping
from typing import Protocol, cast

import numpy as np
import torch

from tinkerflow._validate import positive_int
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SampleResponse, SamplingParams
from tinkerflow.shell.backends.base import SamplingClientBase
from tinkerflow.shell.backends.local.batches import check_room, prompt_tokens
from tinkerflow.shell.backends.local.checkpoint import LocalPath, read_meta, read_weights
from tinkerflow.shell.backends.local.decoding import score_prompt
from tinkerflow.shell.backends.local.lora import LoraSetup, merge_adapters
from tinkerflow.shell.backends.local.models import BaseModel
from tinkerflow.shell.backends.local.scheduler import SampleRequest, Scheduler
from tinkerflow.shell.backends.protocol import APIFuture
from tinkerflow.tokenizers import Tokenizer

__all__ = ["LocalSamplingClient", "ModelSource", "sampler_from_path", "sampler_from_weights"]


class LocalSamplingClient(SamplingClientBase[np.ndarray]):
    """Samples from fixed weights on this machine (see the module docstring); ``sample`` and ``compute_logprobs``
    come from :class:`~tinkerflow.shell.backends.base.SamplingClientBase`, the prompts they run are token arrays.

    Args:
        max_batch_rows: the most sequences decoded together (a larger request still runs, alone).
        max_batch_tokens: the most cache positions the running batch may reach (prompt plus ``max_tokens`` per
            sequence), which bounds its KV cache's memory.
        deterministic: keep every request's tokens and logprobs independent of what is batched with it, bit for
            bit (the default). Batching is then batch-invariant where this machine allows it
            (:mod:`~tinkerflow.shell.backends.local.invariant`), else requests run one at a time; ``False`` batches
            with the model's own attention (faster), equal only up to float rounding.
    """

    def __init__(
        self,
        base: BaseModel,
        model: torch.nn.Module,
        source: str,
        *,
        max_batch_rows: int = 64,
        max_batch_tokens: int = 65536,
        deterministic: bool = True,
    ) -> None:
        self._base = base
        self._model = model
        self.source = source
        self._counter = 0
        self._lock = threading.Lock()
        # transformers >= 5.2x names the KV cache ``cache``; earlier versions ``past_key_values``.
        parameters = inspect.signature(type(model).forward).parameters
        #: the engine that batches this client's requests (its ``on_step`` hook observes the batch sizes)
        self.scheduler = Scheduler(
            model,
            base.tokenizer,
            base.device,
            "cache" if "cache" in parameters else "past_key_values",
            max_rows=positive_int(max_batch_rows, "LocalSamplingClient", "max_batch_rows"),
            max_tokens=positive_int(max_batch_tokens, "LocalSamplingClient", "max_batch_tokens"),
            deterministic=deterministic,
        )

    def get_tokenizer(self) -> Tokenizer:
        return self._base.tokenizer

    def get_base_model(self) -> str:
        return self._base.name

    def close(self) -> None:
        """Finish the queued and running requests, then refuse new ones."""
        self.scheduler.close()

    # -- the hooks of SamplingClientBase (arguments checked there, in the caller's thread) ------------------------

    def _checked_prompt(self, prompt: ModelInput, where: str) -> np.ndarray:
        return prompt_tokens(prompt, self._base, where)

    def _compute_logprobs(self, tokens: np.ndarray) -> APIFuture[np.ndarray]:
        return self.scheduler.submit_job(lambda: self._prompt_logprobs(tokens, 0)[0])

    def _sample(
        self, tokens: np.ndarray, num_samples: int, params: SamplingParams, prompt_logprobs: bool, topk: int
    ) -> APIFuture[SampleResponse]:
        max_tokens = check_room(int(tokens.size), params, self._base.max_context, self._base.vocab_size)
        # torch generators take 64-bit seeds: any int maps to one, deterministically
        seed = params.seed % (1 << 64) if params.seed is not None else secrets.randbits(63)
        with self._lock:
            first_id = self._counter
            self._counter += num_samples
        request = SampleRequest(
            np.array(tokens, dtype=np.int64),
            num_samples,
            params,
            max_tokens=max_tokens,
            seed=seed,
            prompt_scores=prompt_logprobs or topk > 0,
            topk=topk,
            first_id=first_id,
        )
        return self.scheduler.submit(request)

    # -- jobs --------------------------------------------------------------------------------------------------

    def _prompt_logprobs(
        self, tokens: np.ndarray, topk: int
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        ids = torch.from_numpy(np.array(tokens)).to(self._base.device)[None]
        with torch.inference_mode():
            logits = cast("torch.Tensor", self._model(input_ids=ids, use_cache=False).logits)[0].float()
            return score_prompt(logits, ids[0], topk)


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
