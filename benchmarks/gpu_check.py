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
from normonnx.engine.runtimes import get_runtime
from normonnx.core.tables import ALL_KINDS
from normonnx.exporting.export import ExportOptions
from normonnx.engine.runtimes import RunOptions
from normonnx.engine.validate import validate
from normonnx.exporting.variants import usable_variants

SPECS = {"bn": {}, "ln": {}, "in": {"affine": True}, "gn": {"groups": 4}, "rms": {}}


def validate_all(out: Path, opset: int, runtimes: list[str], kinds=ALL_KINDS, variants=None,
                 name: str = "gpu-validate") -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in kinds:
        for dtype in ("float32", "float16"):
            spec = NormSpec.make(kind, dtype=dtype, **SPECS[kind])
            for variant in usable_variants(spec, opset):
                if variants and variant not in variants:
                    continue
                t0 = time.perf_counter()
                try:
                    rep = validate(spec, export=ExportOptions(variant=variant, opset=opset),
                                   run=RunOptions(runtimes=runtimes, skip_missing=True))
                except Exception as e:  # recorded; one case never stops the run
                    rows.append({"spec": spec.id, "variant": variant, "error": f"{type(e).__name__}: {e}"[:300]})
                    continue
                for runtime in runtimes:
                    res = [r for r in rep.results if r.runtime == runtime]
                    failed = sorted({r.inputs.split(":")[-1] for r in res if r.status == "fail"})
                    rows.append({"spec": spec.id, "variant": variant, "runtime": runtime,
                                 "passed": sum(r.status == "pass" for r in res), "failed": failed,
                                 "skipped": sum(r.status == "skipped" for r in res),
                                 "worst": max((r.max_abs_err or 0.0 for r in res), default=None),
                                 "placement": rep.runtimes.get(runtime, {}).get("placement"),
                                 "seconds": round(time.perf_counter() - t0, 1)})
                print(f"  {spec.id} {variant}: done", file=sys.stderr, flush=True)
                (out / f"{name}.json").write_text(json.dumps(rows, indent=1))  # kept if cut short
    lines = ["| spec | variant | runtime | passed | failed samples | worst abs err | nodes on |", "|---|---|---|---:|---|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['spec']} | {r['variant']} | - | - | error: {r['error'][:80]} | | |")
            continue
        worst = f"{r['worst']:.2g}" if r["worst"] is not None else "-"
        lines.append(f"| {r['spec']} | {r['variant']} | {r['runtime']} | {r['passed']} | {', '.join(r['failed']) or '-'} "
                     f"| {worst} | {r['placement'] or '-'} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    return rows


def models_on(out: Path, runtime: str) -> list[dict]:
    """Real exports and ORT's own contrib GroupNorm through the commands a user runs: scan --validate,
    fix, and scan of the fixed model, all on `runtime` (each a fresh process, exit codes recorded)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import corpus  # the test corpus: models generated in code
    import onnx

    folder = out / "models"
    folder.mkdir(parents=True, exist_ok=True)
    made = {"gn-silu-op21-dynamo": lambda p: corpus.gn_silu_block(p, 21, "dynamo"),
            "gn-silu-op17-torchscript": lambda p: corpus.gn_silu_block(p, 17, "torchscript"),
            "encoder-fp16-op14-torchscript": lambda p: corpus.export_half(corpus.EncoderLayer(), (2, 5, 32), p, 14,
                                                                          "torchscript"),
            "contrib-groupnorm-nhwc": lambda p: onnx.save(corpus.contrib_groupnorm_nhwc_silu(), str(p)),
            "contrib-groupnorm-nchw": lambda p: onnx.save(corpus.contrib_groupnorm(), str(p)),
            "contrib-layernorms": lambda p: onnx.save(corpus.contrib_ops(), str(p))}
    rows = []
    for name, make in made.items():
        src, dst = folder / f"{name}.onnx", folder / f"{name}-fixed.onnx"
        make(src)
        for step, argv in (("scan", ["scan", str(src), "--validate"]), ("fix", ["fix", str(src), "-o", str(dst)]),
                           ("scan-fixed", ["scan", str(dst), "--validate"])):
            if step == "scan-fixed" and not dst.exists():
                continue
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "normonnx.presentation.cli", *argv, "--runtimes", runtime],
                                  capture_output=True, text=True)
            rows.append({"model": name, "step": step, "runtime": runtime, "exit": proc.returncode,
                         "seconds": round(time.perf_counter() - t0, 1), "stdout": proc.stdout[-3000:],
                         "stderr": proc.stderr[-1500:]})
            print(f"  {name} {step} on {runtime}: exit {proc.returncode}", file=sys.stderr, flush=True)
            (out / f"gpu-models-{runtime}.json").write_text(json.dumps(rows, indent=1))  # kept if cut short
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--opset", type=int, default=21)
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--only", choices=["validate", "models", "bench"], default=None, help="one step alone")
    ap.add_argument("--scale", default="4", help="run_bench.py --scale: the batch multiplier on the GPU")
    ap.add_argument("--runtimes", default="cuda,torch-cuda,cpu",
                    help="what to validate on; cuda must be among them unless --dry-run (a CPU rehearsal)")
    ap.add_argument("--dry-run", action="store_true", help="rehearse on a machine without CUDA (no cuda needed)")
    ap.add_argument("--kinds", default=",".join(ALL_KINDS), help="validate: these norms")
    ap.add_argument("--variants", default=None, help="validate: only these variants (default: every usable one)")
    ap.add_argument("--name", default="gpu-validate", help="validate: the file stem of its .json/.md")
    ap.add_argument("--bench-cases", default="ln:float32,gn:float32,in:float32,bn:float32,rms:float32,"
                                                "ln:float16,gn:float16,rms:float16,in:float16,bn:float16",
                    help="bench: norm:dtype pairs, in order, each its own run (kept if a later one is cut short)")
    ap.add_argument("--min-time", default="0.5", help="bench: run_bench.py --min-time")
    args = ap.parse_args()
    why = get_runtime("cuda").unavailable()
    if why and not args.dry_run:
        print(f"no CUDA here: {why}", file=sys.stderr)
        return 3
    out = Path(args.out)
    if args.only in (None, "validate"):
        validate_all(out, args.opset, args.runtimes.split(","), args.kinds.split(","),
                     args.variants.split(",") if args.variants else None, args.name)
    if args.only in (None, "models"):
        models_on(out, "cpu" if args.dry_run else "cuda")
    if args.only in (None, "bench") and not args.no_bench:
        for case in args.bench_cases.split(","):
            kind, dtype = case.split(":")
            subprocess.run([sys.executable, str(Path(__file__).with_name("run_bench.py")), "--out", str(out),
                            "--runtimes", "cpu" if args.dry_run else "cuda", "--norms", kind, "--dtypes", dtype,
                            "--name", f"bench-{kind}-{dtype}", "--rounds", "9", "--min-time", args.min_time,
                            "--scale", args.scale], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
