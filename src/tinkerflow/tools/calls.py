"""Running a model's tool calls: each call becomes a :class:`ToolOutcome` and then a ``tool`` message, never an
exception.

:func:`run_call` looks the tool up (:class:`~tinkerflow.tools.registry.UnknownToolError`), checks the arguments
(:class:`~tinkerflow.tools.validation.ToolArgumentError`), then has an executor call the function. Whatever goes
wrong becomes an outcome with an ``error`` kind and an error observation for the model::

    {"error": "invalid_arguments", "message": "add.arguments.b: must be an integer, got a string 'x'."}

Kinds: ``unknown_tool``, ``invalid_arguments``, ``timeout`` (the executor's limit), ``execution_failed`` (the
function raised), ``bad_result`` (it returned something that is not a string, JSON value or
:class:`~tinkerflow.tools.registry.ToolResult`).

Executors (:class:`ToolExecutor`) decide *how* a function runs. :data:`INLINE` calls it on the spot (an ``async``
function is awaited) with no time limit; ``tinkerflow.shell.sandbox.TimedToolExecutor`` enforces each tool's
``timeout_s``. The core does not keep time, so a limit is always the shell's job.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Final, Literal, Protocol, TypeAlias

import attrs

from tinkerflow.chat import Message, ToolCall
from tinkerflow.errors import TinkerflowError
from tinkerflow.tools.registry import Tool, ToolRegistry, ToolResult, UnknownToolError
from tinkerflow.tools.validation import ToolArgumentError, check_arguments

__all__ = [
    "INLINE",
    "InlineExecutor",
    "ToolErrorKind",
    "ToolExecutor",
    "ToolOutcome",
    "ToolTimeoutError",
    "error_content",
    "run_call",
]

ToolErrorKind: TypeAlias = Literal["unknown_tool", "invalid_arguments", "timeout", "execution_failed", "bad_result"]

#: The longest error message put in an observation (longer ones are cut, with a marker).
MAX_ERROR_CHARS: Final = 2000


class ToolTimeoutError(TinkerflowError, TimeoutError):
    """A tool call ran past its time limit (raised by timed executors)."""


class ToolExecutor(Protocol):
    """Runs one tool function with checked arguments and returns what it returned (awaited when async)."""

    async def __call__(self, tool: Tool, arguments: Mapping[str, object]) -> object: ...


class InlineExecutor:
    """Calls the function on the spot, awaiting it when it is async; no time limit (the core keeps no clock)."""

    async def __call__(self, tool: Tool, arguments: Mapping[str, object]) -> object:
        result = tool.function(**arguments)
        if inspect.isawaitable(result):
            result = await result
        return result


#: The executor used when none is given.
INLINE: Final = InlineExecutor()


def error_content(kind: ToolErrorKind, message: str) -> str:
    """The observation of a failed call: ``{"error": kind, "message": ...}`` (the message cut at
    :data:`MAX_ERROR_CHARS`)."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + " [... cut]"
    return json.dumps({"error": kind, "message": message}, ensure_ascii=False)


@attrs.frozen
class ToolOutcome:
    """The result of one tool call.

    Attributes:
        call: the call as the model wrote it.
        content: the tool message's text (the result, or :func:`error_content`).
        error: the error kind, ``None`` for a successful call.
        done: the tool asked to end the episode.
        metrics: the tool's own metrics.
    """

    call: ToolCall
    content: str
    error: ToolErrorKind | None = None
    done: bool = False
    metrics: Mapping[str, float] = attrs.field(factory=dict)

    def message(self, call_id: str) -> Message:
        """The ``tool`` message answering the call (``call_id`` when the call carried none)."""
        return Message(role="tool", content=self.content, tool_call_id=self.call.id or call_id, name=self.call.name)


def _result_outcome(call: ToolCall, result: object) -> ToolOutcome:
    if isinstance(result, ToolResult):
        return ToolOutcome(call, result.content, done=result.done, metrics=result.metrics)
    if isinstance(result, str):
        return ToolOutcome(call, result)
    try:
        return ToolOutcome(call, json.dumps(result, ensure_ascii=False))
    except (TypeError, ValueError) as error:
        problem = f"the tool returned {type(result).__name__}, which is not JSON ({error})."
        return ToolOutcome(call, error_content("bad_result", problem), error="bad_result")


async def run_call(registry: ToolRegistry, call: ToolCall, executor: ToolExecutor = INLINE) -> ToolOutcome:
    """One call, run (see the module docstring): an outcome for every call, an exception for none except
    cancellation."""
    try:
        found = registry.get(call.name)
    except UnknownToolError as error:
        return ToolOutcome(call, error_content("unknown_tool", str(error)), error="unknown_tool")
    try:
        arguments = check_arguments(found.name, found.schema(), call.arguments_dict())
    except ToolArgumentError as error:
        return ToolOutcome(call, error_content("invalid_arguments", str(error)), error="invalid_arguments")
    try:
        result = await executor(found, arguments)
    except TimeoutError as error:
        limit = f" of {found.timeout_s:g} s" if found.timeout_s is not None else ""
        detail = str(error) or f"the call ran past its time limit{limit}."
        return ToolOutcome(call, error_content("timeout", detail), error="timeout")
    except Exception as error:  # the tool's own failure becomes an observation, never a crash of the episode
        detail = f"{type(error).__name__}: {error}"
        return ToolOutcome(call, error_content("execution_failed", detail), error="execution_failed")
    return _result_outcome(call, result)
