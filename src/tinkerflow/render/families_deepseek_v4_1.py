"""Renderer names of the deepseek_v4_1 families (tinker-cookbook 0.6.1), merged into ``EXTRA_FACTORIES``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from tinkerflow.render.renderer import Renderer

__all__ = ["FACTORIES"]

FACTORIES: Mapping[str, Callable[..., Renderer]] = MappingProxyType({})
