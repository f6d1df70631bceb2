"""normonnx fix: models made by real exporters with risky norms are rewritten, the rewrites proved
(scan --validate fails before and passes after, on ORT CPU and on onnx's reference evaluator, which
runs float16 ops in float16 as a GPU does), the output is faithful and passes onnx.checker; rules
refuse what they cannot rewrite exactly and a rewrite that validates worse is rolled back."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import corpus
from conftest import run_cli
from normonnx.errors import ExitCode
import normonnx
from normonnx.repair import RULES, Rule, region
from normonnx.graph import Graph
from normonnx.repair.rules import Plan, write_layer_norm
from normonnx.reference import group_norm
from normonnx.scan import scan

RUNTIMES = ["cpu", "reference"]

# name -> (builder(path), rules, scan --validate exit code before, (kind, form) scan finds after)
CASES = {
    "unet-gn21-dynamo": (lambda p: corpus.export_block(corpus.UNetBlock(), (2, 4, 8, 8), p, 21, "dynamo"), None,
                         ExitCode.CHECK_FAILED, [("gn", "instance-trick")] * 2),
    "unet-gn18-mul-add-dynamo": (corpus.unet_gn18_with_affine, None, ExitCode.CHECK_FAILED,
                                 [("gn", "instance-trick")] * 2),
    "encoder-op14-fp16-torchscript": (
        lambda p: corpus.export_half(corpus.EncoderLayer(), (2, 5, 32), p, 14, "torchscript"), None,
        ExitCode.CHECK_FAILED, [("ln", "decomposed")] * 2),  # opset 14: the float32-statistics chain
    "rms-op18-fp16-dynamo": (lambda p: corpus.export_half(corpus.NaiveRMSBlock(), (2, 5, 32), p, 18, "dynamo"), None,
                             ExitCode.CHECK_FAILED, [("rms", "decomposed")]),
    "rms-op23-fp16-dynamo": (lambda p: corpus.export_half(corpus.NaiveRMSBlock(), (2, 5, 32), p, 23, "dynamo"), None,
                             ExitCode.CHECK_FAILED, [("rms", "native")]),
    # no CPU kernel and an NHWC input the oracle does not take: not validated before (exit 4)
    "ms-groupnorm-nhwc-silu": (lambda p: onnx.save(corpus.contrib_groupnorm_nhwc_silu(), str(p)), ["ms-groupnorm"],
                               ExitCode.NOT_CHECKED, [("gn", "instance-trick")]),
}


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    """Each case built, scanned before, fixed once: name -> (src, out, before, report)."""
    folder = tmp_path_factory.mktemp("fix")
    out = {}
    for name, (build, rules, _, _) in CASES.items():
        src = folder / f"{name}.onnx"
        build(src)
        before = scan(src, validate=True, runtimes=RUNTIMES)
        dst = folder / f"{name}.fixed.onnx"
        out[name] = (src, dst, before, normonnx.fix(src, dst, rules=rules, timing=False))
    return out


@pytest.mark.parametrize("name", CASES)
def test_fix_repairs_and_proves(fixed, name):
    src, dst, before, report = fixed[name]
    _, _, code_before, forms_after = CASES[name]
    assert before.exit_code == code_before, before.to_dict()
    assert report.exit_code == ExitCode.PASSED and report.written
    assert report.layers and all(lf.status == "rewritten" for lf in report.layers), \
        [(lf.status, lf.reason) for lf in report.layers]
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    after = scan(dst, validate=True, runtimes=RUNTIMES)
    assert [(f.kind, f.form) for f in after.norms] == forms_after
    assert after.exit_code == ExitCode.PASSED and after.counts["failed"] == after.counts["not_validated"] == 0
    for lf in report.layers:  # the per-layer proof: the after form passes every suite on both runtimes
        ran = {k: v for k, v in lf.proof["after"].items() if v != "skipped"}
        assert ran and all(v == "pass" for v in ran.values()), lf.proof


@pytest.mark.parametrize("name", [n for n in CASES if not n.startswith("ms-")])
def test_whole_model_agrees_on_normal_inputs(fixed, name):
    _, _, _, report = fixed[name]
    w = report.whole_model
    assert w["passed"] is True, w
    assert all(o["within"] for o in w["outputs"].values())


def test_contrib_groupnorm_rewrite_matches_the_oracle(fixed):
    """ORT CPU has no com.microsoft GroupNorm kernel, so the whole model cannot be compared there:
    the report says so; the rewrite (NHWC transposes, fused SiLU) is checked against the oracle."""
    import onnxruntime as ort

    src, dst, _, report = fixed["ms-groupnorm-nhwc-silu"]
    assert report.whole_model["passed"] is None and "GroupNorm" in report.whole_model["error"]
    m = onnx.load(str(src))
    gamma, beta = (numpy_helper.to_array(t) for t in m.graph.initializer)
    x = np.random.default_rng(0).normal(50, 3, (2, 4, 4, 8)).astype(np.float32)  # an offset: one-pass breaks here
    y = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    g = group_norm(x.transpose(0, 3, 1, 2), 2, gamma, beta, 1e-5).transpose(0, 2, 3, 1)
    expected = g / (1 + np.exp(-g))
    assert np.max(np.abs(y - expected)) < 1e-4


@pytest.mark.parametrize("name", CASES)
def test_check_mode_fails_on_risky_and_passes_on_fixed(fixed, name):
    src, dst, _, _ = fixed[name]
    rules = CASES[name][1]
    assert normonnx.fix(src, check=True, rules=rules).exit_code == ExitCode.CHECK_FAILED
    assert normonnx.fix(dst, check=True, rules=rules).exit_code == ExitCode.PASSED


@pytest.mark.parametrize("name", CASES)
def test_output_is_faithful(fixed, name):
    """Same graph inputs and outputs (names, types), same metadata, and every initializer the rules did
    not use kept byte for byte."""
    src, dst, _, report = fixed[name]
    a, b = onnx.load(str(src)), onnx.load(str(dst))
    assert [(i.name, i.type) for i in a.graph.input] == [(i.name, i.type) for i in b.graph.input]
    assert [o.name for o in a.graph.output] == [o.name for o in b.graph.output]
    assert (a.producer_name, list(a.metadata_props)) == (b.producer_name, list(b.metadata_props))
    assert {(o.domain, o.version) for o in a.opset_import} == {(o.domain, o.version) for o in b.opset_import}
    g = Graph(a.graph)
    replaced = {i for lf in report.layers for i in region(g, lf.norm)[0]}
    outside = {v for i, n in enumerate(a.graph.node) if i not in replaced for v in n.input}
    kept = {t.name: t.SerializeToString() for t in b.graph.initializer}
    for t in a.graph.initializer:
        if t.name in outside:  # used by a node fix did not replace: must be there, unchanged
            assert kept.get(t.name) == t.SerializeToString(), t.name


def test_opset_raise_writes_layer_normalization(tmp_path):
    src = corpus.export_half(corpus.EncoderLayer(), (2, 5, 32), tmp_path / "enc.onnx", 14, "torchscript")
    report = normonnx.fix(src, tmp_path / "out.onnx", opset=17, timing=False)
    assert report.exit_code == 0 and [lf.status for lf in report.layers] == ["rewritten"] * 2
    after = scan(tmp_path / "out.onnx", validate=True, runtimes=RUNTIMES)
    assert [(f.kind, f.op) for f in after.norms] == [("ln", "LayerNormalization")] * 2 and after.passed
    assert onnx.load(str(tmp_path / "out.onnx")).opset_import[0].version == 17


def test_gn18_per_group_scale_expands_to_channels(tmp_path):
    """GroupNormalization-18 with a per-group scale/bias that is not the identity: the per-channel
    affine written must repeat each group's value over its channels (the whole model on ORT agrees)."""
    src = tmp_path / "gn18.onnx"
    onnx.save(corpus.gn18_native(), str(src))
    report = normonnx.fix(src, tmp_path / "out.onnx", timing=False)
    assert report.layers[0].status == "rewritten" and report.whole_model["passed"], report.to_dict()
    assert report.whole_model["max_abs_diff"] < 1e-5


def test_eps_outside_sqrt_is_refused_with_advice(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(corpus.ln_chain(eps_outside=True), str(src))
    report = normonnx.fix(src, tmp_path / "out.onnx", timing=False)
    lf = report.layers[0]
    assert lf.status == "refused" and "outside the square root" in lf.reason and "re-export" in lf.reason
    assert report.whole_model["max_abs_diff"] == 0  # nothing rewritten
    assert scan(tmp_path / "out.onnx").norms[0].form == "decomposed"
    r = run_cli("fix", str(src), "--dry-run")
    assert r.returncode == 0 and "refused: #0" in r.stdout


def test_zero_eps_is_refused(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(corpus.ln_chain(eps=0.0), str(src))
    lf = normonnx.fix(src, check=True).layers[0]
    assert lf.status == "refused" and "eps = 0.0" in lf.reason


def _decomposed_ln(site):
    from normonnx.repair.rules import _feature_param, _norm_axes

    f = site.norm
    if f.kind != "ln" or f.form != "decomposed":
        return None
    axes = _norm_axes(site)
    return axes, _feature_param(site, "weight", axes), _feature_param(site, "bias", axes)


def _wrong_eps_rule(site):
    """A deliberately wrong rewrite: LayerNormalization with eps 0.1 instead of the chain's."""
    found = _decomposed_ln(site)
    if found is None:
        return None
    axes, w, b = found
    return Plan("wrong-eps", "LayerNormalization(eps=0.1)", write=lambda wr: write_layer_norm(
        wr, axes=axes, eps=0.1, weight=w, bias=b, dtype=site.dtype, out_dtype=site.out_dtype))


def _naive_variance_rule(site):
    """A deliberately fragile rewrite: the same function, variance as E[x^2]-E[x]^2 (fails offset)."""
    found = _decomposed_ln(site)
    if found is None:
        return None
    axes, w, b = found

    def write(wr):
        x = wr.x
        m = wr.reduce_mean(x, axes)
        var = wr.op("Sub", wr.reduce_mean(wr.op("Mul", x, x), axes), wr.op("Mul", m, m))
        y = wr.op("Div", wr.op("Sub", x, m), wr.op("Sqrt", wr.op("Add", var, wr.const(np.float32(site.norm.eps)))))
        return wr.op("Add", wr.op("Mul", y, wr.const(w.astype(np.float32))), wr.const(b.astype(np.float32)))

    return Plan("naive-variance", "E[x^2]-E[x]^2 chain", write=write)


@pytest.mark.parametrize("rule, why", [(_wrong_eps_rule, "computes a different norm: eps 1e-05 became 0.1"),
                                       (_naive_variance_rule, "fails cpu:offset")], ids=["wrong-eps", "naive"])
def test_a_rewrite_that_fails_validation_is_rolled_back(tmp_path, monkeypatch, rule, why):
    monkeypatch.setitem(RULES, "broken", Rule("broken", "test", "test", "17", "it is not", rule, default=False))
    src = tmp_path / "m.onnx"
    onnx.save(corpus.ln_chain(), str(src))
    report = normonnx.fix(src, tmp_path / "out.onnx", rules=["broken"], timing=False)
    lf = report.layers[0]
    assert lf.status == "rolled back" and why in lf.reason, lf.to_dict()
    assert scan(tmp_path / "out.onnx").norms[0].form == "decomposed"  # the original chain is what was written
    assert report.whole_model["max_abs_diff"] == 0


def test_dry_run_and_check_write_nothing(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(corpus.ln_chain(naive=True), str(src))
    for flag, code in (("--dry-run", 0), ("--check", 1)):
        r = run_cli("fix", str(src), "-o", str(tmp_path / "out.onnx"), flag)
        assert r.returncode == code and "would" in r.stdout
        assert not (tmp_path / "out.onnx").exists()
    r = run_cli("fix", str(src), "--check", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["changes"] == 1 and doc["layers"][0]["rule"] == "ln-native"


@pytest.mark.parametrize("args, words", [
    (["{junk}", "-o", "{tmp}/o.onnx"], "not a readable ONNX model"),
    (["{src}", "-o", "{src}"], "is the input model"),
    (["{src}", "-o", "/proc/normonnx-out.onnx"], "cannot write"),
    (["{src}", "-o", "{tmp}/missing/o.onnx"], "does not exist"),
    (["{src}", "-o", "{tmp}/o.onnx", "--rules", "nope"], "valid rules are"),
    (["{src}", "-o", "{tmp}/o.onnx", "--opset", "13"], "fix only raises an opset"),
    (["{src}"], "give the output path"),
], ids=["unreadable", "output-is-input", "unwritable", "no-folder", "unknown-rule", "lower-opset", "no-output"])
def test_bad_input_is_exit_2_one_line(tmp_path, args, words):
    src = tmp_path / "m.onnx"
    onnx.save(corpus.ln_chain(), str(src))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    r = run_cli("fix", *(a.format(src=src, tmp=tmp_path, junk=tmp_path / "junk.onnx") for a in args))
    assert r.returncode == ExitCode.BAD_INPUT and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_external_data_is_written_beside_the_output_never_over_the_input(tmp_path):
    m = onnx.load(str(corpus.export_block(corpus.UNetBlock(), (2, 4, 8, 8), tmp_path / "a.onnx", 21, "dynamo")))
    src = tmp_path / "in" / "m.onnx"
    src.parent.mkdir()
    onnx.save(m, str(src), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    before = (src.parent / "m.onnx.data").read_bytes()
    r = run_cli("fix", str(src), "-o", str(src.parent / "m.onnx.data"))
    assert r.returncode == 2 and "holds the input model's weights" in r.stderr
    out = tmp_path / "out" / "fixed.onnx"
    out.parent.mkdir()
    report = normonnx.fix(src, out, timing=False)
    assert report.written and (out.parent / "fixed.onnx.data").is_file()
    assert (src.parent / "m.onnx.data").read_bytes() == before
    stored = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    onnx.checker.check_model(str(out), full_check=True)


def test_rules_registry_says_what_each_rule_does():
    for r in RULES.values():
        assert r.matches and r.writes and r.needs and r.why_safe, r.name
    out = run_cli("fix", "--list-rules").stdout
    assert all(name in out for name in RULES) and "opt-in" in out


def test_cli_table_and_footer(fixed, tmp_path):
    src = fixed["unet-gn21-dynamo"][0]
    r = run_cli("fix", str(src), "-o", str(tmp_path / "o.onnx"), "--no-timing")
    assert r.returncode == 0
    assert "FAIL offset(cpu)" in r.stdout and "pass 12/12" in r.stdout
    assert "largest output difference" in r.stdout and r.stdout.rstrip().splitlines()[-1].startswith("PASSED: 2")


def test_symbolic_dims_stay_symbolic_and_the_fix_runs_at_any_shape(tmp_path):
    """GroupNormalization-21 on (N, C, H, W) with symbolic N, H, W: the rewrite reshapes with 0/-1 and
    Shape(x), so the fixed model keeps the symbolic dims and is right at shapes other than the proof's."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w, b = rng.uniform(0.5, 1.5, 8).astype(np.float32), rng.normal(0, 0.5, 8).astype(np.float32)
    node = helper.make_node("GroupNormalization", ["x", "w", "b"], ["y"], num_groups=4, epsilon=1e-5)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, "h", "w"])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    src = tmp_path / "gn.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), str(src))
    report = normonnx.fix(src, tmp_path / "out.onnx", input_shapes={"x": (2, 8, 6, 6)}, timing=False)
    assert report.layers[0].status == "rewritten" and report.whole_model["passed"]
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert [d.dim_param or d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == ["n", 8, "h", "w"]
    sess = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((1, 8, 3, 5), (3, 8, 16, 16)):
        x = rng.normal(1e3, 1, shape).astype(np.float32)  # an offset the original's body gets wrong
        y = sess.run(None, {"x": x})[0]
        assert np.max(np.abs(y - group_norm(x, 4, w, b, 1e-5))) < 1e-2, shape


def test_float16_layernorm_with_float16_statistics_gets_stash_type_1(tmp_path):
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=1e-5, stash_type=0)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4, 16])],
                          [numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float16), "w"),
                           numpy_helper.from_array(rng.normal(0, 0.5, 16).astype(np.float16), "b")])
    src = tmp_path / "ln.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    report = normonnx.fix(src, tmp_path / "out.onnx", timing=False)
    lf = report.layers[0]
    assert (lf.rule, lf.status) == ("stash-float32", "rewritten"), lf.to_dict()
    ln = onnx.load(str(tmp_path / "out.onnx")).graph.node[0]
    assert ln.op_type == "LayerNormalization" and {a.name: a.i for a in ln.attribute if a.name == "stash_type"} == \
        {"stash_type": 1}
    assert normonnx.fix(tmp_path / "out.onnx", check=True).exit_code == 0
