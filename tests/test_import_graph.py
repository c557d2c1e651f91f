"""The import graph of the package: no cycles, and dependencies that point one way.

Every module under ``nvae_fast/`` and ``kernels/`` (installed as ``nvae_fast.kernels``) is parsed with
``ast`` (nothing is imported). Each ``import`` statement, at module level or inside a function, is an
edge from its module to the module it names:

- ``import a.b`` and ``from a.b import f`` (``f`` not a submodule) name ``a.b``;
- ``from a import b`` names the submodule ``a.b`` when ``b`` is one: a module of the tree, or a name that
  ``a/__init__.py`` does not bind (an extension such as ``nvae_fast._C``); else it names ``a`` itself;
- relative imports are resolved against the importing module's package.

Importing ``a.b`` also runs ``a/__init__.py``; that implicit edge to an ancestor package is left out,
so that a package's ``__init__`` may import its submodules. Imports by name through ``importlib`` are
not statements and are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "nvae_fast"
# Source folder -> the package it is installed as (setup.py's package_dir).
SOURCES = {ROOT / "nvae_fast": "nvae_fast", ROOT / "kernels": "nvae_fast.kernels"}

# The kernel-set side, and the packages it must never reach: the ops and the backend depend on the
# kernel sets, not the other way round (nor may it import ``nvae_fast/__init__.py``, which imports the ops).
KERNEL_SIDE = ("nvae_fast.cuda", "nvae_fast.kernels")
ABOVE_KERNELS = ("nvae_fast.backend", "nvae_fast.ops", "nvae_fast.selfcheck")


class Edge(NamedTuple):
    target: str
    where: str  # path:line of the import statement


def _inside(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _module_files() -> dict[str, Path]:
    """Module name -> source file, for every module of the tree."""
    files = {}
    for folder, package in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join([package] + parts)] = path
    return files


def _bound_names(tree: ast.Module) -> set[str]:
    """Names bound at the top level of a module: defs, classes, assignments and imports."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def import_graph() -> dict[str, list[Edge]]:
    """Module -> its import edges to modules of the package (see the module doc for the rules)."""
    files = _module_files()
    trees = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in files.items()}
    bound = {name: _bound_names(tree) for name, tree in trees.items() if files[name].name == "__init__.py"}

    def names_submodule(package: str, name: str) -> bool:
        return f"{package}.{name}" in files or (package in bound and name not in bound[package])

    graph: dict[str, list[Edge]] = {}
    for module, tree in trees.items():
        package = module if module in bound else module.rpartition(".")[0]
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{source}.{a.name}" if names_submodule(source, a.name) else source for a in node.names]
            else:
                continue
            where = f"{files[module].relative_to(ROOT)}:{node.lineno}"
            edges += [Edge(t, where) for t in targets if _inside(t, (PACKAGE,)) and t != module]
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, list[Edge]]) -> list[list[tuple[str, Edge]]]:
    """Cycles, as (module, edge) steps, that cover every module of every strongly connected component of
    more than one module: a shortest one through each module that no earlier cycle passes."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph.get(v, []):
            if e.target not in index:
                connect(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in on_stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        covered: set[str] = set()
        for module in sorted(component):
            if module not in covered:
                cycles.append(_cycle_through(graph, module, component))
                covered.update(v for v, _ in cycles[-1])
    return cycles


def _cycle_through(graph, start: str, component: set[str]) -> list[tuple[str, Edge]]:
    """A shortest cycle from ``start`` back to itself inside ``component``."""
    cycle = _path(graph, start, lambda module: module == start, within=component)
    if cycle is None:
        raise AssertionError(f"{start} is on no cycle of {sorted(component)}")
    return cycle


def _describe(cycle: list[tuple[str, Edge]]) -> str:
    return " -> ".join(f"{v} ({e.where})" for v, e in cycle) + f" -> {cycle[0][0]}"


def _path(graph, start: str, goal, within: set[str] | None = None) -> list[tuple[str, Edge]] | None:
    """A shortest import path (breadth first) from ``start`` to a module for which ``goal`` is true (which
    may be ``start`` itself, for a cycle), through modules of ``within`` only when given; ``None`` if there
    is none."""
    previous: dict[str, tuple[str, Edge]] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for e in graph.get(v, []):
                if e.target in previous or (within is not None and e.target not in within):
                    continue
                previous[e.target] = (v, e)
                if goal(e.target):
                    steps, w = [], e.target
                    while True:
                        steps.append(previous[w])
                        w = previous[w][0]
                        if w == start:
                            return steps[::-1]
                following.append(e.target)
        frontier = following
    return None


def _above_kernels(module: str) -> bool:
    return module == PACKAGE or _inside(module, ABOVE_KERNELS)


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    targets = {m: {e.target for e in edges} for m, edges in graph.items()}
    assert "nvae_fast.kernels._host" in targets["nvae_fast.kernels.bn_swish"]  # from . import _host
    assert "nvae_fast._C" in targets["nvae_fast.cuda._library"]  # from .. import _C (an extension)
    assert "nvae_fast.cuda._library" in targets["nvae_fast.cuda.bn_swish"]  # from ._library import dense
    assert "nvae_fast._accumulation" in targets["nvae_fast.kernels._host"]  # absolute, from kernels/
    assert "nvae_fast.cuda.emulation" in targets["nvae_fast.backend"]  # inside a method
    assert "nvae_fast" not in targets["nvae_fast.cuda.bn_swish"]  # no implicit edge to the ancestors


def test_cycle_finder_reports_a_cycle():
    graph = {"a": [Edge("b", "a.py:1")], "b": [Edge("c", "b.py:2")], "c": [Edge("a", "c.py:3"), Edge("d", "c.py:4")]}
    assert [_describe(c) for c in _cycles(graph)] == ["a (a.py:1) -> b (b.py:2) -> c (c.py:3) -> a"]
    assert _cycles({"a": [Edge("b", "")], "b": []}) == []
    # two cycles through "a": the second names "c", which the first misses
    graph = {"a": [Edge("b", "a.py:1"), Edge("c", "a.py:2")], "b": [Edge("a", "b.py:1")], "c": [Edge("a", "c.py:1")]}
    assert [_describe(c) for c in _cycles(graph)] == ["a (a.py:1) -> b (b.py:1) -> a", "c (c.py:1) -> a (a.py:2) -> c"]


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c) for c in cycles)


def test_kernel_sets_depend_on_neither_ops_nor_backend():
    graph = import_graph()
    found = []
    for module in sorted(m for m in graph if _inside(m, KERNEL_SIDE)):
        path = _path(graph, module, _above_kernels)
        if path:
            found.append(" -> ".join(f"{v} ({e.where})" for v, e in path) + f" -> {path[-1][1].target}")
    assert not found, "kernel-set modules that reach the ops or the backend:\n" + "\n".join(found)


def test_emulation_imports_nothing_from_the_package():
    edges = import_graph()["nvae_fast.cuda.emulation"]
    assert not edges, "nvae_fast.cuda.emulation imports " + ", ".join(f"{e.target} ({e.where})" for e in edges)
