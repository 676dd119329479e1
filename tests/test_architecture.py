"""The package's shape: no import cycle, layers that import only downwards, modules that fit a screen or five.

``src/tinyssd/``: the ground floor (errors, limits, boxes, resize, images, plots, files) imports
no subpackage; ``data/`` and ``model/`` import nothing from each other; ``deploy/`` builds on
``model/``; nothing but ``pipeline/`` (and the entry points) imports ``pipeline/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "tinyssd"
MAX_LINES = 300
# What each layer may import (besides itself and the ground floor).
ALLOWED = {"data": set(), "model": set(), "deploy": {"model"}, "pipeline": {"data", "model", "deploy"}}
LAYERS = set(ALLOWED)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def imports_of(path: Path) -> set[str]:
    """The tinyssd modules a file imports, at any depth (lazy imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tinyssd"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tinyssd")}
    return {name for name in found if name in MODULES}


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def test_no_import_cycle():
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if target == "tinyssd":  # the package's own re-exports
                continue
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(target) :], target]))
            if not state.get(target):
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module != "tinyssd" and not state.get(module):
            visit(module, [])


def test_layers_import_only_downwards():
    wrong = []
    for module, targets in GRAPH.items():
        if module == "tinyssd":
            continue
        layer = _layer(module)
        for target in targets:
            other = _layer(target)
            if other is None or other == layer:
                continue
            if layer is None or other not in ALLOWED[layer]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_ground_floor_is_a_floor():
    """errors.py imports nothing of tinyssd's; the other shared modules only each other."""
    assert GRAPH["tinyssd.errors"] == set()
    for module, targets in GRAPH.items():
        if module != "tinyssd" and _layer(module) is None and module.count(".") == 1:
            assert all(_layer(t) is None for t in targets), (module, targets)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_fit_a_few_screens(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(SRC)} has {lines} lines (at most {MAX_LINES})"
