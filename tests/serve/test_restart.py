"""``tinkerflow serve`` killed with SIGKILL mid-run and started again on the same store and port.

The server runs as a subprocess (``python -m tinkerflow.cli serve --port 0 --store DIR --exit-after 300``; the
port is read from the line it prints when it listens) and comes back on the same port, so the clients of the
killed server (the SDK's ``ServiceClient`` and its training client, a ``TinkerBackend`` loop) talk to the new one
without being told. After the restart:

* ``tinker://`` checkpoints from before load: a training client from state (weights and Adam moments, so one
  more step lands exactly where the uninterrupted run's did) and a sampling client from sampler weights;
* finished futures answer ``/api/v1/retrieve_future`` with the very bytes they answered before (JSON and
  protobuf);
* requests in flight when the server died fail with a ``RequestFailedResponse`` that says the server restarted
  (the SDK raises ``RequestFailedError``), rather than hang; one whose submission the SDK sends again (the kill
  cut its answer) is refused with the 404 below;
* requests to the old training run answer 404 naming the call that resumes it from its last checkpoint;
* tinkerflow's SL loop whose server died under it stops with that clear error, and run again resumes from its
  last ``tinker://`` checkpoint to the same metric rows and weights as a run never interrupted.

Every subprocess is killed in a ``finally`` block and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import httpx
import tinker
import tinker.types as tt
from tests.serve.scripts.loop_client import PAUSE_AT, TIMING_FIELDS, make_config, run_loop
from tests.serve.scripts.support import (
    ServerProcess,
    checkpoint_params,
    futures_of_kind,
    kill_hard,
    pending_futures,
    start_client,
    wait_for,
)
from tests.tiny_model import assert_same_params, assert_same_rows

from tinkerflow.shell.backends.tinker import TinkerBackend
from tinkerflow.shell.io.run_dir import MetricsLog, read_state
from tinkerflow.shell.serve.server import DEFAULT_KEY, ServerConfig, serve

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ADAM = tt.AdamParams(learning_rate=1e-2)
PROMPT = [256, 72, 105, 58, 32]  # BOS "Hi: " in the tiny models' byte vocabulary


@contextlib.contextmanager
def _servers(store: pathlib.Path, logs: pathlib.Path) -> Iterator[list[ServerProcess]]:
    """A list the test appends its server processes to; every one is killed when the block ends."""
    servers: list[ServerProcess] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.kill()


def _kill(server: ServerProcess) -> None:
    """``kill -9`` the server (no shutdown: work in flight is lost with the process)."""
    server.kill()
    assert server.process is not None
    assert server.process.returncode == -signal.SIGKILL


def _start_again(first: ServerProcess, servers: list[ServerProcess]) -> ServerProcess:
    """A new server on the killed one's store and port."""
    assert not first.running
    second = ServerProcess(first.store, first.logs, port=first.port)
    servers.append(second)
    second.start()
    assert second.base_url == first.base_url
    return second


def _datum(tokens: Sequence[int]) -> tt.Datum:
    return tt.Datum(
        model_input=tt.ModelInput.from_ints(list(tokens[:-1])),
        loss_fn_inputs={
            "target_tokens": tt.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": tt.TensorData.from_numpy(np.ones(len(tokens) - 1, dtype=np.float32)),
        },
    )


def _logprobs(output: tt.ForwardBackwardOutput) -> list[np.ndarray]:
    return [np.asarray(item["logprobs"].tolist(), dtype=np.float32) for item in output.loss_fn_outputs]


def _retrieve(http: httpx.Client, request_id: str) -> httpx.Response:
    """The answer of future ``request_id`` once it is no longer pending (the server long-polls; bounded)."""
    for _ in range(10):
        response = http.post("/api/v1/retrieve_future", json={"request_id": request_id})
        assert response.status_code == 200, response.text
        if not response.headers["content-type"].startswith("application/json"):
            return response
        if response.json().get("type") != "try_again":
            return response
    raise AssertionError(f"{request_id} still pending after ten long polls")


def test_restart_keeps_checkpoints_and_answers_and_fails_lost_work_clearly(tmp_path: pathlib.Path) -> None:
    store, logs = tmp_path / "store", tmp_path / "logs"
    rng = np.random.default_rng(0)
    batch = [_datum([256, *rng.integers(32, 127, size=12).tolist()]) for _ in range(4)]
    big = [_datum(rng.integers(0, 256, size=201).tolist()) for _ in range(192)]  # a second or so of work
    with _servers(store, logs) as servers:
        first = ServerProcess(store, logs)
        servers.append(first)
        first.start()
        service = tinker.ServiceClient(base_url=first.base_url, api_key=DEFAULT_KEY)
        http = httpx.Client(base_url=first.base_url, headers={"X-API-Key": DEFAULT_KEY}, timeout=60)
        with contextlib.closing(http):
            # -- before: train, checkpoint, sample, and remember what the uninterrupted run does next
            training = service.create_lora_training_client(base_model="tiny-llama", rank=4, seed=0).result(timeout=120)
            for _ in range(2):
                training.forward_backward(batch, "cross_entropy")
                training.optim_step(ADAM).result(timeout=60)
            state_path = training.save_state("before").result(timeout=60).path
            at_checkpoint = _logprobs(training.forward(batch, "cross_entropy").result(timeout=60))
            sampler_path = training.save_weights_for_sampler("before").result(timeout=60).path
            prompt = tt.ModelInput.from_ints(PROMPT)
            prompt_logprobs = (
                service.create_sampling_client(model_path=sampler_path).result(timeout=60).compute_logprobs(prompt)
            )
            sampled_before = prompt_logprobs.result(timeout=60)
            training.forward_backward(batch, "cross_entropy")
            training.optim_step(ADAM).result(timeout=60)
            one_step_on = _logprobs(training.forward(batch, "cross_entropy").result(timeout=60))

            # -- finished futures, by id: a JSON answer (a save) and a protobuf one (a sample)
            save = tt.SaveWeightsRequest(model_id=training.model_id, path="raw", seq_id=1_000_000)
            saved = http.post("/api/v1/save_weights", json=save.model_dump(mode="json", exclude_none=True))
            session = tt.CreateSessionRequest(tags=[], user_metadata=None, sdk_version="0.38.0")
            session_id = http.post("/api/v1/create_session", json=session.model_dump(mode="json")).json()["session_id"]
            create = tt.CreateSamplingSessionRequest(
                session_id=session_id, sampling_session_seq_id=0, model_path=sampler_path
            )
            sampler_id = http.post("/api/v1/create_sampling_session", json=create.model_dump(mode="json")).json()[
                "sampling_session_id"
            ]
            sample = tt.SampleRequest(
                num_samples=2,
                prompt=prompt,
                sampling_params=tt.SamplingParams(max_tokens=5, temperature=1.0, seed=7),
                sampling_session_id=sampler_id,
                seq_id=0,
            )
            sampled = http.post("/api/v1/asample", json=sample.model_dump(mode="json", exclude_none=True))
            finished = {response.json()["request_id"]: None for response in (saved, sampled)}
            answers = {request_id: _retrieve(http, request_id) for request_id in finished}
            content_types = sorted(answer.headers["content-type"] for answer in answers.values())
            assert content_types == ["application/json", "application/x-protobuf"]
            last_checkpoint = answers[saved.json()["request_id"]].json()["path"]
            assert last_checkpoint.endswith("/weights/raw")

            # -- work in flight: three long forward_backward calls (one run runs them one after another), the
            # server killed as soon as all three are accepted
            queued = futures_of_kind(store, "forward_backward")
            in_flight = [training.forward_backward(big, "cross_entropy") for _ in range(3)]
            wait_for(
                "the forward_backward calls to be accepted",
                lambda: futures_of_kind(store, "forward_backward") >= queued + 3 or None,
                timeout=60,
            )
            _kill(first)
            lost = pending_futures(store)  # as the killed server left them
            lost_calls = [request_id for request_id, kind in lost if kind == "forward_backward"]
            assert lost_calls  # (each call is one request: 192 datums are one chunk)
            _start_again(first, servers)
            assert pending_futures(store) == []  # the new server failed them when it opened the store

            # -- finished futures answer with the same bytes
            for request_id, before in answers.items():
                after = _retrieve(http, request_id)
                assert after.headers["content-type"] == before.headers["content-type"]
                assert after.content == before.content

            # -- lost work fails with an answer that names the restart
            for request_id, _ in lost:
                failed = _retrieve(http, request_id).json()
                assert failed["category"] == "server"
                assert "restarted" in failed["error"]

            # -- the old training run: 404, naming the way back from its last checkpoint
            step = tt.OptimStepRequest(model_id=training.model_id, seq_id=2_000_000, optim_params=ADAM)
            refused = http.post("/api/v1/optim_step", json=step.model_dump(mode="json", exclude_none=True))
            assert refused.status_code == 404
            assert f"create_training_client_from_state_with_optimizer({last_checkpoint!r})" in refused.json()["detail"]
            with pytest.raises(tinker.NotFoundError, match="create_training_client_from_state"):
                training.forward(batch, "cross_entropy").result(timeout=60)

            # -- checkpoints from before load, through the same ServiceClient (its session survived)
            resumed = service.create_training_client_from_state_with_optimizer(state_path).result(timeout=120)
            for ours, theirs in zip(
                _logprobs(resumed.forward(batch, "cross_entropy").result(timeout=60)), at_checkpoint, strict=True
            ):
                np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
            resumed.forward_backward(batch, "cross_entropy")
            resumed.optim_step(ADAM).result(timeout=60)
            for ours, theirs in zip(
                _logprobs(resumed.forward(batch, "cross_entropy").result(timeout=60)), one_step_on, strict=True
            ):
                np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)  # the Adam moments came back too
            sampler = service.create_sampling_client(model_path=sampler_path).result(timeout=60)
            sampled_after = sampler.compute_logprobs(prompt).result(timeout=60)
            np.testing.assert_allclose(
                np.array(sampled_after, dtype=float), np.array(sampled_before, dtype=float), rtol=1e-6
            )

            # -- the SDK's futures of the lost calls (polling the new server by now) raise that error; a call whose
            # answer to its submission was cut by the kill is sent again by the SDK and refused with the 404 above;
            # a call the killed server finished in time answers as usual
            failures = 0
            for future in in_flight:
                try:
                    future.result(timeout=120)
                except tinker.RequestFailedError as error:
                    assert "restarted" in str(error)
                    failures += 1
                except tinker.NotFoundError as error:
                    assert "create_training_client_from_state_with_optimizer" in str(error)
                    failures += 1
            assert failures == len(lost_calls)
            service.close("success").result(timeout=60)


def _rows(run_dir: pathlib.Path) -> list[dict[str, object]]:
    return [
        {key: value for key, value in row.items() if key not in TIMING_FIELDS}
        for row in MetricsLog.read(run_dir / "metrics.jsonl")
    ]


def test_sl_loop_whose_server_was_killed_resumes_exactly(tmp_path: pathlib.Path) -> None:
    """The SL loop runs in a client process; the server is killed under it after a step past its first
    checkpoint and comes back on the same store and port. The client stops with the server's clear error (its
    training run is gone) instead of hanging; run again, it resumes from its last ``tinker://`` checkpoint and
    ends with the metric rows and weights of a run never interrupted."""
    store, logs, root = tmp_path / "store", tmp_path / "logs", tmp_path / "runs"
    root.mkdir()
    pause, checkpoint_step = PAUSE_AT["sl"]
    with _servers(store, logs) as servers:
        first = ServerProcess(store, logs)
        servers.append(first)
        first.start()
        config = make_config("sl", root, "reference")
        with TinkerBackend(base_url=first.base_url, api_key=DEFAULT_KEY) as backend:
            reference = run_loop("sl", config, backend, out=io.StringIO())
        reference_rows = _rows(root / "reference")
        reference_params = checkpoint_params(store, reference.final_checkpoint)

        arguments = ["sl", str(root), "victim", "--pause-after", str(pause)]
        client = start_client(arguments, root / "victim.log", first.base_url, DEFAULT_KEY)
        try:
            wait_for(
                f"the client to pause after step {pause}",
                lambda: (root / "victim.paused").exists() or None,
                timeout=180,
                alive=lambda: client.poll() is None,
            )
            _kill(first)
            second = _start_again(first, servers)
            (root / "victim.go").touch()
            status = client.wait(timeout=300)
        finally:
            kill_hard(client)
        log = (root / "victim.log").read_text(errors="replace")
        assert status not in (0, -signal.SIGKILL), log[-3000:]
        assert "create_training_client_from_state_with_optimizer" in log or "restarted" in log, log[-3000:]
        state = read_state(root / "victim")
        assert state is not None
        assert state.step == checkpoint_step

        out = io.StringIO()
        with TinkerBackend(base_url=second.base_url, api_key=DEFAULT_KEY) as backend:
            resumed = run_loop("sl", make_config("sl", root, "victim"), backend, out=out)
        assert f"resuming at step {checkpoint_step} from {state.checkpoint}" in out.getvalue()
        assert_same_rows(_rows(root / "victim"), reference_rows)
        assert_same_params(checkpoint_params(store, resumed.final_checkpoint), reference_params)
        assert resumed.after == pytest.approx(reference.after, rel=1e-6)
        assert json.loads((root / "victim" / "state.json").read_text())["step"] == 12


def test_the_announced_address_accepts_connections_once_announced(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script that starts ``tinkerflow serve`` and connects as soon as it reads the ``export TINKER_BASE_URL=``
    line must be accepted (or queued), not refused. The connection is tried while the line is being written, so
    the server cannot have got further."""
    outcome: list[str] = []

    class ConnectOnAnnouncement(io.StringIO):
        def write(self, text: str) -> int:
            match = re.search(r"TINKER_BASE_URL=http://127\.0\.0\.1:(\d+)", text)
            if match is not None:
                try:
                    with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=5):
                        outcome.append("accepted")
                except ConnectionRefusedError:
                    outcome.append("refused")
            return super().write(text)

    monkeypatch.setattr(sys, "stdout", ConnectOnAnnouncement())
    stop = threading.Event()
    config = ServerConfig(store=tmp_path / "store", device="cpu")
    thread = threading.Thread(target=serve, args=(config,), kwargs={"stop": stop, "announce": True}, daemon=True)
    thread.start()
    try:
        wait_for("the announcement", lambda: outcome or None, timeout=60, alive=thread.is_alive)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert outcome == ["accepted"]
