"""The package layering of docs/architecture.md, checked on the source.

Which package may import which is a table here and a diagram there; a test reads every
module's imports (top-level and inside functions) with ``ast`` and fails on an import the
table does not allow, and on any import cycle between modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Floor 1: relay, quantum, deploy. Floor 2: strategies, task. Floor 3: client, server.
# Floor 4: experiments, benchmarks. A package imports its own floor's names modules
# at most (task reads strategies.names) and never a floor above it.
ALLOWED: dict[str, set[str]] = {
    "relay": set(),
    "quantum": set(),
    "deploy": set(),
    "strategies": {"relay"},
    "task": {"relay", "quantum", "strategies"},
    "client": {"task", "relay", "quantum"},
    "server": {"task", "strategies", "relay", "quantum", "deploy"},
    "experiments": {"client", "server", "task", "strategies", "relay", "quantum", "deploy"},
    "benchmarks": {"client", "server", "task", "strategies", "relay", "quantum", "deploy"},
    "docker": {"task", "quantum"},
}
PACKAGES = set(ALLOWED)


def _modules() -> dict[str, Path]:
    found = {}
    for package in sorted(PACKAGES):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Project modules ``path`` imports (``from a.b import c`` counts ``a.b`` and ``a.b.c``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_what_its_floor_allows(module):
    package = module.split(".")[0]
    imported = {name.split(".")[0] for name in _imports(MODULES[module])} - {package}
    assert imported <= ALLOWED[package], (
        f"{module} imports {sorted(imported - ALLOWED[package])}; docs/architecture.md "
        f"allows {package}/ to import {sorted(ALLOWED[package]) or 'nothing of ours'}"
    )


def test_the_two_flower_apps_never_import_each_other():
    for module, path in MODULES.items():
        imported = {name.split(".")[0] for name in _imports(path)}
        if module.startswith("client"):
            assert "server" not in imported, module
        if module.startswith("server"):
            assert "client" not in imported, module


def test_no_import_cycle_between_modules():
    graph = {
        module: {name for name in _imports(path, top_level_only=True) if name in MODULES}
        - {module}
        for module, path in MODULES.items()
    }
    # A package's __init__ importing its own submodules is how packages register
    # (relay.channels): the edge back from a submodule to its package is not a cycle.
    for module in graph:
        graph[module] = {
            target for target in graph[module] if not module.startswith(target + ".")
        }
    cycles = _cycles(graph)
    assert cycles == [], f"import cycles: {cycles}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", ["task.config", "quantum.names", "strategies.names"])
def test_run_config_modules_load_neither_torch_nor_pennylane(module):
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('torch', 'torchvision', 'pennylane') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_source_files_stay_under_about_600_lines():
    long = {
        str(path.relative_to(ROOT)): count
        for path in MODULES.values()
        if (count := len(path.read_text().splitlines())) > 620
    }
    assert long == {}
