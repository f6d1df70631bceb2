"""The command line as a user types it: outputs, exit codes, and one-line errors without tracebacks."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import has_cuda_ep, one_line_error, run_cli


_one_line_error = one_line_error


def test_readme_export_command_as_typed(tmp_path):
    import sys
    from pathlib import Path

    exe = shutil.which("normonnx") or shutil.which("normonnx", path=str(Path(sys.executable).parent))
    assert exe, "the normonnx command is not installed"
    proc = subprocess.run([exe, "export", "--norm", "gn", "--groups", "4"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gn-g4-c8-2x8x16x16-fp32-native-op18-dynamo.onnx"]
    from normonnx.graph.graph import metadata

    assert metadata(onnx.load(str(tmp_path / files[0])))["variant"] == "native"
    for word in ("wrote", "opset    18", "GroupNormalization", "bytes"):
        assert word in proc.stdout


def test_export_json(tmp_path):
    proc = run_cli("export", "--norm", "ln", "--opset", "17", "-o", str(tmp_path / "ln.onnx"), "--json")
    doc = json.loads(proc.stdout)
    assert doc["opset"] == 17 and doc["ops"] == {"LayerNormalization": 1} and doc["mismatch"] is None


@pytest.mark.parametrize("args, needles", [
    (["--norm", "gn", "--groups", "3"], ["does not divide", "1, 2, 4, 8"]),
    (["--norm", "ln", "--opset", "13"], ["needs opset >= 17", "--variant decomposed"]),
    (["--norm", "gn", "--variant", "instance-trick", "--opset", "9"], ["needs opset >= 11"]),
    (["--norm", "ln", "--variant", "instance-trick"], ["does not support ln", "gn"]),
    (["--norm", "ln", "--exporter", "torchscript", "--opset", "21"], ["7..20"]),
    (["--norm", "bn", "--dtype", "float64"], ["float64", "float32"]),
    (["--norm", "xx"], ["'xx' is not one of"]),
    (["--shape", "2xfoo"], ["bad shape", "2x8x16x16"]),
    (["--norm", "ln", "-o", "/nonexistent-dir/m.onnx"], ["does not exist"]),
    (["--norm", "ln", "--eps", "-1"], ["positive"]),
    (["--norm", "ln", "--opset", "abc"], ["'abc' is not a valid integer"]),
    (["--bogus"], ["No such option"]),
    (["--norm", "gn", "--groups", "0"], ["--groups 0: must be a positive integer"]),
    (["--norm", "gn", "--channels", "0"], ["--channels 0: must be a positive integer"]),
    (["--norm", "gn", "--channels", "6"], ["--groups defaults to 4, which does not divide channels=6", "1, 2, 3, 6"]),
    (["--norm", "ln", "--shape", "100000x100000x100000"], ["1e+15 elements", "at most 268,435,456"]),
    (["--norm", "ln", "--shape", "99999999999999999999x2"], ["2e+20 elements"]),
    (["--norm", "ln", "--eps", "nan"], ["positive finite"]),
])
def test_export_bad_input_is_exit_2_one_line(args, needles):
    _one_line_error(run_cli("export", *args), 2, *needles)


def test_export_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc = run_cli("export", "-o", str(ro / "m.onnx"))
        import os

        if os.access(ro, os.W_OK):  # root can write anywhere: an existing directory as output instead
            proc = run_cli("export", "-o", str(tmp_path))
        _one_line_error(proc, 2)
    finally:
        ro.chmod(0o700)


def test_export_opset_mismatch_is_exit_1_and_allowed_on_request(tmp_path):
    proc = run_cli("export", "--norm", "ln", "--variant", "decomposed", "--opset", "13", "-o", str(tmp_path / "a.onnx"))
    if proc.returncode == 0:
        pytest.skip("this torch converts decomposed LN to opset 13 by itself")
    _one_line_error(proc, 1, "requested opset 13 but the model declares opset 18", "--allow-mismatch")
    ok = run_cli("export", "--norm", "ln", "--variant", "decomposed", "--opset", "13", "--allow-mismatch",
                 "-o", str(tmp_path / "a.onnx"))
    assert ok.returncode == 0 and "MISMATCH" in ok.stdout


def test_validate_as_typed_reports_table_and_verdict():
    proc = run_cli("validate", "--norm", "gn", "--groups", "4")
    # ORT runs GroupNormalization through its E[x^2]-E[x]^2 function body: the default GN fails
    assert proc.returncode == 1, proc.stderr
    assert "FAILED:" in proc.stdout.splitlines()[-1]
    assert "offset:offset-1e4" in proc.stdout and "expanded into its ONNX function body" in proc.stdout


def test_validate_passing_case_exit_0_and_json():
    proc = run_cli("validate", "--norm", "ln", "--runtimes", "cpu,reference", "--inputs", "normal,offset", "--json")
    assert proc.returncode == 0, proc.stdout[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["passed"] and {r["runtime"] for r in doc["results"]} == {"cpu", "reference"}
    assert all({"runtime", "inputs", "passed", "max_abs_err", "max_rel_err", "spec_id"} <= set(r) for r in doc["results"])
    text = run_cli("validate", "--norm", "ln", "--runtimes", "cpu", "--inputs", "normal")
    assert text.stdout.strip().splitlines()[-1].startswith("PASSED")


def test_validate_unavailable_runtime_is_exit_3_unless_skipped():
    if has_cuda_ep():
        pytest.skip("CUDA is available here")
    _one_line_error(run_cli("validate", "--runtimes", "cuda"), 3, "CUDAExecutionProvider", "--skip-missing")
    proc = run_cli("validate", "--runtimes", "cuda,cpu", "--skip-missing", "--inputs", "normal")
    assert proc.returncode == 0 and "SKIPPED" in proc.stdout


@pytest.mark.parametrize("args, needles", [
    (["--runtimes", "gpu"], ["unknown runtime 'gpu'", "cpu, cuda"]),
    (["--inputs", "huge"], ["unknown input suite 'huge'", "normal"]),
    (["--opt-level", "max"], ["'max' is not one of"]),
    (["--threads", "0"], ["threads must be >= 1"]),
    (["--atol", "-1"], ["tolerances must be finite numbers >= 0"]),
    (["--atol", "nan"], ["tolerances must be finite numbers >= 0", "atol=nan"]),
    (["--rtol", "inf"], ["tolerances must be finite numbers >= 0", "rtol=inf"]),
    (["--seed", "-1"], ["-1 is not in the range x>=0"]),
])
def test_validate_bad_options_exit_2(args, needles):
    _one_line_error(run_cli("validate", *args), 2, *needles)


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def test_validate_malformed_models_exit_2(tmp_path):
    good = tmp_path / "good.onnx"
    assert run_cli("export", "--norm", "ln", "-o", str(good)).returncode == 0
    raw = good.read_bytes()
    _one_line_error(run_cli("validate", "--model", _write(tmp_path / "t.onnx", raw[: len(raw) // 3])), 2, "t.onnx")
    _one_line_error(run_cli("validate", "--model", _write(tmp_path / "n.onnx", b"hello, not onnx\n" * 10)), 2)
    _one_line_error(run_cli("validate", "--model", str(tmp_path / "missing.onnx")), 2, "no such model file")
    # wrong input rank: an LN spec of rank 3 against a rank-2 model
    _one_line_error(run_cli("validate", "--model", str(good), "--norm", "ln", "--shape", "16x64"), 2, "rank")
    # an op no runtime implements
    node = helper.make_node("FancyNorm", ["x"], ["y"], domain="com.example")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 64])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    onnx.save(m, str(tmp_path / "u.onnx"))
    _one_line_error(run_cli("validate", "--model", str(tmp_path / "u.onnx"), "--norm", "ln", "--no-affine"), 2,
                    "cannot be loaded by ONNX Runtime")
    # a model of no recognisable norm, without normonnx metadata or spec flags: nothing to validate
    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 64])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "r.onnx"))
    _one_line_error(run_cli("validate", "--model", str(tmp_path / "r.onnx")), 2, "holds 0 norm layers")


def test_validate_a_foreign_model_reads_spec_and_parameters_from_the_graph(tmp_path):
    """No normonnx metadata and no flags: the spec and weights come from the graph (scan's reader)."""
    rng = np.random.default_rng(0)
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 64])],
                          [numpy_helper.from_array(rng.uniform(0.5, 1.5, 64).astype(np.float32), "s"),
                           numpy_helper.from_array(rng.normal(0, 1, 64).astype(np.float32), "b")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "f.onnx"))
    proc = run_cli("validate", "--model", str(tmp_path / "f.onnx"), "--inputs", "normal,offset")
    assert proc.returncode == 0 and "ln-n64-2x16x64-fp32-f" in proc.stdout, proc.stdout[-800:]


def test_validate_model_file_round_trip(tmp_path):
    path = tmp_path / "bn.onnx"
    assert run_cli("export", "--norm", "bn", "-o", str(path)).returncode == 0
    proc = run_cli("validate", "--model", str(path), "--runtimes", "cpu")
    assert proc.returncode == 0, proc.stdout[-1500:]
    assert "source: " + str(path) in proc.stdout


def test_list_shows_registries():
    proc = run_cli("list")
    assert proc.returncode == 0
    for word in ("native", "decomposed", "instance-trick", ">= 17", "dynamo", "torchscript", "big-row", "reference"):
        assert word in proc.stdout


@pytest.mark.parametrize("args, code, needles", [
    (["bench", "--variant", "foo"], 2, ["unknown variant 'foo'", "native"]),
    (["bench", "--norm", "ln", "--variant", "native", "--opset", "13"], 2, ["needs opset >= 17"]),
    (["bench", "--runtimes", "tpu"], 2, ["valid runtimes are cpu, cuda"]),
    (["bench", "--providers", "cpu", "--runtimes", "cpu"], 2, ["not both"]),
    (["sweep", "--runtimes", "tpu"], 2, ["unknown runtime 'tpu'"]),
    (["bench", "--dtype", "bfloat16"], 2, ["bfloat16"]),
    (["merge", "/nonexistent-a", "-o", "/tmp/normonnx-merge-x"], 2, ["holds no results.jsonl"]),
    (["report", "/nonexistent-out"], 2, ["run 'normonnx sweep"]),
    (["sweep", "--opsets", "x,y"], 2, ["comma-separated integers"]),
    (["sweep", "--jobs", "0", "-o", "/tmp/normonnx-jobs0"], 2, ["--jobs", "1<=x<=256"]),
    (["scan"], 2, ["Missing argument"]),
])
def test_other_commands_reject_bad_input(args, code, needles):
    _one_line_error(run_cli(*args), code, *needles)


@pytest.mark.parametrize("args, needle", [(["bench", "--providers", "tpu"], "valid runtimes are cpu, cuda"),
                                          (["sweep", "--providers", "tpu"], "valid runtimes are")])
def test_providers_is_the_deprecated_name_of_runtimes(args, needle):
    """--providers still works for a release (its value goes where --runtimes' goes), with a note."""
    proc = run_cli(*args)
    warning, error = proc.stderr.strip().splitlines()
    assert warning.startswith("warning: --providers is deprecated") and "use --runtimes" in warning
    assert proc.returncode == 2 and error.startswith("error: ") and needle in error


def test_bench_unavailable_provider_is_exit_3():
    if has_cuda_ep():
        pytest.skip("CUDA is available here")
    _one_line_error(run_cli("bench", "--runtimes", "cuda"), 3, "CUDAExecutionProvider")


def test_report_rejects_unknown_extension(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.jsonl").write_text('{"type": "case", "case_id": "x", "status": "unsupported"}\n')
    _one_line_error(run_cli("report", str(out), "-o", str(tmp_path / "r.pdf")), 2, ".html or .md")


def test_bfloat16_runs_on_ort_through_ortvalues_and_a_wrong_eps_fails(tmp_path):
    """numpy has no bfloat16 ORT maps: normonnx feeds OrtValues of ONNX type BFLOAT16 and reads the output
    back through IOBinding. A bfloat16 LayerNorm validates on ORT CPU; the same model with another eps
    than the spec's fails there."""
    import ml_dtypes
    from onnx import TensorProto, helper

    proc = run_cli("validate", "--dtype", "bfloat16", "--runtimes", "cpu", "--inputs", "normal", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and {r["runtime"] for r in doc["results"]} == {"cpu"}, proc.stdout[-800:]
    assert all(r["status"] == "pass" for r in doc["results"])
    n = 64
    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 16, n])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 16, n])
    w = helper.make_tensor("w", TensorProto.BFLOAT16, [n], np.ones(n, ml_dtypes.bfloat16).view(np.uint16).tobytes(),
                           raw=True)
    node = helper.make_node("LayerNormalization", ["x", "w"], ["y"], axis=-1, epsilon=0.5)
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "bf16.onnx"))
    bad = run_cli("validate", "--model", str(tmp_path / "bf16.onnx"), "--norm", "ln", "--shape", f"2x16x{n}",
                  "--dtype", "bfloat16", "--no-bias", "--runtimes", "cpu", "--inputs", "normal")
    assert bad.returncode == 1 and "FAILED" in bad.stdout, bad.stdout[-800:] + bad.stderr




@pytest.mark.parametrize("work_s, shown", [(0.0, False), (0.6, True)])
def test_progress_line_only_for_long_work_and_never_swallowed_by_the_export_silencer(work_s, shown):
    """A line after `after` seconds, none for quick work; written to its own copy of stderr, so the
    exporters' silencer (descriptor 2 pointed at a file meanwhile) does not swallow it. In a process
    of its own: the descriptors are the point."""
    import subprocess
    import sys

    code = ("import time\nfrom normonnx.presentation.cli import working\n"
            "from normonnx.exporting.exporters import quiet_export\nlog = []\n"
            f"with working('exporting something', after=0.2):\n    with quiet_export(log):\n        time.sleep({work_s})\n"
            "print(repr(log))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert ("  .. exporting something" in p.stderr) is shown, p.stderr
    assert "exporting something" not in p.stdout  # not in the silenced exporters' log
