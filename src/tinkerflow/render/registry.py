"""Which renderer a name or a model uses: an immutable registry value.

``DEFAULT_REGISTRY`` maps every built-in renderer name to a factory and hub model names to renderer names: the
46 models of tinker-cookbook 0.6.1's lineup (:mod:`tinkerflow.render.lineup`) to the renderer the cookbook
recommends, then family patterns for other names of the same families. A model no pattern knows gets the
generic ``chat_template`` renderer when its tokenizer carries a Jinja chat template
(:mod:`tinkerflow.render.chat_template`). Add your own renderer by deriving a new registry (nothing global is
mutated)::

    registry = DEFAULT_REGISTRY.with_renderer("my_format", MyRenderer).with_model(r"me/my-model", "my_format")
    renderer = registry.create("my_format", tokenizer)
    renderer = registry.for_model("me/my-model-7b", tokenizer)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

import attrs

from tinkerflow.errors import ConfigError
from tinkerflow.render.chat_template import ChatTemplateRenderer
from tinkerflow.render.chatml import ChatMLRenderer, SmolLM2Renderer
from tinkerflow.render.deepseek_v3 import DeepSeekV3Renderer, DeepSeekV3ThinkingRenderer
from tinkerflow.render.families_v061 import EXTRA_FACTORIES
from tinkerflow.render.gpt_oss import GptOssRenderer
from tinkerflow.render.lineup import LINEUP, MODEL_FAMILIES, base_model_name
from tinkerflow.render.llama3 import Llama3Renderer
from tinkerflow.render.qwen3 import Qwen3DisableThinkingRenderer, Qwen3InstructRenderer, Qwen3Renderer
from tinkerflow.render.qwen3_vl import Qwen3VLInstructRenderer, Qwen3VLRenderer
from tinkerflow.render.records import RenderError
from tinkerflow.render.renderer import Renderer
from tinkerflow.render.role_colon import RoleColonRenderer
from tinkerflow.tokenizers import Tokenizer

__all__ = [
    "DEFAULT_REGISTRY",
    "RendererFactory",
    "RendererRegistry",
    "UnknownModelError",
    "get_renderer",
    "renderer_for_model",
    "renderer_name_for_model",
]


class UnknownModelError(RenderError, ConfigError):
    """No renderer is registered for a model name (a :class:`RenderError` and a :class:`ConfigError`)."""


RendererFactory = Callable[..., Renderer]
"""Called as ``factory(tokenizer, **options)``; a renderer class is a factory."""


def _freeze(value: Mapping[str, RendererFactory]) -> Mapping[str, RendererFactory]:
    return MappingProxyType(dict(value))


@attrs.frozen
class RendererRegistry:
    """Renderer names -> factories, and model-name patterns -> renderer names (first match wins)."""

    factories: Mapping[str, RendererFactory] = attrs.field(converter=_freeze)
    models: tuple[tuple[str, str], ...] = ()

    def names(self) -> tuple[str, ...]:
        """Every registered renderer name, sorted."""
        return tuple(sorted(self.factories))

    def with_renderer(self, name: str, factory: RendererFactory, *, replace: bool = False) -> RendererRegistry:
        """A new registry that also knows ``name``; ``replace=True`` to override an existing name."""
        if name in self.factories and not replace:
            raise RenderError(
                "RendererRegistry", "name", f"{name!r} is already registered.", "pass replace=True or pick a new name."
            )
        return RendererRegistry(factories={**self.factories, name: factory}, models=self.models)

    def with_model(self, pattern: str, renderer_name: str) -> RendererRegistry:
        """A new registry in which model names matching ``pattern`` (a regex, case-insensitive, anchored at the
        start) use ``renderer_name``; it takes precedence over the existing patterns."""
        if renderer_name not in self.factories:
            raise RenderError(
                "RendererRegistry", "renderer_name", f"{renderer_name!r} is not registered.", "register it first."
            )
        re.compile(pattern)
        return RendererRegistry(factories=self.factories, models=((pattern, renderer_name), *self.models))

    def create(self, name: str, tokenizer: Tokenizer, **options: object) -> Renderer:
        """The renderer ``name`` for ``tokenizer`` (``options`` go to its factory, e.g. ``current_date``)."""
        factory = self.factories.get(name)
        if factory is None:
            raise RenderError(
                "get_renderer", "name", f"unknown renderer {name!r}.", f"use one of {', '.join(self.names())}."
            )
        return factory(tokenizer, **options)

    def renderer_name_for_model(self, model_name: str) -> str:
        """The renderer name for a hub model name (``"Qwen/Qwen3-8B"`` -> ``"qwen3"``); Tinker's variant suffix
        (``":peft:262144"``) is ignored.

        Raises:
            UnknownModelError: no pattern matches; the message names the known model families.
        """
        base = base_model_name(model_name)
        for pattern, name in self.models:
            if re.match(pattern, base, flags=re.IGNORECASE):
                return name
        raise UnknownModelError(
            "renderer_name_for_model",
            "model_name",
            f"no renderer is registered for {model_name!r} (known model families: {'; '.join(MODEL_FAMILIES)}).",
            "pass a renderer name explicitly (e.g. 'chat_template' for a tokenizer with a Jinja chat template), or "
            "register the model with RendererRegistry.with_model().",
        )

    def for_model(self, model_name: str, tokenizer: Tokenizer, **options: object) -> Renderer:
        """The renderer registered for ``model_name``; for a model no pattern knows, the ``chat_template``
        renderer when the tokenizer carries a chat template (``tokenizer.chat_template``).

        Raises:
            UnknownModelError: no pattern matches and the tokenizer has no chat template.
            RenderError: the renderer the model needs is not registered.
        """
        try:
            name = self.renderer_name_for_model(model_name)
        except UnknownModelError:
            if _CHAT_TEMPLATE not in self.factories or not isinstance(getattr(tokenizer, "chat_template", None), str):
                raise
            name = _CHAT_TEMPLATE
        if name not in self.factories:
            raise RenderError(
                "renderer_for_model",
                "model_name",
                f"{model_name!r} uses the {name!r} renderer, which this tinkerflow does not provide.",
                f"pass another renderer name (one of {', '.join(self.names())}), e.g. 'chat_template' with a "
                "tokenizer that carries the model's chat template.",
            )
        return self.create(name, tokenizer, **options)


_CHAT_TEMPLATE: Final = "chat_template"


def _gpt_oss(effort: str | None) -> RendererFactory:
    def factory(tokenizer: Tokenizer, **options: object) -> Renderer:
        return GptOssRenderer(tokenizer, reasoning_effort=effort, **options)  # type: ignore[arg-type]  # options are typed by GptOssRenderer's fields and checked by attrs at run time

    return factory


_BUILT_IN: Final[Mapping[str, RendererFactory]] = {
    "role_colon": RoleColonRenderer,
    "llama3": Llama3Renderer,
    "qwen3": Qwen3Renderer,
    "qwen3_disable_thinking": Qwen3DisableThinkingRenderer,
    "qwen3_instruct": Qwen3InstructRenderer,
    "qwen3_vl": Qwen3VLRenderer,
    "qwen3_vl_instruct": Qwen3VLInstructRenderer,
    "deepseekv3": DeepSeekV3Renderer,
    "deepseekv3_disable_thinking": DeepSeekV3Renderer,
    "deepseekv3_thinking": DeepSeekV3ThinkingRenderer,
    "gpt_oss_no_sysprompt": _gpt_oss(None),
    "gpt_oss_low_reasoning": _gpt_oss("low"),
    "gpt_oss_medium_reasoning": _gpt_oss("medium"),
    "gpt_oss_high_reasoning": _gpt_oss("high"),
    "chatml": ChatMLRenderer,
    "smollm2": SmolLM2Renderer,
    _CHAT_TEMPLATE: ChatTemplateRenderer,
}

_LINEUP_PATTERNS: Final[tuple[tuple[str, str], ...]] = tuple(
    (re.escape(model.name) + "$", model.renderer) for model in LINEUP
)
"""tinker-cookbook 0.6.1's lineup, each exact name first (the cookbook's recommended renderer)."""

_FAMILY_PATTERNS: Final[tuple[tuple[str, str], ...]] = (
    (r"meta-llama/(meta-)?llama-3[^/]*instruct", "llama3"),
    (r"meta-llama/(meta-)?llama-3", "role_colon"),  # base models, as the cookbook renders them
    (r"qwen/qwen3[^/]*-base$", "role_colon"),
    (r"qwen/qwen3-vl-.*instruct", "qwen3_vl_instruct"),
    (r"qwen/qwen3-vl-", "qwen3_vl"),
    (r"qwen/qwen3-.*instruct-2507", "qwen3_instruct"),
    (r"qwen/qwen3\.8-", "qwen3_8_xhigh_reasoning"),
    (r"qwen/qwen3\.[56]-", "qwen3_5"),
    (r"qwen/qwen3-", "qwen3"),
    (r"deepseek-ai/deepseek-v[34][^/]*-base$", "role_colon"),
    (r"deepseek-ai/deepseek-v4\.1", "deepseekv4_1"),
    (r"deepseek-ai/deepseek-v3", "deepseekv3"),
    (r"openai/gpt-oss-", "gpt_oss_no_sysprompt"),
    (r"moonshotai/kimi-k3\.1-pro", "kimi_k31_pro_max_reasoning"),
    (r"moonshotai/kimi-k2\.6", "kimi_k26"),
    (r"moonshotai/kimi-k2\.5", "kimi_k25"),
    (r"moonshotai/kimi-k2", "kimi_k2"),
    (r"zai-org/glm-5\.3", "glm5_3_max_reasoning"),
    (r"nvidia/nvidia-nemotron-3-ultra", "nemotron3_ultra"),
    (r"nvidia/nvidia-nemotron-3\.5-", "nemotron3_ultra"),
    (r"nvidia/nvidia-nemotron-3-", "nemotron3"),
    (r"thinkingmachines/inkling", "tml_v0"),
    (r"huggingfacetb/smollm2-.*instruct", "smollm2"),
    (r"huggingfacetb/smollm2-", "role_colon"),
    (r"(openai-community/)?gpt2", "role_colon"),
)
"""Other names of the same families (first match wins)."""

DEFAULT_REGISTRY: Final[RendererRegistry] = RendererRegistry(
    # the families added for tinker-cookbook 0.6.1 (families_v061) never replace a built-in name
    factories={**EXTRA_FACTORIES, **_BUILT_IN},
    models=(*_LINEUP_PATTERNS, *_FAMILY_PATTERNS),
)


def get_renderer(
    name: str, tokenizer: Tokenizer, *, registry: RendererRegistry = DEFAULT_REGISTRY, **options: object
) -> Renderer:
    """The renderer ``name`` (see ``DEFAULT_REGISTRY.names()``) for ``tokenizer``."""
    return registry.create(name, tokenizer, **options)


def renderer_name_for_model(model_name: str, *, registry: RendererRegistry = DEFAULT_REGISTRY) -> str:
    """The renderer name registered for a hub model name."""
    return registry.renderer_name_for_model(model_name)


def renderer_for_model(
    model_name: str, tokenizer: Tokenizer, *, registry: RendererRegistry = DEFAULT_REGISTRY, **options: object
) -> Renderer:
    """The renderer registered for a hub model name, for ``tokenizer``."""
    return registry.for_model(model_name, tokenizer, **options)
