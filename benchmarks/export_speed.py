#!/usr/bin/env python3
"""Dynamo export time with and without normonnx's per-process reuse inside torch's exporter: the torchlib
signatures (exporters._reuse_op_signatures) and the walk over torch's CompositeImplicitAutograd ops
(exporters._reuse_cia_materialization), side by side in one process, interleaved: each round exports the same
GroupNorm once each way, in alternating order. Prints a Markdown table (median and spread per way, and the
median of the per-round ratios).

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
    from torch._export import utils
    from torch.onnx._internal.exporter import _schemas

    from normonnx.core.spec import NormSpec
    from normonnx.exporting.export import export_result

    spec = NormSpec.make("gn", shape="2x8x6x6", groups=4)
    # (module, attribute) that normonnx replaces with a per-process reuse; `.original` is torch's own
    patched = [(_schemas, "op_signature_from_function"), (utils, "_materialize_cpp_cia_ops")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.onnx"
        export_result(spec, "decomposed", 21, "dynamo", output=out)  # the first export pays torch's one-time setup
        reused = [getattr(m, a) for m, a in patched]
        ways = {"reused": reused, "rebuilt per export": [f.original for f in reused]}
        times: dict[str, list[float]] = {w: [] for w in ways}
        load = os.getloadavg()[0]
        for r in range(rounds):
            for way in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                for (m, a), f in zip(patched, ways[way], strict=True):
                    setattr(m, a, f)
                t0 = time.perf_counter()
                export_result(spec, "decomposed", 21, "dynamo", output=out)
                times[way].append(time.perf_counter() - t0)
        for (m, a), f in zip(patched, reused, strict=True):
            setattr(m, a, f)
    ratios = sorted(b / a for a, b in zip(times["reused"], times["rebuilt per export"], strict=True))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"dynamo export of {spec.id} (decomposed, opset 21), {rounds} interleaved rounds; {cpu}, "
          f"{os.cpu_count()} cores, load {load:.2f} at the start\n")
    print("| signatures, CIA op walk | median | min - max |\n|---|---:|---:|")
    for way, ts in times.items():
        print(f"| {way} | {statistics.median(ts):.3f} s | {min(ts):.3f} - {max(ts):.3f} s |")
    print(f"\nper-round ratio (rebuilt / reused): median {statistics.median(ratios):.2f}, "
          f"range {ratios[0]:.2f} - {ratios[-1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
