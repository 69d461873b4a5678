"""tinkerflow's own SL, RL and DPO loops with ``TinkerBackend`` (the Tinker SDK) against ``tinkerflow serve``.

One server (the conftest's module :class:`ServerThread` on a temporary store) serves the whole module; the loops
run on the tiny random-init Llama with the byte renderer of the local loop tests (the configs are in
:mod:`tests.serve.scripts.loop_client`). Through the server each loop learns, writes its metrics and charts,
checkpoints to ``tinker://`` paths that exist on the server, and equals the same loop run on the local backend
directly (SL and RL to the last bit; DPO, whose loss the SDK applies in two passes as a linear surrogate, to
float32 rounding). A client killed with SIGKILL after its first checkpoint and started again on the same run
directory resumes from its last ``tinker://`` checkpoint and ends with the same metric rows and weights as an
uninterrupted run. The ``tinkerflow sl`` command trains through the server when ``backend="tinker"`` and
``TINKER_BASE_URL`` point at it (and ``HF_HOME`` at the tokenizers the server installs).
"""

from __future__ import annotations

import io
import json
import math
import pathlib
import subprocess
import sys
from collections.abc import Mapping, Sequence

import attrs
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

import tinker
from tests.serve.scripts.loop_client import (
    KINDS,
    PAUSE_AT,
    TIMING_FIELDS,
    LoopKind,
    LoopResult,
    make_config,
    run_loop,
)
from tests.serve.scripts.support import REPO, checkpoint_params, child_env, kill_hard, start_client, wait_for
from tests.tiny_model import assert_same_params, assert_same_rows

from tinkerflow.config import SLConfig
from tinkerflow.serde import to_json
from tinkerflow.shell.backends.local.backend import LocalBackend
from tinkerflow.shell.backends.tinker import TinkerBackend
from tinkerflow.shell.io.run_dir import MetricsLog, read_state
from tinkerflow.shell.serve.hub_cache import install_tokenizers
from tinkerflow.shell.serve.paths import parse_tinker_path
from tinkerflow.shell.serve.server import DEFAULT_KEY, ServerThread

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOG2 = math.log(2.0)
CHARTS: Mapping[LoopKind, str] = {"sl": "loss.html", "rl": "reward.html", "dpo": "dpo.html"}
STEPS: Mapping[LoopKind, int] = {"sl": 12, "rl": 6, "dpo": 12}


@attrs.frozen
class Finished:
    """A finished run: what the loop returned, its metric rows (timing fields dropped) and its final weights."""

    result: LoopResult
    rows: list[dict[str, object]]
    params: dict[str, np.ndarray]


@attrs.define
class Served:
    """The module's server, its root folder (data files and run directories) and the uninterrupted runs."""

    server: ServerThread
    root: pathlib.Path
    references: dict[LoopKind, Finished] = attrs.field(factory=dict)

    @property
    def store(self) -> pathlib.Path:
        return self.server.config.store

    def backend(self) -> TinkerBackend:
        return TinkerBackend(base_url=self.server.base_url, api_key=DEFAULT_KEY)


@pytest.fixture(scope="module")
def served(server: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Served:
    """The conftest's module server (no telemetry) and a root folder for this module's runs."""
    return Served(server, tmp_path_factory.mktemp("loops"))


def _rows(run_dir: pathlib.Path) -> list[dict[str, object]]:
    return [
        {key: value for key, value in row.items() if key not in TIMING_FIELDS}
        for row in MetricsLog.read(run_dir / "metrics.jsonl")
    ]


def _reference(served: Served, kind: LoopKind) -> Finished:
    """The uninterrupted ``kind`` run through the server (run once per module, in this process)."""
    if kind not in served.references:
        config = make_config(kind, served.root, f"{kind}-reference")
        with served.backend() as backend:
            result = run_loop(kind, config, backend, out=io.StringIO())
        run_dir = pathlib.Path(config.run_dir)
        served.references[kind] = Finished(
            result, _rows(run_dir), checkpoint_params(served.store, result.final_checkpoint)
        )
    return served.references[kind]


def _checkpoint_names(served: Served, tinker_path: str) -> set[str]:
    """The names of the checkpoints the server lists for the training run of ``tinker_path`` (its REST API)."""
    run_id = tinker_path.removeprefix("tinker://").split("/")[0]
    rest = tinker.RestClient(base_url=served.server.base_url, api_key=DEFAULT_KEY)
    listed = rest.list_checkpoints(run_id).result(timeout=60)
    return {checkpoint.tinker_path.rsplit("/", 1)[1] for checkpoint in listed.checkpoints}


def _assert_on_the_server(served: Served, paths: Sequence[str]) -> None:
    for path in paths:
        assert path.startswith("tinker://"), path
        directory = parse_tinker_path(path).directory(served.store / "checkpoints")
        assert (directory / "checkpoint.json").is_file(), path


# -- the loops through the server ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_loop_through_the_server_learns_and_equals_the_local_backend(
    served: Served, tmp_path: pathlib.Path, kind: LoopKind
) -> None:
    ours = _reference(served, kind)
    run_dir = served.root / f"{kind}-reference"

    # learns
    before, after = ours.result.before, ours.result.after
    assert before is not None
    assert after is not None
    if kind == "sl":
        assert after < 0.7 * before  # held-out NLL
    elif kind == "rl":
        assert after > before  # held-out reward
    else:
        assert before == pytest.approx(LOG2, abs=1e-9)  # the policy starts as the reference
        assert after < 0.5 * LOG2  # held-out DPO loss

    # metrics and charts
    assert [row["step"] for row in ours.rows] == list(range(STEPS[kind]))
    assert (run_dir / CHARTS[kind]).is_file()
    assert (run_dir / "config.json").is_file()

    # tinker:// checkpoints that exist on the server, listed by its REST API
    state = read_state(run_dir)
    assert state is not None
    assert state.step == STEPS[kind]
    assert state.checkpoint == ours.result.final_checkpoint
    _assert_on_the_server(served, [ours.result.final_checkpoint, ours.result.sampler_checkpoint])
    save_every = 2 if kind == "rl" else 3
    expected = {f"step-{step:06d}" for step in range(save_every, STEPS[kind] + 1, save_every)}
    assert expected | {"final"} <= _checkpoint_names(served, ours.result.final_checkpoint)

    # the same run on the local backend directly
    config = make_config(kind, served.root, f"{kind}-reference")
    local_config = attrs.evolve(config, run_dir=str(tmp_path / "local"))
    with LocalBackend(checkpoint_dir=tmp_path / "local" / "checkpoints", device="cpu") as local:
        theirs = run_loop(kind, local_config, local, out=io.StringIO())
        client = local.create_training_client_from_state(theirs.final_checkpoint, with_optimizer=False).result()
        local_params = client.get_trainable_parameters().result()
    local_rows = _rows(tmp_path / "local")
    if kind == "dpo":
        # the SDK applies a custom loss as two passes (forward, then cross-entropy with -dLoss/dlogprob as weights),
        # the local backend in one: the same gradient up to float32 rounding
        assert [row["step"] for row in ours.rows] == [row["step"] for row in local_rows]
        for row, local_row in zip(ours.rows, local_rows, strict=True):
            assert row.keys() == local_row.keys()
            for key in row:
                assert row[key] == pytest.approx(local_row[key], rel=1e-4, abs=1e-5), (row["step"], key)
        assert_same_params(ours.params, local_params, rtol=1e-4, atol=1e-6)
        assert after == pytest.approx(theirs.after, rel=1e-4)
    else:
        assert_same_rows(ours.rows, local_rows)
        assert_same_params(ours.params, local_params)
        assert (before, after) == pytest.approx((theirs.before, theirs.after), rel=1e-6)


# -- a client killed with SIGKILL --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_client_killed_with_sigkill_resumes_exactly(served: Served, kind: LoopKind) -> None:
    """The loop runs in a client process (``TinkerBackend()`` from TINKER_BASE_URL / TINKER_API_KEY), is stopped
    after a step past its first checkpoint and killed with SIGKILL there (no cleanup, its session never closed, its
    next step already sent); started again on the same run directory it resumes from the last ``tinker://``
    checkpoint: the metric rows continue the step count with nothing lost or repeated, and the final weights equal
    the uninterrupted run's."""
    reference = _reference(served, kind)
    pause, checkpoint_step = PAUSE_AT[kind]
    root, name = served.root, f"{kind}-sigkill"
    run_dir = root / name
    arguments = [kind, str(root), name]
    url = served.server.base_url
    client = start_client([*arguments, "--pause-after", str(pause)], root / f"{name}.log", url, DEFAULT_KEY)
    try:
        wait_for(
            f"the {kind} client to pause after step {pause}",
            lambda: (root / f"{name}.paused").exists() or None,
            timeout=180,
            alive=lambda: client.poll() is None,
        )
        assert kill_hard(client) == -9
    finally:
        kill_hard(client)
    state = read_state(run_dir)
    assert state is not None
    assert (state.step, state.checkpoint.startswith("tinker://")) == (checkpoint_step, True)
    assert [row["step"] for row in _rows(run_dir)] == list(range(pause + 1))  # rows past the checkpoint too

    again = start_client(arguments, root / f"{name}-resumed.log", url, DEFAULT_KEY)
    try:
        status = again.wait(timeout=300)
    finally:
        kill_hard(again)
    log = (root / f"{name}-resumed.log").read_text(errors="replace")
    assert status == 0, log[-3000:]
    assert f"resuming at step {checkpoint_step} from {state.checkpoint}" in log
    result = LoopResult(**json.loads(log.rsplit("RESULT ", 1)[1]))
    assert result.final_checkpoint.startswith("tinker://")
    rows = _rows(run_dir)
    assert [row["step"] for row in rows] == list(range(STEPS[kind]))  # each step once, continuing the count
    assert_same_rows(rows, reference.rows)
    assert_same_params(checkpoint_params(served.store, result.final_checkpoint), reference.params, rtol=1e-5)
    assert result.after == pytest.approx(reference.result.after, rel=1e-6)


# -- the command line -----------------------------------------------------------------------------------------------


def test_sl_command_with_backend_tinker_trains_through_the_server(served: Served, tmp_path: pathlib.Path) -> None:
    """``tinkerflow sl`` (a real process, nothing patched) with ``backend="tinker"``: it reaches the server through
    TINKER_BASE_URL / TINKER_API_KEY, takes the tiny model's tokenizer from the Hugging Face cache the server
    installs (``--install-tokenizers``; ``HF_HOME`` pointed at it) and trains exactly as the recipe does."""
    reference = _reference(served, "sl")
    hf_home = tmp_path / "hf-home"
    assert install_tokenizers(served.server.engine.served_tokenizers(), hf_home)["tiny-llama"] == "installed"
    config = make_config("sl", served.root, "sl-reference")
    assert isinstance(config, SLConfig)
    command_config = attrs.evolve(config, run_dir=str(tmp_path / "cli"), backend="tinker", renderer="role_colon")
    (tmp_path / "config.json").write_text(to_json(command_config))
    env = child_env(
        TINKER_BASE_URL=served.server.base_url,
        TINKER_API_KEY=DEFAULT_KEY,
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        TINKERFLOW_CACHE=str(tmp_path / "tinkerflow-cache"),
    )
    command = [sys.executable, "-m", "tinkerflow.cli", "sl", str(tmp_path / "config.json")]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held-out NLL: before" in done.stdout
    assert_same_rows(_rows(tmp_path / "cli"), reference.rows)
    state = read_state(tmp_path / "cli")
    assert state is not None
    assert state.checkpoint.startswith("tinker://")
    assert_same_params(checkpoint_params(served.store, state.checkpoint), reference.params)
