#!/usr/bin/env python3
"""What `scan --activations` costs on a model of a few thousand nodes: a LLaMA decoder (transformers'
definition, tiny hidden size, random init, nothing downloaded) exported by TorchScript, checked on
seeded inputs. Time and peak memory of the check, each in a fresh process, beside a plain ORT run of
the same model (the floor). Prints a table; asserts nothing (machines here are shared).

    python benchmarks/activations_cost.py --layers 24
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
mode, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if mode == "plain":
    import onnxruntime as ort
    from normonnx.features.scan.data import seeded_samples
    from normonnx.graph.graph import load_model
    feeds = seeded_samples(load_model(path, load_external_data=False), None)[0]
    ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)
    extra = {}
else:
    from normonnx.features.scan.activations import check_activations
    rep = check_activations(path, what_if=mode == "what-if")
    extra = {"layers": len(rep.layers), "passed": sum(lc.status == "pass" for lc in rep.layers),
             "captured_mb": rep.captured_bytes / 1e6, "runs": rep.runs}
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))
"""


def build(path: Path, layers: int, seq: int) -> int:
    import onnx
    import torch
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=1000, max_position_embeddings=256,
                      attn_implementation="eager")

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = LlamaModel(cfg)

        def forward(self, ids):
            return self.m(input_ids=ids).last_hidden_state

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap().eval(), (torch.randint(0, 1000, (1, seq)),), str(path), opset_version=17,
                          dynamo=False, input_names=["ids"])
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llama.onnx"
        nodes = build(path, args.layers, args.seq)
        rows = {}
        for mode in ("plain", "capture", "what-if"):
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True,
                                 check=True)
            rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"LLaMA decoder, {args.layers} layers, hidden 64, sequence {args.seq}: {nodes} nodes, "
          f"{rows['capture'].get('layers')} norms")
    print("| run | seconds | peak RSS MB | captured MB | model runs |")
    print("|---|---:|---:|---:|---:|")
    for mode, label in (("plain", "ORT run alone (floor)"), ("capture", "--activations, no float16 what-if"),
                        ("what-if", "--activations with the float16 what-if")):
        r = rows[mode]
        print(f"| {label} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r.get('captured_mb', 0):.2f} | "
              f"{r.get('runs', 1)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
