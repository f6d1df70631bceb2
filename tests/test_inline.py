"""Models as torch saves them under 2 GB: every weight inline in the .onnx. A file over graph.MAP_INLINE_ABOVE is
read in place (graph.map_inline: its weights become references to their own bytes in the file), so scan,
scan --validate, fix and --activations hold no second copy of the weights, in Python (tracemalloc) or in the
process (peak RSS beside the same model stored as external data, which is known to stay bounded)."""
from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import corpus
from normonnx.core.errors import BadInput
from normonnx.graph.graph import MAP_INLINE_ABOVE, load_model, map_inline, ort_source
from normonnx.repair.fixer import FixOptions, ProofOptions, fix
from normonnx.features.scan import scan
from normonnx.features.scan.activations import check_activations


@pytest.fixture(scope="module")
def inline(tmp_path_factory) -> tuple[Path, int]:
    # a first run of each command on a tiny copy: what Python keeps from importing modules is not the weights
    tiny = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    corpus.external_decoder(tiny, hidden=32, layers=1, vocab=64, seq=8, inline=True)
    fix(tiny, tiny.with_name("fixed.onnx"), change=FixOptions(opset=17))
    check_activations(tiny)
    path = tmp_path_factory.mktemp("inline") / "decoder.onnx"
    weights = corpus.external_decoder(path, hidden=512, layers=1, vocab=4096, seq=8, inline=True)
    assert path.stat().st_size > MAP_INLINE_ABOVE and not path.with_name("decoder.onnx.data").exists()
    return path, weights  # 23 MB of inline weights


def _peak(call) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _feeds() -> dict:
    return {"input_ids": np.random.default_rng(1).integers(0, 4096, (1, 8), dtype=np.int64)}


def test_the_weights_are_read_where_they_lie_and_are_the_same(inline):
    src, weights = inline
    mapped, peak = _peak(lambda: map_inline(src))
    assert peak < weights / 20, f"{peak / 1e6:.1f} MB held for {weights / 1e6:.1f} MB of weights"
    full = onnx.load(str(src))
    moved = [t for t in mapped.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(moved) >= 5 and all({e.key: e.value for e in t.external_data}["location"] == src.name for t in moved)
    onnx.load_external_data_for_model(mapped, str(src.parent))
    for a, b in zip(full.graph.initializer, mapped.graph.initializer, strict=True):
        assert a.name == b.name and np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b)), a.name
    # ONNX Runtime runs the mapped model, its weights read from the .onnx itself, as it runs the file
    model, folder = ort_source(src)
    assert isinstance(model, bytes) and len(model) < weights / 100 and folder == str(src.parent.resolve())
    so = ort.SessionOptions()
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    got = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, _feeds())[0]
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, _feeds())[0]
    assert np.array_equal(got, want)


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_a_truncated_file_is_refused_in_one_line(inline, tmp_path, cut):
    src, _ = inline
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(src.read_bytes()[:int(src.stat().st_size * cut)])
    with pytest.raises(BadInput, match="is not a readable ONNX model") as e:
        load_model(bad, load_external_data=False)
    assert "\n" not in str(e.value)


def test_scan_validate_holds_no_copy_of_the_weights(inline):
    src, weights = inline
    rep, peak = _peak(lambda: scan(src, validate=True))
    assert len(rep.norms) == 3 and rep.exit_code == 1  # the one-pass final LayerNorm fails at offsets
    assert peak < weights / 4, f"scan --validate held {peak / 1e6:.1f} MB for {weights / 1e6:.1f} MB of weights"


def test_activations_hold_no_copy_of_the_weights(inline):
    src, weights = inline
    rep, peak = _peak(lambda: check_activations(src, what_if=False))
    assert len(rep.layers) == 3 and all(lc.status == "pass" for lc in rep.layers)
    assert peak < weights / 4, f"--activations held {peak / 1e6:.1f} MB for {weights / 1e6:.1f} MB of weights"


def test_fix_streams_an_inline_model_and_leaves_it_as_it_was(inline, tmp_path):
    src, weights = inline
    before = src.read_bytes()
    out = tmp_path / "fixed" / "decoder.onnx"
    out.parent.mkdir()
    rep, peak = _peak(lambda: fix(src, out, change=FixOptions(opset=17), proof=ProofOptions(timing=False)))
    assert rep.written and rep.exit_code == 0, rep.to_dict()["notes"]
    assert peak < weights / 4, f"fix held {peak / 1e6:.1f} MB in Python for {weights / 1e6:.1f} MB of weights"
    # both sessions of the whole-model comparison read the large weights from one place (the output's aligned
    # copies where protobuf left the input's unaligned)
    assert rep.whole_model.status == "pass" and rep.whole_model.shared_weights >= 3
    assert src.read_bytes() == before
    # the weights go beside the output, streamed from the input (one file would be a copy in memory to write)
    assert sorted(p.name for p in out.parent.iterdir()) == ["decoder.onnx", "decoder.onnx.data"]
    assert rep.data_output == str(out.with_name("decoder.onnx.data"))
    assert out.with_name("decoder.onnx.data").stat().st_size >= weights * 0.99
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, _feeds())[0]
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, _feeds())[0]
    np.testing.assert_allclose(b, a, atol=1e-4)


def test_a_small_inline_model_is_fixed_into_one_file(tmp_path):
    src = tmp_path / "small.onnx"
    corpus.external_decoder(src, hidden=64, layers=1, vocab=256, seq=8, inline=True)
    assert src.stat().st_size < MAP_INLINE_ABOVE
    out = tmp_path / "out" / "small.onnx"
    out.parent.mkdir()
    rep = fix(src, out, change=FixOptions(opset=17), proof=ProofOptions(timing=False))
    assert rep.written and rep.data_output is None and [p.name for p in out.parent.iterdir()] == ["small.onnx"]


# -- the whole process: peak RSS ------------------------------------------------------------------------------
COMMANDS = {"scan": ["scan", "m.onnx"], "scan --validate": ["scan", "m.onnx", "--validate"],
            "fix": ["fix", "m.onnx", "-o", "fixed/m.onnx", "--opset", "17", "--no-timing"],
            "--activations": ["scan", "m.onnx", "--activations"]}


# the command's own high-water mark, read as it exits: a child's ru_maxrss starts at its parent's (fork, then exec
# keeps the mark), and this test process is far larger than the weights; VmHWM starts afresh at exec
HWM = """
import atexit, os, runpy, sys
def hwm():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    with open(os.environ["NORMONNX_TEST_HWM"], "w") as f:
        f.write(kb)
atexit.register(hwm)
sys.argv = ["normonnx", *sys.argv[1:]]
runpy.run_module("normonnx.presentation.cli", run_name="__main__")
"""


def _peak_rss(args: list[str], cwd: Path) -> float:
    """Peak RSS in MB of one normonnx command in a fresh process."""
    mark = cwd / "hwm.txt"
    p = subprocess.run([sys.executable, "-c", HWM, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "NORMONNX_TEST_HWM": str(mark)})
    assert p.returncode in (0, 1), p.stderr[-800:]
    return int(mark.read_text()) / 1024


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> tuple[Path, Path, int]:
    """One decoder stored both ways: weights inline, and in an external-data file."""
    root = tmp_path_factory.mktemp("twins")
    for name in ("inline", "external"):
        (root / name / "fixed").mkdir(parents=True)
        weights = corpus.external_decoder(root / name / "m.onnx", hidden=512, layers=2, vocab=8192, seq=8,
                                          inline=name == "inline")
    return root / "inline", root / "external", weights  # 46 MB of weights


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_inline_model_costs_what_its_external_twin_costs(twins, command):
    """Both stored ways, each command's peak RSS within half the weights of the other's: a second copy of the
    weights (protobuf's parse of the file, an ORT session given the path) would add at least all of them."""
    a, b, weights = twins
    inline, external = (_peak_rss(COMMANDS[command], d) for d in (a, b))
    assert inline < external + weights / 2e6, (f"{command}: inline {inline:.0f} MB, external {external:.0f} MB, "
                                               f"weights {weights / 1e6:.0f} MB")
