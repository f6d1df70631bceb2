"""The package's floors: a module imports only from its own floor or the floors below, features never
import each other, and no import cycle exists, counting imports made inside functions (docs/layout.md
draws this). The walk reads the source (ast), so it sees the lazy imports that
`import normonnx` never executes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (floor, members, peers): a member is a module or a package with its submodules; on a floor of peers
# no member imports another (scan and sweep are features side by side)
FLOORS = [
    ("ground", ["errors", "version", "tables", "registry", "spec", "params", "reference", "compare", "judge",
                "timing", "safeio", "results", "outputs"], False),
    ("model", ["graph", "shapes", "irview", "patterns", "identify", "cutout", "derive", "rules", "rewrite"], False),
    ("export", ["models", "translations", "variants", "exporters", "export", "cache"], False),
    ("engine", ["inputs", "runtimes", "fusion", "probe", "validate", "layers", "bench", "pool"], False),
    ("features", ["scan", "sweep", "diff"], True),
    ("fix", ["repair"], False),  # fix stands on scan: the written model is judged by scan --validate itself
    ("presentation", ["render", "findings", "report", "catalog", "testing", "cli", ""], False),  # "": the facade
]


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
    """(floor index, member) for a module, e.g. normonnx.scan.activations -> (4, 'scan')."""
    rel = module[len("normonnx."):] if module.startswith("normonnx.") else ""
    for i, (_, members, _) in enumerate(FLOORS):
        for member in members:
            if rel == member or (member and rel.startswith(member + ".")):
                return i, member
    raise KeyError(module)


def violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for m, targets in sorted(edges.items()):
        (fm, member) = floor_of(m)
        for t in sorted(targets):
            ft, tmember = floor_of(t)
            if ft > fm:
                out.append(f"{m} ({FLOORS[fm][0]}) imports {t} ({FLOORS[ft][0]}): upward")
            elif ft == fm and FLOORS[fm][2] and tmember != member:
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
    assert not unplaced, f"place these modules on a floor in FLOORS (and in docs/layout.md): {unplaced}"


def test_imports_only_go_down_and_features_are_peers():
    bad = violations(import_edges(modules()))
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    found = cycles(import_edges(modules()))
    assert not found, found


# the checks themselves must be able to fail: a tree with an upward import, a sideways one and a cycle
@pytest.mark.parametrize("source, edge, expected", [
    ("normonnx/graph.py", "from .validate import validate\n", "upward"),
    ("normonnx/scan/__init__.py", "def f():\n    from ..sweep import sweep\n", "never import each other"),
    ("normonnx/validate.py", "def f():\n    from .repair import fix\n", "upward"),
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
