"""The import graph: the library never imports the lab, no module imports a layer above its own, and no cycles.

The graph is read from the source (every ``import``, at module level or inside a function) with the installed
layout: ``models/`` and ``guides/`` are ``pyro_dlf.models`` / ``pyro_dlf.guides``, ``benchmarks/pyro_dlf_bench``
is the lab. Imports made at run time by name (``importlib``, the command line's entry points) are not edges:
the library finds the lab's commands that way, without importing it. The lab may use the library's private
modules (``pyro_dlf._validation``); the library's layers are its own business.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"pyro_dlf": ROOT / "pyro_dlf", "pyro_dlf.models": ROOT / "models", "pyro_dlf.guides": ROOT / "guides",
            "pyro_dlf_bench": ROOT / "benchmarks" / "pyro_dlf_bench"}

#: The library's layers, top first. A module may import its own layer or any below it, never one above.
#: A name stands for the module and everything under it.
LAYERS: list[tuple[str, ...]] = [
    ("pyro_dlf.cli",),
    ("pyro_dlf", "pyro_dlf.distributed"),  # the package root (itself only) re-exports distill and Student
    ("pyro_dlf.api",),
    ("pyro_dlf.fitting",),  # the parts distill is composed of
    ("pyro_dlf.diagnostics",),
    ("pyro_dlf.student",),
    ("pyro_dlf.calibration", "pyro_dlf.selection", "pyro_dlf.design", "pyro_dlf.noise", "pyro_dlf.likelihoods",
     "pyro_dlf.quadrature", "pyro_dlf.student_file", "pyro_dlf.infer", "pyro_dlf.guides", "pyro_dlf.models",
     "pyro_dlf.kernels", "pyro_dlf.data", "pyro_dlf.training", "pyro_dlf.covariance_checks"),
    ("pyro_dlf._validation", "pyro_dlf.sufficient_statistics", "pyro_dlf.nn"),
    ("pyro_dlf._files", "pyro_dlf._warnings", "pyro_dlf._progress", "pyro_dlf._version", "pyro_dlf.arrays"),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                for alias in node.names:
                    targets.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _layer(module: str) -> int:
    best = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            # The package root stands for itself alone; any other name for its subpackage too.
            if module == prefix or (prefix != "pyro_dlf" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_layering.py; add it to LAYERS"
    return best[0]


GRAPH = _graph()
LIBRARY = sorted(m for m in GRAPH if m == "pyro_dlf" or m.startswith("pyro_dlf."))


def test_the_library_never_imports_the_lab():
    found = [(m, t) for m in LIBRARY for t in GRAPH[m] if t.split(".")[0] == "pyro_dlf_bench"]
    assert found == []


@pytest.mark.parametrize("module", LIBRARY)
def test_no_module_imports_a_layer_above_its_own(module):
    upward = sorted(t for t in GRAPH[module] if t.split(".")[0] == "pyro_dlf" and _layer(t) < _layer(module))
    assert upward == [], f"{module} (layer {_layer(module)}) imports {upward}"


def test_no_import_cycles():
    """Tarjan's strongly connected components of the whole graph (library and lab): each must be one module."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert cycles == []


@pytest.mark.parametrize("module", LIBRARY)
def test_every_library_module_is_in_a_layer(module):
    assert _layer(module) >= 0


def test_the_graph_is_read():
    """The reader sees the known edges (so the tests above cannot pass on an empty graph)."""
    assert "pyro_dlf.models.deep_latent_factor" in GRAPH["pyro_dlf.guides.exact_factor_posterior"]
    assert "pyro_dlf.infer.em" in GRAPH["pyro_dlf.infer.streaming"]
    assert "pyro_dlf.api" in GRAPH["pyro_dlf_bench.harness.uci"]
