"""One judge: the same outputs fed through every place a verdict is made (validate's report and exit
code, scan's layer row, fix's layers and whole-model check, scan --activations, sweep records, bench's
validation column and its fastest form, normonnx.presentation.testing) get one verdict. Plus the sabotages a review
found no test caught."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from normonnx.core.compare import compare, tolerance_for
from normonnx.core.errors import ExitCode
from normonnx.core.judge import combined_exit, judge, status_of
from normonnx.core.spec import NormSpec
from normonnx.engine.validate import CaseInfo, ValidationResult

TOL = tolerance_for("float32")
REF = np.array([0.5, -1.0, 2.0, 0.0], np.float64)
EXIT = {"pass": ExitCode.PASSED, "fail": ExitCode.CHECK_FAILED, "not checked": ExitCode.NOT_CHECKED,
        "internal error": ExitCode.INTERNAL}


def _with(i, v):
    got = REF.astype(np.float32).copy()
    got[i] = v
    return got


# name -> (got, oracle, statuses of the other checks in the same set, the one verdict)
CASES = {
    "exact": (REF.astype(np.float32), REF, [], "pass"),
    "nan-placed-alike": (_with(1, np.nan), np.where(np.arange(4) == 1, np.nan, REF), [], "pass"),
    "plus-inf-placed-alike": (_with(2, np.inf), np.where(np.arange(4) == 2, np.inf, REF), [], "pass"),
    "minus-inf-placed-alike": (_with(2, -np.inf), np.where(np.arange(4) == 2, -np.inf, REF), [], "pass"),
    "nan-where-finite": (_with(1, np.nan), REF, [], "fail"),
    "minus-inf-where-finite": (_with(1, -np.inf), REF, [], "fail"),
    "minus-inf-where-plus-inf": (_with(2, -np.inf), np.where(np.arange(4) == 2, np.inf, REF), [], "fail"),
    "just-inside-tolerance": (_with(2, 2.0 + 0.9 * (TOL.atol + TOL.rtol * 2.0)), REF, [], "pass"),
    "just-outside-tolerance": (_with(2, 2.0 + 1.5 * (TOL.atol + TOL.rtol * 2.0)), REF, [], "fail"),
    "pass-beside-not-checked": (REF.astype(np.float32), REF, ["not checked"], "not checked"),
    "pass-beside-internal-error": (REF.astype(np.float32), REF, ["internal error"], "internal error"),
    "fail-beside-not-checked": (_with(1, -np.inf), REF, ["not checked"], "fail"),
    "fail-beside-internal-error": (_with(1, -np.inf), REF, ["internal error"], "fail"),
    "pass-beside-skipped": (REF.astype(np.float32), REF, ["skipped"], "pass"),
}


def _report(got, ref, others) -> ValidationResult:
    spec = NormSpec.make("ln", shape=(1, 4))
    info = CaseInfo("c", spec.id, "native", 18, "dynamo", "float32", TOL)
    c = compare(got, ref, "float32", TOL)
    results = [info.result("cpu", "normal:normal", status_of(c.passed), comparison=c)]
    results += [info.result("cpu", f"other:{k}", st, error="could not run" if st != "skipped" else None)
                for k, st in enumerate(others)]
    return ValidationResult(spec, "c", "test", {}, {}, results)


@pytest.mark.parametrize("name", CASES)
def test_every_entry_point_gives_one_verdict(name, monkeypatch):
    from normonnx.engine.bench import _fastest, _validation
    from normonnx.engine.layers import summarize
    from normonnx.graph.patterns import FoundNorm
    from normonnx.core.outputs import compare_outputs
    from normonnx.features.scan import ScanResult
    from normonnx.features.scan.checks import against_oracle
    from normonnx.features.sweep import SweepSummary, case_status
    from normonnx.presentation.testing import check_result

    got, ref, others, want = CASES[name]
    rep = _report(got, ref, others)
    assert rep.verdict.status == want
    assert rep.exit_code == EXIT[want]
    # scan --validate's layer row, and a model of that one layer (scan's and fix's exit code)
    f = FoundNorm("ln", "native", "LayerNormalization", ("n",), "x", "y")
    row = summarize(f, rep)
    assert row.status == want
    scanned = ScanResult("m.onnx", 18, "", [f], validations={0: row}, validated=True)
    assert scanned.exit_code == rep.exit_code
    # a sweep record, and sweep --strict over it
    assert case_status(rep.results) == want
    assert SweepSummary("out", 1, 0, statuses=[case_status(rep.results)]).exit_code(strict=True) == rep.exit_code
    # bench's validation column and its fastest form: the same model run through bench's own validation
    monkeypatch.setattr("normonnx.engine.validate.validate", lambda *a, **k: rep)
    col = _validation(None, "cpu", None)
    assert col["check"] == want
    rows = {"copy": {"form": "copy", "x_copy": 1.0}, "form": {"form": "form", "x_copy": 1.5, "stable": True, **col}}
    assert (_fastest(rows) == "form") is (want == "pass")
    # normonnx.presentation.testing
    if want == "pass":
        check_result(rep)
    else:
        with pytest.raises(AssertionError):
            check_result(rep)
    if others:
        return  # the two below judge one output alone
    # fix's whole-model check: the same arrays as a model's output against the original's
    whole = compare_outputs(["y"], [ref.astype(np.float32)], [got])
    assert whole.status == want, whole
    # scan --activations: a captured output against the oracle (the table's oracle stands in for the
    # reference of the captured input)
    import normonnx.core.reference

    monkeypatch.setattr(normonnx.core.reference, "reference", lambda spec, params, x: ref.reshape(1, 4))
    spec = NormSpec.make("ln", shape=(1, 4), affine=False)
    ok, _ = against_oracle(spec, {}, np.array([[0.1, 0.2, 0.3, 0.4]]), got.reshape(1, 4), "float32")
    assert judge([status_of(ok)]).status == want


def test_the_judge_orders_fail_before_internal_before_not_checked_before_pass():
    assert judge([]).status == "not checked"  # nothing checked is never a pass
    assert judge(["skipped"]).status == "not checked"
    assert judge(["pass", "skipped"]).status == "pass"
    assert judge(["pass", "not checked"]).status == "not checked"
    assert judge(["pass", "error"]).status == "not checked"  # an older document's word for it
    assert judge(["pass", "internal error", "not checked"]).status == "internal error"
    assert judge(["fail", "internal error", "pass"]).status == "fail"
    with pytest.raises(ValueError):
        judge(["passed"])
    # partial coverage accepted only on request, and never an internal error or nothing at all
    v = judge(["pass", "not checked"], allow_not_checked=True)
    assert (v.status, v.allowed, v.not_checked) == ("pass", True, 1)
    assert judge(["not checked"], allow_not_checked=True).status == "not checked"
    assert judge(["pass", "internal error"], allow_not_checked=True).status == "internal error"
    assert judge([], allow_not_checked=True).exit_code == ExitCode.NOT_CHECKED
    # parts of one command's verdict
    assert combined_exit(ExitCode.PASSED, ExitCode.NOT_CHECKED) == ExitCode.NOT_CHECKED
    assert combined_exit(ExitCode.INTERNAL, ExitCode.NOT_CHECKED) == ExitCode.INTERNAL
    assert combined_exit(ExitCode.INTERNAL, ExitCode.CHECK_FAILED) == ExitCode.CHECK_FAILED


# -- sabotages a review found no test would catch ---------------------------------------------------
@pytest.mark.parametrize("args, stable", [
    (dict(ratio=(1.0, 0.88, 1.12), copy_cv=0.0, others=None), False),  # CI half-width 12 % > 10 %
    (dict(ratio=(1.0, 0.93, 1.07), copy_cv=0.0, others=None), True),
    (dict(ratio=(1.0, 0.99, 1.01), copy_cv=0.20, others=None), False),  # copy varied 20 % > 15 %
    (dict(ratio=(1.0, 0.99, 1.01), copy_cv=0.10, others=None), True),
    (dict(ratio=(1.0, 0.99, 1.01), copy_cv=0.0, others=0.30), False),  # others 0.30 cores > 0.25
    (dict(ratio=(1.0, 0.99, 1.01), copy_cv=0.0, others=0.20), True),
], ids=["ci-12%", "ci-7%", "copy-20%", "copy-10%", "others-0.30", "others-0.20"])
def test_noise_verdict_edges(args, stable):
    """Each noise limit checked just past and just inside it: a limit made 3x looser (or tighter) fails here."""
    from normonnx.core import timing

    v = timing.Noise.of(args["ratio"], args["copy_cv"], None, 2, args["others"])
    assert v.stable is stable, v.reason


def test_activations_check_the_skip_layernorm_on_input_plus_residual(tmp_path):
    """SkipLayerNormalization normalizes input + skip (+ bias): the captured check must add the residual.
    Judged on x alone (the residual dropped), the captured output would disagree with the oracle."""
    import corpus
    from normonnx.features.scan.activations import check_activations

    path = tmp_path / "skip.onnx"
    onnx.save(corpus.contrib_skip_with_bias(), str(path))
    rep = check_activations(path, what_if=False)
    assert [lc.status for lc in rep.layers] == ["pass", "pass"], [(lc.why, lc.error) for lc in rep.layers]


def test_whole_model_check_fails_a_model_that_computes_something_else(tmp_path):
    """compare_models on two models that differ in one bias value: never 'within'."""
    from onnx import TensorProto, helper, numpy_helper

    from normonnx.repair.proof import compare_models

    def model(b):
        node = helper.make_node("Add", ["x", "b"], ["y"])
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(np.asarray(b, np.float32), "b")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    onnx.save(model([0.0, 0.0, 0.0]), str(tmp_path / "a.onnx"))
    onnx.save(model([0.0, 0.01, 0.0]), str(tmp_path / "b.onnx"))
    assert compare_models(tmp_path / "a.onnx", tmp_path / "a.onnx", None)[0].status == "pass"
    w, _ = compare_models(tmp_path / "a.onnx", tmp_path / "b.onnx", None)
    assert w.status == "fail" and w.outputs["y"].within is False
