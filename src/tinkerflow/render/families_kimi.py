"""Renderer names of the kimi families (tinker-cookbook 0.6.1), merged into ``EXTRA_FACTORIES``.

The cookbook's ``kimi_k31_pro_*`` names are not provided: they are adapters over a tml-renderers ``KimiK31Pro``
renderer and ``KimiK3Tokenizer`` that tml-renderers 0.2.1 does not ship, and no public K3.1-Pro format is
available to build and check one against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from tinkerflow.render.kimi import (
    KimiK2Renderer,
    KimiK25DisableThinkingRenderer,
    KimiK25Renderer,
    KimiK26DisableThinkingRenderer,
    KimiK26PreserveThinkingRenderer,
    KimiK26Renderer,
)
from tinkerflow.render.renderer import Renderer

__all__ = ["FACTORIES"]

FACTORIES: Mapping[str, Callable[..., Renderer]] = MappingProxyType(
    {
        "kimi_k2": KimiK2Renderer,
        "kimi_k25": KimiK25Renderer,
        "kimi_k25_disable_thinking": KimiK25DisableThinkingRenderer,
        "kimi_k26": KimiK26Renderer,
        "kimi_k26_disable_thinking": KimiK26DisableThinkingRenderer,
        "kimi_k26_preserve_thinking": KimiK26PreserveThinkingRenderer,
    }
)
