"""The model lineup: every model of tinker-cookbook 0.6.1's lineup resolves to a renderer name and, where the
cookbook has a rule, a learning rate; unknown models are typed errors naming the known families.

The differential test against the cookbook itself is ``tests/conformance/test_lineup_cookbook.py``.
"""

from __future__ import annotations

import pytest
from tests.helpers import cached_tokenizer

from tinkerflow.errors import ConfigError
from tinkerflow.render import (
    DEFAULT_REGISTRY,
    RendererRegistry,
    RenderError,
    RoleColonRenderer,
    renderer_for_model,
    renderer_name_for_model,
)
from tinkerflow.render.chat_template import ChatTemplateRenderer
from tinkerflow.render.lineup import LINEUP, LINEUP_BY_NAME, MODEL_FAMILIES, LineupModel, lineup_model
from tinkerflow.render.registry import UnknownModelError
from tinkerflow.supervised import KNOWN_HIDDEN_SIZES, recommended_lr


def test_the_lineup_has_the_46_models_of_the_cookbook_once_each() -> None:
    assert len(LINEUP) == 46
    assert len(LINEUP_BY_NAME) == 46
    assert all(model.hidden_size > 0 for model in LINEUP)
    # base models are rendered with role_colon, chat models never are
    assert {model.name for model in LINEUP if not model.chat} == {
        model.name for model in LINEUP if model.renderer == "role_colon"
    }


@pytest.mark.parametrize("model", LINEUP, ids=[model.name for model in LINEUP])
def test_every_lineup_model_resolves_to_its_recommended_renderer(model: LineupModel) -> None:
    assert renderer_name_for_model(model.name) == model.renderer
    assert renderer_name_for_model(model.name + ":peft:262144") == model.renderer  # Tinker's variant suffix
    assert renderer_name_for_model(model.name.upper()) == model.renderer  # hub names are case-insensitive
    assert KNOWN_HIDDEN_SIZES.get(model.name, model.hidden_size) == model.hidden_size


@pytest.mark.parametrize(
    ("model", "renderer"),
    [
        ("meta-llama/Llama-3.2-1B-Instruct", "llama3"),
        ("meta-llama/Meta-Llama-3-8B", "role_colon"),
        ("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl_instruct"),
        ("Qwen/Qwen3-VL-8B-Thinking", "qwen3_vl"),
        ("Qwen/Qwen3-0.6B", "qwen3"),
        ("Qwen/Qwen3-0.6B-Base", "role_colon"),
        ("Qwen/Qwen3-14B-Instruct-2507", "qwen3_instruct"),
        ("Qwen/Qwen3.5-2B", "qwen3_5"),
        ("Qwen/Qwen3.6-9B", "qwen3_5"),
        ("Qwen/Qwen3.8-9B", "qwen3_8_xhigh_reasoning"),
        ("deepseek-ai/DeepSeek-V3.2", "deepseekv3"),
        ("deepseek-ai/DeepSeek-V4.1-Pro", "deepseekv4_1"),
        ("openai/gpt-oss-safeguard-20b", "gpt_oss_no_sysprompt"),
        ("moonshotai/Kimi-K2-Instruct", "kimi_k2"),
        ("zai-org/GLM-5.3-Air", "glm5_3_max_reasoning"),
        ("nvidia/NVIDIA-Nemotron-3-Nano-4B-BF16", "nemotron3"),
        ("thinkingmachines/Inkling-3", "tml_v0"),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "smollm2"),
        ("HuggingFaceTB/SmolLM2-360M", "role_colon"),
        ("gpt2", "role_colon"),
    ],
)
def test_other_names_of_known_families_follow_the_family(model: str, renderer: str) -> None:
    assert lineup_model(model) is None
    assert renderer_name_for_model(model) == renderer


def test_an_unknown_model_is_a_config_error_naming_the_known_families() -> None:
    with pytest.raises(UnknownModelError) as caught:
        renderer_name_for_model("acme/frontier-1")
    error = caught.value
    assert isinstance(error, ConfigError)
    assert isinstance(error, RenderError)
    assert error.field == "model_name"
    assert all(family in str(error) for family in MODEL_FAMILIES)
    assert "chat_template" in error.fix


def test_a_recommended_renderer_this_tinkerflow_lacks_is_a_typed_error_not_a_key_error() -> None:
    registry = RendererRegistry(factories={"role_colon": RoleColonRenderer}, models=((r"acme/", "acme_format"),))
    with pytest.raises(RenderError, match="'acme_format' renderer"):
        registry.for_model("acme/model", cached_tokenizer("gpt2"))
    missing = [model for model in LINEUP if model.renderer not in DEFAULT_REGISTRY.names()]
    for model in missing:  # names another module may not have registered yet
        with pytest.raises(RenderError, match=model.renderer):
            renderer_for_model(model.name, cached_tokenizer("qwen3"))


def test_base_models_of_the_lineup_get_role_colon() -> None:
    renderer = renderer_for_model("meta-llama/Llama-3.1-8B", cached_tokenizer("llama3"))
    assert isinstance(renderer, RoleColonRenderer)


def test_a_model_no_pattern_knows_gets_the_chat_template_renderer_when_its_tokenizer_has_a_template() -> None:
    smollm2 = cached_tokenizer("smollm2")  # carries its GGUF's chat template
    assert smollm2.chat_template
    renderer = renderer_for_model("acme/smol-finetune", smollm2)
    assert isinstance(renderer, ChatTemplateRenderer)
    with pytest.raises(UnknownModelError):
        renderer_for_model("acme/smol-finetune", cached_tokenizer("qwen3"))  # no template: still an error
    without = RendererRegistry(factories={"role_colon": RoleColonRenderer})
    with pytest.raises(UnknownModelError):
        without.for_model("acme/smol-finetune", smollm2)  # a registry without chat_template does not fall back


def _cookbook_rule(name: str, lora: bool) -> float:
    """tinker-cookbook 0.6.1's formula, written out: 5e-5 (x10 for LoRA) x (2000 / hidden) ** exponent."""
    exponent = 0.781 if "llama" in name.lower() else 0.0775
    return 5e-5 * (10.0 if lora else 1.0) * (2000 / LINEUP_BY_NAME[name].hidden_size) ** exponent


@pytest.mark.parametrize("model", LINEUP, ids=[model.name for model in LINEUP])
def test_recommended_lr_answers_for_the_calibrated_families_and_refuses_the_others(model: LineupModel) -> None:
    calibrated = any(family in model.name.lower() for family in ("llama", "qwen"))
    if calibrated:
        for lora in (True, False):
            assert recommended_lr(model.name, lora=lora) == pytest.approx(_cookbook_rule(model.name, lora), rel=1e-12)
        assert recommended_lr(model.name + ":peft:262144") == recommended_lr(model.name)
    else:
        with pytest.raises(ConfigError, match="calibrated") as caught:
            recommended_lr(model.name)
        assert caught.value.field == "model_name"
        assert "learning rate explicitly" in caught.value.fix


def test_qwen3_5_has_a_learning_rate_now() -> None:
    assert recommended_lr("Qwen/Qwen3.5-9B") == pytest.approx(5e-4 * (2000 / 4096) ** 0.0775, rel=1e-12)
