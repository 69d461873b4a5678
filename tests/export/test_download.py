"""``tinkerflow export tinker://...``: a checkpoint trained through ``tinkerflow serve`` downloads and exports equal.

A LoRA run (unembedding included) on a tiny Llama is trained through an unmodified ``tinker.ServiceClient`` against
a :class:`~tinkerflow.shell.serve.server.ServerThread` and saved three ways (``weights``, ``sampler_weights``,
``external_weights``). Each ``tinker://`` path is exported (the Python function and the command line, with
``TINKER_BASE_URL`` / ``TINKER_API_KEY`` in the environment) and the ``hf`` folder loaded by plain ``transformers``
(the ``peft`` adapter by ``peft`` on the base) gives the server's own sampler's full next-token distributions and
``compute_logprobs`` (max abs diff <= 1e-4, fp32). The temporary external export is deleted from the server, the
temporary download from the cache; unsafe file maps, short or corrupt files, unknown paths, a wrong or missing key
and a server that does not answer raise typed errors within seconds.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import numpy as np
import pytest

from tinkerflow.errors import ConfigError

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")
tinker = pytest.importorskip("tinker")

import httpx  # noqa: E402  (after the importorskips)
from tinker import types as tt  # noqa: E402

from tinkerflow.shell.backends.local import LocalBackend  # noqa: E402
from tinkerflow.shell.backends.local.checkpoint import CheckpointError  # noqa: E402
from tinkerflow.shell.export import download as download_module  # noqa: E402
from tinkerflow.shell.export import export_checkpoint  # noqa: E402
from tinkerflow.shell.export.download import check_reachable, download_checkpoint, verify_download  # noqa: E402
from tinkerflow.shell.io.run_dir import RunState, write_state  # noqa: E402
from tinkerflow.shell.serve.server import ServerConfig, ServerThread  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "tiny-llama:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=64"
VOCAB = 300
TOLERANCE = 1e-4
KINDS = ("weights", "sampler_weights", "external_weights")


@attrs.frozen
class Served:
    """A run trained through the server, its three checkpoints and the server sampler's answers."""

    server: ServerThread
    paths: dict[str, str]  # kind -> tinker:// path
    prompts: tuple[np.ndarray, ...]
    expected: tuple[np.ndarray, ...]  # the server sampler's full log-softmax [T - 1, V] per prompt
    targets: tuple[np.ndarray, ...]  # the server sampler's compute_logprobs [T - 1] per prompt
    base_dir: pathlib.Path  # the base model as a plain HF folder (for peft)


def _datum(tokens: np.ndarray) -> tt.Datum:
    return tt.Datum(
        model_input=tt.ModelInput.from_ints(tokens[:-1].tolist()),
        loss_fn_inputs={
            "target_tokens": tokens[1:].astype(np.int64),
            "weights": np.ones(tokens.size - 1, np.float32),
        },
    )


def _server_answers(client: Any, path: str, prompts: Sequence[np.ndarray]) -> tuple[list[np.ndarray], ...]:
    """The server sampler's full next-token log-softmax (top-k over the vocabulary) and compute_logprobs."""
    sampler = client.create_sampling_client(model_path=path).result()
    params = tt.SamplingParams(max_tokens=1, temperature=0.0)
    full, targets = [], []
    for tokens in prompts:
        prompt = tt.ModelInput.from_ints(tokens.tolist())
        response = sampler.sample(prompt, 1, params, include_prompt_logprobs=True, topk_prompt_logprobs=VOCAB)
        rows = response.result().topk_prompt_logprobs[1:]
        dense = np.full((len(rows), VOCAB), np.nan, np.float32)
        for position, row in enumerate(rows):
            for token, value in row:
                dense[position, token] = value
        full.append(dense)
        targets.append(np.asarray(sampler.compute_logprobs(prompt).result()[1:], np.float32))
    return full, targets


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("download")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINKER_TELEMETRY", "0")
        with ServerThread(ServerConfig(store=root / "store", device="cpu")) as server:
            client = tinker.ServiceClient(base_url=server.base_url, api_key=server.config.api_key)
            training = client.create_lora_training_client(TINY, rank=4, seed=1, train_unembed=True).result()
            rng = np.random.default_rng(2)
            data = [_datum(rng.integers(0, 256, int(length))) for length in rng.integers(12, 40, 4)]
            for _ in range(4):
                training.forward_backward(data, "cross_entropy").result()
                training.optim_step(tt.AdamParams(learning_rate=2e-2)).result()
            paths = {
                "weights": training.save_state("trained").result().path,
                "sampler_weights": training.save_weights_for_sampler("trained").result().path,
                "external_weights": training.save_weights_external("trained").result().path,
            }
            prompts = tuple(np.random.default_rng(3).integers(0, VOCAB, int(n)) for n in (2, 5, 9, 17, 30, 40))
            full, targets = _server_answers(client, paths["sampler_weights"], prompts)
            other, _ = _server_answers(client, paths["weights"], prompts[:2])
            assert all(np.array_equal(a, b) for a, b in zip(other, full[:2], strict=False))  # the same weights
            with LocalBackend(checkpoint_dir=root / "local", device="cpu") as local:
                local.base_model(TINY).build().save_pretrained(root / "base")
            yield Served(server, paths, prompts, tuple(full), tuple(targets), root / "base")
            client.close("success").result(timeout=30)


@pytest.fixture
def env(served: Served, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """The SDK's environment pointing at the server, and a fresh cache; returns the cache folder."""
    monkeypatch.setenv("TINKER_BASE_URL", served.server.base_url)
    monkeypatch.setenv("TINKER_API_KEY", served.server.config.api_key)
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    monkeypatch.setenv("TINKERFLOW_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _distributions(model: Any, prompts: Sequence[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        return [
            torch.log_softmax(model(input_ids=torch.as_tensor(t)[None]).logits[0, :-1].float(), -1).numpy()
            for t in prompts
        ]


def _load_hf(folder: pathlib.Path) -> Any:
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _compare(model: Any, served: Served, what: str) -> tuple[float, float]:
    got = _distributions(model, served.prompts)
    full = max(float(np.abs(g - e).max()) for g, e in zip(got, served.expected, strict=True))
    targets = max(
        float(np.abs(np.take_along_axis(g, t[1:, None], 1)[:, 0] - lp).max())
        for g, t, lp in zip(got, served.prompts, served.targets, strict=True)
    )
    print(f"\n{what}: vs server sampler full distribution {full:.3g}, vs compute_logprobs {targets:.3g}")
    assert full <= TOLERANCE
    assert targets <= TOLERANCE
    return full, targets


def _server_checkpoints(served: Served) -> set[str]:
    rest = tinker.RestClient(base_url=served.server.base_url, api_key=served.server.config.api_key)
    return {c.tinker_path for c in rest.list_user_checkpoints(limit=1000).result().checkpoints}


# ---- round trips ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_hf_export_of_a_tinker_path_equals_the_server_sampler(
    kind: str, served: Served, env: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deleted: list[str] = []
    delete = tinker.RestClient.delete_checkpoint_from_tinker_path

    def spy(self: Any, path: str) -> Any:
        deleted.append(path)
        return delete(self, path)

    monkeypatch.setattr(tinker.RestClient, "delete_checkpoint_from_tinker_path", spy)
    before = _server_checkpoints(served)
    result = export_checkpoint(served.paths[kind], tmp_path / "hf", "hf")
    assert result.source == served.paths[kind]
    assert result.base_model == TINY  # the server's source name, which the local backend loads
    assert json.loads((result.out / "export.json").read_text())["source"] == served.paths[kind]
    _compare(_load_hf(result.out), served, f"hf export of {kind}")
    # the temporary external export (weights, sampler_weights) was made under a new run, then deleted
    assert len(deleted) == (0 if kind == "external_weights" else 1)
    assert all(path.endswith("/external_weights/tinkerflow-download") for path in deleted)
    assert _server_checkpoints(served) == before
    assert not any(served.server.config.store.glob("checkpoints/*/external_weights/tinkerflow-download"))
    assert list((env / "downloads").iterdir()) == []  # the temporary download is gone with the source


def test_peft_export_of_a_tinker_path_equals_the_server_sampler(
    served: Served, env: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from peft import PeftModel

    result = export_checkpoint(served.paths["weights"], tmp_path / "peft", "peft")
    config = json.loads((result.out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["base_model_name_or_path"]) == (4, 32, TINY)
    assert "lm_head" in config["target_modules"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(_load_hf(served.base_dir), str(result.out)).eval()
    _compare(model, served, "peft export of weights")
    base = _distributions(_load_hf(served.base_dir), served.prompts)
    moved = max(float(np.abs(b - e).max()) for b, e in zip(base, served.expected, strict=True))
    assert moved > 100 * TOLERANCE  # training moved the model, so the equality is not vacuous


def test_command_line_exports_a_tinker_path(served: Served, env: pathlib.Path, tmp_path: pathlib.Path) -> None:
    kept = tmp_path / "kept"
    command = [sys.executable, "-m", "tinkerflow.cli", "export", served.paths["sampler_weights"]]
    command += ["--out", str(tmp_path / "hf"), "--format", "hf", "--keep-download", str(kept)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=dict(os.environ), check=False)
    assert done.returncode == 0, done.stderr
    assert f"exported {served.paths['sampler_weights']}" in done.stdout
    assert {"checkpoint.json", "adapter_model.safetensors"} <= {path.name for path in kept.iterdir()}
    _compare(_load_hf(tmp_path / "hf"), served, "command line hf export of sampler_weights")


def test_command_line_without_a_server_fails_in_seconds(env: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tinkerflow.cli", "export", "tinker://run:train:0/weights/x"]
    command += ["--out", str(tmp_path / "hf"), "--format", "hf", "--base-url", f"http://127.0.0.1:{port}"]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=dict(os.environ), check=False)
    assert done.returncode != 0
    assert "download.base_url" in done.stderr
    assert "no Tinker server answers" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - start < 30  # the interpreter and torch start, then one refused connection
    assert not (tmp_path / "hf").exists()


def test_a_run_directory_of_a_tinker_run_exports_its_latest_checkpoint(
    served: Served, env: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_state(run, RunState(step=4, checkpoint=served.paths["weights"]))
    result = export_checkpoint(run, tmp_path / "hf", "hf")
    assert served.paths["weights"] in result.source
    _compare(_load_hf(result.out), served, "hf export of a Tinker run directory")


def test_download_writes_the_server_files_with_progress(
    served: Served, env: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = served.paths["external_weights"]
    out = download_checkpoint(path, tmp_path / "dl", progress=True)
    run, kind, name = path.removeprefix("tinker://").split("/")
    stored = served.server.config.store / "checkpoints" / run.replace(":", "__") / kind / name
    files = {p.relative_to(stored).as_posix(): p.read_bytes() for p in stored.rglob("*") if p.is_file()}
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert "adapter_model.safetensors" in capsys.readouterr().err  # the bar names the file
    assert [p.name for p in tmp_path.iterdir()] == ["dl"]  # no temporary sibling left
    with pytest.raises(ConfigError, match=r"download\.dest: .*already exists"):
        download_checkpoint(path, out, progress=False)


# ---- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["tinker://run/bogus/x", "tinker://run/weights", "tinker://run/weights/x/y", "tinker://run/weights/.."],
)
def test_malformed_paths_are_refused(path: str, env: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"download\.tinker_path: .*is not tinker://") as error:
        export_checkpoint(path, tmp_path / "hf", "hf")
    assert error.value.fix
    assert not (tmp_path / "hf").exists()


def test_unknown_checkpoints_are_refused(served: Served, env: pathlib.Path, tmp_path: pathlib.Path) -> None:
    run = served.paths["weights"].removeprefix("tinker://").split("/")[0]
    for path in (f"tinker://{run}/weights/nope", f"tinker://{run}/external_weights/nope", "tinker://nope/weights/x"):
        with pytest.raises(ConfigError, match=r"download\.tinker_path: ") as error:
            download_checkpoint(path, tmp_path / "dl", progress=False)
        assert "nope" in str(error.value)
        assert not (tmp_path / "dl").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_or_missing_key_is_refused(
    served: Served, env: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = served.paths["external_weights"]
    with pytest.raises(ConfigError, match=r"download\.api_key: .*refuses this key"):
        download_checkpoint(path, tmp_path / "dl", api_key="tml-wrong", progress=False)
    monkeypatch.delenv("TINKER_API_KEY")
    monkeypatch.delenv("TINKER_CREDENTIAL_CMD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no key stored by `tinker auth login`
    with pytest.raises(ConfigError, match=r"download\.api_key: no Tinker API key.*Fix: set TINKER_API_KEY"):
        download_checkpoint(path, tmp_path / "dl", progress=False)


def test_a_silent_server_times_out_quickly() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(ConfigError, match=r"download\.base_url: no Tinker server answers"):
            check_reachable(f"http://127.0.0.1:{port}", "tml-x", timeout=0.5)
        assert time.monotonic() - start < 5


def test_unsafe_file_maps_are_refused(
    served: Served, env: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tinker.RestClient.get_external_weights_urls
    for bad in ("../escape.safetensors", "/etc/passwd", "a/../../b", "a\\..\\b", ""):

        def tampered(self: Any, path: str, bad: str = bad) -> Any:
            answer = real(self, path).result()
            url = next(iter(answer.urls.values()))
            return _Done(tt.ExternalWeightsUrlsResponse(urls={**answer.urls, bad: url}, expires=answer.expires))

        monkeypatch.setattr(tinker.RestClient, "get_external_weights_urls", tampered)
        with pytest.raises(CheckpointError, match="unsafe file path"):
            download_checkpoint(served.paths["external_weights"], tmp_path / "dl" / "x", progress=False)
        assert list((tmp_path / "dl").iterdir()) == []
    assert not (tmp_path / "escape.safetensors").exists()


@attrs.frozen
class _Done:
    value: Any

    def result(self, timeout: float | None = None) -> Any:
        return self.value


def test_a_short_file_is_refused(tmp_path: pathlib.Path) -> None:
    """A body shorter than its Content-Length (the connection cut) is refused."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": "100"}, content=b"only 17 bytes ...")

    with httpx.Client(transport=httpx.MockTransport(handler)) as http, pytest.raises(CheckpointError, match="of 100"):
        download_module._fetch_file(http, "http://x/f", tmp_path / "f", "f", False)

    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, content=b"expired")

    with httpx.Client(transport=httpx.MockTransport(refused)) as http, pytest.raises(CheckpointError, match="403"):
        download_module._fetch_file(http, "http://x/f", tmp_path / "f", "f", False)


def test_corrupt_or_incomplete_downloads_are_refused(served: Served, env: pathlib.Path, tmp_path: pathlib.Path) -> None:
    good = download_checkpoint(served.paths["external_weights"], tmp_path / "good", progress=False)
    verify_download(good, "good")
    adapter = good / "adapter_model.safetensors"
    data = adapter.read_bytes()
    adapter.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        verify_download(good, "truncated")
    adapter.unlink()
    with pytest.raises(CheckpointError, match=r"names adapter_model\.safetensors, which the download lacks"):
        verify_download(good, "missing")
