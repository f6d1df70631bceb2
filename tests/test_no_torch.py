"""Installed without torch (`pip install normonnx`, no `torch` extra): the commands that check ONNX files run,
and those that need PyTorch exit 3 with one line naming torch and how to install it, never a traceback.

Each command runs in a subprocess where `import torch` (and onnxscript) fails as in a venv without them: a
sitecustomize.py on PYTHONPATH puts a meta-path blocker first, in the command's process and in every worker it
spawns. The models are made here with onnx.helper. CI also installs the wheel without torch (.ci/run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import Run, one_line_error

BLOCKER = textwrap.dedent("""
    import os, sys

    _BLOCKED = tuple(n for n in os.environ.get("NORMONNX_TEST_BLOCK", "").split(",") if n)

    class _Blocker:
        # first on sys.meta_path: a blocked module is not found, as where it is not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in _BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, _Blocker())
""")

NO_TORCH = "torch,onnxscript"  # what `pip install normonnx` leaves out (the `torch` extra)


def _norm_model(path: Path, op: str) -> Path:
    """A one-node norm model: GroupNormalization-21 (fails offsets on ORT CPU: `fix` rewrites it) or
    LayerNormalization-17 (passes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if op == "gn":
        shape, ch, opset = [1, 8, 4, 4], 8, 21
        node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=4, epsilon=1e-5)
    else:
        shape, ch, opset = [2, 4, 16], 16, 17
        node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array((1 + 0.1 * rng.standard_normal(ch)).astype(np.float32), "s"),
            numpy_helper.from_array((0.1 * rng.standard_normal(ch)).astype(np.float32), "b")]
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _run(ws: dict, *args: str, block: str = NO_TORCH) -> Run:
    """normonnx ARGS in a subprocess outside the checkout, with `block`'s modules not importable."""
    argv = [a.format(**ws) for a in args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ws["blocker"]), *filter(None, [os.environ.get(
        "PYTHONPATH")])]), "NORMONNX_TEST_BLOCK": block, "COLUMNS": "1000"}
    p = subprocess.run([sys.executable, "-m", "normonnx.presentation.cli", *argv], capture_output=True, text=True,
                       cwd=ws["tmp"], env=env, timeout=600)
    return Run(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    """The workspace: the blocker, two models, a sweep folder (one record, as the light-command test makes)."""
    import normonnx
    from normonnx.core.results import RESULTS, make_record

    tmp = tmp_path_factory.mktemp("no-torch")
    blocker = tmp / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    sweep = tmp / "sweep"
    sweep.mkdir()
    rec = make_record("case", case_id="ln-x", status="pass", norm="ln", variant="native", opset=18, exporter="dynamo",
                      dtype="float32", provider="cpu", versions={"normonnx": normonnx.__version__}, inputs={})
    (sweep / RESULTS).write_text(json.dumps(rec) + "\n")
    return {"tmp": tmp, "blocker": blocker, "sweep": sweep, "gn": _norm_model(tmp / "gn.onnx", "gn"),
            "ln": _norm_model(tmp / "ln.onnx", "ln")}


def test_the_blocker_hides_torch_in_the_command_and_its_workers(ws):
    """The control: without it every test below would pass vacuously on a machine that has torch."""
    probe = ("import multiprocessing as mp, importlib.util as u\n"
             "def hidden(name):\n"
             "    try:\n        import torch\n    except ImportError:\n        return True\n    return False\n"
             "if __name__ == '__main__':\n"
             "    with mp.get_context('spawn').Pool(1) as p:\n"
             "        print(hidden(0), p.apply(hidden, (0,)))\n")
    script = ws["tmp"] / "probe.py"
    script.write_text(probe)
    env = {**os.environ, "PYTHONPATH": str(ws["blocker"]), "NORMONNX_TEST_BLOCK": NO_TORCH}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ws["tmp"], env=env,
                         timeout=300)
    assert out.stdout.split() == ["True", "True"], out.stderr[-1500:]


# -- what works without torch: (id, argv, exit code, a phrase its stdout holds) ----------------------------------
WORKS = [
    ("scan", ("scan", "{ln}"), 0, "1 norms"),
    ("scan-validate", ("scan", "{ln}", "--validate"), 0, "PASSED: 1 passed"),
    # a finding, not a crash (ORT inlines GroupNormalization-21's E[x^2]-E[x]^2 body), from worker processes
    ("scan-validate-jobs", ("scan", "{gn}", "--validate", "--jobs", "2"), 1, "FAILED: 0 passed, 1 failed"),
    ("scan-activations", ("scan", "{gn}", "--activations"), 0, "on the model's activations"),
    ("validate-model", ("validate", "--model", "{ln}"), 0, "PASSED"),
    ("fix", ("fix", "{gn}", "-o", "{tmp}/fixed.onnx"), 0, "PASSED: 1 layers rewritten"),
    ("diff", ("diff", "{sweep}", "{sweep}"), 0, "no regression"),
    ("merge", ("merge", "{sweep}", "-o", "{tmp}/merged"), 0, "merged 1 records"),
    ("report", ("report", "{sweep}", "-o", "{tmp}/report.html"), 0, "wrote"),
]


@pytest.mark.parametrize("args,code,phrase", [w[1:] for w in WORKS], ids=[w[0] for w in WORKS])
def test_checking_onnx_files_needs_no_torch(ws, args, code, phrase):
    proc = _run(ws, *args)
    assert proc.returncode == code, (proc.stdout[-1500:], proc.stderr[-1500:])
    assert phrase in proc.stdout, proc.stdout[-1500:]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_list_says_why_the_torch_runtimes_are_unavailable(ws):
    out = _run(ws, "list").stdout
    for runtime in ("torch", "torch-cuda"):
        row = next(line for line in out.splitlines() if line.split()[:1] == [runtime])
        assert 'no: torch is not installed here: pip install "normonnx[torch]"' in row, row


@pytest.mark.slow
def test_fix_then_scan_and_diff_without_torch(ws):
    """fix's output is judged by scan --validate, and `diff` compares two scans' JSON: all without torch."""
    fixed = ws["tmp"] / "fixed-then-scanned.onnx"
    assert _run(ws, "fix", "{gn}", "-o", str(fixed)).returncode == 0
    scans = {}
    for name, model in (("before", "{gn}"), ("after", str(fixed))):
        proc = _run(ws, "scan", model, "--validate", "--json")
        (ws["tmp"] / f"{name}.json").write_text(proc.stdout)
        scans[name] = json.loads(proc.stdout)
    assert (scans["before"]["verdict"], scans["after"]["verdict"]) == ("fail", "pass")
    same = _run(ws, "diff", "{tmp}/before.json", "{tmp}/before.json")
    assert same.returncode == 0 and "no regression in 1 cases" in same.stdout, same.stdout + same.stderr[-1500:]


# -- what needs torch: (id, argv, what the one line names) ---------------------------------------------------------
NEEDS_TORCH = [
    ("export", ("export", "--norm", "gn", "--groups", "4"), "export needs torch"),
    ("export-torchscript", ("export", "--norm", "ln", "--exporter", "torchscript", "--opset", "17"),
     "export needs torch"),
    ("validate-norm", ("validate", "--norm", "ln"), "validate --norm needs torch"),
    ("sweep", ("sweep", "-o", "{tmp}/sweep-out"), "sweep needs torch"),
    ("bench", ("bench", "--norm", "ln"), "bench needs torch"),
    ("validate-runtimes-torch", ("validate", "--model", "{ln}", "--runtimes", "torch"), "runtime 'torch'"),
    ("scan-runtimes-torch", ("scan", "{ln}", "--validate", "--runtimes", "torch"), "runtime 'torch'"),
    ("fix-runtimes-torch", ("fix", "{gn}", "-o", "{tmp}/never.onnx", "--runtimes", "torch"), "runtime 'torch'"),
]


@pytest.mark.parametrize("args,names", [n[1:] for n in NEEDS_TORCH], ids=[n[0] for n in NEEDS_TORCH])
def test_what_needs_torch_exits_3_in_one_line(ws, args, names):
    proc = _run(ws, *args)
    one_line_error(proc, 3, names, 'pip install "normonnx[torch]" "torch==2.13.0"', "CUDA")
    assert not (ws["tmp"] / "sweep-out").exists(), "sweep wrote a folder before saying it cannot run"
    assert not (ws["tmp"] / "never.onnx").exists()


# -- torch without onnxscript: only the dynamo exporter needs it ---------------------------------------------------
@pytest.mark.slow
def test_dynamo_without_onnxscript_says_so_and_torchscript_still_exports(ws):
    pytest.importorskip("torch")
    proc = _run(ws, "export", "--norm", "ln", "-o", "{tmp}/dyn.onnx", block="onnxscript")
    one_line_error(proc, 3, "dynamo exporter needs onnxscript", "pip install onnxscript", "--exporter torchscript")
    proc = _run(ws, "export", "--norm", "ln", "--exporter", "torchscript", "--opset", "17", "-o", "{tmp}/ts.onnx",
                block="onnxscript")
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert (ws["tmp"] / "ts.onnx").is_file()


# -- the library: the same checks, without a subprocess ------------------------------------------------------------
def test_need_torch_is_runtime_unavailable_with_the_install_line(monkeypatch):
    from normonnx.core.errors import ExitCode, RuntimeUnavailable, need_torch, torch_missing
    from normonnx.exporting.exporters import get_exporter

    monkeypatch.setitem(sys.modules, "torch", None)  # how Python marks a module missing
    with pytest.raises(RuntimeUnavailable) as e:
        need_torch("export")
    assert e.value.exit_code == ExitCode.UNAVAILABLE
    assert str(e.value).startswith('export needs torch, which is not installed here: pip install "normonnx[torch]" '
                                   '"torch==2.13.0"'), e.value
    assert "torch is not installed" in torch_missing()
    for name in ("dynamo", "torchscript"):
        assert "torch is not installed" in get_exporter(name).unavailable()
        with pytest.raises(RuntimeUnavailable, match="sweep needs torch"):
            get_exporter(name).require("sweep")
