#!/usr/bin/env python3
"""The prepared GPU run (issue 14): every norm x variant x float32/float16 validated on ORT's CUDA
provider (and torch CUDA), then the benchmark suite on CUDA. One script, so a lent GPU machine's short
time goes to measuring, not typing. Writes gpu-validate.json/.md and the bench tables to --out.

    python benchmarks/gpu_check.py --out benchmarks/results        # on a machine with onnxruntime-gpu
    pytest tests -q -k cuda                                          # the CUDA test subset (run beside it)

Without a CUDA provider it says so and exits 3 (nothing measured), like `normonnx validate --runtimes cuda`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from normonnx import NormSpec
from normonnx.runtimes import get_runtime
from normonnx.tables import ALL_KINDS
from normonnx.validate import validate
from normonnx.variants import usable_variants

SPECS = {"bn": {}, "ln": {}, "in": {"affine": True}, "gn": {"groups": 4}, "rms": {}}


def validate_all(out: Path, opset: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in ALL_KINDS:
        for dtype in ("float32", "float16"):
            spec = NormSpec.make(kind, dtype=dtype, **SPECS[kind])
            for variant in usable_variants(spec, opset):
                t0 = time.perf_counter()
                try:
                    rep = validate(spec, variant=variant, opset=opset, runtimes=["cuda", "torch-cuda", "cpu"],
                                   skip_missing=True)
                except Exception as e:  # recorded; one case never stops the run
                    rows.append({"spec": spec.id, "variant": variant, "error": f"{type(e).__name__}: {e}"[:300]})
                    continue
                for runtime in ("cuda", "torch-cuda", "cpu"):
                    res = [r for r in rep.results if r.runtime == runtime]
                    failed = sorted({r.inputs.split(":")[-1] for r in res if r.status == "fail"})
                    rows.append({"spec": spec.id, "variant": variant, "runtime": runtime,
                                 "passed": sum(r.status == "pass" for r in res), "failed": failed,
                                 "skipped": sum(r.status == "skipped" for r in res),
                                 "worst": max((r.max_abs_err or 0.0 for r in res), default=None),
                                 "placement": rep.runtimes.get(runtime, {}).get("placement"),
                                 "seconds": round(time.perf_counter() - t0, 1)})
                print(f"  {spec.id} {variant}: done", file=sys.stderr, flush=True)
    (out / "gpu-validate.json").write_text(json.dumps(rows, indent=1))
    lines = ["| spec | variant | runtime | passed | failed samples | worst abs err | nodes on |", "|---|---|---|---:|---|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['spec']} | {r['variant']} | - | - | error: {r['error'][:80]} | | |")
            continue
        worst = f"{r['worst']:.2g}" if r["worst"] is not None else "-"
        lines.append(f"| {r['spec']} | {r['variant']} | {r['runtime']} | {r['passed']} | {', '.join(r['failed']) or '-'} "
                     f"| {worst} | {r['placement'] or '-'} |")
    (out / "gpu-validate.md").write_text("\n".join(lines) + "\n")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--opset", type=int, default=21)
    ap.add_argument("--no-bench", action="store_true")
    args = ap.parse_args()
    why = get_runtime("cuda").unavailable()
    if why:
        print(f"no CUDA here: {why}", file=sys.stderr)
        return 3
    out = Path(args.out)
    validate_all(out, args.opset)
    if not args.no_bench:
        for dtype in ("float32", "float16"):
            subprocess.run([sys.executable, str(Path(__file__).with_name("run_bench.py")), "--out", str(out),
                            "--runtimes", "cuda", "--dtypes", dtype, "--name", f"cuda-{dtype}", "--rounds", "9",
                            "--min-time", "0.5"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
