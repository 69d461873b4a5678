"""Renderer families added to match tinker-cookbook 0.6.1's registered names.

``EXTRA_FACTORIES`` maps each new renderer name to a factory called as ``factory(tokenizer, **options)``; the
registry (``tinkerflow.render.registry``) merges it into ``DEFAULT_REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

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
    }
)
