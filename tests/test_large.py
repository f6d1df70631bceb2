"""Models at their real size, in small: a decoder whose weights live in external data
(corpus.external_decoder) goes through fix and scan --activations without its weights ever being held in
Python memory (tracemalloc sees every bytes object and numpy array Python makes; ONNX Runtime's own
allocations and read-only maps are outside it, as they are in a plain ORT run), the input and its data
untouched, the output's data a fresh file; and the odd layouts: weights split over many files, one data
file two models share, bfloat16 weights ORT reads itself."""
from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import corpus
from normonnx.graph.graph import check_external_data, copy_external_data
from normonnx.repair.fixer import FixOptions, ProofOptions, fix
from normonnx.repair.proof import shared_weights
from normonnx.features.scan.activations import check_activations


def _digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def _outputs(path: Path, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> tuple[Path, int]:
    # a first run of each command on a tiny copy: what Python keeps from importing modules is not the weights
    tiny = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    corpus.external_decoder(tiny, hidden=32, layers=1, vocab=64, seq=8)
    fix(tiny, tiny.with_name("fixed.onnx"), change=FixOptions(opset=17))
    check_activations(tiny)
    path = tmp_path_factory.mktemp("decoder") / "decoder.onnx"
    return path, corpus.external_decoder(path, hidden=512, layers=1, vocab=4096, seq=8)  # 23 MB of weights


def _peak(call) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_fix_streams_the_weights_and_leaves_the_input_as_it_was(decoder, tmp_path):
    src, weights = decoder
    data = src.with_name(src.name + ".data")
    before = _digest(src, data)
    out = tmp_path / "fixed" / "decoder.onnx"
    out.parent.mkdir()
    rep, peak = _peak(lambda: fix(src, out, change=FixOptions(opset=17), proof=ProofOptions(timing=False)))
    assert rep.written and rep.exit_code == 0, rep.to_dict()["notes"]
    assert rep.whole_model.status == "pass" and rep.whole_model.shared_weights >= 3
    assert peak < weights / 4, f"fix held {peak / 1e6:.1f} MB in Python for {weights / 1e6:.1f} MB of weights"
    assert _digest(src, data) == before
    out_data = out.with_name(out.name + ".data")
    assert sorted(p.name for p in out.parent.iterdir()) == ["decoder.onnx", "decoder.onnx.data"]
    st, st_in = out_data.stat(), data.stat()
    assert st.st_nlink == 1 and st.st_ino != st_in.st_ino  # a copy, never a link a later write goes through
    # every weight the output keeps is the input's, byte for byte, and the outputs agree (not fix's word for it)
    fixed = onnx.load(str(out))
    original = onnx.load(str(src))
    kept = {t.name: t for t in fixed.graph.initializer}
    for t in original.graph.initializer:
        if t.name in kept and t.name.startswith("h."):
            assert kept[t.name].raw_data == t.raw_data, t.name
    feeds = {"input_ids": np.random.default_rng(1).integers(0, 4096, (1, 8), dtype=np.int64)}
    np.testing.assert_allclose(_outputs(out, feeds)[0], _outputs(src, feeds)[0], atol=1e-4)


def test_fix_with_nothing_to_rewrite_is_a_streamed_copy(decoder, tmp_path):
    src, weights = decoder
    out = tmp_path / "same.onnx"
    # its one-pass layers still fail (no selected rule covers them): written only on request
    rep, peak = _peak(lambda: fix(src, out, change=FixOptions(rules=["stash-float32"]),
                                  proof=ProofOptions(timing=False, write_unproven=True)))
    assert rep.written and not rep.changes
    assert peak < weights / 4
    assert out.with_name("same.onnx.data").stat().st_size >= weights  # every tensor, none held here


def test_activations_capture_without_copying_the_weights(decoder):
    src, weights = decoder
    rep, peak = _peak(lambda: check_activations(src, what_if=False))
    assert len(rep.layers) == 3 and all(lc.status == "pass" for lc in rep.layers)
    assert peak < weights / 4, f"--activations held {peak / 1e6:.1f} MB for {weights / 1e6:.1f} MB of weights"


def test_a_layout_that_splits_the_weights_over_many_files(decoder, tmp_path):
    src, _ = decoder
    model = onnx.load(str(src))  # small: loading it whole is this test's business, not the commands'
    split = tmp_path / "split"
    split.mkdir()
    onnx.save(model, str(split / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=0)
    assert len(list(split.iterdir())) > 10
    out = tmp_path / "out.onnx"
    rep = fix(split / "m.onnx", out, change=FixOptions(opset=17), proof=ProofOptions(timing=False))
    assert rep.written and rep.exit_code == 0
    assert {e.path.name for e in check_external_data(onnx.load(str(out), load_external_data=False), tmp_path)} \
        == {"out.onnx.data"}


def _shared_file_models(folder: Path) -> tuple[Path, Path]:
    """Two single-LayerNorm models in one folder reading different halves of one data file."""
    rng = np.random.default_rng(0)
    blob = folder / "shared.bin"
    arrays = [rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2)]
    blob.write_bytes(b"".join(a.tobytes() for a in arrays))
    paths = []
    for k in range(2):
        w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 64], data_location=TensorProto.EXTERNAL)
        for key, value in (("location", "shared.bin"), ("offset", str(k * arrays[0].nbytes)),
                           ("length", str(arrays[0].nbytes))):
            e = w.external_data.add()
            e.key, e.value = key, value
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
                 helper.make_node("LayerNormalization", ["h", "g", "b"], ["y"], axis=-1, epsilon=1e-5)]
        g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
                              [w, numpy_helper.from_array(np.ones(64, np.float32), "g"),
                               numpy_helper.from_array(np.zeros(64, np.float32), "b")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        paths.append(folder / f"m{k}.onnx")
        onnx.save(m, str(paths[-1]))
    return paths[0], paths[1]


def test_a_data_file_two_models_share_is_not_copied_whole(tmp_path):
    a, b = _shared_file_models(tmp_path)
    out = tmp_path / "out" / "a.onnx"
    out.parent.mkdir()
    rep = fix(b, out, proof=ProofOptions(timing=False))
    assert rep.written
    assert (tmp_path / "shared.bin").stat().st_size == 2 * 64 * 64 * 4
    assert out.with_name("a.onnx.data").stat().st_size == 64 * 64 * 4  # b's half only
    x = {"x": np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)}
    np.testing.assert_allclose(_outputs(out, x)[0], _outputs(b, x)[0], atol=1e-5)
    assert not np.allclose(_outputs(a, x)[0], _outputs(b, x)[0])  # the halves differ: the right one was copied


def test_bfloat16_weights_are_copied_but_not_shared(tmp_path):
    """numpy has no bfloat16: such weights are streamed like any other, and each session reads its own. A
    tensor over 1 MiB is placed at a multiple of 4096 (so ORT can map it): the small one before it (200 bytes)
    would otherwise put it at offset 200, so this fails when alignment is lost."""
    bits = (np.arange(100, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    (tmp_path / "w.bin").write_bytes(b"\0" * 100 + bits.tobytes())
    t = onnx.TensorProto(name="w", data_type=TensorProto.BFLOAT16, dims=[10, 10], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "w.bin"), ("offset", "100"), ("length", str(bits.nbytes))):
        e = t.external_data.add()
        e.key, e.value = key, value
    # inline, over 1 MiB (1 MiB + 4 kB): goes to the data file, aligned
    f32 = numpy_helper.from_array(np.ones((257, 1024), np.float32), "f")
    model = helper.make_model(helper.make_graph([helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)], "m",
                                                [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, 10])],
                                                [t, f32]))
    (tmp_path / "out").mkdir()
    sources = copy_external_data(model, tmp_path, tmp_path / "out" / "m.onnx.data")
    assert set(sources) == {"w"} and sources["w"].offset == 100
    placed = {e.tensor.name: e for e in check_external_data(model, tmp_path / "out")}
    assert placed["w"].offset == 0 and placed["f"].offset == 4096, {k: v.offset for k, v in placed.items()}
    with open(tmp_path / "out" / "m.onnx.data", "rb") as fh:
        fh.seek(placed["w"].offset)
        assert fh.read(bits.nbytes) == bits.tobytes()
    assert shared_weights(model, sources, sources, min_bytes=0) == {}


def test_a_graph_past_protobufs_limit_is_written_with_external_data(tmp_path, monkeypatch):
    """A graph whose inline tensors would pass protobuf's 2 GB limit is written with its tensors in
    FIXED.onnx.data (the limit lowered here: a 2 GB model has no place in a unit test)."""
    import normonnx.graph.graph

    a, _ = _shared_file_models(tmp_path)
    inline = onnx.load(str(a))  # the same model with its weights inline
    onnx.save(inline, str(tmp_path / "inline.onnx"))
    monkeypatch.setattr(normonnx.graph.graph, "PROTO_LIMIT", 4096)  # fix, its checker step and the capture graph
    rep = fix(tmp_path / "inline.onnx", tmp_path / "out.onnx", proof=ProofOptions(timing=False))
    assert rep.written and any("2 GB limit" in n for n in rep.notes)
    assert (tmp_path / "out.onnx.data").stat().st_size >= 64 * 64 * 4
    x = {"x": np.ones((2, 64), np.float32)}
    np.testing.assert_allclose(_outputs(tmp_path / "out.onnx", x)[0], _outputs(a, x)[0], atol=1e-5)
    rep = check_activations(tmp_path / "inline.onnx")
    assert rep.layers and all(lc.status == "pass" for lc in rep.layers)


def test_a_folder_without_room_for_the_weights_is_refused_before_any_work(decoder, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from normonnx.core.errors import BadInput

    src, weights = decoder
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * weights, 10 * weights - 1000, 1000))
    with pytest.raises(BadInput, match=r"needs about 0.02 GB free in .* which has 0.00 GB") as e:
        fix(src, tmp_path / "out.onnx")
    assert len(str(e.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing staged, nothing left behind


def test_shape_inference_copies_no_inline_weights(decoder):
    """An inline model (torch writes everything inline under 2 GB) is shape-inferred on a copy without
    its weights' bytes; the result lands on the model itself."""
    from normonnx.graph.shapes import infer_shapes

    src, weights = decoder
    model = onnx.load(str(src))  # the weights inline now
    before = {t.name: t.raw_data[:64] for t in model.graph.initializer}
    out, peak = _peak(lambda: infer_shapes(model))
    assert out is model and len(model.graph.value_info) > 10
    assert peak < weights / 4, f"{peak / 1e6:.1f} MB for {weights / 1e6:.1f} MB of inline weights"
    assert {t.name: t.raw_data[:64] for t in model.graph.initializer} == before
