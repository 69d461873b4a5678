"""The lineup against tinker-cookbook 0.6.1 itself: the same 46 models, the same recommended renderer for each
(``model_info.get_recommended_renderer_name``) and the same learning rate (``hyperparam_utils.get_lr``, LoRA and
full fine-tuning), or a refusal where the cookbook refuses (it has no calibrated rule: ``NotImplementedError``
or ``ConfigurationError``; tinkerflow raises ``ConfigError``)."""

from __future__ import annotations

import pytest

from tinkerflow.errors import ConfigError
from tinkerflow.render import renderer_name_for_model
from tinkerflow.render.lineup import LINEUP
from tinkerflow.supervised import recommended_lr

pytestmark = pytest.mark.conformance

NAMES = [model.name for model in LINEUP]


def _cookbook_lineup() -> list[str]:
    from tinker_cookbook import model_info

    tables = (
        model_info.get_llama_info,
        model_info.get_qwen_info,
        model_info.get_deepseek_info,
        model_info.get_gpt_oss_info,
        model_info.get_moonshot_info,
        model_info.get_zai_info,
        model_info.get_nvidia_info,
        model_info.get_thinkingmachines_info,
    )
    return [f"{attributes.organization}/{version}" for table in tables for version, attributes in table().items()]


def test_the_lineup_is_the_cookbooks() -> None:
    assert _cookbook_lineup() == NAMES
    assert len(NAMES) == 46


@pytest.mark.parametrize("name", NAMES)
def test_same_recommended_renderer(name: str) -> None:
    from tinker_cookbook.model_info import get_recommended_renderer_name

    assert renderer_name_for_model(name) == get_recommended_renderer_name(name)
    assert renderer_name_for_model(name + ":peft:262144") == get_recommended_renderer_name(name + ":peft:262144")


@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_same_learning_rate(name: str, lora: bool) -> None:
    from tinker_cookbook.exceptions import ConfigurationError
    from tinker_cookbook.hyperparam_utils import get_lr

    try:
        expected: float | None = get_lr(name, is_lora=lora)
    except (NotImplementedError, ConfigurationError):
        expected = None
    if expected is None:
        with pytest.raises(ConfigError):
            recommended_lr(name, lora=lora)
    else:
        assert recommended_lr(name, lora=lora) == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_counts() -> None:
    """26 of the 46 lineup models get a number: the cookbook calibrates Llama (6) and Qwen (20) only."""
    from tinker_cookbook.hyperparam_utils import get_lr

    answered = 0
    for name in NAMES:
        try:
            get_lr(name)
        except Exception:
            continue
        answered += 1
    assert answered == sum(1 for name in NAMES if any(f in name.lower() for f in ("llama", "qwen"))) == 26
