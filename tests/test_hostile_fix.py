"""fix and scan --activations against hostile input (issue 22), one table row per attack class, every
file built here: each row asserts the exit code, the one-line message, that no file outside the output
folder changed (hashed before and after), and, for every fix that exits 0, that the original and the
fixed model agree on random inputs *and on random values for every graph input* (weights and eps fed at
run time included)."""
from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T, helper as h, numpy_helper as nh

from conftest import run_cli

RNG = np.random.default_rng(0)
W = RNG.uniform(0.5, 1.5, 16).astype(np.float32)
B = RNG.normal(0, 0.5, 16).astype(np.float32)


def _naive_ln(x="x", out="y", pre=""):
    """A decomposed LayerNorm with E[x^2]-E[x]^2 variance: fix wants to rewrite it (its hazard)."""
    return [h.make_node("ReduceMean", [x], [pre + "m"], axes=[-1]), h.make_node("Mul", [x, x], [pre + "xx"]),
            h.make_node("ReduceMean", [pre + "xx"], [pre + "ex2"], axes=[-1]),
            h.make_node("Mul", [pre + "m", pre + "m"], [pre + "m2"]),
            h.make_node("Sub", [pre + "ex2", pre + "m2"], [pre + "v"]), h.make_node("Sub", [x, pre + "m"], [pre + "d"]),
            h.make_node("Add", [pre + "v", "eps"], [pre + "ve"]), h.make_node("Sqrt", [pre + "ve"], [pre + "s"]),
            h.make_node("Div", [pre + "d", pre + "s"], [pre + "n"]), h.make_node("Mul", [pre + "n", "w"], [pre + "nw"]),
            h.make_node("Add", [pre + "nw", "b"], [out])]


def _model(nodes, *, inputs=None, inits=None, outputs=None, dims=(2, 4, 16), opset=17, ir=None):
    x = h.make_tensor_value_info("x", T.FLOAT, list(dims))
    inits = inits if inits is not None else [nh.from_array(np.array(1e-5, np.float32), "eps"), nh.from_array(W, "w"),
                                             nh.from_array(B, "b")]
    g = h.make_graph(nodes, "g", [x] + (inputs or []), outputs or [h.make_tensor_value_info("y", T.FLOAT, list(dims))],
                     inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    if ir:
        m.ir_version = ir
    return m


def _input(name, shape):
    return h.make_tensor_value_info(name, T.FLOAT, list(shape))


# -- models that compute something else if a rewrite freezes or misplaces a value -------------------
def weight_fed(folder):
    return _model(_naive_ln(), inputs=[_input("w", [16])], inits=[nh.from_array(np.array(1e-5, np.float32), "eps"),
                                                                   nh.from_array(B, "b")])


def initializer_overridden(folder):
    """IR 3: every initializer is also a graph input, which a caller may feed instead."""
    m = _model(_naive_ln(), inputs=[_input("w", [16]), _input("b", [16]), h.make_tensor_value_info("eps", T.FLOAT, [])],
               opset=13)
    m.ir_version = 3
    return m


def eps_fed(folder):
    return _model(_naive_ln(), inputs=[h.make_tensor_value_info("eps", T.FLOAT, [])],
                  inits=[nh.from_array(W, "w"), nh.from_array(B, "b")])


def keepdims0_symbolic(folder):
    nodes = _naive_ln()
    nodes[0] = h.make_node("ReduceMean", ["x"], ["m"], axes=[-1], keepdims=0)
    return _model(nodes, dims=("a", "b", 16))


def gn18_mul_not_per_channel(folder):
    """GroupNormalization-18 then a Mul over the width (W values, a 1-D constant broadcasts over the last dim)."""
    nodes = [h.make_node("GroupNormalization", ["x", "gs", "gb"], ["g"], num_groups=2, epsilon=1e-5),
             h.make_node("Mul", ["g", "mw"], ["y"])]
    inits = [nh.from_array(np.ones(2, np.float32), "gs"), nh.from_array(np.zeros(2, np.float32), "gb"),
             nh.from_array(RNG.uniform(0.5, 1.5, 8).astype(np.float32), "mw")]
    return _model(nodes, inits=inits, dims=("n", 8, "h", 8), opset=18,
                  outputs=[h.make_tensor_value_info("y", T.FLOAT, ["n", 8, "h", 8])])


def names_collide(folder):
    """The model already uses the names fix writes."""
    nodes = _naive_ln(pre="normonnx.fix/0.ln-native/")
    for n in nodes:
        n.name = n.output[0].replace("/", "_") + "node"
    nodes[0].name = "normonnx.fix/0.ln-native/LayerNormalization_1"
    return _model(nodes)


def read_in_if_branch(folder):
    then = h.make_graph([h.make_node("Identity", ["d"], ["t"])], "then", [], [_input("t", [2, 4, 16])])
    other = h.make_graph([h.make_node("Identity", ["x"], ["e"])], "else", [], [_input("e", [2, 4, 16])])
    nodes = _naive_ln() + [h.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other)]
    return _model(nodes, inputs=[h.make_tensor_value_info("c", T.BOOL, [])],
                  outputs=[_input("y", [2, 4, 16]), _input("z", [2, 4, 16])])


def random_op(folder):
    """An unseeded random op after the norm: the original differs from itself, not from the rewrite."""
    nodes = _naive_ln(out="ln") + [h.make_node("RandomNormalLike", ["ln"], ["r"]), h.make_node("Add", ["ln", "r"], ["y"])]
    return _model(nodes)


def cycle(folder):
    nodes = [h.make_node("Add", ["x", "y"], ["s"]), h.make_node("LayerNormalization", ["s", "w"], ["y"], axis=-1)]
    return _model(nodes, inits=[nh.from_array(W, "w")])


def duplicate_names(folder):
    nodes = _naive_ln()
    nodes.insert(3, h.make_node("Identity", ["x"], ["d"]))
    return _model(nodes)


def negative_groups(folder):
    n = h.make_node("GroupNorm", ["x", "gw", "gb"], ["y"], domain="com.microsoft", groups=-2, epsilon=1e-5,
                    activation=0, channels_last=1)
    g = h.make_graph([n], "g", [_input("x", [2, 4, 4, 8])], [_input("y", [2, 4, 4, 8])],
                     [nh.from_array(np.ones(8, np.float32), "gw"), nh.from_array(np.zeros(8, np.float32), "gb")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])


def _hashes(root) -> dict:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


# name -> (model builder, exit codes allowed, words the output must hold (stdout or the one stderr line))
MODELS = {
    # the Mul by a fed weight is not a constant affine: it stays outside the layer, untouched
    "weight-fed-at-run-time": (weight_fed, {0, 1}, ""),
    "initializer-overridden-ir3": (initializer_overridden, {4}, ""),  # no norm found: nothing checked
    "eps-fed-at-run-time": (eps_fed, {4}, ""),
    "keepdims0-symbolic": (keepdims0_symbolic, {4}, ""),
    "gn18-mul-not-per-channel": (gn18_mul_not_per_channel, {0, 1}, "not per channel"),
    "names-collide": (names_collide, {0}, "rewritten"),
    "intermediate-read-in-if": (read_in_if_branch, {0, 1}, "read inside an If/Loop/Scan body"),
    "unseeded-random-op": (random_op, {4}, "different outputs on two runs"),  # not compared: not checked
    "cycle": (cycle, {2}, "the graph has a cycle"),
    "duplicate-value-names": (duplicate_names, {2}, "computed by two nodes"),
    "negative-contrib-groups": (negative_groups, {2}, "positive group count"),
}


@pytest.mark.parametrize("name", MODELS)
def test_fix_on_hostile_models(tmp_path, name):
    build, codes, words = MODELS[name]
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "precious.txt").write_bytes(b"keep me")
    src = work / "m.onnx"
    onnx.save(build(work), str(src))
    before = _hashes(tmp_path)
    out = work / "out" / "fixed.onnx"
    out.parent.mkdir()
    r = run_cli("fix", str(src), "-o", str(out), "--no-timing")
    assert r.returncode in codes, (r.returncode, r.stdout[-1500:], r.stderr[-800:])
    assert words in r.stdout + r.stderr, (words, r.stdout[-1500:], r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 1 + r.stderr.count("  .. ")
    after = _hashes(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that was there changed
    if r.returncode == 0:
        assert out.is_file()
        _agree_on_random_inputs(src, out)
    elif r.returncode == 1 and "not proven" in r.stdout:
        assert not out.exists()


def _agree_on_random_inputs(src, out):
    """Original and fixed on 3 draws of random values for every graph input (weights and eps fed at run
    time too, where the model takes them)."""
    import onnxruntime as ort

    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for _ in range(3):
        feeds = {}
        for i in a.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in i.shape]
            if i.type == "tensor(bool)":
                feeds[i.name] = np.asarray(rng.random(shape) < 0.5)
            elif i.name == "eps":
                feeds[i.name] = np.asarray(rng.uniform(1e-3, 1e-1), np.float32)
            else:
                feeds[i.name] = (rng.standard_normal(shape) * 3 + rng.normal(0, 5)).astype(np.float32)
        for ya, yb in zip(a.run(None, feeds), b.run(None, feeds), strict=True):
            np.testing.assert_allclose(yb, ya, rtol=1e-3, atol=1e-3)


def test_fix_names_collisions_get_fresh_names(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(names_collide(tmp_path), str(src))
    r = run_cli("fix", str(src), "-o", str(tmp_path / "o.onnx"), "--no-timing")
    assert r.returncode == 0 and "1 layers rewritten" in r.stdout, r.stdout[-800:]
    m = onnx.load(str(tmp_path / "o.onnx"))
    outs = [o for n in m.graph.node for o in n.output]
    assert len(outs) == len(set(outs))
    onnx.checker.check_model(m, full_check=True)


# -- writes through links, FIFOs and devices ---------------------------------------------------------
def _planted(kind, path, target):
    if kind == "symlink":
        os.symlink(target, path)
    elif kind == "hardlink":
        os.link(target, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a clone of /dev/null, here in tmp
        except PermissionError:
            pytest.skip("creating a device node needs root")


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device"])
def test_fix_output_that_is_not_a_regular_file_is_exit_2(tmp_path, kind):
    src = tmp_path / "m.onnx"
    onnx.save(_model(_naive_ln()), str(src))
    target = tmp_path / "victim.onnx"
    target.write_bytes(b"victim")
    out = tmp_path / "o.onnx"
    _planted(kind, out, target)
    r = run_cli("fix", str(src), "-o", str(out), "--no-timing")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)
    assert target.read_bytes() == b"victim"


def test_fix_never_writes_through_a_link_planted_beside_the_output(tmp_path):
    """The old temporary name (FIXED.onnx.tmp) and the weights file name, planted as links to the input and
    to a file outside: fix writes through neither."""
    src = tmp_path / "m.onnx"
    onnx.save(_model(_naive_ln()), str(src))
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    os.symlink(src, out_dir / "fixed.onnx.tmp")
    before = src.read_bytes()
    r = run_cli("fix", str(src), "-o", str(out_dir / "fixed.onnx"), "--no-timing")
    assert r.returncode == 0, r.stdout[-600:]
    assert src.read_bytes() == before and outside.read_bytes() == b"outside"
    os.symlink(outside, out_dir / "again.onnx.data")
    r = run_cli("fix", str(src), "-o", str(out_dir / "again.onnx"), "--no-timing")
    assert r.returncode == 2 and "again.onnx.data" in r.stderr and outside.read_bytes() == b"outside"


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_lock_file_that_is_a_link_is_refused(tmp_path, kind):
    from normonnx.core.errors import BadInput
    from normonnx.core.results import LOCK, FolderLock

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"victim")
    out = tmp_path / "out"
    out.mkdir()
    _planted(kind, out / LOCK, victim)
    with pytest.raises(BadInput, match="symbolic link|hard links"):
        with FolderLock(out):
            pass
    assert victim.read_bytes() == b"victim"


# -- reads that would hang ---------------------------------------------------------------------------
def test_data_that_is_a_fifo_is_exit_2_at_once(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_model(_naive_ln()), str(src))
    os.mkfifo(tmp_path / "d.npz")
    r = run_cli("scan", str(src), "--activations", "--data", str(tmp_path / "d.npz"))
    assert r.returncode == 2 and "pipe" in r.stderr, r.stderr


def test_model_that_is_a_fifo_is_exit_2_at_once(tmp_path):
    os.mkfifo(tmp_path / "m.onnx")
    for cmd in (["scan"], ["fix", "-o", str(tmp_path / "o.onnx")]):
        r = run_cli(cmd[0], str(tmp_path / "m.onnx"), *cmd[1:])
        assert r.returncode == 2 and "pipe" in r.stderr, r.stderr


def test_too_many_samples_is_exit_2_before_any_run(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_model(_naive_ln()), str(src))
    np.savez(tmp_path / "d.npz", x=np.zeros((65536, 2, 4, 16), np.float32))
    r = run_cli("scan", str(src), "--activations", "--data", str(tmp_path / "d.npz"))
    assert r.returncode == 2 and "65536 samples" in r.stderr and "--max-samples" in r.stderr, r.stderr
    r = run_cli("scan", str(src), "--activations", "--data", str(tmp_path / "d.npz"), "--max-data-bytes", "1000")
    assert r.returncode == 2 and "--max-data-bytes" in r.stderr


def test_a_fifo_checksum_in_the_cache_is_a_miss_not_a_hang(tmp_path):
    import warnings

    from normonnx.exporting.cache import ExportCache
    from normonnx.core.spec import NormSpec

    cache = ExportCache(tmp_path / "c")
    ln = NormSpec.make("ln")
    p = cache.export(ln, "native", 18, "dynamo")
    digest = p.with_suffix(".sha256")
    digest.unlink()
    os.mkfifo(digest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = ExportCache(tmp_path / "c")
        again.export(ln, "native", 18, "dynamo")  # would block forever reading the pipe
    assert again.misses == 1 and again.rejected == 1


# -- odd but legal input: verdicts -----------------------------------------------------------------
def test_data_with_no_finite_element_is_not_a_pass_and_json_stays_valid(tmp_path):
    import json

    src = tmp_path / "m.onnx"
    onnx.save(_model([h.make_node("LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=1e-5)],
                     inits=[nh.from_array(W, "w"), nh.from_array(B, "b")]), str(src))
    np.savez(tmp_path / "d.npz", x=np.full((2, 4, 16), 1e300, np.float64))  # float32: all +inf
    r = run_cli("scan", str(src), "--activations", "--data", str(tmp_path / "d.npz"), "--json")
    doc = json.loads(r.stdout)  # strict: no bare NaN
    layer = doc["activations"]["layers"][0]
    assert layer["passed"] is None and "no finite" in layer["why"], layer
    assert r.returncode == 4


def test_activations_on_groupnorm21_followed_by_relu(tmp_path):
    n1 = h.make_node("GroupNormalization", ["x", "gw", "gb"], ["g"], num_groups=2, epsilon=1e-5)
    n2 = h.make_node("Relu", ["g"], ["y"])
    m = _model([n1, n2], inits=[nh.from_array(np.ones(4, np.float32), "gw"), nh.from_array(np.zeros(4, np.float32), "gb")],
               dims=(2, 4, 8, 8), opset=21)
    onnx.save(m, str(tmp_path / "m.onnx"))
    r = run_cli("scan", str(tmp_path / "m.onnx"), "--activations")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args", [["--jobs", "1e30"], ["--jobs", "0"], ["--jobs", "100000"]])
def test_absurd_jobs_is_exit_2(tmp_path, args):
    src = tmp_path / "m.onnx"
    onnx.save(_model(_naive_ln()), str(src))
    r = run_cli("scan", str(src), "--validate", *args)
    assert r.returncode == 2 and "--jobs" in r.stderr
