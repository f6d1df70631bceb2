"""Hostile files: every malformed model, external-data entry and node attribute is exit 2 with one
line naming what is wrong, never a traceback; a check that could not run is never a FAIL; scan
searches subgraphs and functions and stays linear. Every file is built here, in code."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import has_cuda_ep, one_line_error, run_cli
from normonnx.features.scan import scan

C = 16


def _ln_model(path, *, weight=None, nodes=None, x_shape=(2, 4, C), dtype=TensorProto.FLOAT, opset=17, extra=()):
    """x -> LayerNormalization(s, b) -> y, with s possibly stored externally by `weight`."""
    rng = np.random.default_rng(0)
    np_dt = helper.tensor_dtype_to_np_dtype(dtype)
    s = weight if weight is not None else numpy_helper.from_array(rng.uniform(0.5, 1.5, C).astype(np_dt), "s")
    b = numpy_helper.from_array(rng.normal(0, 0.5, C).astype(np_dt), "b")
    nodes = nodes or [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, list(x_shape))],
                          [helper.make_tensor_value_info("y", dtype, list(x_shape))], [s, b, *extra])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(m, str(path))
    return str(path)


def _external(location: str, offset="0", length=str(C * 4), name="s") -> TensorProto:
    t = numpy_helper.from_array(np.linspace(0.5, 1.5, C).astype(np.float32), name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            e = t.external_data.add()
            e.key, e.value = k, v
    return t


def _weights_file(folder, n=C):
    (folder / "w.bin").write_bytes(np.linspace(0.5, 1.5, n).astype(np.float32).tobytes())


def _ext(location, offset="0", length=str(C * 4), setup=None):
    def build(folder):
        _weights_file(folder)
        if setup:
            setup(folder)
        return _ln_model(folder / "m.onnx", weight=_external(location, offset, length))
    return build


def _loop(folder):
    os.symlink(folder / "loop_b", folder / "loop_a")
    os.symlink(folder / "loop_a", folder / "loop_b")


def _escape_link(folder):
    (folder.parent / "secret.bin").write_bytes(b"canary" * 100)
    os.symlink(folder.parent / "secret.bin", folder / "link.bin")


def _node(op, inputs, opset=17, **attrs):
    def build(folder):
        return _ln_model(folder / "m.onnx", opset=opset, nodes=[helper.make_node(op, inputs, ["y"], **attrs)])
    return build


def _bad_initializer(folder):
    t = onnx.TensorProto()
    t.name, t.data_type = "s", TensorProto.FLOAT
    t.dims.extend([C])
    t.raw_data = b"\0" * 8  # 2 floats for 16 declared
    return _ln_model(folder / "m.onnx", weight=t)


def _float64(folder):
    return _ln_model(folder / "m.onnx", dtype=TensorProto.DOUBLE)


# name -> (builder, commands to run on it, expected fragment of the one-line error)
HOSTILE = {
    "offset-beyond-file": (_ext("w.bin", offset="4096"), "needs bytes 4096..4160 of 'w.bin', which holds 64"),
    "length-beyond-file": (_ext("w.bin", length="1000"), "which holds 64 bytes"),
    "huge-length": (_ext("w.bin", length=str(2 ** 62)), "which holds 64 bytes"),
    "negative-offset": (_ext("w.bin", offset="-8"), "negative external data offset -8"),
    "non-numeric-offset": (_ext("w.bin", offset="abc"), "offset/length must be integers"),
    "length-not-dims": (_ext("w.bin", length="32"), "length 32 bytes does not match its dims [16] (64 bytes)"),
    "nul-in-location": (_ext("w.bin\x00../../etc/passwd"), "NUL byte or over 1024 characters"),
    "long-location": (_ext("a" * 5000), "NUL byte or over 1024 characters"),
    "symlink-loop": (_ext("loop_a", setup=_loop), "cannot be resolved"),
    "symlink-escape": (_ext("link.bin", setup=_escape_link), "escapes the model's folder"),
    "dotdot-escape": (_ext("../secret.bin"), "escapes the model's folder"),
    "missing-file": (_ext("nope.bin"), "missing or unreadable"),
    "folder-not-file": (_ext("sub", setup=lambda f: (f / "sub").mkdir()), "not a regular file"),
    "gn-without-num_groups": (_node("GroupNormalization", ["x", "s", "b"], opset=21),
                              "lacks its required attribute 'num_groups'"),
    "bn-one-input": (_node("BatchNormalization", ["x"]), "has 1 inputs; BatchNormalization-15 takes 5..5"),
    "ln-no-inputs": (_node("LayerNormalization", []), "has 0 inputs"),
    "ln-string-epsilon": (_node("LayerNormalization", ["x", "s", "b"], epsilon="1e-5"),
                          "attribute 'epsilon' is STRING, must be FLOAT"),
    "initializer-dims-mismatch": (_bad_initializer, "tensor 's' is malformed"),
}


# scan reads only what it validates: a missing weight file makes that layer "not validated" (exit 4,
# test_missing_weight_file_is_not_validated), while validate --model reads every tensor (exit 2)
# fix and scan --activations read every weight (they rewrite and run the whole model): exit 2 there too
COMMANDS = {"scan --validate": lambda p, t: ["scan", p, "--validate"],
            "validate --model": lambda p, t: ["validate", "--model", p],
            "fix": lambda p, t: ["fix", p, "-o", str(t / "fixed.onnx")],
            "scan --activations": lambda p, t: ["scan", p, "--activations"]}
CASES = [(c, n) for c in COMMANDS for n in HOSTILE if not (c == "scan --validate" and n == "missing-file")]


@pytest.mark.parametrize("command, name", CASES, ids=[f"{c.replace(' --', '-')}-{n}" for c, n in CASES])
def test_hostile_model_is_exit_2_with_one_line(tmp_path, name, command):
    build, needle = HOSTILE[name]
    folder = tmp_path / "model"
    folder.mkdir()
    path = build(folder)
    proc = run_cli(*COMMANDS[command](path, tmp_path))
    one_line_error(proc, 2, needle)
    assert "canary" not in proc.stdout + proc.stderr


def test_missing_weight_file_is_not_validated(tmp_path):
    path = _ext("nope.bin")(tmp_path)
    proc = run_cli("scan", path, "--validate")
    assert proc.returncode == 4 and "not checked" in proc.stdout and "missing or unreadable" in proc.stdout


def test_float64_norm_is_unsupported_not_failed(tmp_path):
    path = _float64(tmp_path)
    one_line_error(run_cli("validate", "--model", path), 2, "float64", "float32, float16, bfloat16")
    proc = run_cli("scan", path, "--validate")
    assert proc.returncode == 4 and "not checked" in proc.stdout and "float64" in proc.stdout
    assert "NOT CHECKED: 0 passed, 0 failed, 1 not checked" in proc.stdout


def test_symbolic_dims_take_the_size_the_weights_fix(tmp_path):
    """Every symbolic dim used to become 8, including the normalized dim the weight fixes at 16: the
    tool's own broadcast error came out as FAIL. Now the weight decides that dim, and it passes."""
    path = _ln_model(tmp_path / "m.onnx", x_shape=("batch", "seq", "hidden"))
    report = scan(path, validate=True)
    assert report.validations[0].status == "pass", report.validations
    assert report.validations[0].spec_id == "ln-n16-2x8x16-fp32"


def test_a_tool_failure_is_never_a_fail(tmp_path, monkeypatch):
    """Fault injection: the oracle itself raising is normonnx's own failure: the row says so and the exit
    code is 5 (internal error), never FAIL, never hidden."""
    import normonnx.core.reference

    def broken(*a, **k):
        raise RuntimeError("oracle exploded")

    monkeypatch.setattr(normonnx.core.reference, "reference", broken)  # compare.Oracle asks for it when it is made
    proc = run_cli("scan", _ln_model(tmp_path / "m.onnx"), "--validate")
    assert proc.returncode == 5, proc.stdout
    assert "internal error (RuntimeError: oracle exploded); please report it" in proc.stdout
    assert "INTERNAL ERROR: 0 passed, 0 failed, 1 not checked (1 internal error: please report it)" in proc.stdout


def test_an_internal_error_is_exit_5_and_one_line_unless_debug(tmp_path, monkeypatch):
    import sys

    def broken(*a, **k):
        raise ZeroDivisionError("simulated bug")

    # normonnx.export is also the name of a function: patch the module itself
    monkeypatch.setattr(sys.modules["normonnx.exporting.export"], "check_model", broken)
    one_line_error(run_cli("export", "-o", str(tmp_path / "m.onnx")), 5, "internal error (ZeroDivisionError",
                   "please report it", "normonnx --debug")
    proc = run_cli("--debug", "export", "-o", str(tmp_path / "m.onnx"))
    assert proc.returncode == 5 and "Traceback" in proc.stderr and "simulated bug" in proc.stderr


@pytest.mark.parametrize("args, code, needle", [
    (["--runtimes", "gpu"], 2, "unknown runtime 'gpu'"),
    (["--inputs", "huge"], 2, "unknown input suite 'huge'"),
    pytest.param(["--runtimes", "cuda"], 3, "CUDAExecutionProvider",
                 marks=pytest.mark.skipif(has_cuda_ep(), reason="CUDA is available here")),
])
def test_scan_validate_checks_its_options_first(tmp_path, args, code, needle):
    one_line_error(run_cli("scan", _ln_model(tmp_path / "m.onnx"), "--validate", *args), code, needle)


def test_found_but_nothing_validated_is_exit_4(tmp_path):
    # com.microsoft LayerNormalization: ORT 1.32's CPU build registers no kernel for it
    nodes = [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], domain="com.microsoft", axis=-1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, C])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, C])],
                          [numpy_helper.from_array(np.ones(C, np.float32), "s"),
                           numpy_helper.from_array(np.zeros(C, np.float32), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(m, str(tmp_path / "m.onnx"))
    proc = run_cli("scan", str(tmp_path / "m.onnx"), "--validate")
    assert proc.returncode == 4 and "NOT CHECKED: 0 passed, 0 failed, 1 not checked" in proc.stdout
    assert run_cli("scan", str(tmp_path / "m.onnx")).returncode == 0  # without --validate scan only reports


def _nested_if(depth: int) -> onnx.ModelProto:
    """A LayerNormalization inside `depth` nested If then-branches (else: Identity)."""
    ln = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y0"], axis=-1, epsilon=1e-5)
    out = "y0"
    body = helper.make_graph([ln], "b0", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 4, C])])
    for d in range(1, depth + 1):
        name = f"y{d}"
        other = helper.make_graph([helper.make_node("Identity", ["x"], [f"e{d}"])], f"e{d}", [],
                                  [helper.make_tensor_value_info(f"e{d}", TensorProto.FLOAT, [2, 4, C])])
        node = helper.make_node("If", ["cond"], [name], name=f"if{d}", then_branch=body, else_branch=other)
        body = helper.make_graph([node], f"b{d}", [], [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 4, C])])
    g = helper.make_graph(list(body.node), "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, C]),
                                                 helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info(f"y{depth}", TensorProto.FLOAT, [2, 4, C])],
                          [numpy_helper.from_array(np.ones(C, np.float32), "s"),
                           numpy_helper.from_array(np.zeros(C, np.float32), "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("depth", [1, 25])
def test_norms_inside_if_bodies_are_found_and_say_where(tmp_path, depth):
    onnx.save(_nested_if(depth), str(tmp_path / "m.onnx"))
    report = scan(tmp_path / "m.onnx", validate=True)
    assert [(f.kind, f.form) for f in report.norms] == [("ln", "native")]
    f = report.norms[0]
    assert f.scope.startswith(f"if{depth}.then_branch") and f.scope.count("then_branch") == depth
    assert f.nodes[0] == f"{f.scope}/LayerNormalization_0"  # the node's path: body/.../node
    assert report.validations[0].status == "not checked" and "only main-graph layers" in report.validations[0].validation


def test_norms_inside_model_local_functions_are_found(tmp_path):
    fn = helper.make_function("local", "Block", ["x", "s", "b"], ["y"],
                              [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1)],
                              [helper.make_opsetid("", 17)])
    g = helper.make_graph([helper.make_node("Block", ["x", "s", "b"], ["y"], domain="local")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, C])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, C])],
                          [numpy_helper.from_array(np.ones(C, np.float32), "s"),
                           numpy_helper.from_array(np.zeros(C, np.float32), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                          functions=[fn])
    onnx.save(m, str(tmp_path / "m.onnx"))
    (f,) = scan(tmp_path / "m.onnx").norms
    assert (f.kind, f.scope, f.nodes[0]) == ("ln", "local.Block", "local.Block/LayerNormalization_0")


def test_scan_of_a_20000_node_model_finishes(tmp_path):
    """2,000 decomposed LayerNorms (20,000 nodes) in a chain: used to hang (one ORT session and one
    extraction per layer for the fusion column); now one whole-model fusion probe. No time is
    asserted (shared machines); the benchmark figure is in the README."""
    nodes, x = [], "x"
    eps = numpy_helper.from_array(np.array(1e-5, np.float32), "eps")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    for i in range(2000):
        p = f"l{i}_"
        nodes += [helper.make_node("ReduceMean", [x, "axes"], [p + "m"]),
                  helper.make_node("Sub", [x, p + "m"], [p + "d"]),
                  helper.make_node("Mul", [p + "d", p + "d"], [p + "sq"]),
                  helper.make_node("ReduceMean", [p + "sq", "axes"], [p + "v"]),
                  helper.make_node("Add", [p + "v", "eps"], [p + "ve"]),
                  helper.make_node("Sqrt", [p + "ve"], [p + "sd"]),
                  helper.make_node("Div", [p + "d", p + "sd"], [p + "n"]),
                  helper.make_node("Mul", [p + "n", "w"], [p + "nw"]),
                  helper.make_node("Add", [p + "nw", "bb"], [p + "o"]),
                  helper.make_node("Relu", [p + "o"], [p + "r"])]
        x = p + "r"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [2, C])],
                          [eps, axes, numpy_helper.from_array(np.ones(C, np.float32), "w"),
                           numpy_helper.from_array(np.zeros(C, np.float32), "bb")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "big.onnx"))
    t0 = time.perf_counter()
    report = scan(tmp_path / "big.onnx")
    assert len(report.norms) == 2000 and all(f.kind == "ln" for f in report.norms)
    assert set(report.fused) == set(range(2000))
    print(f"scan of 20,000 nodes: {time.perf_counter() - t0:.1f} s")


def test_scan_json_says_where_each_norm_is(tmp_path):
    onnx.save(_nested_if(2), str(tmp_path / "m.onnx"))
    doc = json.loads(run_cli("scan", str(tmp_path / "m.onnx"), "--json").stdout)
    assert doc["norms"][0]["scope"].count("then_branch") == 2
