"""The shifted form (one sample of each normalization set subtracted before the two-pass statistics): float32
statistics for float16, exact on zero-variance sets on ORT CPU and on OpenVINO (where LayerNormalization and
every other form miss a constant 64x64 group), written by fix's rules and found again by scan as one norm.
Its every-suite verdicts on cpu/reference/torch are rows of tests/test_validate.py's matrix."""
from __future__ import annotations

import importlib.util

import onnx
import pytest
from torch import nn

import corpus
import normonnx
from normonnx import NormSpec, export_result
from normonnx.core.errors import ExitCode
from normonnx.exporting.export import ExportOptions
from normonnx.engine.inputs import CheckOptions
from normonnx.repair.fixer import ProofOptions
from normonnx.graph.rewrite import apply, plan_layers, to_checked_proto
from normonnx.graph.rules import RULES
from normonnx.engine.runtimes import RunOptions
from normonnx.features.scan import scan
from normonnx.graph.shapes import infer_shapes
from normonnx.engine.validate import validate

requires_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                       reason="the openvino extra is not installed")


def _by_sample(report, runtime: str) -> dict:
    return {r.inputs.split(":")[1]: r for r in report.results if r.runtime == runtime}


@pytest.mark.parametrize("kind", ["ln", "gn"])
def test_float16_statistics_are_float32_between_casts(kind, tmp_path):
    """float16 in and out, a Slice for the shift, every ReduceMean reading float32 (with float16 statistics
    the reference runtime, which computes float16 in float16 as a GPU does, overflows: measured)."""
    spec = NormSpec.make(kind, dtype="float16", **({"groups": 4} if kind == "gn" else {}))
    model = onnx.shape_inference.infer_shapes(onnx.load(str(export_result(spec, "shifted", 18,
                                                                          output=tmp_path / "m.onnx").path)))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input,
                                                           *model.graph.output)}
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert types[model.graph.input[0].name] == f16 and types[model.graph.output[0].name] == f16
    ops = [n.op_type for n in model.graph.node]
    assert "Slice" in ops and "Cast" in ops
    means = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    assert len(means) == 2 and all(types[n.input[0]] == f32 for n in means), [(n.name, types[n.input[0]])
                                                                               for n in means]


@pytest.mark.parametrize("kind", ["ln", "in", "gn"])
def test_zero_variance_sets_are_exact_on_ort_cpu(kind):
    """x - x0 is exactly zero on a constant set: the output is the bias exactly, at the realistic size too
    (where ORT CPU's ReduceMean chain and InstanceNormalization miss it by 7e-3..2.4e-2)."""
    rep = validate(NormSpec.make(kind), export=ExportOptions(variant="shifted"), run=RunOptions.on("cpu"),
                   check=CheckOptions(["constant"]))
    rows = _by_sample(rep, "cpu")
    assert set(rows) == {"constant", "constant-large"}
    assert all(r.status == "pass" and r.max_abs_err == 0 for r in rows.values()), \
        {k: (r.status, r.max_abs_err) for k, r in rows.items()}


@requires_openvino
def test_shifted_gn_passes_constant_large_on_openvino_where_the_layernorm_trick_fails():
    """A constant 64x64 group (4096 elements per channel): OpenVINO's LayerNormalization errs ~2e-2 (measured),
    the shifted chain is exact."""
    spec = NormSpec.make("gn", groups=4)
    got = {}
    for variant in ("shifted", "layernorm-trick"):
        rep = validate(spec, export=ExportOptions(variant=variant), run=RunOptions.on("openvino"),
                       check=CheckOptions(["constant"]))
        got[variant] = _by_sample(rep, "openvino")["constant-large"]
    assert got["shifted"].status == "pass" and got["shifted"].max_abs_err == 0, got["shifted"].reason
    assert got["layernorm-trick"].status == "fail", got["layernorm-trick"]
    assert got["layernorm-trick"].max_abs_err > 1e-3


@requires_openvino
def test_fix_for_openvino_writes_the_shifted_form_and_scan_finds_it(tmp_path):
    """The README's Conv -> GroupNorm(8, 32) -> SiLU block at 64x64 (dynamo, opset 21, non-trivial affine):
    no other form passes a constant group on OpenVINO; fix writes the shifted form, exits 0, and the written
    model's scan finds one GroupNorm among the nodes fix wrote, passing on OpenVINO."""
    block = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU()).eval()
    src = corpus.export_block(block, (1, 3, 64, 64), tmp_path / "block.onnx", 21, "dynamo")
    dst = tmp_path / "fixed.onnx"
    report = normonnx.fix(src, dst, proof=ProofOptions(runtimes=("openvino",), timing=False))
    (lf,) = report.layers
    assert report.exit_code == ExitCode.PASSED and report.written and dst.exists(), report.to_dict()
    assert lf.status == "rewritten" and lf.form == "shifted" and lf.final.status == "pass", lf.to_dict()
    lost = {c.form: c.status for c in lf.candidates}
    assert lost["layernorm-trick"] == lost["decomposed"] == "fail", lost
    after = scan(dst, validate=True, runtimes=["openvino"])
    assert [(f.kind, f.form, f.groups) for f in after.norms] == [("gn", "decomposed", 8)]
    assert set(after.norms[0].nodes) <= set(lf.written) and after.verdict.status == "pass"


# each rule's shifted candidate written into a model as fix writes it, then scanned: (variant, spec) -> kind
WRITTEN = {
    "gn-native-21": ("native", 21, NormSpec.make("gn", groups=4)),
    "in-native": ("native", 18, NormSpec.make("in", affine=True)),
    "ln-decomposed": ("decomposed", 18, NormSpec.make("ln")),
    "ln-decomposed-fp16": ("decomposed", 18, NormSpec.make("ln", dtype="float16")),
}


@pytest.mark.parametrize("name", WRITTEN)
def test_the_rules_write_a_shifted_form_scan_finds_as_the_same_norm(name, tmp_path):
    variant, opset, spec = WRITTEN[name]
    src = export_result(spec, variant, opset, output=tmp_path / "m.onnx").path
    model = onnx.load(str(src))
    covered, plans = plan_layers(infer_shapes(onnx.load(str(src))), list(RULES.values()))
    (k, planned), = plans.items()
    plan = next(p for p in planned.plans if p.form == "shifted")
    irm, written = apply(model, {k: (plan, planned.start)}, {c.index: c.norm for c in covered})
    proto, _ = to_checked_proto(irm, model)
    onnx.save(proto, str(tmp_path / "w.onnx"))
    assert "Slice" in {n.op_type for n in proto.graph.node}
    after = scan(tmp_path / "w.onnx", validate=True, runtimes=["cpu"])
    assert [(f.kind, f.form) for f in after.norms] == [(spec.kind, "decomposed")], after.to_dict()
    assert set(after.norms[0].nodes) <= set(written[k])
    assert after.verdict.status == "pass", after.to_dict()
