"""Deleting a checkpoint through the server survives a kill midway.

``DELETE /api/v1/training_runs/<run>/checkpoints/<id>`` first renames the checkpoint's folder to a hidden name,
then removes the record, then the files. A server killed while the files go (simulated here: the removal deletes
one file and stops, as a kill would leave it) leaves no half checkpoint under the checkpoint's name and nothing
listed; the hidden leftover is removed when a server starts on the store again, and the other checkpoints are
untouched.
"""

from __future__ import annotations

import pathlib
import shutil
import types
from collections.abc import Callable

import pytest

pytest.importorskip("torch")

import tinker

from tinkerflow.shell.serve import rest
from tinkerflow.shell.serve.paths import parse_tinker_path
from tinkerflow.shell.serve.server import ServerConfig, ServerThread

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _killed_midway(removed: list[pathlib.Path]) -> Callable[..., None]:
    """An ``rmtree`` that deletes one file of the folder and stops there, as a kill in the middle would."""

    def rmtree(path: pathlib.Path, ignore_errors: bool = False) -> None:
        first = next(file for file in sorted(pathlib.Path(path).rglob("*")) if file.is_file())
        first.unlink()
        removed.append(pathlib.Path(path))

    return rmtree


def _rest(server: ServerThread) -> tinker.RestClient:
    return tinker.RestClient(base_url=server.base_url, api_key=server.config.api_key)


def _listed(server: ServerThread, run_id: str) -> set[str]:
    return {c.tinker_path for c in _rest(server).list_checkpoints(run_id).result().checkpoints}


def test_a_delete_killed_midway_leaves_no_half_checkpoint(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    config = ServerConfig(store=tmp_path / "store", device="cpu")
    checkpoints = config.store / "checkpoints"
    with ServerThread(config) as server:
        client = tinker.ServiceClient(base_url=server.base_url, api_key=server.config.api_key)
        training = client.create_lora_training_client(base_model="tiny-llama", rank=4).result()
        run_id = training.model_id
        doomed = training.save_state("doomed").result().path
        kept = training.save_state("kept").result().path
        folder = parse_tinker_path(doomed).directory(checkpoints)
        kept_folder = parse_tinker_path(kept).directory(checkpoints)
        files = sorted(path.relative_to(kept_folder) for path in kept_folder.rglob("*") if path.is_file())
        assert folder.is_dir()
        assert {doomed, kept} <= _listed(server, run_id)

        removed: list[pathlib.Path] = []
        monkeypatch.setattr(rest, "shutil", types.SimpleNamespace(rmtree=_killed_midway(removed)))
        _rest(server).delete_checkpoint_from_tinker_path(doomed).result()
        monkeypatch.setattr(rest, "shutil", shutil)

        assert not folder.exists()  # nothing half-deleted under the checkpoint's name
        [leftover] = removed
        assert leftover.parent == folder.parent
        assert leftover.name.startswith(f".{folder.name}.")
        assert leftover.is_dir()  # the simulated kill left part of the files
        listed = _listed(server, run_id)
        assert doomed not in listed
        assert kept in listed
        client.close("success").result(timeout=30)

    with ServerThread(config) as server:  # a server starting on the store removes the leftover
        assert not leftover.exists()
        assert not folder.exists()
        assert sorted(path.relative_to(kept_folder) for path in kept_folder.rglob("*") if path.is_file()) == files
        listed = _listed(server, run_id)
        assert doomed not in listed
        assert kept in listed
