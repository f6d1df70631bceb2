#!/usr/bin/env python3
"""Scan cost against model size: GPT-2-style decoders (hidden 256, 4 heads; transformers' GPT2Model,
random init) of 1 to 96 layers, exported by the TorchScript exporter at opset 14 (LayerNorm as the
decomposed ReduceMean/Sub/Pow chain). Each scan runs in its own process; prints seconds, µs per
node and peak memory (the process's max RSS, and in brackets what it was after imports, before the
scan), best of 3. Needs
`pip install transformers`.

    python benchmarks/scan_scaling.py [--layers 1,12,48,96] [--validate] [--no-fusion]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

PROBE = r"""
import json, sys, time
import normonnx.features.scan as S

def hwm_kb():  # this process's peak RSS: VmHWM starts afresh at exec (ru_maxrss would carry the parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

before = hwm_kb()
t0 = time.perf_counter()
r = S.scan(sys.argv[1], validate=sys.argv[2] == "1", inputs=["normal"], check_fusion=sys.argv[3] == "1")
dt = time.perf_counter() - t0
after = hwm_kb()
print(json.dumps({"s": dt, "norms": len(r.norms), "peak_mb": after / 1024, "base_mb": before / 1024,
                  "validated": sum(v.status == "pass" for v in r.validations.values())}))
"""


def export(layers: int, path: Path) -> int:
    import onnx
    import torch
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(n_layer=layers, n_embd=256, n_head=4, vocab_size=1000, n_positions=64)
    model = GPT2Model(cfg).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask).last_hidden_state

    ids, mask = torch.randint(0, 1000, (1, 32)), torch.ones(1, 32, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap(model), (ids, mask), str(path), opset_version=14, dynamo=False,
                          input_names=["input_ids", "attention_mask"])
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="1,12,48,96")
    ap.add_argument("--validate", action="store_true", help="scan --validate (normal inputs only)")
    ap.add_argument("--no-fusion", action="store_true", help="scan --no-fusion (without ORT's whole-model pass)")
    args = ap.parse_args()
    rows = ["| layers | nodes | norms | scan s | µs per node | peak RSS MB (before scan) |"
            + (" validated |" if args.validate else ""),
            "|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.validate else "")]
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (int(v) for v in args.layers.split(",")):
            path = Path(tmp) / f"gpt2-{layers}.onnx"
            nodes = export(layers, path)
            argv = [str(path), "1" if args.validate else "0", "0" if args.no_fusion else "1"]
            runs = [json.loads(subprocess.run([sys.executable, "-c", PROBE, *argv],
                                              capture_output=True, text=True, check=True).stdout.splitlines()[-1])
                    for _ in range(1 if args.validate else 3)]
            best = min(runs, key=lambda r: r["s"])
            rows.append(f"| {layers} | {nodes} | {best['norms']} | {best['s']:.2f} | {best['s'] / nodes * 1e6:.0f} | "
                        f"{max(r['peak_mb'] for r in runs):.0f} ({best['base_mb']:.0f}) |"
                        + (f" {best['validated']} |" if args.validate else ""))
            print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
