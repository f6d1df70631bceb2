"""Findings per runtime: every norm x graph form x float32/float16 at opset 23 (dynamo), every input suite, on
each runtime installed here (ORT cpu/cuda, reference, openvino, openvino-default, iree, tvm, mnn, ncnn: what
`--runtimes all` finds). ncnn is also run at opset 17 through the TorchScript exporter, where ReduceMean
still carries its axes as an attribute (pnnx drops opset 18's axes input).

    python benchmarks/runtime_findings.py [--runtimes all|NAMES] [--out FOLDER] [--results DIR] [--no-run]
    # needs the runtimes' extras: pip install "normonnx[runtimes]" && pip install --no-deps pnnx

Writes DIR/findings-<runtime>.md (default DIR: benchmarks/results) for each runtime, and DIR/findings.md, the
summary of every runtime in this run (one line each, linking the tables). The sweeps are resumable (FOLDER,
default runtime-findings/, one sub-folder per opset/exporter); --no-run only rewrites the tables from them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import platform
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Config:
    opset: int
    exporter: str
    batch: int | None = None  # None: the default shapes (batch 2)

    @property
    def name(self) -> str:
        return f"op{self.opset}-{self.exporter}" + (f"-batch{self.batch}" if self.batch else "")

    @property
    def short(self) -> str:
        return f"op{self.opset}" + ("" if self.exporter == "dynamo" else " TS") + (f" N={self.batch}" if self.batch else "")


MAIN = Config(23, "dynamo")
# the runtimes checked otherwise than at MAIN: their configurations, in the order the summary prefers them, and why
PLANS = {"ncnn": ((Config(23, "dynamo", 1), Config(17, "torchscript", 1), Config(17, "torchscript")),
                  "ncnn has no batch axis: pnnx keeps a batch > 1 as ncnn's leading axis, which its GroupNorm, "
                  "InstanceNorm and BatchNorm layers then read as channels (normonnx says so: not checked), so ncnn "
                  "is checked at batch 1 (`N=1`: 1x8x16x16, 1x16x64), as an application feeds it; and pnnx drops "
                  "the axes of opset-18 ReduceMean (an input from 18), so at opset 17 too (`TS`: TorchScript, as "
                  "torch's dynamo exporter writes no opset below 18), where ReduceMean has its axes as an "
                  "attribute, at batch 1 and at the default batch of 2 (where pnnx numbers a written-out norm's "
                  "axes right)")}
# what each runtime converts through (the table's header line)
THROUGH = {
    "cpu": "ONNX Runtime's CPUExecutionProvider, graph optimizations on (ORT's default)",
    "cuda": "ONNX Runtime's CUDAExecutionProvider",
    "reference": "onnx.reference.ReferenceEvaluator, the ONNX spec's Python implementation (float16 computed in float16)",
    "openvino": "OpenVINO's CPU plugin reading the ONNX file, f32 inference precision pinned",
    "openvino-default": "OpenVINO's CPU plugin with the machine's default precision (bf16 on CPUs with AVX512-BF16)",
    "iree": "IREE's ONNX importer to MLIR, iree-compile for llvm-cpu (this CPU), the local-task driver",
    "tvm": "Apache TVM's Relax ONNX frontend, tvm.compile for the generic LLVM CPU target, the Relax VM",
    "mnn": "MNN's converter (_tools.mnnconvert) to .mnn, MNN's CPU backend, PrecisionMode.High",
    "ncnn": "pnnx to .ncnn.param/.bin (fp16=0), ncnn's CPU layers with fp16/bf16 storage and arithmetic off, "
            "every layer pnnx can convert wrongly audited before the run",
}


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    want = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")
    return ", ".join(f"{f}: {'yes' if f in flags else 'no'}" for f in want)


def sweep(folder: Path, config: Config, runtimes: list[str], jobs: int) -> None:
    cmd = [sys.executable, "-m", "normonnx.presentation.cli", "sweep", "--out", str(folder),
           "--opsets", str(config.opset),
           "--exporters", config.exporter, "--dtypes", ",".join(DTYPES), "--runtimes", ",".join(runtimes),
           "--jobs", str(jobs), "--resume"]
    print(f"sweep {config.name} on {', '.join(runtimes)} -> {folder}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def batch_sweep(folder: Path, config: Config, runtime: str) -> None:
    """sweep's own cases at config.batch, one at a time, resumable (the sweep command takes no shape)."""
    from normonnx.exporting.cache import default_cache_dir
    from normonnx.core.results import ResultsWriter
    from normonnx.core.spec import DEFAULT_SHAPES, NormSpec
    from normonnx.features.sweep import Case, Matrix, error_record, run_case

    class Batched(Case):
        @property
        def spec(self) -> NormSpec:
            return NormSpec.make(self.norm, dtype=self.dtype, shape=(config.batch, *DEFAULT_SHAPES[self.norm][1:]))

    folder.mkdir(parents=True, exist_ok=True)
    done = {r["case_id"] for r in records(folder, every=True)}
    matrix = Matrix(opsets=(config.opset,), exporters=(config.exporter,), dtypes=DTYPES, providers=(runtime,))
    todo = [c for c in (Batched(**{f: getattr(c, f) for f in c.__dataclass_fields__}) for c in matrix.cases())
            if c.id not in done]
    print(f"sweep {config.name} on {runtime} -> {folder}: {len(todo)} cases", file=sys.stderr, flush=True)
    writer = ResultsWriter(folder / "results.jsonl")
    try:
        for i, c in enumerate(todo, 1):
            try:
                rec = run_case(c, None, str(default_cache_dir()))
            except Exception as e:  # recorded, as sweep does
                rec = error_record(c, e)
            writer.write(rec)
            print(f"{i}/{len(todo)} {rec['status']:<11} {c.id}", file=sys.stderr, flush=True)
    finally:
        writer.close()


def records(folder: Path, every: bool = False) -> list[dict]:
    from normonnx.core.results import read_results

    out, _bad = read_results(folder / "results.jsonl")
    return out if every else [r for r in out if r.get("type") == "case"]


def _suite_reason(reason: str | None) -> str:
    """A case's reason without its leading 'suite:sample: ' (the same cause is named once for all suites)."""
    text = reason or "no reason recorded"
    head, sep, rest = text.partition(": ")
    return rest if sep and ":" in head and " " not in head else text


def suites(samples) -> str:
    """Failing samples as suite families, compactly: offset-1e2, offset-1e3, offset-1e4 -> 'offset >=1e2'."""
    fams: dict[str, list[str]] = {}
    for n in sorted(samples):
        parts = n.split("-")
        if parts[0] == "offset" and len(parts) > 1:
            fam = "-".join(["offset", *parts[2:]])
            fams.setdefault(fam, []).append(parts[1])
        else:
            fams.setdefault(n, [])
    out = []
    for fam, levels in fams.items():
        if not levels:
            out.append(fam)
        elif levels == [lv for lv in ("1e2", "1e3", "1e4") if lv >= levels[0]]:
            out.append(f"{fam} ≥{levels[0]}")
        else:
            out.append(f"{fam} {','.join(levels)}")
    return ", ".join(out)


def _note(text: str) -> str:
    """A reason with the converted layer's own name made generic (mean_0, mean_2: one note)."""
    return re.sub(r"\b(Reduction|GroupNorm|InstanceNorm|BatchNorm) ([A-Za-z]+)_\d+\b", r"\1 \2_N", text)


def _g(x: float) -> str:
    return f"{x:.2g}" if x >= 1e-3 or x == 0 else f"{x:.1e}"


@dataclass
class Cell:
    status: str  # pass, fail, not checked, unsupported, mismatch, internal error
    text: str  # the table cell
    failing: tuple[str, ...] = ()
    worst: float | None = None
    nan: bool = False
    reason: str | None = None


def cell(r: dict, notes: "Notes") -> Cell:
    st = r["status"]
    samples = r.get("inputs") or {}
    if st == "pass":
        return Cell(st, "pass", worst=r.get("max_abs_err"))
    if st == "fail":
        failing = tuple(sorted(n for n, s in samples.items() if s.get("status") == "fail"))
        worst = max((samples[n].get("max_abs_err") or 0.0 for n in failing), default=0.0)
        nan = any(samples[n].get("nonfinite_mismatch") for n in failing)
        text = f"**FAIL** {suites(failing)} ({_g(worst)}{', NaN' if nan else ''})"
        return Cell(st, text, failing, worst, nan)
    if st == "unsupported":
        why = r.get("reason") or ""
        return Cell(st, "–", reason=why)
    why = _note(_suite_reason(r.get("reason")))
    return Cell(st, f"{st} [{notes.number(why)}]", reason=why)


class Notes:
    def __init__(self):
        self.items: dict[str, int] = {}

    def number(self, text: str) -> int:
        return self.items.setdefault(text, len(self.items) + 1)


def _versions(recs: list[dict], runtime: str) -> str:
    for r in recs:
        facts = r.get("runtime_facts") or {}
        if facts.get("version"):
            v = facts["version"]
            extra = f", pnnx {facts['pnnx_version']}" if facts.get("pnnx_version") else ""
            return f"{runtime} {v}{extra}"
    return runtime


def _precision(recs: list[dict]) -> str | None:
    for r in recs:
        facts = r.get("runtime_facts") or {}
        if facts.get("precision") and r.get("dtype") == "float32":
            return facts["precision"]
    return None


def runtime_table(runtime: str, by_config: dict[Config, list[dict]], meta: dict, made: str) -> tuple[str, str]:
    """The Markdown page of one runtime, and its one-line summary."""
    configs = [c for c in by_config if any(r["provider"] == runtime for r in by_config[c])]
    notes = Notes()
    grid: dict[tuple[str, str], dict[tuple[Config, str], Cell]] = defaultdict(dict)
    mine = {c: [r for r in by_config[c] if r["provider"] == runtime] for c in configs}
    for c in configs:
        for r in mine[c]:
            grid[(r["norm"], r["variant"])][(c, r["dtype"])] = cell(r, notes)
    rows = sorted(grid)
    # a row none of whose cells ran anywhere (every form unsupported at every config) is left out, listed below
    unsupported_rows = [k for k in rows if all(v.status == "unsupported" for v in grid[k].values())]
    rows = [k for k in rows if k not in unsupported_rows]
    cols = [(c, d) for c in configs for d in DTYPES]
    head = [d if len(configs) == 1 else f"{'f32' if d == 'float32' else 'f16'} {c.short}" for c, d in cols]
    all_recs = [r for c in configs for r in mine[c]]
    m = meta.get("machine", {})
    v = meta.get("versions", {})
    lines = [f"# {runtime}: every norm × form × dtype, every input suite", "",
             f"Made by `python benchmarks/runtime_findings.py` on {made} ([all runtimes](findings.md)).", "",
             f"Runs through: {THROUGH.get(runtime, runtime)}. Precision: {_precision(all_recs) or 'as written'}.", "",
             f"Machine: {platform.machine()}, {m.get('cpu')}, {m.get('cores')} cores; CPU flags: {cpu_flags()}. "
             f"{_versions(all_recs, runtime)}; torch {v.get('torch')}, onnx {v.get('onnx')}, onnxruntime "
             f"{v.get('onnxruntime')}. " + ", ".join(f"Opset {c.opset} ({c.exporter} exporter)" for c in configs)
             + "; the default shapes (`normonnx list`) unless a batch is named, and every input suite that applies.", ""]
    if runtime in PLANS:
        lines += [f"Why these columns: {PLANS[runtime][1]}.", ""]
    lines += ["A cell: `pass` (every suite); **FAIL**, the suites that fail (`offset ≥1e2`: offsets 1e2, 1e3 and "
              "1e4; `-large`: the suite at a realistic size, 4096+ elements per set) and the worst absolute error "
              "among them (NaN: a non-finite value where the oracle has a finite one); `not checked [n]`, the "
              "converter's or runtime's reason below; `–`, the form does not exist for this dtype or opset.", ""]
    lines.append("| norm | form | " + " | ".join(head) + " |")
    lines.append("|---|---|" + "---|" * len(cols))
    for k in rows:
        lines.append(f"| {k[0]} | {k[1]} | " + " | ".join(grid[k].get(col, Cell('-', '-')).text for col in cols) + " |")
    if notes.items:
        lines += ["", "Not checked:", ""]
        lines += [f"{n}. {text}" for text, n in notes.items.items()]
    if unsupported_rows:
        why = sorted({c.reason for k in unsupported_rows for c in grid[k].values() if c.reason})
        lines += ["", f"Not run here ({', '.join(f'{n} {f}' for n, f in unsupported_rows)}): " + "; ".join(why)]

    # the summary: judged per (norm, form, dtype) on the first configuration that checked it
    verdicts: dict[tuple[str, str, str], tuple[Config, Cell]] = {}
    for k in rows:
        for d in DTYPES:
            ran = [(c, grid[k][(c, d)]) for c in configs if (c, d) in grid[k] and grid[k][(c, d)].status != "unsupported"]
            if not ran:
                continue
            verdicts[(*k, d)] = next((x for x in ran if x[1].status in ("pass", "fail")), ran[0])
    passing = [k for k, (c, x) in verdicts.items() if x.status == "pass"]
    failing = [(k, c, x) for k, (c, x) in verdicts.items() if x.status == "fail"]
    unchecked = [(k, c, x) for k, (c, x) in verdicts.items() if x.status not in ("pass", "fail")]

    def name(k, c=None):
        at = f" @{c.short}" if c is not None and c != configs[0] else ""
        return f"{k[0]} {k[1]} {'f32' if k[2] == 'float32' else 'f16'}{at}"

    lines += ["", "## Summary", ""]
    lines.append(f"- **Pass every suite ({len(passing)})**: " + (", ".join(name(k, verdicts[k][0]) for k in passing) or "none"))
    if failing:
        lines.append(f"- **Fail ({len(failing)})**: " + "; ".join(
            f"{name(k, c)}: {suites(x.failing)} ({_g(x.worst)}{', NaN' if x.nan else ''})" for k, c, x in failing))
    if unchecked:
        by_reason: dict[int, list[str]] = defaultdict(list)
        for k, c, x in unchecked:
            by_reason[notes.number(x.reason or x.status)].append(name(k, c))
        lines.append(f"- **Not checked ({len(unchecked)})**: " + "; ".join(
            f"{', '.join(ks)} [{n}]" for n, ks in sorted(by_reason.items())))
    # the one line for findings.md
    f32 = [k for k in passing if k[2] == "float32" and k[0] in ("ln", "in", "gn")]
    with_worst = [f"{k[0]} {k[1]} ({_g(verdicts[k][1].worst) if verdicts[k][1].worst is not None else '-'})"
                  for k in f32]
    short = (f"{len(passing)} pass, {len(failing)} fail, {len(unchecked)} not checked of {len(verdicts)}; "
             f"float32 LN/IN/GN forms passing every suite (worst error over every suite): "
             f"{', '.join(with_worst) or 'none'}")
    signature = tuple(sorted((k, c.name, x.status, x.failing) for k, (c, x) in verdicts.items()))
    return "\n".join(lines) + "\n", short, signature


def _order(runtime: str) -> tuple[int, str]:
    known = list(THROUGH)
    return (known.index(runtime) if runtime in known else len(known), runtime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtimes", default="all", help="comma list, or all: every ONNX runtime available here")
    ap.add_argument("--out", default="runtime-findings", help="folder for the resumable sweeps")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"), help="where the tables go")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-run", action="store_true", help="only rewrite the tables from the sweeps in --out")
    args = ap.parse_args(argv)
    from normonnx.engine.runtimes import resolve_names

    runtimes = list(resolve_names(tuple(args.runtimes.split(","))))
    out = Path(args.out)
    plan: dict[Config, list[str]] = {}  # configuration -> the runtimes checked at it (in the order they are shown)
    for rt in runtimes:
        for config in PLANS.get(rt, ((MAIN,), ""))[0]:
            plan.setdefault(config, []).append(rt)
    if not args.no_run:
        for config, rts in plan.items():
            if config.batch is None:
                sweep(out / config.name, config, rts, args.jobs)
            else:
                for rt in rts:
                    batch_sweep(out / config.name, config, rt)
    by_config = {c: [r for r in records(out / c.name) if r["provider"] in rts] for c, rts in plan.items()}
    meta_path = out / MAIN.name / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    made = dt.date.today().isoformat()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    summary, seen = [], {}
    for rt in runtimes:
        page, short, signature = runtime_table(rt, by_config, meta, made)
        if signature in seen:  # e.g. openvino-default on a CPU without AVX512-BF16: its default precision is f32
            short = f"the same verdict as {seen[signature]} on every case here; " + short
        seen.setdefault(signature, rt)
        (results / f"findings-{rt}.md").write_text(page)
        summary.append(f"| [{rt}](findings-{rt}.md) | {short} |")
        print(f"wrote {results / f'findings-{rt}.md'}: {short}", file=sys.stderr)
    index = results / "findings.md"
    rows = {}  # the runtimes of earlier runs keep their line; this run's replace theirs
    if index.is_file():
        rows = {ln.split("]")[0][3:]: ln for ln in index.read_text().splitlines() if ln.startswith("| [")}
    rows.update({ln.split("]")[0][3:]: ln for ln in summary})
    m = meta.get("machine", {})
    index.write_text("\n".join([
        "# Findings per runtime (every norm × form × float32/float16, every input suite)", "",
        f"Made by `python benchmarks/runtime_findings.py` (last: `--runtimes {args.runtimes}` on {made}); machine: "
        f"{platform.machine()}, {m.get('cpu')}, {m.get('cores')} cores; opset 23 (dynamo) at the default shapes; ncnn "
        "at batch 1 and at opset 17 (TorchScript) as well (its page says why). One table per runtime; each line "
        "counts a norm × form × dtype once (ncnn: at the first of its columns that checked it).", "",
        "| runtime | summary |", "|---|---|", *(rows[k] for k in sorted(rows, key=_order)), ""]))
    print(f"wrote {index}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
