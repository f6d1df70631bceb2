"""The installed layout is what the tests exercise: one top-level name, models/ and the CLI inside
the package, no checkout path hack (setup, tests, benchmarks are not importable as normonnx.*)."""
from __future__ import annotations

import importlib
import importlib.metadata
import json
from pathlib import Path

import pytest

import normonnx


def _editable() -> bool:
    text = importlib.metadata.distribution("normonnx").read_text("direct_url.json")
    return bool(text and json.loads(text).get("dir_info", {}).get("editable"))


def test_the_package_holds_models_and_cli():
    import normonnx.presentation.cli
    import normonnx.models

    assert callable(normonnx.presentation.cli.main) and hasattr(normonnx.models, "native_module")


@pytest.mark.parametrize("name", ["normonnx.setup", "normonnx.tests", "normonnx.benchmarks", "normonnx.conftest"])
def test_nothing_from_the_checkout_leaks_into_the_package(name):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)


def test_the_installed_distribution_is_what_runs():
    if _editable():
        pytest.skip("an editable install maps the checkout into the package; CI tests a non-editable install")
    dist = importlib.metadata.distribution("normonnx")
    tops = {f.parts[0] for f in dist.files if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}
    assert tops == {"normonnx"}, tops
    assert "site-packages" in normonnx.__file__, f"tests import the checkout, not the install: {normonnx.__file__}"


PROBE = """
import sys
from normonnx.presentation.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(code, sorted(m for m in ("torch", "onnx", "onnxruntime") if m in sys.modules))
"""


def test_import_normonnx_loads_no_heavy_framework(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, normonnx; print(sorted(m for m in ('torch', 'onnx', "
                          "'onnxruntime') if m in sys.modules))"], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["list"], ["report", "{out}", "-o", "{tmp}/r.md"],
                                  ["merge", "{out}", "-o", "{tmp}/m"]], ids=lambda a: a[0])
def test_light_commands_start_without_torch(tmp_path, args):
    """--help, --version, list, report and merge never need torch (a 2 s import): none loads it."""
    import subprocess
    import sys

    from normonnx.core.results import RESULTS, make_record

    out = tmp_path / "sweep"
    out.mkdir()
    rec = make_record("case", case_id="ln-x", status="pass", norm="ln", variant="native", opset=18, exporter="dynamo",
                      dtype="float32", provider="cpu", versions={"normonnx": normonnx.__version__}, inputs={})
    (out / RESULTS).write_text(json.dumps(rec) + "\n")
    argv = [a.format(out=out, tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=tmp_path)
    code, loaded = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert code in ("0", "None"), proc.stderr[-800:]
    assert "torch" not in loaded, f"{args[0]} imported torch"


# -- torch is an extra: `pip install normonnx` checks ONNX files without it (tests/test_no_torch.py runs them) --------
def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    path = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not path.is_file():
        pytest.skip("no pyproject.toml beside tests/ (run from a checkout)")
    return tomllib.loads(path.read_text())


def _name(requirement: str) -> str:
    import re

    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@pytest.mark.parametrize("module", ["torch", "onnxscript"])
def test_torch_and_its_exporter_are_the_torch_extra(module):
    project = _pyproject()["project"]
    assert module not in {_name(r) for r in project["dependencies"]}, f"{module} is a hard dependency again"
    extras = project["optional-dependencies"]
    assert module in {_name(r) for r in extras["torch"]}
    assert "normonnx[torch]" in extras["test"], "the test suite needs torch: the test extra pulls the torch extra"


def test_onnx_ir_is_a_dependency_of_its_own():
    """scan, cutout and fix work on onnx_ir, which used to arrive with onnxscript only."""
    assert "onnx-ir" in {_name(r) for r in _pyproject()["project"]["dependencies"]}


def test_the_installed_metadata_needs_torch_only_with_the_extra():
    if _editable():
        pytest.skip("an editable install's metadata is the one written when it was installed; CI installs the wheel")
    reqs = importlib.metadata.requires("normonnx") or []
    for r in reqs:
        if _name(r) in ("torch", "onnxscript"):
            assert "extra ==" in r, f"{r}: torch is an extra, not a dependency"
    assert any(_name(r) == "torch" and 'extra == "torch"' in r for r in reqs), reqs
