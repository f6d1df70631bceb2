#!/usr/bin/env python3
"""The benchmark suite: standard shapes x float32/float16 x every variant x every provider here.

Prints a Markdown table and writes it (and the JSON records) to --out. Not a test: timings on shared
machines are noisy, so nothing here asserts a time; the README quotes the table with its machine.

    python benchmarks/run_bench.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from normonnx.engine.bench import BENCH_SHAPES, SMALL_SHAPES, bench_spec, benchmark
from normonnx.engine.runtimes import RunOptions, SessionConfig, get_runtime
from normonnx.core.timing import TimingOptions


def markdown(reports) -> str:
    m = reports[0].machine
    lines = [f"Machine: {m.get('cpu')} ({m.get('cores')} cores)" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
             + f"; torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}; threads {m.get('threads')}.", "",
             "| norm | shape | dtype | provider | form | p50 ms | GB/s | x copy [95% CI] | x torch [95% CI] | timing | valid |",
             "|---|---|---|---|---|---:|---:|---:|---:|---|---|"]
    for rep in reports:
        for r in rep.records:
            if r.error or r.p50_ms is None:  # an error, or a form this provider cannot run (said why)
                why = f"error: {r.error[:60]}" if r.error else f"not run: {(r.unsupported or 'not timed')[:60]}"
                lines.append(f"| {r.norm} | {r.shape} | {r.dtype} | {r.provider} | {r.form} | {why} ||||||")
                continue
            valid = {"pass": "pass", "fail": "FAIL"}.get(r.check or "", r.check or "")
            form = f"**{r.form}**" if r.fastest else r.form
            verdict = "IMPLAUSIBLE" if r.implausible else ("stable" if r.stable else "UNSTABLE")
            lines.append(f"| {r.norm} | {r.shape} | {r.dtype} | {r.provider} | {form} | {r.p50_ms:.4g} | {r.gbps:.1f} "
                         f"| {r.x_copy:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}] "
                         f"| {r.x_torch:.2f} [{r.x_torch_ci_low:.2f}, {r.x_torch_ci_high:.2f}] | {verdict} | {valid} |")
    trusted = [rep.trusted for rep in reports]
    lines += ["", "Bold: the fastest variant that passed validation on normal inputs with a stable, plausible timing. "
              "x copy / x torch: median over interleaved rounds of each round's own ratio to a copy of the same "
              "tensor / to PyTorch eager, with a bootstrap 95% interval.",
              f"{sum(ok for ok, _ in trusted)} of {len(trusted)} specs with every timing trusted."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results", help="folder for the .md and .json files")
    ap.add_argument("--name", default=None, help="file stem (default: the first provider, e.g. cpu)")
    ap.add_argument("--norms", default=",".join(BENCH_SHAPES))
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--runtimes", "--providers", dest="providers", default=None,
                    help="default: every ORT provider available here (--providers: its old name)")
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--regime", choices=["standard", "small"], default="standard",
                    help="standard shapes (tens of MB) or small ones (hundreds of KB: call overhead)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the batch dim (e.g. 16 on a GPU to reach ~100M-element tensors)")
    args = ap.parse_args()
    providers = args.providers.split(",") if args.providers else [p for p in ("cpu", "cuda")
                                                                  if get_runtime(p).unavailable() is None]
    reports = []
    for kind in args.norms.split(","):
        for dtype in args.dtypes.split(","):
            shape = list((SMALL_SHAPES if args.regime == "small" else BENCH_SHAPES)[kind])
            shape[0] = max(1, int(round(shape[0] * args.scale)))
            spec = bench_spec(kind, dtype, shape=tuple(shape))
            print(f"== {spec.id} on {','.join(providers)}", file=sys.stderr, flush=True)
            reports.append(benchmark(spec, run=RunOptions(providers, config=SessionConfig(threads=args.threads)),
                                     timing=TimingOptions(min_time=args.min_time, rounds=args.rounds)))
    md = markdown(reports)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or providers[-1]
    (out / f"{stem}.md").write_text(md + "\n")
    (out / f"{stem}.json").write_text(json.dumps([r.to_dict() for r in reports], indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
