"""LocalBackend: Tinker's training and sampling semantics on this machine (torch + transformers). (Shell.)

* Models: see :mod:`~tinkerflow.shell.backends.local.models` (the embedded SmolLM2-135M-Instruct by default,
  tiny random-init Llama/Qwen3 models for tests, local folders, hub names). CPU in fp32 by default; CUDA in bf16 when
  available. * Training: LoRA adapters (rank ``r``, ``alpha = 32``, scale ``alpha / r``, no dropout;
  :class:`LoraLinear`, peft's
  parametrization and parameter names) on the attention (q/k/v/o) and MLP (gate/up/down) projections and
  optionally the unembedding, as Tinker trains them; or full fine-tuning
  (:meth:`LocalBackend.create_full_training_client`). Gradients accumulate over ``forward_backward``
  calls until ``optim_step`` (AdamW with decoupled weight decay, as ``torch.optim.AdamW``; optional global
  grad-norm clip), which then zeroes them. A step with no gradient still moves the weights through momentum.
* Losses: exactly the formulas of :mod:`tinkerflow.losses` (summed per token, no normalization), reporting
  per-datum target logprobs and ``loss:sum``. Custom losses follow Tinker: differentiate the user's loss in the
  logprobs, back-propagate ``sum(dloss/dlp * lp)``; ``loss:sum`` is the custom loss, ``surrogate_loss:sum`` the
  surrogate's value.
* Sampling: one prefill of the prompt, a KV cache repeated for ``num_samples`` rows, batched decoding; top-k,
  top-p, temperature (0 = greedy), stop strings or stop tokens (the stopping token is kept), a seeded generator.
  The logprob reported for a sampled token is the model's ``log_softmax`` of the raw logits (before temperature,
  top-k and top-p), i.e. what a forward pass of the same weights gives it.
* Checkpoints: :mod:`tinkerflow.shell.backends.local.checkpoint` (``local://<run>/weights/<name>`` and
  ``local://<run>/sampler_weights/<name>``), written atomically.

Each training and sampling client runs its requests on its own worker thread, first in, first out.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import math
import os
import pathlib
import secrets
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import attrs
import numpy as np
import torch

from tinkerflow import losses
from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.losses import LossFnType
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams, StopReason
from tinkerflow.shell.backends.local.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    LocalPath,
    atomic_directory,
    read_meta,
    write_meta,
)
from tinkerflow.shell.backends.local.losses import builtin_loss_elementwise
from tinkerflow.shell.backends.local.models import EMBEDDED_MODEL, BaseModel, cache_root, load_base_model
from tinkerflow.shell.backends.protocol import APIFuture, CustomLossFn, ModelInfo, Tokenizer
from tinkerflow.training import AdamParams, ForwardBackwardOutput, LossFnOutput

if TYPE_CHECKING:
    from tinkerflow.shell.backends.protocol import Backend, SamplingClient, TrainingClient

__all__ = ["LORA_ALPHA", "LocalBackend", "LocalSamplingClient", "LocalTrainingClient", "LoraLinear", "LoraSetup"]

T = TypeVar("T")

#: LoRA scale numerator: the adapters' output is multiplied by ``LORA_ALPHA / rank``.
LORA_ALPHA: Final = 32
ATTENTION_MODULES: Final = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES: Final = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES: Final = ("lm_head",)
_PEFT_PREFIX: Final = "base_model.model."
_ADAPTER_FILE: Final = "adapter_model.safetensors"
_FULL_FILE: Final = "model.safetensors"
_OPTIMIZER_FILE: Final = "optimizer.safetensors"
#: Tinker's padding in top-k prompt logprobs where there is nothing to report (position 0).
_TOPK_PAD_LOGPROB: Final = -99999.0


@attrs.frozen
class LoraSetup:
    """Which modules get LoRA adapters, and their rank and alpha."""

    rank: int
    target_modules: tuple[str, ...]
    alpha: int = LORA_ALPHA

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class _Worker:
    """One thread running submitted jobs first in, first out: the submission-order guarantee."""

    def __init__(self, name: str) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, job: Callable[[], T]) -> APIFuture[T]:
        return APIFuture(self._executor.submit(job))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    array: np.ndarray = tensor.cpu().numpy()
    return array.copy()


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_int(value: object, where: str, field: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(where, field, f"must be an integer >= {low}, got {value!r}.")
    return value


# ----------------------------------------------------------------------------------------------------------------
# Input validation shared by the clients (everything here runs in the caller's thread, before anything is queued)


def _check_tokens(tokens: np.ndarray, vocab_size: int, where: str, field: str) -> None:
    if tokens.size and int(tokens.max()) >= vocab_size:
        bad = int(tokens.max())
        raise ValidationError(
            where,
            field,
            f"holds token id {bad}, outside the model's vocabulary of {vocab_size} ids.",
            "tokenize with this model's tokenizer.",
        )


def _prompt_tokens(prompt: ModelInput, base: BaseModel, where: str) -> np.ndarray:
    if not isinstance(prompt, ModelInput):
        raise ValidationError(where, "prompt", f"expected a ModelInput, got {type(prompt).__name__}.")
    if prompt.has_images:
        raise ValidationError(where, "prompt", "holds an image chunk; the local backend runs text-only models.")
    tokens = prompt.to_tokens()
    if tokens.size == 0:
        raise ValidationError(where, "prompt", "is empty.", "give at least one token.")
    _check_tokens(tokens, base.vocab_size, where, "prompt")
    if tokens.size > base.max_context:
        raise ValidationError(
            where,
            "prompt",
            f"has {tokens.size} tokens, longer than the model's context of {base.max_context}.",
            "shorten the prompt.",
        )
    return tokens


@attrs.frozen(eq=False)
class _Batch:
    """Datums as token arrays, checked against the model."""

    data: tuple[Datum, ...]
    inputs_D: tuple[np.ndarray, ...]


def _encode(data: Sequence[Datum], base: BaseModel, where: str) -> _Batch:
    inputs: list[np.ndarray] = []
    for index, datum in enumerate(data):
        if datum.model_input.has_images:
            raise ValidationError(
                where, f"data[{index}].model_input", "holds an image chunk; the local backend runs text-only models."
            )
        tokens = datum.model_input.to_tokens()
        _check_tokens(tokens, base.vocab_size, where, f"data[{index}].model_input")
        _check_tokens(datum.target_tokens_T, base.vocab_size, where, f"data[{index}].target_tokens_T")
        if tokens.size > base.max_context:
            raise ValidationError(
                where,
                f"data[{index}].model_input",
                f"has {tokens.size} positions, more than the model's context of {base.max_context}.",
                "truncate it (supervised_datum(..., max_length=...)).",
            )
        inputs.append(tokens)
    return _Batch(data=tuple(data), inputs_D=tuple(inputs))


def _microbatches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups of datum indices whose padded size (count x longest) stays within ``budget`` tokens."""
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index, length in enumerate(lengths):
        candidate = max(longest, length)
        if current and candidate * (len(current) + 1) > budget:
            groups.append(current)
            current, candidate = [], length
        current.append(index)
        longest = candidate
    if current:
        groups.append(current)
    return groups


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[target]`` per row (in fp32 at least: bf16/fp16 logits are upcast)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def _target_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(target_t | input_<=t)`` for a right-padded batch ``[D, T]``."""
    output = model(input_ids=input_ids, use_cache=False)
    logits = cast("torch.Tensor", output.logits)
    count, length, vocab = logits.shape
    return _token_logprobs(logits.reshape(count * length, vocab), targets.reshape(-1)).view(count, length)


#: Architectures whose causal-LM head is exactly ``lm_head(decoder(input_ids).last_hidden_state)`` (no logit
#: scaling or soft-capping), for which :class:`_PlainHead` may split the head by position.
_PLAIN_HEAD_TYPES: Final = frozenset({"llama", "mistral", "qwen2", "qwen3"})


class _PlainHead:
    """The decoder and the unembedding of a plain causal LM, called separately.

    Training then runs the unembedding (and its backward) with autograd only at the positions whose loss can have a
    non-zero gradient (weighted completion tokens in SFT, tokens with an advantage in RL), and without autograd at
    the others (prompt tokens), whose logprobs are still reported. Same values and gradients, less work.
    """

    def __init__(self, causal_lm: torch.nn.Module) -> None:
        self.decoder = cast("torch.nn.Module", causal_lm.model)
        self.head = cast("torch.nn.Module", causal_lm.lm_head)

    @staticmethod
    def of(model: torch.nn.Module) -> _PlainHead | None:
        """The split head of ``model`` (a peft model or a plain causal LM), or ``None`` when it is not plain."""
        unwrap = getattr(model, "get_base_model", None)
        causal_lm = cast("torch.nn.Module", unwrap()) if callable(unwrap) else model
        config = getattr(causal_lm, "config", None)
        plain = (
            getattr(config, "model_type", None) in _PLAIN_HEAD_TYPES
            and getattr(config, "final_logit_softcapping", None) is None
            and getattr(config, "logit_scale", None) is None
            and isinstance(getattr(causal_lm, "model", None), torch.nn.Module)
            and isinstance(getattr(causal_lm, "lm_head", None), torch.nn.Module)
        )
        return _PlainHead(causal_lm) if plain else None

    def target_logprobs(self, input_ids: torch.Tensor, targets: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """As :func:`_target_logprobs`, differentiable only at the positions where ``active`` is true."""
        hidden = cast("torch.Tensor", self.decoder(input_ids=input_ids, use_cache=False).last_hidden_state)
        count, length, width = hidden.shape
        flat_hidden = hidden.reshape(count * length, width)
        flat_targets = targets.reshape(-1)
        live = torch.nonzero(active.reshape(-1)).squeeze(1)
        idle = torch.nonzero(~active.reshape(-1)).squeeze(1)
        with torch.no_grad():
            idle_logprobs = _token_logprobs(self.head(flat_hidden[idle]), flat_targets[idle])
        live_logprobs = _token_logprobs(self.head(flat_hidden[live]), flat_targets[live])
        result = torch.zeros(count * length, dtype=live_logprobs.dtype, device=hidden.device)
        result = result.index_put((idle,), idle_logprobs).index_put((live,), live_logprobs)
        return result.view(count, length)


# ----------------------------------------------------------------------------------------------------------------
# Training


def _active_positions(
    loss_fn: LossFnType, inputs: Mapping[str, torch.Tensor], config: Mapping[str, float], mask: torch.Tensor
) -> torch.Tensor:
    """Positions whose per-token loss can have a non-zero derivative in the learner's logprob (see
    :mod:`tinkerflow.losses`: ``-w`` for cross-entropy, a multiple of ``A`` for the policy losses, and
    ``-(A - beta (lp - q))`` for DRO)."""
    if loss_fn == "cross_entropy":
        return mask & (inputs["weights"] != 0)
    if loss_fn == "dro" and config["beta"] != 0.0:
        return mask
    return mask & (inputs["advantages"] != 0)


class LocalTrainingClient:
    """A training run on this machine (see the module docstring). Create it with :class:`LocalBackend`."""

    def __init__(
        self,
        backend: LocalBackend,
        base: BaseModel,
        *,
        lora: LoraSetup | None,
        seed: int,
    ) -> None:
        self._backend = backend
        self._base = base
        self._lora = lora
        self._seed = seed
        self.run_id = f"local-{uuid.uuid4().hex[:12]}"
        self._worker = _Worker(f"tinkerflow-{self.run_id}")
        self._model, self._params = _build_trainable(base, lora, seed)
        self._head = _PlainHead.of(self._model)
        self._optimizer = self._new_optimizer()
        self._steps = 0

    # -- construction helpers ------------------------------------------------------------------------------------

    def _new_optimizer(self) -> torch.optim.AdamW:
        for _, parameter in self._params:
            parameter.grad = torch.zeros_like(parameter)
        return torch.optim.AdamW([parameter for _, parameter in self._params], lr=0.0, weight_decay=0.0)

    # -- the protocol ---------------------------------------------------------------------------------------------

    def forward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self._submit_builtin(data, loss_fn, loss_fn_config, backward=False, where="forward")

    def forward_backward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self._submit_builtin(data, loss_fn, loss_fn_config, backward=True, where="forward_backward")

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn: CustomLossFn) -> APIFuture[ForwardBackwardOutput]:
        where = "forward_backward_custom"
        losses.check_datums(data, where)
        if not callable(loss_fn):
            raise ValidationError(where, "loss_fn", f"must be callable, got {type(loss_fn).__name__}.")
        batch = _encode(data, self._base, where)
        return self._worker.submit(lambda: self._run_custom(batch, loss_fn))

    def optim_step(self, adam_params: AdamParams) -> APIFuture[Mapping[str, float]]:
        if not isinstance(adam_params, AdamParams):
            raise ValidationError(
                "optim_step", "adam_params", f"expected AdamParams, got {type(adam_params).__name__}."
            )
        return self._worker.submit(lambda: self._run_optim_step(adam_params))

    def save_state(self, name: str, *, overwrite: bool = False) -> APIFuture[str]:
        path = LocalPath(run_id=self.run_id, kind="weights", name=name)
        return self._worker.submit(lambda: self._run_save(path, optimizer=True, overwrite=overwrite))

    def save_weights_for_sampler(self, name: str, *, overwrite: bool = False) -> APIFuture[str]:
        path = LocalPath(run_id=self.run_id, kind="sampler_weights", name=name)
        return self._worker.submit(lambda: self._run_save(path, optimizer=False, overwrite=overwrite))

    def load_state(self, path: str, *, with_optimizer: bool = True) -> APIFuture[None]:
        parsed = LocalPath.parse(path)
        return self._worker.submit(lambda: self._run_load(parsed, with_optimizer=with_optimizer))

    def create_sampling_client(self, model_path: str) -> APIFuture[SamplingClient]:
        parsed = LocalPath.parse(model_path)
        return self._worker.submit(lambda: self._backend._sampler_from_path(parsed))

    def save_weights_and_get_sampling_client(self) -> APIFuture[SamplingClient]:
        return self._worker.submit(
            lambda: self._backend._sampler_from_weights(self._base, self._lora, self._weights(), str(self.run_id))
        )

    def get_info(self) -> ModelInfo:
        return ModelInfo(
            base_model=self._base.name,
            model_id=self.run_id,
            is_lora=self._lora is not None,
            lora_rank=None if self._lora is None else self._lora.rank,
            vocab_size=self._base.vocab_size,
            max_context=self._base.max_context,
        )

    def get_tokenizer(self) -> Tokenizer:
        return self._base.tokenizer

    # -- local extras (tests, debugging) ------------------------------------------------------------------------

    def get_trainable_parameters(self) -> APIFuture[dict[str, np.ndarray]]:
        """The trainable weights by name (LoRA: ``<module>.lora_A.weight`` / ``lora_B``), after earlier requests."""
        return self._worker.submit(lambda: {name: _to_numpy(parameter) for name, parameter in self._params})

    def get_gradients(self) -> APIFuture[dict[str, np.ndarray]]:
        """The gradients accumulated since the last ``optim_step``, by parameter name."""
        return self._worker.submit(
            lambda: {name: _to_numpy(cast("torch.Tensor", parameter.grad)) for name, parameter in self._params}
        )

    def get_optimizer_state(self) -> APIFuture[dict[str, np.ndarray]]:
        """AdamW's state: ``<name>.exp_avg``, ``<name>.exp_avg_sq`` and ``<name>.step`` per trained parameter."""
        return self._worker.submit(lambda: {key: _to_numpy(value) for key, value in self._optimizer_tensors().items()})

    def set_trainable_parameters(self, values: Mapping[str, np.ndarray]) -> APIFuture[None]:
        """Overwrite trainable weights by name (for finite-difference checks). Unknown names raise at once."""
        names = {name for name, _ in self._params}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValidationError("set_trainable_parameters", "values", f"unknown parameters {unknown[:3]}.")
        arrays = {name: np.asarray(value) for name, value in values.items()}

        def job() -> None:
            with torch.no_grad():
                for name, parameter in self._params:
                    if name in arrays:
                        parameter.copy_(torch.as_tensor(arrays[name], dtype=parameter.dtype))

        return self._worker.submit(job)

    @property
    def optimizer_steps(self) -> int:
        """AdamW steps applied so far (read it after waiting on the last ``optim_step``)."""
        return self._steps

    def close(self) -> None:
        """Finish queued requests and stop the worker thread."""
        self._worker.close()

    # -- jobs (run on the worker thread) ------------------------------------------------------------------------

    def _submit_builtin(
        self,
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float] | None,
        *,
        backward: bool,
        where: str,
    ) -> APIFuture[ForwardBackwardOutput]:
        name = losses.check_loss_fn(loss_fn, where)
        if name == "gspo":
            raise ConfigError(
                where, "loss_fn", "gspo is not implemented by the local backend.", "use ppo, cispo or TinkerBackend."
            )
        config = losses.resolve_loss_config(name, loss_fn_config, where)
        losses.check_loss_inputs(name, data, where)
        batch = _encode(data, self._base, where)
        return self._worker.submit(lambda: self._run_builtin(batch, name, config, backward=backward))

    def _padded(self, batch: _Batch, group: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded input ids, targets and a validity mask for the datums ``group`` (padding never affects the
        real positions: attention is causal)."""
        longest = max(batch.inputs_D[index].size for index in group)
        ids = np.zeros((len(group), longest), dtype=np.int64)
        targets = np.zeros((len(group), longest), dtype=np.int64)
        mask = np.zeros((len(group), longest), dtype=bool)
        for row, index in enumerate(group):
            length = batch.inputs_D[index].size
            ids[row, :length] = batch.inputs_D[index]
            targets[row, :length] = batch.data[index].target_tokens_T
            mask[row, :length] = True
        device = self._base.device
        return torch.from_numpy(ids).to(device), torch.from_numpy(targets).to(device), torch.from_numpy(mask).to(device)

    def _loss_inputs(
        self, batch: _Batch, group: Sequence[int], keys: Sequence[str], shape: torch.Size
    ) -> dict[str, torch.Tensor]:
        result: dict[str, torch.Tensor] = {}
        for key in keys:
            array = np.zeros(tuple(shape), dtype=np.float32)
            for row, index in enumerate(group):
                values = batch.data[index].loss_inputs()[key]
                array[row, : values.shape[0]] = values
            result[key] = torch.from_numpy(array).to(self._base.device)
        return result

    def _groups(self, batch: _Batch) -> list[list[int]]:
        return _microbatches([tokens.size for tokens in batch.inputs_D], self._backend.max_tokens_per_batch)

    def _run_builtin(
        self, batch: _Batch, loss_fn: LossFnType, config: Mapping[str, float], *, backward: bool
    ) -> ForwardBackwardOutput:
        keys = [key for key in losses.LOSS_INPUTS[loss_fn] if key != "target_tokens"]
        logprobs_D: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(batch.data)
        total = 0.0
        for group in self._groups(batch):
            ids, targets, mask = self._padded(batch, group)
            with torch.set_grad_enabled(backward):
                inputs = self._loss_inputs(batch, group, keys, ids.shape)
                if backward and self._head is not None:
                    active = _active_positions(loss_fn, inputs, config, mask)
                    logprobs = self._head.target_logprobs(ids, targets, active)
                else:
                    logprobs = _target_logprobs(self._model, ids, targets)
                safe = torch.where(mask, logprobs, torch.zeros_like(logprobs))
                elementwise = builtin_loss_elementwise(loss_fn, safe, inputs, config)
                loss = torch.where(mask, elementwise, torch.zeros_like(elementwise)).sum()
            if backward:
                torch.autograd.backward([loss])
            total += float(loss.detach())
            values = _to_numpy(logprobs.float())
            for row, index in enumerate(group):
                logprobs_D[index] = values[row, : batch.inputs_D[index].size].astype(np.float32)
        return ForwardBackwardOutput(
            loss_fn_outputs=tuple(LossFnOutput(logprobs_T=lp) for lp in logprobs_D), metrics={"loss:sum": total}
        )

    def _run_custom(self, batch: _Batch, loss_fn: CustomLossFn) -> ForwardBackwardOutput:
        where = "forward_backward_custom"
        groups = self._groups(batch)
        keep_graph = len(groups) == 1
        graphs: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
        leaves: list[torch.Tensor] = [torch.zeros(0)] * len(batch.data)
        for group in groups:
            ids, targets, mask = self._padded(batch, group)
            with torch.set_grad_enabled(keep_graph):
                logprobs = _target_logprobs(self._model, ids, targets)
            if keep_graph:
                graphs.append((group, logprobs, mask))
            for row, index in enumerate(group):
                length = batch.inputs_D[index].size
                leaf = logprobs[row, :length].detach().clone()
                leaves[index] = (leaf if leaf.dtype == torch.float64 else leaf.float()).requires_grad_(True)
        result = loss_fn(batch.data, leaves)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ValidationError(where, "loss_fn", "must return (loss, metrics).")
        loss, user_metrics = result
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValidationError(where, "loss_fn", "must return a scalar torch.Tensor as its loss.")
        metrics: dict[str, float] = {}
        for key, value in dict(user_metrics).items():
            number = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            metrics[str(key)] = number
        if not loss.requires_grad:
            raise ValidationError(where, "loss_fn", "returned a loss that does not depend on the logprobs.")
        grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
        grad_D = [torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads, strict=True)]
        surrogate = 0.0
        if not keep_graph:
            graphs = []
            for group in groups:
                ids, targets, mask = self._padded(batch, group)
                graphs.append((group, _target_logprobs(self._model, ids, targets), mask))
        for group, logprobs, mask in graphs:
            upstream = torch.zeros_like(logprobs)
            for row, index in enumerate(group):
                upstream[row, : batch.inputs_D[index].size] = grad_D[index].to(upstream.dtype)
            surrogate_loss = (torch.where(mask, logprobs, torch.zeros_like(logprobs)) * upstream).sum()
            torch.autograd.backward([surrogate_loss])
            surrogate += float(surrogate_loss.detach())
        metrics["loss:sum"] = float(loss.detach().sum())
        metrics["surrogate_loss:sum"] = surrogate
        outputs = tuple(LossFnOutput(logprobs_T=_to_numpy(leaf).astype(np.float32)) for leaf in leaves)
        return ForwardBackwardOutput(loss_fn_outputs=outputs, metrics=metrics)

    def _run_optim_step(self, params: AdamParams) -> Mapping[str, float]:
        tensors = [parameter for _, parameter in self._params]
        grads = [cast("torch.Tensor", parameter.grad) for parameter in tensors]
        total_norm = torch.nn.utils.get_total_norm(grads)
        if params.grad_clip_norm > 0.0:
            torch.nn.utils.clip_grads_with_norm_(tensors, params.grad_clip_norm, total_norm)
        norm = float(total_norm)
        for group in self._optimizer.param_groups:
            group["lr"] = params.learning_rate
            group["betas"] = (params.beta1, params.beta2)
            group["eps"] = params.eps
            group["weight_decay"] = params.weight_decay
        self._optimizer.step()
        for grad in grads:
            grad.zero_()
        self._steps += 1
        return {"grad_norm": norm, "learning_rate": params.learning_rate}

    def _weights(self) -> dict[str, torch.Tensor]:
        return {name: parameter.detach().clone() for name, parameter in self._params}

    def _optimizer_tensors(self) -> dict[str, torch.Tensor]:
        result: dict[str, torch.Tensor] = {}
        for name, parameter in self._params:
            state = self._optimizer.state.get(parameter, {})
            for key in ("exp_avg", "exp_avg_sq", "step"):
                if key in state:
                    tensor = cast("torch.Tensor", state[key]).detach().clone()
                    # the step count is stored with shape (1,)
                    result[f"{name}.{key}"] = tensor.reshape(-1) if key == "step" else tensor
        return result

    def _run_save(self, path: LocalPath, *, optimizer: bool, overwrite: bool) -> str:
        from safetensors.torch import save_file

        directory = path.directory(self._backend.checkpoint_dir)
        weights = {key: tensor.contiguous().cpu() for key, tensor in self._weights().items()}
        with atomic_directory(directory, overwrite=overwrite) as temp:
            if self._lora is not None:
                save_file({_PEFT_PREFIX + key: value for key, value in weights.items()}, str(temp / _ADAPTER_FILE))
                (temp / "adapter_config.json").write_text(
                    json.dumps(_peft_config(self._base.name, self._lora), indent=2), encoding="utf-8"
                )
            else:
                save_file(weights, str(temp / _FULL_FILE))
            if optimizer:
                state = {key: value.contiguous().cpu() for key, value in self._optimizer_tensors().items()}
                save_file(state, str(temp / _OPTIMIZER_FILE))
            write_meta(
                temp,
                CheckpointMeta(
                    base_model=self._base.name,
                    kind=path.kind,
                    lora_rank=None if self._lora is None else self._lora.rank,
                    lora_alpha=LORA_ALPHA if self._lora is None else self._lora.alpha,
                    target_modules=() if self._lora is None else self._lora.target_modules,
                    has_optimizer=optimizer,
                    optimizer_steps=self._steps,
                    seed=self._seed,
                ),
            )
        return str(path)

    def _run_load(self, path: LocalPath, *, with_optimizer: bool) -> None:
        directory = path.directory(self._backend.checkpoint_dir)
        meta = read_meta(directory, str(path))
        where = "load_state"
        mine = (None, ()) if self._lora is None else (self._lora.rank, self._lora.target_modules)
        if meta.base_model != self._base.name or (meta.lora_rank, meta.target_modules) != mine:
            raise ConfigError(
                where,
                "path",
                f"{path} holds {meta.base_model!r} (LoRA rank {meta.lora_rank}); this client trains "
                f"{self._base.name!r} (LoRA rank {mine[0]}).",
                "load it with LocalBackend.create_training_client_from_state instead.",
            )
        if with_optimizer and not meta.has_optimizer:
            raise CheckpointError(f"{path}: holds no optimizer state (saved for sampling); load it without optimizer.")
        weights = _read_weights(directory, meta, self._base.device)
        names = {name for name, _ in self._params}
        if set(weights) != names:
            raise CheckpointError(f"{path}: its parameters do not match this model's.")
        optimizer_state = _read_tensors(directory / _OPTIMIZER_FILE, self._base.device) if with_optimizer else {}
        with torch.no_grad():
            for name, parameter in self._params:
                parameter.copy_(weights[name].to(parameter.dtype))
        self._optimizer = self._new_optimizer()
        self._steps = 0
        if with_optimizer:
            for name, parameter in self._params:
                if f"{name}.exp_avg" in optimizer_state:
                    self._optimizer.state[parameter] = {
                        "step": optimizer_state[f"{name}.step"].reshape(()).cpu().clone(),
                        "exp_avg": optimizer_state[f"{name}.exp_avg"].clone(),
                        "exp_avg_sq": optimizer_state[f"{name}.exp_avg_sq"].clone(),
                    }
            self._steps = meta.optimizer_steps


def _peft_config(base_model: str, lora: LoraSetup) -> dict[str, object]:
    """A peft ``adapter_config.json`` for the adapter (so ``PeftModel.from_pretrained`` can load it)."""
    modules = sorted({name.rsplit(".", 1)[-1] for name in lora.target_modules})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
    }


def _read_tensors(file: pathlib.Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not file.is_file():
        raise CheckpointError(f"{file}: missing.")
    return load_file(str(file), device=str(device))


def _read_weights(directory: pathlib.Path, meta: CheckpointMeta, device: torch.device) -> dict[str, torch.Tensor]:
    if meta.lora_rank is None:
        return _read_tensors(directory / _FULL_FILE, device)
    raw = _read_tensors(directory / _ADAPTER_FILE, device)
    return {key.removeprefix(_PEFT_PREFIX): value for key, value in raw.items()}


def _build_trainable(
    base: BaseModel, lora: LoraSetup | None, seed: int
) -> tuple[torch.nn.Module, list[tuple[str, torch.nn.Parameter]]]:
    """A model to train: the base with LoRA adapters (seeded init: A Kaiming-uniform, B zero) or a full copy."""
    if lora is None:
        model = base.build(clone=True)
        model.requires_grad_(True)
        return model, list(model.named_parameters())
    model = base.build()
    wanted = set(lora.target_modules)
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in wanted
    ]
    if not targets:
        raise ConfigError("LocalBackend", "base_model", f"{base.name!r} has none of the modules LoRA targets.")
    generator = torch.Generator().manual_seed(seed)
    for name in targets:  # in module order, so the seeded initialization is reproducible
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = cast("torch.nn.Linear", getattr(parent, child))
        setattr(parent, child, LoraLinear(linear, lora.rank, lora.alpha, generator))
    model.eval()
    return model, [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]


class LoraLinear(torch.nn.Module):
    """``base(x) + scale * (x @ A^T) @ B^T`` with ``scale = alpha / rank``: LoRA as peft defines it.

    Parameters are named as peft names them (``<module>.lora_A.weight`` ``[rank, in]``, ``lora_B.weight``
    ``[out, rank]``) and initialized as peft initializes them (A Kaiming-uniform with ``a = sqrt(5)``, B zero), from
    an explicit generator. Unlike peft's layer, the scale multiplies the rank-wide intermediate and the update is
    accumulated into the base output in place (one fused matmul), which saves two full-width passes per layer,
    a lot for the unembedding. Adapters are fp32 on bf16/fp16 bases.
    """

    def __init__(self, base_layer: torch.nn.Linear, rank: int, alpha: int, generator: torch.Generator) -> None:
        super().__init__()
        self.base_layer = base_layer
        weight = base_layer.weight
        dtype = torch.float32 if weight.dtype in (torch.bfloat16, torch.float16) else weight.dtype
        self.lora_A = torch.nn.Linear(base_layer.in_features, rank, bias=False, device="cpu", dtype=dtype)
        self.lora_B = torch.nn.Linear(rank, base_layer.out_features, bias=False, device="cpu", dtype=dtype)
        torch.nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        torch.nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(weight.device)
        self.lora_B.to(weight.device)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = cast("torch.Tensor", self.base_layer(x))
        adapter = self.lora_A.weight
        hidden = torch.nn.functional.linear(x.to(adapter.dtype), adapter) * self.scale
        flat = out.view(-1, out.shape[-1])
        flat.addmm_(hidden.reshape(-1, hidden.shape[-1]).to(out.dtype), self.lora_B.weight.t().to(out.dtype))
        return out


def _lora_targets(
    model_modules: Sequence[str], *, train_attn: bool, train_mlp: bool, train_unembed: bool
) -> tuple[str, ...]:
    wanted: list[str] = []
    if train_attn:
        wanted += ATTENTION_MODULES
    if train_mlp:
        wanted += MLP_MODULES
    if train_unembed:
        wanted += UNEMBED_MODULES
    present = {name.rsplit(".", 1)[-1] for name in model_modules}
    return tuple(name for name in wanted if name in present)


# ----------------------------------------------------------------------------------------------------------------
# Sampling


class LocalSamplingClient:
    """Samples from fixed weights on this machine (see the module docstring)."""

    def __init__(self, base: BaseModel, model: torch.nn.Module, source: str) -> None:
        self._base = base
        self._model = model
        self.source = source
        self._worker = _Worker("tinkerflow-sampler")
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

    def compute_logprobs(self, prompt: ModelInput) -> APIFuture[np.ndarray]:
        tokens = _prompt_tokens(prompt, self._base, "compute_logprobs")
        return self._worker.submit(lambda: self._prompt_logprobs(tokens, 0)[0])

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> APIFuture[SampleResponse]:
        where = "sample"
        tokens = _prompt_tokens(prompt, self._base, where)
        _check_int(num_samples, where, "num_samples", 1)
        _check_int(topk_prompt_logprobs, where, "topk_prompt_logprobs", 0)
        if not isinstance(sampling_params, SamplingParams):
            raise ValidationError(
                where, "sampling_params", f"expected SamplingParams, got {type(sampling_params).__name__}."
            )
        room = self._base.max_context - tokens.size
        max_tokens = sampling_params.max_tokens if sampling_params.max_tokens is not None else room
        if max_tokens > room or room <= 0:
            raise ValidationError(
                where,
                "prompt",
                f"{tokens.size} prompt tokens + max_tokens {max_tokens} exceed the model's context of "
                f"{self._base.max_context}.",
                "shorten the prompt or lower max_tokens.",
            )
        for index, token in enumerate(sampling_params.stop_tokens):
            if token >= self._base.vocab_size:
                raise ValidationError(
                    where, f"sampling_params.stop_tokens[{index}]", f"{token} is outside the vocabulary."
                )
        # torch generators take 64-bit seeds: any int maps to one, deterministically
        seed = sampling_params.seed % (1 << 64) if sampling_params.seed is not None else secrets.randbits(63)
        with self._lock:
            first_id = self._counter
            self._counter += num_samples
        return self._worker.submit(
            lambda: self._sample(
                tokens,
                num_samples,
                sampling_params,
                max_tokens,
                seed,
                include_prompt_logprobs or topk_prompt_logprobs > 0,
                topk_prompt_logprobs,
                first_id,
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

    def _sample(
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
            tokens_np = _to_numpy(sampled)
            logprobs_np = _to_numpy(sampled_lp)
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
    scores[1:] = _to_numpy(logprobs.gather(1, ids[1:, None])[:, 0])
    if topk <= 0:
        return scores, None, None
    k = min(topk, logits.shape[-1])
    top = torch.topk(logprobs, k, dim=-1)
    topk_ids = np.zeros((ids.shape[0], k), dtype=np.int64)
    topk_lp = np.full((ids.shape[0], k), _TOPK_PAD_LOGPROB, dtype=np.float32)
    topk_ids[1:] = _to_numpy(top.indices)
    topk_lp[1:] = _to_numpy(top.values)
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
# The backend


class LocalBackend:
    """Tinker's semantics on this machine. See the module docstring.

    Args:
        checkpoint_dir: where checkpoints go (``local://<run>/...`` paths resolve under it); default
            ``$TINKERFLOW_CACHE/checkpoints``. Point it at ``<run dir>/checkpoints`` to keep a run together.
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.
        dtype: weights' dtype; default bf16 on CUDA, fp32 on CPU (tests use fp64 for finite differences).
        max_tokens_per_batch: padded tokens per forward pass; larger batches run in several passes whose
            gradients add up (same result, bounded memory).
    """

    def __init__(
        self,
        *,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_tokens_per_batch: int = 4096,
    ) -> None:
        self.checkpoint_dir = (
            pathlib.Path(checkpoint_dir) if checkpoint_dir is not None else cache_root() / "checkpoints"
        )
        self.device = _resolve_device(device)
        self.dtype = dtype
        self.max_tokens_per_batch = _check_int(max_tokens_per_batch, "LocalBackend", "max_tokens_per_batch", 1)
        self._bases: dict[str, BaseModel] = {}
        self._lock = threading.Lock()
        self._worker = _Worker("tinkerflow-local")

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish queued client creations and stop the backend's worker thread."""
        self._worker.close()

    def base_model(self, name: str) -> BaseModel:
        """The base model ``name``, loaded once per backend (thread-safe)."""
        if not isinstance(name, str) or not name:
            raise ConfigError("LocalBackend", "base_model", f"expected a model name, got {name!r}.")
        with self._lock:
            if name not in self._bases:
                self._bases[name] = load_base_model(name, self.device, self.dtype)
            return self._bases[name]

    # -- the protocol ---------------------------------------------------------------------------------------------

    def create_lora_training_client(
        self,
        base_model: str = EMBEDDED_MODEL,
        *,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
    ) -> APIFuture[LocalTrainingClient]:
        where = "create_lora_training_client"
        _check_int(rank, where, "rank", 1)
        if seed is not None:
            _check_int(seed, where, "seed", 0)
        if not (train_mlp or train_attn or train_unembed):
            raise ConfigError(where, "train_attn", "LoRA must train something.", "enable attn, mlp or unembed.")
        actual_seed = seed if seed is not None else secrets.randbits(31)

        def job() -> LocalTrainingClient:
            base = self.base_model(base_model)
            names = [key.removesuffix(".weight") for key, value in base.state.items() if value.ndim == 2]
            targets = _lora_targets(names, train_attn=train_attn, train_mlp=train_mlp, train_unembed=train_unembed)
            return LocalTrainingClient(self, base, lora=LoraSetup(rank=rank, target_modules=targets), seed=actual_seed)

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
        self, path: str, *, with_optimizer: bool = False
    ) -> APIFuture[LocalTrainingClient]:
        parsed = LocalPath.parse(path)

        def job() -> LocalTrainingClient:
            meta = read_meta(parsed.directory(self.checkpoint_dir), path)
            base = self.base_model(meta.base_model)
            lora = None if meta.lora_rank is None else LoraSetup(meta.lora_rank, meta.target_modules, meta.lora_alpha)
            client = LocalTrainingClient(self, base, lora=lora, seed=meta.seed or 0)
            client._run_load(parsed, with_optimizer=with_optimizer)
            return client

        return self._worker.submit(job)

    def create_sampling_client(
        self, *, model_path: str | None = None, base_model: str | None = None
    ) -> APIFuture[LocalSamplingClient]:
        if (model_path is None) == (base_model is None):
            raise ConfigError("create_sampling_client", "model_path", "give exactly one of model_path and base_model.")
        if model_path is not None:
            parsed = LocalPath.parse(model_path)
            return self._worker.submit(lambda: self._sampler_from_path(parsed))
        name = cast("str", base_model)

        def job() -> LocalSamplingClient:
            base = self.base_model(name)
            return LocalSamplingClient(base, base.build(), name)

        return self._worker.submit(job)

    # -- sampler construction ------------------------------------------------------------------------------------

    def _sampler_from_path(self, path: LocalPath) -> LocalSamplingClient:
        directory = path.directory(self.checkpoint_dir)
        meta = read_meta(directory, str(path))
        base = self.base_model(meta.base_model)
        lora = None if meta.lora_rank is None else LoraSetup(meta.lora_rank, meta.target_modules, meta.lora_alpha)
        return self._sampler_from_weights(base, lora, _read_weights(directory, meta, base.device), str(path))

    def _sampler_from_weights(
        self, base: BaseModel, lora: LoraSetup | None, weights: Mapping[str, torch.Tensor], source: str
    ) -> LocalSamplingClient:
        """A sampler whose model has the LoRA deltas merged into its weights (``W + scale * B @ A``)."""
        if lora is None:
            model = base.build(clone=True)
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    parameter.copy_(weights[name].to(parameter.dtype))
            return LocalSamplingClient(base, model, source)
        model = base.build()
        modules = sorted({key.rsplit(".lora_", 1)[0] for key in weights})
        with torch.no_grad():
            for name in modules:
                module = model.get_submodule(name)
                weight = cast("torch.Tensor", module.weight)
                a = weights[f"{name}.lora_A.weight"].float()
                b = weights[f"{name}.lora_B.weight"].float()
                merged = (weight.float() + lora.scale * (b @ a)).to(weight.dtype)
                module.weight = torch.nn.Parameter(merged, requires_grad=False)
        return LocalSamplingClient(base, model, source)


if TYPE_CHECKING:  # the type checker verifies that the local classes implement the protocols

    def _conforms(
        backend: LocalBackend, training: LocalTrainingClient, sampling: LocalSamplingClient
    ) -> tuple[Backend, TrainingClient, SamplingClient]:
        return backend, training, sampling
