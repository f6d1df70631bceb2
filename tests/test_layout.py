"""The shape of the code itself: rules a reviewer would otherwise have to re-check by hand."""
from __future__ import annotations

import ast
from pathlib import Path

import normonnx

MAX_FUNCTION_LINES = 60  # issues 20, 35: a longer function mixes steps that want names of their own


def test_no_function_in_the_package_is_over_60_lines():
    root = Path(normonnx.__file__).parent
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these: " + "; ".join(long)


def test_ruff_is_clean():
    """ruff (a test extra) over the package, tests, benchmarks and models, as pyproject's [tool.ruff] selects:
    pyflakes (an unused import or variable, an undefined name), syntax errors and bugbear (a closure over a loop
    variable, zip without strict=, a mutable default) and McCabe complexity over pyproject's limit."""
    import subprocess

    from ruff.__main__ import find_ruff_bin

    root = Path(__file__).resolve().parents[1]
    paths = [str(root / p) for p in ("normonnx", "tests", "benchmarks", "models", "cli.py") if (root / p).exists()]
    p = subprocess.run([find_ruff_bin(), "check", "--no-cache", "--config", str(root / "pyproject.toml"), *paths],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
