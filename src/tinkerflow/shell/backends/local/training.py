"""The local training client: forward/backward, AdamW steps, checkpoints, on this machine. (Shell.)

Training is LoRA (:mod:`~tinkerflow.shell.backends.local.lora`) or full fine-tuning. Gradients accumulate over
``forward_backward`` calls until ``optim_step`` (AdamW with decoupled weight decay, as ``torch.optim.AdamW``;
optional global grad-norm clip), which then zeroes them. A step with no gradient still moves the weights through
momentum. The passes themselves are in :mod:`~tinkerflow.shell.backends.local.forward`; checkpoints in
:mod:`~tinkerflow.shell.backends.local.checkpoint`. Requests run on the client's worker thread in submission order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
import torch

from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, NonFiniteError, ValidationError
from tinkerflow.losses import LossFnType
from tinkerflow.shell.backends.local import heap
from tinkerflow.shell.backends.local.attention import use_train_attention
from tinkerflow.shell.backends.local.batches import Batch, encode_data, microbatches, to_numpy
from tinkerflow.shell.backends.local.checkpoint import (
    OPTIMIZER_FILE,
    CheckpointError,
    CheckpointMeta,
    LocalPath,
    read_meta,
    read_tensors,
    read_weights,
    write_checkpoint,
)
from tinkerflow.shell.backends.local.forward import PlainHead, checkpoint_layers, run_builtin, run_custom
from tinkerflow.shell.backends.local.lora import LORA_ALPHA, LoraSetup, build_trainable
from tinkerflow.shell.backends.local.models import BaseModel
from tinkerflow.shell.backends.local.sampling import ModelSource, sampler_from_weights
from tinkerflow.shell.backends.protocol import (
    APIFuture,
    CustomLossFn,
    ModelInfo,
    Worker,
    check_adam_params,
    check_builtin_loss,
    check_custom_loss,
)
from tinkerflow.tokenizers import Tokenizer
from tinkerflow.training import AdamParams, ForwardBackwardOutput

if TYPE_CHECKING:
    from tinkerflow.shell.backends.protocol import SamplingClient


__all__ = ["LocalTrainingClient", "TrainingHost"]


class TrainingHost(ModelSource, Protocol):
    """What a training client needs from its backend (the ``LocalBackend``): base models, the checkpoint directory,
    the micro-batch budget, the logprob chunk, activation checkpointing and heap trimming between passes."""

    @property
    def max_tokens_per_batch(self) -> int: ...

    @property
    def logprob_chunk_tokens(self) -> int: ...

    @property
    def checkpoint_layers(self) -> bool: ...

    @property
    def trim_between_passes(self) -> bool: ...

    @property
    def samples_from_checkpoints(self) -> bool: ...

    def sampler_at(self, path: LocalPath) -> SamplingClient: ...


class LocalTrainingClient:
    """A training run on this machine (see the module docstring). Create it with ``LocalBackend``."""

    def __init__(self, backend: TrainingHost, base: BaseModel, *, lora: LoraSetup | None, seed: int) -> None:
        self._backend = backend
        self._base = base
        self._lora = lora
        self._seed = seed
        self.run_id = f"local-{uuid.uuid4().hex[:12]}"
        self._worker = Worker(f"tinkerflow-{self.run_id}")
        self._model, self._params = build_trainable(base, lora, seed)
        self._head = PlainHead.of(self._model)
        if backend.checkpoint_layers:
            checkpoint_layers(self._model)
            # measured faster than the flash kernel on CPUs only; one layer's probabilities held at a time
            if base.device.type == "cpu" and base.dtype in (torch.bfloat16, torch.float16):
                use_train_attention(self._model)
        self._optimizer = self._new_optimizer()
        self._steps = 0
        self._last_lr: float | None = None

    def _new_optimizer(self) -> torch.optim.AdamW:
        for _, parameter in self._params:
            parameter.grad = torch.zeros_like(parameter)
        return torch.optim.AdamW([parameter for _, parameter in self._params], lr=0.0, weight_decay=0.0)

    # -- the protocol ---------------------------------------------------------------------------------------------

    def forward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """As Tinker's ``forward``; ``data`` may also be ``tinker.types.Datum`` (converted)."""
        data = _own_datums(data)
        return self._submit_builtin(data, loss_fn, loss_fn_config, backward=False, where="forward")

    def forward_backward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """As Tinker's ``forward_backward``; ``data`` may also be ``tinker.types.Datum`` (converted)."""
        data = _own_datums(data)
        return self._submit_builtin(data, loss_fn, loss_fn_config, backward=True, where="forward_backward")

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn: CustomLossFn) -> APIFuture[ForwardBackwardOutput]:
        data = _own_datums(data)
        check_custom_loss(data, loss_fn)
        batch = encode_data(data, self._base, "forward_backward_custom")
        return self._worker.submit(
            lambda: self._diverged(
                "forward_backward_custom",
                lambda: run_custom(
                    self._model,
                    batch,
                    self._groups(batch),
                    loss_fn,
                    device=self._base.device,
                    head=self._head,
                    chunk=self._backend.logprob_chunk_tokens,
                    before_pass=self._before_pass(),
                ),
            )
        )

    def optim_step(self, adam_params: AdamParams) -> APIFuture[Mapping[str, float]]:
        check_adam_params(adam_params)
        return self._worker.submit(lambda: self._run_optim_step(adam_params))

    def save_state(self, name: str, *, overwrite: bool = False) -> APIFuture[str]:
        path = LocalPath(run_id=self.run_id, kind="weights", name=name)
        return self._worker.submit(lambda: self._run_save(path, optimizer=True, overwrite=overwrite))

    def save_weights_for_sampler(self, name: str, *, overwrite: bool = False) -> APIFuture[str]:
        path = LocalPath(run_id=self.run_id, kind="sampler_weights", name=name)
        return self._worker.submit(lambda: self._run_save(path, optimizer=False, overwrite=overwrite))

    def save_weights_external(self, name: str, *, overwrite: bool = False) -> APIFuture[str]:
        """Save the weights for export (``local://<run>/external_weights/<name>``; no optimizer state)."""
        path = LocalPath(run_id=self.run_id, kind="external_weights", name=name)
        return self._worker.submit(lambda: self._run_save(path, optimizer=False, overwrite=overwrite))

    def load_state(self, path: str, *, with_optimizer: bool = True) -> APIFuture[None]:
        parsed = LocalPath.parse(path)
        return self._worker.submit(lambda: self._run_load(parsed, with_optimizer=with_optimizer))

    def create_sampling_client(self, model_path: str) -> APIFuture[SamplingClient]:
        """A sampling client of the checkpoint ``model_path``, served by the backend's sampling engine (after this
        client's earlier requests, such as the save that wrote it)."""
        parsed = LocalPath.parse(model_path)
        return self._worker.submit(lambda: self._backend.sampler_at(parsed))

    def save_weights_and_get_sampling_client(self) -> APIFuture[SamplingClient]:
        """A sampling client of the current weights: merged in memory for the local engine; for an engine that
        reads checkpoints (vLLM), saved first as ``sampler_weights/ephemeral-<random>``."""
        if not self._backend.samples_from_checkpoints:
            return self._worker.submit(
                lambda: sampler_from_weights(self._base, self._lora, self._weights(), str(self.run_id))
            )

        def job() -> SamplingClient:
            path = LocalPath(run_id=self.run_id, kind="sampler_weights", name=f"ephemeral-{uuid.uuid4().hex[:12]}")
            self._run_save(path, optimizer=False, overwrite=False)
            return self._backend.sampler_at(path)

        return self._worker.submit(job)

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
        return self._worker.submit(lambda: {name: to_numpy(parameter) for name, parameter in self._params})

    def get_gradients(self) -> APIFuture[dict[str, np.ndarray]]:
        """The gradients accumulated since the last ``optim_step``, by parameter name."""
        return self._worker.submit(
            lambda: {name: to_numpy(cast("torch.Tensor", parameter.grad)) for name, parameter in self._params}
        )

    def get_optimizer_state(self) -> APIFuture[dict[str, np.ndarray]]:
        """AdamW's state: ``<name>.exp_avg``, ``<name>.exp_avg_sq`` and ``<name>.step`` per trained parameter."""
        return self._worker.submit(lambda: {key: to_numpy(value) for key, value in self._optimizer_tensors().items()})

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
        if loss_fn == "stable_reinforce":
            raise ConfigError(
                where,
                "loss_fn",
                "stable_reinforce is not implemented by the local backend: Tinker has not published its formula.",
                "use TinkerBackend, or importance_sampling / ppo / cispo / gspo locally.",
            )
        name, config = check_builtin_loss(data, loss_fn, loss_fn_config, where)
        batch = encode_data(data, self._base, where)

        def run() -> ForwardBackwardOutput:
            return run_builtin(
                self._model,
                self._head,
                batch,
                self._groups(batch),
                name,
                config,
                backward=backward,
                device=self._base.device,
                chunk=self._backend.logprob_chunk_tokens,
                before_pass=self._before_pass(),
            )

        return self._worker.submit(lambda: self._diverged(where, run))

    def _diverged(self, where: str, run: Callable[[], ForwardBackwardOutput]) -> ForwardBackwardOutput:
        """``run()``, with non-finite outputs after training steps reported against the learning rate."""
        try:
            return run()
        except NonFiniteError as error:
            if self._steps == 0 or self._last_lr is None:
                raise
            raise NonFiniteError(
                where,
                "learning_rate",
                f"the model's outputs are not finite after {self._steps} optimizer steps, "
                f"the last at learning rate {self._last_lr:g}: training diverged ({error.problem})",
                "lower the learning rate, or clip gradients (AdamParams.grad_clip_norm).",
            ) from error

    def _before_pass(self) -> Callable[[], object] | None:
        return heap.trim if self._backend.trim_between_passes else None

    def _groups(self, batch: Batch) -> list[list[int]]:
        return microbatches([tokens.size for tokens in batch.inputs_D], self._backend.max_tokens_per_batch)

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
        self._last_lr = params.learning_rate
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
        weights = {key: tensor.contiguous().cpu() for key, tensor in self._weights().items()}
        state = (
            {key: value.contiguous().cpu() for key, value in self._optimizer_tensors().items()} if optimizer else None
        )
        meta = CheckpointMeta(
            base_model=self._base.name,
            kind=path.kind,
            lora_rank=None if self._lora is None else self._lora.rank,
            lora_alpha=LORA_ALPHA if self._lora is None else self._lora.alpha,
            target_modules=() if self._lora is None else self._lora.target_modules,
            has_optimizer=optimizer,
            optimizer_steps=self._steps,
            seed=self._seed,
        )
        directory = path.directory(self._backend.checkpoint_dir)
        write_checkpoint(directory, meta, weights, state, overwrite=overwrite)
        return str(path)

    def load_from(self, path: LocalPath, *, with_optimizer: bool) -> None:
        """Replace the weights (and optimizer state) with a checkpoint's, on the calling thread (for the backend)."""
        self._run_load(path, with_optimizer=with_optimizer)

    def _run_load(self, path: LocalPath, *, with_optimizer: bool) -> None:
        directory = path.directory(self._backend.checkpoint_dir)
        meta = read_meta(directory, str(path))
        mine = (None, ()) if self._lora is None else (self._lora.rank, self._lora.target_modules)
        if meta.base_model != self._base.name or (meta.lora_rank, meta.target_modules) != mine:
            raise ConfigError(
                "load_state",
                "path",
                f"{path} holds {meta.base_model!r} (LoRA rank {meta.lora_rank}); this client trains "
                f"{self._base.name!r} (LoRA rank {mine[0]}).",
                "load it with LocalBackend.create_training_client_from_state instead.",
            )
        if with_optimizer and not meta.has_optimizer:
            raise CheckpointError(f"{path}: holds no optimizer state (saved for sampling); load it without optimizer.")
        weights = read_weights(directory, meta, self._base.device)
        if set(weights) != {name for name, _ in self._params}:
            raise CheckpointError(f"{path}: its parameters do not match this model's.")
        optimizer_state = read_tensors(directory / OPTIMIZER_FILE, self._base.device) if with_optimizer else {}
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


def _own_datums(data: Sequence[Datum]) -> Sequence[Datum]:
    """``data`` with any ``tinker.types.Datum`` converted to tinkerflow's (so SDK-style code runs locally)."""
    if not isinstance(data, Sequence) or all(isinstance(datum, Datum) for datum in data):
        return data
    from tinkerflow.interop import datum_from_tinker

    converted: list[Datum] = []
    for datum in data:
        foreign = type(datum).__module__.split(".")[0] == "tinker" and hasattr(datum, "loss_fn_inputs")
        converted.append(datum_from_tinker(datum) if foreign else datum)  # type: ignore[arg-type]  # checked above
    return converted
