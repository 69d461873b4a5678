"""Hostile configs: SL, DPO and RL configs built from JSON with values out of range, of the wrong shape, or
settings that contradict each other or have no effect. Each is a ``ConfigDataError`` naming ``Config.field``
(the type-coercion cases are in ``test_strict_inputs.py``, RL's time bounds in ``test_time_bounds.py``)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.hostile.support import raises_exactly

from tinkerflow.config import SLConfig
from tinkerflow.preference.config import DPOConfig
from tinkerflow.rl.config import RLConfig
from tinkerflow.serde import ConfigDataError, structure

pytestmark = pytest.mark.hostile("configs")

BASES: dict[type, dict[str, object]] = {
    SLConfig: {"train_data": "d.jsonl"},
    DPOConfig: {"train_data": "p.jsonl"},
    RLConfig: {},
}

EVAL = {"name": "a", "kind": "exact_match", "data": "x.jsonl"}

# (id, config class, fields over the base, field named)
CASES: list[tuple[str, type, dict[str, object], str]] = [
    ("batch_size -1", SLConfig, {"batch_size": -1}, "batch_size"),
    ("batch_size 0", SLConfig, {"batch_size": 0}, "batch_size"),
    ("learning_rate -1", SLConfig, {"learning_rate": -1}, "learning_rate"),
    ("learning_rate 0", SLConfig, {"learning_rate": 0}, "learning_rate"),
    ("test_fraction 1.5", SLConfig, {"test_fraction": 1.5}, "test_fraction"),
    ("test_fraction 1", SLConfig, {"test_fraction": 1.0}, "test_fraction"),
    ("test_fraction -0.1", SLConfig, {"test_fraction": -0.1}, "test_fraction"),
    ("max_length 1", SLConfig, {"max_length": 1}, "max_length"),
    ("epochs 0", SLConfig, {"epochs": 0}, "epochs"),
    ("lora_rank 0", SLConfig, {"lora_rank": 0}, "lora_rank"),
    ("seed -1", SLConfig, {"seed": -1}, "seed"),
    ("keep_last 0", SLConfig, {"keep_last": 0}, "keep_last"),
    ("keep_every without keep_last", SLConfig, {"keep_every": 3}, "keep_every"),
    ("test_data is train_data", SLConfig, {"test_data": "d.jsonl"}, "test_data"),
    ("save_every -1", SLConfig, {"save_every": -1}, "save_every"),
    ("eval_every -1", SLConfig, {"eval_every": -1}, "eval_every"),
    ("max_steps 0", SLConfig, {"max_steps": 0}, "max_steps"),
    ("num_samples_shown -1", SLConfig, {"num_samples_shown": -1}, "num_samples_shown"),
    ("sample_max_tokens 0", SLConfig, {"sample_max_tokens": 0}, "sample_max_tokens"),
    ("warmup -1", SLConfig, {"lr_schedule": {"kind": "cosine", "warmup_steps": -1}}, "lr_schedule.warmup_steps"),
    ("schedule kind", SLConfig, {"lr_schedule": {"kind": "bogus"}}, "lr_schedule.kind"),
    ("train_data empty", SLConfig, {"train_data": ""}, "train_data"),
    ("hf_split on a file", SLConfig, {"hf_split": "test"}, "hf_split"),
    ("train_on", SLConfig, {"train_on": "everything"}, "train_on"),
    ("eval kind", SLConfig, {"evals": [{"name": "a", "kind": "bogus"}]}, "evals[0].kind"),
    ("eval name twice", SLConfig, {"evals": [EVAL, {**EVAL, "data": "y.jsonl"}]}, "evals[1].name"),
    ("eval unknown key", SLConfig, {"evals": [{**EVAL, "every_n": 3}]}, "evals[0].every_n"),
    ("backend null", SLConfig, {"backend": None}, "backend"),
    ("dpo beta 0", DPOConfig, {"beta": 0}, "beta"),
    ("dpo beta -1", DPOConfig, {"beta": -1}, "beta"),
    ("dpo ties keep", DPOConfig, {"ties": "keep"}, "ties"),
    ("dpo test_data is train_data", DPOConfig, {"test_data": "p.jsonl"}, "test_data"),
    ("dpo reference typo", DPOConfig, {"reference": "bogus"}, "reference"),
    ("rl steps 0", RLConfig, {"steps": 0}, "steps"),
    ("rl temperature -1", RLConfig, {"temperature": -1}, "temperature"),
    ("rl kl_coef -1", RLConfig, {"kl_coef": -1}, "kl_coef"),
    ("rl clip_low -1", RLConfig, {"clip_low": -1}, "clip_low"),
    ("rl clip_high below 1", RLConfig, {"clip_low": 0.5, "clip_high": 0.1}, "clip_high"),
    ("rl on_failure", RLConfig, {"on_failure": "ignore"}, "on_failure"),
    ("rl mode", RLConfig, {"mode": "fast"}, "mode"),
    ("rl loss", RLConfig, {"loss": "bogus"}, "loss"),
    ("rl env empty", RLConfig, {"env": ""}, "env"),
    ("rl groups_per_batch 0", RLConfig, {"groups_per_batch": 0}, "groups_per_batch"),
    ("rl max_tokens 0", RLConfig, {"max_tokens": 0}, "max_tokens"),
    ("rl timeout 0", RLConfig, {"episode_timeout_s": 0}, "episode_timeout_s"),
    ("rl dro_beta -1", RLConfig, {"dro_beta": -1}, "dro_beta"),
    ("rl kl_discount 1.5", RLConfig, {"kl_discount": 1.5}, "kl_discount"),
    ("rl staleness in sync", RLConfig, {"max_staleness": 2}, "max_staleness"),
    ("rl eval_groups -1", RLConfig, {"eval_groups": -1}, "eval_groups"),
    ("rl substeps 0", RLConfig, {"substeps": 0}, "substeps"),
    ("rl concurrency 0", RLConfig, {"concurrency": 0}, "concurrency"),
]

# bugs the suite found, fixed since (issue 15): (id, class, fields, field, what went wrong before the fix)
FIXED: list[tuple[str, type, dict[str, object], str, str]] = [
    ("learning_rate 1e999", SLConfig, {"learning_rate": 1e999}, "learning_rate", "a RecordDataError, not a config's"),
    ("schedule a number", SLConfig, {"lr_schedule": 5}, "lr_schedule", "RecordDataError: 'int' is not iterable"),
    ("evals a number", SLConfig, {"evals": 5}, "evals", "RecordDataError: 'int' object is not iterable"),
    ("log_to a string", SLConfig, {"log_to": "wandb"}, "log_to", "split into letters: log_to[0] got 'w'"),
    ("rl env_args a number", RLConfig, {"env_args": 5}, "env_args", "a SerializationError naming no field"),
    ("rl dro_beta with ppo", RLConfig, {"loss": "ppo", "dro_beta": 2.0}, "dro_beta", "accepted: no effect with ppo"),
    ("rl clip with is", RLConfig, {"loss": "importance_sampling", "clip_low": 0.1}, "clip_low", "accepted: no effect"),
]  # fmt: skip


def _params() -> list[object]:
    return [pytest.param(*case[1:], id=case[0]) for case in CASES] + [
        pytest.param(cls, fields, field, id=name) for name, cls, fields, field, _ in FIXED
    ]


@pytest.mark.parametrize(("cls", "fields", "field"), _params())
def test_bad_config(cls: type, fields: dict[str, object], field: str) -> None:
    data = {key: value for key, value in {**BASES[cls], **fields}.items()}
    text = json.dumps(data)  # what a config file holds (1e999 is written as Infinity)
    raises_exactly(lambda: structure(json.loads(text), cls), ConfigDataError, field, cls.__name__)


_keys = st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True)


@given(st.sampled_from(sorted(BASES, key=lambda cls: cls.__name__)), _keys, st.integers() | st.text(max_size=5))
def test_any_unknown_key_is_refused(cls: type, key: str, value: object) -> None:
    if key in {field.name for field in __import__("attrs").fields(cls)}:
        return
    raises_exactly(lambda: structure({**BASES[cls], key: value}, cls), ConfigDataError, key, cls.__name__)


# which losses read each loss option of RLConfig, and a valid value for it other than its default
_LOSS_OPTIONS = {
    "clip_low": (("ppo", "cispo"), st.floats(0.0, 1.0).filter(lambda value: value != 0.8)),
    "clip_high": (("ppo", "cispo"), st.floats(1.0, 10.0).filter(lambda value: value != 1.2)),
    "dro_beta": (("dro",), st.floats(0.0, 10.0).filter(lambda value: value != 0.05)),
}


@given(
    st.sampled_from(sorted(_LOSS_OPTIONS)), st.sampled_from(["importance_sampling", "ppo", "cispo", "dro"]), st.data()
)
def test_a_loss_option_is_refused_exactly_when_the_loss_ignores_it(field: str, loss: str, data: st.DataObject) -> None:
    readers, values = _LOSS_OPTIONS[field]
    value = data.draw(values)
    config = {"loss": loss, field: value}
    if loss in readers:
        assert getattr(structure(config, RLConfig), field) == value
    else:
        error = raises_exactly(lambda: structure(config, RLConfig), ConfigDataError, field, "RLConfig")
        assert "no effect" in str(error)
    default = structure({"loss": loss, field: {"clip_low": 0.8, "clip_high": 1.2, "dro_beta": 0.05}[field]}, RLConfig)
    assert default.loss == loss  # the default value is accepted under every loss (a template sets every field)


_NOT_LISTS = (
    st.text(max_size=8)
    | st.integers()
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
_NOT_OBJECTS = st.text(max_size=8) | st.integers() | st.booleans() | st.lists(st.integers(), max_size=3)


@given(st.sampled_from([(SLConfig, "log_to"), (SLConfig, "evals"), (DPOConfig, "log_to")]), _NOT_LISTS)
def test_a_list_field_takes_only_a_list(case: tuple[type, str], value: object) -> None:
    cls, field = case
    error = raises_exactly(lambda: structure({**BASES[cls], field: value}, cls), ConfigDataError, field, cls.__name__)
    assert "must be a list" in str(error)


@given(st.sampled_from([(SLConfig, "lr_schedule"), (RLConfig, "env_args")]), _NOT_OBJECTS)
def test_a_record_or_mapping_field_takes_only_an_object(case: tuple[type, str], value: object) -> None:
    cls, field = case
    error = raises_exactly(lambda: structure({**BASES[cls], field: value}, cls), ConfigDataError, field, cls.__name__)
    assert "must be an object" in str(error)


@given(st.sampled_from(["run_dir", "base_model", "train_data"]), st.text(max_size=4), st.text(max_size=4))
def test_text_with_a_lone_surrogate_is_refused_naming_its_field(field: str, before: str, after: str) -> None:
    value = f"{before}\udc80{after}"
    raises_exactly(lambda: structure({**BASES[SLConfig], field: value}, SLConfig), ConfigDataError, field, "SLConfig")
