"""A variant is one registry entry: a toy variant declared in one place (its module, what the export
must hold, its translation for one exporter) exports, validates and sweeps, with no edit anywhere else."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from normonnx import NormSpec, export_result
from normonnx.engine.inputs import CheckOptions
from normonnx.features.sweep import Matrix, sweep
from normonnx.exporting.translations import Translation
from normonnx.exporting.export import ExportOptions
from normonnx.engine.runtimes import RunOptions
from normonnx.engine.validate import validate
from normonnx.exporting.variants import REGISTRY, Variant


class PowLayerNorm(nn.Module):
    """LayerNorm with its inverse standard deviation as Pow(var + eps, -0.5)."""

    def __init__(self, spec: NormSpec, params: dict):
        super().__init__()
        self.dims = tuple(range(-spec.normalized_ndim, 0))
        self.eps = spec.eps
        self.weight = nn.Parameter(torch.as_tensor(params["weight"]))
        self.bias = nn.Parameter(torch.as_tensor(params["bias"]))

    def forward(self, x):
        d = x - x.mean(self.dims, keepdim=True)
        var = (d * d).mean(self.dims, keepdim=True)
        return d * torch.pow(var + self.eps, -0.5) * self.weight + self.bias


@pytest.fixture
def toy():
    entered = []

    @contextlib.contextmanager
    def seen(spec, opset):  # the exporter runs inside the variant's own context
        entered.append((spec.id, opset))
        yield

    v = Variant(name="toy-pow", description="LayerNorm through Pow(var + eps, -0.5)", min_opset={"ln": 18},
                build=lambda spec, params: PowLayerNorm(spec, params).eval(),
                expect=lambda spec, opset, ops: None if "Pow" in ops else f"expected Pow, found {sorted(ops)}",
                emits=lambda kind, opset: "ReduceMean/Sub/Mul/Add/Pow",
                translations={"dynamo": Translation(context=seen)})
    REGISTRY.register(v)
    yield v, entered
    del REGISTRY[v.name]


def test_a_toy_variant_declared_once_exports_validates_and_sweeps(toy, tmp_path):
    v, entered = toy
    spec = NormSpec.make("ln", shape=(2, 4, 16))
    rep = export_result(spec, v.name, 18, "dynamo", output=tmp_path / "toy.onnx")
    assert "Pow" in rep.ops and entered == [(spec.id, 18)]
    assert validate(spec, export=ExportOptions(variant=v.name, opset=18), run=RunOptions.on("cpu"),
                    check=CheckOptions(["normal"])).verdict.status == "pass"
    out = tmp_path / "sweep"
    summary = sweep(out, Matrix(norms=("ln",), variants=(v.name,), opsets=(18,), exporters=("dynamo",),
                                dtypes=("float32",), providers=("cpu",)), check=CheckOptions(inputs=["normal"]))
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in records] == [v.name] and records[0]["status"] == "pass", records
    assert summary.counts == {"pass": 1}


def test_the_toy_variant_fails_where_its_maths_is_wrong(toy, tmp_path):
    """The same entry with a wrong eps inside its module: validate must say FAIL, not pass."""
    v, _ = toy
    spec = NormSpec.make("ln", shape=(2, 4, 16))

    def wrong(spec, params):
        m = PowLayerNorm(spec, params).eval()
        m.eps = 1.0
        return m

    REGISTRY["toy-pow"] = Variant(**{**v.__dict__, "build": wrong})
    rep = validate(spec, export=ExportOptions(variant="toy-pow", opset=18), run=RunOptions.on("cpu"),
                   check=CheckOptions(["normal"]))
    assert rep.verdict.status == "fail"
    assert np.isfinite([r.max_abs_err for r in rep.results if r.max_abs_err is not None]).all()
