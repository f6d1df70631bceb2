"""Silence is never a pass: every gate end to end, as a user types it. Each of these answered 0 (or wrote a
file) on the code before the one judge decided every exit code: partial coverage, an internal error on one
layer, a model with no norm, sweep --strict with a mismatch or a case not checked, fix's three no-write
cases, diff's pass -> anything else, the modes of written files, recursive functions, a suite's own
export failure, validate --model on a whole model."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import corpus
from conftest import has_cuda_ep, one_line_error, run_cli

C = 16


def _ln_node(x: str, y: str, tag: str) -> onnx.NodeProto:
    return helper.make_node("LayerNormalization", [x, f"s{tag}", f"b{tag}"], [y], name=f"ln{tag}", axis=-1,
                            epsilon=1e-5)


def _params(*tags: str) -> list:
    rng = np.random.default_rng(0)
    return [t for tag in tags for t in (numpy_helper.from_array(rng.uniform(0.5, 1.5, C).astype(np.float32), f"s{tag}"),
                                        numpy_helper.from_array(rng.normal(0, 0.5, C).astype(np.float32), f"b{tag}"))]


def _vi(name: str, dtype=TensorProto.FLOAT, shape=(2, 4, C)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def ln_beside_an_if(path: Path) -> Path:
    """One LayerNormalization in the main graph (checked) and one inside an If branch (cannot be cut out:
    not checked)."""
    then = helper.make_graph([_ln_node("h", "t", "1")], "then", [], [_vi("t")])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["e"])], "else", [], [_vi("e")])
    g = helper.make_graph([_ln_node("x", "h", "0"), helper.make_node("If", ["cond"], ["y"], name="if",
                                                                     then_branch=then, else_branch=other)],
                          "g", [_vi("x"), _vi("cond", TensorProto.BOOL, ())], [_vi("y")], _params("0", "1"))
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def five_lns(path: Path) -> Path:
    nodes = [_ln_node("x" if i == 0 else f"h{i - 1}", f"h{i}", str(i)) for i in range(5)]
    g = helper.make_graph(nodes, "g", [_vi("x")], [_vi("h4")], _params(*map(str, range(5))))
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def no_norm(path: Path) -> Path:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [_vi("x")], [_vi("y")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def last_line(text: str) -> str:
    return text.rstrip().splitlines()[-1]


# -- partial coverage, every command ------------------------------------------------------------------
def test_scan_with_a_layer_not_checked_is_not_checked_unless_allowed(tmp_path):
    m = ln_beside_an_if(tmp_path / "m.onnx")
    r = run_cli("scan", str(m), "--validate")
    assert r.returncode == 4, r.stdout  # the old code: PASSED ... 1 not validated, exit 0
    assert "NOT CHECKED: 1 passed, 0 failed, 1 not checked" in r.stdout and "--allow-not-checked" in r.stdout
    doc = json.loads(run_cli("scan", str(m), "--validate", "--json").stdout)
    assert (doc["verdict"], doc["exit_code"], doc["passed"]) == ("not checked", 4, False)
    assert [n["status"] for n in doc["norms"]] == ["pass", "not checked"]
    r = run_cli("scan", str(m), "--validate", "--allow-not-checked")
    assert r.returncode == 0, r.stdout
    assert "PASSED: 1 passed, 0 failed, 1 not checked (accepted by --allow-not-checked)" in r.stdout


def test_activations_and_fix_check_with_a_layer_not_checked_are_not_checked(tmp_path):
    m = ln_beside_an_if(tmp_path / "m.onnx")
    r = run_cli("scan", str(m), "--activations")
    assert r.returncode == 4 and "1 passed, 0 failed, 1 not checked on the model's activations" in r.stdout, r.stdout
    assert run_cli("scan", str(m), "--activations", "--allow-not-checked").returncode == 0
    r = run_cli("fix", str(m), "--check")
    assert r.returncode == 4 and last_line(r.stdout).startswith("NOT CHECKED: 0 layers would change; 1 not checked"), \
        r.stdout
    assert run_cli("fix", str(m), "--check", "--allow-not-checked").returncode == 0


def test_fix_writes_a_model_with_a_layer_not_checked_only_when_allowed(tmp_path):
    m, out = ln_beside_an_if(tmp_path / "m.onnx"), tmp_path / "out.onnx"
    r = run_cli("fix", str(m), "-o", str(out), "--no-timing")
    assert r.returncode == 4 and not out.exists() and last_line(r.stdout).endswith("nothing written"), r.stdout
    r = run_cli("fix", str(m), "-o", str(out), "--no-timing", "--allow-not-checked")
    assert r.returncode == 0 and out.exists(), r.stdout
    assert "accepted by --allow-not-checked" in last_line(r.stdout)


def test_validate_with_a_runtime_that_cannot_run_the_model_is_not_checked(tmp_path):
    """onnx.reference does not know ORT's SimplifiedLayerNormalization (an RMSNorm ORT registers in the
    default domain): ORT CPU passes it, the reference cannot run it."""
    g = helper.make_graph([helper.make_node("SimplifiedLayerNormalization", ["x", "s0"], ["y"], axis=-1, epsilon=1e-5)],
                          "g", [_vi("x")], [_vi("y")], _params("0")[:1])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(tmp_path / "m.onnx"))
    args = ("validate", "--model", str(tmp_path / "m.onnx"), "--runtimes", "cpu,reference", "--inputs", "normal")
    r = run_cli(*args)
    assert r.returncode == 4 and "NOT CHECKED: 1 passed, 0 failed, 1 not checked" in r.stdout, r.stdout
    r = run_cli(*args, "--allow-not-checked")
    assert r.returncode == 0 and "(accepted by --allow-not-checked)" in last_line(r.stdout)
    from normonnx.presentation.testing import assert_export_matches

    with pytest.raises(AssertionError, match="not checked"):
        assert_export_matches(model=tmp_path / "m.onnx", runtimes=["cpu", "reference"], inputs=["normal"])
    assert_export_matches(model=tmp_path / "m.onnx", runtimes=["cpu", "reference"], inputs=["normal"],
                          allow_not_checked=True)


# -- internal errors ------------------------------------------------------------------------------------
def test_an_internal_error_on_one_layer_of_five_is_exit_5(tmp_path, monkeypatch):
    import normonnx.engine.layers

    real = normonnx.engine.layers.run_layer

    def buggy(f, *a, **k):
        if f.nodes[0] == "ln2":
            raise KeyError("scale")  # a bug in normonnx's own code, on one layer
        return real(f, *a, **k)

    monkeypatch.setattr(normonnx.engine.layers, "run_layer", buggy)
    m = five_lns(tmp_path / "m.onnx")
    for extra in ((), ("--allow-not-checked",)):  # never accepted: it is normonnx's failure, not the model's
        r = run_cli("scan", str(m), "--validate", "--inputs", "normal", *extra)
        assert r.returncode == 5, r.stdout  # the old code: exit 0, the row hidden behind four passing ones
        assert "internal error (KeyError: 'scale'); please report it" in r.stdout
        assert "INTERNAL ERROR: 4 passed, 0 failed, 1 not checked (1 internal error: please report it" in r.stdout


def test_a_suites_own_export_failure_is_internal_and_an_exporter_refusal_is_not_checked(monkeypatch):
    """validate exports a suite's large shape itself: normonnx's own failure there is exit 5 (as export
    would say), the exporter refusing it is not checked (4), never a FAIL."""
    import normonnx.engine.validate as v
    from normonnx.core.errors import ExportMismatch
    from normonnx.exporting.export import ExportOptions
    from normonnx.engine.inputs import CheckOptions
    from normonnx.engine.runtimes import RunOptions
    from normonnx.core.spec import NormSpec

    real = v.export_result
    for error, want in ((ZeroDivisionError("a bug"), "internal error"), (ExportMismatch("refused"), "not checked")):
        def failing(spec, *a, error=error, **k):
            if spec.shape != NormSpec.make("ln").shape:
                raise error
            return real(spec, *a, **k)

        monkeypatch.setattr(v, "export_result", failing)
        rep = v.validate(NormSpec.make("ln"), export=ExportOptions("native", 18), run=RunOptions.on("cpu"),
                         check=CheckOptions(["normal", "constant"]))
        assert rep.verdict.status == want and rep.exit_code == {"internal error": 5, "not checked": 4}[want]
        assert any(r.inputs == "constant-large" and r.status == want for r in rep.results)


# -- nothing to check -------------------------------------------------------------------------------------
def test_a_model_without_a_norm_is_nothing_checked(tmp_path):
    m = no_norm(tmp_path / "m.onnx")
    r = run_cli("scan", str(m), "--validate")
    assert r.returncode == 4 and "NOT CHECKED: no norm found, so nothing was checked" in r.stdout
    assert run_cli("scan", str(m)).returncode == 0  # a plain scan only reports
    assert run_cli("scan", str(m), "--activations").returncode == 4
    r = run_cli("fix", str(m), "-o", str(tmp_path / "out.onnx"))
    assert r.returncode == 4 and not (tmp_path / "out.onnx").exists()
    assert last_line(r.stdout) == "NOT CHECKED: no norm found, so nothing was checked; nothing written"


# -- sweep --strict -----------------------------------------------------------------------------------------
def test_sweep_strict_fails_a_mismatch_as_validate_does(tmp_path):
    """dynamo asked for opset 13 writes 18: validate exits 1 on it, and so does sweep --strict."""
    args = ("sweep", "-o", str(tmp_path / "o"), "--norms", "bn", "--variants", "native", "--opsets", "13",
            "--exporters", "dynamo", "--dtypes", "float32", "--inputs", "normal", "--runtimes", "cpu", "--no-cache",
            "--jobs", "1")
    r = run_cli(*args)
    assert r.returncode == 0 and "1 mismatch" in r.stdout, r.stdout  # recorded; no verdict asked for
    r = run_cli(*args, "--resume", "--strict")
    assert r.returncode == 1 and "FAILED: 0 cases passed, 1 failed" in r.stdout, r.stdout  # the old code: 0
    assert run_cli("validate", "--norm", "bn", "--opset", "13", "--inputs", "normal").returncode == 1


@pytest.mark.skipif(has_cuda_ep(), reason="needs a machine without ORT's CUDA provider")
def test_sweep_strict_with_a_case_not_checked_is_4(tmp_path):
    args = ("sweep", "-o", str(tmp_path / "o"), "--norms", "bn", "--variants", "native", "--opsets", "18",
            "--exporters", "dynamo", "--dtypes", "float32", "--inputs", "normal", "--runtimes", "cuda", "--no-cache",
            "--jobs", "1", "--strict")
    r = run_cli(*args)
    assert r.returncode == 4 and "NOT CHECKED: 0 cases passed, 0 failed, 1 not checked" in r.stdout, r.stdout
    assert run_cli(*args, "--resume", "--allow-not-checked").returncode == 4  # nothing passed: still nothing checked


def test_sweep_records_an_internal_error_and_exits_5_without_strict(tmp_path):
    from normonnx.engine.inputs import CheckOptions
    from normonnx.features.sweep import Matrix, SweepOptions, sweep

    def crash(case, *args):
        raise AttributeError("simulated bug")

    summary = sweep(tmp_path, Matrix(norms=("bn",), variants=("native",), opsets=(18,), exporters=("dynamo",),
                                     dtypes=("float32",), providers=("cpu",)),
                    how=SweepOptions(progress=False), check=CheckOptions(("normal",)), case_runner=crash)
    assert summary.counts == {"internal error": 1} and summary.exit_code() == 5 and summary.exit_code(True) == 5


# -- fix writes only what it proved -----------------------------------------------------------------------
def test_fix_writes_nothing_when_the_whole_model_differs(tmp_path, monkeypatch):
    """The whole model judged at a tolerance no rewrite meets (here: exact equality): the layer's proof
    passes, the whole model differs, and nothing reaches -o -- not even with --write-unproven."""
    import normonnx.core.outputs as outputs
    from normonnx.core.compare import Tolerance

    monkeypatch.setattr(outputs, "tolerance_for", lambda *a, **k: Tolerance(0.0, 0.0))  # fix's whole-model check
    src = corpus.gn_silu_block(tmp_path / "gn.onnx", 21, "dynamo")
    for extra in ((), ("--write-unproven",)):
        r = run_cli("fix", str(src), "-o", str(tmp_path / "out.onnx"), "--no-timing", *extra)
        assert r.returncode == 1 and "the whole model differs from the original" in last_line(r.stdout), r.stdout
        assert "(OUTSIDE tolerance)" in r.stdout and last_line(r.stdout).endswith("nothing written")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["gn.onnx"]  # no output, no staging folder


def test_fix_that_cannot_make_a_layer_pass_writes_nothing_from_the_cli(tmp_path, monkeypatch):
    from normonnx.core import compare

    src = corpus.gn_silu_block(tmp_path / "gn.onnx", 21, "dynamo")
    monkeypatch.setitem(compare.DEFAULT_TOLERANCES, "float32", compare.Tolerance(1e-12, 1e-12))
    monkeypatch.setattr(compare, "COND_K", 0.0)
    r = run_cli("fix", str(src), "-o", str(tmp_path / "out.onnx"), "--inputs", "normal", "--no-timing")
    assert r.returncode == 1 and not (tmp_path / "out.onnx").exists(), r.stdout  # the old code: exit 1, written
    assert "note: nothing written: the fixed model is not proven (a layer still fails on cpu)" in r.stdout


# -- diff -----------------------------------------------------------------------------------------------------
def _folder(path: Path, statuses: dict[str, str], schema: int = 3) -> Path:
    from normonnx.core.results import RESULTS, make_record

    path.mkdir()
    lines = []
    for case, st in statuses.items():
        rec = make_record("case", case_id=case, status="pass", norm="ln", variant="native", opset=18,
                          exporter="dynamo", dtype="float32", provider="cpu", versions={"normonnx": "x"})
        rec.update(status=st, schema=schema)
        lines.append(json.dumps(rec))
    (path / RESULTS).write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("new, worse", [("fail", True), ("not checked", True), ("internal error", True),
                                        ("mismatch", True), ("unsupported", True), ("pass", False)])
def test_diff_calls_pass_to_anything_else_a_regression(tmp_path, new, worse):
    base = _folder(tmp_path / "a", {"c": "pass"})
    r = run_cli("diff", str(base), str(_folder(tmp_path / "b", {"c": new})))
    assert r.returncode == (1 if worse else 0), r.stdout  # the old code: pass -> error or mismatch was no change
    if worse:
        assert f"pass -> {new}" in r.stdout


def test_diff_reads_an_older_base_and_compares_nothing_as_not_checked(tmp_path):
    base = _folder(tmp_path / "a", {"c": "error"}, schema=2)  # normonnx 0.2's word for not checked
    r = run_cli("diff", str(base), str(_folder(tmp_path / "b", {"c": "pass"})))
    assert r.returncode == 0 and "not checked -> pass" in r.stdout, r.stdout
    r = run_cli("diff", str(_folder(tmp_path / "e", {})), str(tmp_path / "b"))
    assert r.returncode == 4 and "NOT CHECKED: nothing to compare" in r.stdout, r.stdout


# -- input that is not what it claims ------------------------------------------------------------------
def test_recursive_local_functions_are_bad_input_before_any_rewrite(tmp_path):
    call = helper.make_node("Block", ["x"], ["y"], domain="local")
    fn = helper.make_function("local", "Block", ["x"], ["y"], [helper.make_node("Block", ["x"], ["y"], domain="local")],
                              [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    g = helper.make_graph([call], "g", [_vi("x")], [_vi("y")])
    m = helper.make_model(g, functions=[fn], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    onnx.save(m, str(tmp_path / "m.onnx"))
    for args in (("fix", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx")), ("scan", str(tmp_path / "m.onnx"))):
        one_line_error(run_cli(*args), 2, "local.Block -> local.Block", "cannot recurse")
    assert not (tmp_path / "o.onnx").exists()


def test_validate_model_on_a_whole_model_says_to_scan_it(tmp_path):
    m = torch_block(tmp_path / "block.onnx")
    one_line_error(run_cli("validate", "--model", str(m)), 2, "holds one norm (gn", "other layers around it (Conv",
                   "normonnx scan MODEL --validate")


def torch_block(path: Path) -> Path:
    import torch

    from normonnx.exporting.exporters import quiet_export

    block = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.GroupNorm(8, 32), torch.nn.SiLU()).eval()
    with quiet_export([]):
        torch.onnx.export(block, (torch.randn(1, 3, 16, 16),), str(path), dynamo=True, opset_version=21)
    return path


# -- what normonnx writes gets the umask's mode -----------------------------------------------------------
def _write_everything(out: Path, src: Path) -> None:
    """Every command that writes a file, through the command line, in this process."""
    cache = ["--cache-dir", str(out / "cache")]
    for args in (["export", "--norm", "ln", "-o", str(out / "ln.onnx")],
                 ["sweep", "-o", str(out / "s"), "--norms", "ln", "--variants", "native", "--opsets", "18",
                  "--dtypes", "float32", "--inputs", "normal", "--jobs", "1", *cache],
                 ["report", str(out / "s"), "-o", str(out / "report.html")],
                 ["merge", str(out / "s"), "-o", str(out / "m")],
                 ["validate", "--model", str(out / "ln.onnx"), "--inputs", "normal", "--save-inputs", str(out / "inputs")],
                 ["scan", str(out / "ln.onnx"), "--activations", "--save-outputs", str(out / "golden.npz")],
                 ["fix", str(src), "-o", str(out / "fixed.onnx"), "--no-timing"]):
        r = run_cli(*args)
        assert r.returncode in (0, 1), (args, r.returncode, r.stderr[-2000:])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_normonnx_writes_gets_the_umasks_mode(tmp_path, umask):
    """In this process under the umask (it is the process's own, restored after): a subprocess cost 7 s a run, most
    of it importing torch and the exporter."""
    src = corpus.gn_silu_block(tmp_path / "gn.onnx", 21, "dynamo")
    out = tmp_path / "out"
    out.mkdir()
    before = os.umask(umask)
    try:
        _write_everything(out, src)
    finally:
        os.umask(before)
    files = [f for f in out.rglob("*") if f.is_file() and f.name != ".lock"]
    names = {f.name for f in files}
    assert {"ln.onnx", "results.jsonl", "meta.json", "report.html", "golden.npz", "fixed.onnx"} <= names, names
    assert any(f.parent.name == "inputs" for f in files) and any("cache" in f.parts for f in files)
    want = 0o666 & ~umask
    bad = {str(f.relative_to(out)): oct(stat.S_IMODE(f.stat().st_mode)) for f in files
           if stat.S_IMODE(f.stat().st_mode) != want}
    assert not bad, f"not {oct(want)}: {bad}"  # the old code: 0600 for every file atomic_write made
