"""Dependencies point one way: no import cycles among thaw's modules, data never needs models (or timm), and
only the model adapters ask which source (torchvision, timm) a model comes from."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import thaw

SRC = Path(thaw.__file__).parent
ADAPTERS = SRC / "models" / "adapters"
SOURCES = {"torchvision", "timm"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imported(module: str, tree: ast.Module, top_level_only: bool) -> set[str]:
    """The thaw modules ``module`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".rstrip(".")
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {name for name in found if name in MODULES and name != module}


def import_graph(top_level_only: bool) -> dict[str, set[str]]:
    return {m: imported(m, ast.parse(p.read_text()), top_level_only) for m, p in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_modules():
    assert cycles(import_graph(top_level_only=True)) == []


def test_models_import_no_layer_above_them_and_no_cycle_even_inside_functions():
    graph = import_graph(top_level_only=False)
    models = {m: deps for m, deps in graph.items() if m.startswith("thaw.models")}
    above = ("thaw.data", "thaw.train", "thaw.cli", "thaw.weights", "thaw.evaluate", "thaw.predict")
    assert {m: sorted(d for d in deps if d.startswith(above)) for m, deps in models.items()} == {
        m: [] for m in models
    }
    assert cycles({m: {d for d in deps if d in models} for m, deps in models.items()}) == []


def test_only_adapters_compare_a_model_source():
    """No ``source == "timm"`` (or ``in ("timm", ...)``) outside ``models/adapters/``: ask the adapter."""
    found = []
    for module, path in MODULES.items():
        if path.is_relative_to(ADAPTERS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = {
                    c.value
                    for side in (node.left, *node.comparators)
                    for c in ast.walk(side)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                }
                if constants & SOURCES:
                    found.append(f"{module}:{node.lineno}")
    assert found == []


def test_data_and_config_import_neither_models_nor_timm():
    code = (
        "import sys, thaw.data, thaw.config, thaw.preprocessing; "
        "print(sorted(m for m in sys.modules if m == 'timm' or m.startswith(('timm.', 'thaw.models'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
