"""LocalBackend: Tinker's training and sampling semantics on this machine (torch + transformers). (Shell.)

The facade that creates clients; the work is done in rooms beside it:

* :mod:`~tinkerflow.shell.backends.local.models`: base models (the embedded SmolLM2-135M-Instruct by default,
  tiny random-init Llama/Qwen3 models for tests, local folders, hub names) and their tokenizers. CPU in fp32 by
  default; CUDA in bf16 when available.
* :mod:`~tinkerflow.shell.backends.local.lora`: LoRA adapters (rank ``r``, ``alpha = 32``, no dropout, peft's
  parametrization and names) on the attention and MLP projections and optionally the unembedding.
* :mod:`~tinkerflow.shell.backends.local.training`: the training client (forward/backward in
  :mod:`~tinkerflow.shell.backends.local.forward`, AdamW, save/load); full fine-tuning with
  :meth:`LocalBackend.create_full_training_client`.
* :mod:`~tinkerflow.shell.backends.local.sampling`: the sampling client (KV-cache decoding, prompt logprobs).
* :mod:`~tinkerflow.shell.backends.local.checkpoint`: ``local://<run>/weights/<name>`` and
  ``local://<run>/sampler_weights/<name>``, written atomically in peft's adapter layout, with a sha256 per file
  checked at load; :meth:`LocalBackend.remove_partial_checkpoints` and :meth:`LocalBackend.delete_checkpoint`
  keep the checkpoint directory tidy (a run directory's retention uses them).

Each client (and the backend itself, for client creation) runs its requests on its own worker thread, first in,
first out.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, TypeAlias, Unpack

import torch

from tinkerflow._validate import int_at_least, positive_int
from tinkerflow.errors import ConfigError
from tinkerflow.shell.backends.base import BackendBase, LoraOptions, LoraSpec
from tinkerflow.shell.backends.local import heap
from tinkerflow.shell.backends.local.batches import resolve_device
from tinkerflow.shell.backends.local.checkpoint import (
    LocalPath,
    delete_checkpoint,
    read_meta,
    remove_partial_checkpoints,
)
from tinkerflow.shell.backends.local.forward import DEFAULT_CHUNK_TOKENS
from tinkerflow.shell.backends.local.lora import LoraSetup, lora_targets
from tinkerflow.shell.backends.local.models import (
    EMBEDDED_MODEL,
    BaseModel,
    cache_root,
    load_base_model,
    load_tokenizer,
)
from tinkerflow.shell.backends.local.sampling import LocalSamplingClient, sampler_from_path
from tinkerflow.shell.backends.local.training import LocalTrainingClient
from tinkerflow.shell.backends.local.vllm_engine import (
    SamplingEngine,
    VllmEngines,
    VllmOption,
    VllmSamplingClient,
    check_engine_choice,
)
from tinkerflow.shell.backends.protocol import APIFuture, Worker
from tinkerflow.tokenizers import Tokenizer

if TYPE_CHECKING:
    from tinkerflow.shell.backends.protocol import Backend, SamplingClient, TrainingClient

__all__ = ["AnySamplingClient", "LocalBackend", "LocalSamplingClient", "LocalTrainingClient"]

#: What the backend's ``create_sampling_client`` gives: the local engine's client, or vLLM's (``sampling_engine``).
AnySamplingClient: TypeAlias = LocalSamplingClient | VllmSamplingClient


class LocalBackend(BackendBase[LocalTrainingClient, AnySamplingClient]):
    """Tinker's semantics on this machine. See the module docstring. ``create_lora_training_client`` and
    ``create_sampling_client`` check their arguments in :class:`~tinkerflow.shell.backends.base.BackendBase`.

    Args:
        checkpoint_dir: where checkpoints go (``local://<run>/...`` paths resolve under it); default
            ``$TINKERFLOW_CACHE/checkpoints``. Point it at ``<run dir>/checkpoints`` to keep a run together.
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
        dtype: weights' dtype; default bf16 on CUDA, fp32 on CPU (tests use fp64 for finite differences).
        max_tokens_per_batch: padded tokens per forward pass; larger batches run in several passes whose
            gradients add up (same result, bounded memory).
        logprob_chunk_tokens: positions whose logits (``[chunk, vocab]``) are computed at once when training
            (recomputed in the backward pass; same result, bounded memory).
        checkpoint_layers: activation checkpointing of the decoder layers when training: a backward pass keeps
            one hidden state per layer and position and runs each layer's forward again (same result, far less
            memory, about a third more compute).
        return_freed_memory: how freed tensor memory goes back to the system on glibc (Linux); without help glibc
            keeps it in a fragmented heap, which grew the resident size of an 8 x 512 SmolLM2 step by about
            1.2 GB more than the live tensors (:mod:`~tinkerflow.shell.backends.local.heap`, docs/backends.md).
            ``True``: blocks of 1 MiB and more go back as soon as torch frees them (``mallopt``, process-wide,
            set once): the lowest peak, slower steps. ``"between_passes"``: the heap's free pages go back before
            each forward/backward micro-batch (``malloc_trim``): faster, a higher peak in fp32 (about the same in
            bf16). ``False``: glibc's defaults.
        sampling_engine: what serves the backend's sampling clients (``create_sampling_client``): ``"local"``
            (the default: the torch engine of :mod:`~tinkerflow.shell.backends.local.sampling`) or ``"vllm"``
            (vLLM's async engine, one per base model, LoRA checkpoints as vLLM adapters; needs
            ``pip install 'tinkerflow[vllm]'`` and a GPU; see :mod:`~tinkerflow.shell.backends.local.vllm_engine`
            and docs/backends.md). Checked, with vLLM's presence, when the backend is created.
        vllm_options: with ``"vllm"``, more vLLM ``AsyncEngineArgs`` fields (names to str/int/float/bool values),
            e.g. ``{"gpu_memory_utilization": 0.6}`` (default 0.4, leaving room for the training model on the same
            GPU), ``max_lora_rank``, ``max_loras``, ``max_logprobs``, ``enforce_eager``.
    """

    def __init__(
        self,
        *,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_tokens_per_batch: int = 2048,
        logprob_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        checkpoint_layers: bool = True,
        return_freed_memory: bool | Literal["between_passes"] = True,
        sampling_engine: SamplingEngine = "local",
        vllm_options: Mapping[str, VllmOption] | None = None,
    ) -> None:
        options = check_engine_choice(sampling_engine, vllm_options)
        self.checkpoint_dir = (
            pathlib.Path(checkpoint_dir) if checkpoint_dir is not None else cache_root() / "checkpoints"
        )
        self.device = resolve_device(device)
        self.dtype = dtype
        self.max_tokens_per_batch = positive_int(max_tokens_per_batch, "LocalBackend", "max_tokens_per_batch")
        self.logprob_chunk_tokens = positive_int(logprob_chunk_tokens, "LocalBackend", "logprob_chunk_tokens")
        if not isinstance(checkpoint_layers, bool):
            raise ConfigError("LocalBackend", "checkpoint_layers", f"must be True or False, got {checkpoint_layers!r}.")
        self.checkpoint_layers = checkpoint_layers
        if not isinstance(return_freed_memory, bool) and return_freed_memory != "between_passes":
            raise ConfigError(
                "LocalBackend",
                "return_freed_memory",
                f'must be True, False or "between_passes", got {return_freed_memory!r}.',
            )
        self.trim_between_passes = return_freed_memory == "between_passes"
        if return_freed_memory is True:
            heap.map_large_blocks()
        self._bases: dict[str, BaseModel] = {}
        self._tokenizers: dict[str, Tokenizer] = {}
        self._lock = threading.Lock()
        self._worker = Worker("tinkerflow-local")
        self.sampling_engine: SamplingEngine = sampling_engine
        self._vllm = VllmEngines(options, self.checkpoint_dir) if sampling_engine == "vllm" else None

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish queued client creations and stop the backend's worker thread (and its vLLM engines, cancelling
        their requests in flight)."""
        self._worker.close()
        if self._vllm is not None:
            self._vllm.close()

    def base_model(self, name: str) -> BaseModel:
        """The base model ``name``, loaded once per backend (thread-safe)."""
        _check_name(name)
        with self._lock:
            if name not in self._bases:
                self._bases[name] = load_base_model(name, self.device, self.dtype)
            return self._bases[name]

    # -- the protocol ---------------------------------------------------------------------------------------------

    def get_tokenizer(self, base_model: str = EMBEDDED_MODEL) -> Tokenizer:
        """The tokenizer of the model ``base_model`` names: the loaded model's, else loaded alone (no weights)."""
        _check_name(base_model)
        with self._lock:
            if base_model in self._bases:
                return self._bases[base_model].tokenizer
            if base_model not in self._tokenizers:
                self._tokenizers[base_model] = load_tokenizer(base_model)
            return self._tokenizers[base_model]

    def create_lora_training_client(
        self, base_model: str = EMBEDDED_MODEL, **options: Unpack[LoraOptions]
    ) -> APIFuture[LocalTrainingClient]:
        """As :meth:`BackendBase.create_lora_training_client`, on the embedded model by default."""
        return super().create_lora_training_client(base_model, **options)

    def _create_lora_client(self, base_model: str, spec: LoraSpec) -> APIFuture[LocalTrainingClient]:
        where = "create_lora_training_client"  # spec.rank is checked by BackendBase
        int_at_least(spec.seed, where, "seed", 0, allow_none=True)
        if not (spec.train_mlp or spec.train_attn or spec.train_unembed):
            raise ConfigError(where, "train_attn", "LoRA must train something.", "enable attn, mlp or unembed.")
        actual_seed = spec.seed if spec.seed is not None else secrets.randbits(31)

        def job() -> LocalTrainingClient:
            base = self.base_model(base_model)
            names = [key.removesuffix(".weight") for key, value in base.state.items() if value.ndim == 2]
            targets = lora_targets(
                names, train_attn=spec.train_attn, train_mlp=spec.train_mlp, train_unembed=spec.train_unembed
            )
            lora = LoraSetup(rank=spec.rank, target_modules=targets)
            return LocalTrainingClient(self, base, lora=lora, seed=actual_seed)

        return self._worker.submit(job)

    def create_full_training_client(
        self, base_model: str = EMBEDDED_MODEL, *, seed: int | None = None
    ) -> APIFuture[LocalTrainingClient]:
        """A full fine-tuning run: every weight trains (local only; the Tinker service trains LoRA)."""
        actual_seed = seed if seed is not None else secrets.randbits(31)
        return self._worker.submit(
            lambda: LocalTrainingClient(self, self.base_model(base_model), lora=None, seed=actual_seed)
        )

    def create_training_client_from_state(
        self, path: str, *, with_optimizer: bool = False, continue_run: bool = False
    ) -> APIFuture[LocalTrainingClient]:
        """A training run that starts from the state saved at ``path`` (and, ``with_optimizer``, its optimizer).

        By default it is a new run (a new run id), as on the Tinker service. ``continue_run=True`` continues the
        run that saved ``path`` instead: the client writes under that run's id, and a save replaces a checkpoint
        of the same name (a resumed run writes again what the run it continues wrote after ``path``). A run
        directory resumes this way, so it keeps one run id across resumes.
        """
        parsed = LocalPath.parse(path)

        def job() -> LocalTrainingClient:
            meta = read_meta(parsed.directory(self.checkpoint_dir), path)
            base = self.base_model(meta.base_model)
            lora = None if meta.lora_rank is None else LoraSetup(meta.lora_rank, meta.target_modules, meta.lora_alpha)
            seed = meta.seed or 0
            client = (
                _ContinuedRun(self, base, lora=lora, seed=seed, run_id=parsed.run_id)
                if continue_run
                else LocalTrainingClient(self, base, lora=lora, seed=seed)
            )
            client.load_from(parsed, with_optimizer=with_optimizer)
            return client

        return self._worker.submit(job)

    def remove_partial_checkpoints(self) -> list[pathlib.Path]:
        """Remove what killed checkpoint writes left in the checkpoint directory (never a write in progress, of
        this or another process); the paths removed. See
        :func:`~tinkerflow.shell.backends.local.checkpoint.remove_partial_checkpoints`."""
        return remove_partial_checkpoints(self.checkpoint_dir)

    def delete_checkpoint(self, path: str) -> bool:
        """Delete the checkpoint ``local://<run>/<kind>/<name>`` (whether it existed); a kill midway leaves only a
        hidden leftover that :meth:`remove_partial_checkpoints` removes."""
        return delete_checkpoint(self.checkpoint_dir, path)

    @property
    def samples_from_checkpoints(self) -> bool:
        """Whether sampling clients read their weights from a checkpoint on disk (vLLM) rather than from memory."""
        return self._vllm is not None

    def sampler_at(self, path: LocalPath) -> AnySamplingClient:
        """A sampling client of the checkpoint at ``path``, made on the calling thread by the backend's engine (the
        training clients' ``create_sampling_client`` and ``save_weights_and_get_sampling_client`` use it too)."""
        return self._vllm.client_from_path(path, self) if self._vllm is not None else sampler_from_path(path, self)

    def _sampling_client_from_path(self, model_path: str) -> APIFuture[AnySamplingClient]:
        parsed = LocalPath.parse(model_path)
        return self._worker.submit(lambda: self.sampler_at(parsed))

    def _sampling_client_from_model(self, base_model: str) -> APIFuture[AnySamplingClient]:
        vllm = self._vllm
        if vllm is not None:
            return self._worker.submit(lambda: vllm.client_from_model(base_model, self))

        def job() -> AnySamplingClient:
            base = self.base_model(base_model)
            return LocalSamplingClient(base, base.build(), base_model)

        return self._worker.submit(job)


class _ContinuedRun(LocalTrainingClient):
    """A training client continuing the run of a saved state: it writes under that run's id, and its saves
    replace checkpoints of the same name (see :meth:`LocalBackend.create_training_client_from_state`)."""

    def __init__(
        self, backend: LocalBackend, base: BaseModel, *, lora: LoraSetup | None, seed: int, run_id: str
    ) -> None:
        super().__init__(backend, base, lora=lora, seed=seed)
        self.run_id = run_id

    def save_state(self, name: str, *, overwrite: bool = True) -> APIFuture[str]:
        return super().save_state(name, overwrite=overwrite)

    def save_weights_for_sampler(self, name: str, *, overwrite: bool = True) -> APIFuture[str]:
        return super().save_weights_for_sampler(name, overwrite=overwrite)

    def save_weights_external(self, name: str, *, overwrite: bool = True) -> APIFuture[str]:
        return super().save_weights_external(name, overwrite=overwrite)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError("LocalBackend", "base_model", f"expected a model name, got {name!r}.")


if TYPE_CHECKING:  # the type checker verifies that the local classes implement the protocols
    from tinkerflow.shell.io.run import CheckpointStore

    def _conforms(
        backend: LocalBackend, training: LocalTrainingClient, sampling: LocalSamplingClient
    ) -> tuple[Backend, TrainingClient, SamplingClient, CheckpointStore]:
        return backend, training, sampling, backend
