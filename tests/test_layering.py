"""The package's import graph has no cycles: every module can be read knowing only the ones below it.

The graph is built from the source with :mod:`ast` (nothing is imported). An edge ``a -> b`` is any
``import`` statement in ``a`` that names module ``b`` of the package, wherever it stands: at module level,
inside a function (a function-level import that closes a loop is the same loop, only deferred) and
under ``if TYPE_CHECKING:`` (a loop through annotations is still two modules that cannot be read apart).
The implicit import of a module's parent packages is not an edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sharvet"

#: cycles tolerated for now (none: the last one, evaluation/tasks.py <-> registry_data.py, is split up)
KNOWN_CYCLES: list[set[str]] = []


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            # ``from pkg import mod`` names the module; ``from mod import name`` names mod
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def import_graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: imported_modules(name, path, set(names)) for name, path in names.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_import_statement_is_an_edge(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nfrom . import a\nfrom .b import name\n"
                      "if TYPE_CHECKING:\n    from .c import C\n"
                      "def f():\n    import pkg.d\n    from .sub.e import g\n")
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.sub", "pkg.sub.e", "pkg.mod", "pkg.unused"}
    assert imported_modules("pkg.mod", source, modules) == {"pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.sub.e"}
    graph = import_graph()
    assert "sharvet.kinds" in graph["sharvet.config"] and "sharvet.checkpoint" in graph["sharvet.refinement.lora"]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles():
    found = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_no_module_imports_the_package_facade():
    """``sharvet/__init__`` re-exports the public API from the top; importing it from below goes upward."""
    assert [name for name, imported in import_graph().items() if "sharvet" in imported] == []
