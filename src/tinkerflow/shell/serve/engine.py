"""The server's engine: Tinker requests in, local backend calls out, encoded answers stored. (Shell.)

Each handler takes the SDK's own request type, checks it (a bad field is a :class:`ServeError` 4xx naming it),
converts it to tinkerflow records (:mod:`tinkerflow.interop`), starts the local backend call and returns the
future's id at once (:class:`~tinkerflow.shell.serve.futures.FutureBoard`). A training run's requests start in the
order they arrive and run first in, first out on its own thread (the SDK sends one run's requests one after
another, in its seq_id order); sampling sessions have threads of their own, so sampling goes on during training.

Training runs live in this process: after a restart their records, checkpoints and finished futures remain, but a
request to a run whose weights were lost answers 404 with the way back (``create_training_client_from_state``).
"""

from __future__ import annotations

import pathlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import tinker.types as tt
from tinker.types.save_weights_external_response import SaveWeightsExternalResponseInternal

from tinkerflow import interop
from tinkerflow.errors import TinkerflowError
from tinkerflow.shell.backends.local import LocalBackend, LocalSamplingClient, LocalTrainingClient
from tinkerflow.shell.backends.local.checkpoint import read_meta
from tinkerflow.shell.backends.local.lora import ATTENTION_MODULES, MLP_MODULES, UNEMBED_MODULES
from tinkerflow.shell.backends.protocol import APIFuture
from tinkerflow.shell.serve import codec
from tinkerflow.shell.serve.catalog import ModelCatalog
from tinkerflow.shell.serve.checks import builtin_loss, float_config, sdk_datums
from tinkerflow.shell.serve.errors import ServeError
from tinkerflow.shell.serve.futures import JSON, PROTOBUF, FutureBoard, Launched, Payload
from tinkerflow.shell.serve.paths import from_local, local_run_id, parse_tinker_path, to_local
from tinkerflow.shell.serve.samplers import SamplerPool, chain, close_later
from tinkerflow.shell.serve.store import CheckpointRecord, ModelRecord, Store

if TYPE_CHECKING:
    import pydantic

    from tinkerflow.tokenizers import Tokenizer

__all__ = ["Engine"]

#: The most sequences one sampling request may ask for (each holds a KV cache while it decodes).
MAX_NUM_SAMPLES: Final = 128
_UNSUPPORTED_SAMPLE_FIELDS: Final = (
    ("topk_sample_logprobs", 0),
    ("target_prompt_logprobs", None),
    ("prompt_alt_tokens_k", 0),
    ("prompt_logprobs_last_n", None),
)


def _json(model: pydantic.BaseModel) -> Payload:
    return Payload(JSON, model.model_dump_json(exclude_none=True).encode())


def _dir_size(path: pathlib.Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


class Engine:
    """Sessions, training runs and sampling sessions of one server, on one :class:`LocalBackend`.

    Args:
        store: the durable records (already recovered after a restart).
        backend: the local backend; its ``checkpoint_dir`` is where ``tinker://`` paths resolve.
        catalog: the served models.
        max_pending: requests in flight before new ones get 429.
        max_samplers: sampling sessions kept loaded (least recently used dropped first).
    """

    def __init__(
        self, store: Store, backend: LocalBackend, catalog: ModelCatalog, *, max_pending: int, max_samplers: int = 16
    ) -> None:
        self.store = store
        self.backend = backend
        self.catalog = catalog
        self.board = FutureBoard(store, max_pending)
        self.samplers = SamplerPool(backend, store, catalog, max_loaded=max_samplers)
        self._lock = threading.Lock()
        self._runs: dict[str, LocalTrainingClient] = {}
        self._stop = threading.Event()
        self._closers: list[Callable[[], object]] = []

    def on_close(self, action: Callable[[], object]) -> None:
        """Run ``action`` at the end of :meth:`close`."""
        self._closers.append(action)

    def start_reaper(self, session_timeout: float, *, keep_answers: float, interval: float = 30.0) -> None:
        """End sessions with no heartbeat for ``session_timeout`` seconds and free their runs' and samplers'
        memory (the SDK heartbeats every 10 s while its client lives; a script that exits without ``close()``
        never says goodbye), and drop answers older than ``keep_answers`` seconds. Runs until :meth:`close`."""

        def reap() -> None:
            while not self._stop.wait(interval):
                for session_id in self.store.stale_sessions(time.time() - session_timeout):
                    self.store.finish_session(session_id)
                    self.release_session(session_id)
                self.store.prune_futures(time.time() - keep_answers)

        threading.Thread(target=reap, name="tinkerflow-serve-reaper", daemon=True).start()

    def release_session(self, session_id: str) -> None:
        """Free the memory of a finished session's training runs and samplers (their records, checkpoints and
        answers stay; a request to a released run gets 404 with the way back). Their threads finish the work
        already queued and stop in the background."""
        model_ids = self.store.models_of_session(session_id)
        with self._lock:
            runs = [self._runs.pop(model_id) for model_id in model_ids if model_id in self._runs]
        samplers = self.samplers.release(self.store.samplers_of_session(session_id))
        self.store.mark_not_live(model_ids)

        def close_runs() -> None:
            for run in runs:
                run.close()

        threading.Thread(target=close_runs, name="tinkerflow-serve-release", daemon=True).start()
        close_later(samplers)

    def close(self, timeout: float = 30.0) -> None:
        """Let work in flight finish (at most ``timeout`` seconds), then stop every worker thread."""
        self._stop.set()
        self.board.wait_all(timeout)
        self.board.close()
        with self._lock:
            runs = list(self._runs.values())
            self._runs.clear()
        for run in runs:
            run.close()
        close_later(self.samplers.release_all())
        self.backend.close()
        for action in self._closers:
            action()

    def served_tokenizers(self) -> dict[str, Tokenizer]:
        """Each served name's tokenizer (names with ``:`` left out: tokenizer lookups cut names there)."""
        names = [name for name in self.catalog.names() if ":" not in name]
        return {name: self.backend.get_tokenizer(self.catalog.source(name)) for name in names}

    # -- sessions -------------------------------------------------------------------------------------------------

    def create_session(self, request: tt.CreateSessionRequest) -> tt.CreateSessionResponse:
        session_id = f"session-{secrets.token_hex(10)}"
        self.store.add_session(session_id, tuple(request.tags), request.user_metadata, request.sdk_version)
        return tt.CreateSessionResponse(session_id=session_id)

    def heartbeat(self, session_id: str) -> None:
        """Keep a session open; 410 once it has ended (the SDK then stops its heartbeats)."""
        self.check_session(session_id)
        self.store.heartbeat(session_id)

    def check_session(self, session_id: str) -> None:
        """Raise unless the session exists (404) and has not ended (410: ``close()`` or no heartbeats)."""
        session = self.store.session(session_id)
        if session is None:
            raise ServeError(404, "session_id", f"no session {session_id!r} on this server.")
        if session.finished:
            raise ServeError(
                410, "session_id", f"session {session_id!r} has ended (close() or no heartbeat); start a new client."
            )

    # -- training runs --------------------------------------------------------------------------------------------

    def run(self, model_id: object) -> LocalTrainingClient:
        """The live training run ``model_id``.

        Raises:
            ServeError: 404 when there is no such run, or its weights were lost in a restart.
        """
        if not isinstance(model_id, str):
            raise ServeError(400, "model_id", f"expected a string, got {model_id!r}.")
        with self._lock:
            run = self._runs.get(model_id)
        if run is not None:
            return run
        record = self.store.model(model_id)
        if record is None:
            raise ServeError(404, "model_id", f"no training run {model_id!r} on this server.")
        last = record.last_checkpoint or "a tinker:// path from save_state"
        raise ServeError(
            404,
            "model_id",
            f"training run {model_id!r} is no longer in memory (its session ended, or the server restarted); "
            f"resume with create_training_client_from_state_with_optimizer({last!r}).",
        )

    def _register_run(
        self, client: LocalTrainingClient, session_id: str, model_seq_id: int, metadata: Mapping[str, object] | None
    ) -> str:
        """Name the new run as the service does (``<session>:train:<n>``; the SDK relies on it) and keep it."""
        model_id = f"{session_id}:train:{model_seq_id}"
        try:
            self.check_session(session_id)  # it may have ended while the run was being built
        except ServeError:
            threading.Thread(target=client.close, name="tinkerflow-serve-release", daemon=True).start()
            raise
        client.run_id = local_run_id(model_id)  # its checkpoints go under this run's folder
        info = client.get_info()
        with self._lock:
            self._runs[model_id] = client
        self.store.add_model(
            ModelRecord(
                model_id=model_id,
                session_id=session_id,
                model_seq_id=model_seq_id,
                base_model=self.catalog.served_name(info.base_model),
                lora_rank=info.lora_rank,
                is_lora=info.is_lora,
                created=time.time(),
                user_metadata=metadata,
                last_checkpoint=None,
                last_sampler_checkpoint=None,
                live=True,
            )
        )
        return model_id

    def create_model(self, request: tt.CreateModelRequest) -> Launched:
        self.check_session(request.session_id)
        source = self.catalog.source(request.base_model)
        if not isinstance(request.optimizer_config, tt.AdamOptimizerConfig):
            raise ServeError(400, "optimizer_config", "the local backend trains with AdamW only (type 'adamw').")
        lora = request.lora_config or tt.LoraConfig(rank=32)

        def start() -> APIFuture[LocalTrainingClient]:
            return self.backend.create_lora_training_client(
                source,
                rank=lora.rank,
                seed=lora.seed,
                train_mlp=lora.train_mlp,
                train_attn=lora.train_attn,
                train_unembed=lora.train_unembed,
            )

        def encode(client: LocalTrainingClient) -> Payload:
            model_id = self._register_run(client, request.session_id, request.model_seq_id, request.user_metadata)
            return _json(tt.CreateModelResponse(model_id=model_id))

        return self.board.launch(
            owner=f"{request.session_id}:train",
            seq_id=request.model_seq_id,
            kind="create_model",
            start=start,
            encode=encode,
        )

    def get_info(self, request: tt.GetInfoRequest) -> tt.GetInfoResponse:
        info = self.run(request.model_id).get_info()
        served = self.catalog.served_name(info.base_model)
        return tt.GetInfoResponse(
            model_id=request.model_id,
            model_data=tt.ModelData(arch="causal_lm", model_name=served, tokenizer_id=served),
            is_lora=info.is_lora,
            lora_rank=info.lora_rank,
            model_name=served,
        )

    def forward_backward(self, request: codec.DecodedForwardBackward) -> Launched:
        run = self.run(request.model_id)
        loss = builtin_loss(request.loss_fn)
        config = float_config(request.loss_fn_config)
        data = sdk_datums(request.data)
        kind = "forward" if request.forward_only else "forward_backward"

        def start() -> APIFuture[object]:
            if request.forward_only:
                return run.forward(data, loss, config)
            return run.forward_backward(data, loss, config)

        def encode(output: object) -> Payload:
            from tinkerflow.training import ForwardBackwardOutput

            if not isinstance(output, ForwardBackwardOutput):
                raise TypeError(f"expected a ForwardBackwardOutput, got {type(output).__name__}")
            converted = interop.forward_backward_output_to_tinker(output)
            return Payload(PROTOBUF, codec.encode_forward_backward_output(converted))

        return self.board.launch(owner=request.model_id, seq_id=request.seq_id, kind=kind, start=start, encode=encode)

    def optim_step(self, request: tt.OptimStepRequest) -> Launched:
        run = self.run(request.model_id)
        if not isinstance(request.optim_params, tt.AdamParams):
            raise ServeError(400, "optim_params", "the local backend steps with AdamW only (send adam_params).")
        try:
            params = interop.adam_params_from_tinker(request.optim_params)
        except TinkerflowError as error:
            raise ServeError(400, "adam_params", str(error)) from error
        return self.board.launch(
            owner=request.model_id,
            seq_id=request.seq_id,
            kind="optim_step",
            start=lambda: run.optim_step(params),
            encode=lambda metrics: _json(tt.OptimStepResponse(metrics=dict(metrics))),
        )

    def _checkpoint_saved(self, model_id: str, local_path: str, ttl: int | None) -> str:
        parsed = parse_tinker_path(from_local(local_path))
        tinker_path = from_local(local_path)
        size = _dir_size(parsed.directory(self.backend.checkpoint_dir))
        now = time.time()
        expires = None if ttl is None else now + ttl
        record = CheckpointRecord(tinker_path, model_id, parsed.kind, parsed.name, now, size, expires, False)
        self.store.add_checkpoint(record)
        return tinker_path

    def _save(
        self,
        model_id: str,
        seq_id: int | None,
        ttl: int | None,
        kind: str,
        start: Callable[[], APIFuture[str]],
        answer: Callable[[str, int | None], pydantic.BaseModel],
    ) -> Launched:
        """Start a checkpoint save; its answer (``answer(tinker path, size in bytes)``) is stored once it is on disk."""

        def encode(local_path: str) -> Payload:
            path = self._checkpoint_saved(model_id, local_path, ttl)
            record = self.store.checkpoint(path)
            return _json(answer(path, None if record is None else record.size_bytes))

        return self.board.launch(owner=model_id, seq_id=seq_id, kind=kind, start=start, encode=encode)

    def save_weights(self, request: tt.SaveWeightsRequest) -> Launched:
        run = self.run(request.model_id)
        name = request.path or f"state-{request.seq_id or secrets.token_hex(4)}"
        return self._save(
            request.model_id,
            request.seq_id,
            request.ttl_seconds,
            "save_weights",
            lambda: run.save_state(name, overwrite=request.overwrite),
            lambda path, _: tt.SaveWeightsResponse(path=path, type="save_weights"),
        )

    def save_weights_for_sampler(self, request: tt.SaveWeightsForSamplerRequest, session_id: str | None) -> Launched:
        run = self.run(request.model_id)
        if request.path is None:
            return self._ephemeral_sampler(run, request, session_id)
        name = request.path
        return self._save(
            request.model_id,
            request.seq_id,
            request.ttl_seconds,
            "save_weights_for_sampler",
            lambda: run.save_weights_for_sampler(name),
            lambda path, _: tt.SaveWeightsForSamplerResponseInternal(path=path, type="save_weights_for_sampler"),
        )

    def _ephemeral_sampler(
        self, run: LocalTrainingClient, request: tt.SaveWeightsForSamplerRequest, session_id: str | None
    ) -> Launched:
        record = self.store.model(request.model_id)
        owner_session = session_id or (record.session_id if record is not None else "")
        if request.sampling_session_seq_id is None:
            raise ServeError(
                400, "sampling_session_seq_id", "a save without a path needs the sampling session's seq id."
            )
        sampler_id = f"{owner_session}:sample:{request.sampling_session_seq_id}"

        def encode(sampler: object) -> Payload:
            if not isinstance(sampler, LocalSamplingClient):
                raise TypeError(f"expected a LocalSamplingClient, got {type(sampler).__name__}")
            served = self.catalog.served_name(sampler.get_base_model())
            self.samplers.adopt(sampler_id, owner_session, APIFuture.completed(sampler), served)
            return _json(tt.SaveWeightsForSamplerResponseInternal(sampling_session_id=sampler_id))

        return self.board.launch(
            owner=request.model_id,
            seq_id=request.seq_id,
            kind="save_weights_for_sampler",
            start=lambda: run.save_weights_and_get_sampling_client(),
            encode=encode,
        )

    def save_weights_external(self, request: tt.SaveWeightsExternalRequest) -> Launched:
        """Save the weights for download (``tinker://<run>/external_weights/<name>``)."""
        run = self.run(request.model_id)
        if request.age_encryption_recipients:
            raise ServeError(400, "age_encryption_recipients", "this server does not encrypt exports; leave it unset.")
        return self._save(
            request.model_id,
            request.seq_id,
            request.ttl_seconds,
            "save_weights_external",
            lambda: run.save_weights_external(request.path),
            lambda path, size: SaveWeightsExternalResponseInternal(path=path, size_bytes=size),
        )

    def weights_info(self, tinker_path: object) -> tt.WeightsInfoResponse:
        """What a checkpoint holds (base model, LoRA settings), read from its metadata."""
        parsed = parse_tinker_path(tinker_path, "tinker_path")
        try:
            meta = read_meta(parsed.directory(self.backend.checkpoint_dir), str(tinker_path))
        except TinkerflowError as error:
            raise ServeError(404, "tinker_path", str(error)) from error
        modules = set(meta.target_modules)
        return tt.WeightsInfoResponse(
            base_model=self.catalog.served_name(meta.base_model),
            is_lora=meta.lora_rank is not None,
            lora_rank=meta.lora_rank,
            train_unembed=bool(modules & set(UNEMBED_MODULES)),
            train_mlp=bool(modules & set(MLP_MODULES)),
            train_attn=bool(modules & set(ATTENTION_MODULES)),
        )

    def load_weights(self, request: tt.LoadWeightsRequest) -> Launched:
        local = to_local(request.path)
        if request.model_id is not None:  # load into a run that exists
            run = self.run(request.model_id)
            return self.board.launch(
                owner=request.model_id,
                seq_id=request.seq_id,
                kind="load_weights",
                start=lambda: run.load_state(local, with_optimizer=request.optimizer),
                encode=lambda _: _json(tt.LoadWeightsResponse(path=request.path, model_id=request.model_id)),
            )
        if request.session_id is None:
            raise ServeError(400, "session_id", "give model_id (load into a run) or session_id (a new run).")
        self.check_session(request.session_id)
        session_id = request.session_id

        def encode(client: LocalTrainingClient) -> Payload:
            model_id = self._register_run(client, session_id, model_seq_id, request.user_metadata)
            return _json(tt.LoadWeightsResponse(path=request.path, model_id=model_id, type="load_weights"))

        if request.model_seq_id is None:
            raise ServeError(400, "model_seq_id", "a load that creates a run needs the session's model_seq_id.")
        model_seq_id = request.model_seq_id
        return self.board.launch(
            owner=f"{session_id}:train",
            seq_id=model_seq_id,
            kind="load_weights",
            start=lambda: self.backend.create_training_client_from_state(local, with_optimizer=request.optimizer),
            encode=encode,
        )

    # -- sampling -------------------------------------------------------------------------------------------------

    def sample(self, request: tt.SampleRequest) -> tuple[Launched, list[str]]:
        """Start a sampling request; also returns the ids its sequences will carry."""
        if not 1 <= request.num_samples <= MAX_NUM_SAMPLES:
            raise ServeError(
                400,
                "num_samples",
                f"must be 1..{MAX_NUM_SAMPLES} per request, got {request.num_samples}; send several requests.",
            )
        for field, default in _UNSUPPORTED_SAMPLE_FIELDS:
            if getattr(request, field) != default:
                raise ServeError(400, field, "the local backend does not support this field yet; leave it unset.")
        if request.record_stability_info:  # the SDK sends false by default
            raise ServeError(400, "record_stability_info", "no stability info here (it serves stable_reinforce).")
        if request.sampling_session_id is not None:
            sampler_id = request.sampling_session_id
        else:
            sampler_id = self.samplers.anonymous(base_model=request.base_model, model_path=request.model_path)
        loading = self.samplers.get(sampler_id)
        try:
            prompt = interop.model_input_from_tinker(request.prompt)
            params = interop.sampling_params_from_tinker(request.sampling_params)
        except TinkerflowError as error:
            raise ServeError(400, "sampling_params", str(error)) from error

        def start() -> APIFuture[object]:
            return chain(
                loading,
                lambda sampler: sampler.sample(
                    prompt,
                    request.num_samples,
                    params,
                    include_prompt_logprobs=bool(request.prompt_logprobs),
                    topk_prompt_logprobs=request.topk_prompt_logprobs,
                ),
            )

        def encode(response: object) -> Payload:
            from tinkerflow.sampling import SampleResponse

            if not isinstance(response, SampleResponse):
                raise TypeError(f"expected a SampleResponse, got {type(response).__name__}")
            return Payload(PROTOBUF, codec.encode_sample_response(interop.sample_response_to_tinker(response)))

        launched = self.board.launch(owner=sampler_id, seq_id=request.seq_id, kind="sample", start=start, encode=encode)
        return launched, [f"{launched.request_id}:{index}" for index in range(request.num_samples)]
