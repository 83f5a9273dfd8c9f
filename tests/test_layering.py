"""The import rules of docs/CONTRACTS.md, checked on the source: no import cycles between the
project's modules, imports only downwards through the layers, plugins and reports import only
what their contract allows, and one module each talks to MLflow and to Optuna.

Every ``import`` counts, at module level or inside a function: a lazy import still couples two
modules, and it is where cycles hide.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "methods", "tasks", "reports")

# Lowest first; a module may import its own layer (without cycles) and the layers below.
# methods/ and tasks/ (plugins) and reports/ sit between evaluation and the pipeline, with
# the narrower allow-lists of ALLOWED below.
LAYERS: list[tuple[str, ...]] = [
    ("benchmark", "benchmark.config", "benchmark.errors", "benchmark.io"),
    ("benchmark.data",),
    ("benchmark.separation",),
    ("benchmark.pretrain",),
    ("benchmark.evaluation",),
    ("methods", "tasks", "reports"),
    ("benchmark.pipeline",),
    ("benchmark.commands", "benchmark.perf"),
    ("benchmark.cli",),
    ("benchmark.__main__",),
]
# Package -> the only project modules (or packages) it may import besides its own.
ALLOWED: dict[str, tuple[str, ...]] = {
    "methods": ("benchmark.pretrain.pairs",),
    # task declarations: the dataset loaders (owndata: labelled CSVs of task files), probes
    "tasks": ("benchmark.data.datasets", "benchmark.data.owndata", "benchmark.evaluation.probe"),
    "reports": (
        "benchmark",
        "benchmark.config",
        "benchmark.errors",
        "benchmark.io",
        "benchmark.evaluation",
        "benchmark.evaluation.metrics",
    ),
    # Pure: the one definition of every score, shared with reports/.
    "benchmark.evaluation.metrics": ("benchmark", "benchmark.evaluation"),
}
# Third-party packages only one module may import.
ONLY_IN = {"mlflow": "benchmark.pipeline.tracking", "optuna": "benchmark.evaluation.tuning"}
# `make bench` builds its in-memory pair corpus with the test fixtures (a tool, not a layer).
OUTSIDE = {("benchmark.perf", "tests.fixtures")}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (``from p import m`` of a module ``p.m``
    counts as ``p.m``; of a name defined in ``p``, as ``p``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the project uses absolute ones)"
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                out.add(child if child in MODULES else node.module)
    return out


def _project(name: str) -> str | None:
    """The project module an imported name refers to (None for third-party ones)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


GRAPH = {
    name: {m for m in map(_project, _imports(path)) if m and m != name}
    for name, path in MODULES.items()
}


def _rank(module: str) -> int:
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank)
    assert best is not None, f"{module} is in no layer of LAYERS: add it"
    return best[1]


def _package(module: str) -> str:
    for key in sorted(ALLOWED, key=len, reverse=True):
        if module == key or module.startswith(key + "."):
            return key
    return ""


def test_every_module_imports():
    for name in MODULES:
        if name != "benchmark.__main__":  # runs the command line
            importlib.import_module(name)


def test_the_import_graph_is_read():
    assert "benchmark.data.store" in GRAPH["benchmark.pretrain.pairs"]
    assert "benchmark.pipeline.probing" in GRAPH["benchmark.pipeline.plan"]  # from p import m
    assert "benchmark.errors" in GRAPH["benchmark.cli"]


def test_no_import_cycles():
    """Tarjan's strongly connected components of the module graph: all of size one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_go_down_the_layers_only():
    upward = [
        f"{a} (layer {_rank(a)}) imports {b} (layer {_rank(b)})"
        for a, targets in GRAPH.items()
        for b in targets
        if _rank(b) > _rank(a)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_plugins_and_reports_import_only_their_contract():
    wrong = []
    for a, targets in GRAPH.items():
        package = _package(a)
        if not package:
            continue
        own = package.partition(".")[0] if package in ("methods", "tasks", "reports") else a
        for b in targets:
            if b != own and not b.startswith(own + ".") and b not in ALLOWED[package]:
                wrong.append(f"{a} imports {b}")
    assert not wrong, "imports outside the contract:\n" + "\n".join(wrong)


@pytest.mark.parametrize("library", sorted(ONLY_IN))
def test_one_module_talks_to_each_service(library):
    importers = {
        name
        for name, path in MODULES.items()
        if any(m == library or m.startswith(library + ".") for m in _imports(path))
    }
    assert importers == {ONLY_IN[library]}


def test_nothing_imports_outside_the_project_and_its_libraries():
    strays = {
        (a, m)
        for a, path in MODULES.items()
        for m in _imports(path)
        if m.partition(".")[0] == "tests"
    }
    assert strays <= OUTSIDE, strays - OUTSIDE


def test_the_checker_sees_an_upward_import(monkeypatch):
    """The layer test fails on the mistake it exists for."""
    monkeypatch.setitem(GRAPH, "benchmark.data.store", {"benchmark.pipeline.stages"})
    with pytest.raises(AssertionError, match="upward imports"):
        test_imports_go_down_the_layers_only()
    monkeypatch.setitem(GRAPH, "benchmark.pipeline.stages", {"benchmark.data.store"})
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()


def test_reports_and_metrics_load_without_the_pipeline():
    """The report package and the metric definitions import no torch, mlflow or optuna."""
    code = (
        "import sys, reports.build, benchmark.evaluation.metrics;"
        "print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
