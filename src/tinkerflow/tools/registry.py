"""Tools as values: :class:`Tool` (a typed Python function plus its schema), :func:`tool` (the decorator that makes
one) and :class:`ToolRegistry` (an immutable set of tools by name, like the renderer registry).

A tool's function takes keyword arguments (checked against the schema before the call, see
:mod:`tinkerflow.tools.validation`) and returns a string (the tool message's content), any other JSON value
(serialized with ``json.dumps``), or a :class:`ToolResult` (content plus ``done`` and metrics). It may be ``async``.
Declare one like this::

    @tool
    def add(a: int, b: int = 0) -> int:
        \"\"\"Add two integers.

        Args:
            a: the first addend.
            b: the second addend.
        \"\"\"
        return a + b

    registry = ToolRegistry.of(add)           # registry.specs() -> the ToolSpecs a renderer declares
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Final, overload

import attrs

from tinkerflow._validate import closest, require_type
from tinkerflow.chat import ToolSpec
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.tools.schema import JsonSchema, parameters_schema, parse_docstring

__all__ = ["DEFAULT_TIMEOUT_S", "Tool", "ToolRegistry", "ToolResult", "UnknownToolError", "similar_names", "tool"]

#: Seconds a tool call may take by default (enforced by a timed executor, e.g. ``tinkerflow.shell.sandbox``).
DEFAULT_TIMEOUT_S: Final = 10.0


def _metrics(value: Mapping[str, float]) -> dict[str, float]:
    return {str(key): float(number) for key, number in value.items()}


@attrs.frozen
class ToolResult:
    """What a tool function may return instead of plain content.

    Attributes:
        content: the tool message's text.
        done: end the episode after this turn (e.g. a ``submit`` tool).
        metrics: numbers added to the turn's metrics (prefixed ``tool/``).
    """

    content: str
    done: bool = False
    metrics: dict[str, float] = attrs.field(factory=dict, converter=_metrics)

    def __attrs_post_init__(self) -> None:
        require_type(self.content, str, "ToolResult", "content")
        require_type(self.done, bool, "ToolResult", "done")


def _schema_text(value: Mapping[str, object] | str) -> str:
    return value if isinstance(value, str) else json.dumps(dict(value), ensure_ascii=False)


@attrs.frozen
class Tool:
    """A tool the model may call.

    Attributes:
        name: the function name the model writes.
        description: what the tool does (shown to the model).
        parameters: the JSON schema of its arguments (JSON object text; a mapping is serialized).
        function: called with the validated arguments as keywords; may be ``async``.
        timeout_s: seconds one call may take (``None``: no limit); enforced by the executor that runs it.
    """

    name: str
    description: str
    parameters: str = attrs.field(converter=_schema_text)
    function: Callable[..., object] = attrs.field(repr=False)
    timeout_s: float | None = DEFAULT_TIMEOUT_S

    def __attrs_post_init__(self) -> None:
        self.spec()  # validates name, description and the schema text (a JSON object)
        if not callable(self.function):
            raise ConfigError(f"Tool[{self.name}]", "function", f"is not callable: {self.function!r}.")
        if self.timeout_s is not None and (
            isinstance(self.timeout_s, bool)
            or not isinstance(self.timeout_s, int | float)
            or not math.isfinite(self.timeout_s)
            or self.timeout_s <= 0
        ):
            raise ConfigError(
                f"Tool[{self.name}]", "timeout_s", f"must be a positive number or None, got {self.timeout_s!r}."
            )

    def spec(self) -> ToolSpec:
        """The :class:`~tinkerflow.chat.ToolSpec` a renderer declares to the model."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def schema(self) -> JsonSchema:
        """The parameter schema, parsed."""
        parsed: JsonSchema = json.loads(self.parameters)
        return parsed

    @classmethod
    def from_function(
        cls,
        function: Callable[..., object],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
    ) -> Tool:
        """A tool from a typed function: the schema from its signature, the description from its docstring's
        summary (see :mod:`tinkerflow.tools.schema`)."""
        tool_name = name if name is not None else getattr(function, "__name__", "")
        summary, _ = parse_docstring(inspect.getdoc(function))
        return cls(
            name=tool_name,
            description=summary if description is None else description,
            parameters=parameters_schema(function, tool_name),
            function=function,
            timeout_s=timeout_s,
        )


@overload
def tool(function: Callable[..., object], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> Callable[[Callable[..., object]], Tool]: ...


def tool(
    function: Callable[..., object] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> Tool | Callable[[Callable[..., object]], Tool]:
    """Decorator: ``@tool`` or ``@tool(name=..., timeout_s=...)`` turns a typed function into a :class:`Tool`
    (:meth:`Tool.from_function`)."""

    def make(target: Callable[..., object]) -> Tool:
        return Tool.from_function(target, name=name, description=description, timeout_s=timeout_s)

    return make(function) if function is not None else make


def similar_names(name: str, known: Iterable[str]) -> list[str]:
    """The known names close to ``name``: close spellings (``difflib``), else names that contain it or that it
    contains (``calc`` -> ``calculator``)."""
    names = list(known)
    close = closest(name, names)
    if close or not name:
        return close
    lowered = name.lower()
    return [known_name for known_name in names if lowered in known_name.lower() or known_name.lower() in lowered][:3]


class UnknownToolError(ValidationError):
    """A call names a tool the registry does not hold (the fix names the closest ones)."""


def _freeze(value: Mapping[str, Tool]) -> Mapping[str, Tool]:
    return MappingProxyType(dict(value))


@attrs.frozen
class ToolRegistry:
    """Tools by name, immutable: :meth:`with_tool` returns a new registry. Order is kept (it is the order the
    renderer declares them in)."""

    tools: Mapping[str, Tool] = attrs.field(factory=dict, converter=_freeze)

    def __attrs_post_init__(self) -> None:
        for key, value in self.tools.items():
            require_type(value, Tool, "ToolRegistry", f"tools[{key!r}]")
            if value.name != key:
                raise ConfigError("ToolRegistry", f"tools[{key!r}]", f"holds the tool named {value.name!r}.")

    @classmethod
    def of(cls, *tools: Tool | Callable[..., object]) -> ToolRegistry:
        """A registry of ``tools`` (plain functions are made tools with :func:`tool`); names must be unique."""
        registry = cls()
        for item in tools:
            registry = registry.with_tool(item if isinstance(item, Tool) else tool(item))
        return registry

    def with_tool(self, item: Tool, *, replace: bool = False) -> ToolRegistry:
        """A new registry that also holds ``item``; ``replace=True`` to override a tool of the same name."""
        require_type(item, Tool, "ToolRegistry.with_tool", "tool")
        if item.name in self.tools and not replace:
            raise ConfigError(
                "ToolRegistry", "name", f"{item.name!r} is already registered.", "pass replace=True or rename it."
            )
        return ToolRegistry({**self.tools, item.name: item})

    def without(self, name: str) -> ToolRegistry:
        """A new registry without the tool ``name``."""
        self.get(name)
        return ToolRegistry({key: value for key, value in self.tools.items() if key != name})

    def names(self) -> tuple[str, ...]:
        return tuple(self.tools)

    def get(self, name: str) -> Tool:
        """The tool ``name``; :class:`UnknownToolError` (with the closest names) when there is none."""
        found = self.tools.get(name)
        if found is None:
            close = similar_names(name, self.tools)
            hint = f"did you mean {' or '.join(repr(item) for item in close)}? " if close else ""
            known = ", ".join(self.tools) or "none"
            raise UnknownToolError("tools", name, "is not a known tool.", f"{hint}Known tools: {known}.")
        return found

    def specs(self) -> tuple[ToolSpec, ...]:
        """The specs of every tool, in order."""
        return tuple(item.spec() for item in self.tools.values())

    def __len__(self) -> int:
        return len(self.tools)

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self.tools.values())
