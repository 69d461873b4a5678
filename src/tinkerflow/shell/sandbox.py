"""Running untrusted Python (model-written code) in a subprocess with limits, and tool calls with time limits.

:class:`PythonSandbox` runs a program in a fresh interpreter (``python -I -S -B``: no environment variables, no
site-packages, no bytecode writes) in a fresh temporary directory (its working directory, removed afterwards) with
a minimal environment (no inherited secrets), in its own process group, and returns a
:class:`~tinkerflow.tools.sandboxing.SandboxResult`. The layers, from the kernel up:

* **resource limits** (``setrlimit`` before ``exec``): ``RLIMIT_CPU`` (killed past ``cpu_s``: ``timeout``),
  ``RLIMIT_AS`` (allocations fail past ``memory_bytes``: ``memory``), ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` (64),
  ``RLIMIT_CORE`` (0) and ``RLIMIT_NPROC`` (``max_processes``, 0 by default: no fork, no thread);
* **another user**: when the parent is root, the program drops to uid/gid 65534 (``nobody``) before running the
  code: ``RLIMIT_NPROC`` is ignored for root, and file permissions then keep it out of everything it does not own;
* **no network namespace interfaces**: when ``unshare --net`` works (root, or unprivileged user namespaces), the
  program runs in a new network namespace, which has no interface but a down loopback;
* **an audit hook** (:pep:`578`), installed before the code runs, that ends the program (status ``refused``,
  exit code 101, the refused operation on stderr) on: creating or using a socket or resolving a name; creating a
  process (``fork``, ``exec``, ``posix_spawn``, ``system``, ``subprocess``), sending a signal; opening a file for
  writing, or renaming, removing, linking, ``chmod``-ing a path, outside its directory; opening a directory
  outside it; loading ``ctypes`` or a native library; walking the garbage collector's objects;
* **the parent's clock and byte counts**: the process group is killed past ``wall_s`` (``timeout``) or when a
  stream exceeds ``4 * output_bytes`` (``killed``); each stream is cut at ``output_bytes``.

What it does **not** guarantee: the audit hook runs inside the sandboxed interpreter, so code that reaches native
execution some other way (a C extension importable from the standard library that performs raw system calls
without raising audit events) or that tampers with the interpreter's memory could evade it; reads are not
restricted (the code can read any file its user may read, so do not run it where secrets are readable by that
user); without root and without ``unshare``, the network refusal rests on the audit hook alone. For untrusted
code at scale, run the whole trainer's sandbox inside a container or VM (gVisor, Firecracker, nsjail) as well.

:class:`TimedToolExecutor` is the executor of :func:`tinkerflow.tools.run_call` that enforces each tool's
``timeout_s``: async tools are cancelled at their next ``await``, synchronous ones run on a daemon thread that is
abandoned when late (a thread cannot be killed, so CPU-heavy tools belong in the sandbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from tinkerflow.tools.calls import ToolTimeoutError
from tinkerflow.tools.registry import Tool
from tinkerflow.tools.sandboxing import SandboxLimits, SandboxResult, SandboxStatus

__all__ = ["MEMORY_EXIT", "REFUSED_EXIT", "PythonSandbox", "SandboxLimits", "SandboxResult", "TimedToolExecutor"]

#: Exit code of a program the audit hook stopped.
REFUSED_EXIT: Final = 101
#: Exit code of a program that ran out of memory (``MemoryError``).
MEMORY_EXIT: Final = 102
#: The uid and gid a root parent drops the program to.
NOBODY: Final = 65534
_OPEN_FILES: Final = 64
_CHUNK: Final = 65536
#: How long the pipes are read to their end after the program's group was killed.
_FINISH_S: Final = 2.0

#: Standard-library modules imported before the program drops to ``nobody`` (a root parent's interpreter often
#: lives where ``nobody`` cannot read, e.g. under ``/root``; other modules then fail to import).
PRELOAD: Final[tuple[str, ...]] = (
    "abc", "array", "base64", "bisect", "calendar", "cmath", "collections", "collections.abc", "contextlib", "copy",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "encodings.ascii", "encodings.idna", "encodings.latin_1",
    "enum", "fractions", "functools", "glob", "hashlib", "heapq", "io", "itertools", "json", "linecache", "math",
    "numbers", "operator", "pathlib", "pprint", "random", "re", "shutil", "socket", "statistics", "string", "struct",
    "subprocess", "tempfile", "textwrap", "threading", "time", "traceback", "types", "typing", "unittest",
)  # fmt: skip

# The program the sandboxed interpreter runs: argv = [root, uid or "", audit "1"/"0", preload (comma-separated)];
# the code is root/main.py.
_BOOTSTRAP: Final = r"""
import os, sys
def _sandbox(root, uid, audit, preload):
    with open(os.path.join(root, "main.py"), "rb") as handle:
        source = handle.read()
    for name in preload:
        try:
            __import__(name)
        except Exception:
            pass
    if uid:
        os.setgroups([]); os.setgid(int(uid)); os.setuid(int(uid))
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    network = {"socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
               "socket.gethostbyaddr", "socket.gethostbyname_ex", "socket.getnameinfo", "socket.sendto",
               "socket.sethostname"}
    processes = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill",
                 "os.killpg", "subprocess.Popen", "pty.spawn", "os.startfile"}
    native = {"ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "gc.get_objects",
              "gc.get_referrers", "gc.get_referents"}
    paths = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.truncate", "os.chmod",
             "os.chown", "os.utime", "os.chflags", "os.lchflags", "os.lchmod", "os.setxattr", "os.removexattr",
             "shutil.rmtree", "shutil.copyfile", "shutil.copytree", "shutil.move", "shutil.copymode",
             "shutil.copystat", "os.mkfifo", "os.mknod"}
    def inside(path):
        if isinstance(path, int):
            return True
        full = os.path.realpath(os.fsdecode(path))
        return full == root or full.startswith(root + os.sep)
    def refuse(event, args):
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        os.write(2, ("sandbox: refused " + event + " " + repr(args)[:300] + "\n").encode("utf-8", "replace"))
        os._exit(101)
    def hook(event, args):
        if event in network or event in processes or event in native:
            refuse(event, args)
        elif event == "import" and args[0].split(".")[0] in ("ctypes", "_ctypes"):
            refuse(event, args)
        elif event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & writes)
            if path is not None and not inside(path):
                if writing or os.path.isdir(os.fsdecode(path)):
                    refuse(event, args)
        elif event in paths:
            for value in args:
                if isinstance(value, (str, bytes, os.PathLike)) and not inside(value):
                    refuse(event, args)
    if audit:
        sys.addaudithook(hook)
    namespace = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
    try:
        exec(compile(source, "main.py", "exec"), namespace)
    except MemoryError:
        os.write(2, b"MemoryError: the sandbox's memory limit was reached\n")
        os._exit(102)
_sandbox_args = sys.argv[1:]
_sandbox(os.path.realpath(_sandbox_args[0]), _sandbox_args[1], _sandbox_args[2] == "1", _sandbox_args[3].split(","))
"""


@functools.cache
def network_namespace_available() -> bool:
    """Whether ``unshare --net`` can start a program here (probed once per process)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        probe = subprocess.run(  # a fixed argv
            [unshare, "--net", "--", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def _set_limits(limits: SandboxLimits) -> Callable[[], None]:
    cpu = max(1, math.ceil(limits.cpu_s))

    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (_OPEN_FILES, _OPEN_FILES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))

    return apply


class _Stream:
    """One output stream, read to its end: the first ``keep`` bytes kept, the rest counted."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.data = bytearray()
        self.total = 0

    async def drain(self, reader: asyncio.StreamReader, hard: int, overflow: Callable[[], None]) -> None:
        while chunk := await reader.read(_CHUNK):
            room = self.keep - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            self.total += len(chunk)
            if self.total > hard:
                overflow()
                return

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", "replace")


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _finish_pipes(process: asyncio.subprocess.Process) -> None:
    """Read both pipes to their end and let their transports close on this event loop.

    A drain that stopped early (too much output, the wall clock) can leave a pipe transport paused and open; the
    garbage collector would close it later, after ``asyncio.run`` closed the loop, and its ``__del__`` then raises
    ``RuntimeError('Event loop is closed')`` (seen as an unraisable exception at interpreter exit). The program's
    group is dead by now, so only what it left in the pipe buffers remains; a process that left the group and
    still holds a pipe is not waited for past ``_FINISH_S``.
    """

    async def finish(reader: asyncio.StreamReader | None) -> None:
        while reader is not None and await reader.read(_CHUNK):
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(finish(process.stdout), finish(process.stderr)), _FINISH_S)
    await asyncio.sleep(0)  # the transports' connection_lost callbacks run on the next turn of the loop


def _status(code: int, timed_out: bool, overflowed: bool, limits: SandboxLimits) -> tuple[SandboxStatus, str]:
    if timed_out:
        return "timeout", f"wall-clock limit of {limits.wall_s:g} s"
    if overflowed:
        return "killed", f"more than {4 * limits.output_bytes} bytes of output"
    if code == 0:
        return "ok", ""
    if code == REFUSED_EXIT:
        return "refused", "a forbidden operation (see stderr)"
    if code == MEMORY_EXIT:
        return "memory", f"memory limit of {limits.memory_bytes} bytes"
    if code == -signal.SIGXCPU:
        return "timeout", f"CPU time limit of {limits.cpu_s:g} s"
    if code == -signal.SIGXFSZ:
        return "killed", f"file size limit of {limits.file_bytes} bytes"
    if code < 0:
        return "killed", f"signal {signal.Signals(-code).name}"
    return "error", f"exit code {code}"


class PythonSandbox:
    """Runs Python programs under :class:`~tinkerflow.tools.sandboxing.SandboxLimits` (see the module docstring);
    a :class:`~tinkerflow.tools.sandboxing.CodeRunner`.

    Args:
        limits: what each run may use.
        python: the interpreter (default: this one).
        base_dir: where the per-run temporary directories are made (default: the system's).
        audit_hook: install the audit hook (turn it off only to test the other layers).
        network_namespace: run in a new network namespace; ``None``: when available.
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        python: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        audit_hook: bool = True,
        network_namespace: bool | None = None,
    ) -> None:
        self.limits = limits if limits is not None else SandboxLimits()
        self.python = python or sys.executable
        self.base_dir = base_dir
        self.audit_hook = audit_hook
        self.network_namespace = network_namespace

    def _argv(self, root: str) -> list[str]:
        uid = str(NOBODY) if os.geteuid() == 0 else ""
        argv = [self.python, "-I", "-S", "-B", "-X", "utf8", "-c", _BOOTSTRAP, root, uid]
        argv += ["1" if self.audit_hook else "0", ",".join(PRELOAD)]
        isolate = self.network_namespace
        if isolate is None:
            isolate = not self.limits.network and network_namespace_available()
        if isolate:
            argv = ["unshare", "--net", "--", *argv]
        return argv

    async def run(self, code: str) -> SandboxResult:
        """Run ``code`` (see the module docstring); never raises for anything the code does."""
        root = tempfile.mkdtemp(prefix="tinkerflow-sandbox-", dir=self.base_dir)
        try:
            Path(root, "main.py").write_text(code, encoding="utf-8")
            if os.geteuid() == 0:
                os.chown(root, NOBODY, NOBODY)
            os.chmod(root, 0o700)
            return await self._run_in(os.path.realpath(root))
        finally:
            shutil.rmtree(root, ignore_errors=True)

    async def _run_in(self, root: str) -> SandboxResult:
        limits = self.limits
        env = {"PATH": os.defpath, "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8"}
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv(root),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=root,
                env=env,
                preexec_fn=_set_limits(limits),  # setrlimit must run in the child
                start_new_session=True,
            )
        except OSError as error:
            return SandboxResult("error", None, "", "", False, f"could not start the interpreter: {error}")
        out, err = _Stream(limits.output_bytes), _Stream(limits.output_bytes)
        overflowed = False

        def overflow() -> None:
            nonlocal overflowed
            overflowed = True
            _kill_group(process)

        assert process.stdout is not None
        assert process.stderr is not None
        hard = 4 * limits.output_bytes
        timed_out = False
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    out.drain(process.stdout, hard, overflow), err.drain(process.stderr, hard, overflow), process.wait()
                ),
                limits.wall_s,
            )
        except TimeoutError:
            timed_out = True
        finally:
            _kill_group(process)  # also ends anything the program left behind in its group
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
            await _finish_pipes(process)
        code = process.returncode if process.returncode is not None else -signal.SIGKILL
        status, detail = _status(code, timed_out, overflowed, limits)
        truncated = out.total > len(out.data) or err.total > len(err.data)
        return SandboxResult(status, code, out.text(), err.text(), truncated, detail)

    def run_sync(self, code: str) -> SandboxResult:
        """:meth:`run` from synchronous code (starts its own event loop)."""
        return asyncio.run(self.run(code))


async def _on_daemon_thread(function: Callable[..., object], arguments: Mapping[str, object]) -> object:
    """``function(**arguments)`` on a new daemon thread (abandoned, not joined, when its awaiter gives up)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[object] = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result = function(**arguments)
        except BaseException as error:  # handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                loop.call_soon_threadsafe(settle, None, error)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="tinkerflow-tool", daemon=True).start()
    return await future


class TimedToolExecutor:
    """Runs a tool under its ``timeout_s`` (``default_timeout_s`` for tools without one; ``None``: no limit);
    past it the call raises :class:`~tinkerflow.tools.ToolTimeoutError`, which :func:`~tinkerflow.tools.run_call`
    turns into a ``timeout`` observation. Synchronous functions run on a daemon thread (``threads=False``: on
    the event loop, where a blocking one cannot be interrupted)."""

    def __init__(self, default_timeout_s: float | None = None, *, threads: bool = True) -> None:
        self.default_timeout_s = default_timeout_s
        self.threads = threads

    async def __call__(self, tool: Tool, arguments: Mapping[str, object]) -> object:
        limit = tool.timeout_s if tool.timeout_s is not None else self.default_timeout_s

        async def call() -> object:
            if inspect.iscoroutinefunction(tool.function) or not self.threads:
                result = tool.function(**arguments)
            else:
                result = await _on_daemon_thread(tool.function, arguments)
            if inspect.isawaitable(result):
                result = await result
            return result

        try:
            return await asyncio.wait_for(call(), limit)
        except TimeoutError as error:
            raise ToolTimeoutError(f"{tool.name} ran past its time limit of {limit:g} s.") from error
