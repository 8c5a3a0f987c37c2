"""The import graph of ``src/bgplb`` has no cycles.

Every ``import`` counts: at module level, inside functions and under ``TYPE_CHECKING`` — an import
moved into a function still ties the two modules together, it only hides the cycle from Python.
A cycle means two modules cannot be understood, tested or replaced one without the other; the
fix is to move what both need one layer down (see docs/architecture.md).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Cycles that existed when this test was written and are being taken apart. The test fails when
# a new cycle appears *and* when one of these disappears (then delete it here): the list only
# shrinks.
KNOWN: set[frozenset[str]] = set()


def modules(root: Path = SRC) -> dict[str, tuple[Path, str]]:
    """Module name -> (file, package the file's relative imports start from)."""
    out: dict[str, tuple[Path, str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
            package = ".".join(parts)
        else:
            package = ".".join(parts[:-1])
        out[".".join(parts)] = (path, package)
    return out


def imported_names(tree: ast.AST, package: str) -> Iterator[str]:
    """Every module name an import statement anywhere in `tree` may refer to."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            # `from bgplb.x import y` may import the submodule bgplb.x.y
            yield from (f"{module}.{alias.name}" for alias in node.names)


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, (path, package) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = {m for m in imported_names(tree, package) if m in mods and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


def test_the_finder_sees_cycles_hidden_in_functions(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
    )
    (pkg / "d.py").write_text("import pkg.a\n")
    assert cycles(import_graph(tmp_path)) == [frozenset({"pkg.a", "pkg.b", "pkg.c"})]


def test_no_import_cycles() -> None:
    found = set(cycles(import_graph()))
    new = [sorted(c) for c in found - KNOWN]
    gone = [sorted(c) for c in KNOWN - found]
    assert not new, f"import cycles (move what both sides need one layer down): {new}"
    assert not gone, f"these cycles are gone: delete them from KNOWN: {gone}"
