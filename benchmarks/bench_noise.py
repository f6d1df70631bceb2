#!/usr/bin/env python3
"""Timings on an idle and on a busy machine: `normonnx bench` run twice on the same spec, once alone
and once with a CPU hog (a busy loop in another process, on one core) beside it. Prints both tables
and checks the promise of the timing method: on the loaded run every row is either within the idle
run's 95% interval or marked unstable, and no row below 0.9x copy is left unflagged.

    python benchmarks/bench_noise.py [--norm ln] [--rounds 15]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

from normonnx.engine.bench import bench_spec, benchmark
from normonnx.core.timing import TimingOptions
from normonnx.presentation.render import bench_text


def hog(stop):
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def run(norm: str, rounds: int):
    return benchmark(bench_spec(norm), timing=TimingOptions(rounds=rounds, min_time=1.0))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--norm", default="ln")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    idle = run(args.norm, args.rounds)
    stop = mp.Event()
    p = mp.Process(target=hog, args=(stop,), daemon=True)
    p.start()
    time.sleep(1.0)
    try:
        busy = run(args.norm, args.rounds)
    finally:
        stop.set()
        p.join(5)
    print("## idle\n\n" + bench_text(idle) + "\n\n## with a CPU hog on one core\n\n" + bench_text(busy))
    base = {r.form: r for r in idle.records}
    broken = []
    for r in busy.records:
        if r.error or r.form == "copy":
            continue
        i = base[r.form]
        inside = i.ci_low <= r.x_copy <= i.ci_high
        if not inside and r.stable and not r.implausible:
            broken.append(f"{r.form}: {r.x_copy:.2f}x outside the idle interval [{i.ci_low:.2f}, {i.ci_high:.2f}] "
                          "yet marked stable")
        if r.x_copy < 0.9 and not r.implausible:
            broken.append(f"{r.form}: {r.x_copy:.2f}x copy not flagged")
    print("\n" + ("promise kept: every loaded row is within the idle interval or flagged" if not broken else
                  "PROMISE BROKEN:\n" + "\n".join(broken)))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
