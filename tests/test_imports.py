"""Dependencies point one way: thaw's modules sit in layers, each importing only from its own layer or the
ones below, with no import cycle, counting imports inside functions too; data never needs models (or timm),
and only the model adapters ask which source (torchvision, timm) a model comes from."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import thaw

SRC = Path(thaw.__file__).parent
ADAPTERS = SRC / "models" / "adapters"
SOURCES = {"torchvision", "timm"}


LAYERS = [  # bottom to top: each folder of src/thaw is one layer (the facade and version.py are the top)
    ("core: torch-free settings, records, plans, run folder, cache", ("thaw.core", "thaw.version")),
    ("data and models", ("thaw.data", "thaw.models")),
    ("weights", ("thaw.weights",)),
    ("metrics: pure numbers, no plotting", ("thaw.metrics",)),
    ("train: the engine, freezing, optimizers, losses", ("thaw.train",)),
    ("use: what runs after training", ("thaw.use",)),
    ("studies: many runs", ("thaw.studies",)),
    ("the command line and the facade", ("thaw.cli", "thaw", "thaw.__main__")),
]


def layer(module: str) -> int:
    """The index in :data:`LAYERS` of ``module``'s layer (the facade ``thaw`` itself is the top)."""
    found = [
        (len(prefix), i)
        for i, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or (prefix != "thaw" and module.startswith(prefix + "."))
    ]
    assert found, f"{module} is in no layer: add it to LAYERS in tests/test_imports.py"
    return max(found)[1]


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


def test_no_import_cycles_between_modules_even_inside_functions():
    assert cycles(import_graph(top_level_only=False)) == []


def test_every_module_imports_only_its_layer_and_those_below_even_inside_functions():
    upward = [
        f"{m} ({LAYERS[layer(m)][0]}) imports {d} ({LAYERS[layer(d)][0]})"
        for m, deps in import_graph(top_level_only=False).items()
        for d in sorted(deps)
        if layer(d) > layer(m)
    ]
    assert upward == []


def function_imports() -> list[tuple[str, int, str]]:
    """Every thaw import inside a function: its module, line, and the comment that says why it is there
    (on the import's lines, or the line just above)."""
    found = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                one = ast.Module([node], [])
                if isinstance(node, ast.Import | ast.ImportFrom) and imported(module, one, True):
                    text = lines[node.lineno - 2 : node.end_lineno]
                    why = [line.split("#", 1)[1].strip() for line in text if "#" in line]
                    found.append((module, node.lineno, why[0] if why else ""))
    return found


def test_a_thaw_import_inside_a_function_says_why():
    """Inside a function only for a reason (an optional heavy dependency, a torch-free command line), given
    in a comment on the import or the line above it."""
    assert [f"{m}:{line}" for m, line, why in function_imports() if not why] == []


def test_few_thaw_imports_inside_functions_outside_the_command_line():
    """The layered folders let modules import at the top: a thaw import inside a function (outside the
    command line's per-command loading) is the exception, at most 15 of them."""
    inside = [f"{m}:{line}" for m, line, _ in function_imports() if not m.startswith("thaw.cli")]
    assert len(inside) <= 15, inside


def test_models_import_no_layer_above_them_and_no_cycle_even_inside_functions():
    graph = import_graph(top_level_only=False)
    models = {m: deps for m, deps in graph.items() if m.startswith("thaw.models")}
    above = ("thaw.data", "thaw.train", "thaw.cli", "thaw.weights", "thaw.use.evaluate", "thaw.use.predictor")
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
        "import sys, thaw.data, thaw.core.config, thaw.core.preprocessing; "
        "print(sorted(m for m in sys.modules if m == 'timm' or m.startswith(('timm.', 'thaw.models'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_each_folder_is_one_layer_and_the_root_stays_small():
    """The layer map is the folder list: every package under src/thaw is named in exactly one layer, and the
    package root holds at most 6 modules (the facade, ``version``, ``__main__``)."""
    folders = sorted(f"thaw.{p.name}" for p in SRC.iterdir() if (p / "__init__.py").exists())
    named = sorted(prefix for _, prefixes in LAYERS for prefix in prefixes if prefix.count(".") == 1)
    assert folders == sorted(set(named) - {"thaw.version", "thaw.__main__"})
    assert len(list(SRC.glob("*.py"))) <= 6


def test_core_imports_no_torch():
    """``thaw.core`` is torch-free: the command line's torch-free paths (``thaw predict model.onnx``,
    ``thaw --help``) and the facade's records build on it."""
    core = sorted(m for m in MODULES if m.startswith("thaw.core"))
    code = f"import sys; import {', '.join(core)}; print(sorted(m for m in sys.modules if m == 'torch'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
