"""The KL reference opened from ``RLConfig.kl_reference`` (shell): a state path is saved once for sampling and
recorded for resume; a sampler path is used as is; what cannot be opened, or tokenizes differently, is a
``ConfigError`` naming the field (tiny local models)."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib

import pytest

pytest.importorskip("torch")

from tests.tiny_model import TINY_RENDERER

from tinkerflow.errors import ConfigError
from tinkerflow.rl.config import RLConfig
from tinkerflow.shell.backends.local.backend import LocalBackend
from tinkerflow.shell.recipes.onpolicy_reference import open_reference, same_tokenizer
from tinkerflow.shell.recipes.rl import environment_datasets, run_rl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(root: pathlib.Path, **changes: object) -> RLConfig:
    return RLConfig(
        env="arithmetic", env_args={"fewshot": False}, base_model="tiny-llama", renderer="role_colon", steps=2,
        groups_per_batch=1, group_size=2, max_tokens=4, eval_groups=0, lora_rank=4, kl_coef=0.1, save_every=1,
        run_dir=str(root / "run"), **changes,  # type: ignore[arg-type]  # values as a config file gives them
    )  # fmt: skip


def test_a_state_path_reference_is_saved_once_and_recorded(tmp_path: pathlib.Path) -> None:
    backend = LocalBackend(checkpoint_dir=tmp_path / "checkpoints")
    teacher = backend.create_lora_training_client("tiny-llama", rank=4, seed=5).result()
    state = teacher.save_state("teacher").result()
    assert "/weights/" in state
    config = _config(tmp_path, kl_reference="checkpoint", kl_reference_path=state)
    train, _ = environment_datasets(config, TINY_RENDERER)
    out = io.StringIO()
    run_rl(config, backend, train, decode=TINY_RENDERER.tokenizer.decode, out=out)
    assert f"against the checkpoint {state}" in out.getvalue()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [isinstance(row["kl_policy_base"], float) for row in rows] == [True, True]
    recorded = json.loads(json.loads((tmp_path / "run" / "state.json").read_text())["extra_json"])["reference"]
    assert "/sampler_weights/kl_reference" in recorded
    with contextlib.ExitStack() as stack:  # a resumed run samples the recorded copy, saving nothing new
        again = open_reference(config, backend, None, {"reference": recorded}, stack)
    assert again.recorded_path == recorded


def test_references_that_cannot_serve_are_refused(tmp_path: pathlib.Path) -> None:
    backend = LocalBackend(checkpoint_dir=tmp_path / "checkpoints")
    paths = [str(tmp_path / "nowhere"), "local://run-x/weights/none", str(tmp_path)]
    cases = [
        (_config(tmp_path, kl_reference="model", kl_reference_model="tiny-llama:vocab=400"), "kl_reference_model"),
        *(
            (_config(tmp_path, kl_reference="checkpoint", kl_reference_path=path), "kl_reference_path")
            for path in paths
        ),
    ]
    for config, field in cases:
        with contextlib.ExitStack() as stack, pytest.raises(ConfigError) as caught:
            open_reference(config, backend, None, {}, stack)
        assert (caught.value.where, caught.value.field) == ("RLConfig", field), config
    with contextlib.ExitStack() as stack, pytest.raises(ConfigError, match="training client"):
        open_reference(_config(tmp_path), backend, None, {}, stack)


def test_same_tokenizer_compares_vocabulary_and_ids(tmp_path: pathlib.Path) -> None:
    backend = LocalBackend(checkpoint_dir=tmp_path / "checkpoints")
    tiny = backend.get_tokenizer("tiny-llama")
    assert same_tokenizer(tiny, backend.get_tokenizer("tiny-llama:seed=3"))
    assert not same_tokenizer(tiny, backend.get_tokenizer("tiny-llama:vocab=400"))
