"""``tinkerflow serve`` refuses what it must: requests without the key (401), bodies that do not parse (400 naming
the field, never a 5xx or a traceback), oversized bodies (413), ``tinker://`` paths and download URLs that would
leave the store (4xx, nothing outside read or deleted), unknown futures (404), and work past its queue bound (429
with Retry-After, the SDK retrying later). It binds 127.0.0.1 by default, keeps its key out of its database and
its log, and keeps sampling while a training run is busy.

Slow work is made slow deterministically: a gate (a ``threading.Event``) holds the local backend's sampling or
training job until the test releases it, so nothing here depends on the machine's speed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http import client as http_client
from typing import TYPE_CHECKING, Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
tinker = pytest.importorskip("tinker")
httpx = pytest.importorskip("httpx")

import tinker.types as tt  # noqa: E402  (after the importorskips)
from tinker.proto import tinker_public_pb2 as pb  # noqa: E402
from tinker.proto.request_conv import forward_backward_request_to_proto  # noqa: E402

import tinkerflow.shell.backends.local.training as training_module  # noqa: E402
from tinkerflow.shell.backends.local.sampling import LocalSamplingClient  # noqa: E402
from tinkerflow.shell.backends.local.scheduler import Scheduler  # noqa: E402
from tinkerflow.shell.serve.command import _parser  # noqa: E402
from tinkerflow.shell.serve.errors import ServeError  # noqa: E402
from tinkerflow.shell.serve.paths import parse_tinker_path  # noqa: E402
from tinkerflow.shell.serve.server import ServerConfig, ServerThread  # noqa: E402

if TYPE_CHECKING:
    import pathlib

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY: Final = "tiny-llama:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=64"
SDK_VERSION: Final = "0.38.0"
#: Long enough that a gate left closed by a broken server fails the test instead of hanging it.
GATE_TIMEOUT: Final = 60.0


# --- helpers --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(server: ServerThread) -> Iterator[Any]:
    """An httpx client on the module's server, carrying its key."""
    with httpx.Client(base_url=server.base_url, headers={"X-API-Key": server.config.api_key}, timeout=60) as client:
        yield client


def body(model: Any) -> dict[str, Any]:
    """An SDK request model as the SDK sends it (JSON, unset optional fields left out)."""
    dumped: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return dumped


def assert_refusal(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """A refusal with ``status`` and a JSON body ``{"detail", "field"}`` whose field mentions ``field``; no
    traceback and no server-side 5xx."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    answer: dict[str, Any] = response.json()
    assert isinstance(answer.get("detail"), str)
    assert answer["detail"]
    if field is not None:
        assert field in answer["field"], answer
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    return answer


def new_session(http: Any) -> str:
    request = tt.CreateSessionRequest(tags=[], user_metadata={}, sdk_version=SDK_VERSION)
    response = http.post("/api/v1/create_session", json=body(request))
    assert response.status_code == 200, response.text
    session_id: str = response.json()["session_id"]
    return session_id


def new_sampler(http: Any, session_id: str, seq_id: int = 0) -> str:
    request = tt.CreateSamplingSessionRequest(session_id=session_id, sampling_session_seq_id=seq_id, base_model=TINY)
    response = http.post("/api/v1/create_sampling_session", json=body(request))
    assert response.status_code == 200, response.text
    sampler_id: str = response.json()["sampling_session_id"]
    return sampler_id


def sample_request(sampler_id: str, seq_id: int, max_tokens: int = 4, num_samples: int = 1) -> dict[str, Any]:
    return body(
        tt.SampleRequest(
            sampling_session_id=sampler_id,
            seq_id=seq_id,
            num_samples=num_samples,
            prompt=tt.ModelInput.from_ints([1, 2, 3]),
            sampling_params=tt.SamplingParams(max_tokens=max_tokens, seed=seq_id),
        )
    )


def retrieve(http: Any, request_id: str) -> Any:
    """The answer of a future, long-polling until it is no longer pending."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while True:
        response = http.post("/api/v1/retrieve_future", json={"request_id": request_id, "allow_metadata_only": True})
        pending = response.status_code == 200 and response.headers["content-type"].startswith("application/json")
        if not (pending and response.json().get("type") == "try_again" and time.monotonic() < deadline):
            return response


def raw_get(server: ServerThread, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``path`` byte for byte (http.client sends ``..`` segments as they are; httpx would resolve them)."""
    connection = http_client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", path, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Gate:
    """Holds a job until released; records that it started. ``wrap(job)`` is the gated job."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def wrap(self, job: Callable[..., Any]) -> Callable[..., Any]:
        def gated(*args: Any, **kwargs: Any) -> Any:
            self.started.set()
            self.release.wait(GATE_TIMEOUT)
            try:
                return job(*args, **kwargs)
            finally:
                self.finished.set()

        return gated


@contextlib.contextmanager
def releasing(gate: Gate) -> Iterator[Gate]:
    """Opens the gate when the block ends, however it ends (so a failing test does not wait on it)."""
    try:
        yield gate
    finally:
        gate.release.set()


def when_done(future: Any, then: Callable[[], None] | None = None) -> threading.Event:
    """An event set once an SDK future has an answer (``then`` runs first); the SDK's futures have no callbacks."""
    done = threading.Event()

    def wait() -> None:
        with contextlib.suppress(Exception):
            future.result(timeout=GATE_TIMEOUT)
        if then is not None:
            then()
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    return done


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait (without asserting any duration) until ``condition`` holds; fail after a generous deadline."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


# --- the key --------------------------------------------------------------------------------------------------------

KEYED_ROUTES: Final = (
    ("GET", "/api/v1/healthz", None),
    ("POST", "/api/v1/client/config", {"sdk_version": SDK_VERSION}),
    ("POST", "/api/v1/create_session", {"tags": [], "user_metadata": {}, "sdk_version": SDK_VERSION}),
    ("POST", "/api/v1/retrieve_future", {"request_id": "x"}),
    ("POST", "/api/v1/forward_backward", None),
    ("GET", "/api/v1/training_runs", None),
    ("GET", "/api/v1/checkpoints", None),
    ("GET", "/api/v1/sessions", None),
    ("DELETE", "/api/v1/training_runs/r:train:0/checkpoints/weights/x", None),
    ("POST", "/api/v1/weights_info", {"tinker_path": "tinker://r/weights/x"}),
)


@pytest.mark.parametrize(("method", "path", "payload"), KEYED_ROUTES)
def test_requests_without_the_key_or_with_a_wrong_one_get_401(
    server: ServerThread, method: str, path: str, payload: dict[str, Any] | None
) -> None:
    key = server.config.api_key
    wrong = (None, "", "tml-wrong", key + "x", key[:-1], key.upper(), key[4:], "tml-")
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for given_key in wrong:
            headers = {} if given_key is None else {"X-API-Key": given_key}
            answer = assert_refusal(client.request(method, path, json=payload, headers=headers), 401, "X-API-Key")
            assert key not in json.dumps(answer)
        # the key in another header is no key either
        refused = client.request(method, path, json=payload, headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 401
        assert client.request(method, path, json=payload, headers={"X-API-Key": key}).status_code != 401


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wrong=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40))
def test_any_other_key_gets_401(server: ServerThread, wrong: str) -> None:
    if wrong == server.config.api_key:
        return
    response = httpx.get(f"{server.base_url}/api/v1/training_runs", headers={"X-API-Key": wrong}, timeout=30)
    assert_refusal(response, 401, "X-API-Key")


def test_binds_127_0_0_1_by_default(server: ServerThread, tmp_path: pathlib.Path) -> None:
    assert ServerConfig(store=tmp_path).host == "127.0.0.1"
    assert _parser().parse_args([]).host == "127.0.0.1"
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server._sock.getsockname()[0] == "127.0.0.1"  # the listening socket itself
    # from another address of this machine, nothing listens on the port
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        other = probe.getsockname()[0]
    except OSError:
        other = "127.0.0.1"
    finally:
        probe.close()
    if other.startswith("127."):
        pytest.skip("this machine has no address besides loopback")
    with pytest.raises(ConnectionRefusedError), socket.create_connection((other, server.port), timeout=5):
        pass


SERVER_LOGGERS: Final = ("tinkerflow", "uvicorn", "fastapi", "starlette", "concurrent")


def test_the_key_is_never_stored_or_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    key = f"tml-secret-{secrets.token_hex(16)}"
    store = tmp_path / "store"
    caplog.set_level(logging.DEBUG)
    with ServerThread(ServerConfig(store=store, api_key=key, device="cpu")) as server:
        service = tinker.ServiceClient(base_url=server.base_url, api_key=key, user_metadata={"owner": "test"})
        trainer = service.create_lora_training_client(TINY, rank=2, seed=0).result()
        datum = tt.Datum(
            model_input=tt.ModelInput.from_ints([1, 2, 3]),
            loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]},
        )
        trainer.forward_backward([datum], "cross_entropy").result()
        trainer.optim_step(tt.AdamParams(learning_rate=1e-3)).result()
        path = trainer.save_state("keyless").result().path
        sampler = service.create_sampling_client(model_path=path).result()
        sampler.sample(tt.ModelInput.from_ints([1, 2]), 1, tt.SamplingParams(max_tokens=2)).result()
        rest = tinker.RestClient(base_url=server.base_url, api_key=key)
        rest.list_checkpoints(trainer.model_id).result()
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            client.get("/api/v1/training_runs", headers={"X-API-Key": key[:-1]})  # a wrong key
            client.post("/api/v1/create_session", content=b"{", headers={"X-API-Key": key})  # a bad body
            client.post("/api/v1/retrieve_future", json={"request_id": "nope"}, headers={"X-API-Key": key})
            # an unexpected failure: logged with its traceback on the server, a one-line 500 to the client
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(server.engine, "get_info", _raise_runtime_error)
                failed = client.post(
                    "/api/v1/get_info", json={"model_id": trainer.model_id}, headers={"X-API-Key": key}
                )
            answer = assert_refusal(failed, 500, "server")
            assert failed.headers["x-should-retry"] == "false"
            assert "boom" not in answer["detail"]
        service.close("success").result(timeout=30)
    logged = [record for record in caplog.records if record.name.startswith(SERVER_LOGGERS)]
    assert any("get_info" in record.getMessage() and record.exc_info for record in logged)  # the 500 was logged
    for record in logged:
        assert key not in record.getMessage()
        assert key not in logging.Formatter().format(record)
    captured = capfd.readouterr()
    assert key not in captured.out
    assert key not in captured.err
    stored = [file for file in store.rglob("*") if file.is_file()]
    assert any(file.name.startswith("server.sqlite3") for file in stored)
    for file in stored:
        assert key.encode() not in file.read_bytes(), file


def _raise_runtime_error(request: object) -> object:
    raise RuntimeError("boom: an unexpected failure")


# --- bodies ---------------------------------------------------------------------------------------------------------

BAD_BODIES: Final = (
    ("/api/v1/create_session", b"{not json", "body"),
    ("/api/v1/create_session", b'{"tags": "x", "sdk_version": "0.38.0"}', "tags"),
    ("/api/v1/create_session", b"[]", "body"),
    ("/api/v1/create_model", b'{"session_id": 5, "model_seq_id": 0, "base_model": "tiny-llama"}', "session_id"),
    (
        "/api/v1/create_model",
        b'{"session_id": "s", "model_seq_id": "zero", "base_model": "tiny-llama"}',
        "model_seq_id",
    ),
    (
        "/api/v1/optim_step",
        b'{"model_id": "m", "seq_id": 1, "adam_params": {"learning_rate": "fast"}}',
        "learning_rate",
    ),
    ("/api/v1/optim_step", b'{"model_id": ["m"], "seq_id": 1, "adam_params": {}}', "model_id"),
    ("/api/v1/asample", b'{"num_samples": "two", "prompt": {"chunks": []}, "sampling_params": {}}', "num_samples"),
    ("/api/v1/asample", b'{"num_samples": 1, "prompt": {"chunks": []}, "sampling_params": {"top_k": "all"}}', "top_k"),
    ("/api/v1/retrieve_future", b'{"request_id": 3}', "request_id"),
    ("/api/v1/retrieve_future", b"\xff\xfe", "body"),
    ("/api/v1/save_weights", b'{"model_id": "m", "path": 7}', "path"),
    ("/api/v1/session_heartbeat", b'{"session_id": null}', "session_id"),
    ("/api/v1/weights_info", b"{", "body"),
    ("/api/v1/weights_info", b'{"tinker_path": 5}', "tinker_path"),
)


@pytest.mark.parametrize(("path", "payload", "field"), BAD_BODIES)
def test_malformed_or_mistyped_bodies_get_400_naming_the_field(
    http: Any, path: str, payload: bytes, field: str
) -> None:
    assert_refusal(http.post(path, content=payload, headers={"Content-Type": "application/json"}), 400, field)


def test_mistyped_rest_fields_get_400(http: Any, service_client: Any) -> None:
    trainer = service_client.create_lora_training_client(TINY, rank=2, seed=0).result()
    trainer.save_state("typed").result()
    base = f"/api/v1/training_runs/{trainer.model_id}/checkpoints/weights/typed"
    for ttl in ("soon", 1.5, -1, [1]):
        assert_refusal(http.put(f"{base}/ttl", json={"ttl_seconds": ttl}), 400, "ttl_seconds")
    assert_refusal(http.put(f"{base}/ttl", content=b"nope"), 400, "body")
    for query in ("limit=-1", "limit=many", "offset=1.5", "limit=99999999"):
        assert_refusal(http.get(f"/api/v1/checkpoints?{query}"), 400, query.split("=")[0])
        assert_refusal(http.get(f"/api/v1/training_runs?{query}"), 400, query.split("=")[0])


JSON_ROUTES: Final = (
    "/api/v1/create_session",
    "/api/v1/session_heartbeat",
    "/api/v1/create_model",
    "/api/v1/get_info",
    "/api/v1/optim_step",
    "/api/v1/save_weights",
    "/api/v1/save_weights_for_sampler",
    "/api/v1/load_weights",
    "/api/v1/create_sampling_session",
    "/api/v1/asample",
    "/api/v1/retrieve_future",
    "/api/v1/weights_info",
    "/api/v1/forward_backward",
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(JSON_ROUTES),
    payload=st.one_of(
        st.binary(max_size=64),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
            max_leaves=8,
        ).map(lambda value: json.dumps(value).encode()),
    ),
)
def test_no_body_makes_the_server_fail(http: Any, route: str, payload: bytes) -> None:
    """Whatever the body, the answer is a JSON 4xx (never a 5xx, never a traceback)."""
    response = http.post(route, content=payload, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert_refusal(response, response.status_code)


def test_oversized_bodies_get_413(tmp_path: pathlib.Path) -> None:
    two_mib = b"x" * (2 * 2**20)
    with (
        ServerThread(ServerConfig(store=tmp_path / "store", max_body_mb=1, device="cpu")) as server,
        httpx.Client(base_url=server.base_url, headers={"X-API-Key": server.config.api_key}, timeout=60) as client,
    ):
        for route in ("/api/v1/create_session", "/api/v1/forward_backward", "/api/v1/asample", "/api/v1/telemetry"):
            assert_refusal(client.post(route, content=two_mib), 413, "body")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while the body streams in
            for _ in range(32):
                yield b"y" * 2**16

        assert_refusal(client.post("/api/v1/forward_backward", content=chunks()), 413, "body")
        assert_refusal(client.post("/api/v1/weights_info", content=two_mib), 413, "body")
        # just under the limit is read (and refused for what it is, not for its size)
        assert_refusal(client.post("/api/v1/create_session", content=b" " * (2**20 - 10) + b"{"), 400, "body")


def _fb_request(model_id: str) -> pb.ForwardBackwardRequest:
    request = tt.ForwardBackwardRequest(
        forward_backward_input=tt.ForwardBackwardInput(
            data=[
                tt.Datum(
                    model_input=tt.ModelInput.from_ints([1, 2, 3]),
                    loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]},
                )
            ],
            loss_fn="cross_entropy",
        ),
        model_id=model_id,
        seq_id=1,
    )
    message: pb.ForwardBackwardRequest = forward_backward_request_to_proto(request)
    return message


def test_malformed_protobuf_gets_400_naming_the_field(http: Any, service_client: Any) -> None:
    trainer = service_client.create_lora_training_client(TINY, rank=2, seed=0).result()
    route = "/api/v1/forward_backward"
    proto = {"Content-Type": "application/x-protobuf"}
    valid = _fb_request(trainer.model_id)
    encoded = valid.SerializeToString()
    assert_refusal(http.post(route, content=b"\xff\xff\xff\xff", headers=proto), 400, "body")
    assert_refusal(http.post(route, content=encoded[:-3], headers=proto), 400, "body")
    bad_tensor = pb.ForwardBackwardRequest()
    bad_tensor.CopyFrom(valid)
    target = bad_tensor.data[0].loss_fn_inputs["target_tokens"]
    target.dense = target.dense[:-1]  # not a whole number of values
    assert_refusal(http.post(route, content=bad_tensor.SerializeToString(), headers=proto), 400, "data[0]")
    assert_refusal(
        http.post(route, content=encoded, headers={**proto, "Content-Encoding": "zstd"}), 400, "body"
    )  # not zstd data
    assert_refusal(
        http.post(route, content=encoded, headers={**proto, "Content-Encoding": "br"}), 400, "Content-Encoding"
    )
    assert_refusal(http.post(route, content=_fb_request("nobody:train:0").SerializeToString()), 404, "model_id")
    # out-of-vocabulary tokens are the caller's mistake too
    out_of_vocab = pb.ForwardBackwardRequest()
    out_of_vocab.CopyFrom(valid)
    out_of_vocab.data[0].model_input[0].encoded_text.tokens = (10_000).to_bytes(4, "little") * 3
    answer = http.post(route, content=out_of_vocab.SerializeToString(), headers=proto)
    assert 400 <= answer.status_code < 500, answer.text
    assert_refusal(answer, answer.status_code)
    # and the run still works
    assert trainer.forward_backward([_datum()], "cross_entropy").result().metrics["loss:sum"] > 0


def _datum() -> tt.Datum:
    return tt.Datum(
        model_input=tt.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]},
    )


def test_unknown_request_ids_get_404(http: Any) -> None:
    for request_id in ("nope", "sample-" + "0" * 24, "", "../x", "' OR 1=1 --"):
        assert_refusal(http.post("/api/v1/retrieve_future", json={"request_id": request_id}), 404, "request_id")


# --- paths ----------------------------------------------------------------------------------------------------------

EVIL_PATHS: Final = (
    "tinker://../../etc/weights/x",
    "tinker://../weights/x",
    "tinker://run/weights/..",
    "tinker://run/weights/../../../etc/weights/x",
    "tinker://run/weights/a/b",
    "tinker://run/weights/%2e%2e",
    "tinker://%2e%2e/%2e%2e/etc/weights/x",
    "tinker://run/weights/..%2F..%2Fx",
    "tinker://./weights/x",
    "tinker:///etc/weights/x",
    "tinker://run/weights/.x",
    "tinker://run__x/weights/x",
    "tinker://run/../weights/x",
    "tinker://run/weights/x\x00",
    "tinker://run\\..\\..\\/weights/x",
)


@pytest.fixture(scope="module")
def decoy(server: ServerThread, service_client: Any) -> Iterator[tuple[pathlib.Path, str]]:
    """A real checkpoint copied to where ``tinker://../../etc/weights/x`` and its likes would land outside the
    store (``<store>/checkpoints/../../etc/weights/x``); and the run whose checkpoint it is."""
    trainer = service_client.create_lora_training_client(TINY, rank=2, seed=0).result()
    path = trainer.save_state("real").result().path
    outside = server.config.store.parent / "etc"
    shutil.copytree(parse_tinker_path(path).directory(server.config.store / "checkpoints"), outside / "weights" / "x")
    yield outside, path
    shutil.rmtree(outside, ignore_errors=True)


def test_traversal_in_tinker_paths_is_refused(http: Any, decoy: tuple[pathlib.Path, str]) -> None:
    outside, real = decoy
    session_id = new_session(http)
    # the real checkpoint is served: the refusals below are about the paths, not the routes
    assert http.post("/api/v1/weights_info", json={"tinker_path": real}).status_code == 200
    for index, evil in enumerate(EVIL_PATHS):
        assert_refusal(http.post("/api/v1/weights_info", json={"tinker_path": evil}), 400, "tinker_path")
        request = tt.CreateSamplingSessionRequest(session_id=session_id, sampling_session_seq_id=100 + index)
        sampling = {**body(request), "model_path": evil}
        assert_refusal(http.post("/api/v1/create_sampling_session", json=sampling), 400, "model_path")
        load = {"session_id": session_id, "model_seq_id": 100 + index, "path": evil, "optimizer": True}
        assert_refusal(http.post("/api/v1/load_weights", json=load), 400, "path")
    assert (outside / "weights" / "x" / "checkpoint.json").is_file()


REST_TRAVERSALS: Final = (
    "/api/v1/training_runs/%2e%2e/checkpoints/weights/x",
    "/api/v1/training_runs/..%2F..%2Fetc/checkpoints/weights/x",
    "/api/v1/training_runs/RUN/checkpoints/weights/%2e%2e",
    "/api/v1/training_runs/RUN/checkpoints/weights/..%2F..%2F..%2Fetc%2Fweights%2Fx",
    "/api/v1/training_runs/RUN/checkpoints/weights/../../../../etc/weights/x",
    "/api/v1/training_runs/RUN/checkpoints/../../../etc/weights/x",
)


def test_traversal_in_checkpoint_routes_never_touches_files_outside(
    server: ServerThread, decoy: tuple[pathlib.Path, str]
) -> None:
    outside, real = decoy
    run = real.removeprefix("tinker://").split("/")[0]
    headers = {"X-API-Key": server.config.api_key}
    for template in REST_TRAVERSALS:
        path = template.replace("RUN", run)
        for method, suffix in (("DELETE", ""), ("DELETE", "/publish"), ("POST", "/publish"), ("GET", "/x")):
            connection = http_client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                connection.request(method, path + suffix, headers=headers)
                status = connection.getresponse().status
            finally:
                connection.close()
            assert 400 <= status < 500, (method, path + suffix, status)
        status, _ = raw_get(server, path + "/external_weights_urls", headers)
        assert 400 <= status < 500, (path, status)
    assert (outside / "weights" / "x" / "checkpoint.json").is_file()


def test_traversal_in_download_urls_is_refused(
    server: ServerThread, service_client: Any, decoy: tuple[pathlib.Path, str]
) -> None:
    outside, _ = decoy
    secret = (outside / "weights" / "x" / "checkpoint.json").read_bytes()
    trainer = service_client.create_lora_training_client(TINY, rank=2, seed=0).result()
    exported = trainer.save_weights_external("dl").result().path
    rest = tinker.RestClient(base_url=server.base_url, api_key=server.config.api_key)
    url = rest.get_external_weights_urls(exported).result().urls["checkpoint.json"]
    good = url.removeprefix(server.base_url)
    status, payload = raw_get(server, good)
    assert status == 200  # the signed URL itself works
    prefix, query = good.split("?")
    files = prefix.rsplit("/", 4)[0]  # .../api/v1/files
    run = prefix.split("/")[-4]
    attempts = (
        f"{files}/{run}/external_weights/dl/../../../../../etc/weights/x/checkpoint.json?{query}",
        f"{files}/{run}/external_weights/dl/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/weights/x/checkpoint.json?{query}",
        f"{files}/{run}/external_weights/dl/..%2F..%2F..%2F..%2F..%2Fetc%2Fweights%2Fx%2Fcheckpoint.json?{query}",
        f"{files}/..%2F..%2Fetc/weights/x/checkpoint.json?{query}",
        f"{files}/%2e%2e/%2e%2e/etc/weights/x/checkpoint.json?{query}",
        f"{files}/../../../etc/passwd?{query}",
        f"{files}/{run}/external_weights/dl/%2Fetc%2Fpasswd?{query}",
    )
    for attempt in attempts:
        status, answer = raw_get(server, attempt)
        assert 400 <= status < 500, (attempt, status)
        assert answer != secret
        assert answer != payload


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    run=st.text(alphabet="./\\%2eE:_-a", min_size=0, max_size=8),
    name=st.text(alphabet="./\\%2eE:_-a\x00", min_size=0, max_size=8),
    kind=st.sampled_from(["weights", "sampler_weights", "external_weights", "..", "x"]),
)
def test_no_tinker_path_reads_outside_the_store(
    http: Any, decoy: tuple[pathlib.Path, str], run: str, name: str, kind: str
) -> None:
    """Any tinker:// path made of traversal characters is refused (400) or names nothing (404): never 200."""
    response = http.post("/api/v1/weights_info", json={"tinker_path": f"tinker://{run}/{kind}/{name}"})
    assert response.status_code in (400, 404), response.text
    assert_refusal(response, response.status_code, "tinker_path")


# --- load -----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def watching(read: Callable[[], int]) -> Iterator[list[int]]:
    """Samples ``read()`` on a thread while the block runs; yields the list of readings."""
    readings: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            readings.append(read())
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield readings
    finally:
        stop.set()
        thread.join()


def test_a_full_queue_answers_429_and_the_request_succeeds_later(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate()
    monkeypatch.setattr(Scheduler, "_prefill", gate.wrap(Scheduler._prefill))  # holds the engine thread
    config = ServerConfig(store=tmp_path / "store", max_pending=2, device="cpu")
    with (
        ServerThread(config) as server,
        httpx.Client(base_url=server.base_url, headers={"X-API-Key": config.api_key}, timeout=60) as client,
        releasing(gate),
    ):
        sampler = new_sampler(client, new_session(client))
        board = server.engine.board
        refusals: list[int] = []
        real_launch = board.launch

        def counting_launch(**kwargs: Any) -> Any:
            try:
                return real_launch(**kwargs)
            except ServeError as error:
                refusals.append(error.status)
                raise

        monkeypatch.setattr(board, "launch", counting_launch)
        with watching(lambda: board.pending) as pending:
            accepted = [
                client.post("/api/v1/asample", json=sample_request(sampler, seq, max_tokens=40)) for seq in (0, 1)
            ]
            assert [response.status_code for response in accepted] == [200, 200]
            assert gate.started.wait(GATE_TIMEOUT)
            assert board.pending == 2
            for seq in (2, 3, 4):
                refused = client.post("/api/v1/asample", json=sample_request(sampler, seq, max_tokens=40))
                assert_refusal(refused, 429, "queue")
                assert float(refused.headers["retry-after"]) > 0
            # other kinds of work are bounded by the same count
            assert_refusal(client.post("/api/v1/create_model", json=body(_create_model(client))), 429, "queue")
            assert board.pending == 2

            # the SDK backs off on 429 and sends again: its request waits its turn
            service = tinker.ServiceClient(base_url=server.base_url, api_key=config.api_key)
            sdk_sampler = service.create_sampling_client(base_model=TINY).result()
            before = len(refusals)
            sdk_future = sdk_sampler.sample(tt.ModelInput.from_ints([5, 6]), 2, tt.SamplingParams(max_tokens=3))
            sdk_done = when_done(sdk_future)
            wait_for(lambda: len(refusals) > before, "the SDK's sample to be refused once")
            assert not sdk_done.is_set()

            gate.release.set()
            for response in accepted:
                done = retrieve(client, response.json()["request_id"])
                assert done.status_code == 200
                assert done.headers["content-type"] == "application/x-protobuf"
            assert len(sdk_future.result(timeout=GATE_TIMEOUT).sequences) == 2
            # the refused request, sent again, is served
            retried = client.post("/api/v1/asample", json=sample_request(sampler, 2, max_tokens=40))
            assert retried.status_code == 200, retried.text
            assert retrieve(client, retried.json()["request_id"]).headers["content-type"] == "application/x-protobuf"
            service.close("success").result(timeout=30)
        assert pending
        assert max(pending) <= 2
        assert board.pending == 0
        assert set(refusals) == {429}


def _create_model(client: Any) -> tt.CreateModelRequest:
    return tt.CreateModelRequest(
        session_id=new_session(client), model_seq_id=0, base_model=TINY, lora_config=tt.LoraConfig(rank=2)
    )


def test_sampling_is_served_while_a_training_run_is_busy(
    server: ServerThread, service_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampler = service_client.create_sampling_client(base_model=TINY).result()
    sampler.sample(tt.ModelInput.from_ints([1]), 1, tt.SamplingParams(max_tokens=1)).result()  # loaded
    trainer = service_client.create_lora_training_client(TINY, rank=2, seed=0).result()
    gate = Gate()
    monkeypatch.setattr(training_module, "run_builtin", gate.wrap(training_module.run_builtin))
    events: list[str] = []
    busy = trainer.forward_backward([_datum()], "cross_entropy")
    busy_done = when_done(busy, lambda: events.append("training finished"))
    try:
        assert gate.started.wait(GATE_TIMEOUT), "the training job never started"
        events.append("training started")
        sampled = sampler.sample(tt.ModelInput.from_ints([1, 2, 3]), 2, tt.SamplingParams(max_tokens=5)).result()
        events.append("sample finished")
        assert [len(sequence.tokens) for sequence in sampled.sequences] == [5, 5]
        assert not gate.finished.is_set()
        assert not busy_done.is_set()
    finally:
        gate.release.set()
    assert busy.result(timeout=GATE_TIMEOUT).metrics["loss:sum"] > 0
    wait_for(busy_done.is_set, "the training future's waiter")
    assert events == ["training started", "sample finished", "training finished"]


# --- findings -------------------------------------------------------------------------------------------------------


def test_an_absurd_num_samples_is_refused(http: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[int] = []

    def refuse_to_run(self: Any, tokens: Any, num_samples: int, *args: Any) -> Any:
        ran.append(num_samples)  # never run the job itself: this test must stay cheap while the bug exists
        raise RuntimeError("not run in this test")

    monkeypatch.setattr(LocalSamplingClient, "_sample", refuse_to_run)
    sampler = new_sampler(http, new_session(http))
    response = http.post("/api/v1/asample", json=sample_request(sampler, 0, num_samples=100_000))
    assert_refusal(response, 400, "num_samples")


def test_work_finishing_after_a_stop_does_not_write_to_a_closed_store(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate()
    monkeypatch.setattr(Scheduler, "_prefill", gate.wrap(Scheduler._prefill))  # holds the engine thread
    server = ServerThread(ServerConfig(store=tmp_path / "store", device="cpu"))
    server.start()
    board = server.engine.board
    errors: list[BaseException] = []
    answered = threading.Event()
    real_finish = board._finish

    def finish(*args: Any) -> None:
        try:
            real_finish(*args)
        except BaseException as error:  # kept, not re-raised: the worker thread logs nothing after the test ends
            errors.append(error)
        finally:
            answered.set()

    monkeypatch.setattr(board, "_finish", finish)
    with (
        releasing(gate),
        httpx.Client(base_url=server.base_url, headers={"X-API-Key": server.config.api_key}) as client,
    ):
        sampler = new_sampler(client, new_session(client))
        assert client.post("/api/v1/asample", json=sample_request(sampler, 0)).status_code == 200
        assert gate.started.wait(GATE_TIMEOUT)
        stopping = threading.Thread(target=server.stop, kwargs={"timeout": 0.1})
        stopping.start()
        stopping.join(2.0)  # a stop that waits for the work is fine too: the gate opens below either way
    stopping.join(GATE_TIMEOUT)
    assert answered.wait(GATE_TIMEOUT)
    assert errors == []
