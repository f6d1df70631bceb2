"""OpenVINO beside ONNX Runtime: opt-in by name (`--runtimes openvino`), f32 precision pinned with the
machine's default recorded, what each node ran as reported; exit 3 with the install line without it."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import run_cli
from normonnx import NormSpec
from normonnx.engine.inputs import CheckOptions
from normonnx.engine.runtimes import RunOptions
from normonnx.engine.validate import validate

openvino = pytest.importorskip("openvino", reason="the openvino extra is not installed")


def _ln_model(eps: float, n: int = 16) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, n])
    w = helper.make_tensor("w", TensorProto.FLOAT, [n], np.ones(n, np.float32))
    b = helper.make_tensor("b", TensorProto.FLOAT, [n], np.zeros(n, np.float32))
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=eps)
    return helper.make_model(helper.make_graph([node], "ln", [x], [y], [w, b]),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_openvino_is_listed_available_and_opt_in():
    r = run_cli("list")
    row = next(line for line in r.stdout.splitlines() if line.startswith("openvino "))
    assert " yes " in row
    # named nowhere, it does not run: installing the extra changes no default run
    rep = validate(NormSpec.make("ln", shape=(2, 4, 16)), check=CheckOptions(["normal"]))
    assert not any(x.runtime.startswith("openvino") for x in rep.results) and "openvino" not in rep.runtimes


def test_validate_on_openvino_records_the_precision_in_effect_and_what_ran():
    r = run_cli("validate", "--norm", "ln", "--runtimes", "cpu,openvino,openvino-default", "--inputs", "normal",
                "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    facts = doc["runtimes"]["openvino"]
    assert facts["precision"] == "f32" and facts["machine_default_precision"] in ("f32", "bf16", "f16")
    assert doc["runtimes"]["openvino-default"]["precision"] == facts["machine_default_precision"]
    assert any(k.startswith("MVN:") for k in facts["ran_as"]), facts  # LayerNormalization runs as OpenVINO's MVN
    assert {x["runtime"] for x in doc["results"]} == {"cpu", "openvino", "openvino-default"}
    assert all(x["status"] == "pass" for x in doc["results"])


def test_openvino_fails_a_wrong_eps_and_its_own_constant_row_error(tmp_path):
    """Must-fail checks: a file whose eps differs from the spec's fails on OpenVINO; and OpenVINO's own
    LayerNorm on a zero-variance 4096-wide row misses the oracle (ORT CPU is exact there), measured."""
    spec = NormSpec.make("ln", shape=(2, 4, 16), eps=1e-5, affine=True)
    onnx.save(_ln_model(eps=0.5), str(tmp_path / "wrong.onnx"))
    bad = validate(spec, model=tmp_path / "wrong.onnx", params={"weight": np.ones(16, np.float32),
                                                                "bias": np.zeros(16, np.float32)},
                                                                    run=RunOptions.on("openvino"),
                                                                        check=CheckOptions(["normal"]))
    assert bad.verdict.status == "fail"
    rep = validate(NormSpec.make("ln", shape=(2, 16, 64)), run=RunOptions.on("cpu", "openvino"),
                   check=CheckOptions(["constant"]))
    by = {(x.runtime, x.inputs): x for x in rep.results}
    assert by[("cpu", "constant:constant-large")].status == "pass"
    assert by[("openvino", "constant:constant-large")].status == "fail", by[("openvino", "constant:constant-large")]


def test_float16_runs_on_openvino():
    rep = validate(NormSpec.make("ln", shape=(2, 4, 16), dtype="float16"), run=RunOptions.on("openvino"),
                   check=CheckOptions(["normal"]))
    assert rep.verdict.status == "pass", [x.reason for x in rep.results]


def test_scan_validates_on_openvino(tmp_path):
    onnx.save(_ln_model(eps=1e-5), str(tmp_path / "m.onnx"))
    r = run_cli("scan", str(tmp_path / "m.onnx"), "--validate", "--runtimes", "openvino", "--inputs", "normal")
    assert r.returncode == 0 and "PASSED" in r.stdout, (r.stdout, r.stderr)


def test_without_openvino_naming_it_is_exit_3_with_the_install_line():
    # the package hidden the way Python hides a missing module (None in sys.modules): the real code path
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from normonnx.presentation.cli import main\n"
            "sys.argv = ['normonnx', 'validate', '--norm', 'ln', '--runtimes', 'cpu,openvino']\n"
            "main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, p.stderr
    assert 'pip install "normonnx[openvino]"' in p.stderr and "Traceback" not in p.stderr


def test_a_sweep_across_runtimes_recommends_per_runtime_and_marks_portable_forms(tmp_path):
    """ORT CPU's LayerNormalization is exact on a zero-variance row, OpenVINO's is not (measured): the report
    recommends native LN for cpu, says no LN form passes on openvino with the least bad one, and marks the
    RMSNorm forms that pass on both runtimes portable."""
    from normonnx.presentation.report import load, recommendations
    from normonnx.features.sweep import Matrix, sweep

    sweep(tmp_path, Matrix(norms=("ln", "rms"), variants=("native", "decomposed"), opsets=(23,), exporters=("dynamo",),
                           dtypes=("float32",), providers=("cpu", "openvino")),
                           check=CheckOptions(inputs=["normal", "constant"]))
    recs, _ = load(tmp_path)
    by = {(r["norm"], r["provider"]): r for r in recommendations(recs)}
    assert by[("ln", "cpu")]["recommended"] == "native" and by[("ln", "cpu")]["portable"] == []
    assert by[("ln", "openvino")]["recommended"] is None
    assert "least bad: native, failing constant-large" in by[("ln", "openvino")]["why"]
    assert by[("rms", "openvino")]["portable"] == ["decomposed", "native"]
    assert "portable: passes on cpu, openvino" in by[("rms", "cpu")]["why"]


def test_bench_times_openvino_beside_copy_and_torch():
    from normonnx.engine.bench import benchmark
    from normonnx.core.timing import TimingOptions

    rep = benchmark(NormSpec.make("ln", shape=(4, 64, 128)), ["native", "decomposed"], run=RunOptions.on("openvino"),
                    opset=18, timing=TimingOptions(warmup=1, min_time=0.05, rounds=3))
    by = {r.form: r for r in rep.records}
    assert set(by) == {"copy", "torch", "native", "decomposed"}
    for form in ("native", "decomposed"):
        r = by[form]
        assert r.provider == "openvino" and r.error is None and r.check == "pass", r
        assert r.p50_ms > 0 and r.ci_low <= r.x_copy <= r.ci_high and r.io_binding is False


def _constant_rows(tmp_path, n=4096):
    onnx.save(_ln_model(eps=1e-5, n=n), str(tmp_path / "ln.onnx"))
    # one constant per row, as the constant suite draws them (3.0 would sum exactly in float32 and hide it)
    rows = np.random.default_rng(0).normal(0, 3, (2, 4, 1)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=np.ascontiguousarray(np.broadcast_to(rows, (2, 4, n))))
    return tmp_path / "ln.onnx", tmp_path / "d.npz"


def test_activations_replayed_on_openvino_fail_where_ort_passes(tmp_path):
    """Captured on ORT CPU (exact on a zero-variance row), replayed on OpenVINO (errs ~1e-2 there): the
    OpenVINO replay fails the layer and the exit code says so."""
    model, data = _constant_rows(tmp_path)
    r = run_cli("scan", str(model), "--activations", "--data", str(data), "--runtimes", "openvino", "--json")
    doc = json.loads(r.stdout)["activations"]
    (layer,) = doc["layers"]
    assert layer["passed"] is True and layer["runtimes"]["openvino"]["passed"] is False, layer
    assert r.returncode == 1


def test_golden_outputs_saved_on_ort_judged_on_openvino(tmp_path):
    model, data = _constant_rows(tmp_path, n=64)
    saved = run_cli("scan", str(model), "--activations", "--data", str(data), "--save-outputs", str(tmp_path / "g.npz"))
    assert saved.returncode == 0 and (tmp_path / "g.npz").is_file(), saved.stderr
    r = run_cli("scan", str(model), "--activations", "--load-outputs", str(tmp_path / "g.npz"), "--runtimes",
                "cpu,openvino", "--json")
    (layer,) = json.loads(r.stdout)["activations"]["layers"]
    assert set(layer["runtimes"]) == {"cpu", "openvino"} and r.returncode == 0, layer
    assert layer["runtimes"]["cpu"]["max_diff_from_stored"] == 0.0  # the same runtime: the same outputs
    assert layer["runtimes"]["openvino"]["passed"] is True


def _gn18(tmp_path, offset: float):
    """GroupNormalization-18 alone (ORT CPU inlines it with an E[x^2]-E[x]^2 variance: NaN at offset 1e4), and
    --data at that offset."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=4, epsilon=1e-5)
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [4], np.ones(4, np.float32)),
             helper.make_tensor("b", TensorProto.FLOAT, [4], np.zeros(4, np.float32))]
    m = helper.make_model(helper.make_graph([node], "gn", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.save(m, str(tmp_path / "gn18.onnx"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=(rng.standard_normal((2, 1, 8, 16, 16)) + offset).astype(np.float32))
    return tmp_path / "gn18.onnx", tmp_path / "d.npz"


@pytest.mark.parametrize("offset, runtimes, want", [
    (0.0, "openvino", {"openvino": "pass"}),  # f32 on both: ~1e-6 apart
    (1e4, "openvino", {"openvino": "fail"}),  # ORT's inlined GroupNorm gives NaN there, OpenVINO does not
    (0.0, "openvino,reference", {"openvino": "pass"}),  # reference runs cut-out layers only: said in a note
])
def test_activations_run_the_whole_model_on_each_named_runtime(tmp_path, offset, runtimes, want):
    model, data = _gn18(tmp_path, offset)
    r = run_cli("scan", str(model), "--activations", "--data", str(data), "--runtimes", runtimes, "--json")
    whole = json.loads(r.stdout)["activations"]["whole_model"]
    assert {k: w["status"] for k, w in whole.items()} == want, whole
    if offset:
        assert whole["openvino"]["samples"] == 2 and "non-finite" in whole["openvino"]["why"]
        assert r.returncode == 1
    if "reference" in runtimes:
        assert any("not compared on reference" in n for n in json.loads(r.stdout)["activations"]["notes"])
    assert whole["openvino"]["precision"] == "f32"
