#!/usr/bin/env python3
"""What scan, scan --validate, fix and scan --activations cost on a model of real size: wall time and
peak memory of each command, each in a fresh process, beside a plain ONNX Runtime CPU session + one run
of the same model (the floor), at the sizes given.

The model (tests/corpus.py: external_decoder) is generated, never committed: a GPT-2-shaped decoder,
14·h² float32 weights a layer in one external-data file (--storage inline: every weight inside the .onnx, as
torch writes a model under 2 GB), its LayerNorms decomposed as TorchScript writes
them at opset 14, the last one with an E[x²]−E[x]² variance (so fix, given --opset 17, rewrites layers and
compares and times the whole model). Weights are streamed to disk as they are drawn. fix runs as
`cd FOLDER && normonnx fix decoder.onnx -o fixed/decoder.onnx --opset 17`, the way people type it.
Prints a table; asserts nothing (machines here are shared).

    python benchmarks/large_model.py --hidden 2048 --layers 4,8     # 1.0 GB and 1.95 GB of weights
    python benchmarks/large_model.py --layers 4,8 --vocab 13500 --storage inline,external   # 1.99 GB at 8
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# built in a child: a process's peak RSS starts at its parent's (fork, then exec keeps the high-water mark),
# so this process stays small, without torch or the weights
BUILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from corpus import external_decoder
print(external_decoder(__import__("pathlib").Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
                       inline=sys.argv[6] == "inline"))
"""
TESTS = str(Path(__file__).resolve().parents[1] / "tests")  # the generated models live in tests/corpus.py
PLAIN = r"""
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.log_severity_level = 3
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
s.run(None, {i.name: np.random.default_rng(0).integers(0, int(sys.argv[2]), size=i.shape, dtype=np.int64)})
"""


SAME = r"""
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.log_severity_level = 3
ids = np.random.default_rng(7).integers(0, int(sys.argv[3]), size=(1, 128), dtype=np.int64)
a = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
b = ort.InferenceSession(sys.argv[2], so, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
print(float(np.abs(a.astype(np.float64) - b).max()))
"""


def digest(*paths: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]


def measure(argv: list[str], cwd: Path) -> dict:
    """Wall seconds, peak RSS (MB, the largest of the process and its children) and exit code of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": time.perf_counter() - t0, "peak_mb": usage.ru_maxrss / 1024, "exit": proc.returncode,
            "tail": out.decode(errors="replace").strip().splitlines()[-1:] if proc.returncode not in (0, 1) else []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", default="4,8", help="comma list: one model per entry")
    ap.add_argument("--vocab", type=int, default=8192, help="rows of the embedding (13500 with --layers 8: 1.99 GB)")
    ap.add_argument("--storage", default="external", help="comma list of external, inline: each model stored so")
    ap.add_argument("--commands", default="plain,scan,validate,fix,activations")
    ap.add_argument("--keep", default=None, help="build the models in this folder and keep them")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command: the median time, its range, the "
                    "largest peak")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "normonnx.presentation.cli"]
    commands = {
        "plain": lambda m: [sys.executable, "-c", PLAIN, m.name, str(args.vocab)],
        "scan": lambda m: [*exe, "scan", m.name],
        "validate": lambda m: [*exe, "scan", m.name, "--validate"],
        "fix": lambda m: [*exe, "fix", m.name, "-o", "fixed/" + m.name, "--opset", "17"],
        "activations": lambda m: [*exe, "scan", m.name, "--activations"],
    }
    wanted = [c for c in args.commands.split(",") if c]
    load0 = " ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory(prefix="normonnx-large-") as tmp:
        root = Path(args.keep or tmp)
        for layers, storage in [(int(x), st) for x in args.layers.split(",") for st in args.storage.split(",")]:
            folder = root / f"h{args.hidden}-l{layers}-{storage}"
            (folder / "fixed").mkdir(parents=True, exist_ok=True)
            model = folder / "decoder.onnx"
            t0 = time.perf_counter()
            size = int(subprocess.run([sys.executable, "-c", BUILD, TESTS, str(model), str(args.hidden), str(layers),
                                       str(args.vocab), storage],
                                      check=True, capture_output=True, text=True).stdout.split()[-1])
            print(f"built {model} ({size / 1e9:.2f} GB of weights, {storage}) in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
            inputs = (model,) if storage == "inline" else (model, model.with_name(model.name + ".data"))
            before = digest(*inputs)
            runs: dict[str, list[dict]] = {name: [] for name in wanted}
            for _ in range(args.repeat):  # the commands in turn, then again: load that comes and goes hits all
                for name in wanted:
                    r = measure(commands[name](model), folder)
                    runs[name].append(r)
                    print(f"  {name:12s} {r['seconds']:7.1f} s  {r['peak_mb']:8.0f} MB  exit {r['exit']} "
                          f"{' '.join(r['tail'])}", file=sys.stderr, flush=True)
            for name in wanted:
                times = sorted(x["seconds"] for x in runs[name])
                r = dict(runs[name][-1], seconds=times[len(times) // 2], range=(times[0], times[-1]),
                         peak_mb=max(x["peak_mb"] for x in runs[name]), command=name, layers=layers,
                         weights_gb=size / 1e9, storage=storage)
                if "plain" in runs:  # each round's own ratio: the command and the plain run of the same round
                    r["ratios"] = sorted(x["seconds"] / p["seconds"] for x, p in zip(runs[name], runs["plain"], strict=True))
                rows.append(r)
                if name == "fix" and (folder / "fixed" / model.name).exists():
                    # not fix's word for it: the outputs of both, in a fresh process, and the input's hash
                    diff = subprocess.run([sys.executable, "-c", SAME, str(model), str(folder / "fixed" / model.name),
                                           str(args.vocab)], capture_output=True, text=True).stdout.strip()
                    r["check"] = (f"fixed vs original on seeded ids: max |diff| {diff}; input sha256 "
                                  f"{before} before, {digest(*inputs)} after")
            if not args.keep:
                for p in folder.rglob("*"):
                    if p.is_file():
                        p.unlink()
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"load average before: {load0}; after: {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} "
          f"{os.getloadavg()[2]:.1f} (1, 5, 15 min)")
    print(f"{'weights':>8} {'storage':<8} {'command':<24} {'wall s [range]':>18} {'peak MB':>8} {'peak/weights':>12} "
          f"{'time/plain [range]':>20} exit")
    labels = {"plain": "plain ORT session + run", "scan": "scan", "validate": "scan --validate",
              "fix": "fix -o fixed/…", "activations": "scan --activations"}
    for r in rows:
        rs = r.get("ratios")
        ratio = f"{rs[len(rs) // 2]:.1f}x [{rs[0]:.1f}-{rs[-1]:.1f}]" if rs else "-"
        wall = f"{r['seconds']:.1f} [{r['range'][0]:.1f}-{r['range'][1]:.1f}]"
        print(f"{r['weights_gb']:7.2f}G {r['storage']:<8} {labels[r['command']]:<24} {wall:>18} {r['peak_mb']:8.0f} "
              f"{r['peak_mb'] / (r['weights_gb'] * 1e3):11.2f}x {ratio:>20} {r['exit']}")
    print(f"median of {args.repeat} runs each, the commands in turn; ratio: each round's own, median [range]")
    for r in rows:
        if r.get("check"):
            print(f"{r['weights_gb']:.2f} GB {r['storage']}: {r['check']}")


if __name__ == "__main__":
    main()
