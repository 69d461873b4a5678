"""Renderer names of the deepseek_v4_1 families (tinker-cookbook 0.6.1), merged into ``EXTRA_FACTORIES``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from tinkerflow.render.deepseek_v4_1 import (
    DeepSeekV41DisableThinkingRenderer,
    DeepSeekV41LowReasoningRenderer,
    DeepSeekV41MaxReasoningRenderer,
    DeepSeekV41PreserveThinkingRenderer,
    DeepSeekV41Renderer,
)
from tinkerflow.render.renderer import Renderer
from tinkerflow.render.tml_v0 import TmlV0Renderer

__all__ = ["FACTORIES"]

FACTORIES: Mapping[str, Callable[..., Renderer]] = MappingProxyType(
    {
        "deepseekv4_1": DeepSeekV41Renderer,
        "deepseekv4_1_low_reasoning": DeepSeekV41LowReasoningRenderer,
        "deepseekv4_1_max_reasoning": DeepSeekV41MaxReasoningRenderer,
        "deepseekv4_1_disable_thinking": DeepSeekV41DisableThinkingRenderer,
        "deepseekv4_1_preserve_thinking": DeepSeekV41PreserveThinkingRenderer,
        "tml_v0": TmlV0Renderer,
    }
)
