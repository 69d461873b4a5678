"""The ASGI app: Tinker's HTTP API (``tinker==0.38``) over an :class:`~tinkerflow.shell.serve.engine.Engine`. (Shell.)

Bodies are the SDK's own pydantic request types (JSON) and, for ``forward_backward``, its protobuf message
(:mod:`~tinkerflow.shell.serve.codec`). Every request must carry the server's key in ``X-API-Key`` (401 otherwise;
the key is compared in constant time and never logged). A body over ``max_body_bytes`` gets 413, a body that does
not parse gets 400 naming the field, an unknown id 404, an ended session 410, a full queue 429. An unexpected
failure answers 500 with a one-line message (the traceback goes to the server's log only) and
``x-should-retry: false``; the SDK's HTTP layer then does not retry, though its client layer still retries a 5xx
for up to 300 s. On ``retrieve_future``, which the SDK would retry at once and forever, an unexpected failure is
answered as a failed request instead.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import pydantic
import tinker.types as tt
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from tinker.types.try_again_response import TryAgainResponse

from tinkerflow.shell.serve import codec, rest
from tinkerflow.shell.serve.bodies import parse, read_body
from tinkerflow.shell.serve.engine import Engine
from tinkerflow.shell.serve.errors import ServeError
from tinkerflow.shell.serve.futures import JSON, Launched

__all__ = ["create_app"]

log = logging.getLogger("tinkerflow.serve")
#: How long ``retrieve_future`` holds a request open waiting for the answer (the SDK waits 45 s; each "try again"
#: it gets logs a warning on the user's side, so the poll is held as long as safely possible).
LONG_POLL_SECONDS: Final = 30.0
_NO_RETRY: Final = {"x-should-retry": "false"}


def _error(status: int, field: str, message: str) -> JSONResponse:
    # 429 and 503 are worth retrying (the SDK backs off); anything else would fail the same way again
    headers = {"retry-after": "1"} if status in (429, 503) else dict(_NO_RETRY)
    return JSONResponse({"detail": message, "field": field}, status_code=status, headers=headers)


def _future(launched: Launched, model_id: str | None = None, sequence_ids: list[str] | None = None) -> Response:
    future = tt.UntypedAPIFuture(request_id=launched.request_id, model_id=model_id, sample_sequence_ids=sequence_ids)
    return Response(future.model_dump_json(exclude_none=True), media_type=JSON)


def _ok(model: pydantic.BaseModel) -> Response:
    return Response(model.model_dump_json(exclude_none=True), media_type=JSON)


def create_app(engine: Engine, *, api_key: str, max_body_bytes: int = 256 * 2**20) -> FastAPI:
    """The app serving ``engine``; requests must carry ``api_key``."""
    app = FastAPI(title="tinkerflow serve", docs_url=None, redoc_url=None, openapi_url=None)
    expected = api_key.encode()

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        given = request.headers.get("x-api-key", "").encode()
        # a download is checked by its URL's signature instead; the raw ASGI path, not one rebuilt from headers
        path = str(request.scope.get("path", ""))
        signed_download = request.method in ("GET", "HEAD") and path.startswith(rest.FILES_PREFIX)
        if not signed_download and not hmac.compare_digest(given, expected):
            return _error(401, "X-API-Key", "missing or wrong API key (set TINKER_API_KEY to the server's key).")
        try:
            return await call_next(request)
        except ServeError as error:
            return _error(error.status, error.field, error.message)
        except Exception as error:  # an unexpected failure: one line to the client, the traceback to the log
            log.exception("request %s %s failed", request.method, request.url.path)
            return _error(500, "server", f"internal error ({type(error).__name__}); see the server's log.")

    _training_routes(app, engine, max_body_bytes)
    _sampling_routes(app, engine, max_body_bytes)
    _service_routes(app, engine, max_body_bytes)
    rest.add_routes(app, engine)
    return app


def _service_routes(app: FastAPI, engine: Engine, limit: int) -> None:
    @app.get("/api/v1/healthz")
    async def healthz() -> Response:
        return _ok(tt.HealthResponse(status="ok"))

    @app.post("/api/v1/client/config")
    async def client_config(request: Request) -> Response:
        await read_body(request, limit)
        # API-key auth (no JWT exchange); one forward_backward's chunks sent one after another, so they apply in
        # seq_id order (this server runs a run's requests in arrival order)
        return Response(json.dumps({"pjwt_auth_enabled": False, "parallel_fwdbwd_chunks": False}), media_type=JSON)

    @app.post("/api/v1/client/dynamic_config")
    async def client_dynamic_config(request: Request) -> Response:
        await read_body(request, limit)
        return Response("{}", media_type=JSON)

    @app.post("/api/v1/telemetry")
    async def telemetry(request: Request) -> Response:
        await read_body(request, limit)  # the SDK's telemetry is accepted and dropped: nothing leaves this machine
        return _ok(tt.TelemetryResponse(status="accepted"))

    @app.get("/api/v1/get_server_capabilities")
    async def capabilities() -> Response:
        models = [
            tt.SupportedModel(model_name=name, trainable=True, sampleable=True) for name in engine.catalog.names()
        ]
        return _ok(tt.GetServerCapabilitiesResponse(supported_models=models))

    @app.post("/api/v1/create_session")
    async def create_session(request: Request) -> Response:
        return _ok(engine.create_session(await parse(request, tt.CreateSessionRequest, limit)))

    @app.post("/api/v1/session_heartbeat")
    async def session_heartbeat(request: Request) -> Response:
        body = await parse(request, tt.SessionHeartbeatRequest, limit)
        engine.heartbeat(body.session_id)
        return _ok(tt.SessionHeartbeatResponse())

    @app.post("/api/v1/retrieve_future")
    async def retrieve_future(request: Request) -> Response:
        body = await parse(request, tt.FutureRetrieveRequest, limit)
        try:
            record = await engine.board.wait(body.request_id, LONG_POLL_SECONDS)
        except ServeError:
            raise
        except Exception as error:  # the SDK retries a 5xx here at once and forever: answer a terminal failure
            log.exception("retrieve_future %s failed", body.request_id)
            message = f"internal error ({type(error).__name__}); see the server's log."
            return _ok(tt.RequestFailedResponse(error=message, category=tt.RequestErrorCategory.Server))
        if record.state == "pending":
            return _ok(TryAgainResponse(request_id=record.request_id, queue_state="active"))
        if record.state == "failed":
            category = record.category if record.category in ("user", "server") else "unknown"
            failed = tt.RequestFailedResponse(
                error=record.error or "failed", category=tt.RequestErrorCategory(category)
            )
            return _ok(failed)
        return Response(record.payload or b"", media_type=record.content_type or JSON)


def _training_routes(app: FastAPI, engine: Engine, limit: int) -> None:
    @app.post("/api/v1/create_model")
    async def create_model(request: Request) -> Response:
        return _future(engine.create_model(await parse(request, tt.CreateModelRequest, limit)))

    @app.post("/api/v1/get_info")
    async def get_info(request: Request) -> Response:
        return _ok(engine.get_info(await parse(request, tt.GetInfoRequest, limit)))

    @app.post("/api/v1/forward_backward")
    async def forward_backward(request: Request) -> Response:
        raw = await read_body(request, limit)
        try:
            body = codec.maybe_decompress(raw, request.headers.get("content-encoding"), max_size=limit)
            decoded = codec.decode_forward_backward_request(body)
        except codec.WireFormatError as error:
            raise ServeError(400, error.field, error.message) from error
        return _future(engine.forward_backward(decoded), model_id=decoded.model_id)

    @app.post("/api/v1/optim_step")
    async def optim_step(request: Request) -> Response:
        body = await parse(request, tt.OptimStepRequest, limit)
        return _future(engine.optim_step(body), model_id=body.model_id)

    @app.post("/api/v1/save_weights")
    async def save_weights(request: Request) -> Response:
        body = await parse(request, tt.SaveWeightsRequest, limit)
        return _future(engine.save_weights(body), model_id=body.model_id)

    @app.post("/api/v1/save_weights_for_sampler")
    async def save_weights_for_sampler(request: Request) -> Response:
        body = await parse(request, tt.SaveWeightsForSamplerRequest, limit)
        return _future(engine.save_weights_for_sampler(body, None), model_id=body.model_id)

    @app.post("/api/v1/save_weights_external")
    async def save_weights_external(request: Request) -> Response:
        body = await parse(request, tt.SaveWeightsExternalRequest, limit)
        return _future(engine.save_weights_external(body), model_id=body.model_id)

    @app.post("/api/v1/load_weights")
    async def load_weights(request: Request) -> Response:
        body = await parse(request, tt.LoadWeightsRequest, limit)
        return _future(engine.load_weights(body), model_id=body.model_id)


def _sampling_routes(app: FastAPI, engine: Engine, limit: int) -> None:
    @app.post("/api/v1/create_sampling_session")
    async def create_sampling_session(request: Request) -> Response:
        body = await parse(request, tt.CreateSamplingSessionRequest, limit)
        engine.check_session(body.session_id)
        sampler_id = engine.samplers.create(
            body.session_id, body.sampling_session_seq_id, base_model=body.base_model, model_path=body.model_path
        )
        return _ok(tt.CreateSamplingSessionResponse(sampling_session_id=sampler_id))

    @app.post("/api/v1/asample")
    async def asample(request: Request) -> Response:
        body = await parse(request, tt.SampleRequest, limit)
        launched, sequence_ids = engine.sample(body)
        return _future(launched, sequence_ids=sequence_ids)
