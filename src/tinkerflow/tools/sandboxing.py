"""The records of sandboxed code execution, and a Python tool over any sandbox.

The core only describes execution; ``tinkerflow.shell.sandbox.PythonSandbox`` performs it (a subprocess with
resource limits). Environments take a :class:`CodeRunner`, so tests can pass a fake one and the shell passes the
real sandbox.

* :class:`SandboxLimits`: CPU seconds, address-space bytes, wall-clock seconds, output bytes, file size,
  processes.
* :class:`SandboxResult`: ``status`` (``ok``, ``timeout``, ``memory``, ``killed``, ``refused``, ``error``), the
  exit code, stdout and stderr (each cut at the output limit), and a one-line ``detail``.
* :func:`python_tool`: a ``run_python(code)`` tool whose observation is the status, stdout and stderr.
"""

from __future__ import annotations

import math
from typing import Final, Literal, Protocol, TypeAlias

import attrs

from tinkerflow._validate import require_type
from tinkerflow.errors import ConfigError
from tinkerflow.tools.registry import Tool, ToolResult

__all__ = ["CodeRunner", "SandboxLimits", "SandboxResult", "SandboxStatus", "format_result", "python_tool"]

SandboxStatus: TypeAlias = Literal["ok", "timeout", "memory", "killed", "refused", "error"]
STATUSES: Final[frozenset[str]] = frozenset({"ok", "timeout", "memory", "killed", "refused", "error"})


def _positive(where: str, field: str, value: object, *, whole: bool = False) -> None:
    kind = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        noun = "a positive int" if whole else "a positive number"
        raise ConfigError(where, field, f"must be {noun}, got {value!r}.")


@attrs.frozen
class SandboxLimits:
    """What one sandboxed run may use.

    Attributes:
        cpu_s: CPU seconds (``RLIMIT_CPU``; the process is killed past it: status ``timeout``).
        wall_s: wall-clock seconds (the process group is killed past it: status ``timeout``).
        memory_bytes: address space (``RLIMIT_AS``; allocation fails past it: status ``memory``).
        output_bytes: bytes kept of stdout and of stderr each; a run writing more than ``4 *`` this is killed
            (status ``killed``).
        file_bytes: largest file the code may write in its directory (``RLIMIT_FSIZE``).
        max_processes: ``RLIMIT_NPROC`` of the run (0: it cannot fork or start threads).
        network: ``False`` refuses sockets (and runs in a network namespace without interfaces where possible).
    """

    cpu_s: float = 5.0
    wall_s: float = 10.0
    memory_bytes: int = 512 * 2**20
    output_bytes: int = 16 * 2**10
    file_bytes: int = 16 * 2**20
    max_processes: int = 0
    network: bool = False

    def __attrs_post_init__(self) -> None:
        where = "SandboxLimits"
        for field in ("cpu_s", "wall_s"):
            _positive(where, field, getattr(self, field))
        for field in ("memory_bytes", "output_bytes", "file_bytes"):
            _positive(where, field, getattr(self, field), whole=True)
        if isinstance(self.max_processes, bool) or not isinstance(self.max_processes, int) or self.max_processes < 0:
            raise ConfigError(where, "max_processes", f"must be an int >= 0, got {self.max_processes!r}.")
        if self.memory_bytes < 64 * 2**20:
            raise ConfigError(where, "memory_bytes", "must be at least 64 MiB (the interpreter needs it to start).")
        require_type(self.network, bool, where, "network")


@attrs.frozen
class SandboxResult:
    """One run's result.

    Attributes:
        status: ``ok`` (exit code 0), ``timeout`` (CPU or wall-clock limit), ``memory`` (memory limit),
            ``killed`` (a signal, or more output than allowed), ``refused`` (a forbidden operation: network,
            process creation, a write outside the run's directory), ``error`` (the code failed, e.g. an exception
            or a failing assertion).
        exit_code: the process's exit code (negative: killed by that signal), ``None`` when it never started.
        stdout / stderr: decoded output, each cut at ``output_bytes``.
        truncated: some output was cut.
        detail: one line on why the run ended (the limit hit, the operation refused).
    """

    status: SandboxStatus
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    detail: str = ""

    def __attrs_post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ConfigError("SandboxResult", "status", f"must be one of {sorted(STATUSES)}, got {self.status!r}.")

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class CodeRunner(Protocol):
    """Runs Python source in a sandbox (``tinkerflow.shell.sandbox.PythonSandbox`` is one)."""

    async def run(self, code: str) -> SandboxResult: ...


def format_result(result: SandboxResult) -> str:
    """The observation of a run: its status (and detail), then stdout and stderr when not empty."""
    head = f"status: {result.status}" + (f" ({result.detail})" if result.detail else "")
    parts = [head]
    if result.stdout:
        parts.append("stdout:\n" + result.stdout)
    if result.stderr:
        parts.append("stderr:\n" + result.stderr)
    return "\n".join(parts)


def python_tool(runner: CodeRunner, *, name: str = "run_python", timeout_s: float | None = None) -> Tool:
    """A tool that runs Python code with ``runner`` and answers :func:`format_result`. The sandbox enforces its
    own limits, so the tool's ``timeout_s`` is ``None`` by default (a timed executor adds none)."""

    async def run_python(code: str) -> ToolResult:
        """Run a Python program in a sandbox and return its status, stdout and stderr.

        Args:
            code: the program's source; print what you want to see. No network, no subprocesses, files only in
                the current directory.
        """
        result = await runner.run(code)
        return ToolResult(format_result(result), metrics={f"sandbox_{result.status}": 1.0})

    return Tool.from_function(run_python, name=name, timeout_s=timeout_s)
