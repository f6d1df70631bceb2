#!/usr/bin/env python3
"""Sweep speed: the README's first run (`normonnx sweep`, the quick matrix, then `normonnx report`) cold
(empty export cache) and warm, and the whole matrix (`--full`) cold, at the default --jobs.

Targets (issue 23): the first run within 2 minutes cold and 20 s warm on 2 idle cores. Prints a
Markdown table and writes it to benchmarks/results/sweep.md.

    python benchmarks/sweep_speed.py            # add --no-full to skip the whole matrix (~6 min)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "normonnx.presentation.cli"]


def timed(args: list[str], cache: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(CLI + args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "NORMONNX_CACHE": str(cache)})
    return time.perf_counter() - t0


def cases(out: Path) -> int:
    return sum(1 for line in (out / "results.jsonl").read_text().splitlines() if json.loads(line).get("type") == "case")


def main() -> int:
    full = "--no-full" not in sys.argv
    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for label, flags in [("quick (default)", []), *([("--full", ["--full"])] if full else [])]:
            cache = t / f"cache{len(rows)}"
            runs = []
            for temp in ("cold", "warm"):
                out = t / f"{len(rows)}-{temp}"
                sweep_s = timed(["sweep", "-o", str(out), *flags], cache)
                report_s = timed(["report", str(out), "-o", str(t / "r.html")], cache)
                runs.append((sweep_s, report_s))
                print(f"{label} {temp}: sweep {sweep_s:.1f} s, report {report_s:.1f} s", file=sys.stderr, flush=True)
                if label == "--full":
                    break  # the whole matrix warm is not a first run: one cold run says its cost
            rows.append((label, cases(out), runs))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    md = [f"`normonnx sweep` then `normonnx report`, default --jobs, ORT CPU provider; {cpu}, {os.cpu_count()} cores, "
          f"load {load:.2f} at the start.", "",
          "| matrix | cases | cold: sweep + report | warm: sweep + report |", "|---|---:|---:|---:|"]
    for label, n, runs in rows:
        cells = [f"{s:.1f} s + {r:.1f} s = **{s + r:.0f} s**" for s, r in runs] + ["-"] * (2 - len(runs))
        md.append(f"| {label} | {n} | {cells[0]} | {cells[1]} |")
    md += ["", "Cold: an empty export cache (every case exported by torch); warm: the cache filled by the cold run."]
    text = "\n".join(md)
    out = Path(__file__).parent / "results" / "sweep.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
