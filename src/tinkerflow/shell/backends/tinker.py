"""TinkerBackend: the Tinker service through the ``tinker`` SDK, converting with :mod:`tinkerflow.interop`. (Shell.)

Every call checks its input the way the local backend does (loss name, loss config, loss inputs) before anything
is sent, converts tinkerflow records to ``tinker.types`` exactly, calls the SDK (whose requests to one training
client run in submission order) and converts the result back when the SDK's future completes.

Running it needs a Tinker API key (``TINKER_API_KEY``, or ``api_key=``). ``tinker`` is imported only when the
backend first creates its ``ServiceClient``; tests pass a fake client instead.

Differences from calling the SDK directly: ``dro`` requires ``loss_fn_config["beta"]`` (Tinker documents no
default); ``compute_logprobs`` returns a float32 array with NaN where the SDK returns ``None``; custom losses get
tinkerflow ``Datum`` records rather than ``tinker.types.Datum``.

Time bounds (the SDK alone retries an unreachable service for minutes without a word):

* before the first call that reaches the service, a backend that creates its own ``ServiceClient`` checks the key
  (a malformed one is a :class:`~tinkerflow.errors.ConfigError` naming ``api_key`` / ``TINKER_API_KEY``) and asks
  the service's ``/api/v1/healthz``, retrying with backoff (0.5 s, 1 s, 2 s, ... at most 8 s apart, each wait
  logged) for at most ``connect_timeout_s`` (default 30 s, or ``$TINKERFLOW_CONNECT_TIMEOUT_S``); then it fails
  with a ``ConfigError`` naming ``base_url``, the URL and the fix. A key the service refuses (401/403) fails at
  once;
* every call (each training, sampling and checkpoint call, ``get_info``, ``get_tokenizer``) is bounded by
  ``call_timeout_s`` (default 900 s, or ``$TINKERFLOW_CALL_TIMEOUT_S``), the SDK's own retries included: past it
  the call's future fails with :class:`TinkerTimeoutError`; the request itself is abandoned (the SDK cannot cancel
  it). While a call is pending, a warning every ``progress_every_s`` (30 s) says what it waits for;
* retries: transient errors (connection errors, timeouts, 408/409/429/5xx) are retried, with exponential backoff,
  by the SDK itself (its HTTP client, then its own 5-minute loop); tinkerflow adds no second layer, only the bound
  above. After the SDK gives up, a connection error is a :class:`TinkerServiceError` naming the URL, a refused key
  a ``ConfigError`` naming ``api_key``; other SDK errors reach the caller unchanged;
* :meth:`TinkerBackend.close` waits at most ``connect_timeout_s`` for the session to finish.

Checkpoints: :meth:`TinkerBackend.delete_checkpoint` and :meth:`TinkerBackend.list_checkpoints` go through the
SDK's ``RestClient`` (``DELETE`` / ``GET /api/v1/training_runs/<run>/checkpoints[/<kind>/<name>]``), bounded like
every call; a run directory's retention (``keep_last``) uses them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import attrs
import numpy as np

from tinkerflow import interop
from tinkerflow.datum import Datum, PromptSpan, ProvenanceSpan
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
from tinkerflow.shell.backends.tinker_bounds import (
    CALL_TIMEOUT_ENV,
    CALL_TIMEOUT_S,
    CONNECT_TIMEOUT_ENV,
    CONNECT_TIMEOUT_S,
    PROGRESS_EVERY_S,
    CallWatch,
    TinkerServiceError,
    TinkerTimeoutError,
    blocking,
    checked_key,
    checkpoint_path,
    create,
    resolved_url,
    seconds_setting,
    send,
    wait_for_service,
)
from tinkerflow.shell.backends.tinker_rest import RestClient, delete_checkpoint, list_checkpoints, rest_client_for
from tinkerflow.tokenizers import Tokenizer
from tinkerflow.training import AdamParams, ForwardBackwardOutput

if TYPE_CHECKING:
    import tinker

    from tinkerflow.shell.backends.protocol import Backend, SamplingClient, TrainingClient

__all__ = [
    "CALL_TIMEOUT_ENV",
    "CALL_TIMEOUT_S",
    "CONNECT_TIMEOUT_ENV",
    "CONNECT_TIMEOUT_S",
    "PROGRESS_EVERY_S",
    "TinkerBackend",
    "TinkerSamplingClient",
    "TinkerServiceError",
    "TinkerTimeoutError",
    "TinkerTrainingClient",
]

logger = logging.getLogger(__name__)


class TinkerSamplingClient(SamplingClientBase[ModelInput]):
    """A Tinker ``SamplingClient`` behind the :class:`~tinkerflow.shell.backends.protocol.SamplingClient` protocol
    (``sample`` and ``compute_logprobs`` come from :class:`~tinkerflow.shell.backends.base.SamplingClientBase`).
    Made by :class:`TinkerBackend`, its calls are bounded by the backend's ``call_timeout_s``."""

    def __init__(self, sdk_client: Any, watch: CallWatch | None = None) -> None:
        self.sdk = sdk_client
        self._watch = watch

    def _checked_prompt(self, prompt: ModelInput, where: str) -> ModelInput:
        check_prompt(prompt, where)
        return prompt

    def _sample(
        self, prompt: ModelInput, num_samples: int, params: SamplingParams, prompt_logprobs: bool, topk: int
    ) -> APIFuture[SampleResponse]:
        return send(
            self._watch,
            "sample",
            lambda: self.sdk.sample(
                prompt=interop.model_input_to_tinker(prompt),
                num_samples=num_samples,
                sampling_params=interop.sampling_params_to_tinker(params),
                include_prompt_logprobs=prompt_logprobs,
                topk_prompt_logprobs=topk,
            ),
            interop.sample_response_from_tinker,
        )

    def _compute_logprobs(self, prompt: ModelInput) -> APIFuture[np.ndarray]:
        def convert(values: Sequence[float | None]) -> np.ndarray:
            return np.array([np.nan if value is None else value for value in values], dtype=np.float32)

        sdk_prompt = interop.model_input_to_tinker(prompt)
        return send(self._watch, "compute_logprobs", lambda: self.sdk.compute_logprobs(sdk_prompt), convert)

    def get_tokenizer(self) -> Tokenizer:
        sdk_tokenizer = blocking(self._watch, "get_tokenizer", self.sdk.get_tokenizer)
        return HFTokenizer(sdk_tokenizer, self.get_base_model())

    def get_base_model(self) -> str:
        return str(self.sdk.get_base_model())


def sdk_datum(datum: Datum) -> tinker.types.Datum:
    """``datum`` as the SDK sends it: :func:`tinkerflow.interop.datum_to_tinker`, plus its provenance spans as
    ``PromptProvenanceSpan`` / ``SampledProvenanceSpan`` runs (``Datum.with_provenance``, which checks the tiling)."""
    sdk = interop.datum_to_tinker(datum)
    if datum.model_input_spans is None or datum.loss_fn_input_spans is None:
        return sdk
    import tinker.types as tt

    def spans(runs: tuple[ProvenanceSpan, ...]) -> list[tt.PromptProvenanceSpan | tt.SampledProvenanceSpan]:
        kinds = (tt.PromptProvenanceSpan, tt.SampledProvenanceSpan)
        return [
            kinds[not isinstance(r, PromptSpan)](sequence_id=r.sequence_id, offset=r.offset, length=r.length)
            for r in runs
        ]

    return sdk.with_provenance(
        model_input=spans(datum.model_input_spans), loss_fn_inputs=spans(datum.loss_fn_input_spans)
    )


class TinkerTrainingClient:
    """A Tinker ``TrainingClient`` behind the :class:`~tinkerflow.shell.backends.protocol.TrainingClient` protocol.
    Made by :class:`TinkerBackend`, its calls are bounded by the backend's ``call_timeout_s``."""

    def __init__(self, sdk_client: Any, watch: CallWatch | None = None) -> None:
        self.sdk = sdk_client
        self._watch = watch

    def forward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self._builtin(self.sdk.forward, data, loss_fn, loss_fn_config, "forward")

    def forward_backward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self._builtin(self.sdk.forward_backward, data, loss_fn, loss_fn_config, "forward_backward")

    def _builtin(
        self,
        method: Callable[..., Any],
        data: Sequence[Datum],
        loss_fn: LossFnType,
        loss_fn_config: Mapping[str, float] | None,
        where: str,
    ) -> APIFuture[ForwardBackwardOutput]:
        """Check a built-in loss request, then send it through the SDK's ``forward`` or ``forward_backward``."""
        name, _ = check_builtin_loss(data, loss_fn, loss_fn_config, where)
        sdk_data = [sdk_datum(datum) for datum in data]
        config = None if loss_fn_config is None else dict(loss_fn_config)
        return send(
            self._watch, where, lambda: method(sdk_data, name, config), interop.forward_backward_output_from_tinker
        )

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn: CustomLossFn) -> APIFuture[ForwardBackwardOutput]:
        check_custom_loss(data, loss_fn)
        records = tuple(data)

        def sdk_loss(_sdk_data: list[Any], logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
            loss, metrics = loss_fn(records, logprobs)
            return loss, {key: float(value) for key, value in metrics.items()}

        sdk_data = [sdk_datum(datum) for datum in data]
        return send(
            self._watch,
            "forward_backward_custom",
            lambda: self.sdk.forward_backward_custom(sdk_data, sdk_loss),
            interop.forward_backward_output_from_tinker,
        )

    def optim_step(self, adam_params: AdamParams) -> APIFuture[Mapping[str, float]]:
        check_adam_params(adam_params)

        def convert(response: Any) -> Mapping[str, float]:
            metrics = getattr(response, "metrics", None) or {}
            return {str(key): float(value) for key, value in metrics.items()}

        sdk_params = interop.adam_params_to_tinker(adam_params)
        return send(self._watch, "optim_step", lambda: self.sdk.optim_step(sdk_params), convert)

    def save_state(self, name: str) -> APIFuture[str]:
        return send(self._watch, f"save_state({name!r})", lambda: self.sdk.save_state(name), _path)

    def load_state(self, path: str, *, with_optimizer: bool = True) -> APIFuture[None]:
        _check_tinker_path(path, "load_state")

        def request() -> Any:
            with warnings.catch_warnings():
                # Deprecated in the SDK in favour of ServiceClient.create_training_client_from_state*, which starts
                # a new run; loading into this client keeps the run (and its position in the request order).
                warnings.simplefilter("ignore", FutureWarning)
                method = self.sdk.load_state_with_optimizer if with_optimizer else self.sdk.load_state
                return method(path)

        return send(self._watch, f"load_state({path!r})", request, lambda _response: None)

    def save_weights_for_sampler(self, name: str) -> APIFuture[str]:
        return send(
            self._watch, f"save_weights_for_sampler({name!r})", lambda: self.sdk.save_weights_for_sampler(name), _path
        )

    def create_sampling_client(self, model_path: str) -> APIFuture[TinkerSamplingClient]:
        _check_tinker_path(model_path, "create_sampling_client")
        return send(
            self._watch,
            f"create_sampling_client({model_path!r})",
            lambda: self.sdk.create_sampling_client(model_path),
            self._sampler,
        )

    def save_weights_and_get_sampling_client(self) -> APIFuture[TinkerSamplingClient]:
        return send(
            self._watch,
            "save_weights_and_get_sampling_client",
            self.sdk.save_weights_and_get_sampling_client,
            self._sampler,
        )

    def _sampler(self, sdk_client: Any) -> TinkerSamplingClient:
        return TinkerSamplingClient(sdk_client, self._watch)

    def get_info(self) -> ModelInfo:
        info = blocking(self._watch, "get_info", self.sdk.get_info)
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
        sdk_tokenizer = blocking(self._watch, "get_tokenizer", self.sdk.get_tokenizer)
        return HFTokenizer(sdk_tokenizer, self.get_info().base_model)


def _path(response: Any) -> str:
    return str(response.path)


def _check_tinker_path(path: object, where: str) -> None:
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise ValidationError(where, "path", f"{path!r} is not a tinker:// path.", "pass a path the service returned.")


class TinkerBackend(BackendBase[TinkerTrainingClient, TinkerSamplingClient]):
    """The Tinker service (the SDK's ``ServiceClient``) behind the :class:`~tinkerflow.shell.backends.protocol.Backend`
    protocol (``create_lora_training_client`` and ``create_sampling_client`` come from
    :class:`~tinkerflow.shell.backends.base.BackendBase`). See the module docstring for the time bounds.

    Args:
        service_client: an SDK ``ServiceClient`` (or a stand-in with the same methods, for tests); by default one
            is created on first use from ``api_key`` / ``base_url`` (or ``TINKER_API_KEY`` / ``TINKER_BASE_URL``),
            after the key and the service's reachability are checked.
        api_key: the Tinker API key.
        base_url: the service's URL.
        connect_timeout_s: most seconds to wait for the service to answer before the first call (``None``:
            ``$TINKERFLOW_CONNECT_TIMEOUT_S``, else 30).
        call_timeout_s: most seconds one call may take, the SDK's retries included (``None``:
            ``$TINKERFLOW_CALL_TIMEOUT_S``, else 900).
        progress_every_s: seconds between the warnings that say what a pending call waits for.
        rest_client: an SDK ``RestClient`` (or a stand-in) for :meth:`delete_checkpoint` / :meth:`list_checkpoints`;
            by default one is made on first use (from ``api_key`` / ``base_url``, or from ``service_client``).

    Raises:
        ConfigError: a timeout that is not a positive number (naming the argument or environment variable).
    """

    def __init__(
        self,
        service_client: object | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        connect_timeout_s: float | None = None,
        call_timeout_s: float | None = None,
        progress_every_s: float = PROGRESS_EVERY_S,
        rest_client: object | None = None,
    ) -> None:
        # the SDK ServiceClient, or a stand-in with the same methods (tests); typed as the SDK's class
        self._service: tinker.ServiceClient | None = cast("tinker.ServiceClient | None", service_client)
        self._api_key = api_key
        self._base_url = base_url
        self._owns_service = service_client is None
        self.connect_timeout_s = seconds_setting(connect_timeout_s, "connect_timeout_s", CONNECT_TIMEOUT_S)
        self.call_timeout_s = seconds_setting(call_timeout_s, "call_timeout_s", CALL_TIMEOUT_S)
        progress = seconds_setting(progress_every_s, "progress_every_s", PROGRESS_EVERY_S)
        # the URL named in messages: resolved (importing the SDK) when the backend first connects
        label = base_url if base_url is not None else "the Tinker service"
        self._watch = CallWatch(label, self.call_timeout_s, progress)
        self._connected = not self._owns_service  # a given client is used as it is
        self._connect_lock = threading.Lock()
        self._rest: RestClient | None = cast("RestClient | None", rest_client)  # the SDK RestClient, or None

    @property
    def base_url(self) -> str:
        """The service's URL (as given, else ``$TINKER_BASE_URL``, else the Tinker service's); for a given
        ``service_client`` without ``base_url``, ``"the Tinker service"``."""
        if self._owns_service:
            self._watch.base_url = resolved_url(self._base_url)
        return self._watch.base_url

    @property
    def service(self) -> tinker.ServiceClient:
        """The SDK ``ServiceClient`` (created on first use; no request is sent until a client is created)."""
        if self._service is None:
            import tinker

            self._service = tinker.ServiceClient(api_key=self._api_key, base_url=self._base_url)
        return self._service

    def _connected_service(self) -> tinker.ServiceClient:
        """The ``ServiceClient``, after checking (once) the key and that the service answers (module docstring)."""
        with self._connect_lock:
            if not self._connected:
                key = checked_key(self._api_key)
                wait_for_service(self.base_url, key, self.connect_timeout_s)
                self._connected = True
        return self.service

    def _rest_client(self) -> RestClient:
        """The SDK ``RestClient``: given, else made once (after the connection checks, when this backend owns the
        service), bounded like a call (its construction asks the service)."""
        if self._rest is None:
            if self._owns_service:
                self._connected_service()
            self._rest = rest_client_for(self._watch, self._service if not self._owns_service else None,
                                         self._base_url, self._api_key)  # fmt: skip
        return self._rest

    def delete_checkpoint(self, path: str) -> bool:
        """Delete the checkpoint ``tinker://<run>/<kind>/<name>`` on the service; whether it was there (the
        service answered 404: ``False``). Bounded by ``call_timeout_s``.

        Raises:
            ValidationError: ``path`` is no such path.
            TinkerTimeoutError: no answer within ``call_timeout_s``.
            TinkerServiceError: the service is gone, or refused the deletion (naming the HTTP status).
        """
        checked = checkpoint_path(path, "delete_checkpoint")
        return delete_checkpoint(self._rest_client(), self._watch, checked)

    def list_checkpoints(self, run_id: str) -> list[str]:
        """The ``tinker://`` paths of the training run ``run_id``'s checkpoints, sorted (none for a run the service
        does not know). Bounded by ``call_timeout_s``; errors as :meth:`delete_checkpoint`'s."""
        if not isinstance(run_id, str) or not run_id or "/" in run_id:
            raise ValidationError("list_checkpoints", "run_id", f"{run_id!r} is not a training run id.")
        return list_checkpoints(self._rest_client(), self._watch, run_id)

    def close(self, status: Literal["success", "errored", "interrupted"] = "success") -> None:
        """Finish the ``ServiceClient`` session with ``status`` and wait for it (at most ``connect_timeout_s``),
        if this backend created it."""
        if self._owns_service and self._service is not None:
            service, self._service = self._service, None
            try:  # on a daemon thread: the SDK may block in close() itself while a session start is pending
                waiting_future(lambda: service.close(status).result()).result(timeout=self.connect_timeout_s)
            except concurrent.futures.TimeoutError:
                logger.warning(
                    "the Tinker service at %s did not confirm the end of the session within %g s; going on",
                    self.base_url,
                    self.connect_timeout_s,
                )

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

    def _training(self, sdk_client: Any) -> TinkerTrainingClient:
        return TinkerTrainingClient(sdk_client, self._watch)

    def _sampling(self, sdk_client: Any) -> TinkerSamplingClient:
        return TinkerSamplingClient(sdk_client, self._watch)

    def _create_lora_client(self, base_model: str, spec: LoraSpec) -> APIFuture[TinkerTrainingClient]:
        service = self._connected_service()
        return create(
            self._watch,
            f"create_lora_training_client({base_model!r})",
            lambda: service.create_lora_training_client(base_model=base_model, **attrs.asdict(spec)),
            self._training,
        )

    def create_training_client_from_state(
        self, path: str, *, with_optimizer: bool = False
    ) -> APIFuture[TinkerTrainingClient]:
        _check_tinker_path(path, "create_training_client_from_state")
        service = self._connected_service()
        method = (
            service.create_training_client_from_state_with_optimizer
            if with_optimizer
            else service.create_training_client_from_state
        )

        def request() -> Any:
            return method(path)

        return create(self._watch, f"create_training_client_from_state({path!r})", request, self._training)

    def _sampling_client_from_path(self, model_path: str) -> APIFuture[TinkerSamplingClient]:
        _check_tinker_path(model_path, "create_sampling_client")
        service = self._connected_service()
        return create(
            self._watch,
            f"create_sampling_client({model_path!r})",
            lambda: service.create_sampling_client(model_path=model_path, base_model=None),
            self._sampling,
        )

    def _sampling_client_from_model(self, base_model: str) -> APIFuture[TinkerSamplingClient]:
        service = self._connected_service()
        return create(
            self._watch,
            f"create_sampling_client({base_model!r})",
            lambda: service.create_sampling_client(model_path=None, base_model=base_model),
            self._sampling,
        )


if TYPE_CHECKING:  # the type checker verifies that the Tinker classes implement the protocols

    def _conforms(
        backend: TinkerBackend, training: TinkerTrainingClient, sampling: TinkerSamplingClient
    ) -> tuple[Backend, TrainingClient, SamplingClient]:
        return backend, training, sampling
