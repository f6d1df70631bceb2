#!/usr/bin/env python3
"""Scan speed against model size: chains of decomposed LayerNorms (10 nodes each) with 200 to 4,000
layers (2,000 to 40,000 nodes). scan is linear: the pattern search is local to each node and ORT's
fusion is asked once of the whole model. Prints a Markdown table (seconds, best of 3).

    python benchmarks/scan_speed.py
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from normonnx.scan import scan

C = 16


def chain(layers: int) -> onnx.ModelProto:
    nodes, x = [], "x"
    for i in range(layers):
        p = f"l{i}_"
        nodes += [helper.make_node("ReduceMean", [x, "axes"], [p + "m"]),
                  helper.make_node("Sub", [x, p + "m"], [p + "d"]),
                  helper.make_node("Mul", [p + "d", p + "d"], [p + "sq"]),
                  helper.make_node("ReduceMean", [p + "sq", "axes"], [p + "v"]),
                  helper.make_node("Add", [p + "v", "eps"], [p + "ve"]),
                  helper.make_node("Sqrt", [p + "ve"], [p + "sd"]),
                  helper.make_node("Div", [p + "d", p + "sd"], [p + "n"]),
                  helper.make_node("Mul", [p + "n", "w"], [p + "nw"]),
                  helper.make_node("Add", [p + "nw", "b"], [p + "o"]),
                  helper.make_node("Relu", [p + "o"], [p + "r"])]
        x = p + "r"
    inits = [numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.ones(C, np.float32), "w"), numpy_helper.from_array(np.zeros(C, np.float32), "b")]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [2, C])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def main() -> int:
    rows = ["| layers | nodes | scan s (best of 3) | µs per node |", "|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (200, 1000, 2000, 4000):
            path = Path(tmp) / f"c{layers}.onnx"
            onnx.save(chain(layers), str(path))
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                report = scan(path)
                best = min(best, time.perf_counter() - t0)
            assert len(report.norms) == layers
            rows.append(f"| {layers} | {layers * 10} | {best:.2f} | {best / (layers * 10) * 1e6:.0f} |")
            print(rows[-1], file=sys.stderr)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
