"""The sweep: validate (and optionally bench) every case of a matrix, one JSON line per case.

Each record is appended to OUT/results.jsonl and flushed as its case finishes, so an interrupted
sweep loses at most the case in flight; `resume` skips the cases already recorded. A case that
raises is recorded with its error and the sweep goes on. Shards split the matrix deterministically.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable

from ..core.errors import BadInput, ExitCode, ExportMismatch, Interrupted, NormonnxError, raised_by_normonnx
from ..core.judge import FAIL, INTERNAL, NOT_CHECKED, PASS, SKIPPED, Verdict, internal_reason, judge
from ..core.results import (
    META,
    RESULTS,
    FolderLock,
    ResultsWriter,
    make_record,
    quarantine,
    read_meta,
    read_results,
    versions_diff,
)
from ..core.safeio import atomic_write
from ..core.spec import NormSpec
from ..core.tables import ALL_KINDS, DTYPES, KINDS, PROVIDERS, kind_order
from ..engine.inputs import CheckOptions
from ..exporting.export import check_request, tool_versions
from ..exporting.variants import REGISTRY as VARIANTS
from ..exporting.variants import usable_variants

DEFAULT_OPSETS = (13, 17, 18, 21, 23)
# the first-run matrix: torch's default exporter at the opsets where an ONNX norm op changed for it
# (18: its lowest, ReduceMean takes axes as an input, GroupNormalization-18; 21: GroupNormalization
# redefined per channel; 23: RMSNormalization)
QUICK_OPSETS = (18, 21, 23)


@dataclass(frozen=True)
class Case:
    norm: str
    variant: str
    opset: int
    exporter: str
    dtype: str
    provider: str

    @property
    def spec(self) -> NormSpec:
        return NormSpec.make(self.norm, dtype=self.dtype)

    @property
    def id(self) -> str:
        return f"{self.spec.id}-{self.variant}-op{self.opset}-{self.exporter}-{self.provider}"


@dataclass(frozen=True)
class Matrix:
    norms: tuple[str, ...] = KINDS
    variants: tuple[str, ...] = tuple(VARIANTS)
    opsets: tuple[int, ...] = DEFAULT_OPSETS
    exporters: tuple[str, ...] = ("dynamo", "torchscript")
    dtypes: tuple[str, ...] = ("float32", "float16")
    providers: tuple[str, ...] = ()  # empty: every ORT provider available here
    # each form only at the opsets where what it emits changes (its first, then each change): an
    # opset that writes the same ops as the one below it checks nothing new
    only_changes: bool = False

    @classmethod
    def quick(cls, **given) -> "Matrix":
        """The first-run matrix: every norm and form, float32 and float16, every runtime here, on
        torch's default exporter at the opsets that change a form (the full one: `Matrix()`)."""
        return cls(**{"opsets": QUICK_OPSETS, "exporters": ("dynamo",), "only_changes": True, **given})

    def __post_init__(self):
        from ..engine.runtimes import REGISTRY as RUNTIMES
        from ..engine.runtimes import available_runtimes, resolve_names
        from ..exporting.exporters import REGISTRY as EXPORTERS

        object.__setattr__(self, "providers", resolve_names(self.providers) or ())  # "all": every ONNX runtime here
        checks = [("norm", self.norms, ALL_KINDS), ("variant", self.variants, tuple(VARIANTS)),
                  ("exporter", self.exporters, tuple(EXPORTERS)), ("dtype", self.dtypes, tuple(DTYPES)),
                  ("runtime", self.providers, tuple(RUNTIMES))]
        for what, given, valid in checks:
            bad = [g for g in given if g not in valid]
            if bad:
                raise BadInput(f"unknown {what} {bad[0]!r}: valid {what}s are {', '.join(valid)}")
        if not self.providers:
            object.__setattr__(self, "providers", tuple(p for p in PROVIDERS if p in available_runtimes()))

    def cases(self) -> list[Case]:
        """Every combination with the variant supporting the norm (others are not cases at all)."""
        out = [Case(n, v, o, e, d, p) for n in self.norms for v in self.variants if n in VARIANTS[v].min_opset
               for o in self.form_opsets(n, v) for e in self.exporters for d in self.dtypes for p in self.providers]
        return sorted(out, key=lambda c: c.id)

    def form_opsets(self, norm: str, variant: str) -> tuple[int, ...]:
        """The opsets a form is tried at: all of them, or with only_changes the first it supports and
        each where what it emits changes (below its first, every opset is one unsupported record)."""
        if not self.only_changes:
            return tuple(self.opsets)
        v = VARIANTS[variant]
        kept, last = [], None
        for o in sorted(self.opsets):
            if o < v.min_opset[norm]:
                continue
            ops = v.emits(norm, o)
            if ops != last:
                kept.append(o)
            last = ops
        return tuple(kept) or (max(self.opsets),)


def auto_jobs() -> int:
    """One worker process per core, at most 4: each pays torch's import (~3 s) before its first case."""
    return max(1, min(os.cpu_count() or 1, 4))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise BadInput(f"bad shard {text!r}: write K/N with 1 <= K <= N, e.g. 2/3") from None
    if not 1 <= k <= n:
        raise BadInput(f"bad shard {text!r}: write K/N with 1 <= K <= N, e.g. 2/3")
    return k, n


def shard_cases(cases: list[Case], shard: tuple[int, int] | None) -> list[Case]:
    """Shard K of N: the cases whose id hashes to K-1 mod N (independent of order and of other cases)."""
    if shard is None:
        return cases
    k, n = shard
    return [c for c in cases if zlib.crc32(c.id.encode()) % n == k - 1]


def versions() -> dict:
    import onnxruntime

    return {**tool_versions(), "onnxruntime": onnxruntime.__version__}


# -- one case ------------------------------------------------------------------------------------
def case_status(samples) -> str:
    """A sweep record's status from its samples, by the one judge: pass, fail, not checked, internal error."""
    return judge(r.status for r in samples).status


def run_case(case: Case, inputs: list[str] | None = None, cache_dir: str | None = None, seed: int = 0) -> dict:
    """Validate one case on its provider and return its flat record. Never raises."""
    from ..engine.runtimes import RunOptions
    from ..engine.validate import validate
    from ..exporting.cache import ExportCache
    from ..exporting.export import ExportOptions

    t0 = time.perf_counter()
    rec = {"case_id": case.id, **asdict(case), "spec_id": case.spec.id, "versions": versions()}
    try:
        check_request(case.spec, case.variant, case.opset, case.exporter)
        why = VARIANTS[case.variant].unsupported_on(case.provider)
        if why:
            raise BadInput(why)
    except BadInput as e:
        return make_record("case", **rec, status="unsupported", reason=str(e), duration_s=0.0)
    cache = None
    try:
        cache = ExportCache(cache_dir) if cache_dir else None
        result = validate(case.spec, export=ExportOptions(case.variant, case.opset, case.exporter),
                          run=RunOptions.on(case.provider),
                          check=CheckOptions(tuple(inputs) if inputs is not None else None, seed=seed), cache=cache)
    except ExportMismatch as e:
        return make_record("case", **rec, status="mismatch", reason=str(e), duration_s=time.perf_counter() - t0,
                           exports=cache.misses if cache else None)
    except Exception as e:  # recorded, never fatal to the sweep
        return error_record(case, e, duration_s=time.perf_counter() - t0,
                            traceback=traceback.format_exc(limit=3)[-1500:])
    samples = [r for r in result.results if r.runtime == case.provider]
    # only a finished comparison makes a case "fail"; a check that could not run makes it "not checked"
    failed = [r for r in samples if r.status == FAIL]
    bad = failed or [r for r in samples if r.status in (INTERNAL, NOT_CHECKED)]
    worst = max(bad, key=lambda r: (r.nonfinite_mismatch or 0, r.max_abs_err or 0.0), default=None)
    finite_errs = [r.max_abs_err for r in samples if r.max_abs_err is not None]
    status = case_status(samples)
    return make_record(
        "case",
        **rec,
        status=status,
        reason=(f"{worst.inputs}: {worst.reason or worst.error}" if worst else
                None if status == "pass" else "nothing was checked: every input suite was skipped"),
        worst_input=worst.inputs.split(":")[-1] if worst else None,
        max_abs_err=max(finite_errs) if finite_errs else None,
        inputs={r.inputs.split(":")[-1] if r.inputs != "*" else r.inputs: {
            "status": r.status, "max_abs_err": r.max_abs_err, "max_rel_err": r.max_rel_err,
            "nonfinite_mismatch": r.nonfinite_mismatch, "reason": r.reason or r.error}
            for r in result.results if r.runtime in (case.provider, "*")},
        model_opset=result.model["opset"],
        ops=result.model["ops"],
        runtime_facts=result.runtimes.get(case.provider, {}),
        exports=cache.misses if cache else None,  # 0 when every export came from the cache
        duration_s=time.perf_counter() - t0,
    )


def error_record(case: Case, e: BaseException, **extra) -> dict:
    """The record of a case that raised instead of finishing: recorded, never fatal to the sweep. A
    NormonnxError says why the case could not be checked; anything else is normonnx's own failure."""
    internal = not isinstance(e, NormonnxError) or raised_by_normonnx(e)
    return make_record("case", case_id=case.id, **asdict(case), versions=versions(),
                       status=INTERNAL if internal else NOT_CHECKED, error_type=type(e).__name__,
                       error=(internal_reason(e, 400) if internal else str(e).strip() or type(e).__name__)[:500],
                       **extra)


def run_bench_group(norm: str, dtype: str, provider: str, opset: int, min_time: float) -> dict:
    """Time every variant of a norm at its standard shape (one record holding all forms). Never raises."""
    from ..core.timing import TimingOptions
    from ..engine.bench import bench_spec, benchmark
    from ..engine.runtimes import RunOptions

    rec = {"case_id": bench_id(norm, dtype, provider, opset), "norm": norm, "dtype": dtype, "provider": provider,
           "opset": opset, "versions": versions()}
    try:
        spec = bench_spec(norm, dtype)
        rep = benchmark(spec, usable_variants(spec, opset), run=RunOptions.on(provider), opset=opset,
                        timing=TimingOptions(warmup=2, min_time=min_time, rounds=9))
        return make_record("bench", **rec, status="timed", spec_id=spec.id, machine=rep.machine,
                           records=[r.to_dict() for r in rep.records])
    except Exception as e:
        internal = not isinstance(e, NormonnxError)
        return make_record("bench", **rec, status=INTERNAL if internal else NOT_CHECKED, error_type=type(e).__name__,
                           error=(internal_reason(e, 400) if internal else str(e).strip() or type(e).__name__)[:500])


def bench_id(norm: str, dtype: str, provider: str, opset: int) -> str:
    return f"bench-{norm}-{dtype}-{provider}-op{opset}"


# -- progress ------------------------------------------------------------------------------------
class Progress:
    """A bar with count and ETA on a terminal; plain lines otherwise.

    The ETA adds up each kind of step at its own pace: accuracy cases take a second or so, a timing
    group tens of seconds, so one average over both would promise "3s" through the whole timing
    phase. A kind not seen yet is estimated by `first_guess` seconds a step."""

    def __init__(self, total: int, stream=None, enabled: bool = True, remaining: dict[str, int] | None = None,
                 first_guess: dict[str, float] | None = None):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.remaining = dict(remaining or {"case": total})
        self.spent: dict[str, list[float]] = {}
        self.guess = dict(first_guess or {})
        self.last = self.t0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        if enabled:
            self.stream.write(f"[{'.' * 30}] 0/{total}  exporting the first case ..." if self.tty
                              else f"sweeping {total} cases\n")
            self.stream.flush()

    def eta(self) -> float:
        out = 0.0
        for kind, n in self.remaining.items():
            seen = self.spent.get(kind)
            pace = sum(seen) / len(seen) if seen else self.guess.get(kind, (time.perf_counter() - self.t0) /
                                                                      max(self.done, 1))
            out += n * pace
        return out

    def step(self, record: dict) -> None:
        self.done += 1
        now = time.perf_counter()
        kind = record.get("type", "case")
        self.spent.setdefault(kind, []).append(now - self.last)
        self.last = now
        self.remaining[kind] = max(self.remaining.get(kind, 1) - 1, 0)
        if not self.enabled:
            return
        eta = self.eta()
        if self.tty:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                              f"ETA {_fmt_s(eta)}  {record['case_id'][:60]:<60}")
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"{self.done}/{self.total} {record.get('status', '?'):<11} {record['case_id']} "
                              f"(ETA {_fmt_s(eta)})\n")
        self.stream.flush()


def _fmt_s(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.0f}s"


# -- the sweep -----------------------------------------------------------------------------------
@dataclass
class SweepSummary:
    out: Path
    total: int
    skipped_done: int
    counts: dict = field(default_factory=dict)  # status -> records this run wrote
    cache_hits: int = 0
    rejected: int = 0  # malformed lines moved aside by resume (their cases ran again)
    statuses: list = field(default_factory=list)  # every case's status in the folder, this run's and resumed ones

    def verdict(self, allow_not_checked: bool = False) -> Verdict:
        """The one judge over every case of the matrix (resumed ones included): a case exported at another
        opset or op set than asked ("mismatch") fails, as validate says; "unsupported" does not apply."""
        as_check = {"mismatch": FAIL, "unsupported": SKIPPED, "timed": PASS}
        return judge((as_check.get(s, s) for s in self.statuses), allow_not_checked)

    def exit_code(self, strict: bool = False, allow_not_checked: bool = False) -> ExitCode:
        """0 once the matrix is recorded, 5 if normonnx itself failed on a case; with strict, the judge's
        verdict over every case (1 a case failed or is a mismatch, 4 a case could not be checked)."""
        v = self.verdict(allow_not_checked)
        if strict:
            return v.exit_code
        return ExitCode.INTERNAL if v.internal else ExitCode.PASSED

    def to_dict(self) -> dict:
        return {"out": str(self.out), "total": self.total, "already_done": self.skipped_done, "counts": self.counts,
                "rejected_lines": self.rejected}


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs: resume a folder's results (or force: start over), N worker processes, one shard
    k of n of the matrix, the export cache's folder (None: no cache), a progress line."""

    resume: bool = False
    force: bool = False
    jobs: int = 1
    shard: tuple[int, int] | None = None
    cache_dir: str | Path | None = None
    progress: bool = True


@dataclass(frozen=True)
class BenchOptions:
    """Timings after the accuracy cases: every form of each norm x dtype x provider at `opset`, each
    timed for min_time seconds."""

    opset: int = 21
    min_time: float = 0.3


def sweep(
    out: str | Path,
    matrix: Matrix | None = None,
    *,
    how: SweepOptions = SweepOptions(),
    check: CheckOptions = CheckOptions(),
    bench: BenchOptions | None = None,
    case_runner: Callable[..., dict] = run_case,
    warn: Callable[[str], object] | None = None,
) -> SweepSummary:
    """Run the matrix into OUT/results.jsonl, judged on `check`'s suites and seed (its tolerance is
    each dtype's own); with `bench`, timings after the cases. how.cache_dir=None disables the export cache.

    One writer per folder (OUT/.lock): a second sweep into OUT fails at once. With resume, malformed
    lines (torn, garbage, duplicates, another schema) move to OUT/results.rejected.jsonl and their
    cases run again."""
    from ..engine import inputs as suites

    matrix = matrix if matrix is not None else Matrix()  # not a default argument: it probes runtimes
    warn = warn or (lambda m: sys.stderr.write(f"warning: {m}\n"))
    suites.get_suites(check.inputs)  # validate names before any work
    if how.jobs < 1:
        raise BadInput(f"--jobs must be >= 1, got {how.jobs}")
    from ..exporting.exporters import get_exporter

    for name in matrix.exporters:  # every case is an export: without torch (or onnxscript), exit 3 before any work
        get_exporter(name).require("sweep")
    if how.cache_dir is not None:
        from ..exporting.cache import ExportCache

        ExportCache(how.cache_dir)  # an unusable cache folder is bad input before any case runs
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise BadInput(f"cannot write in output folder {out}: permission denied")
    with FolderLock(out):
        return _sweep_locked(out, matrix, how, check, bench, case_runner, warn)


def _sweep_locked(out: Path, matrix: Matrix, how: SweepOptions, check: CheckOptions, bench: BenchOptions | None,
                  case_runner, warn) -> SweepSummary:
    jobs, shard = how.jobs, how.shard
    inputs, seed = list(check.inputs) if check.inputs else None, check.seed  # as the results' meta records them
    results = out / RESULTS
    existing, bad, now = _earlier_results(results, how)
    rejected = 0
    if bad:
        where = quarantine(out, bad, existing)
        rejected = len(bad)
        warn(f"{results}: {len(bad)} malformed lines moved to {where} ({bad[0]}); their cases run again")
    from ..engine.bench import machine_info

    meta = {"versions": now, "matrix": {k: v if isinstance(v, bool) else list(v) for k, v in asdict(matrix).items()},
            "inputs": inputs, "shard": f"{shard[0]}/{shard[1]}" if shard else None, "bench": bench is not None,
            "machine": machine_info()}
    atomic_write(out / META, json.dumps(meta, indent=1).encode())
    done = {r["case_id"]: r["status"] for r in existing}
    cases = shard_cases(matrix.cases(), shard)
    todo = [c for c in cases if c.id not in done]
    groups = _bench_groups(matrix, bench, done, shard)
    summary = SweepSummary(out, len(cases) + len(groups), len(cases) - len(todo), rejected=rejected,
                           statuses=list(done.values()))
    # a timing group: every variant and the two baselines for bench.min_time each, plus exports and
    # validation, on each dtype; a first guess until the first group has run
    bar = Progress(len(todo) + len(groups), enabled=how.progress, remaining={"case": len(todo), "bench": len(groups)},
                   first_guess={"bench": 5 * (bench.min_time if bench else 0) + 10.0})
    writer = ResultsWriter(results)
    cache = str(how.cache_dir) if how.cache_dir is not None else None

    def record(rec: dict) -> None:
        writer.write(rec)
        summary.counts[rec["status"]] = summary.counts.get(rec["status"], 0) + 1
        summary.statuses.append(rec["status"])
        bar.step(rec)

    try:
        if jobs == 1:
            for c in todo:
                try:
                    rec = case_runner(c, inputs, cache, seed)
                except Exception as e:  # a case that raises is recorded, and the sweep goes on
                    rec = error_record(c, e)
                record(rec)
        else:
            _parallel(todo, jobs, lambda c: (case_runner, (c, inputs, cache, seed)), record)
        # timing runs alone, after the accuracy cases, so nothing else competes for the cores
        for n, d, p in groups:
            assert bench is not None  # _bench_groups gives none without it
            record(run_bench_group(n, d, p, bench.opset, bench.min_time))
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: every finished case is already on disk
        raise Interrupted(getattr(e, "signum", 2), f"finished cases are in {results}; rerun with --resume") from None
    finally:
        writer.close()
    return summary


def _earlier_results(results: Path, how: SweepOptions) -> tuple[list[dict], list, dict]:
    """The results already in the folder (none with --force, which removes them) and the malformed lines, and
    this run's tool versions; BadInput where they may not be continued (no --resume, other versions)."""
    existing, bad = read_results(results) if not how.force else ([], [])
    if (existing or bad) and not how.resume:
        raise BadInput(f"{results} already holds {len(existing) + len(bad)} results: pass --resume to finish that "
                       "sweep, or --force to start over")
    if how.force and results.exists():
        results.unlink()
    now = versions()
    older = next((r for r in existing if r.get("versions") != now), None)
    if older is not None:
        raise BadInput(f"{results} was recorded with other tool versions "
                       f"({', '.join(versions_diff(now, older.get('versions')))}): pass --force to start over, "
                       "or choose another --out")
    return existing, bad, now


def _bench_groups(matrix: Matrix, bench: BenchOptions | None, done: dict, shard) -> list[tuple[str, str, str]]:
    """The (norm, dtype, provider) timing groups still to run (this shard's)."""
    if not bench:
        return []
    groups = [(n, d, p) for n in matrix.norms for d in matrix.dtypes for p in matrix.providers]
    groups = [g for g in groups if bench_id(*g, bench.opset) not in done]
    if shard:
        k, n = shard
        groups = [g for g in groups if zlib.crc32(f"bench-{g[0]}-{g[1]}-{g[2]}".encode()) % n == k - 1]
    return groups


def _parallel(todo: list[Case], jobs: int, call, record) -> None:
    from concurrent.futures.process import BrokenProcessPool

    from ..engine.pool import run_parallel

    cases: dict[Hashable, Case] = {c.id: c for c in todo}  # run_parallel's keys
    try:
        run_parallel(((c.id, *call(c)) for c in todo), jobs, lambda _, rec: record(rec),
                     lambda key, e: record(error_record(cases[key], e)))  # a worker died: record it, go on
    except BrokenProcessPool:
        raise NormonnxError("the worker processes died before running a case; finished cases are saved "
                            "(rerun with resume). From a script, call sweep(jobs > 1) under "
                            "`if __name__ == \"__main__\":` (multiprocessing's spawn re-imports the script)") from None


# -- merge ---------------------------------------------------------------------------------------
def merge(dirs: Iterable[str | Path], out: str | Path, *, force: bool = False) -> int:
    """Combine shard outputs into OUT/results.jsonl. Refused, naming the file and line: a malformed
    line, a case in two folders, mixed tool versions, a corrupt meta.json, an output folder that
    already holds results (unless force). The merged meta.json's matrix is the union of the shards'."""
    folders = [Path(d) for d in dirs]
    out = Path(out)
    if any(d.resolve() == out.resolve() for d in folders):
        raise BadInput(f"the merge output {out} is also an input: choose another folder")
    seen: dict[str, str] = {}
    records: list[dict] = []
    ref_versions, ref_dir = None, None
    metas = []
    for d in folders:
        path = d / RESULTS
        if not path.is_file():
            raise BadInput(f"{d} holds no {RESULTS}: give folders written by normonnx sweep")
        meta = read_meta(d)
        if meta:
            metas.append(meta)
        recs, bad = read_results(path)
        if bad:
            raise BadInput(f"{path} {bad[0]}: fix or remove it (normonnx sweep --resume moves such lines aside)")
        for r in recs:
            if r["case_id"] in seen:
                raise BadInput(f"case {r['case_id']} appears in both {seen[r['case_id']]} and {d}: "
                               "merge each shard once")
            v = r.get("versions")
            if ref_versions is None:
                ref_versions, ref_dir = v, d
            elif v != ref_versions:
                raise BadInput(f"{d} was run with other tool versions than {ref_dir} "
                               f"({', '.join(versions_diff(v, ref_versions))}): merge results of one environment")
            seen[r["case_id"]] = str(d)
            records.append(r)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create output folder {out}: {e.strerror}") from None
    with FolderLock(out):
        target = out / RESULTS
        if target.exists() and target.stat().st_size and not force:
            raise BadInput(f"{target} already holds results: pass --force to replace them, or choose another -o")
        from ..core.results import write_records

        write_records(target, sorted(records, key=lambda r: r["case_id"]))
        if metas:
            atomic_write(out / META, json.dumps(_merged_meta(metas, folders), indent=1).encode())
    return len(records)


def _merged_meta(metas: list[dict], dirs: list[Path]) -> dict:
    """The first shard's meta with the matrix as the union of every shard's (norms, dtypes, ...)."""
    matrix: dict[str, list] = {}
    for m in metas:
        for k, vals in (m.get("matrix") or {}).items():
            if isinstance(vals, list):
                matrix.setdefault(k, [])
                matrix[k] += [v for v in vals if v not in matrix[k]]
    if "norms" in matrix:
        matrix["norms"].sort(key=kind_order)
    return dict(metas[0], matrix=matrix, shard=None, merged_from=[str(d) for d in dirs])
