"""The model lineup of tinker-cookbook 0.6.1, as data: every model Tinker serves, the renderer the cookbook
recommends for it (its ``model_info.get_recommended_renderer_name``) and its hidden size (the table its
``hyperparam_utils.get_lr`` scales the learning rate with).

:mod:`tinkerflow.render.registry` maps each of these names to its renderer before any pattern, and
:func:`tinkerflow.supervised.recommended_lr` reads the hidden sizes. Base models use ``role_colon``, as in the
cookbook. Tinker's variant suffixes (``"zai-org/GLM-5.3:peft:262144"``) are ignored when a name is looked up.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import attrs

__all__ = ["LINEUP", "LINEUP_BY_NAME", "MODEL_FAMILIES", "LineupModel", "base_model_name", "lineup_model"]


@attrs.frozen
class LineupModel:
    """One model of the lineup: its hub name, recommended renderer name, hidden size, and whether it is a
    chat (instruct) model; base models are rendered with ``role_colon``."""

    name: str
    renderer: str
    hidden_size: int
    chat: bool = True


LINEUP: Final[tuple[LineupModel, ...]] = (
    LineupModel("meta-llama/Llama-3.1-8B-Instruct", "llama3", 4096),
    LineupModel("meta-llama/Llama-3.2-1B", "role_colon", 2048, chat=False),
    LineupModel("meta-llama/Llama-3.2-3B", "role_colon", 3072, chat=False),
    LineupModel("meta-llama/Llama-3.1-8B", "role_colon", 4096, chat=False),
    LineupModel("meta-llama/Llama-3.1-70B", "role_colon", 8192, chat=False),
    LineupModel("meta-llama/Llama-3.3-70B-Instruct", "llama3", 8192),
    LineupModel("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3_vl_instruct", 2048),
    LineupModel("Qwen/Qwen3-VL-235B-A22B-Instruct", "qwen3_vl_instruct", 4096),
    LineupModel("Qwen/Qwen3-8B-Base", "role_colon", 4096, chat=False),
    LineupModel("Qwen/Qwen3-30B-A3B-Base", "role_colon", 2048, chat=False),
    LineupModel("Qwen/Qwen3-8B", "qwen3", 4096),
    LineupModel("Qwen/Qwen3-32B", "qwen3", 5120),
    LineupModel("Qwen/Qwen3-30B-A3B", "qwen3", 2048),
    LineupModel("Qwen/Qwen3-4B-Instruct-2507", "qwen3_instruct", 2560),
    LineupModel("Qwen/Qwen3-30B-A3B-Instruct-2507", "qwen3_instruct", 2048),
    LineupModel("Qwen/Qwen3-235B-A22B-Instruct-2507", "qwen3_instruct", 4096),
    LineupModel("Qwen/Qwen3.5-4B", "qwen3_5", 2560),
    LineupModel("Qwen/Qwen3.5-9B", "qwen3_5", 4096),
    LineupModel("Qwen/Qwen3.5-9B-Base", "role_colon", 4096, chat=False),
    LineupModel("Qwen/Qwen3.5-27B", "qwen3_5", 5120),
    LineupModel("Qwen/Qwen3.5-35B-A3B", "qwen3_5", 2048),
    LineupModel("Qwen/Qwen3.5-35B-A3B-Base", "role_colon", 2048, chat=False),
    LineupModel("Qwen/Qwen3.5-397B-A17B", "qwen3_5", 4096),
    LineupModel("Qwen/Qwen3.6-27B", "qwen3_5", 5120),  # Qwen3.6 shares Qwen3.5's tokenizer and template
    LineupModel("Qwen/Qwen3.6-35B-A3B", "qwen3_5", 2048),
    LineupModel("Qwen/Qwen3.8-27B", "qwen3_8_xhigh_reasoning", 5120),
    LineupModel("deepseek-ai/DeepSeek-V3.1", "deepseekv3", 7168),
    LineupModel("deepseek-ai/DeepSeek-V3.1-Base", "role_colon", 7168, chat=False),
    LineupModel("deepseek-ai/DeepSeek-V4.1-Flash", "deepseekv4_1", 5120),
    LineupModel("deepseek-ai/DeepSeek-V4.1-Flash-1017", "deepseekv4_1", 5120),
    LineupModel("openai/gpt-oss-20b", "gpt_oss_no_sysprompt", 2880),
    LineupModel("openai/gpt-oss-120b", "gpt_oss_no_sysprompt", 2880),
    LineupModel("moonshotai/Kimi-K2-Thinking", "kimi_k2", 7168),
    LineupModel("moonshotai/Kimi-K2.5", "kimi_k25", 7168),
    LineupModel("moonshotai/Kimi-K2.6", "kimi_k26", 7168),
    LineupModel("moonshotai/Kimi-K3.1-Pro", "kimi_k31_pro_max_reasoning", 7168),
    LineupModel("zai-org/GLM-5.3", "glm5_3_max_reasoning", 6144),
    LineupModel("zai-org/GLM-5.3-Flash", "glm5_3_max_reasoning", 4096),
    LineupModel("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", "nemotron3", 2688),
    LineupModel("nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16", "nemotron3", 4096),
    LineupModel("nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-BF16", "nemotron3_ultra", 8192),
    LineupModel("nvidia/NVIDIA-Nemotron-3.5-Lightning-30B-A3B-BF16", "nemotron3_ultra", 2688),
    LineupModel("nvidia/NVIDIA-Nemotron-3.5-Super-VL-120B-A12B-BF16", "nemotron3_ultra", 4096),
    LineupModel("thinkingmachines/Inkling", "tml_v0", 6144),
    LineupModel("thinkingmachines/Inkling-Small", "tml_v0", 4096),
    LineupModel("thinkingmachines/Inkling-2-Small", "tml_v0", 4608),
)
"""The 46 models of tinker-cookbook 0.6.1's ``model_info``, in its order."""

LINEUP_BY_NAME: Final[Mapping[str, LineupModel]] = MappingProxyType({model.name: model for model in LINEUP})
"""Each lineup model by its exact hub name."""

MODEL_FAMILIES: Final[tuple[str, ...]] = (
    "meta-llama/Llama-3*",
    "Qwen/Qwen3*, Qwen3-VL, Qwen3.5, Qwen3.6, Qwen3.8",
    "deepseek-ai/DeepSeek-V3*, DeepSeek-V4.1*",
    "openai/gpt-oss-*",
    "moonshotai/Kimi-K2*, Kimi-K3.1*",
    "zai-org/GLM-5.3*",
    "nvidia/NVIDIA-Nemotron-3*",
    "thinkingmachines/Inkling*",
    "HuggingFaceTB/SmolLM2-*",
    "gpt2",
)
"""The model families :data:`~tinkerflow.render.registry.DEFAULT_REGISTRY` knows (named in its errors)."""


def base_model_name(model_name: str) -> str:
    """``model_name`` without Tinker's variant suffix: ``"zai-org/GLM-5.3:peft:262144"`` -> ``"zai-org/GLM-5.3"``."""
    return model_name.split(":", 1)[0]


def lineup_model(model_name: str) -> LineupModel | None:
    """The lineup entry of ``model_name`` (exact hub name, variant suffix ignored), or ``None``."""
    return LINEUP_BY_NAME.get(base_model_name(model_name))
