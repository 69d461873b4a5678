"""The server's parts on their own: paths, catalog, store, futures board, offline tokenizers, the CLI."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.shell.backends.local.models import ByteTokenizer
from tinkerflow.shell.backends.protocol import APIFuture
from tinkerflow.shell.serve.catalog import ModelCatalog, parse_model_option
from tinkerflow.shell.serve.errors import ServeError
from tinkerflow.shell.serve.futures import JSON, FutureBoard, Payload
from tinkerflow.shell.serve.paths import from_local, local_run_id, model_id_of, parse_tinker_path, to_local
from tinkerflow.shell.serve.server import ServerConfig
from tinkerflow.shell.serve.store import RESTART_ERROR, CheckpointRecord, ModelRecord, Store

# -- paths ------------------------------------------------------------------------------------------------------

_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
_SESSION = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.-]{0,20}", fullmatch=True)  # the server's ids hold no '_'


@given(
    session=_SESSION,
    seq=st.integers(0, 10_000),
    kind=st.sampled_from(["weights", "sampler_weights", "external_weights"]),
    name=_NAME,
)
def test_tinker_paths_round_trip_through_local_paths(session: str, seq: int, kind: str, name: str) -> None:
    model_id = f"{session}:train:{seq}"
    path = f"tinker://{model_id}/{kind}/{name}"
    local = to_local(path)
    assert local == f"local://{local_run_id(model_id)}/{kind}/{name}"
    assert from_local(local) == path
    assert model_id_of(local_run_id(model_id)) == model_id


@settings(max_examples=300)
@given(text=st.text(alphabet=st.sampled_from(list("ab:/._-%~\\\x00 ")), max_size=40))
def test_no_tinker_path_leaves_the_checkpoint_directory(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any string either names a folder strictly inside the checkpoint root, or is refused with a 400."""
    root = pathlib.Path("/store/checkpoints")
    for candidate in (text, f"tinker://{text}", f"tinker://run/weights/{text}", f"tinker://{text}/weights/x"):
        try:
            folder = parse_tinker_path(candidate).directory(root)
        except ServeError as error:
            assert error.status == 400
            continue
        resolved = pathlib.Path(os.path.normpath(folder))
        assert resolved.is_relative_to(root)
        assert resolved != root
        assert len(resolved.relative_to(root).parts) == 3


@pytest.mark.parametrize(
    "path",
    ["tinker://../../etc/weights/x", "tinker://run/weights/..", "tinker://run/weights/a/b", "tinker://a_b/weights/x"],
)
def test_bad_tinker_paths_are_refused_naming_the_field(path: str) -> None:
    with pytest.raises(ServeError) as caught:
        parse_tinker_path(path, "model_path")
    assert caught.value.status == 400
    assert caught.value.field == "model_path"


# -- catalog ----------------------------------------------------------------------------------------------------


def test_catalog_serves_listed_names_and_tiny_specs() -> None:
    catalog = ModelCatalog.from_options(["Qwen/Qwen3-8B=/models/q"], include_defaults=True)
    assert catalog.source("Qwen/Qwen3-8B") == "/models/q"
    assert catalog.source("tiny-qwen3:hidden=32") == "tiny-qwen3:hidden=32"
    assert catalog.served_name("/models/q") == "Qwen/Qwen3-8B"
    only = ModelCatalog.from_options(["a=b"], include_defaults=False)
    with pytest.raises(ServeError, match=r"does not serve 'tiny-llama'.*--model NAME=SOURCE") as caught:
        only.source("tiny-llama")
    assert caught.value.field == "base_model"
    assert parse_model_option("name") == ("name", "name")
    with pytest.raises(ServeError):
        parse_model_option("name=")


# -- store ------------------------------------------------------------------------------------------------------


def _model(model_id: str) -> ModelRecord:
    return ModelRecord(model_id, "s", 0, "tiny-llama", 4, True, 1.0, None, None, None, True)


def test_store_survives_reopening_and_recovery_fails_what_was_in_flight(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    store.add_session("s", ("a",), {"k": 1}, "0.38.0")
    store.add_model(_model("s:train:0"))
    assert store.add_future("done-1", "s:train:0", 1, "optim_step") is None
    assert store.add_future("pending-1", "s:train:0", 2, "optim_step") is None
    assert store.add_future("again", "s:train:0", 2, "optim_step") == "pending-1"  # a resent seq_id
    store.finish_future("done-1", JSON, b'{"metrics": {}}')
    record = CheckpointRecord("tinker://s:train:0/weights/c", "s:train:0", "weights", "c", 2.0, 10, None, False)
    store.add_checkpoint(record)
    store.close()

    reopened = Store(tmp_path / "db.sqlite3")
    assert reopened.recover() == 1
    done = reopened.future("done-1")
    assert done is not None
    assert done.state == "done"
    assert done.payload == b'{"metrics": {}}'
    lost = reopened.future("pending-1")
    assert lost is not None
    assert lost.state == "failed"
    assert lost.error == RESTART_ERROR
    model = reopened.model("s:train:0")
    assert model is not None
    assert not model.live
    assert model.last_checkpoint == record.tinker_path
    assert reopened.checkpoint(record.tinker_path) == record
    assert reopened.delete_checkpoint(record.tinker_path)
    model = reopened.model("s:train:0")
    assert model is not None
    assert model.last_checkpoint is None


# -- futures board ----------------------------------------------------------------------------------------------


def test_board_bounds_work_in_flight_and_long_polls(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    board = FutureBoard(store, max_pending=1)
    gate = threading.Event()

    def slow() -> APIFuture[int]:
        from tinkerflow.shell.backends.protocol import waiting_future

        return waiting_future(lambda: gate.wait(10) and 7)

    first = board.launch(owner="o", seq_id=1, kind="k", start=slow, encode=lambda v: Payload(JSON, str(v).encode()))
    with pytest.raises(ServeError) as caught:
        board.launch(owner="o", seq_id=2, kind="k", start=slow, encode=lambda v: Payload(JSON, b""))
    assert caught.value.status == 429
    pending = asyncio.run(board.wait(first.request_id, timeout=0.05))
    assert pending.state == "pending"
    gate.set()
    finished = asyncio.run(board.wait(first.request_id, timeout=10))
    assert finished.state == "done"
    assert finished.payload == b"7"
    assert board.pending == 0

    def bad() -> APIFuture[int]:
        raise ValidationError("x", "field", "bad")

    with pytest.raises(ServeError) as refused:  # a refusal at submission leaves no future behind
        board.launch(owner="o", seq_id=3, kind="k", start=bad, encode=lambda v: Payload(JSON, b""))
    assert refused.value.status == 400
    assert board.pending == 0
    assert store.add_future("new", "o", 3, "k") is None  # seq 3 was not taken by the refused request


def test_board_records_errors_by_category(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    board = FutureBoard(store, max_pending=4)
    user = board.launch(
        owner="o",
        seq_id=None,
        kind="k",
        start=lambda: APIFuture.failed(ValidationError("w", "f", "no")),
        encode=lambda v: Payload(JSON, b""),
    )
    server = board.launch(
        owner="o", seq_id=None, kind="k", start=lambda: APIFuture.completed(1), encode=lambda v: 1 / 0
    )  # type: ignore[arg-type, return-value]
    user_record = asyncio.run(board.wait(user.request_id, 5))
    server_record = asyncio.run(board.wait(server.request_id, 5))
    assert (user_record.state, user_record.category) == ("failed", "user")
    assert (server_record.state, server_record.category) == ("failed", "server")
    assert "could not encode" in (server_record.error or "")


# -- offline tokenizers -----------------------------------------------------------------------------------------

_INSTALL = """
import os, sys, json
from tinkerflow.shell.backends.local.models import ByteTokenizer
from tinkerflow.shell.serve.hub_cache import install_tokenizers
print(json.dumps(install_tokenizers({"tiny-llama": ByteTokenizer(300, "tiny-llama"), "a:b": ByteTokenizer(300)},
                                    os.environ["HF_HOME"])))
from transformers import AutoTokenizer
hf = AutoTokenizer.from_pretrained("tiny-llama")
texts = json.loads(sys.stdin.read())
print(json.dumps([hf.encode(text, add_special_tokens=False) for text in texts]))
print(json.dumps(hf.decode(list(range(256)) + [256, 257, 258, 299])))
"""


def test_installed_tokenizers_load_offline_and_match_the_servers(tmp_path: pathlib.Path) -> None:
    texts = ["", "hello world", "héllo\n\nUser: 1 + 2 = ?", "日本語 🙂", " leading and trailing ", "\t\r\n"]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    import json

    done = subprocess.run(
        [sys.executable, "-c", _INSTALL], input=json.dumps(texts), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    outcome, encoded, decoded = (json.loads(line) for line in done.stdout.strip().splitlines()[-3:])
    assert outcome["tiny-llama"] == "installed"
    assert outcome["a:b"].startswith("skipped")
    byte = ByteTokenizer(300, "tiny-llama")
    assert encoded == [byte.encode(text) for text in texts]
    assert decoded == byte.decode([*range(256), 256, 257, 258, 299])


def test_a_foreign_cache_entry_is_never_replaced(tmp_path: pathlib.Path) -> None:
    from tinkerflow.shell.serve.hub_cache import install_tokenizers

    entry = tmp_path / "hub" / "models--Org--Real"
    entry.mkdir(parents=True)
    (entry / "keep").write_text("a real download")
    outcome = install_tokenizers({"Org/Real": ByteTokenizer(300)}, tmp_path)
    assert outcome["Org/Real"].startswith("skipped")
    assert (entry / "keep").read_text() == "a real download"


# -- config and CLI ---------------------------------------------------------------------------------------------


def test_server_config_refuses_bad_values(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="tml-"):
        ServerConfig(store=tmp_path, api_key="secret")
    with pytest.raises(ConfigError):
        ServerConfig(store=tmp_path, max_pending=0)
    with pytest.raises(ConfigError):
        ServerConfig(store=tmp_path, port=70000)
    assert ServerConfig(store=tmp_path).host == "127.0.0.1"


def test_serve_command_starts_announces_and_stops_by_itself(tmp_path: pathlib.Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tinkerflow.cli", "serve", "--port", "0", "--store", str(tmp_path), "--exit-after", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TINKERFLOW_SERVE_KEY": "tml-secret-key"},
    )
    assert done.returncode == 0, done.stderr
    assert "export TINKER_BASE_URL=http://127.0.0.1:" in done.stdout
    assert "tml-secret-key" not in done.stdout + done.stderr  # a key given by the user is never printed
    assert (tmp_path / "server.sqlite3").is_file()
