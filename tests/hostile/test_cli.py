"""Hostile command lines: ``tinkerflow sl|rl|dpo CONFIG key=value ...`` overrides and flags, and the options of
``eval``, ``export``, ``serve`` and ``publish``. Each is run in this process and must exit with status 2 and a
one-line typed error on stderr naming the field (``error: Config.field: ...``; argparse's own usage errors for
malformed options), never a traceback, never training anything."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest
from tests.hostile.support import assert_cli_error, run_cli

pytestmark = pytest.mark.hostile("cli")

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
PAIR = {"prompt": "q", "chosen": "a", "rejected": "b"}
TINY = {"base_model": "tiny-llama", "renderer": "role_colon"}


@pytest.fixture
def configs(tmp_path: pathlib.Path) -> dict[str, str]:
    """Good sl, rl and dpo config files on the tiny model (``--dry-run`` of each succeeds)."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(CHAT) + "\n")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps(PAIR) + "\n")
    files = {
        "sl": {"train_data": str(data), "run_dir": str(tmp_path / "sl-run"), **TINY},
        "rl": {"env": "arithmetic", "run_dir": str(tmp_path / "rl-run"), **TINY},
        "dpo": {"train_data": str(pairs), "run_dir": str(tmp_path / "dpo-run"), **TINY},
        "tmp": {"path": str(tmp_path)},
    }
    paths = {}
    for name, fields in files.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(fields))
        paths[name] = str(path)
    paths["tmp"] = str(tmp_path)
    return paths


# (id, command, overrides, the message on stderr)
OVERRIDES: list[tuple[str, str, list[str], str]] = [
    ("unknown key", "sl", ["batchsize=3"], "SLConfig.batchsize: is not a field of this config. Fix: did you mean"),
    ("no equals sign", "sl", ["batch_size"], "overrides.batch_size: is not of the form key=value"),
    ("no key", "sl", ["=3"], "overrides.=3: is not of the form key=value"),
    ("empty value", "sl", ["batch_size="], "SLConfig.batch_size: must be an int, got \"\""),
    ("unknown nested key", "sl", ["lr_schedule.foo=1"], "SLConfig.lr_schedule.foo: is not a field"),
    ("dotted into an int", "sl", ["batch_size.x=1"], "SLConfig.batch_size: must be an int"),
    ("batch_size -1", "sl", ["batch_size=-1"], "SLConfig.batch_size: must be a positive int, got -1."),
    ("batch_size 0", "sl", ["batch_size=0"], "SLConfig.batch_size: must be a positive int, got 0."),
    ("learning_rate -1", "sl", ["learning_rate=-1"], "SLConfig.learning_rate: must lie in (0.0, inf]"),
    ("learning_rate nan", "sl", ["learning_rate=nan"], "SLConfig.learning_rate: must be a number, got \"nan\""),
    ("learning_rate inf", "sl", ["learning_rate=inf"], "SLConfig.learning_rate: must be a number, got \"inf\""),
    ("learning_rate 1e999", "sl", ["learning_rate=1e999"], "SLConfig.learning_rate: must be finite, got inf."),
    ("test_fraction 1.5", "sl", ["test_fraction=1.5"], "SLConfig.test_fraction: must lie in [0.0, 1.0)"),
    ("test_fraction 1", "sl", ["test_fraction=1.0"], "SLConfig.test_fraction: must lie in [0.0, 1.0)"),
    ("max_length 0", "sl", ["max_length=0"], "SLConfig.max_length: must be an int >= 2"),
    ("epochs 0", "sl", ["epochs=0"], "SLConfig.epochs: must be a positive int"),
    ("lora_rank 0", "sl", ["lora_rank=0"], "SLConfig.lora_rank: must be a positive int"),
    ("backend cloud", "sl", ["backend=cloud"], "SLConfig.backend: must be one of \"local\", \"tinker\""),
    ("log_to mlflow", "sl", ['log_to=["mlflow"]'], "SLConfig.log_to[0]: must be one of \"wandb\""),
    ("keep_last 0", "sl", ["keep_last=0"], "SLConfig.keep_last: must be a positive int or None"),
    ("keep_every alone", "sl", ["keep_every=3"], "SLConfig.keep_every: has no effect without keep_last"),
    ("seed -1", "sl", ["seed=-1"], "SLConfig.seed: must be an int >= 0"),
    ("renderer unknown", "sl", ["renderer=nope"], "get_renderer.name: unknown renderer 'nope'"),
    ("rl env unknown", "rl", ["env=nope"], "RLConfig.env: unknown environment 'nope'"),
    ("rl env_args unknown", "rl", ["env_args.bogus=1"], "RLConfig.env_args: dataset() got an unexpected keyword"),
    ("rl group_size 1", "rl", ["group_size=1"], "RLConfig.group_size: is 1: advantages are centered"),
    ("rl mode", "rl", ["mode=fast"], "RLConfig.mode: must be one of \"sync\", \"async\""),
    ("rl loss", "rl", ["loss=bogus"], "RLConfig.loss: must be one of"),
    ("rl steps 0", "rl", ["steps=0"], "RLConfig.steps: must be a positive int"),
    ("rl temperature -1", "rl", ["temperature=-1"], "RLConfig.temperature: must lie in [0.0, inf]"),
    ("rl kl_coef -1", "rl", ["kl_coef=-1"], "RLConfig.kl_coef: must lie in [0.0, inf]"),
    ("rl clip_low -1", "rl", ["clip_low=-1"], "RLConfig.clip_low: must lie in [0.0, 1.0]"),
    ("rl on_failure", "rl", ["on_failure=ignore"], "RLConfig.on_failure: must be one of"),
    ("rl staleness in sync", "rl", ["mode=sync", "max_staleness=3"], "RLConfig.max_staleness: is 3, but"),
    ("dpo beta 0", "dpo", ["beta=0"], "DPOConfig.beta: must lie in (0.0, inf]"),
    ("dpo beta -1", "dpo", ["beta=-1"], "DPOConfig.beta: must lie in (0.0, inf]"),
    ("dpo ties keep", "dpo", ["ties=keep"], "DPOConfig.ties: must be one of \"raise\", \"drop\""),
    ("dpo wrong layout", "dpo", ["layout=cookbook"], "p.jsonl:1.prompt: is not a known key of a cookbook row"),
    ("dpo chat data", "dpo", ["train_data=<sl-data>"], "d.jsonl:1.row: fits no preference layout"),
    ("sl preference data", "sl", ["train_data=<dpo-data>"], "p.jsonl:1.prompt: is not a known key of a chat row"),
    ("sl test_data is train_data", "sl", ["test_data=<sl-data>"], "SLConfig.test_data: is the training data itself"),
    ("local dtype fp8", "sl", ["local.dtype=fp8"], "SLConfig.local.dtype: must be one of \"auto\", \"float32\""),
    # found bugs (fixed): an unknown device was a raw RuntimeError traceback from torch, and a CUDA device the machine
    # lacks passed the dry run, to fail at the first tensor
    ("local device tpu9", "sl", ["local.device=tpu9"], "LocalBackend.device: 'tpu9' is not a device"),
    ("local device cuda:99", "rl", ["local.device=cuda:99"], "LocalBackend.device: 'cuda:99': this machine has"),
    ("local device empty", "sl", ["local.device="], "SLConfig.local.device: is empty. Fix: give a name, or null"),
    ("local max_tokens_per_batch 0", "sl", ["local.max_tokens_per_batch=0"],
     "SLConfig.local.max_tokens_per_batch: must be a positive int"),
    ("local logprob_chunk_tokens -1", "dpo", ["local.logprob_chunk_tokens=-1"],
     "DPOConfig.local.logprob_chunk_tokens: must be a positive int"),
    ("local checkpoint_layers 2", "rl", ["local.checkpoint_layers=2"], "RLConfig.local.checkpoint_layers: must be"),
    ("local return_freed_memory yes", "rl", ["local.return_freed_memory=yes"],
     "RLConfig.local.return_freed_memory: must be one of true, false, \"between_passes\""),
    ("local options on tinker", "dpo", ["backend=tinker", "local.dtype=bfloat16"],
     "DPOConfig.local: sets local backend options, but backend is 'tinker'"),
    ("local sampling_engine sglang", "sl", ["local.sampling_engine=sglang"],
     "SLConfig.local.sampling_engine: must be one of \"local\", \"vllm\""),
    ("local vllm_options without vllm", "rl", ['local.vllm_options={"enforce_eager": true}'],
     "RLConfig.local.vllm_options: only apply with sampling_engine=vllm"),
    ("local vllm_options a list", "rl", ["local.sampling_engine=vllm", "local.vllm_options=[1]"],
     "RLConfig.local.vllm_options: must be"),
]  # fmt: skip
if importlib.util.find_spec("vllm") is None:  # the engine is checked when the backend is made, before any work
    OVERRIDES.append(
        ("local vllm not installed", "sl", ["local.sampling_engine=vllm"],
         "LocalBackend.sampling_engine: \"vllm\" needs the vllm package")
    )  # fmt: skip


def _resolve(override: str, tmp: str) -> str:
    return override.replace("<sl-data>", f"{tmp}/d.jsonl").replace("<dpo-data>", f"{tmp}/p.jsonl")


@pytest.mark.parametrize(
    ("command", "overrides", "message"), [case[1:] for case in OVERRIDES], ids=[case[0] for case in OVERRIDES]
)
def test_a_bad_override(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str], command: str, overrides: list[str], message: str
) -> None:
    arguments = [command, configs[command], *(_resolve(o, configs["tmp"]) for o in overrides), "--dry-run"]
    err = assert_cli_error(capsys, arguments, message)
    assert err.startswith("error: "), err
    assert not list(pathlib.Path(configs["tmp"]).glob("*-run"))  # nothing was started


def test_the_good_configs_pass_their_dry_run(capsys: pytest.CaptureFixture[str], configs: dict[str, str]) -> None:
    """The control: the same files without the bad override are accepted."""
    for command in ("sl", "rl", "dpo"):
        status, _, err = run_cli(capsys, [command, configs[command], "--dry-run"])
        assert status == 0, err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["sl", "<sl>", "--bogus"], "unrecognized arguments: --bogus"),
        (["sl"], "give a JSON SLConfig file"),
        (["rl", "--dry-run"], "give a JSON RLConfig file"),
        (["nope"], "invalid choice: 'nope'"),
        ([], "the following arguments are required: command"),
    ],
    ids=["unknown flag", "no config", "rl no config", "unknown command", "no command"],
)
def test_a_malformed_command_line_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str], arguments: list[str], message: str
) -> None:
    assert_cli_error(capsys, [configs["sl"] if a == "<sl>" else a for a in arguments], message)


def test_a_template_with_an_unknown_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert_cli_error(capsys, ["sl", "--template", "batchsize=3"], "SLConfig.batchsize: is not a field")


# -- eval, export, serve, publish ----------------------------------------------------------------------------------

EVAL = ["eval", "tiny-llama", "--renderer", "role_colon"]
OWN_OPTIONS: list[tuple[str, list[str], str]] = [
    ("eval nothing chosen", ["eval", "tiny-llama"], "give exactly one of --evals, --kind, --task, --benchmark"),
    ("eval two chosen", [*EVAL, "--kind", "exact_match", "--task", "x"], "give exactly one of"),
    ("eval no data", [*EVAL, "--kind", "exact_match"], "EvalSpec['exact_match'].data: is null"),
    ("eval missing data", [*EVAL, "--kind", "exact_match", "--data", "<tmp>/nope.jsonl"], ".data: '"),
    ("eval regex without pattern", [*EVAL, "--kind", "regex", "--data", "<data>"], ".pattern: is required"),
    ("eval broken regex", [*EVAL, "--kind", "regex", "--data", "<data>", "--pattern", "(["], "does not compile"),
    ("eval limit 0", [*EVAL, "--kind", "exact_match", "--data", "<data>", "--limit", "0"], ".limit: must be"),
    ("eval limit text", [*EVAL, "--kind", "exact_match", "--data", "<data>", "--limit", "x"], "invalid int value"),
    ("eval temperature nan", [*EVAL, "--kind", "exact_match", "--data", "<data>", "--temperature", "nan"],
     "temperature: must be finite"),
    ("eval kind unknown", [*EVAL, "--kind", "bleu", "--data", "<data>"], "argument --kind: invalid choice"),
    ("eval missing checkpoint", ["eval", "local://nope/weights/x", "--kind", "exact_match", "--data", "<data>",
                                 "--checkpoint-dir", "<tmp>"], "local://nope/weights/x: no checkpoint at"),
    ("export missing source", ["export", "<tmp>/nope", "--out", "<tmp>/o", "--format", "hf"], "export.source: '"),
    ("export not a checkpoint", ["export", "<tmp>", "--out", "<tmp>/o", "--format", "hf"],
     "holds neither a checkpoint (checkpoint.json) nor a run"),
    ("export format onnx", ["export", "<tmp>", "--out", "<tmp>/o", "--format", "onnx"], "argument --format: invalid"),
    ("export no out", ["export", "<tmp>", "--format", "hf"], "the following arguments are required: --out"),
    ("export missing local path", ["export", "local://nope/weights/x", "--out", "<tmp>/o", "--format", "peft",
                                   "--checkpoint-dir", "<tmp>"], "export.source: local://nope/weights/x: no"),
    ("export gguf dtype", ["export", "<tmp>", "--out", "<tmp>/o", "--format", "gguf", "--dtype", "bfloat16"],
     "export.dtype: format 'gguf' takes quant, not dtype"),
    ("export step text", ["export", "<tmp>", "--out", "<tmp>/o", "--format", "hf", "--step", "x"], "invalid int value"),
    ("serve key without tml-", ["serve", "--api-key", "abc", "--store", "<tmp>/s"], "ServerConfig.api_key: the tinker"),
    ("serve port 70000", ["serve", "--port", "70000", "--store", "<tmp>/s"], "ServerConfig.port: must be 0..65535"),
    ("serve port -1", ["serve", "--port", "-1", "--store", "<tmp>/s"], "ServerConfig.port: must be 0..65535"),
    ("serve port text", ["serve", "--port", "x"], "argument --port: invalid int value"),
    ("serve max_pending 0", ["serve", "--max-pending", "0", "--store", "<tmp>/s"], "ServerConfig.max_pending: must be"),
    ("serve max_samplers 0", ["serve", "--max-samplers", "0", "--store", "<tmp>/s"], "ServerConfig.max_samplers: must"),
    ("serve max body 0", ["serve", "--max-body-mb", "0", "--store", "<tmp>/s"], "ServerConfig.max_body_mb: must be"),
    ("serve public with default key", ["serve", "--host", "0.0.0.0", "--store", "<tmp>/s"],
     "ServerConfig.api_key: binding 0.0.0.0 with the well-known default key"),
    ("publish not an export", ["publish", "<tmp>", "--repo", "a/b"], "publish.folder: "),
    ("publish missing folder", ["publish", "<tmp>/nope", "--repo", "a/b"], "does not exist or is not a folder"),
    ("publish no repo", ["publish", "<tmp>"], "the following arguments are required: --repo"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "message"), [case[1:] for case in OWN_OPTIONS], ids=[case[0] for case in OWN_OPTIONS]
)
def test_a_bad_option_of_eval_export_serve_publish(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str], arguments: list[str], message: str
) -> None:
    tmp = configs["tmp"]
    resolved = [a.replace("<data>", f"{tmp}/d.jsonl").replace("<tmp>", tmp) for a in arguments]
    if resolved[0] == "serve":  # a server that wrongly starts still stops by itself
        resolved += ["--exit-after", "0.2", "--only-listed-models"]
    assert_cli_error(capsys, resolved, message)


def test_serve_with_a_store_under_a_file(capsys: pytest.CaptureFixture[str], configs: dict[str, str]) -> None:
    """Once a raw ``NotADirectoryError`` from ``build_engine``'s ``store.mkdir`` (fixed in issue 15)."""
    arguments = ["serve", "--store", f"{configs['sl']}/store", "--port", "0", "--exit-after", "0.2"]
    assert_cli_error(capsys, [*arguments, "--only-listed-models"], "ServerConfig.store: ")
