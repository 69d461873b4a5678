from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkerflow.config import LocalOptions, SLConfig, apply_overrides, config_to_dict
from tinkerflow.errors import ConfigError, TinkerflowError
from tinkerflow.preference.config import DPOConfig
from tinkerflow.rl.config import RLConfig
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.io.run_dir import RunState
from tinkerflow.supervised import LRSchedule

schedules = st.builds(
    LRSchedule,
    kind=st.sampled_from(["constant", "linear", "cosine"]),
    warmup_steps=st.integers(0, 100),
    final_ratio=st.floats(0.0, 1.0),
)
configs = st.builds(
    SLConfig,
    train_data=st.text(min_size=1, max_size=20).filter(lambda text: not text.startswith(("hf:", "hf-disk:"))),
    renderer=st.one_of(st.none(), st.sampled_from(["chatml", "llama3"])),
    test_fraction=st.floats(0.0, 0.99),
    max_steps=st.one_of(st.none(), st.integers(1, 1000)),
    learning_rate=st.one_of(st.none(), st.floats(1e-7, 1.0)),
    lr_schedule=schedules,
    batch_size=st.integers(1, 64),
    seed=st.integers(0, 2**31),
    bad_rows=st.sampled_from(["raise", "skip"]),
    log_to=st.lists(st.sampled_from(["wandb", "tensorboard"]), unique=True, max_size=2).map(tuple),
    local=st.builds(
        LocalOptions,
        dtype=st.sampled_from(["auto", "float32", "bfloat16", "float16"]),
        device=st.sampled_from([None, "cpu", "cuda:1"]),
        max_tokens_per_batch=st.integers(1, 1 << 20),
        logprob_chunk_tokens=st.integers(1, 4096),
        checkpoint_layers=st.booleans(),
        return_freed_memory=st.sampled_from([True, False, "between_passes"]),
    ),
)
hf_configs = st.builds(
    SLConfig,
    train_data=st.sampled_from(["hf:org/chat", "hf-disk:/data/chat"]),
    test_data=st.sampled_from([None, "hf:org/test", "held_out.jsonl"]),
    hf_split=st.one_of(st.none(), st.sampled_from(["train", "train_sft"])),
    hf_messages_field=st.sampled_from(["messages", "conversations"]),
)


@given(st.one_of(configs, hf_configs))
def test_sl_config_round_trips(config: SLConfig) -> None:
    assert from_json(to_json(config), SLConfig) == config
    assert apply_overrides(config_to_dict(config), [], SLConfig) == config


@given(schedules, st.integers(0, 10**6), st.text(max_size=30))
def test_schedule_and_state_round_trip(schedule: LRSchedule, step: int, path: str) -> None:
    assert from_json(to_json(schedule), LRSchedule) == schedule
    state = RunState(step=step, checkpoint=path, data_state_json='{"epoch": 1}')
    assert from_json(to_json(state), RunState) == state


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"train_data": ""}, "train_data"),
        ({"backend": "cloud"}, "backend"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"train_on": "everything"}, "train_on"),
        ({"reduction": "avg"}, "reduction"),
        ({"max_length": 1}, "max_length"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"lora_rank": -1}, "lora_rank"),
        ({"eval_every": -1}, "eval_every"),
        ({"bad_rows": "ignore"}, "bad_rows"),
        ({"train_data": "hf:"}, "train_data"),
        ({"train_data": "hf-disk: "}, "train_data"),
        ({"test_data": ""}, "test_data"),
        ({"test_data": "hf:"}, "test_data"),
        ({"hf_split": "train"}, "hf_split"),
        ({"train_data": "hf:org/x", "hf_split": ""}, "hf_split"),
        ({"hf_test_split": "test"}, "hf_test_split"),
        ({"train_data": "hf:org/x", "test_data": "t.jsonl", "hf_test_split": "test"}, "hf_test_split"),
        ({"hf_subset": "en"}, "hf_subset"),
        ({"train_data": "hf-disk:/d", "hf_subset": "en"}, "hf_subset"),
        ({"hf_messages_field": "conversations"}, "hf_messages_field"),
        ({"log_to": ("mlflow",)}, "log_to[0]"),
        ({"log_to": ("wandb", "tensorboard", "wandb")}, "log_to[2]"),
        ({"log_to": 3}, "log_to"),
    ],
)
def test_sl_config_validation(kwargs: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"train_data": "x.jsonl", **kwargs}
    with pytest.raises(ConfigError) as info:
        SLConfig(**arguments)  # type: ignore[arg-type]
    assert info.value.field == field


def test_overrides() -> None:
    base = config_to_dict(SLConfig(train_data="a.jsonl"))
    config = apply_overrides(
        base,
        ["max_steps=20", "run_dir=runs/x", "lr_schedule.warmup_steps=3", "renderer=null", "learning_rate=1e-3"],
        SLConfig,
    )
    assert config.max_steps == 20
    assert config.run_dir == "runs/x"
    assert config.lr_schedule.warmup_steps == 3
    assert config.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(base, ["max_steps"], SLConfig)
    with pytest.raises(TinkerflowError, match="colour"):
        apply_overrides(base, ["colour=red"], SLConfig)
    with pytest.raises(TinkerflowError, match="batch_size"):
        apply_overrides(base, ["batch_size=0"], SLConfig)


def test_hf_fields_that_apply_are_accepted() -> None:
    hub = SLConfig(train_data="hf:org/x", hf_split="train_sft", hf_test_split="test_sft", hf_subset="en")
    assert (hub.hf_split, hub.hf_test_split, hub.hf_subset) == ("train_sft", "test_sft", "en")
    # a JSONL train_data with a hub test_data: the test split and the subset apply to the test data
    mixed = SLConfig(train_data="a.jsonl", test_data="hf:org/x", hf_test_split="validation", hf_subset="en")
    assert mixed.hf_test_split == "validation"
    disk = SLConfig(train_data="hf-disk:/d", hf_messages_field="conversations")
    assert disk.hf_messages_field == "conversations"


def test_log_to_overrides_and_spellings() -> None:
    base = config_to_dict(SLConfig(train_data="a.jsonl"))
    assert apply_overrides(base, ["log_to=tensorboard"], SLConfig).log_to == ("tensorboard",)
    assert apply_overrides(base, ['log_to=["wandb", "tensorboard"]'], SLConfig).log_to == ("wandb", "tensorboard")
    assert apply_overrides(base, ["log_to=[]"], SLConfig).log_to == ()
    assert SLConfig(train_data="a.jsonl", log_to=["wandb"]).log_to == ("wandb",)  # type: ignore[arg-type]
    assert SLConfig(train_data="a.jsonl", log_to="wandb").log_to == ("wandb",)  # type: ignore[arg-type]
    with pytest.raises(TinkerflowError, match="log_to"):
        apply_overrides(base, ['log_to=["tb"]'], SLConfig)
    assert apply_overrides(base, ["run_dir=runs/x"], SLConfig).run_dir == "runs/x"  # plain strings stay strings


@pytest.mark.parametrize("cls", [SLConfig, DPOConfig, RLConfig])
def test_configs_are_built_by_keyword(cls: type) -> None:
    """The run configs share base records (``RunConfig``, ``DataConfig``), so their fields are keyword-only: a
    positional value is refused rather than landing in whichever field happens to come first."""
    with pytest.raises(TypeError):
        cls("train.jsonl")


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (["local.dtype=fp8"], "local.dtype", "fp8"),
        (["local.return_freed_memory=yes"], "local.return_freed_memory", "between_passes"),
        (["local.max_tokens_per_batch=0"], "local.max_tokens_per_batch", "positive"),
        (["local.logprob_chunk_tokens=-3"], "local.logprob_chunk_tokens", "positive"),
        (["local.checkpoint_layers=1"], "local.checkpoint_layers", "true or false"),
        (["local.device="], "local.device", "name"),
        (["backend=tinker", "local.dtype=bfloat16"], "local", "backend is 'tinker'"),
        (["local.sampling_engine=sglang"], "local.sampling_engine", "vllm"),
        (['local.vllm_options={"enforce_eager": true}'], "local.vllm_options", "sampling_engine=vllm"),
    ],
)
def test_local_options_refuse_bad_values_naming_the_field(overrides: list[str], field: str, message: str) -> None:
    """Every run config carries the local backend's options; a bad one is a typed error naming ``local.<field>``
    (the tinker backend refuses options it would ignore)."""
    data = config_to_dict(RLConfig())
    with pytest.raises(TinkerflowError, match=message) as info:
        apply_overrides(data, overrides, RLConfig)
    assert f"RLConfig.{field}" in str(info.value)


def test_local_options_overrides_reach_every_run_config() -> None:
    overrides = ["local.dtype=bfloat16", "local.return_freed_memory=between_passes", "local.max_tokens_per_batch=1024"]
    expected = LocalOptions(dtype="bfloat16", return_freed_memory="between_passes", max_tokens_per_batch=1024)
    for cls, base in ((RLConfig, RLConfig()), (SLConfig, SLConfig(train_data="x.jsonl"))):
        config = apply_overrides(config_to_dict(base), overrides, cls)
        assert config.local == expected
        assert from_json(to_json(config), cls) == config
    assert apply_overrides(config_to_dict(RLConfig()), ["local.return_freed_memory=false"], RLConfig).local == (
        LocalOptions(return_freed_memory=False)
    )
