"""The package's floors: a module imports only from its own floor or the floors below, features never
import each other, and no import cycle exists, counting imports made inside functions (docs/layout.md
draws this). The walk reads the source (ast), so it sees the lazy imports that
`import normonnx` never executes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The floors are the package's folders, bottom up (docs/layout.md). A module's floor is the folder it lives in;
# normonnx.models (the checkout's models/) stands on the export floor, the facade (normonnx/__init__) on top.
# On the features floor each child (scan/, sweep, diff) is a feature, and features never import each other.
FLOORS = ["core", "graph", "exporting", "engine", "features", "repair", "presentation"]
PEERS = {"features"}
PLACED_ELSEWHERE = {"models": "exporting"}  # installed as normonnx.models through package-dir


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the installed package by dotted name (models/ installs as normonnx.models)."""
    out = {}
    for base, pkg in ((root / "normonnx", "normonnx"), (root / "models", "normonnx.models")):
        for p in base.rglob("*.py"):
            parts = [pkg, *p.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = p
    return out


def _resolve(name: str, mods: dict) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source (functions, TYPE_CHECKING too)."""
    edges: dict[str, set[str]] = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != "normonnx":
                    continue
                # `from . import x` may name a submodule or a name defined in the package
                found.update(_resolve(f"{base}.{a.name}", mods) for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(_resolve(a.name, mods) for a in node.names if a.name.split(".")[0] == "normonnx")
        edges[m] = {t for t in found if t and t != m}
    return edges


def floor_of(module: str) -> tuple[int, str]:
    """(floor index, member) for a module, e.g. normonnx.features.scan.activations -> (4, 'scan'); the member
    is the floor's child the module belongs to, which is what peers are told apart by."""
    parts = module.split(".")[1:]
    if not parts:
        return len(FLOORS), ""  # the facade: above every floor
    floor = PLACED_ELSEWHERE.get(parts[0], parts[0])
    if floor not in FLOORS:
        raise KeyError(module)
    member = parts[0] if parts[0] in PLACED_ELSEWHERE else (parts[1] if len(parts) > 1 else "")
    return FLOORS.index(floor), member


def floor_name(i: int) -> str:
    return FLOORS[i] if i < len(FLOORS) else "the facade"


def violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for m, targets in sorted(edges.items()):
        (fm, member) = floor_of(m)
        for t in sorted(targets):
            ft, tmember = floor_of(t)
            if ft > fm:
                out.append(f"{m} ({floor_name(fm)}) imports {t} ({floor_name(ft)}): upward")
            elif ft == fm and floor_name(fm) in PEERS and tmember != member and member and tmember:
                out.append(f"{m} imports {t}: features are peers and never import each other")
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_stands_on_a_floor():
    unplaced = []
    for m in modules():
        try:
            floor_of(m)
        except KeyError:
            unplaced.append(m)
    assert not unplaced, f"put these modules in a floor's folder (FLOORS, docs/layout.md): {unplaced}"


def test_imports_only_go_down_and_features_are_peers():
    bad = violations(import_edges(modules()))
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    found = cycles(import_edges(modules()))
    assert not found, found


# the checks themselves must be able to fail: a tree with an upward import, a sideways one and a cycle
@pytest.mark.parametrize("source, edge, expected", [
    ("normonnx/graph/graph.py", "from ..engine.validate import validate\n", "upward"),
    ("normonnx/features/scan/__init__.py", "def f():\n    from ..sweep import sweep\n", "never import each other"),
    ("normonnx/engine/validate.py", "def f():\n    from ..repair import fix\n", "upward"),
    ("normonnx/core/spec.py", "import normonnx.presentation.render\n", "upward"),
])
def test_the_walk_catches_a_bad_import_even_inside_a_function(tmp_path, source, edge, expected):
    for folder in ("normonnx", "models"):
        for p in (ROOT / folder).rglob("*.py"):
            dst = tmp_path / p.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(p.read_text())
    with open(tmp_path / source, "a") as f:
        f.write("\n\n" + edge)
    bad = violations(import_edges(modules(tmp_path)))
    assert any(expected in b for b in bad), bad


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_is_its_floors():
    """`ls normonnx/` shows the floors: every folder is one, each says in its __init__ docstring what lives there
    and what it may import, and no module stands loose beside them but the facade."""
    top = ROOT / "normonnx"
    folders = sorted(p.name for p in top.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(FLOORS)
    assert sorted(p.name for p in top.glob("*.py")) == ["__init__.py"]
    for floor in FLOORS:
        doc = ast.get_docstring(ast.parse((top / floor / "__init__.py").read_text()))
        assert doc and "Imports:" in doc, f"normonnx/{floor}/__init__.py: say what lives there and what it imports"


def test_the_wheel_lists_every_package():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert listed == found, f"pyproject.toml [tool.setuptools] packages: add {found - listed}, drop {listed - found}"


@pytest.mark.parametrize("old, new", [
    ("normonnx.validate", "normonnx.engine.validate"),
    ("normonnx.sweep", "normonnx.features.sweep"),
    ("normonnx.report", "normonnx.presentation.report"),
    ("normonnx.testing", "normonnx.presentation.testing"),
    ("normonnx.errors", "normonnx.core.errors"),
    ("normonnx.runtimes.ort", "normonnx.engine.runtimes.ort"),
    ("normonnx.scan.activations", "normonnx.features.scan.activations"),
])
def test_the_paths_from_before_the_floors_are_the_same_modules(old, new):
    import importlib
    import sys

    import normonnx

    moved = importlib.import_module(old)
    assert moved is importlib.import_module(new) and sys.modules[old] is sys.modules[new]
    assert moved.__spec__.name == new, "the alias must not rename the module it stands for"
    assert callable(normonnx.export) and not isinstance(normonnx.export, type(sys))


def test_a_name_that_never_was_is_still_missing():
    with pytest.raises(ModuleNotFoundError):
        __import__("normonnx.no_such_module")


@pytest.mark.parametrize("module, old, new", [
    ("normonnx.engine.validate", "ValidationReport", "ValidationResult"),
    ("normonnx.engine.bench", "BenchReport", "BenchResult"),
    ("normonnx.repair", "FixReport", "FixResult"),
    ("normonnx.exporting.export", "ExportReport", "ExportResult"),
    ("normonnx", "export_report", "export_result"),
])
def test_the_result_types_answer_to_their_old_names(module, old, new):
    """"report" names only the HTML/Markdown report now; the old names of the result types still import."""
    import importlib

    m = importlib.import_module(module)
    assert getattr(m, old) is getattr(m, new)


def test_the_finder_of_old_paths_imports_nothing_itself():
    """A plain install starts with little loaded (here: python -S, no site hooks, as CI's wheel found it): the
    finder is asked for every module imported after normonnx, and an import inside it recursed without end."""
    import os
    import site
    import subprocess
    import sys

    import normonnx

    paths = [str(Path(normonnx.__file__).resolve().parents[1]), *site.getsitepackages()]
    code = ("import sys\nassert 'importlib.util' not in sys.modules, 'the check needs a bare start'\n"
            "import normonnx, json, normonnx.validate\nprint(normonnx.validate.__name__)")
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    assert p.returncode == 0 and p.stdout.strip() == "normonnx.engine.validate", p.stderr[-800:]
