"""Lifecycles: ended sessions, bounded samplers, checkpoint TTLs, one server per store, lost answers."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tinker
import tinker.types as tt

from tinkerflow.errors import ConfigError
from tinkerflow.shell.serve.server import DEFAULT_KEY, ServerConfig, ServerThread, build_engine
from tinkerflow.shell.serve.store import Store


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, no_telemetry: None) -> Iterator[ServerThread]:
    """A server that keeps at most two samplers loaded."""
    config = ServerConfig(store=tmp_path_factory.mktemp("lifecycle") / "store", device="cpu", max_samplers=2)
    with ServerThread(config) as running:
        yield running


def _http(server: ServerThread) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"X-API-Key": server.config.api_key}, timeout=60)


def _datum() -> tt.Datum:
    tokens = np.arange(1, 9, dtype=np.int64)
    return tt.Datum(
        model_input=tt.ModelInput.from_ints(tokens[:-1].tolist()),
        loss_fn_inputs={
            "target_tokens": tt.TensorData.from_numpy(tokens[1:]),
            "weights": tt.TensorData.from_numpy(np.ones(7, dtype=np.float32)),
        },
    )


def test_an_ended_session_refuses_work_and_heartbeats(small: ServerThread) -> None:
    service = tinker.ServiceClient(base_url=small.base_url, api_key=small.config.api_key)
    training = service.create_lora_training_client(base_model="tiny-llama", rank=2, seed=0).result()
    session_id = training.model_id.split(":train:")[0]
    service.close("success").result(timeout=30)
    with _http(small) as http:
        beat = http.post("/api/v1/session_heartbeat", json={"session_id": session_id})
        assert beat.status_code == 410  # the SDK stops heartbeating on 410
        create = http.post(
            "/api/v1/create_model",
            json={"session_id": session_id, "model_seq_id": 5, "base_model": "tiny-llama", "lora_config": {"rank": 2}},
        )
        assert create.status_code == 410
        assert create.json()["field"] == "session_id"
        run = http.post("/api/v1/get_info", json={"model_id": training.model_id})
        assert run.status_code == 404  # released: the message says how to come back
        assert "create_training_client_from_state_with_optimizer" in run.json()["detail"]


def test_samplers_beyond_the_bound_are_dropped_least_recently_used_first(small: ServerThread) -> None:
    service = tinker.ServiceClient(base_url=small.base_url, api_key=small.config.api_key)
    try:
        training = service.create_lora_training_client(base_model="tiny-llama", rank=2, seed=0).result()
        prompt = tt.ModelInput.from_ints([1, 2, 3])
        params = tt.SamplingParams(max_tokens=2, temperature=0.0)
        first = training.save_weights_and_get_sampling_client().result()
        base = service.create_sampling_client(base_model="tiny-llama").result()
        assert len(first.sample(prompt, 1, params).result().sequences) == 1
        for _ in range(2):  # two newer samplers push the first (least recently used) out of memory
            training.forward_backward([_datum()], "cross_entropy").result()
            training.save_weights_and_get_sampling_client().result().sample(prompt, 1, params).result()
        assert len(small.engine.samplers._loaded) <= 2
        with pytest.raises(tinker.APIStatusError, match="no longer loaded"):
            first.sample(prompt, 1, params).result(timeout=60)
        # a sampler on stored weights (a base model or a tinker:// path) comes back when used again
        assert len(base.sample(prompt, 1, params).result(timeout=60).sequences) == 1
    finally:
        service.close("success").result(timeout=30)


def test_a_checkpoint_ttl_counts_from_when_it_is_set(small: ServerThread) -> None:
    service = tinker.ServiceClient(base_url=small.base_url, api_key=small.config.api_key)
    try:
        training = service.create_lora_training_client(base_model="tiny-llama", rank=2, seed=0).result()
        path = training.save_state("ttl").result().path
        rest = tinker.RestClient(base_url=small.base_url, api_key=small.config.api_key)
        time.sleep(1.5)
        before = time.time()
        rest.set_checkpoint_ttl_from_tinker_path(path, 3600).result()
        (listed,) = [c for c in rest.list_checkpoints(training.model_id).result().checkpoints if c.tinker_path == path]
        assert listed.expires_at is not None
        assert listed.expires_at.timestamp() == pytest.approx(before + 3600, abs=1.0)
        rest.set_checkpoint_ttl_from_tinker_path(path, None).result()
        (listed,) = [c for c in rest.list_checkpoints(training.model_id).result().checkpoints if c.tinker_path == path]
        assert listed.expires_at is None
    finally:
        service.close("success").result(timeout=30)


def test_only_gets_of_download_urls_skip_the_key(small: ServerThread) -> None:
    with httpx.Client(base_url=small.base_url, timeout=30) as anonymous:
        assert anonymous.post("/api/v1/files/a/weights/b/c").status_code == 401
        assert anonymous.get("/api/v1/files/a/weights/b/c").status_code == 403  # no signature: refused by it


def test_stability_info_is_refused_naming_the_field(small: ServerThread) -> None:
    service = tinker.ServiceClient(base_url=small.base_url, api_key=small.config.api_key)
    try:
        sampler = service.create_sampling_client(base_model="tiny-llama").result()
        request = {
            "prompt": {"chunks": [{"tokens": [1, 2], "type": "encoded_text"}]},
            "sampling_params": {"max_tokens": 2},
            "record_stability_info": True,
            "sampling_session_id": sampler._sampling_session_id,  # the SDK's own id of this sampling session
            "seq_id": 99,
        }
        with _http(small) as http:
            answer = http.post("/api/v1/asample", json=request)
            assert answer.status_code == 400
            assert answer.json()["field"] == "record_stability_info"
            request["record_stability_info"] = False  # what the SDK sends by default is fine
            assert http.post("/api/v1/asample", json=request).status_code == 200
    finally:
        service.close("success").result(timeout=30)


def test_two_servers_cannot_share_a_store(tmp_path: pathlib.Path) -> None:
    config = ServerConfig(store=tmp_path, device="cpu")
    engine = build_engine(config)
    try:
        with pytest.raises(ConfigError, match="another server is using"):
            build_engine(config)
    finally:
        engine.close()
        engine.store.close()
    build_engine(config).close()  # free again once the first is closed


def test_the_default_key_is_refused_off_this_machine(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="default key"):
        ServerConfig(store=tmp_path, host="0.0.0.0", api_key=DEFAULT_KEY)
    assert ServerConfig(store=tmp_path, host="0.0.0.0", api_key="tml-a-real-secret").host == "0.0.0.0"


def test_a_pending_answer_that_is_in_flight_nowhere_is_a_failure_not_try_again(tmp_path: pathlib.Path) -> None:
    from tinkerflow.shell.serve.futures import FutureBoard

    store = Store(tmp_path / "db.sqlite3")
    store.add_future("orphan", "owner", None, "sample")  # pending in the store, but no work behind it
    record = asyncio.run(FutureBoard(store, max_pending=1).wait("orphan", timeout=5))
    assert record.state == "failed"
    assert "lost this request's answer" in (record.error or "")
