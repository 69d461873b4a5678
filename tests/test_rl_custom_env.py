"""Environments named by import path (``RLConfig.env = "package.module:factory"``): a user's module runs from
``tinkerflow rl`` with no change to tinkerflow, and every way the name or the factory can be wrong is a typed error
naming ``RLConfig.env`` or ``RLConfig.env_args``."""

from __future__ import annotations

import json
import pathlib
import textwrap

import pytest
from tests.byte_renderer import ByteRenderer

from tinkerflow.cli import main
from tinkerflow.errors import ConfigError
from tinkerflow.rl.config import RLConfig
from tinkerflow.shell.recipes.rl import environment_datasets

MODULE = """
from tinkerflow.rl.envs import arithmetic

CALLS = []

def dataset(renderer, *, split, **kwargs):
    CALLS.append((split, kwargs["batch_size"], kwargs["n_batches"], kwargs["seed"]))
    return arithmetic.dataset(renderer, **kwargs)

def train_only(renderer, *, split, **kwargs):
    return arithmetic.dataset(renderer, **kwargs) if split == "train" else None

def not_a_dataset(renderer, **kwargs):
    return [1, 2, 3]

NOT_CALLABLE = 3

class Factories:
    @staticmethod
    def nested(renderer, *, split, **kwargs):
        return arithmetic.dataset(renderer, **kwargs)
"""


@pytest.fixture
def module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_envs_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_factory_by_import_path_gets_the_run_settings(module: str) -> None:
    config = RLConfig(
        env=f"{module}:dataset", env_args={"max_operand": 5}, steps=3, groups_per_batch=2, eval_groups=4, seed=11
    )
    train, test = environment_datasets(config, ByteRenderer())
    assert len(train) == 3
    assert len(train.get_batch(0)) == 2
    assert test is not None
    assert len(test.get_batch(0)) == 4
    calls = __import__(module).CALLS
    assert calls == [("train", 2, 3, 11), ("test", 4, 1, 11 + 7919)]
    nested, _ = environment_datasets(RLConfig(env=f"{module}:Factories.nested", steps=2), ByteRenderer())
    assert len(nested) == 2
    _, none = environment_datasets(RLConfig(env=f"{module}:train_only"), ByteRenderer())
    assert none is None


@pytest.mark.parametrize(
    ("env", "env_args", "field", "message"),
    [
        ("no_such_module_xyz:dataset", {}, "env", "cannot import 'no_such_module_xyz'"),
        ("{module}:missing", {}, "env", "has no 'missing'"),
        ("{module}:NOT_CALLABLE", {}, "env", "not a callable"),
        ("{module}:", {}, "env", "is not 'module:factory'"),
        (":dataset", {}, "env", "is not 'module:factory'"),
        ("{module}:not_a_dataset", {}, "env", "not an RL dataset"),
        ("{module}:dataset", {"colour": "red"}, "env_args", "colour"),
    ],
)
def test_a_bad_factory_is_a_typed_error(
    module: str, env: str, env_args: dict[str, str], field: str, message: str
) -> None:
    config = RLConfig(env=env.format(module=module), env_args=env_args)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message) as caught:
        environment_datasets(config, ByteRenderer())
    assert (caught.value.where, caught.value.field) == ("RLConfig", field)


def test_a_module_that_fails_to_import_is_named(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_envs_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"cannot import 'broken_envs_mod' \(RuntimeError: boom\)"):
        environment_datasets(RLConfig(env="broken_envs_mod:dataset"), ByteRenderer())


def test_a_user_environment_trains_from_the_command_line(
    module: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tinkerflow rl`` trains on the user's module (tiny model, two steps) and records it in the run."""
    config = tmp_path / "rl.json"
    config.write_text(
        json.dumps(
            {
                "env": f"{module}:dataset",
                "env_args": {"max_operand": 4},
                "base_model": "tiny-llama",
                "renderer": "role_colon",
                "steps": 2,
                "groups_per_batch": 2,
                "group_size": 2,
                "max_tokens": 4,
                "eval_groups": 1,
                "run_dir": str(tmp_path / "run"),
            }
        )
    )
    assert main(["rl", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"environment {module}:dataset: 2 training batches of 2 groups x 2" in out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["env"] == f"{module}:dataset"
