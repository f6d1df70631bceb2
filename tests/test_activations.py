"""scan --activations: every norm checked on the activations the model feeds it, with the statistics
that decide the risk and a float16 what-if, on models made by real exporters."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import corpus
from conftest import run_cli
from normonnx.core.errors import ExitCode
from normonnx.features.scan.activations import check_activations
from normonnx.features.scan.data import load_data


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("act")
    return {
        "massive": corpus.export_block(corpus.MassiveActivationsBlock(), (2, 5, 32), d / "massive.onnx", 14,
                                       "torchscript"),
        "gn21": corpus.export_block(corpus.ResidualGNBlock(), (2, 8, 8, 8), d / "gn21.onnx", 21, "dynamo"),
        "folder": d,
    }


def test_massive_activations_pass_in_float32_and_break_in_float16(models):
    """The outlier shows in the captured stats; the float32 LayerNorm (decomposed, opset 14) is right;
    converted to float16 its (x - mean)^2 overflows; with float32 statistics (fix's rule) it is right."""
    rep = check_activations(models["massive"])
    (lc,) = rep.layers
    assert (lc.norm.kind, lc.norm.form) == ("ln", "decomposed")
    assert lc.stats["max_abs"] > 400 and lc.stats["max_dev2_over_fp16_max"] > 1
    assert lc.status == "pass" and lc.error.max_abs_err < 1e-4
    assert lc.fp16.converted.status == "fail" and lc.fp16.converted.max_abs_err > 1
    assert (lc.fp16.fp32_statistics.status, lc.fp16.fp32_statistics.rule) == ("pass", "ln-native")
    assert rep.exit_code == ExitCode.PASSED


def test_a_large_offset_breaks_groupnormalization_on_the_captured_activations(models, tmp_path):
    """GroupNormalization-21 runs as ORT's E[x^2]-E[x]^2 body: on inputs with a common offset of 1e3
    the captured output is wrong (exit 1); on normal inputs the same model passes."""
    normal = check_activations(models["gn21"])
    assert [lc.status for lc in normal.layers] == ["pass"] and normal.exit_code == 0
    x = (1e3 + np.random.default_rng(0).standard_normal((2, 2, 8, 8, 8))).astype(np.float32)  # 2 samples
    np.savez(tmp_path / "offset.npz", x=x)
    off = check_activations(models["gn21"], data=tmp_path / "offset.npz")
    (lc,) = off.layers
    assert off.samples == 2 and off.runs == 2
    assert lc.stats["max_offset_over_std"] > 100
    assert lc.status == "fail" and off.exit_code == ExitCode.CHECK_FAILED
    assert lc.fp16.fp32_statistics.rule == "group-norm"


def test_cli_table_json_and_exit_code(models, tmp_path):
    x = (1e3 + np.random.default_rng(1).standard_normal((2, 8, 8, 8))).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    r = run_cli("scan", str(models["gn21"]), "--activations", "--data", str(tmp_path / "d.npz"))
    assert r.returncode == 1 and "on the model's activations" in r.stdout and "FAIL #0" in r.stdout
    # the verdict says what it covers, and a failure points to fix
    assert "not on stress inputs" in r.stdout and f"next: normonnx fix {models['gn21']}" in r.stdout
    doc = json.loads(run_cli("scan", str(models["massive"]), "--activations", "--json").stdout)
    assert "not stress inputs" in doc["activations"]["checked"]
    layer = doc["activations"]["layers"][0]
    assert layer["status"] == "pass" and layer["float16"]["converted"]["status"] == "fail"


@pytest.mark.parametrize("arrays, words", [
    ({"y": np.zeros((2, 8, 8, 8), np.float32)}, "no graph input named 'y'"),
    ({}, "no array for graph input 'x'"),
    ({"x": np.zeros((2, 8, 8), np.float32)}, "has rank 3"),
    ({"x": np.zeros((2, 4, 8, 8), np.float32)}, "dim 1 is 4"),
    ({"x": np.zeros((2, 8, 8, 8), np.int64)}, "is int64"),
], ids=["unknown-name", "missing", "rank", "shape", "dtype"])
def test_bad_data_is_exit_2_one_line(models, tmp_path, arrays, words):
    np.savez(tmp_path / "bad.npz", **arrays)
    r = run_cli("scan", str(models["gn21"]), "--activations", "--data", str(tmp_path / "bad.npz"))
    assert r.returncode == ExitCode.BAD_INPUT and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_data_that_is_not_npz_is_exit_2(models, tmp_path):
    (tmp_path / "x.npz").write_bytes(b"junk")
    r = run_cli("scan", str(models["gn21"]), "--activations", "--data", str(tmp_path / "x.npz"))
    assert r.returncode == 2 and "not a readable .npz" in r.stderr


def test_token_ids_are_drawn_in_the_vocabulary_range(tmp_path):
    """Seeded inputs for token ids stay below the embedding's row count (an id past it is an ORT error)."""
    transformers = pytest.importorskip("transformers")
    import torch

    from normonnx.features.scan.data import seeded_samples, vocab_sizes
    from normonnx.graph.graph import load_model

    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=50, n_positions=64)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = transformers.GPT2Model(cfg)

        def forward(self, ids):
            return self.m(input_ids=ids).last_hidden_state

    path = tmp_path / "gpt2.onnx"
    torch.onnx.export(Wrap().eval(), (torch.randint(0, 50, (2, 8)),), str(path), opset_version=14, dynamo=False,
                      input_names=["ids"])
    model = load_model(path, load_external_data=False)
    assert vocab_sizes(model) == {"ids": 50}
    ids = seeded_samples(model, None)[0]["ids"]
    assert ids.max() < 50 and ids.max() > 2  # the whole range, not only 0/1
    rep = check_activations(path)
    assert rep.layers and all(lc.status == "pass" for lc in rep.layers)


def test_load_data_takes_a_leading_sample_axis(models, tmp_path):
    from normonnx.graph.graph import load_model

    np.savez(tmp_path / "s.npz", x=np.zeros((3, 2, 8, 8, 8), np.float32))
    samples, shapes = load_data(tmp_path / "s.npz", load_model(models["gn21"], load_external_data=False))
    assert len(samples) == 3 and shapes == {"x": [2, 8, 8, 8]}


@pytest.mark.parametrize("dims, runs", [(("n", 4, 16), 3), ((2, 4, 16), 100)], ids=["symbolic-batch", "fixed-batch"])
def test_samples_are_stacked_into_runs_where_the_batch_dim_allows(tmp_path, dims, runs):
    """100 samples of a model whose batch dim is symbolic: 1 + 2 stacked runs (64 a run), each sample judged
    alone; with a fixed batch dim, one run a sample. The verdicts are the same either way."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=1e-5)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims))],
                          [numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "w"),
                           numpy_helper.from_array(rng.normal(0, 0.5, 16).astype(np.float32), "b")])
    path = tmp_path / "ln.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((100, 2, 4, 16)).astype(np.float32))
    rep = check_activations(path, data=tmp_path / "d.npz", what_if=False)
    assert rep.samples == 100 and rep.runs == runs
    assert [lc.status for lc in rep.layers] == ["pass"]


@pytest.mark.parametrize("name", ["golden", "g.npz"])  # ONNX's test-data layout (a folder), or one .npz file
def test_golden_outputs_round_trip_and_a_changed_model_is_caught(tmp_path, name):
    """--save-outputs then --load-outputs on ORT CPU: the same outputs (0 from stored), pass. The stored
    inputs replayed through a model whose norm now has another eps: FAIL against the oracle, and far from
    the stored outputs. A file that is not golden outputs is exit 2."""
    from conftest import run_cli

    def ln(eps):
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 32])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 32])
        w = helper.make_tensor("w", TensorProto.FLOAT, [32], np.ones(32, np.float32))
        node = helper.make_node("LayerNormalization", ["x", "w"], ["y"], axis=-1, epsilon=eps, name="the_norm")
        return helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])

    onnx.save(ln(1e-5), str(tmp_path / "m.onnx"))
    g = tmp_path / name
    assert run_cli("scan", str(tmp_path / "m.onnx"), "--activations", "--save-outputs", str(g)).returncode == 0
    same = run_cli("scan", str(tmp_path / "m.onnx"), "--activations", "--load-outputs", str(g), "--json")
    (layer,) = json.loads(same.stdout)["activations"]["layers"]
    assert same.returncode == 0 and layer["runtimes"]["cpu"] == {**layer["runtimes"]["cpu"], "passed": True,
                                                                  "max_diff_from_stored": 0.0}
    onnx.save(ln(0.5), str(tmp_path / "m.onnx"))  # the file changed under the same name
    changed = run_cli("scan", str(tmp_path / "m.onnx"), "--activations", "--load-outputs", str(g), "--json")
    (layer,) = json.loads(changed.stdout)["activations"]["layers"]
    assert changed.returncode == 1 and layer["runtimes"]["cpu"]["status"] == "fail"
    assert layer["runtimes"]["cpu"]["max_diff_from_stored"] > 1e-2
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    bad = run_cli("scan", str(tmp_path / "m.onnx"), "--activations", "--load-outputs", str(tmp_path / "bad.npz"))
    assert bad.returncode == 2 and "--load-outputs" in bad.stderr and "Traceback" not in bad.stderr
    alone = run_cli("scan", str(tmp_path / "m.onnx"), "--load-outputs", str(g))
    assert alone.returncode == 2 and "--load-outputs goes with --activations" in alone.stderr


def test_golden_outputs_folder_is_onnx_test_data_ort_can_run(tmp_path):
    """The folder --save-outputs writes is ONNX's test-data layout: onnx.load_tensor reads every input_0.pb and
    output_0.pb, and ONNX Runtime runs each layer's model.onnx on its inputs to its outputs. A folder that
    exists already is refused (exit 2), and so is a folder without the index."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from conftest import run_cli

    model = corpus.gn_silu_block(tmp_path / "gn.onnx", 21, "dynamo")
    g = tmp_path / "golden"
    r = run_cli("scan", str(model), "--activations", "--save-outputs", str(g))
    assert r.returncode in (0, 1), r.stderr
    meta = json.loads((g / "normonnx-golden.json").read_text())
    ran = 0
    for layer in meta["layers"]:
        d = g / layer["dir"]
        sets = sorted(d.glob("test_data_set_*"))
        assert len(sets) == layer["samples"] >= 1
        sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]) \
            if (d / "model.onnx").exists() else None
        for s in sets:
            x = numpy_helper.to_array(onnx.load_tensor(str(s / "input_0.pb")))
            y = numpy_helper.to_array(onnx.load_tensor(str(s / "output_0.pb")))
            assert x.dtype == y.dtype == np.float32 and x.shape == y.shape
            if sess is not None:
                np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], y, atol=1e-5)
                ran += 1
    assert ran == sum(layer["samples"] for layer in meta["layers"])  # both GroupNorms' cut-outs take their tensors
    again = run_cli("scan", str(model), "--activations", "--save-outputs", str(g))
    assert again.returncode == 2 and "exists: give a new folder" in again.stderr
    (g / "normonnx-golden.json").unlink()
    gone = run_cli("scan", str(model), "--activations", "--load-outputs", str(g))
    assert gone.returncode == 2 and "is not a folder" in gone.stderr and "Traceback" not in gone.stderr
