"""Which models a server offers, under which Tinker names. (Shell.)

``tinkerflow serve --model Qwen/Qwen3-8B=/models/qwen3-8b`` serves the model in that folder under the name the
SDK and the cookbook use. Without ``--model`` a server offers the embedded SmolLM2-135M-Instruct (as
``HuggingFaceTB/SmolLM2-135M-Instruct`` and ``SmolLM2-135M-Instruct``) and the tiny test models
(``tiny-llama``, ``tiny-qwen3`` and their ``tiny-qwen3:hidden=64,...`` variants). A source is anything the local
backend loads: a folder, a tiny spec, the embedded model's name or a hub name (with the hub or its cache).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from tinkerflow.shell.backends.local.embedded import EMBEDDED_MODEL
from tinkerflow.shell.serve.errors import ServeError

__all__ = ["DEFAULT_MODELS", "ModelCatalog", "parse_model_option"]

_TINY: Final = ("tiny-llama", "tiny-qwen3")
DEFAULT_MODELS: Final[Mapping[str, str]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": EMBEDDED_MODEL,
    EMBEDDED_MODEL: EMBEDDED_MODEL,
    "tiny-llama": "tiny-llama",
    "tiny-qwen3": "tiny-qwen3",
}


def _is_tiny(name: str) -> bool:
    return name.split(":", 1)[0] in _TINY


def parse_model_option(option: str) -> tuple[str, str]:
    """``NAME=SOURCE`` (or a bare ``NAME``, served from itself) as ``(name, source)``.

    Raises:
        ServeError: when a part is empty.
    """
    name, sep, source = option.partition("=")
    name, source = name.strip(), source.strip()
    if not name or (sep and not source):
        raise ServeError(400, "--model", f"{option!r} must be NAME=SOURCE (a folder, tiny spec or model name).")
    return name, source or name


@attrs.frozen
class ModelCatalog:
    """Served names and the local sources behind them.

    Attributes:
        entries: served name -> source.
        allow_tiny: also serve any ``tiny-llama:...`` / ``tiny-qwen3:...`` spec by its own name.
    """

    entries: Mapping[str, str] = attrs.field(factory=lambda: dict(DEFAULT_MODELS))
    allow_tiny: bool = True

    @classmethod
    def from_options(cls, options: Iterable[str], *, include_defaults: bool) -> ModelCatalog:
        """A catalog of ``--model NAME=SOURCE`` options, on top of the defaults when ``include_defaults``."""
        entries = dict(DEFAULT_MODELS) if include_defaults else {}
        entries.update(parse_model_option(option) for option in options)
        return cls(entries=entries, allow_tiny=include_defaults)

    def source(self, name: object, field: str = "base_model") -> str:
        """The source served under ``name``.

        Raises:
            ServeError: 400 naming ``field`` when no model is served under ``name``.
        """
        if isinstance(name, str) and name in self.entries:
            return self.entries[name]
        if isinstance(name, str) and self.allow_tiny and _is_tiny(name):
            return name
        raise ServeError(
            400,
            field,
            f"this server does not serve {name!r}; it serves {sorted(self.entries)}. "
            "Start it with --model NAME=SOURCE to add one.",
        )

    def served_name(self, source: str) -> str:
        """The first served name of ``source`` (the source itself if none)."""
        for name, served_source in self.entries.items():
            if served_source == source:
                return name
        return source

    def names(self) -> list[str]:
        """Every served name, sorted."""
        return sorted(self.entries)
