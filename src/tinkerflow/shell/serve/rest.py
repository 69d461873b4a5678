"""REST calls: sessions, training runs, checkpoints and their downloads. (Shell.)

What ``tinker.RestClient`` and the ``tinker`` CLI ask for, answered from the store. A download works as on the
service: ``save_weights_external`` writes ``tinker://<run>/external_weights/<name>`` (the LoRA adapter in peft's
layout), ``.../external_weights_urls`` gives one signed URL per file, and a plain GET of a URL (no key: the
signature, an HMAC over the file and an expiry, is the permission) returns the file.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import pathlib
import secrets
import shutil
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import pydantic
import tinker.types as tt
from fastapi import Request, Response
from fastapi.responses import FileResponse
from tinker.types.checkpoint import CheckpointType

from tinkerflow.shell.serve.bodies import read_body
from tinkerflow.shell.serve.errors import ServeError
from tinkerflow.shell.serve.futures import JSON
from tinkerflow.shell.serve.paths import parse_tinker_path
from tinkerflow.shell.serve.store import CheckpointRecord, ModelRecord

if TYPE_CHECKING:
    from fastapi import FastAPI

    from tinkerflow.shell.serve.engine import Engine

__all__ = ["FILES_PREFIX", "UrlSigner", "add_routes"]

FILES_PREFIX: Final = "/api/v1/files/"
URL_LIFETIME_SECONDS: Final = 3600
_TYPES: Final[Mapping[str, CheckpointType]] = {
    "weights": "training",
    "sampler_weights": "sampler",
    "external_weights": "external",
}


def _ok(model: pydantic.BaseModel) -> Response:
    return Response(model.model_dump_json(exclude_none=True), media_type=JSON)


def _time(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


class UrlSigner:
    """Signs and checks download URLs with a key made when the server starts (URLs die with the process)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def signature(self, file: str, expires: int) -> str:
        return hmac.new(self._key, f"{file}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def check(self, file: str, expires: str, signature: str) -> None:
        if not expires.isdigit() or int(expires) < time.time():
            raise ServeError(403, "expires", "this download URL has expired; ask for new ones.")
        if not hmac.compare_digest(self.signature(file, int(expires)), signature):
            raise ServeError(403, "sig", "this download URL's signature does not match.")


def _checkpoint(record: CheckpointRecord) -> tt.Checkpoint:
    kind = _TYPES.get(record.kind, "training")
    expires = None if record.expires_at is None else _time(record.expires_at)
    return tt.Checkpoint(
        checkpoint_id=f"{record.kind}/{record.name}",
        checkpoint_type=kind,
        time=_time(record.created),
        tinker_path=record.tinker_path,
        size_bytes=record.size_bytes,
        public=record.public,
        expires_at=expires,
    )


def _run(engine: Engine, record: ModelRecord) -> tt.TrainingRun:
    def last(path: str | None) -> tt.Checkpoint | None:
        found = engine.store.checkpoint(path) if path is not None else None
        return None if found is None else _checkpoint(found)

    metadata = {str(k): str(v) for k, v in record.user_metadata.items()} if record.user_metadata else None
    return tt.TrainingRun(
        training_run_id=record.model_id,
        base_model=record.base_model,
        model_owner="local",
        is_lora=record.is_lora,
        lora_rank=record.lora_rank,
        last_request_time=_time(record.created),
        last_checkpoint=last(record.last_checkpoint),
        last_sampler_checkpoint=last(record.last_sampler_checkpoint),
        user_metadata=metadata,
    )


async def _json_object(request: Request) -> dict[str, object]:
    """The body as a JSON object; 400 otherwise."""
    try:
        body = json.loads(await read_body(request, 2**20) or b"{}")
    except ValueError as error:
        raise ServeError(400, "body", f"not JSON ({error}).") from error
    if not isinstance(body, dict):
        raise ServeError(400, "body", f"expected a JSON object, got {type(body).__name__}.")
    return body


def _page(request: Request, default_limit: int) -> tuple[int, int]:
    def number(name: str, default: int, high: int) -> int:
        text = request.query_params.get(name, str(default))
        if not text.isdigit() or not 0 <= int(text) <= high:
            raise ServeError(400, name, f"expected a whole number from 0 to {high}, got {text!r}.")
        return int(text)

    return number("limit", default_limit, 10_000), number("offset", 0, 2**31)


def _model_record(engine: Engine, run_id: str) -> ModelRecord:
    record = engine.store.model(run_id)
    if record is None:
        raise ServeError(404, "training_run_id", f"no training run {run_id!r} on this server.")
    return record


def _checkpoint_route(run_id: str, rest: str) -> tuple[str, str]:
    """``(tinker path, action)`` of ``/training_runs/<run>/checkpoints/<kind>/<name>[/<action>]``."""
    parts = rest.split("/")
    if len(parts) not in (2, 3):
        raise ServeError(404, "checkpoint_id", f"{rest!r} is not <weights|sampler_weights|external_weights>/<name>.")
    path = f"tinker://{run_id}/{parts[0]}/{parts[1]}"
    parse_tinker_path(path, "checkpoint_id")
    return path, parts[2] if len(parts) == 3 else ""


def _stored_checkpoint(engine: Engine, path: str) -> CheckpointRecord:
    record = engine.store.checkpoint(path)
    if record is None:
        raise ServeError(404, "checkpoint_id", f"no checkpoint {path!r} on this server.")
    return record


def _delete_checkpoint(engine: Engine, path: str) -> None:
    """Delete a stored checkpoint so a kill at any point leaves no half folder under its name: its folder is first
    renamed to a hidden name (durably), then its record goes, then the files. A leftover hidden folder is what the
    local backend's ``remove_partial_checkpoints`` removes (the server runs it when it starts)."""
    directory = parse_tinker_path(path).directory(engine.backend.checkpoint_dir)
    doomed: pathlib.Path | None = None
    if directory.is_dir():
        # the hidden name of a killed checkpoint write (``.<name>.<8 characters>.tmp``), which the cleanup knows
        doomed = directory.with_name(f".{directory.name}.{secrets.token_hex(4)}.tmp")
        os.replace(directory, doomed)
        parent = os.open(directory.parent, os.O_RDONLY)
        try:
            os.fsync(parent)  # the rename is on disk before the record goes
        finally:
            os.close(parent)
    engine.store.delete_checkpoint(path)
    if doomed is not None:
        shutil.rmtree(doomed, ignore_errors=True)


def _download_urls(engine: Engine, signer: UrlSigner, request: Request, path: str) -> tt.ExternalWeightsUrlsResponse:
    _stored_checkpoint(engine, path)
    folder = parse_tinker_path(path).directory(engine.backend.checkpoint_dir)
    expires = int(time.time()) + URL_LIFETIME_SECONDS
    base = str(request.base_url).rstrip("/")
    urls: dict[str, str] = {}
    run, kind, name = path.removeprefix("tinker://").split("/")
    for file in sorted(item for item in folder.rglob("*") if item.is_file()):
        relative = file.relative_to(folder).as_posix()
        quoted = "/".join(urllib.parse.quote(part, safe="") for part in (run, kind, name, *relative.split("/")))
        signature = signer.signature(f"{path}/{relative}", expires)
        urls[relative] = f"{base}{FILES_PREFIX}{quoted}?expires={expires}&sig={signature}"
    return tt.ExternalWeightsUrlsResponse(urls=urls, expires=_time(expires))


def _file(engine: Engine, signer: UrlSigner, request: Request, rest: str) -> FileResponse:
    parts = [urllib.parse.unquote(part) for part in rest.split("/")]
    if len(parts) < 4 or any(part in ("", ".", "..") for part in parts):
        raise ServeError(404, "path", "not a file of a checkpoint.")
    path = f"tinker://{parts[0]}/{parts[1]}/{parts[2]}"
    relative = "/".join(parts[3:])
    signer.check(f"{path}/{relative}", request.query_params.get("expires", ""), request.query_params.get("sig", ""))
    folder = parse_tinker_path(path).directory(engine.backend.checkpoint_dir).resolve()
    file = (folder / relative).resolve()
    if not file.is_file() or not file.is_relative_to(folder):
        raise ServeError(404, "path", f"{relative!r} is not a file of {path}.")
    return FileResponse(file, filename=pathlib.PurePosixPath(relative).name)


def add_routes(app: FastAPI, engine: Engine) -> None:
    """Add the REST routes to ``app``."""
    signer = UrlSigner()
    _session_routes(app, engine)
    _run_routes(app, engine)
    _checkpoint_routes(app, engine, signer)


def _session_routes(app: FastAPI, engine: Engine) -> None:
    @app.get("/api/v1/samplers/{sampler_id}")
    async def get_sampler(sampler_id: str) -> Response:
        record = engine.samplers.record(sampler_id)
        return _ok(
            tt.GetSamplerResponse(sampler_id=sampler_id, base_model=record.base_model, model_path=record.model_path)
        )

    @app.post("/api/v1/sessions/{session_id}/finish")
    async def finish_session(session_id: str) -> Response:
        if not engine.store.finish_session(session_id):
            raise ServeError(404, "session_id", f"no session {session_id!r} on this server.")
        engine.release_session(session_id)
        return Response(status_code=204)

    @app.get("/api/v1/sessions/{session_id}")
    async def get_session(session_id: str) -> Response:
        session = engine.store.session(session_id)
        if session is None:
            raise ServeError(404, "session_id", f"no session {session_id!r} on this server.")
        runs, samplers = engine.store.models_of_session(session_id), engine.store.samplers_of_session(session_id)
        return _ok(tt.GetSessionResponse(training_run_ids=runs, sampler_ids=samplers))

    @app.get("/api/v1/sessions")
    async def list_sessions(request: Request) -> Response:
        limit, offset = _page(request, 20)
        sessions = engine.store.sessions(limit, offset)
        return _ok(tt.ListSessionsResponse(sessions=[session.session_id for session in sessions]))


def _run_routes(app: FastAPI, engine: Engine) -> None:
    @app.get("/api/v1/training_runs")
    async def list_training_runs(request: Request) -> Response:
        limit, offset = _page(request, 20)
        records, total = engine.store.models(limit, offset)
        cursor = tt.Cursor(offset=offset, limit=limit, total_count=total)
        return _ok(tt.TrainingRunsResponse(training_runs=[_run(engine, r) for r in records], cursor=cursor))

    @app.get("/api/v1/training_runs/{run_id}")
    async def get_training_run(run_id: str) -> Response:
        return _ok(_run(engine, _model_record(engine, run_id)))

    @app.get("/api/v1/training_runs/{run_id}/checkpoints")
    async def list_checkpoints(run_id: str) -> Response:
        _model_record(engine, run_id)
        records, total = engine.store.checkpoints(run_id, limit=-1)  # all of them (SQLite: -1 = no limit)
        cursor = tt.Cursor(offset=0, limit=max(total, 1), total_count=total)
        return _ok(tt.CheckpointsListResponse(checkpoints=[_checkpoint(r) for r in records], cursor=cursor))

    @app.get("/api/v1/checkpoints")
    async def list_user_checkpoints(request: Request) -> Response:
        limit, offset = _page(request, 100)
        records, total = engine.store.checkpoints(None, limit, offset)
        cursor = tt.Cursor(offset=offset, limit=limit, total_count=total)
        return _ok(tt.CheckpointsListResponse(checkpoints=[_checkpoint(r) for r in records], cursor=cursor))

    @app.post("/api/v1/weights_info")
    async def weights_info(request: Request) -> Response:
        return _ok(engine.weights_info((await _json_object(request)).get("tinker_path")))


def _checkpoint_routes(app: FastAPI, engine: Engine, signer: UrlSigner) -> None:
    @app.get("/api/v1/training_runs/{run_id}/checkpoints/{rest:path}")
    async def checkpoint_get(run_id: str, rest: str, request: Request) -> Response:
        path, action = _checkpoint_route(run_id, rest)
        if action != "external_weights_urls":
            raise ServeError(404, "checkpoint_id", f"no GET {action!r} for checkpoints.")
        return _ok(_download_urls(engine, signer, request, path))

    @app.post("/api/v1/training_runs/{run_id}/checkpoints/{rest:path}")
    async def checkpoint_post(run_id: str, rest: str) -> Response:
        path, action = _checkpoint_route(run_id, rest)
        _stored_checkpoint(engine, path)
        if action != "publish":
            raise ServeError(404, "checkpoint_id", f"no POST {action!r} for checkpoints.")
        engine.store.update_checkpoint(path, public=True)
        return Response(status_code=204)

    @app.put("/api/v1/training_runs/{run_id}/checkpoints/{rest:path}")
    async def checkpoint_put(run_id: str, rest: str, request: Request) -> Response:
        path, action = _checkpoint_route(run_id, rest)
        _stored_checkpoint(engine, path)
        if action != "ttl":
            raise ServeError(404, "checkpoint_id", f"no PUT {action!r} for checkpoints.")
        ttl = (await _json_object(request)).get("ttl_seconds")
        if ttl is not None and (not isinstance(ttl, int) or ttl < 0):
            raise ServeError(400, "ttl_seconds", f"expected a whole number of seconds or null, got {ttl!r}.")
        engine.store.set_checkpoint_ttl(path, ttl)
        return Response(status_code=204)

    @app.delete("/api/v1/training_runs/{run_id}/checkpoints/{rest:path}")
    async def checkpoint_delete(run_id: str, rest: str) -> Response:
        path, action = _checkpoint_route(run_id, rest)
        _stored_checkpoint(engine, path)
        if action == "publish":
            engine.store.update_checkpoint(path, public=False)
        elif action == "":
            _delete_checkpoint(engine, path)
        else:
            raise ServeError(404, "checkpoint_id", f"no DELETE {action!r} for checkpoints.")
        return Response(status_code=204)

    @app.get(FILES_PREFIX + "{rest:path}")
    async def download(rest: str, request: Request) -> FileResponse:
        return _file(engine, signer, request, rest)
