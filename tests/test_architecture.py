"""The layout of docs/architecture.md, checked on the source: data flows one way.

Imports inside functions count too: a cycle hidden in a function is still a cycle a reader has
to untangle, and a module that imports an entry script reaches back upstream."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_SCRIPTS = {"train_hyperbolic_clap", "test_clap_modelscope"}


def _modules() -> dict[str, Path]:
    files = [*ROOT.glob("hyperbolic/**/*.py"), *ROOT.glob("data/*.py"), *(ROOT / f"{s}.py" for s in ENTRY_SCRIPTS)]
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in files if p.name != "__init__.py"}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of this repository it imports (anywhere in the file)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is not a cycle


def test_import_graph_sees_imports_inside_functions():
    # train_hyperbolic_clap imports hyperbolic.training.train only inside main(): the graph must see it.
    assert "hyperbolic.training.train" in import_graph()["train_hyperbolic_clap"]


def test_no_module_imports_itself_back_through_others():
    assert find_cycle(import_graph()) is None


def test_the_library_never_imports_an_entry_script():
    graph = import_graph()
    reaching_up = {m: sorted(graph[m] & ENTRY_SCRIPTS) for m in graph if m not in ENTRY_SCRIPTS}
    assert {m: s for m, s in reaching_up.items() if s} == {}


def test_data_reading_does_not_depend_on_the_library():
    # data/ is the first step of the path; it may only share the one error base class.
    graph = import_graph()
    uses = {m: sorted(t for t in graph[m] if t.startswith("hyperbolic.") and t != "hyperbolic.errors")
            for m in graph if m.startswith("data.")}
    assert {m: t for m, t in uses.items() if t} == {}


# The concepts, lowest first: a package (or top-level module) may import those on its own floor
# or below, never one above. docs/architecture.md draws the same floors.
FLOORS = [
    ["hyperbolic.errors"],
    ["data"],
    ["hyperbolic.geometry"],
    ["hyperbolic.config", "hyperbolic.outputs"],
    ["hyperbolic.metrics"],
    ["hyperbolic.hierarchy", "hyperbolic.model"],
    ["hyperbolic.embedding"],
    ["hyperbolic.report"],
    ["hyperbolic.evaluation"],
    ["hyperbolic.training"],
    ["hyperbolic.cli"],
    ["hyperbolic.demo", "hyperbolic.export", "hyperbolic.distributed", "hyperbolic.study", "hyperbolic.testbed"],
    sorted(ENTRY_SCRIPTS),
]


def concept(module: str) -> str:
    """The package a module belongs to (``hyperbolic.training.train`` -> ``hyperbolic.training``;
    every ``data.*`` -> ``data``); a top-level module of ``hyperbolic`` is its own concept."""
    parts = module.split(".")
    if parts[0] == "data":
        return "data"
    return ".".join(parts[:2]) if parts[0] == "hyperbolic" else module


def floor_of(name: str) -> int:
    for i, names in enumerate(FLOORS):
        if name in names:
            return i
    raise AssertionError(f"{name} has no floor in tests/test_architecture.py FLOORS: place the new concept")


def test_floor_of_finds_a_concept_and_refuses_an_unplaced_one():
    assert concept("hyperbolic.training.train") == "hyperbolic.training" and concept("data.labels") == "data"
    assert floor_of("hyperbolic.metrics") < floor_of("hyperbolic.evaluation")
    with pytest.raises(AssertionError, match="no floor"):
        floor_of("hyperbolic.nowhere")


def test_concepts_depend_only_on_their_floor_or_below():
    graph = import_graph()
    upward = sorted({(concept(a), concept(b)) for a, targets in graph.items() for b in targets
                     if floor_of(concept(b)) > floor_of(concept(a))})
    assert upward == []
