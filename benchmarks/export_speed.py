#!/usr/bin/env python3
"""Dynamo export time with and without the per-process reuse of torchlib signatures
(exporters._reuse_op_signatures), side by side in one process, interleaved: each round exports the same
GroupNorm once each way, in alternating order. Prints a Markdown table (median and spread per way, and
the median of the per-round ratios).

    python benchmarks/export_speed.py [rounds]     # default 12
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    from torch.onnx._internal.exporter import _schemas

    from normonnx.core.spec import NormSpec
    from normonnx.exporting.export import export_result

    spec = NormSpec.make("gn", shape="2x8x6x6", groups=4)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.onnx"
        export_result(spec, "decomposed", 21, "dynamo", output=out)  # the first export pays torch's one-time setup
        reused = _schemas.op_signature_from_function
        ways = {"reused": reused, "inferred per export": reused.original}
        times: dict[str, list[float]] = {w: [] for w in ways}
        load = os.getloadavg()[0]
        for r in range(rounds):
            for way in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                _schemas.op_signature_from_function = ways[way]
                t0 = time.perf_counter()
                export_result(spec, "decomposed", 21, "dynamo", output=out)
                times[way].append(time.perf_counter() - t0)
        _schemas.op_signature_from_function = reused
    ratios = sorted(b / a for a, b in zip(times["reused"], times["inferred per export"], strict=True))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"dynamo export of {spec.id} (decomposed, opset 21), {rounds} interleaved rounds; {cpu}, "
          f"{os.cpu_count()} cores, load {load:.2f} at the start\n")
    print("| signatures | median | min - max |\n|---|---:|---:|")
    for way, ts in times.items():
        print(f"| {way} | {statistics.median(ts):.3f} s | {min(ts):.3f} - {max(ts):.3f} s |")
    print(f"\nper-round ratio (inferred / reused): median {statistics.median(ratios):.2f}, "
          f"range {ratios[0]:.2f} - {ratios[-1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
