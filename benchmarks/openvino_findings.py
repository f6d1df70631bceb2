"""OpenVINO beside ONNX Runtime CPU: every norm x graph form x float32/float16 at opset 23 (dynamo), every
input suite, on `cpu` (ORT), `openvino` (f32 precision pinned) and `openvino-default` (this machine's
default precision), side by side. Prints the Markdown table in benchmarks/results/openvino-cpu.md.

    python benchmarks/openvino_findings.py [--out FOLDER]     # needs: pip install "normonnx[openvino]"

The sweep is resumable (FOLDER, default openvino-sweep/); the machine's CPU flags that decide OpenVINO's
default precision are printed with the table.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

RUNTIMES = ("cpu", "openvino", "openvino-default")


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    want = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")
    return ", ".join(f"{f}: {'yes' if f in flags else 'no'}" for f in want)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="openvino-sweep")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "normonnx.cli", "sweep", "--out", args.out, "--opsets", "23", "--exporters", "dynamo",
           "--dtypes", "float32,float16", "--runtimes", ",".join(RUNTIMES), "--jobs", "2", "--resume"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    cells: dict = defaultdict(dict)
    for line in Path(args.out, "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("type") != "case" or r["status"] == "unsupported":
            continue
        failing = sorted(n for n, s in (r.get("inputs") or {}).items() if s.get("status") == "fail")
        worst = max((s.get("max_abs_err") or 0.0 for s in (r.get("inputs") or {}).values()
                     if s.get("status") == "fail"), default=None)
        cell = r["status"] if not failing else f"fail: {', '.join(failing)} ({worst:.2g})"
        cells[(r["norm"], r["variant"], r["dtype"])][r["provider"]] = cell
    import openvino

    meta = json.loads(Path(args.out, "meta.json").read_text())
    print(f"Machine: {platform.processor() or platform.machine()}, {meta['machine'].get('cpu')}, "
          f"{meta['machine'].get('cores')} cores; CPU flags: {cpu_flags()}. OpenVINO {openvino.__version__}, "
          f"onnxruntime {meta['versions'].get('onnxruntime')}, torch {meta['versions'].get('torch')}. Opset 23, "
          "dynamo exporter, every input suite; a failing cell lists the suites that fail (worst error).\n")
    print("| norm | form | dtype | " + " | ".join(RUNTIMES) + " |")
    print("|---|---|---|" + "---|" * len(RUNTIMES))
    for (norm, variant, dtype), row in sorted(cells.items()):
        print(f"| {norm} | {variant} | {dtype} | " + " | ".join(row.get(rt, "-") for rt in RUNTIMES) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
