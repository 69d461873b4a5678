"""Renderer families added to match tinker-cookbook 0.6.1's registered names.

``EXTRA_FACTORIES`` maps each new renderer name to a factory called as ``factory(tokenizer, **options)``; the
registry (``tinkerflow.render.registry``) merges it into ``DEFAULT_REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from tinkerflow.render.families_deepseek_v4_1 import FACTORIES as DEEPSEEK_V4_1_FACTORIES
from tinkerflow.render.families_kimi import FACTORIES as KIMI_FACTORIES
from tinkerflow.render.glm5_3 import Glm53HighReasoningRenderer, Glm53LowReasoningRenderer, Glm53Renderer
from tinkerflow.render.nemotron3 import (
    Nemotron3DisableThinkingRenderer,
    Nemotron3LowThinkingRenderer,
    Nemotron3PreserveThinkingRenderer,
    Nemotron3Renderer,
    Nemotron3UltraDisableThinkingRenderer,
    Nemotron3UltraMediumThinkingRenderer,
    Nemotron3UltraPreserveThinkingRenderer,
    Nemotron3UltraRenderer,
)
from tinkerflow.render.qwen3_5 import Qwen35DisableThinkingRenderer, Qwen35PreserveThinkingRenderer, Qwen35Renderer
from tinkerflow.render.qwen3_8 import (
    Qwen38DisableThinkingRenderer,
    Qwen38LowReasoningRenderer,
    Qwen38MediumReasoningRenderer,
    Qwen38Renderer,
)
from tinkerflow.render.renderer import Renderer

__all__ = ["EXTRA_FACTORIES", "RendererFactory"]

RendererFactory = Callable[..., Renderer]
"""Called as ``factory(tokenizer, **options)``."""

EXTRA_FACTORIES: Mapping[str, RendererFactory] = MappingProxyType(
    {
        "qwen3_5": Qwen35Renderer,
        "qwen3_5_disable_thinking": Qwen35DisableThinkingRenderer,
        "qwen3_5_preserve_thinking": Qwen35PreserveThinkingRenderer,
        "qwen3_8_xhigh_reasoning": Qwen38Renderer,
        "qwen3_8_medium_reasoning": Qwen38MediumReasoningRenderer,
        "qwen3_8_low_reasoning": Qwen38LowReasoningRenderer,
        "qwen3_8_disable_thinking": Qwen38DisableThinkingRenderer,
        "glm5_3_max_reasoning": Glm53Renderer,
        "glm5_3_high_reasoning": Glm53HighReasoningRenderer,
        "glm5_3_low_reasoning": Glm53LowReasoningRenderer,
        "nemotron3": Nemotron3Renderer,
        "nemotron3_low_thinking": Nemotron3LowThinkingRenderer,
        "nemotron3_disable_thinking": Nemotron3DisableThinkingRenderer,
        "nemotron3_preserve_thinking": Nemotron3PreserveThinkingRenderer,
        "nemotron3_ultra": Nemotron3UltraRenderer,
        "nemotron3_ultra_disable_thinking": Nemotron3UltraDisableThinkingRenderer,
        "nemotron3_ultra_medium_thinking": Nemotron3UltraMediumThinkingRenderer,
        "nemotron3_ultra_preserve_thinking": Nemotron3UltraPreserveThinkingRenderer,
        **KIMI_FACTORIES,
        **DEEPSEEK_V4_1_FACTORIES,
    }
)
