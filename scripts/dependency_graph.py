"""Draw tinkerflow's dependency picture from the code: which part imports which (read from the AST, not imported).

Usage::

    python scripts/dependency_graph.py            # print the Mermaid graph
    python scripts/dependency_graph.py --check    # exit 1 if docs/architecture.md holds a stale picture
    python scripts/dependency_graph.py --write    # rewrite the picture in docs/architecture.md

Every module of ``src/tinkerflow`` is put in one *part* (records, render, rl, shell.backends, ...; see
:func:`part_of`); an arrow ``a --> b`` means some module of part ``a`` imports a module of part ``b`` (at module
level or inside a function). Core parts are drawn in one box, shell parts in another, so an arrow from the core
into the shell would stand out (the import-contract test forbids it).
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import re
import sys
from collections.abc import Iterator, Mapping

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- dependency-graph:begin (scripts/dependency_graph.py --write) -->"
END = "<!-- dependency-graph:end -->"

#: Core modules grouped as "records": the vocabulary every other part speaks.
RECORDS = frozenset(
    {
        "arrays",
        "errors",
        "_validate",
        "chat",
        "model_input",
        "datum",
        "sampling",
        "training",
        "serde",
        "interop",
        "testing",
        "chat_format",
        "losses",
    }
)


def module_name(path: pathlib.Path) -> str:
    """``src/tinkerflow/render/base.py`` -> ``tinkerflow.render.base`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part_of(module: str) -> str:
    """The part of the picture ``module`` belongs to."""
    names = module.split(".")[1:]
    if not names:
        return "records"
    if names[0] == "shell":
        if len(names) == 1:
            return "shell"
        room = names[1]
        return "shell.rollouts" if room in {"rollouts", "completers"} else f"shell.{room}"
    if names[0] == "cli":
        return "cli"
    if names[0] in RECORDS:
        return "records"
    if names[0] in {"supervised", "sl_data"}:
        return "supervised"
    if names[0] == "rl":
        return "rl.envs" if len(names) > 1 and names[1] == "envs" else "rl"
    return names[0]


def is_core_part(part: str) -> bool:
    return not (part == "cli" or part == "shell" or part.startswith("shell."))


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Ids of the nodes inside ``if TYPE_CHECKING:`` blocks (imports for annotations only, never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            assert isinstance(node, ast.If)
            skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def imports_of(
    path: pathlib.Path, known: frozenset[str], *, runtime_only: bool = False, module: str | None = None
) -> Iterator[str]:
    """The tinkerflow modules ``path`` imports (``from pkg import name`` counts ``pkg.name`` when it is a module);
    ``runtime_only`` leaves out imports under ``if TYPE_CHECKING:``, which exist for annotations only; ``module``
    names the module when ``path`` lies outside ``src/``."""
    module = module if module is not None else module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tinkerflow":
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, path.name == "__init__.py")
            if target.split(".")[0] != "tinkerflow":
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                yield candidate if candidate in known else target


def module_graph(*, runtime_only: bool = False) -> dict[str, set[str]]:
    """Module -> the tinkerflow modules it imports (every module of ``src/tinkerflow``; ``runtime_only``: not
    counting imports under ``if TYPE_CHECKING:``)."""
    paths = sorted((SRC / "tinkerflow").rglob("*.py"))
    known = frozenset(module_name(path) for path in paths)
    graph: dict[str, set[str]] = {}
    for path in paths:
        module = module_name(path)
        imported = imports_of(path, known, runtime_only=runtime_only)
        graph[module] = {name for name in imported if name in known and name != module}
    return graph


def part_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = part_of(module)
        edges = parts.setdefault(source, set())
        edges.update(part_of(target) for target in targets if part_of(target) != source)
    return parts


def _node(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", part)


def mermaid(parts: Mapping[str, set[str]]) -> str:
    """The part graph as a Mermaid flowchart, core and shell in two boxes, sorted so the text is stable."""
    lines = ["```mermaid", "flowchart LR"]
    for title, core in (("core (pure)", True), ("shell (effects)", False)):
        lines.append(f'  subgraph {"core" if core else "effects"}["{title}"]')
        lines.extend(f'    {_node(part)}["{part}"]' for part in sorted(parts) if is_core_part(part) == core)
        lines.append("  end")
    for source in sorted(parts):
        lines.extend(f"  {_node(source)} --> {_node(target)}" for target in sorted(parts[source]))
    lines.append("```")
    return "\n".join(lines)


def current_picture() -> str:
    return mermaid(part_graph(module_graph()))


def _documented() -> str | None:
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="fail if docs/architecture.md is stale")
    group.add_argument("--write", action="store_true", help="rewrite the picture in docs/architecture.md")
    args = parser.parse_args(argv)
    picture = current_picture()
    if args.check:
        if _documented() != picture:
            print("docs/architecture.md: the dependency picture is stale; run scripts/dependency_graph.py --write")
            return 1
        return 0
    if args.write:
        text = DOC.read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{DOC}: add the markers {BEGIN!r} and {END!r} where the picture goes")
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOC.write_text(f"{head}{BEGIN}\n{picture}\n{END}{tail}", encoding="utf-8")
        return 0
    print(picture)
    return 0


if __name__ == "__main__":
    sys.exit(main())
