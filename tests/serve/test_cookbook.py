"""The unmodified tinker-cookbook 0.6.1 training entry points, run to completion against ``tinkerflow serve``.

Each test runs one script of ``tests/serve/cookbook_runs/`` in a subprocess (huggingface_hub reads ``HF_HOME`` and
``HF_HUB_OFFLINE`` once, at import, so the tokenizer cache must be set before the process starts) against one
server on ``tiny-llama`` (random init, byte tokenizer, renderer ``role_colon``):

* ``supervised.train`` on the cookbook's bundled ``example_data/conversations.jsonl``: the per-step train NLL falls;
* ``rl.train`` with the arithmetic environment: every step completes and logs rewards, and the sampler's logprobs
  agree with the trainer's (the cookbook's ``optim/kl_sample_train`` metrics). A random-init model never emits the
  ``role_colon`` stop string, so every reward is the format penalty and the update is zero: this checks the
  plumbing, not learning. A second run in the same log folder resumes from the server's checkpoint;
* ``preference.train_dpo`` on ``cookbook_runs/preferences.jsonl`` (our own 8 pairs): the first DPO loss is ln 2
  (policy = reference, so the server's sampler ``compute_logprobs`` and the trainer's forward agree), then the loss
  falls and the accuracy reaches 1.

Every checkpoint the cookbook records in ``checkpoints.jsonl`` must be listed by the server's REST API.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pathlib
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tinkerflow.shell.serve.server import ServerThread

pytest.importorskip("tinker_cookbook")

RUNS = pathlib.Path(__file__).with_name("cookbook_runs")
MODEL = "tiny-llama"
RENDERER = "role_colon"
#: A cookbook run that takes longer than this is stuck (each takes a few seconds here).
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def hf_home(server: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A Hugging Face cache holding the served models' tokenizers under their served names."""
    from tinkerflow.shell.serve.hub_cache import install_tokenizers

    home = tmp_path_factory.mktemp("hf-home")
    outcome = install_tokenizers(server.engine.served_tokenizers(), home)
    assert outcome[MODEL] == "installed", outcome
    return home


def run_script(
    script: str, args: Sequence[str], *, server: ServerThread, hf_home: pathlib.Path, log_path: pathlib.Path
) -> None:
    """Run ``cookbook_runs/<script>`` against ``server``; fail with its output unless it exits 0."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "TINKER_CREDENTIAL_CMD"}
    }
    env.update(
        TINKER_BASE_URL=server.base_url,
        TINKER_API_KEY=server.config.api_key,
        TINKER_TELEMETRY="0",
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
    )
    command = [sys.executable, str(RUNS / script), "--log-path", str(log_path), "--model", MODEL]
    command += ["--renderer", RENDERER, *args]
    done = subprocess.run(  # our own script, fixed arguments
        command,
        env=env,
        cwd=log_path.parent,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    assert "completed successfully" in (log_path / "logs.log").read_text(encoding="utf-8")


def metrics_rows(log_path: pathlib.Path) -> list[dict[str, Any]]:
    lines = (log_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def checkpoint_rows(log_path: pathlib.Path) -> list[dict[str, Any]]:
    lines = (log_path / "checkpoints.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def assert_checkpoints_on_server(
    server: ServerThread, rows: Sequence[Mapping[str, Any]], names: Sequence[str], lora_rank: int
) -> None:
    """The cookbook recorded a checkpoint per name in ``names`` (state and sampler weights), all of one training run
    on ``MODEL``; the server lists every one of those paths for that run, with a TTL on the periodic ones only."""
    assert [row["name"] for row in rows] == list(names)
    paths = {row[key] for row in rows for key in ("state_path", "sampler_path")}
    run_ids = {path.removeprefix("tinker://").split("/")[0] for path in paths}
    assert len(run_ids) == 1, paths
    (run_id,) = run_ids
    import tinker

    rest = tinker.RestClient(base_url=server.base_url, api_key=server.config.api_key)
    run = rest.get_training_run(run_id).result(timeout=30)
    assert (run.base_model, run.is_lora, run.lora_rank) == (MODEL, True, lora_rank)
    listed = {c.tinker_path: c for c in rest.list_checkpoints(run_id).result(timeout=30).checkpoints}
    missing = paths - listed.keys()
    assert not missing, f"the server does not list {sorted(missing)}; it lists {sorted(listed)}"
    for row in rows:
        for key, kind in (("state_path", "training"), ("sampler_path", "sampler")):
            checkpoint = listed[row[key]]
            assert checkpoint.checkpoint_type == kind
            # the cookbook saves periodic checkpoints with a 7-day TTL and the final one with none
            assert (checkpoint.expires_at is None) == (row["name"] == "final"), (row, checkpoint)


def test_supervised_train(server: ServerThread, hf_home: pathlib.Path, tmp_path: pathlib.Path) -> None:
    steps, rank = 8, 8
    log_path = tmp_path / "sl"
    args = ["--max-steps", str(steps), "--save-every", "4", "--lora-rank", str(rank)]
    args += ["--learning-rate", "5e-3", "--batch-size", "4", "--max-length", "128", "--shuffle-seed", "0"]
    run_script("run_sl.py", args, server=server, hf_home=hf_home, log_path=log_path)

    rows = metrics_rows(log_path)
    assert [row["step"] for row in rows] == list(range(steps))
    nll = [row["train_mean_nll"] for row in rows]
    assert all(math.isfinite(value) for value in nll), nll
    # random init over a 320-token vocabulary starts near ln 320 = 5.77 nats; English bytes are far more predictable
    assert nll[0] > 5.0, nll
    assert nll[-1] < nll[0] - 1.5, nll
    assert_checkpoints_on_server(server, checkpoint_rows(log_path), ["000004", "final"], rank)


def test_rl_train_arithmetic_then_resume(server: ServerThread, hf_home: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """3 steps, then the same log folder with 5 steps: the cookbook resumes from the server's "final" checkpoint
    (``create_training_client_from_state_with_optimizer``, after checking the run's renderer metadata)."""
    first, total, max_tokens, groups, group_size, rank = 3, 5, 8, 2, 2, 8
    log_path = tmp_path / "rl"
    args = ["--groups", str(groups), "--group-size", str(group_size), "--max-tokens", str(max_tokens)]
    args += ["--save-every", "2", "--lora-rank", str(rank), "--learning-rate", "1e-3"]
    run_script("run_rl.py", [*args, "--steps", str(first)], server=server, hf_home=hf_home, log_path=log_path)

    *rows, summary = metrics_rows(log_path)
    assert [row["step"] for row in rows] == list(range(first))
    # after the last step the cookbook logs a summary row of cumulative token counts
    assert summary["step"] == first
    assert summary["tokens/cumulative/sampled"] == sum(row["tokens/sampled"] for row in rows)
    for row in rows:
        assert row["env/all/total_episodes"] == groups * group_size
        # reward = correct + 0.1 * (format_ok - 1), each of its two parts a fraction of the episodes
        assert 0.0 <= row["env/all/correct"] <= 1.0
        assert 0.0 <= row["env/all/format"] <= 1.0
        assert row["env/all/reward/total"] == pytest.approx(
            row["env/all/correct"] + 0.1 * (row["env/all/format"] - 1.0), abs=1e-6
        )
        assert 1 <= row["env/all/ac_tokens_per_turn"] <= max_tokens
        # the sampler's logprobs of the sampled tokens match the trainer's forward pass on the same weights
        assert abs(row["optim/kl_sample_train_v1"]) < 1e-3, row
        assert row["optim/kl_sample_train_v2"] < 1e-6, row
    assert sorted(p.name for p in log_path.glob("iteration_*")) == [f"iteration_{i:06d}" for i in range(first)]
    first_checkpoints = checkpoint_rows(log_path)
    assert_checkpoints_on_server(server, first_checkpoints, ["000002", "final"], rank)

    run_script("run_rl.py", [*args, "--steps", str(total)], server=server, hf_home=hf_home, log_path=log_path)
    log = (log_path / "logs.log").read_text(encoding="utf-8")
    assert f"Resumed training from {first_checkpoints[-1]['state_path']}" in log
    assert "Renderer metadata matches" in log
    *rows, summary = metrics_rows(log_path)
    assert [row["step"] for row in rows] == list(range(total))
    assert summary["step"] == total
    assert all(abs(row["optim/kl_sample_train_v1"]) < 1e-3 for row in rows[first:])
    resumed = checkpoint_rows(log_path)[len(first_checkpoints) :]
    assert_checkpoints_on_server(server, resumed, ["000004", "final"], rank)


def test_dpo_train(server: ServerThread, hf_home: pathlib.Path, tmp_path: pathlib.Path) -> None:
    epochs, rank = 6, 8
    log_path = tmp_path / "dpo"
    # all 8 pairs in one batch, 6 epochs: the same batch each step, so the loss on it must fall
    args = ["--batch-size", "8", "--epochs", str(epochs), "--save-every", "3", "--lora-rank", str(rank)]
    args += ["--learning-rate", "1e-3", "--beta", "0.1", "--max-length", "128"]
    run_script("run_dpo.py", args, server=server, hf_home=hf_home, log_path=log_path)

    rows = metrics_rows(log_path)
    assert [row["step"] for row in rows] == list(range(epochs))
    assert all(row["num_pairs"] == 8 for row in rows)
    loss = [row["dpo_loss"] for row in rows]
    # step 0: the policy is the reference, so every log-ratio is 0 and the loss is -log sigmoid(0) = ln 2
    assert loss[0] == pytest.approx(math.log(2), abs=1e-4), loss
    assert abs(rows[0]["margin"]) < 1e-4
    assert all(later < earlier for earlier, later in itertools.pairwise(loss)), loss
    assert loss[-1] < math.log(2) - 0.05, loss
    assert all(row["accuracy"] == 1.0 for row in rows[1:]), [row["accuracy"] for row in rows]
    assert_checkpoints_on_server(server, checkpoint_rows(log_path), ["000003", "final"], rank)
