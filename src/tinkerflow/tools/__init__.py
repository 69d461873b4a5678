"""Tools for agents: typed Python functions with a derived JSON schema, an immutable registry, argument checking
and call execution that turns every failure into an observation.

* :mod:`~tinkerflow.tools.schema`: the JSON schema of a function's parameters, from its signature and docstring.
* :mod:`~tinkerflow.tools.registry`: :class:`Tool`, the :func:`tool` decorator, :class:`ToolRegistry`,
  :class:`ToolResult`.
* :mod:`~tinkerflow.tools.validation`: a call's arguments checked against the schema (typed errors).
* :mod:`~tinkerflow.tools.calls`: :func:`run_call` (a :class:`ToolOutcome` for every call), executors.
* :mod:`~tinkerflow.tools.calculator`: an exact, bounded calculator tool.
* :mod:`~tinkerflow.tools.sandboxing`: sandbox limits and results, and a Python tool over any sandbox (the sandbox
  itself is ``tinkerflow.shell.sandbox``).

Pure: no clock, no processes, no I/O (time limits and sandboxes live in the shell).
"""

from tinkerflow.tools.calculator import CALCULATOR, CalculatorError, calculator, evaluate
from tinkerflow.tools.calls import (
    INLINE,
    InlineExecutor,
    ToolErrorKind,
    ToolExecutor,
    ToolOutcome,
    ToolTimeoutError,
    error_content,
    run_call,
)
from tinkerflow.tools.registry import DEFAULT_TIMEOUT_S, Tool, ToolRegistry, ToolResult, UnknownToolError, tool
from tinkerflow.tools.sandboxing import (
    CodeRunner,
    SandboxLimits,
    SandboxResult,
    SandboxStatus,
    format_result,
    python_tool,
)
from tinkerflow.tools.schema import JsonSchema, parameters_schema, parse_docstring, type_schema
from tinkerflow.tools.validation import ToolArgumentError, check_arguments

__all__ = [
    "CALCULATOR",
    "DEFAULT_TIMEOUT_S",
    "INLINE",
    "CalculatorError",
    "CodeRunner",
    "InlineExecutor",
    "JsonSchema",
    "SandboxLimits",
    "SandboxResult",
    "SandboxStatus",
    "Tool",
    "ToolArgumentError",
    "ToolErrorKind",
    "ToolExecutor",
    "ToolOutcome",
    "ToolRegistry",
    "ToolResult",
    "ToolTimeoutError",
    "UnknownToolError",
    "calculator",
    "check_arguments",
    "error_content",
    "evaluate",
    "format_result",
    "parameters_schema",
    "parse_docstring",
    "python_tool",
    "run_call",
    "tool",
    "type_schema",
]
