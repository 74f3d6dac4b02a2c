"""The floors of the house (docs/architecture.md), read from every module's imports with `ast`.

A module may import its own package and the packages on lower floors, nothing on its own floor or
above; and no two modules may import each other, directly or round a longer loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The floors, written once. Tests stand above them all and are not checked.
FLOORS = {
    "data": 1,
    "models": 2,
    "inversion": 3,
    "editing": 3,
    "eval": 3,
    "pipelines": 4,
    "bench": 4,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_imports(path: Path) -> set[str]:
    """Every project module named by an import anywhere in the file (function bodies included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import name` names a submodule when pkg/name.py exists
            names = [f"{stem}.{a.name}" if _is_module(f"{stem}.{a.name}") else stem for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in FLOORS)
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for top in FLOORS for p in sorted((ROOT / top).rglob("*.py"))}


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """`a imports b` lines for every import that goes sideways or up."""
    bad = []
    for module, targets in sorted(graph.items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != top and FLOORS[other] >= FLOORS[top]:
                bad.append(f"{module} (floor {FLOORS[top]}) imports {target} (floor {FLOORS[other]})")
    return bad


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One loop of modules importing each other, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (loop := visit(node)):
            return loop
    return None


def import_graph() -> dict[str, set[str]]:
    return {name: project_imports(path) - {name} for name, path in project_modules().items()}


def test_every_package_has_a_floor():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(FLOORS), f"give these packages a floor in FLOORS: {packages ^ set(FLOORS)}"


def test_imports_go_down_only():
    assert layering_violations(import_graph()) == []


def test_no_import_cycles():
    assert import_cycle(import_graph()) is None


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"editing.edit": {"pipelines.cli"}}, ["editing.edit (floor 3) imports pipelines.cli (floor 4)"]),
        ({"inversion.invert": {"editing.sampler"}}, ["inversion.invert (floor 3) imports editing.sampler (floor 3)"]),
        ({"inversion.invert": {"models.codec", "data.images", "inversion.ddim"}}, []),
    ],
)
def test_the_checker_sees_sideways_and_upward_imports(graph, expected):
    assert layering_violations(graph) == expected


def test_the_checker_sees_a_cycle():
    assert import_cycle({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == ["a.x", "a.y", "a.z", "a.x"]
    assert import_cycle({"a.x": {"a.y"}, "a.y": set()}) is None


def test_the_prompt_travels_downward_from_edit_real_photo():
    """Everything edit_real_photo reaches below the commands floor imports only further down."""
    graph = import_graph()
    reached, todo = set(), ["pipelines.edit_real"]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    below = {m for m in reached if not m.startswith("pipelines")}
    assert {"inversion.invert", "editing.edit", "models.codec"} <= below
    for module in below:
        floor = FLOORS[module.split(".")[0]]
        assert all(FLOORS[t.split(".")[0]] <= floor for t in graph[module]), module
