"""RLConfig: every validation rule raises a typed error naming its field; configs round-trip through JSON."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkerflow.config import apply_overrides
from tinkerflow.errors import ValidationError
from tinkerflow.rl.config import RLConfig
from tinkerflow.serde import from_json, to_json

BAD: list[tuple[dict[str, object], str]] = [
    ({"env": ""}, "env"),
    ({"base_model": ""}, "base_model"),
    ({"run_dir": ""}, "run_dir"),
    ({"env_args": {"a": [1]}}, "env_args['a']"),
    ({"backend": "cloud"}, "backend"),
    ({"group_size": 0}, "group_size"),
    ({"groups_per_batch": -1}, "groups_per_batch"),
    ({"steps": 0}, "steps"),
    ({"lora_rank": 0}, "lora_rank"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"substeps": 0}, "substeps"),
    ({"concurrency": 0}, "concurrency"),
    ({"max_retries": -1}, "max_retries"),
    ({"eval_every": -1}, "eval_every"),
    ({"eval_groups": -1}, "eval_groups"),
    ({"save_every": -1}, "save_every"),
    ({"seed": -1}, "seed"),
    ({"group_size": 1, "constant_groups": "drop"}, "group_size"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"temperature": -0.1}, "temperature"),
    ({"loss": "reinforce"}, "loss"),
    ({"clip_low": 1.5}, "clip_low"),
    ({"clip_high": 0.9}, "clip_high"),
    ({"dro_beta": -1.0}, "dro_beta"),
    ({"normalize_advantages": 1}, "normalize_advantages"),
    ({"constant_groups": "maybe"}, "constant_groups"),
    ({"kl_coef": -0.1}, "kl_coef"),
    ({"kl_discount": 1.5}, "kl_discount"),
    ({"mode": "later"}, "mode"),
    ({"mode": "async", "max_staleness": 0}, "max_staleness"),
    ({"episode_timeout_s": 0.0}, "episode_timeout_s"),
    ({"on_failure": "ignore"}, "on_failure"),
    ({"log_to": ("mlflow",)}, "log_to[0]"),
    # the KL reference: each named reference needs its one value; nothing set without effect
    ({"kl_coef": 0.1, "kl_reference": "teacher"}, "kl_reference"),
    ({"kl_coef": 0.1, "kl_reference": "checkpoint"}, "kl_reference_path"),
    ({"kl_coef": 0.1, "kl_reference": "model"}, "kl_reference_model"),
    ({"kl_coef": 0.1, "kl_reference": "model", "kl_reference_model": ""}, "kl_reference_model"),
    ({"kl_coef": 0.1, "kl_reference": "checkpoint", "kl_reference_path": "  "}, "kl_reference_path"),
    ({"kl_coef": 0.1, "kl_reference_path": "runs/t"}, "kl_reference_path"),
    ({"kl_coef": 0.1, "kl_reference": "base", "kl_reference_model": "m"}, "kl_reference_model"),
    (
        {"kl_coef": 0.1, "kl_reference": "model", "kl_reference_model": "m", "kl_reference_path": "p"},
        "kl_reference_path",
    ),
    ({"kl_reference": "base"}, "kl_reference"),
    ({"kl_mode": "distillation"}, "kl_mode"),
    ({"kl_discount": 0.9}, "kl_discount"),
    ({"kl_coef": 0.1, "kl_mode": "teacher"}, "kl_mode"),
    ({"kl_coef": 0.1, "kl_mode": "distillation", "constant_groups": "drop"}, "constant_groups"),
    ({"group_size": 1, "kl_coef": 0.1, "kl_mode": "penalty"}, "group_size"),
    ({"loss": "gspo", "dro_beta": 0.1}, "dro_beta"),
    ({"loss": "stable_reinforce", "clip_low": 0.5}, "clip_low"),
]


@pytest.mark.parametrize(("changes", "field"), BAD, ids=[f for _, f in BAD])
def test_each_rule_names_its_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RLConfig(**changes)  # type: ignore[arg-type]  # deliberately wrong values
    assert caught.value.field == field
    assert caught.value.where == "RLConfig"


def test_env_args_take_booleans_numbers_and_strings() -> None:
    config = RLConfig(env_args={"fewshot": False, "max_operand": 20, "ratio": 0.5, "name": "x"})
    assert from_json(to_json(config), RLConfig) == config


@given(
    steps=st.integers(1, 1000),
    mode=st.sampled_from(["sync", "async"]),
    staleness=st.integers(1, 8),
    loss=st.sampled_from(["importance_sampling", "ppo", "cispo", "dro"]),
    kl=st.floats(0, 1),
)
def test_configs_round_trip(steps: int, mode: str, staleness: int, loss: str, kl: float) -> None:
    staleness = staleness if mode == "async" else 1  # max_staleness other than 1 in sync mode is refused
    config = RLConfig(steps=steps, mode=mode, max_staleness=staleness, loss=loss, kl_coef=kl)  # type: ignore[arg-type]
    assert from_json(to_json(config), RLConfig) == config
    assert config.staleness == (staleness if mode == "async" else 0)


@pytest.mark.parametrize(
    "changes",
    [
        {"kl_coef": 0.1},
        {"kl_coef": 0.1, "kl_reference": "base"},
        {"kl_coef": 0.1, "kl_reference": "checkpoint", "kl_reference_path": "local://run/weights/step-000004"},
        {"kl_coef": 0.1, "kl_reference": "checkpoint", "kl_reference_path": "runs/teacher"},
        {"kl_coef": 0.5, "kl_reference": "model", "kl_reference_model": "tiny-llama:seed=1", "kl_discount": 0.9},
        {"kl_coef": 1.0, "kl_reference": "model", "kl_reference_model": "m", "kl_mode": "distillation"},
        {"kl_coef": 1.0, "kl_reference": "base", "kl_mode": "distillation", "group_size": 1},
        {"loss": "gspo", "clip_low": 0.7, "clip_high": 1.3},
        {"loss": "stable_reinforce"},
    ],
)
def test_kl_references_and_new_losses_are_accepted(changes: dict[str, object]) -> None:
    config = RLConfig(**changes)  # type: ignore[arg-type]  # values as a config file gives them
    assert from_json(to_json(config), RLConfig) == config
    for key, value in changes.items():
        assert getattr(config, key) == value


def test_kl_errors_say_what_to_do() -> None:
    with pytest.raises(ValidationError) as caught:
        RLConfig(kl_coef=0.1, kl_reference="checkpoint")
    assert "required with kl_reference='checkpoint'" in str(caught.value)
    with pytest.raises(ValidationError) as unused:
        RLConfig(kl_reference="base")
    assert "no effect with kl_coef=0" in str(unused.value)


def test_kl_fields_round_trip_through_overrides() -> None:
    config = apply_overrides(
        {"env": "arithmetic"},
        ["kl_coef=0.2", "kl_reference=model", "kl_reference_model=tiny-llama:seed=1", "kl_mode=distillation"],
        RLConfig,
    )
    assert (config.kl_reference, config.kl_reference_model, config.kl_mode) == (
        "model", "tiny-llama:seed=1", "distillation"
    )  # fmt: skip


def test_overrides_reach_nested_env_args() -> None:
    config = apply_overrides({"env": "arithmetic"}, ["env_args.fewshot=false", "steps=3", "mode=async"], RLConfig)
    assert config.env_args == {"fewshot": False}
    assert config.steps == 3
    assert config.staleness == 1


@pytest.mark.parametrize("loss", ["importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce"])
def test_every_loss_name_has_its_loss_record(loss: str) -> None:
    from tinkerflow.shell.recipes.rl import loss_config

    record = loss_config(RLConfig(loss=loss))  # type: ignore[arg-type]  # a name as a config file gives it
    assert record.loss_fn == loss
    if loss in ("ppo", "cispo", "gspo"):
        clipped = loss_config(RLConfig(loss=loss, clip_low=0.7, clip_high=1.4))  # type: ignore[arg-type]  # as above
        assert clipped.config() == {"clip_low_threshold": 0.7, "clip_high_threshold": 1.4}
