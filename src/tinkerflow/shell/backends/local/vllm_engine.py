"""The optional vLLM sampling engine of the local backend: ``LocalBackend(sampling_engine="vllm")``. (Shell: a thread.)

The backend's sampling clients are then :class:`VllmSamplingClient` objects, the same
:class:`~tinkerflow.shell.backends.protocol.SamplingClient` as the local engine's, served by vLLM:

* **one engine per base model per backend**, created on the first client of that model: vLLM's asynchronous engine
  (``vllm.AsyncLLMEngine``, an alias of ``vllm.v1.engine.async_llm.AsyncLLM`` in vLLM 0.33) built with
  ``AsyncLLMEngine.from_engine_args(AsyncEngineArgs(...))`` on an asyncio event loop that runs on its own daemon
  thread. Each ``sample`` call submits a coroutine to that loop (``asyncio.run_coroutine_threadsafe``) and returns an
  :class:`~tinkerflow.shell.backends.protocol.APIFuture` of its concurrent future, so calls from many threads are
  batched by vLLM's continuous batching. :meth:`VllmEngines.close` (the backend's ``close``) cancels what is in
  flight, shuts the engine down and stops the loop, each step bounded in time.
* **LoRA checkpoints as vLLM adapters**: a ``local://<run>/sampler_weights/<name>`` checkpoint is already a peft
  adapter folder (``adapter_config.json`` with ``r``, ``lora_alpha``, ``target_modules``: what vLLM's ``PEFTHelper``
  requires; ``adapter_model.safetensors`` with peft's ``base_model.model.<module>.lora_A.weight`` keys), so it becomes
  ``LoRARequest(lora_name, lora_int_id, lora_path=<that folder>)``. Every distinct checkpoint (its folder and the
  sha256 of its files, so a save overwriting the same name is a new adapter) gets a fresh ``lora_int_id`` and a name
  carrying it (vLLM compares ``LoRARequest`` objects by name); the same checkpoint reuses its id. Weights saved with
  ``save_weights_for_sampler`` are thereby refreshed. Adapters on the unembedding (``lm_head``) are supported by
  vLLM 0.33 (``LogitsProcessorWithLoRA``); full fine-tuning weights are refused (:class:`ConfigError`).
* **the base model folder**: vLLM loads models from folders or hub names; the tiny test models exist only as a
  config, so their weights and a transformers tokenizer of the byte vocabulary are saved once under
  ``<checkpoint_dir>/.vllm-models/``.

Semantics follow the local sampler (conversions in :mod:`~tinkerflow.shell.backends.local.vllm_outputs`). Engine
arguments the backend sets: ``enable_lora=True``, ``max_lora_rank`` (the smallest value vLLM accepts that holds the
first adapter's rank, at least 32), ``max_loras=4``, ``dtype`` (the backend's), ``max_model_len`` (the model's
context), ``logprobs_mode="raw_logprobs"``, ``generation_config="vllm"`` (no sampling defaults from the model
folder) and ``gpu_memory_utilization=0.4`` (vLLM takes 0.92 of the GPU by default, leaving no room for the training
model on the same GPU). ``vllm_options`` overrides the last three groups and adds any other ``AsyncEngineArgs``
field. vLLM is imported only when the first engine is made (``importlib``); :func:`check_engine_choice` checks that
it is installed when the backend is created.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib
import importlib.util
import itertools
import logging
import pathlib
import re
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, Literal, Protocol, TypeAlias

import attrs
import numpy as np

from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SampleResponse, SamplingParams
from tinkerflow.shell.backends.base import SamplingClientBase
from tinkerflow.shell.backends.local.batches import check_room, prompt_tokens
from tinkerflow.shell.backends.local.checkpoint import (
    ADAPTER_FILE,
    CheckpointMeta,
    LocalPath,
    atomic_directory,
    file_sha256,
    verify_checkpoint,
)
from tinkerflow.shell.backends.local.embedded import EMBEDDED_NAMES, embedded_model_dir
from tinkerflow.shell.backends.local.models import BaseModel, ByteTokenizer, TinyModelSpec, byte_tokenizer_as_hf
from tinkerflow.shell.backends.local.sampling import ModelSource
from tinkerflow.shell.backends.local.vllm_outputs import (
    RequestOutputLike,
    VllmRequestError,
    prompt_scores,
    sample_kwargs,
    sample_seeds,
    to_response,
)
from tinkerflow.shell.backends.protocol import APIFuture
from tinkerflow.tokenizers import Tokenizer

__all__ = [
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "MAX_LORA_RANKS",
    "SamplingEngine",
    "VllmEngine",
    "VllmEngines",
    "VllmOption",
    "VllmSamplingClient",
    "check_engine_choice",
]

_LOG = logging.getLogger(__name__)

SamplingEngine: TypeAlias = Literal["local", "vllm"]
VllmOption: TypeAlias = str | int | float | bool
#: The values vLLM 0.33 accepts for ``max_lora_rank`` (``MaxLoRARanks`` in ``vllm/config/lora.py``).
MAX_LORA_RANKS: Final = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: vLLM's share of the GPU memory: room for the training model beside it (vLLM's own default is 0.92).
DEFAULT_GPU_MEMORY_UTILIZATION: Final = 0.4
_DEFAULT_MAX_LORAS: Final = 4
_MIN_LORA_RANK: Final = 32  # Tinker's default rank: a first adapter of a smaller rank leaves room for it
#: Engine arguments the backend derives from its own settings (overriding them would change the semantics).
_FIXED_OPTIONS: Final = frozenset(
    {"model", "tokenizer", "dtype", "enable_lora", "logprobs_mode", "max_model_len", "generation_config"}
)
_DTYPES: Final = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
_VLLM_DEFAULT_MAX_LOGPROBS: Final = 20  # ModelConfig.max_logprobs
_CLOSE_TIMEOUT: Final = 30.0
_INSTALL: Final = "pip install 'tinkerflow[vllm]' (a CUDA build, for GPU machines), or use sampling_engine='local'."


def check_engine_choice(sampling_engine: object, vllm_options: object) -> dict[str, VllmOption]:
    """The checked ``vllm_options`` (a copy) after checking ``sampling_engine`` and that vLLM is installed when
    chosen; :class:`ConfigError` naming the field otherwise."""
    where = "LocalBackend"
    if sampling_engine not in ("local", "vllm"):
        raise ConfigError(where, "sampling_engine", f'must be "local" or "vllm", got {sampling_engine!r}.')
    if vllm_options is None:
        options: dict[str, VllmOption] = {}
    elif not isinstance(vllm_options, Mapping):
        raise ConfigError(where, "vllm_options", f"must be a mapping of names to values, got {vllm_options!r}.")
    else:
        options = {}
        for key, value in vllm_options.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise ConfigError(where, "vllm_options", f"keys are AsyncEngineArgs field names, got {key!r}.")
            if not isinstance(value, (str, int, float, bool)):
                raise ConfigError(where, f"vllm_options[{key!r}]", f"must be a str, int, float or bool, got {value!r}.")
            if key in _FIXED_OPTIONS:
                raise ConfigError(where, f"vllm_options[{key!r}]", "is set by the backend.", "remove it.")
            options[key] = value
    if sampling_engine == "local":
        if options:
            raise ConfigError(where, "vllm_options", 'only apply with sampling_engine="vllm".')
        return options
    rank = options.get("max_lora_rank")
    if rank is not None and (isinstance(rank, bool) or rank not in MAX_LORA_RANKS):
        raise ConfigError(where, "vllm_options['max_lora_rank']", f"must be one of {MAX_LORA_RANKS} (vLLM's values).")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(where, "sampling_engine", '"vllm" needs the vllm package, which is not installed.', _INSTALL)
    return options


# ----------------------------------------------------------------------------------------------------------------
# The vLLM objects used, loaded lazily


class AsyncEngine(Protocol):
    """``vllm.v1.engine.async_llm.AsyncLLM``: ``generate`` yields ``RequestOutput`` objects (with
    ``output_kind=FINAL_ONLY`` only the finished one); ``shutdown`` stops the engine."""

    def generate(
        self, prompt: object, sampling_params: object, request_id: str, *, lora_request: object | None = None
    ) -> AsyncIterator[RequestOutputLike]: ...

    def shutdown(self) -> None: ...


@attrs.frozen
class VllmApi:
    """The part of vLLM's API the engine uses (names checked against vLLM 0.33.0)."""

    engine_args: Callable[..., object]
    engine_arg_names: frozenset[str]
    from_engine_args: Callable[[object], AsyncEngine]
    sampling_params: Callable[..., object]
    tokens_prompt: Callable[..., object]
    lora_request: Callable[..., object]
    final_only: object

    @classmethod
    def load(cls) -> VllmApi:
        try:
            vllm: Any = importlib.import_module("vllm")  # vLLM has no type hints we could rely on without it
            kinds: Any = importlib.import_module("vllm.sampling_params")
            lora: Any = importlib.import_module("vllm.lora.request")
            return cls(
                engine_args=vllm.AsyncEngineArgs,
                engine_arg_names=frozenset(field.name for field in dataclasses.fields(vllm.AsyncEngineArgs)),
                from_engine_args=vllm.AsyncLLMEngine.from_engine_args,
                sampling_params=vllm.SamplingParams,
                tokens_prompt=vllm.TokensPrompt,
                lora_request=lora.LoRARequest,
                final_only=kinds.RequestOutputKind.FINAL_ONLY,
            )
        except (ImportError, AttributeError) as error:
            raise ConfigError(
                "LocalBackend", "sampling_engine", f"cannot use vllm ({type(error).__name__}: {error}).", _INSTALL
            ) from error


def fitted_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank`` (at least 32); ConfigError above 512."""
    for allowed in MAX_LORA_RANKS:
        if allowed >= max(rank, _MIN_LORA_RANK):
            return allowed
    raise ConfigError("create_sampling_client", "model_path", f"LoRA rank {rank} is above vLLM's largest, 512.")


def model_folder(base: BaseModel, root: pathlib.Path) -> str:
    """What vLLM loads for ``base``: its folder or hub name; a tiny model saved once under ``root/.vllm-models``."""
    name = base.name
    if TinyModelSpec.parse(name) is None:
        if name in EMBEDDED_NAMES:
            return str(embedded_model_dir())
        path = pathlib.Path(name).expanduser()
        return str(path) if path.is_dir() else name
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]
    target = root / ".vllm-models" / f"{safe}-{str(base.dtype).removeprefix('torch.')}"
    if not (target / "config.json").is_file() and isinstance(base.tokenizer, ByteTokenizer):
        with atomic_directory(target, overwrite=True) as temp:
            model: Any = base.build()  # a transformers PreTrainedModel (save_pretrained is untyped)
            model.save_pretrained(str(temp))
            tokenizer: Any = byte_tokenizer_as_hf(base.tokenizer)
            tokenizer.save_pretrained(str(temp))
    return str(target)


# ----------------------------------------------------------------------------------------------------------------
# One engine per base model


class VllmEngine:
    """vLLM's async engine for one base model, on an event loop of its own thread (see the module docstring)."""

    def __init__(
        self, api: VllmApi, base: BaseModel, model: str, options: Mapping[str, VllmOption], max_lora_rank: int
    ) -> None:
        unknown = sorted(set(options) - api.engine_arg_names)
        if unknown:
            raise ConfigError("LocalBackend", f"vllm_options[{unknown[0]!r}]", "is not a field of AsyncEngineArgs.")
        dtype = _DTYPES.get(str(base.dtype).removeprefix("torch."))
        if dtype is None:
            raise ConfigError("LocalBackend", "dtype", f"vLLM runs float32, bfloat16 or float16, not {base.dtype}.")
        arguments: dict[str, object] = {
            "model": model,
            "tokenizer": model,
            "dtype": dtype,
            "max_model_len": base.max_context,
            "enable_lora": True,
            "max_lora_rank": max_lora_rank,
            "max_loras": _DEFAULT_MAX_LORAS,
            "logprobs_mode": "raw_logprobs",
            "generation_config": "vllm",
            "gpu_memory_utilization": DEFAULT_GPU_MEMORY_UTILIZATION,
            "disable_log_stats": True,
            **options,
        }
        self.base = base
        rank, logprobs = options.get("max_lora_rank", max_lora_rank), options.get("max_logprobs")
        self.max_lora_rank = rank if isinstance(rank, int) else max_lora_rank
        self.max_logprobs = logprobs if isinstance(logprobs, int) else _VLLM_DEFAULT_MAX_LOGPROBS
        if self.max_logprobs == -1:  # vLLM: no cap
            self.max_logprobs = base.vocab_size
        self._api = api
        self._lock = threading.Lock()
        self._adapters: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self._requests = itertools.count()
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()  # the requests in flight (touched on the loop's thread only)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tinkerflow-vllm", daemon=True)
        self._thread.start()
        try:  # built on the loop's thread, so that vLLM's output handler runs on that loop
            self._engine = self._on_loop(lambda: api.from_engine_args(api.engine_args(**arguments))).result()
        except BaseException:
            self._stop_loop(_CLOSE_TIMEOUT)
            raise

    @property
    def thread(self) -> threading.Thread:
        """The event loop's thread (it ends with :meth:`close`)."""
        return self._thread

    def _on_loop(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        async def run() -> Any:
            return call()

        return asyncio.run_coroutine_threadsafe(run(), self._loop)

    def adapter(self, path: str, directory: pathlib.Path, meta: CheckpointMeta) -> object:
        """The ``LoRARequest`` of the adapter checkpoint ``path`` (its id fresh for new contents, else reused)."""
        identity = meta.sha256 or (("adapter", file_sha256(directory / ADAPTER_FILE)),)
        with self._lock:
            lora_id = self._adapters.setdefault((str(directory), identity), len(self._adapters) + 1)
        return self._api.lora_request(lora_name=f"{path}@{lora_id}", lora_int_id=lora_id, lora_path=str(directory))

    def submit(
        self, prompt: list[int], requests: list[dict[str, object]], lora: object | None
    ) -> concurrent.futures.Future[list[RequestOutputLike]]:
        """Run one vLLM request per keyword set (``vllm.SamplingParams`` built here, so its errors are the
        caller's) on ``prompt``; the future holds their final outputs, in order."""
        params = [self._api.sampling_params(**kwargs, output_kind=self._api.final_only) for kwargs in requests]
        ids = [f"tinkerflow-{next(self._requests)}" for _ in requests]
        engine = self._engine

        async def one(sampling: object, request_id: str) -> RequestOutputLike:
            final: RequestOutputLike | None = None
            tokens = self._api.tokens_prompt(prompt_token_ids=list(prompt))
            async for output in engine.generate(tokens, sampling, request_id, lora_request=lora):
                final = output
            if final is None:
                raise VllmRequestError(f"vLLM returned nothing for request {request_id}.")
            return final

        async def run() -> list[RequestOutputLike]:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                return list(await asyncio.gather(*(one(item, name) for item, name in zip(params, ids, strict=True))))
            finally:
                if task is not None:
                    self._tasks.discard(task)

        with self._lock:
            if self._closed:
                raise ValidationError("sample", "client", "this backend's vLLM engine is closed.", "create a backend.")
            return asyncio.run_coroutine_threadsafe(run(), self._loop)

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Cancel the requests in flight, shut the engine down and stop the loop (each within ``timeout``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True

        async def stop() -> None:
            mine = list(self._tasks)
            for task in mine:
                task.cancel()
            if mine:
                await asyncio.wait(mine, timeout=timeout)
            self._engine.shutdown()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout)
        except (TimeoutError, concurrent.futures.TimeoutError):
            _LOG.warning("the vLLM engine of %s did not shut down within %s s", self.base.name, timeout)
        finally:
            self._stop_loop(timeout)

    def _stop_loop(self, timeout: float) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()


class VllmEngines:
    """The backend's vLLM engines, one per base model (created on first use, thread-safe), and its clients."""

    def __init__(self, options: Mapping[str, VllmOption], checkpoint_dir: pathlib.Path) -> None:
        self._options = dict(options)
        self._root = checkpoint_dir
        self._engines: dict[str, VllmEngine] = {}
        self._lock = threading.Lock()
        self._api: VllmApi | None = None

    def engine(self, base: BaseModel, lora_rank: int | None) -> VllmEngine:
        """The engine of ``base``, made now when there is none (sized for an adapter of ``lora_rank``)."""
        with self._lock:
            engine = self._engines.get(base.name)
            if engine is None:
                self._api = self._api or VllmApi.load()
                wanted = self._options.get("max_lora_rank")
                rank = wanted if isinstance(wanted, int) else fitted_lora_rank(lora_rank or _MIN_LORA_RANK)
                folder = model_folder(base, self._root)
                engine = self._engines[base.name] = VllmEngine(self._api, base, folder, self._options, rank)
        if lora_rank is not None and lora_rank > engine.max_lora_rank:
            raise ConfigError(
                "LocalBackend",
                "vllm_options['max_lora_rank']",
                f"the {base.name!r} engine holds LoRA rank {engine.max_lora_rank} at most, not {lora_rank}.",
                f"create the backend with vllm_options={{'max_lora_rank': {fitted_lora_rank(lora_rank)}}}.",
            )
        return engine

    def client_from_path(self, path: LocalPath, models: ModelSource) -> VllmSamplingClient:
        """A client of the LoRA checkpoint at ``path`` (hashes checked); full weights are a :class:`ConfigError`."""
        directory = path.directory(models.checkpoint_dir)
        meta = verify_checkpoint(directory, str(path))
        if meta.lora_rank is None:
            raise ConfigError(
                "create_sampling_client",
                "model_path",
                f"{path} holds full fine-tuning weights; the vLLM sampling engine serves LoRA adapters only.",
                f"export them (tinkerflow export {path} --format hf --out DIR) and point vLLM at DIR, or create the "
                "backend with sampling_engine='local'.",
            )
        base = models.base_model(meta.base_model)
        engine = self.engine(base, meta.lora_rank)
        return VllmSamplingClient(engine, str(path), engine.adapter(str(path), directory, meta))

    def client_from_model(self, name: str, models: ModelSource) -> VllmSamplingClient:
        """A client of the base model ``name`` (no adapter)."""
        return VllmSamplingClient(self.engine(models.base_model(name), None), name, None)

    def close(self) -> None:
        """Close every engine (see :meth:`VllmEngine.close`)."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()


# ----------------------------------------------------------------------------------------------------------------
# The client


class VllmSamplingClient(SamplingClientBase[np.ndarray]):
    """Samples a base model or one of its LoRA checkpoints with vLLM (see the module docstring); the prompts it runs
    are token arrays, checked as the local client checks them."""

    def __init__(self, engine: VllmEngine, source: str, lora: object | None) -> None:
        self._engine = engine
        self._base = engine.base
        self.source = source
        #: the ``LoRARequest`` this client's requests carry (``None`` for the base model)
        self.lora_request = lora
        self._counter = 0
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._closed = False

    def get_tokenizer(self) -> Tokenizer:
        return self._base.tokenizer

    def get_base_model(self) -> str:
        return self._base.name

    def close(self) -> None:
        """Refuse new requests and wait for this client's requests in flight (the engine stays the backend's)."""
        with self._lock:
            self._closed = True
            pending = list(self._pending)
        concurrent.futures.wait(pending)

    def _checked_prompt(self, prompt: ModelInput, where: str) -> np.ndarray:
        return prompt_tokens(prompt, self._base, where)

    def _submit(self, tokens: np.ndarray, requests: list[dict[str, object]]) -> APIFuture[list[RequestOutputLike]]:
        with self._lock:
            if self._closed:
                raise ValidationError("sample", "client", "this sampling client is closed.", "create a new one.")
            future = self._engine.submit([int(token) for token in tokens], requests, self.lora_request)
            self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return APIFuture(future)

    def _sample(
        self, tokens: np.ndarray, num_samples: int, params: SamplingParams, prompt_logprobs: bool, topk: int
    ) -> APIFuture[SampleResponse]:
        max_tokens = check_room(int(tokens.size), params, self._base.max_context, self._base.vocab_size)
        topk = min(topk, self._base.vocab_size)
        if topk > self._engine.max_logprobs:
            raise ValidationError(
                "sample",
                "topk_prompt_logprobs",
                f"{topk} is above the vLLM engine's max_logprobs ({self._engine.max_logprobs}).",
                "create the backend with a larger vllm_options['max_logprobs'].",
            )
        scored = prompt_logprobs or topk > 0
        requests = [
            sample_kwargs(params, max_tokens=max_tokens, seed=seed, prompt_topk=topk if scored and index == 0 else None)
            for index, seed in enumerate(sample_seeds(params.seed, num_samples))
        ]
        with self._lock:
            first_id = self._counter
            self._counter += num_samples
        prompt = [int(token) for token in tokens]
        return self._submit(tokens, requests).map(
            lambda outputs: to_response(outputs, prompt, first_id=first_id, scored=scored, topk=topk)
        )

    def _compute_logprobs(self, tokens: np.ndarray) -> APIFuture[np.ndarray]:
        if tokens.size >= self._base.max_context:
            raise ValidationError(
                "compute_logprobs",
                "prompt",
                f"{tokens.size} tokens: vLLM scores a prompt while generating one token, so it must be shorter than "
                f"the model's context of {self._base.max_context}.",
                "shorten the prompt.",
            )
        request = sample_kwargs(SamplingParams(temperature=0.0), max_tokens=1, seed=None, prompt_topk=0)
        prompt = [int(token) for token in tokens]
        return self._submit(tokens, [request]).map(
            lambda outputs: prompt_scores(prompt, outputs[0].prompt_logprobs, 0)[0]
        )
