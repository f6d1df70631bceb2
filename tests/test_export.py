"""Exports: every norm x variant x opset x exporter x dtype, checked, self-contained, and run on ORT CPU."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from normonnx import BadInput, ExportMismatch, NormSpec, export, export_result
from normonnx.core.compare import compare, tolerance_for
from normonnx.exporting.exporters import REGISTRY as EXPORTERS
from normonnx.exporting.export import check_request, verify_export
from normonnx.graph.graph import metadata
from normonnx.core.params import make_params, params_as
from normonnx.core.reference import reference
from normonnx.core.spec import numpy_dtype
from normonnx.exporting.variants import get_variant, variants_for
from normonnx.features.sweep import Matrix

OPSETS = (13, 15, 17, 18, 21, 23)
DTYPES = ("float32", "float16")
SPEC_BY_KIND = {"bn": NormSpec.make("bn", shape="2x4x6x6"), "ln": NormSpec.make("ln", shape="2x8x32"),
                "in": NormSpec.make("in", shape="2x4x6x6", affine=True), "gn": NormSpec.make("gn", shape="2x8x6x6", groups=4),
                "rms": NormSpec.make("rms", shape="2x8x32")}


def _matrix():
    for kind, spec in SPEC_BY_KIND.items():
        for variant in variants_for(kind):
            for opset in OPSETS:
                for exporter in EXPORTERS:
                    for dtype in DTYPES:
                        if not _float16_twin(kind, variant, opset, exporter, dtype):
                            yield spec.replace(dtype=dtype), variant, opset, exporter


def _float16_twin(kind: str, variant: str, opset: int, exporter: str, dtype: str) -> bool:
    """A dynamo float16 export whose float32 twin is in the matrix, left out (each costs ~0.25 s; these were a
    third of this file's time): below opset 18, where the dynamo exporter writes 18 and the ONNX version converter
    rewrites op versions, and above 18 at an opset that changes nothing the form emits (what `sweep`'s quick
    matrix leaves out too). What goes untested is float16 meeting those conversions; float16 runs at every opset
    through TorchScript, and through dynamo at 18 and wherever the form's ops change."""
    native = EXPORTERS["dynamo"].native_from
    if exporter != "dynamo" or dtype != "float16" or opset == native:
        return False
    return opset < native or opset not in _CHANGES.form_opsets(kind, variant)


_CHANGES = Matrix(opsets=OPSETS, only_changes=True)  # sweep's rule: the opsets where a form's ops change


MATRIX = list(_matrix())
# what happens to each request: "ok", "unsupported" (refused before exporting, with the minimum opset),
# or "converted-or-refused": the dynamo exporter implements opset >= 18 only and runs the version
# converter below it, which sometimes silently keeps 18; normonnx must then refuse the file.


def _expected(spec, variant, opset, exporter) -> str:
    try:
        check_request(spec, variant, opset, exporter)
    except BadInput:
        return "unsupported"
    if exporter == "dynamo" and opset < EXPORTERS["dynamo"].native_from:
        return "converted-or-refused"
    return "ok"


@pytest.mark.parametrize("spec, variant, opset, exporter", MATRIX,
                         ids=[f"{s.id}-{v}-op{o}-{e}" for s, v, o, e in MATRIX])
def test_export_matrix_runs_on_ort_cpu_and_matches_oracle(spec, variant, opset, exporter, tmp_path):
    expected = _expected(spec, variant, opset, exporter)
    out = tmp_path / "m.onnx"
    if expected == "unsupported":  # refused before exporting: an opset below the variant's, or a spec it cannot express
        with pytest.raises(BadInput, match="opset|cannot express"):
            export_result(spec, variant, opset, exporter, output=out)
        return
    try:
        rep = export_result(spec, variant, opset, exporter, output=out)
    except ExportMismatch as e:
        assert expected == "converted-or-refused", f"unexpected refusal: {e}"
        assert f"requested opset {opset} but the model declares opset" in str(e)
        assert not out.exists(), "a refused model must not be left behind"
        return
    assert rep.opset == opset and rep.mismatch is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"], "no .onnx.data side file, no temp file"
    model = onnx.load(str(out))
    meta = metadata(model)
    assert NormSpec.from_dict(json.loads(meta["spec"])) == spec
    assert (meta["variant"], meta["exporter"], meta["opset_requested"]) == (variant, exporter, str(opset))
    assert {"torch", "onnx", "onnxscript", "normonnx"} <= set(json.loads(meta["versions"]))
    v = get_variant(variant)
    if v.unsupported_on("cpu"):  # com.microsoft GroupNorm: CUDA only; here its graph and input layout are checked
        assert "com.microsoft.GroupNorm" in rep.ops and "CUDA" in v.unsupported_on("cpu")
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert tuple(dims) == v.model_shape(spec.shape)
        return
    x = np.random.default_rng(1).standard_normal(spec.shape).astype(numpy_dtype(spec.dtype))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    assert y.dtype == numpy_dtype(spec.dtype)
    ref = reference(spec, params_as(make_params(spec), numpy_dtype(spec.dtype)), x)
    c = compare(y, ref, spec.dtype, tolerance_for(spec.dtype))
    assert c.passed, c.reason


def test_dynamo_below_18_is_refused_not_kept(tmp_path):
    """The refusal path is not hypothetical: asked for opset 13, torch 2.13's dynamo exporter writes a
    BatchNorm at 18, and normonnx refuses the file instead of passing it off as opset 13."""
    out = tmp_path / "bn13.onnx"
    with pytest.raises(ExportMismatch, match="requested opset 13 but the model declares opset 18"):
        export_result(SPEC_BY_KIND["bn"], "native", 13, "dynamo", output=out)
    assert not out.exists()
    rep = export_result(SPEC_BY_KIND["bn"], "native", 13, "dynamo", output=out, allow_mismatch=True)
    assert rep.opset == 18 and "requested opset 13" in rep.mismatch


@pytest.mark.parametrize("kind", ["ln", "gn", "in", "bn"])
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_dynamic_export_runs_at_another_shape(kind, exporter, tmp_path):
    spec = SPEC_BY_KIND[kind]
    rep = export_result(spec, "native", 18, exporter, dynamic=True, output=tmp_path / "d.onnx")
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(rep.path)).graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str), f"batch dim is not symbolic: {dims}"
    shape = list(spec.shape)
    shape[0] += 3
    if kind != "ln":
        shape[-1] += 5
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    y = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = reference(spec, make_params(spec), x)
    assert y.shape == tuple(shape)
    assert compare(y, ref, "float32", tolerance_for("float32")).passed


def test_bfloat16_export_is_a_checked_model(tmp_path):
    spec = SPEC_BY_KIND["ln"].replace(dtype="bfloat16")
    rep = export_result(spec, "native", 18, "dynamo", output=tmp_path / "b.onnx")
    model = onnx.load(str(rep.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    node = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    # stash_type: ONNX computes LN statistics in float32 for low-precision inputs (default 1 = float)
    stash = [a.i for a in node.attribute if a.name == "stash_type"]
    assert stash in ([], [1])


def test_native_gn_18_uses_per_group_identity_and_per_channel_affine(tmp_path):
    spec = SPEC_BY_KIND["gn"]
    rep = export_result(spec, "native", 18, "torchscript", output=tmp_path / "g.onnx")
    assert rep.ops.get("GroupNormalization") == 1 and "Mul" in rep.ops and "Add" in rep.ops
    rep21 = export_result(spec, "native", 21, "dynamo", output=tmp_path / "g21.onnx")
    assert rep21.ops == {"GroupNormalization": 1}


def test_verify_export_reports_opset_and_op_mismatch(tmp_path):
    spec = SPEC_BY_KIND["ln"]
    rep = export_result(spec, "native", 18, "torchscript", output=tmp_path / "l.onnx")
    model = onnx.load(str(rep.path))
    assert verify_export(model, spec, "native", 18) is None
    assert "requested opset 17 but the model declares opset 18" in verify_export(model, spec, "native", 17)
    assert "no *Normalization op" in verify_export(model, spec, "decomposed", 18)


def test_allow_mismatch_keeps_and_labels_the_file(tmp_path):
    spec = SPEC_BY_KIND["ln"]
    rep = export_result(spec, "decomposed", 13, "dynamo", output=tmp_path / "m.onnx", allow_mismatch=True)
    if rep.mismatch is None:
        pytest.skip("this torch converted down to 13 by itself")
    assert rep.opset == 18 and "declares opset 18" in rep.mismatch
    assert "mismatch" in metadata(onnx.load(str(rep.path)))


def _elem_types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input,
                                                           *inferred.graph.output)}


@pytest.mark.parametrize("kind, variant, op", [("ln", "decomposed-fp32acc", "ReduceMean"),
                                               ("gn", "decomposed-fp32acc", "ReduceMean"),
                                               ("rms", "decomposed-fp32acc", "ReduceMean"),
                                               ("gn", "instance-trick-fp32acc", "InstanceNormalization")])
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_fp32_accumulation_is_casts_around_the_statistics(kind, variant, op, exporter, tmp_path):
    """A float16 model in and out, and every reduction (or InstanceNormalization) reading float32."""
    spec = SPEC_BY_KIND[kind].replace(dtype="float16")
    model = onnx.load(str(export_result(spec, variant, 18, exporter, output=tmp_path / "m.onnx").path))
    types = _elem_types(model)
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert types[model.graph.input[0].name] == f16 and types[model.graph.output[0].name] == f16
    stats = [n for n in model.graph.node if n.op_type == op]
    assert stats and all(types[n.input[0]] == f32 for n in stats), [(n.name, types[n.input[0]]) for n in stats]
    assert any(n.op_type == "Cast" for n in model.graph.node)
    plain = onnx.load(str(export_result(spec, variant.removesuffix("-fp32acc"), 18, exporter,
                                        output=tmp_path / "p.onnx").path))
    ptypes = _elem_types(plain)
    assert all(ptypes[n.input[0]] == f16 for n in plain.graph.node if n.op_type == op)  # the form it fixes


def test_fp32_accumulation_is_refused_for_float32_with_why():
    with pytest.raises(BadInput, match="float32 statistics are what float32 graphs compute already"):
        export_result(SPEC_BY_KIND["ln"], "decomposed-fp32acc")


@pytest.mark.parametrize("kind", ["gn", "in"])
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_layernorm_trick_graph(kind, exporter, tmp_path):
    model = onnx.load(str(export_result(SPEC_BY_KIND[kind], "layernorm-trick", 18, exporter,
                                        output=tmp_path / "m.onnx").path))
    ops = [n.op_type for n in model.graph.node if n.op_type != "Constant"]
    assert ops.count("LayerNormalization") == 1 and ops.count("Reshape") == 2
    assert not {"InstanceNormalization", "GroupNormalization"} & set(ops)
    ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    assert {a.name: a.i for a in ln.attribute if a.name == "axis"}["axis"] in (-1, 2)


def test_layernorm_trick_dynamic_builds_its_scale_at_run_time(tmp_path):
    """Exported with symbolic dims, the LayerNormalization's scale is expanded to the row length at run time."""
    spec = SPEC_BY_KIND["gn"]
    rep = export_result(spec, "layernorm-trick", 18, "dynamo", dynamic=True, output=tmp_path / "d.onnx")
    x = np.random.default_rng(3).standard_normal((3, 8, 5, 7)).astype(np.float32)
    y = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = reference(spec, make_params(spec), x)
    assert compare(y, ref, "float32", tolerance_for("float32")).passed


def test_layernorm_trick_refuses_instance_norm_with_running_stats():
    with pytest.raises(BadInput, match="running statistics"):
        export_result(NormSpec.make("in", track_running_stats=True), "layernorm-trick", 18)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_contrib_graphs(exporter, tmp_path):
    """contrib: Transpose -> com.microsoft GroupNorm(channels_last=1) -> Transpose, NCHW in and out;
    contrib-nhwc: the op alone on NHWC tensors (the module's permutes cancel the op's Transposes)."""
    spec = SPEC_BY_KIND["gn"]
    nchw = onnx.load(str(export_result(spec, "contrib", 18, exporter, output=tmp_path / "a.onnx").path))
    gn = next(n for n in nchw.graph.node if n.op_type == "GroupNorm")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gn.attribute}
    assert gn.domain == "com.microsoft" and attrs["channels_last"] == 1 and attrs["groups"] == 4
    assert [n.op_type for n in nchw.graph.node if n.op_type in ("Transpose", "GroupNorm")] == \
        ["Transpose", "GroupNorm", "Transpose"]
    if exporter == "dynamo":
        nhwc = onnx.load(str(export_result(spec, "contrib-nhwc", 18, exporter, output=tmp_path / "b.onnx").path))
        assert [n.op_type for n in nhwc.graph.node if n.op_type != "Constant"] == ["GroupNorm"]
        assert [d.dim_value for d in nhwc.graph.input[0].type.tensor_type.shape.dim] == [2, 6, 6, 8]


def test_contrib_refuses_what_the_kernel_cannot_take():
    with pytest.raises(BadInput, match="4-D"):
        export_result(NormSpec.make("gn", shape="2x8x16", groups=4), "contrib")


def test_reusing_the_torchlib_table_changes_no_exported_byte(tmp_path, monkeypatch):
    """The per-process torchlib table, signatures and CIA op walk (exporters._reuse_torchlib_table,
    _reuse_op_signatures, _reuse_cia_materialization) only save time: a dynamo export made with them is byte for
    byte the one made with onnxscript's and torch's own per-export rebuild. Where a torch or onnxscript release
    moves what they replace, the `assert reused` lines fail: the saving is gone, and this says where."""
    import sys

    from torch._export import utils
    from torch.onnx._internal.exporter import _schemas

    from normonnx.exporting.exporters import _reuse_cia_materialization, _reuse_op_signatures, _reuse_torchlib_table

    spec = NormSpec.make("gn", dtype="float16")
    export(spec, "native", 21, "dynamo", output=tmp_path / "reused.onnx")
    _reuse_torchlib_table()
    _reuse_op_signatures()
    _reuse_cia_materialization()
    reused = [m for n, m in sys.modules.items() if n.startswith("onnxscript._framework_apis.")
              and getattr(getattr(m, "get_torchlib_ops", None), "_normonnx_reused", False)]
    assert reused  # the table is in place, where torch reads it
    assert getattr(_schemas.op_signature_from_function, "_normonnx_reused", False)  # and the signatures
    assert getattr(utils._materialize_cpp_cia_ops, "_normonnx_reused", False)  # and the walk
    for m in reused:
        monkeypatch.setattr(m, "get_torchlib_ops", m.get_torchlib_ops.original)
    monkeypatch.setattr(_schemas, "op_signature_from_function", _schemas.op_signature_from_function.original)
    monkeypatch.setattr(utils, "_materialize_cpp_cia_ops", utils._materialize_cpp_cia_ops.original)
    for name in ("_reuse_torchlib_table", "_reuse_op_signatures", "_reuse_cia_materialization"):
        monkeypatch.setattr(f"normonnx.exporting.exporters.{name}", lambda: None)
    export(spec, "native", 21, "dynamo", output=tmp_path / "rebuilt.onnx")
    assert (tmp_path / "reused.onnx").read_bytes() == (tmp_path / "rebuilt.onnx").read_bytes()


def test_the_cia_walk_is_skipped_only_while_torch_registers_nothing_new():
    """exporters._reuse_cia_materialization skips torch's walk over its CompositeImplicitAutograd ops only when the
    dispatcher lists the same ops as last time: an op registered since is walked (torch.ops gets it), as torch's
    own walk would."""
    import torch
    from torch._export import utils

    from normonnx.exporting.exporters import _reuse_cia_materialization

    _reuse_cia_materialization()
    utils._materialize_cpp_cia_ops()  # the list as it is now: walked (or already walked by an export)
    lib = torch.library.Library("normonnx_cia_walk", "DEF")
    try:
        lib.define("twice(Tensor x) -> Tensor")
        lib.impl("twice", lambda x: x * 2, "CompositeImplicitAutograd")
        assert "twice" not in vars(torch.ops.normonnx_cia_walk)  # not created until something asks for it
        utils._materialize_cpp_cia_ops()
        assert "twice" in vars(torch.ops.normonnx_cia_walk)  # the walk ran again: the list had changed
    finally:
        getattr(lib, "_destroy", lambda: None)()  # the op leaves the dispatcher again
