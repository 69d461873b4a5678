"""The layout's promises, checked from the source: no import cycle, small modules and functions, a current picture.

See ``docs/architecture.md``. The dependency rule itself (the core performs no effects) is
``tests/test_import_contract.py``.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys
from collections.abc import Mapping
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100


def _load_graph_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dependency_graph", ROOT / "scripts" / "dependency_graph.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("dependency_graph", module)
    spec.loader.exec_module(module)
    return module


graph_script = _load_graph_script()


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                target = pending.pop()
                if target not in index:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, sorted(graph.get(target, ()))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_type_checking_imports_are_left_out_of_the_runtime_graph(tmp_path: pathlib.Path) -> None:
    module = tmp_path / "tinkerflow" / "probe.py"
    module.parent.mkdir()
    module.write_text(
        "from typing import TYPE_CHECKING\nimport tinkerflow.datum\nif TYPE_CHECKING:\n    import tinkerflow.chat\n"
    )
    known = frozenset({"tinkerflow.datum", "tinkerflow.chat"})
    name = "tinkerflow.probe"
    assert set(graph_script.imports_of(module, known, module=name)) == {"tinkerflow.datum", "tinkerflow.chat"}
    assert set(graph_script.imports_of(module, known, runtime_only=True, module=name)) == {"tinkerflow.datum"}


def test_cycle_finder_finds_cycles_and_only_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_no_import_cycle_between_modules() -> None:
    """Counting imports inside functions too (a lazy import that closes a cycle is still a cycle); imports under
    ``if TYPE_CHECKING:`` name types for annotations only and never run, so they do not count."""
    found = cycles(graph_script.module_graph(runtime_only=True))
    assert not found, f"import cycles: {found}"


def test_no_core_part_imports_the_shell() -> None:
    parts = graph_script.part_graph(graph_script.module_graph())
    wrong = {
        (source, target)
        for source, targets in parts.items()
        if graph_script.is_core_part(source)
        for target in targets
        if not graph_script.is_core_part(target)
    }
    assert not wrong


def test_the_documented_dependency_picture_is_current() -> None:
    assert graph_script.main(["--check"]) == 0, "run: python scripts/dependency_graph.py --write"


def _sources() -> list[pathlib.Path]:
    return sorted((ROOT / "src" / "tinkerflow").rglob("*.py"))


def test_modules_stay_small() -> None:
    big = {
        path.relative_to(ROOT).as_posix(): lines
        for path in _sources()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {big}"


def test_functions_stay_short() -> None:
    long: dict[str, int] = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
