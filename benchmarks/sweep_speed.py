#!/usr/bin/env python3
"""Sweep speed: the default matrix cold (empty export cache) and warm, with --jobs 1 and 2.

Targets (README): cold under 5 minutes and warm under 60 s on a 2-core CPU machine; --jobs 2 a real
speed-up over --jobs 1. Prints a Markdown table and writes it to benchmarks/results/sweep.md.

    python benchmarks/sweep_speed.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(out: Path, cache: Path, jobs: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "normonnx.cli", "sweep", "-o", str(out), "--cache-dir", str(cache),
                    "--jobs", str(jobs), "--json"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for jobs in (1, 2):
            cache = t / f"cache{jobs}"
            cold = run(t / f"cold{jobs}", cache, jobs)
            warm = run(t / f"warm{jobs}", cache, jobs)
            rows.append((jobs, cold, warm))
            print(f"jobs={jobs}: cold {cold:.1f}s, warm {warm:.1f}s", file=sys.stderr, flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    md = [f"Default matrix (`normonnx sweep`), {cpu}, {os.cpu_count()} cores, ORT CPU provider.", "",
          "| --jobs | cold (empty cache) | warm (cache filled) |", "|---:|---:|---:|"]
    md += [f"| {j} | {c:.1f} s | {w:.1f} s |" for j, c, w in rows]
    md += ["", f"--jobs 2 vs 1: cold {rows[0][1] / rows[1][1]:.2f}x, warm {rows[0][2] / rows[1][2]:.2f}x "
           "(each worker process pays torch's import, ~3 s, before its first case)."]
    text = "\n".join(md)
    out = Path(__file__).parent / "results" / "sweep.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
