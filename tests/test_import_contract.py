"""The dependency rule, enforced: the functional core performs no effects.

Every module of ``src/tinkerflow`` outside ``tinkerflow/shell/`` and ``tinkerflow/cli.py`` is the *core*. The core
is read as source (AST), not imported: a runtime check would be fooled by jaxtyping and beartype, which load asyncio
themselves, and would miss imports inside functions and ``TYPE_CHECKING`` blocks, which this check sees.

A core module may not

* import torch, transformers, huggingface_hub, datasets, the tinker client (only ``tinkerflow/interop.py``, the
  boundary, may import ``tinker.types``), asyncio, threading, concurrent.futures, multiprocessing, mmap, socket,
  subprocess, a clock (``time``), or anything under ``tinkerflow.shell``, directly or through
  ``importlib.import_module`` / ``__import__``;
* call ``open()``, ``io.open``, ``os.open``, ``os.getenv`` or a path's ``open`` / ``read_*`` / ``write_*``;
* read ``os.environ`` (or ``os.environb``);
* ask for the time (``datetime.now()`` / ``utcnow()`` / ``today()``).
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import attrs
import pytest

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "tinkerflow"

#: Top-level modules (and dotted prefixes) the core may not import.
FORBIDDEN_MODULES = (
    "torch",
    "transformers",
    "huggingface_hub",
    "datasets",
    "peft",
    "safetensors",
    "tinker",
    "asyncio",
    "threading",
    "concurrent",
    "multiprocessing",
    "mmap",
    "socket",
    "subprocess",
    "time",
    "tinkerflow.shell",
)

#: Where ``tinker.types`` may be imported: the conversion boundary.
INTEROP_MODULES = frozenset({"tinkerflow/interop.py"})

#: Names whose call does I/O: builtins, and attribute calls on any object (paths, ``io``, ``os``).
FORBIDDEN_CALLS = frozenset({"open", "getenv", "putenv", "read_text", "read_bytes", "write_text", "write_bytes"})
CLOCK_CALLS = frozenset({"now", "utcnow", "today"})
ENVIRONMENT_NAMES = frozenset({"environ", "environb"})


@attrs.frozen
class Violation:
    module: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


def is_core(relative: str) -> bool:
    """Whether the module at ``relative`` (a path under ``src/``, with ``/``) belongs to the core."""
    return not (relative.startswith("tinkerflow/shell/") or relative == "tinkerflow/cli.py")


def _module_name(relative: str) -> str:
    parts = relative.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _forbidden(module: str, relative: str) -> str | None:
    """The forbidden prefix ``module`` falls under, if any (``tinker.types`` is allowed at the boundary)."""
    if relative in INTEROP_MODULES and (module == "tinker.types" or module.startswith("tinker.types.")):
        return None
    for name in FORBIDDEN_MODULES:
        if module == name or module.startswith(name + "."):
            return name
    return None


def _resolve(node: ast.ImportFrom, relative: str) -> str:
    if node.level == 0:
        return node.module or ""
    package = _module_name(relative).split(".")
    if not relative.endswith("__init__.py"):
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imported(node: ast.AST, relative: str) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        module = _resolve(node, relative)
        yield module
        yield from (f"{module}.{alias.name}" for alias in node.names)
    elif isinstance(node, ast.Call):
        func = node.func
        dynamic = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
            isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}
        )
        if dynamic and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            yield node.args[0].value


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def violations(source: str, relative: str) -> list[Violation]:
    """Every way the module with ``source`` (at ``relative`` under ``src/``) breaks the core's rule."""
    found: list[Violation] = []
    for node in ast.walk(ast.parse(source, filename=relative)):
        line = getattr(node, "lineno", 0)
        for module in _imported(node, relative):
            name = _forbidden(module, relative)
            if name is not None:
                found.append(Violation(relative, line, f"imports {module} (forbidden: {name})"))
                break
        if isinstance(node, ast.Call):
            call = _call_name(node)
            if call in FORBIDDEN_CALLS:
                found.append(Violation(relative, line, f"calls {call}() (file or environment I/O)"))
            elif call in CLOCK_CALLS and isinstance(node.func, ast.Attribute):
                found.append(Violation(relative, line, f"calls .{call}() (reads the clock)"))
        if isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_NAMES:
            found.append(Violation(relative, line, f"reads os.{node.attr}"))
        if isinstance(node, ast.ImportFrom) and _resolve(node, relative) == "os":
            taken = sorted(alias.name for alias in node.names if alias.name in ENVIRONMENT_NAMES | {"getenv", "putenv"})
            if taken or any(alias.name == "*" for alias in node.names):
                found.append(Violation(relative, line, f"imports {', '.join(taken) or '*'} from os (the environment)"))
    return found


def core_modules() -> list[pathlib.Path]:
    modules = [path for path in sorted(PACKAGE.rglob("*.py")) if is_core(path.relative_to(SRC).as_posix())]
    assert len(modules) > 20, "the core was not found; did the layout move?"
    return modules


def test_the_core_performs_no_effects() -> None:
    found = [
        violation
        for path in core_modules()
        for violation in violations(path.read_text(encoding="utf-8"), path.relative_to(SRC).as_posix())
    ]
    assert not found, "core modules break the dependency rule (move the effect to tinkerflow/shell/):\n" + "\n".join(
        map(str, found)
    )


def test_the_shell_and_cli_are_exempt_and_everything_else_is_core() -> None:
    assert not is_core("tinkerflow/shell/backends/local/backend.py")
    assert not is_core("tinkerflow/cli.py")
    assert is_core("tinkerflow/render/renderer.py")
    assert is_core("tinkerflow/shellfish.py")
    relatives = {path.relative_to(SRC).as_posix() for path in core_modules()}
    assert {"tinkerflow/datum.py", "tinkerflow/render/renderer.py"} <= relatives
    assert not any(relative.startswith("tinkerflow/shell/") for relative in relatives)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("import torch\n", "imports torch"),
        ("import torch.nn as nn\n", "imports torch.nn"),
        ("from transformers import AutoTokenizer\n", "imports transformers"),
        ("import huggingface_hub\n", "imports huggingface_hub"),
        ("import tinker\n", "imports tinker"),
        ("from tinker import types\n", "imports tinker"),
        ("import asyncio\n", "imports asyncio"),
        ("import threading\n", "imports threading"),
        ("from concurrent.futures import ThreadPoolExecutor\n", "imports concurrent.futures"),
        ("import multiprocessing\n", "imports multiprocessing"),
        ("import mmap\n", "imports mmap"),
        ("import socket\n", "imports socket"),
        ("import subprocess\n", "imports subprocess"),
        ("import time\n", "imports time"),
        ("from time import monotonic\n", "imports time"),
        ("from tinkerflow.shell.io.run import Run\n", "imports tinkerflow.shell"),
        ("from tinkerflow import shell\n", "imports tinkerflow.shell"),
        ("from .shell import loop\n", "imports tinkerflow.shell"),
        ("def f():\n    import torch\n", "imports torch"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n", "imports torch"),
        ("import importlib\nm = importlib.import_module('datasets')\n", "imports datasets"),
        ("data = open('x.txt').read()\n", "calls open()"),
        ("import pathlib\ntext = pathlib.Path('x').read_text()\n", "calls read_text()"),
        ("import os\nkey = os.environ['HOME']\n", "reads os.environ"),
        ("import os\nkey = os.environ.get('HOME')\n", "reads os.environ"),
        ("import os\nkey = os.getenv('HOME')\n", "calls getenv()"),
        ("from os import environ\nkey = environ['HOME']\n", "imports environ from os"),
        ("from os import getenv as g\nkey = g('HOME')\n", "imports getenv from os"),
        ("from os import *\n", "imports * from os"),
        ("import datetime\nstamp = datetime.datetime.now()\n", "calls .now()"),
    ],
)
def test_each_forbidden_effect_is_caught(snippet: str, expected: str) -> None:
    found = violations(snippet, "tinkerflow/example.py")
    assert found, f"not caught: {snippet!r}"
    assert expected in str(found[0]), found


@pytest.mark.parametrize(
    "snippet",
    [
        "import numpy as np\nimport attrs\n",
        "from tinkerflow.datum import Datum\n",
        "import math, json, re, enum, functools, itertools\n",
        "import datetime\nday = datetime.date(2026, 1, 1)\n",
        "from tinkerflow.shellfish import x\n",
        "from os import sep\nimport os.path\nname = os.path.join('a', 'b')\n",
        "import timeit_free_name as t\n",
    ],
)
def test_pure_imports_pass(snippet: str) -> None:
    assert violations(snippet, "tinkerflow/example.py") == []


def test_tinker_types_only_at_the_interop_boundary() -> None:
    snippet = "import tinker.types as tt\nfrom tinker.types.topk_logprobs import TopkLogprobs\n"
    assert violations(snippet, "tinkerflow/interop.py") == []
    assert violations(snippet, "tinkerflow/datum.py")
    assert violations("import tinker\n", "tinkerflow/interop.py"), "the client itself stays out even at the boundary"


def test_a_temporary_core_module_that_imports_torch_fails_the_check(tmp_path: pathlib.Path) -> None:
    """The same scan that guards the real tree fails on a real file written into a copy of the core layout."""
    package = tmp_path / "tinkerflow"
    (package / "shell").mkdir(parents=True)
    (package / "sneaky.py").write_text('"""Looks pure."""\n\nimport torch\n\nx = torch.zeros(1)\n')
    (package / "shell" / "fine.py").write_text("import torch\n")
    found = [
        violation
        for path in sorted(package.rglob("*.py"))
        if is_core(path.relative_to(tmp_path).as_posix())
        for violation in violations(path.read_text(), path.relative_to(tmp_path).as_posix())
    ]
    assert [str(violation) for violation in found] == ["tinkerflow/sneaky.py:3: imports torch (forbidden: torch)"]
