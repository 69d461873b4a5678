"""``tinkerflow sl|dpo|rl``: config resolution, a self-documenting command line (--help lists every config field,
--template writes a complete config that loads back), overrides and flags in any order, typed errors."""

from __future__ import annotations

import io
import json
import os
import pathlib
import sys

import attrs
import pytest
from tests.helpers import assert_cli_refuses, cli_dry_run

from tinkerflow.cli import main
from tinkerflow.config import SLConfig
from tinkerflow.preference.config import DPOConfig
from tinkerflow.rl.config import RLConfig
from tinkerflow.serde import to_json

ROOT = pathlib.Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "sl_people_json.json"
COMMANDS: dict[str, type] = {"sl": SLConfig, "dpo": DPOConfig, "rl": RLConfig}


@pytest.mark.parametrize(
    "arguments",
    [
        [str(EXAMPLE), "max_steps=5", "--dry-run"],
        [str(EXAMPLE), "--dry-run", "max_steps=5"],
        ["--dry-run", str(EXAMPLE), "max_steps=5"],
    ],
)
def test_sl_dry_run_resolves_config_and_renders_data(
    arguments: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    out, resolved = cli_dry_run(capsys, ["sl", *arguments])
    assert resolved["max_steps"] == 5
    assert "400 training and 80 held-out conversations" in out
    assert "renderer smollm2" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["max_steps=0"], "max_steps"),
        (["colour=red"], "colour"),
        (["max_steps"], "key=value"),
        (["bach_size=3"], "did you mean batch_size"),
        (["lr_schedule.knd=cosine"], "did you mean lr_schedule.kind"),
    ],
)
@pytest.mark.parametrize("flag_first", [False, True])
def test_sl_bad_config_exits_2_with_the_field(
    arguments: list[str], message: str, flag_first: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    ordered = ["--dry-run", *arguments] if flag_first else [*arguments, "--dry-run"]
    assert_cli_refuses(capsys, ["sl", str(EXAMPLE), *ordered], message)


def test_missing_config_file(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_cli_refuses(capsys, ["sl", str(tmp_path / "nope.json")], "not found")


def test_a_config_file_is_required_to_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sl", "--dry-run"])
    assert exit_info.value.code == 2
    assert "--template" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_every_config_field(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    cls = COMMANDS[name]
    for field in attrs.fields(cls):
        assert f"\n  {field.name} (" in text, field.name
    assert "--template" in text
    assert "--dry-run" in text
    if name != "rl":
        assert "\n  lr_schedule.kind (constant|linear|cosine; default " in text
    assert "learning_rate (" in text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_template_loads_back(name: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--template`` prints every field with its default; required fields hold a placeholder that a run refuses
    (naming the field) until it is filled in, in the file or as an override."""
    cls = COMMANDS[name]
    assert main([name, "--template"]) == 0
    template = json.loads(capsys.readouterr().out)
    assert list(template) == [field.name for field in attrs.fields(cls)]
    required = [field.name for field in attrs.fields(cls) if field.default is attrs.NOTHING]
    assert [key for key, value in template.items() if value == "<required: fill in>"] == required
    file = tmp_path / "config.json"
    file.write_text(json.dumps(template))
    if required:
        assert main([name, str(file), f"run_dir={tmp_path / 'run'}", "--dry-run"]) == 2
        assert f"{cls.__name__}.{required[0]}: still holds the placeholder" in capsys.readouterr().err
    filled = [f"{field}=data.jsonl" for field in required]
    assert main([name, str(file), "--template", *filled]) == 0  # a file plus overrides: the complete config
    assert json.loads(capsys.readouterr().out) == json.loads(to_json(cls(**dict.fromkeys(required, "data.jsonl"))))


def test_template_takes_overrides_in_any_order(capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads(to_json(SLConfig(train_data="a.jsonl", max_steps=3)))
    for arguments in (["--template", "train_data=a.jsonl", "max_steps=3"], ["train_data=a.jsonl", "--template"]):
        assert main(["sl", *arguments, *(["max_steps=3"] if "max_steps=3" not in arguments else [])]) == 0
        assert json.loads(capsys.readouterr().out) == expected
    assert main(["sl", "--template", "trian_data=a.jsonl"]) == 2
    assert "did you mean train_data" in capsys.readouterr().err


def test_a_reader_that_goes_away_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tinkerflow sl --template | head -1``: the closed pipe ends the command quietly with status 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    stream = io.TextIOWrapper(os.fdopen(write_end, "wb"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        assert main(["sl", "--template"]) == 0
        stream.write("x" * 100_000)
        stream.flush()  # the command sent stdout to the null device: later writes do not fail again
    finally:
        monkeypatch.undo()
        stream.close()


def test_the_backend_is_closed_with_how_the_command_ended(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command that fails inside the backend's block leaves it through ``__exit__`` with the error, so a Tinker
    session ends as ``errored`` rather than ``success``."""
    import tinkerflow.cli as cli

    exits: list[type[BaseException] | None] = []

    class Backend:
        def __enter__(self) -> Backend:
            return self

        def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
            exits.append(kind)

        def get_tokenizer(self, base_model: str) -> object:
            raise RuntimeError("no tokenizer here")

    monkeypatch.setattr(cli, "_backend", lambda config: Backend())
    config = tmp_path / "sl.json"
    config.write_text(json.dumps({"train_data": str(tmp_path / "train.jsonl"), "run_dir": str(tmp_path / "run")}))
    with pytest.raises(RuntimeError, match="no tokenizer here"):
        main(["sl", str(config), "--dry-run"])
    assert exits == [RuntimeError]


def test_the_local_backend_gets_the_configs_local_options(tmp_path: pathlib.Path) -> None:
    """``local.*`` fields of a run config reach the LocalBackend the command line makes."""
    import importlib.util

    import torch

    import tinkerflow.cli as cli
    from tinkerflow.config import LocalOptions
    from tinkerflow.errors import ConfigError
    from tinkerflow.shell.backends.local.backend import LocalBackend

    options = LocalOptions(
        dtype="bfloat16",
        device="cpu",
        max_tokens_per_batch=1024,
        logprob_chunk_tokens=64,
        checkpoint_layers=False,
        return_freed_memory="between_passes",
    )
    config = SLConfig(train_data="x.jsonl", run_dir=str(tmp_path / "run"), local=options)
    assert options.sampling_engine == "local"
    with cli._backend(config) as backend:
        assert isinstance(backend, LocalBackend)
        assert (backend.dtype, backend.device.type) == (torch.bfloat16, "cpu")
        assert (backend.max_tokens_per_batch, backend.logprob_chunk_tokens) == (1024, 64)
        assert (backend.checkpoint_layers, backend.trim_between_passes) == (False, True)
        assert backend.checkpoint_dir == tmp_path / "run" / "checkpoints"
    with cli._backend(SLConfig(train_data="x.jsonl", run_dir=str(tmp_path / "run"))) as backend:
        assert isinstance(backend, LocalBackend)
        assert (backend.dtype, backend.max_tokens_per_batch, backend.trim_between_passes) == (None, 2048, False)
        assert backend.sampling_engine == "local"
    vllm = SLConfig(
        train_data="x.jsonl",
        local=LocalOptions(sampling_engine="vllm", vllm_options={"gpu_memory_utilization": 0.6}),
    )
    if importlib.util.find_spec("vllm") is None:  # the engine choice reaches the backend, which checks for vLLM
        with pytest.raises(ConfigError, match=r"sampling_engine.*pip install 'tinkerflow\[vllm\]'"):
            cli._backend(vllm)
