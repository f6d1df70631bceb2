"""QDQ models as ONNX Runtime's static quantizer writes them (real torch exports, real quantize_static): every
norm between Q/DQ pairs is checked as float (its pairs taken out: scan --validate and the float32 verdict of
--activations), and --activations measures what the model's own int8 rounding costs, in steps of the layer's
output grid (a what-if: never the exit code). The float16 what-if runs on the dequantized parameters."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import corpus
from conftest import run_cli


class Block(nn.Module):
    def __init__(self, pre: nn.Module, norm: nn.Module, post: nn.Module):
        super().__init__()
        self.pre, self.norm, self.post = pre, norm, post

    def forward(self, x):
        return self.post(self.norm(self.pre(x)))


# name -> (module, input shape, opset, exporter, kind, form)
BLOCKS = {
    # torch's instance-trick below opset 18: Reshape/InstanceNormalization/Reshape/Mul/Add, Q/DQ between them
    "gn-instance-trick": (lambda: Block(nn.Conv2d(4, 8, 3, padding=1), nn.GroupNorm(2, 8, eps=1e-6), nn.SiLU()),
                          (2, 4, 6, 5), 17, "torchscript", "gn", "instance-trick"),
    "ln-written-out": (lambda: Block(nn.Linear(16, 16), nn.LayerNorm(16, eps=1e-6), nn.Linear(16, 8)), (2, 5, 16), 14,
                       "torchscript", "ln", "decomposed"),
}


class Reader:
    def __init__(self, batches):
        self.it = iter(batches)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        pass


def _quantized(tmp_path, name: str):
    from onnxruntime.quantization import QuantFormat, quantize_static

    module, shape, opset, exporter, *_ = BLOCKS[name]
    torch.manual_seed(0)
    src = corpus.export_block(module(), shape, tmp_path / "f.onnx", opset, exporter)
    rng = np.random.default_rng(0)
    x = onnx.load(str(src)).graph.input[0].name
    batches = [{x: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    dst = tmp_path / "q.onnx"
    quantize_static(str(src), str(dst), Reader(batches), quant_format=QuantFormat.QDQ)
    return dst


@pytest.mark.parametrize("name", BLOCKS)
def test_a_qdq_norm_is_checked_as_float_and_its_int8_rounding_measured(tmp_path, name):
    *_, kind, form = BLOCKS[name]
    q = _quantized(tmp_path, name)
    r = run_cli("scan", str(q), "--validate", "--json")
    doc = json.loads(r.stdout)
    assert [(n["kind"], n["form"]) for n in doc["norms"]] == [(kind, form)]
    # the old code left the instance-trick's pairs in its cut-out and failed it at float32 tolerance (0.20 off)
    assert r.returncode == 0 and doc["norms"][0]["status"] == "pass", doc["norms"][0]["validation"]
    r = run_cli("scan", str(q), "--activations", "--json")
    (layer,) = json.loads(r.stdout)["activations"]["layers"]
    assert layer["status"] == "pass" and layer["error"]["max_abs_err"] < 1e-5, layer["error"]  # the float layer
    int8 = layer["int8"]
    assert int8["status"] == "pass" and 0.05 < int8["steps"] <= 2, int8  # int8 rounding: about one output step
    assert layer["float16"]["converted"]["status"] == "pass", layer["float16"]  # DQ'd parameters folded first
    assert r.returncode == 0


def test_int8_rounding_far_off_its_grid_is_a_failed_what_if_not_a_failed_layer(tmp_path):
    """The variance's Q/DQ pair inside a LayerNorm given a scale 64 times too coarse: the model's own output is
    many steps off (the what-if fails and says so), the float layer still passes, and the exit code is the
    float verdict's."""
    q = _quantized(tmp_path, "ln-written-out")
    m = onnx.load(str(q))
    inits = {t.name: t for t in m.graph.initializer}
    pairs = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and "ReduceMean_1" in n.input[0]]
    assert pairs, [n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    scale = inits[pairs[0].input[1]]
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * 64, scale.name))
    onnx.save(m, str(tmp_path / "coarse.onnx"))
    r = run_cli("scan", str(tmp_path / "coarse.onnx"), "--activations", "--json")
    (layer,) = json.loads(r.stdout)["activations"]["layers"]
    assert layer["status"] == "pass" and layer["int8"]["status"] == "fail", layer["int8"]
    assert layer["int8"]["steps"] > 2 and "outside tolerance" in layer["int8"]["why"]
    assert r.returncode == 0


@pytest.mark.parametrize("name", BLOCKS)
def test_a_qdq_models_whole_run_on_another_runtime_is_a_what_if(tmp_path, name):
    """Runtimes round a QDQ model's int8 steps differently (OpenVINO's whole run of these blocks is a step or more
    from ORT's): the whole-model run is shown, marked a what-if, and never the exit code; the layers judge it."""
    from normonnx.engine.runtimes import get_runtime

    if get_runtime("openvino").unavailable():
        pytest.skip(get_runtime("openvino").unavailable())
    q = _quantized(tmp_path, name)
    r = run_cli("scan", str(q), "--activations", "--runtimes", "openvino", "--json")
    doc = json.loads(r.stdout)["activations"]
    whole = doc["whole_model"]["openvino"]
    assert whole["judged"] is False and whole["status"] in ("pass", "fail"), whole
    assert [lc["status"] for lc in doc["layers"]] == ["pass"] and r.returncode == 0, (whole, r.stderr)
    text = run_cli("scan", str(q), "--activations", "--runtimes", "openvino").stdout
    assert f"{whole['status'].upper() if whole['status'] == 'fail' else 'pass'} (what-if)" in text, text
