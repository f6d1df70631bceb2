"""scan: every norm in the generated corpus found with the right kind and form, nothing else;
--validate passes the correct ones and fails the broken ones; untrusted files are handled safely."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import corpus
from conftest import run_cli
from normonnx import BadInput
from normonnx.features.scan import scan

NAMES = list(corpus.TORCH_CORPUS) + list(corpus.HAND_CORPUS)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return {name: corpus.build(name, folder) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_detections_match_the_corpus(built, name):
    path, expected = built[name]
    report = scan(path)
    assert [(f.kind, f.form) for f in report.norms] == expected
    for f in report.norms:
        assert f.nodes and f.eps is not None and f.eps > 0


def _one(built, name, i=0):
    return scan(built[name][0]).norms[i]


def test_details_of_what_is_found(built):
    gn = _one(built, "unet-op18-dynamo")
    assert gn.groups == 4 and gn.affine and "Reshape" in gn.op and gn.dtype == "float32"
    rms = _one(built, "rms-decoder-op18-dynamo")
    assert rms.eps == pytest.approx(1e-6) and rms.affine
    ln = _one(built, "ln-mul-recip-attr-axes")
    assert ln.axes == (-1,) and "Reciprocal" in ln.op and dict(ln.params).keys() == {"weight", "bias"}
    assert _one(built, "ln-div-pow-const-eps-noaffine").affine is False
    assert _one(built, "ln-fp16-cast-island").dtype == "float16"
    assert len(_one(built, "encoder-op14-torchscript").nodes) == 9  # ReduceMean .. affine Add
    bn = _one(built, "resnet-op18-dynamo")
    assert dict(bn.params).keys() == {"weight", "bias", "running_mean", "running_var"}


@pytest.mark.parametrize("name, code, words", [
    ("ln-naive-variance", "variance-e-x2", "E[x^2]-E[x]^2"),
    ("ln-eps-outside-sqrt", "eps-outside-sqrt", "eps added outside the sqrt"),
    ("gn18-native-per-group", "gn18-per-group-affine", "per group, not per channel"),
    ("unet-op21-dynamo", "gn-function-body", "inlines the function body"),
    ("ln-fp16-no-island", "fp16-statistics", "float16 statistics without float32 accumulation"),
])
def test_risk_flags(built, name, code, words):
    """Risks are data: a stable code (what fix's rules match) and a message for people."""
    risks = _one(built, name).risks
    assert any(r.code == code and words in r.message for r in risks), risks


@pytest.mark.parametrize("name", ["ln-pow-div-sqrt", "ln-mul-recip-attr-axes", "encoder-op14-torchscript",
                                  "ln-fp16-cast-island"])
def test_risks_are_not_raised_on_sound_chains(built, name):
    assert not _one(built, name).risks


def test_fusion_is_reported(built):
    assert scan(built["encoder-op14-torchscript"][0]).fused == {0: True, 1: True}  # the Pow pattern ORT fuses
    assert scan(built["ln-mul-recip-attr-axes"][0]).fused == {0: False}


@pytest.mark.parametrize("name", ["encoder-op14-torchscript", "encoder-op17-dynamo", "unet-op18-dynamo",
                                  "unet-op17-torchscript", "resnet-op17-torchscript", "resnet-op18-dynamo",
                                  "style-op18-dynamo", "rms-decoder-op18-dynamo", "rms-decoder-op23-dynamo",
                                  "ln-pow-div-sqrt", "ln-mul-recip-attr-axes", "ln-div-pow-const-eps-noaffine",
                                  "ln-fp16-cast-island", "rms-pow-mul-recip", "ln-rsqrt-div-one",
                                  "rms-rsqrt-div-one", "contrib-skip-with-bias"])
def test_validate_passes_correct_layers(built, name):
    report = scan(built[name][0], validate=True)
    assert report.validations and report.verdict.status == "pass", report.to_dict()
    assert all(v.status == "pass" for v in report.validations.values())


@pytest.mark.parametrize("name, failing_input", [
    ("ln-eps-outside-sqrt", "tiny-scale"),  # eps in the wrong place: the deliberately broken chain
    ("ln-naive-variance", "offset"),
    ("unet-op21-dynamo", "offset"),  # ORT's GroupNormalization function body
    ("gn18-native-per-group", "offset"),
])
def test_validate_fails_broken_layers(built, name, failing_input):
    report = scan(built[name][0], validate=True)
    assert report.verdict.status != "pass"
    assert any(v.status == "fail" and failing_input in v.validation for v in report.validations.values())


def test_contrib_layers_validate_or_say_why(built):
    report = scan(built["contrib-ops"][0], validate=True)
    v = report.validations
    # com.microsoft LayerNormalization / SimplifiedLayerNormalization: ORT 1.32 registers neither
    assert v[0].status == "not checked" and "cannot be loaded by ONNX Runtime" in v[0].validation
    assert v[2].status == "pass"  # SimplifiedLayerNormalization as ORT's fusion writes it
    # Skip*LayerNormalization: validated as the norm of x with a zero residual
    assert v[3].status == "pass" and v[4].status == "pass"


@pytest.mark.parametrize("name, reasons", [
    ("contrib-nhwc-groupnorms", ["channels_last (NHWC) input", "channels_last (NHWC) input"]),
    ("embed-layer-norm", ["sum of embedding lookups inside the op"]),
])
def test_contrib_layers_that_cannot_be_checked_say_why(built, name, reasons):
    report = scan(built[name][0], validate=True)
    assert [v.status for v in report.validations.values()] == ["not checked"] * len(reasons)
    for v, why in zip(report.validations.values(), reasons, strict=True):
        assert "not checked: " in v.validation and why in v.validation
    assert report.exit_code == 4  # found norms, validated none


def test_contrib_groupnorms_carry_the_one_pass_risk_and_the_fused_activation(built):
    gn, sgn = scan(built["contrib-nhwc-groupnorms"][0]).norms
    assert gn.risks[0].code == "one-pass-variance" and gn.unvalidatable and "SiLU" not in gn.unvalidatable  # NHWC wins
    assert sgn.op == "com.microsoft.SkipGroupNorm" and sgn.extra_inputs == ("x",) and sgn.pre_bias


def test_skip_bias_is_zeroed_and_said(built):
    report = scan(built["contrib-skip-with-bias"][0], validate=True)
    assert all("zero residual and bias" in v.validation for v in report.validations.values())


def test_weight_standardisation_is_left_out_with_the_reason(built):
    report = scan(built["weight-standardisation"][0])
    assert report.norms == [] and len(report.left_out) == 1
    assert report.left_out[0].kind == "bn" and "weight standardisation" in report.left_out[0].reason
    assert "left out: bn at" in run_cli("scan", str(built["weight-standardisation"][0])).stdout


# -- untrusted files --------------------------------------------------------------------------------
def _with_external(tmp_path, location: str, name="w") -> str:
    """A norm model plus an unrelated MatMul weight stored as external data at `location`."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), name)
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(16 * 16 * 4))):
        e = w.external_data.add()
        e.key, e.value = k, v
    w.ClearField("raw_data")
    scale = numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "s")
    bias = numpy_helper.from_array(rng.normal(0, 0.5, 16).astype(np.float32), "b")
    nodes = [helper.make_node("LayerNormalization", ["x", "s", "b"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", name], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 16])], [w, scale, bias])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.mark.parametrize("location", ["/etc/passwd", "../../outside.bin", "sub/../../escape.bin"])
def test_external_data_escaping_the_folder_is_refused(tmp_path, location):
    path = _with_external(tmp_path, location)
    with pytest.raises(BadInput, match="escapes the model's folder"):
        scan(path)
    proc = run_cli("scan", path)
    assert proc.returncode == 2 and "escapes the model's folder" in proc.stderr and "Traceback" not in proc.stderr


def test_external_weights_not_needed_are_not_read(tmp_path):
    # the MatMul weight's file does not even exist: scanning and validating the LayerNorm never reads it
    path = _with_external(tmp_path, "weights.bin")
    report = scan(path, validate=True)
    assert [(f.kind, f.form) for f in report.norms] == [("ln", "native")]
    assert report.verdict.status == "pass" and report.validations[0].status == "pass"


def test_truncated_and_non_onnx_files_exit_2(built, tmp_path):
    raw = built["unet-op18-dynamo"][0].read_bytes()
    (tmp_path / "t.onnx").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "n.onnx").write_text("not a model")
    for f in ("t.onnx", "n.onnx", "missing.onnx"):
        proc = run_cli("scan", str(tmp_path / f))
        assert proc.returncode == 2, (f, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_cli_scan_json_and_exit_codes(built):
    proc = run_cli("scan", str(built["encoder-op14-torchscript"][0]))
    assert proc.returncode == 0 and "2 norms" in proc.stdout and "decomposed" in proc.stdout
    good = run_cli("scan", str(built["style-op18-dynamo"][0]), "--validate", "--json")
    doc = json.loads(good.stdout)
    assert good.returncode == 0 and doc["passed"] is True and doc["count"] == 2
    assert doc["checked_on"] == "cpu; input suites: every one that applies"  # what the verdict covers
    for n in doc["norms"]:
        assert {"kind", "form", "nodes", "eps", "passed"} <= set(n)
    bad = run_cli("scan", str(built["ln-eps-outside-sqrt"][0]), "--validate")
    verdict, checked, nxt = bad.stdout.strip().splitlines()[-3:]
    assert bad.returncode == 1 and verdict.startswith("FAILED")
    assert checked.startswith("checked: each layer cut out and run on cpu; input suites: every one that applies (stress")
    assert nxt.startswith(f"next: normonnx fix {built['ln-eps-outside-sqrt'][0]} -o FIXED.onnx")


def test_gn18_with_per_channel_affine_after_it(tmp_path):
    """normonnx's own native GN at opset 18: GroupNormalization-18 (identity) then Mul/Add per channel.
    The Mul/Add belong to the layer and fold into its per-channel affine."""
    from normonnx import NormSpec, export

    path = export(NormSpec.make("gn", groups=4), "native", 18, "torchscript", output=tmp_path / "g.onnx")
    report = scan(path, validate=True, inputs=["normal", "wide"])
    (f,) = report.norms
    assert f.form == "native" and len(f.nodes) == 3 and f.op.endswith("/Mul/Add")
    assert report.validations[0].status == "pass", report.validations[0]


def test_parallel_validation_gives_the_same_verdicts(built):
    path = built["unet-op18-dynamo"][0]
    one = scan(path, validate=True, inputs=["normal", "offset"])
    two = scan(path, validate=True, inputs=["normal", "offset"], jobs=2)
    assert [v.status for v in one.validations.values()] == [v.status for v in two.validations.values()]
    assert list(two.validations) == list(range(len(two.norms)))


def _symbolic_gn(tmp_path):
    rng = np.random.default_rng(0)
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-5)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "c", "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])],
                          [numpy_helper.from_array(rng.uniform(0.5, 1.5, 6).astype(np.float32), "s"),
                           numpy_helper.from_array(rng.normal(0, 1, 6).astype(np.float32), "b")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "in.onnx"))
    return str(tmp_path / "in.onnx")


def test_input_shape_fixes_symbolic_dims(tmp_path):
    path = _symbolic_gn(tmp_path)
    # the channel dim from the 6 weights, the others stand-ins (not 8 channels: the weights fix 6)
    assert scan(path, validate=True, inputs=["normal"]).validations[0].spec_id == "in-c6-2x6x8x8-fp32"
    proc = run_cli("scan", path, "--validate", "--inputs", "normal", "--input-shape", "x=1x6x5x7", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["norms"][0]["spec_id"] == "in-c6-1x6x5x7-fp32"


@pytest.mark.parametrize("arg, needle", [("y=1x6", "has no input 'y'; its inputs are x"), ("x=1x6", "rank 4, not 2"),
                                         ("x", "write NAME=DIMS"), ("x=1x0x2x2", "positive integer")])
def test_bad_input_shape_is_exit_2(tmp_path, arg, needle):
    from conftest import one_line_error

    one_line_error(run_cli("scan", _symbolic_gn(tmp_path), "--input-shape", arg), 2, needle)


# -- ONNX's own conformance node models (issue 19) --------------------------------------------------
def _conformance_models():
    import warnings

    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = load_model_tests(kind="node")
    wanted = ("test_batchnorm_", "test_instancenorm_", "test_layer_normalization_", "test_group_normalization_",
              "test_rms_normalization_")
    return {c.name: c.model for c in cases if c.name.startswith(wanted) and "expanded" not in c.name
            and "training_mode" not in c.name}


def test_conformance_single_op_models_are_found_and_validated(tmp_path):
    """ONNX's conformance models feed scale/bias (and BatchNorm's mean/var) as graph inputs: each is found,
    validated with seeded drawn parameters (the row says so), and passes on ORT CPU -- except
    GroupNormalization, which ORT runs as its E[x^2]-E[x]^2 function body and which fails at offset 1e2
    exactly as the exported GroupNormalization does (the README's first finding)."""
    models = _conformance_models()
    assert len(models) >= 40
    for name, model in models.items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        rep = scan(path, validate=True)
        assert len(rep.norms) == 1, name
        v = rep.validations[0]
        assert "parameters drawn" in v.validation or v.status != "pass", (name, v)
        if name.startswith("test_group_normalization_"):
            assert v.status == "fail" and "offset" in v.validation, (name, v)
        else:
            assert v.status == "pass" and rep.exit_code == 0, (name, v)


@pytest.mark.parametrize("fill, passes", [(1.0, True), (None, False)])
def test_a_scale_made_from_the_inputs_shape_is_read_at_the_shape_the_layer_runs_at(tmp_path, fill, passes):
    """normonnx fix writes the layernorm-trick's scale of ones as ConstantOfShape(Shape(x, start=2)), so
    symbolic dims stay symbolic. In a layer whose dims are unknown (a diffusers UNet's resnets exported by
    TorchScript) scan could not read it ("not validated") and fix, stricter about its own rewrites, said
    FAILED on a model scan passed. It is read at the dims the layer runs at. A scale computed from the
    input's values (Abs of it) stays unreadable: the layer is not validated, never guessed."""
    b = corpus.Builder(17)
    if fill is None:
        scale = b.op("ReduceMean", b.op("Abs", "x"), axes=[0, 1], keepdims=0)
    else:
        scale = b.op("ConstantOfShape", b.op("Shape", "x", start=2),
                     value=numpy_helper.from_array(np.full(1, fill, np.float32)))
    y = b.op("LayerNormalization", "x", scale, axis=2, epsilon=1e-5)
    path = tmp_path / "ln.onnx"
    onnx.save(b.model(["N", 4, "L"], y), str(path))
    rep = scan(path, validate=True, runtimes=["cpu"])
    assert len(rep.norms) == 1
    if passes:
        assert rep.exit_code == 0 and rep.counts["not_validated"] == 0, rep.to_dict()
    else:
        assert rep.counts["not_validated"] == 1 and "computed in the graph" in str(rep.to_dict())
