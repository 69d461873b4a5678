"""The backend protocol: the training and sampling calls tinkerflow's loops make, with futures. (Shell.)

Two implementations: :class:`~tinkerflow.shell.backends.tinker.TinkerBackend` (the Tinker service, through the
``tinker`` SDK) and :class:`~tinkerflow.shell.backends.local.LocalBackend` (torch + transformers + peft on this
machine). Loops only see :class:`Backend`, :class:`TrainingClient` and :class:`SamplingClient`, so pointing a
pipeline at the service is a one-line change.

Futures
-------
Every call returns an :class:`APIFuture` at once: block with ``future.result()`` or ``await future`` in async
code. Requests to one training client are applied in submission order (a request submitted before another is
applied before it), so submit ``forward_backward`` and ``optim_step`` back to back and wait later.

Both backends share :class:`Worker` (one thread per client, first in, first out) or :func:`waiting_future`, the
``check_*`` functions below and the bases of :mod:`~tinkerflow.shell.backends.base` (which declare the public
signatures they have in common once), so they refuse the same bad arguments with the same errors.

Bad input (unknown loss, missing loss input, token id outside the vocabulary, a sequence longer than the
context) raises a :class:`~tinkerflow.errors.TinkerflowError` from the submitting call itself, before anything
is queued, so no weights change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Never, Protocol, TypeAlias, TypeVar

import attrs
import numpy as np

from tinkerflow import losses
from tinkerflow._validate import int_at_least
from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.losses import LossFnType
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SampleResponse, SamplingParams
from tinkerflow.tokenizers import Tokenizer
from tinkerflow.training import AdamParams, ForwardBackwardOutput

if TYPE_CHECKING:
    import torch

__all__ = [
    "APIFuture",
    "Backend",
    "CustomLossFn",
    "ModelInfo",
    "SamplingClient",
    "TrainingClient",
    "Worker",
    "check_adam_params",
    "check_builtin_loss",
    "check_custom_loss",
    "check_one_source",
    "check_prompt",
    "check_sample_request",
    "waiting_future",
]

T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")

#: A custom loss: ``fn(data, logprobs_D) -> (loss, metrics)`` where ``logprobs_D[i]`` is the (differentiable)
#: tensor of target logprobs of ``data[i]``; ``loss`` is a scalar tensor. As in Tinker, the backend
#: differentiates ``loss`` with respect to the logprobs and back-propagates ``sum(dloss/dlp * lp)`` through
#: the model (a cross-entropy with weights ``-dloss/dlp``).
CustomLossFn: TypeAlias = Callable[
    [Sequence[Datum], Sequence["torch.Tensor"]], tuple["torch.Tensor", Mapping[str, float]]
]


class APIFuture(Generic[T_co]):
    """The pending result of a backend call: ``.result(timeout)`` blocks, ``await future`` does not.

    Wraps a :class:`concurrent.futures.Future`; the same object serves sync and async code (as the Tinker SDK's
    ``APIFuture``).
    """

    __slots__ = ("_future",)

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self._future = future

    @classmethod
    def completed(cls, value: U) -> APIFuture[U]:
        """A future that already holds ``value``."""
        future: concurrent.futures.Future[U] = concurrent.futures.Future()
        future.set_result(value)
        return APIFuture(future)

    @classmethod
    def failed(cls, error: BaseException) -> APIFuture[Never]:
        """A future that already holds ``error`` (its ``result()`` raises it; it fits any ``APIFuture[T]``)."""
        future: concurrent.futures.Future[Never] = concurrent.futures.Future()
        future.set_exception(error)
        return APIFuture(future)

    def result(self, timeout: float | None = None) -> T_co:
        """Block until the call finishes and return its value (or raise its error)."""
        value: T_co = self._future.result(timeout)
        return value

    async def result_async(self, timeout: float | None = None) -> T_co:
        """Await the value without blocking the event loop."""
        async with asyncio.timeout(timeout):
            value: T_co = await asyncio.wrap_future(self._future)
            return value

    def __await__(self) -> Generator[Any, None, T_co]:
        return self.result_async().__await__()

    def done(self) -> bool:
        """Whether the call has finished (successfully or not)."""
        return self._future.done()

    def future(self) -> concurrent.futures.Future[Any]:
        """The underlying :class:`concurrent.futures.Future` (for ``wait`` / ``as_completed``)."""
        return self._future

    def map(self, fn: Callable[[T_co], U]) -> APIFuture[U]:
        """A future of ``fn(value)``, computed when this one completes (errors propagate)."""
        mapped: concurrent.futures.Future[U] = concurrent.futures.Future()

        def _done(source: concurrent.futures.Future[Any]) -> None:
            if source.cancelled():
                mapped.cancel()
                mapped.set_running_or_notify_cancel()
                return
            error = source.exception()
            if error is not None:
                mapped.set_exception(error)
                return
            try:
                mapped.set_result(fn(source.result()))
            except BaseException as exc:  # the conversion's error belongs to the caller
                mapped.set_exception(exc)

        self._future.add_done_callback(_done)
        return APIFuture(mapped)


class Worker:
    """One thread running submitted jobs first in, first out: the submission-order guarantee of a client."""

    def __init__(self, name: str) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, job: Callable[[], U]) -> APIFuture[U]:
        """Queue ``job``; its future completes with its value (or its error) once every earlier job has run."""
        return APIFuture(self._executor.submit(job))

    def close(self) -> None:
        """Finish the queued jobs and stop the thread."""
        self._executor.shutdown(wait=True)


def waiting_future(wait: Callable[[], U]) -> APIFuture[U]:
    """A future of ``wait()``, a blocking call run on its own daemon thread (for futures that only block)."""
    pending: concurrent.futures.Future[U] = concurrent.futures.Future()

    def run() -> None:
        try:
            pending.set_result(wait())
        except BaseException as error:  # the call's error belongs to whoever awaits the future
            pending.set_exception(error)

    threading.Thread(target=run, name="tinkerflow-wait", daemon=True).start()
    return APIFuture(pending)


# ----------------------------------------------------------------------------------------------------------------
# Argument checks every backend makes, in the caller's thread, before anything is queued or sent


def check_builtin_loss(
    data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None, where: str
) -> tuple[LossFnType, Mapping[str, float]]:
    """The built-in loss's name and full configuration, after checking the data carry every input it needs."""
    name = losses.check_loss_fn(loss_fn, where)
    config = losses.resolve_loss_config(name, loss_fn_config, where)
    losses.check_loss_inputs(name, data, where)
    return name, config


def check_custom_loss(data: Sequence[Datum], loss_fn: object, where: str = "forward_backward_custom") -> None:
    """Raise unless ``data`` are non-empty datums and ``loss_fn`` is callable."""
    losses.check_datums(data, where)
    if not callable(loss_fn):
        raise ValidationError(where, "loss_fn", f"must be callable, got {type(loss_fn).__name__}.")


def check_adam_params(adam_params: object) -> None:
    """Raise unless ``adam_params`` is an :class:`~tinkerflow.training.AdamParams`."""
    if not isinstance(adam_params, AdamParams):
        raise ValidationError("optim_step", "adam_params", f"expected AdamParams, got {type(adam_params).__name__}.")


def check_prompt(prompt: object, where: str) -> None:
    """Raise unless ``prompt`` is a :class:`~tinkerflow.model_input.ModelInput`."""
    if not isinstance(prompt, ModelInput):
        raise ValidationError(where, "prompt", f"expected a ModelInput, got {type(prompt).__name__}.")


def check_sample_request(
    prompt: object, num_samples: object, sampling_params: object, topk_prompt_logprobs: object, where: str = "sample"
) -> None:
    """Raise unless a sampling request's arguments have the right types (``num_samples >= 1``, ``topk >= 0``)."""
    check_prompt(prompt, where)
    int_at_least(num_samples, where, "num_samples", 1)
    int_at_least(topk_prompt_logprobs, where, "topk_prompt_logprobs", 0)
    if not isinstance(sampling_params, SamplingParams):
        raise ValidationError(
            where, "sampling_params", f"expected SamplingParams, got {type(sampling_params).__name__}."
        )


def check_one_source(model_path: str | None, base_model: str | None) -> None:
    """Raise unless exactly one of ``model_path`` and ``base_model`` is given (``create_sampling_client``)."""
    if (model_path is None) == (base_model is None):
        raise ConfigError("create_sampling_client", "model_path", "give exactly one of model_path and base_model.")


@attrs.frozen
class ModelInfo:
    """What a training client trains.

    Attributes:
        base_model: the base model's name, as given when the client was created.
        model_id: the backend's id of this training run.
        is_lora: whether only LoRA adapters are trained.
        lora_rank: the adapters' rank (``None`` for full fine-tuning).
        vocab_size: the model's vocabulary size, when the backend knows it.
        max_context: the most positions a sequence may have, when the backend knows it.
        tokenizer_id: the tokenizer's name, when it differs from ``base_model``.
    """

    base_model: str
    model_id: str
    is_lora: bool
    lora_rank: int | None
    vocab_size: int | None = None
    max_context: int | None = None
    tokenizer_id: str | None = None


class SamplingClient(Protocol):
    """Samples from fixed weights (create a new one after saving new weights)."""

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> APIFuture[SampleResponse]:
        """``num_samples`` continuations of ``prompt``, each with the logprob of every sampled token.

        With ``include_prompt_logprobs`` the response also holds the logprob of each prompt token given the ones
        before it (NaN at position 0); ``topk_prompt_logprobs=k`` adds the k most likely tokens per position.
        """
        ...

    def compute_logprobs(self, prompt: ModelInput) -> APIFuture[np.ndarray]:
        """The logprob of each token of ``prompt`` given the tokens before it (float32, NaN at position 0)."""
        ...

    def get_tokenizer(self) -> Tokenizer: ...

    def get_base_model(self) -> str: ...


class TrainingClient(Protocol):
    """One training run: gradients, optimizer steps, checkpoints. Requests apply in submission order."""

    def forward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """Per-datum target logprobs and the loss, without gradients."""
        ...

    def forward_backward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """As :meth:`forward`, and accumulate the loss's gradient for the next :meth:`optim_step`."""
        ...

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn: CustomLossFn) -> APIFuture[ForwardBackwardOutput]:
        """Accumulate the gradient of a custom loss of the per-datum logprobs (see :data:`CustomLossFn`)."""
        ...

    def optim_step(self, adam_params: AdamParams) -> APIFuture[Mapping[str, float]]:
        """One AdamW step with the accumulated gradients (decoupled weight decay, optional grad-norm clip),
        then zero them. Returns the step's metrics (possibly empty)."""
        ...

    def save_state(self, name: str) -> APIFuture[str]:
        """Save weights and optimizer state; the future holds the checkpoint's path (``tinker://``/``local://``)."""
        ...

    def load_state(self, path: str, *, with_optimizer: bool = True) -> APIFuture[None]:
        """Replace the weights (and, ``with_optimizer``, the optimizer state) with a saved state's."""
        ...

    def save_weights_for_sampler(self, name: str) -> APIFuture[str]:
        """Save the current weights for sampling; the future holds their path."""
        ...

    def create_sampling_client(self, model_path: str) -> APIFuture[SamplingClient]:
        """A sampling client of weights saved by :meth:`save_weights_for_sampler` (or :meth:`save_state`)."""
        ...

    def save_weights_and_get_sampling_client(self) -> APIFuture[SamplingClient]:
        """A sampling client of the weights as they are once every earlier request has been applied."""
        ...

    def get_info(self) -> ModelInfo: ...

    def get_tokenizer(self) -> Tokenizer: ...


class Backend(Protocol):
    """Creates training and sampling clients (the Tinker ``ServiceClient``'s role)."""

    def create_lora_training_client(
        self,
        base_model: str,
        *,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
    ) -> APIFuture[TrainingClient]:
        """A LoRA training run on ``base_model`` (adapters of ``rank`` on the selected layers)."""
        ...

    def create_training_client_from_state(
        self, path: str, *, with_optimizer: bool = False
    ) -> APIFuture[TrainingClient]:
        """A training run that starts from a saved state (and, ``with_optimizer``, its optimizer state)."""
        ...

    def create_sampling_client(
        self, *, model_path: str | None = None, base_model: str | None = None
    ) -> APIFuture[SamplingClient]:
        """A sampling client of saved weights (``model_path``) or of a base model (exactly one of the two)."""
        ...

    def get_tokenizer(self, base_model: str) -> Tokenizer:
        """The tokenizer of ``base_model`` as this backend runs it (build renderers from it)."""
        ...
