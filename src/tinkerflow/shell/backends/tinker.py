"""TinkerBackend: the Tinker service through the ``tinker`` SDK, converting with :mod:`tinkerflow.interop`. (Shell.)

Every call checks its input the way the local backend does (loss name, loss config, loss inputs) before anything
is sent, converts tinkerflow records to ``tinker.types`` exactly, calls the SDK (whose requests to one training
client run in submission order) and converts the result back when the SDK's future completes.

Running it needs a Tinker API key (``TINKER_API_KEY``, or ``api_key=``). ``tinker`` is imported only when the
backend first creates its ``ServiceClient``; tests pass a fake client instead.

Differences from calling the SDK directly: ``dro`` requires ``loss_fn_config["beta"]`` (Tinker documents no
default); ``compute_logprobs`` returns a float32 array with NaN where the SDK returns ``None``; custom losses get
tinkerflow ``Datum`` records rather than ``tinker.types.Datum``.
"""

from __future__ import annotations

import concurrent.futures
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import attrs
import numpy as np

from tinkerflow import interop
from tinkerflow.datum import Datum
from tinkerflow.errors import ValidationError
from tinkerflow.losses import LossFnType
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SampleResponse, SamplingParams
from tinkerflow.shell.backends.base import BackendBase, LoraSpec, SamplingClientBase
from tinkerflow.shell.backends.hf_tokenizer import HFTokenizer
from tinkerflow.shell.backends.protocol import (
    APIFuture,
    CustomLossFn,
    ModelInfo,
    check_adam_params,
    check_builtin_loss,
    check_custom_loss,
    check_prompt,
    waiting_future,
)
from tinkerflow.tokenizers import Tokenizer
from tinkerflow.training import AdamParams, ForwardBackwardOutput

if TYPE_CHECKING:
    import tinker

    from tinkerflow.shell.backends.protocol import Backend, SamplingClient, TrainingClient

__all__ = ["TinkerBackend", "TinkerSamplingClient", "TinkerTrainingClient"]

U = TypeVar("U")


def _from_sdk(sdk_future: Any, convert: Callable[[Any], U]) -> APIFuture[U]:
    """An :class:`APIFuture` of ``convert(result)`` for an SDK future (anything with ``.future()`` or ``.result()``)."""
    future_method = getattr(sdk_future, "future", None)
    if callable(future_method):
        inner = future_method()
        if isinstance(inner, concurrent.futures.Future):
            return APIFuture(inner).map(convert)
    result_method = getattr(sdk_future, "result", None)
    if callable(result_method):
        return waiting_future(result_method).map(convert)
    return APIFuture.completed(sdk_future).map(convert)


class TinkerSamplingClient(SamplingClientBase[ModelInput]):
    """A Tinker ``SamplingClient`` behind the :class:`~tinkerflow.shell.backends.protocol.SamplingClient` protocol
    (``sample`` and ``compute_logprobs`` come from :class:`~tinkerflow.shell.backends.base.SamplingClientBase`)."""

    def __init__(self, sdk_client: Any) -> None:
        self.sdk = sdk_client

    def _checked_prompt(self, prompt: ModelInput, where: str) -> ModelInput:
        check_prompt(prompt, where)
        return prompt

    def _sample(
        self, prompt: ModelInput, num_samples: int, params: SamplingParams, prompt_logprobs: bool, topk: int
    ) -> APIFuture[SampleResponse]:
        sdk_future = self.sdk.sample(
            prompt=interop.model_input_to_tinker(prompt),
            num_samples=num_samples,
            sampling_params=interop.sampling_params_to_tinker(params),
            include_prompt_logprobs=prompt_logprobs,
            topk_prompt_logprobs=topk,
        )
        return _from_sdk(sdk_future, interop.sample_response_from_tinker)

    def _compute_logprobs(self, prompt: ModelInput) -> APIFuture[np.ndarray]:
        def convert(values: Sequence[float | None]) -> np.ndarray:
            return np.array([np.nan if value is None else value for value in values], dtype=np.float32)

        return _from_sdk(self.sdk.compute_logprobs(interop.model_input_to_tinker(prompt)), convert)

    def get_tokenizer(self) -> Tokenizer:
        return HFTokenizer(self.sdk.get_tokenizer(), self.get_base_model())

    def get_base_model(self) -> str:
        return str(self.sdk.get_base_model())


class TinkerTrainingClient:
    """A Tinker ``TrainingClient`` behind the :class:`~tinkerflow.shell.backends.protocol.TrainingClient` protocol."""

    def __init__(self, sdk_client: Any) -> None:
        self.sdk = sdk_client

    def forward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self._builtin(self.sdk.forward, data, loss_fn, loss_fn_config, "forward")

    def forward_backward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self._builtin(self.sdk.forward_backward, data, loss_fn, loss_fn_config, "forward_backward")

    @staticmethod
    def _builtin(
        method: Callable[..., Any],
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float] | None,
        where: str,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Check a built-in loss request, then send it through the SDK's ``forward`` or ``forward_backward``."""
        name, _ = check_builtin_loss(data, loss_fn, loss_fn_config, where)
        sdk_data = [interop.datum_to_tinker(datum) for datum in data]
        config = None if loss_fn_config is None else dict(loss_fn_config)
        return _from_sdk(method(sdk_data, name, config), interop.forward_backward_output_from_tinker)

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn: CustomLossFn) -> APIFuture[ForwardBackwardOutput]:
        check_custom_loss(data, loss_fn)
        records = tuple(data)

        def sdk_loss(_sdk_data: list[Any], logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
            loss, metrics = loss_fn(records, logprobs)
            return loss, {key: float(value) for key, value in metrics.items()}

        sdk_data = [interop.datum_to_tinker(datum) for datum in data]
        return _from_sdk(
            self.sdk.forward_backward_custom(sdk_data, sdk_loss), interop.forward_backward_output_from_tinker
        )

    def optim_step(self, adam_params: AdamParams) -> APIFuture[Mapping[str, float]]:
        check_adam_params(adam_params)

        def convert(response: Any) -> Mapping[str, float]:
            metrics = getattr(response, "metrics", None) or {}
            return {str(key): float(value) for key, value in metrics.items()}

        return _from_sdk(self.sdk.optim_step(interop.adam_params_to_tinker(adam_params)), convert)

    def save_state(self, name: str) -> APIFuture[str]:
        return _from_sdk(self.sdk.save_state(name), _path)

    def load_state(self, path: str, *, with_optimizer: bool = True) -> APIFuture[None]:
        _check_tinker_path(path, "load_state")
        with warnings.catch_warnings():
            # Deprecated in the SDK in favour of ServiceClient.create_training_client_from_state*, which starts a
            # new run; loading into this client keeps the run (and its position in the request order).
            warnings.simplefilter("ignore", FutureWarning)
            method = self.sdk.load_state_with_optimizer if with_optimizer else self.sdk.load_state
            sdk_future = method(path)
        return _from_sdk(sdk_future, lambda _response: None)

    def save_weights_for_sampler(self, name: str) -> APIFuture[str]:
        return _from_sdk(self.sdk.save_weights_for_sampler(name), _path)

    def create_sampling_client(self, model_path: str) -> APIFuture[TinkerSamplingClient]:
        _check_tinker_path(model_path, "create_sampling_client")
        return _from_sdk(self.sdk.create_sampling_client(model_path), TinkerSamplingClient)

    def save_weights_and_get_sampling_client(self) -> APIFuture[TinkerSamplingClient]:
        return _from_sdk(self.sdk.save_weights_and_get_sampling_client(), TinkerSamplingClient)

    def get_info(self) -> ModelInfo:
        info = self.sdk.get_info()
        model_data = getattr(info, "model_data", None)
        base_model = getattr(model_data, "model_name", None) or getattr(info, "model_name", None) or ""
        return ModelInfo(
            base_model=str(base_model),
            model_id=str(info.model_id),
            is_lora=bool(info.is_lora) if info.is_lora is not None else info.lora_rank is not None,
            lora_rank=info.lora_rank,
            tokenizer_id=getattr(model_data, "tokenizer_id", None),
        )

    def get_tokenizer(self) -> Tokenizer:
        return HFTokenizer(self.sdk.get_tokenizer(), self.get_info().base_model)


def _path(response: Any) -> str:
    return str(response.path)


def _check_tinker_path(path: object, where: str) -> None:
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise ValidationError(where, "path", f"{path!r} is not a tinker:// path.", "pass a path the service returned.")


class TinkerBackend(BackendBase[TinkerTrainingClient, TinkerSamplingClient]):
    """The Tinker service (the SDK's ``ServiceClient``) behind the :class:`~tinkerflow.shell.backends.protocol.Backend`
    protocol (``create_lora_training_client`` and ``create_sampling_client`` come from
    :class:`~tinkerflow.shell.backends.base.BackendBase`).

    Args:
        service_client: an SDK ``ServiceClient`` (or a stand-in with the same methods, for tests); by default one
            is created on first use from ``api_key`` / ``base_url`` (or ``TINKER_API_KEY`` / ``TINKER_BASE_URL``).
        api_key: the Tinker API key.
        base_url: the service's URL.
    """

    def __init__(
        self, service_client: object | None = None, *, api_key: str | None = None, base_url: str | None = None
    ) -> None:
        # the SDK ServiceClient, or a stand-in with the same methods (tests); typed as the SDK's class
        self._service: tinker.ServiceClient | None = cast("tinker.ServiceClient | None", service_client)
        self._api_key = api_key
        self._base_url = base_url
        self._owns_service = service_client is None

    @property
    def service(self) -> tinker.ServiceClient:
        """The SDK ``ServiceClient`` (created on first use)."""
        if self._service is None:
            import tinker

            self._service = tinker.ServiceClient(api_key=self._api_key, base_url=self._base_url)
        return self._service

    def close(self, status: Literal["success", "errored", "interrupted"] = "success") -> None:
        """Finish the ``ServiceClient`` session with ``status`` and wait for it, if this backend created it."""
        if self._owns_service and self._service is not None:
            self._service.close(status).result()
            self._service = None

    def __enter__(self) -> TinkerBackend:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.close("success")
        else:
            self.close("interrupted" if issubclass(kind, KeyboardInterrupt) else "errored")

    def get_tokenizer(self, base_model: str) -> Tokenizer:
        """The tokenizer of ``base_model``, from the shell's loader (local folder, offline vocabulary or hub cache;
        no service call)."""
        from tinkerflow.shell.io.tokenizers import load_tokenizer

        return load_tokenizer(base_model)

    def _create_lora_client(self, base_model: str, spec: LoraSpec) -> APIFuture[TinkerTrainingClient]:
        sdk_future = self.service.create_lora_training_client(base_model=base_model, **attrs.asdict(spec))
        return _from_sdk(sdk_future, TinkerTrainingClient)

    def create_training_client_from_state(
        self, path: str, *, with_optimizer: bool = False
    ) -> APIFuture[TinkerTrainingClient]:
        _check_tinker_path(path, "create_training_client_from_state")
        if with_optimizer:
            sdk_future = self.service.create_training_client_from_state_with_optimizer(path)
        else:
            sdk_future = self.service.create_training_client_from_state(path)
        return _from_sdk(sdk_future, TinkerTrainingClient)

    def _sampling_client_from_path(self, model_path: str) -> APIFuture[TinkerSamplingClient]:
        _check_tinker_path(model_path, "create_sampling_client")
        sdk_future = self.service.create_sampling_client(model_path=model_path, base_model=None)
        return _from_sdk(sdk_future, TinkerSamplingClient)

    def _sampling_client_from_model(self, base_model: str) -> APIFuture[TinkerSamplingClient]:
        sdk_future = self.service.create_sampling_client(model_path=None, base_model=base_model)
        return _from_sdk(sdk_future, TinkerSamplingClient)


if TYPE_CHECKING:  # the type checker verifies that the Tinker classes implement the protocols

    def _conforms(
        backend: TinkerBackend, training: TinkerTrainingClient, sampling: TinkerSamplingClient
    ) -> tuple[Backend, TrainingClient, SamplingClient]:
        return backend, training, sampling
