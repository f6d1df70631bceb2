"""The report's tables, each checked on records made to show one thing (and the real sweeps in
test_sweep): what a form needs, failures grouped by cause, a matrix without empty rows and columns,
the quick matrix's opsets per form."""
from __future__ import annotations

import pytest

from normonnx.presentation.findings import group_failures
from normonnx.presentation.report import needs_text, recommendations, visible_matrix
from normonnx.features.sweep import Matrix


def case(variant="native", opset=18, status="pass", exporter="dynamo", norm="gn", dtype="float32", fails=(),
         reason=None, nan=False):
    inputs = {s: {"status": "fail", "max_abs_err": 0.5, "nonfinite_mismatch": 8 if nan else 0} for s in fails}
    return {"type": "case", "case_id": f"{norm}-{variant}-op{opset}-{exporter}-{dtype}", "norm": norm, "provider": "cpu",
            "dtype": dtype, "variant": variant, "opset": opset, "exporter": exporter, "status": status,
            "inputs": inputs, "reason": reason}


@pytest.mark.parametrize("units, text", [
    ({("dynamo", 18): "pass", ("dynamo", 21): "pass"}, "opset >= 18 (dynamo)"),
    ({("dynamo", 18): "fail", ("dynamo", 21): "pass", ("dynamo", 23): "pass"}, "opset >= 21 (dynamo)"),
    ({("dynamo", 18): "pass", ("dynamo", 21): "fail", ("dynamo", 23): "pass"}, "opset 18, 23 (dynamo)"),
    ({("dynamo", 23): "pass", ("dynamo", 18): "skipped"}, "opset >= 23 (dynamo)"),
    ({("torchscript", 17): "pass", ("dynamo", 18): "pass"}, "opset >= 18 (dynamo) or opset >= 17 (torchscript)"),
    ({("dynamo", 18): "fail"}, "-"),
])
def test_needs_says_from_which_opset_a_form_passed(units, text):
    assert needs_text(units) == text


def test_a_form_that_passes_only_from_a_later_opset_is_shipped_with_that_opset():
    recs = [case("native", 18, "fail", fails=("constant",), nan=True), case("native", 21, "pass"),
            case("decomposed", 18, "fail", fails=("offset-1e4", "constant"))]
    (rec,) = recommendations(recs)
    assert rec["recommended"] == "native" and rec["needs"] == "opset >= 21 (dynamo)"
    assert rec["fails_otherwise"] == "native at opset 18: constant (NaN); decomposed: constant, offset-1e4 (0.5)"
    assert rec["why"] == "the only form passing every suite"


def test_no_form_passing_ships_none_and_names_the_least_bad():
    recs = [case("native", 18, "fail", fails=("constant", "offset-1e4")), case("decomposed", 18, "fail", fails=("constant",))]
    (rec,) = recommendations(recs)
    assert rec["recommended"] is None and rec["needs"] == "-"
    assert "least bad: decomposed, failing constant" in rec["why"]


def test_failures_are_grouped_one_row_per_cause():
    recs = [case("native", 18, "fail", fails=("constant",)), case("native", 21, "fail", fails=("constant",)),
            case("native", 18, "fail", fails=("constant",), dtype="float16"),
            case("decomposed", 18, "fail", fails=("offset-1e4",)),
            *[case("native", o, "mismatch", norm="ln", exporter="dynamo",
                   reason=f"asked for opset {o}, the exporter wrote opset 18") for o in (13, 17)],
            case("native", 18, "pass")]
    found = group_failures(recs)
    assert [len(f.cases) for f in found] == [2, 2, 1, 1]
    assert found[0].status == "fail" and "at opset 18 (dynamo), opset 21 (dynamo)" in found[0].what
    mismatch = next(f for f in found if f.status == "mismatch")
    assert mismatch.what == "asked for opset N, the exporter wrote opset N"


def test_matrix_leaves_out_rows_and_columns_where_nothing_ran():
    recs = [case("native", 18, "pass"), case("native", 21, "unsupported"), case("contrib", 18, "unsupported"),
            case("contrib", 21, "unsupported")]
    rows, cols, _ = visible_matrix(recs)
    assert rows == [("gn", "native")] and cols == [(18, "dynamo", "cpu", "float32")]


@pytest.mark.parametrize("norm, variant, opsets", [
    ("gn", "native", (18, 21)),  # GroupNormalization-18, then -21 (per-channel scale)
    ("ln", "native", (18,)),
    ("rms", "native", (23,)),  # RMSNormalization from 23: below, nothing to try
    ("gn", "decomposed", (18,)),
    ("gn", "layernorm-trick", (18,)),
])
def test_quick_matrix_tries_each_form_where_what_it_emits_changes(norm, variant, opsets):
    assert Matrix.quick(providers=("cpu",)).form_opsets(norm, variant) == opsets
    assert Matrix(providers=("cpu",)).form_opsets(norm, variant) == (13, 17, 18, 21, 23)


def test_quick_matrix_has_every_norm_form_and_dtype_on_the_default_exporter():
    quick = Matrix.quick(providers=("cpu",)).cases()
    assert {c.norm for c in quick} == {"bn", "ln", "in", "gn", "rms"} and {c.exporter for c in quick} == {"dynamo"}
    assert {c.dtype for c in quick} == {"float32", "float16"}
    assert {(c.norm, c.variant) for c in quick} == {(c.norm, c.variant) for c in Matrix(providers=("cpu",)).cases()}
    assert len(quick) < len(Matrix(providers=("cpu",)).cases()) / 5
