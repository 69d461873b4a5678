"""Config records as data (tinkerflow.config_fields): docstring field docs across a class hierarchy, field listings,
templates that load back, unknown keys with suggestions, and field-by-field comparison."""

from __future__ import annotations

import json

import attrs
import pytest

from tinkerflow.config import SLConfig
from tinkerflow.config_fields import (
    REQUIRED,
    ConfigChange,
    apply_overrides,
    attribute_docs,
    check_known_keys,
    config_differences,
    config_template,
    describe_fields,
    fields_help,
    placeholder_fields,
)
from tinkerflow.errors import ConfigError
from tinkerflow.preference.config import DPOConfig
from tinkerflow.rl.config import RLConfig
from tinkerflow.supervised import LRSchedule

CONFIGS: tuple[type, ...] = (SLConfig, DPOConfig, RLConfig)


@attrs.frozen(kw_only=True)
class _Base:
    """A base record.

    Attributes:
        seed: seeds everything; a long entry
            continued on a second line.
        low / high: the two ends of a range.
    """

    seed: int = 0
    low: float = 0.0
    high: float = 1.0


@attrs.frozen(kw_only=True)
class _Child(_Base):
    """A record built on :class:`_Base`.

    Attributes:
        name: the child's own field (``required``).
        seed: the child's own words for an inherited field.

    Raises:
        Nothing: this section is not a field.
    """

    name: str
    schedule: LRSchedule = attrs.field(factory=lambda: LRSchedule(kind="cosine"))


def test_attribute_docs_follow_the_class_hierarchy() -> None:
    docs = attribute_docs(_Child)
    assert docs["seed"] == "the child's own words for an inherited field."  # the nearest class wins
    assert docs["name"] == "the child's own field (required)."  # RST literals lose their backticks
    assert docs["low"] == docs["high"] == "the two ends of a range."
    assert "Nothing" not in docs
    assert attribute_docs(_Base)["seed"] == "seeds everything; a long entry continued on a second line."


def test_describe_fields_lists_nested_records_with_the_parents_default() -> None:
    fields = {field.name: field for field in describe_fields(_Child)}
    nested = ["schedule.kind", "schedule.warmup_steps", "schedule.final_ratio"]
    assert list(fields) == ["seed", "low", "high", "name", "schedule", *nested]
    assert fields["name"].required
    assert fields["name"].type == "str"
    assert fields["schedule.kind"].default == '"cosine"'  # the parent's default, not LRSchedule's own
    assert fields["schedule.kind"].type == "constant|linear|cosine"
    assert "cosine" in fields["schedule.kind"].doc  # the nested record's own Attributes: entry
    assert "warmup" in fields["schedule.warmup_steps"].doc


@attrs.frozen
class _Undocumented:
    size: int = 3


@attrs.frozen(kw_only=True)
class _Holder:
    """Holds a record whose fields have no docs.

    Attributes:
        inner: the nested record.
    """

    inner: _Undocumented = attrs.field(factory=_Undocumented)


def test_undocumented_nested_fields_name_their_record() -> None:
    fields = {field.name: field for field in describe_fields(_Holder)}
    assert "_Undocumented" in fields["inner.size"].doc
    assert fields["inner.size"].default == "3"


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_config_field_is_listed_with_type_default_and_doc(cls: type) -> None:
    listed = {field.name: field for field in describe_fields(cls)}
    for field in attrs.fields(cls):
        assert field.name in listed
        assert listed[field.name].type
        assert listed[field.name].doc, f"{cls.__name__}.{field.name} has no Attributes: entry"
    text = fields_help(cls)
    assert all(f"  {field.name} (" in text for field in attrs.fields(cls))


@pytest.mark.parametrize("cls", CONFIGS)
def test_template_is_complete_and_loads_back(cls: type) -> None:
    template = config_template(cls)
    assert list(template) == [field.name for field in attrs.fields(cls)]
    required = [field.name for field in attrs.fields(cls) if field.default is attrs.NOTHING]
    assert placeholder_fields(template) == required
    filled = json.loads(json.dumps(template))  # what a file written from it holds
    config: object = apply_overrides(filled, [f"{name}=data.jsonl" for name in required], cls)
    assert config == cls(**dict.fromkeys(required, "data.jsonl"))
    if not required:
        assert REQUIRED not in json.dumps(template)


def test_unknown_keys_name_the_closest_fields() -> None:
    base = {"train_data": "a.jsonl"}
    with pytest.raises(ConfigError, match=r"SLConfig\.bach_size: is not a field.*did you mean batch_size") as info:
        apply_overrides(base, ["bach_size=4"], SLConfig)
    assert info.value.field == "bach_size"
    with pytest.raises(ConfigError, match=r"lr_schedule\.knd.*did you mean lr_schedule\.kind"):
        check_known_keys({**base, "lr_schedule": {"knd": "cosine"}}, SLConfig)
    with pytest.raises(ConfigError, match="zzzz") as far:
        check_known_keys({**base, "zzzz": 1}, SLConfig)
    assert "did you mean" not in str(far.value)
    check_known_keys({"env_args": {"anything": 1}}, RLConfig)  # a dict field is not a record: its keys are free


def test_config_differences_compare_field_by_field() -> None:
    old = SLConfig(train_data="a.jsonl", batch_size=4)
    assert config_differences(old, old) == ()
    new = attrs.evolve(old, batch_size=2, lr_schedule=attrs.evolve(old.lr_schedule, warmup_steps=5), log_to=("wandb",))
    changes = config_differences(old, new)
    assert changes == (
        ConfigChange("batch_size", 4, 2),
        ConfigChange("lr_schedule.warmup_steps", 0, 5),
        ConfigChange("log_to", [], ["wandb"]),
    )
    assert str(changes[1]) == "lr_schedule.warmup_steps: 0 -> 5"
    with pytest.raises(TypeError):
        config_differences(old, RLConfig())
