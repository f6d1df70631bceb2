"""Latency of each exported graph form on ORT, side by side with PyTorch eager and with a plain copy
of the same tensor (the memory-bandwidth floor for a norm: it must read x once and write y once).

Inputs and outputs are bound once with IOBinding on the provider's device, so the timed region is
the session's run alone: no host<->device copy, no output allocation. All forms of a spec are timed
together in interleaved rounds (normonnx.core.timing): ratios are per round, with confidence intervals,
a verdict on noise, and a flag on any form that would be faster than the copy.
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import BadInput, NormonnxError, RuntimeUnavailable, need_torch
from ..core.params import make_params
from ..core.spec import NormSpec
from ..core.tables import DTYPES
from ..core.timing import TimingOptions
from ..exporting.export import DEFAULT_EXPORTER, export_result
from ..exporting.exporters import get_exporter
from ..exporting.variants import get_variant, usable_variants
from .runtimes import RunOptions, get_runtime, ort_session, resolve_names, session_options

# the standard shapes: what the benchmark suite runs and what `normonnx bench` uses by default
BENCH_SHAPES = {"ln": (8, 512, 768), "gn": (8, 320, 64, 64), "in": (8, 64, 128, 128), "bn": (32, 64, 56, 56),
                "rms": (8, 512, 768)}
# a few hundred KB: where per-call overhead, not memory bandwidth, decides
SMALL_SHAPES = {"ln": (1, 64, 768), "gn": (1, 64, 32, 32), "in": (1, 16, 32, 32), "bn": (1, 64, 28, 28),
                "rms": (1, 64, 768)}
BENCH_GROUPS = 32
DEVICES = {"cpu": "cpu", "cuda": "cuda", "openvino": "cpu", "openvino-default": "cpu"}  # runtime -> torch's device


def can_time(runtime) -> bool:
    """Whether bench can time a runtime: ORT's providers (IOBinding) and any runtime that binds its own input
    (`Runtime.bind`: OpenVINO and the converting plugins, on CPU)."""
    return runtime.kind == "onnx" and (runtime.name in DEVICES or runtime.bind is not None)


def bench_spec(kind: str, dtype: str = "float32", **overrides) -> NormSpec:
    """The standard benchmark spec of a norm (GN with 32 groups), with CLI overrides applied."""
    shape = overrides.pop("shape", None) or BENCH_SHAPES[kind]
    groups = overrides.pop("groups", None) or (BENCH_GROUPS if kind == "gn" else None)
    return NormSpec.make(kind, shape=shape, groups=groups, dtype=dtype, **overrides)


@dataclass(frozen=True)
class Timing:
    """Per-call latency percentiles of one form, from every call of every round."""

    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float

    @staticmethod
    def of(calls_ms: np.ndarray) -> "Timing":
        ms = np.asarray(calls_ms, dtype=np.float64)
        return Timing(len(ms), float(ms.mean()), float(np.percentile(ms, 50)), float(np.percentile(ms, 90)),
                      float(np.percentile(ms, 99)), float(ms.min()), float(ms.max()),
                      float(statistics.pstdev(ms)) if len(ms) > 1 else 0.0)


@dataclass(frozen=True)
class BenchRecord:
    """One timed form on one provider: flat, JSON-serialisable; `error` instead of an exception."""

    spec_id: str
    norm: str
    dtype: str
    shape: str
    provider: str
    form: str  # "copy", "torch", or a variant name
    opset: int | None
    exporter: str | None
    runs: int | None = None
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    std_ms: float | None = None
    gbps: float | None = None  # (bytes read + written) / p50
    x_copy: float | None = None  # median over rounds of (this form / the copy), each round's own pair
    x_torch: float | None = None  # likewise against torch eager
    ci_low: float | None = None  # 95 % bootstrap interval of x_copy
    ci_high: float | None = None
    x_torch_ci_low: float | None = None
    x_torch_ci_high: float | None = None
    stable: bool | None = None  # the verdict on noise (timing.Noise)
    unstable_reason: str | None = None
    implausible: str | None = None  # faster than a copy: not a speed, and never recommended on it
    rounds: int | None = None
    batch: int | None = None
    check: str | None = None  # the judge's status of the validation on `normal` inputs, same provider (None: not run)
    validation: str | None = None
    io_binding: bool = False
    ort_provider: str | None = None  # what the session actually used
    opt_level: str | None = None
    threads: int | str | None = None
    fastest: bool = False  # the fastest variant that passed validation, with a stable, plausible timing
    error: str | None = None
    unsupported: str | None = None  # the variant cannot run on this provider (why); not timed, not an error

    def to_dict(self) -> dict:
        # "passed" (True/False/None) is kept beside "check" for documents read by older tools
        return {**asdict(self), "passed": {"pass": True, "fail": False}.get(self.check or "")}


@dataclass
class BenchResult:
    spec: NormSpec
    records: list[BenchRecord] = field(default_factory=list)
    machine: dict = field(default_factory=dict)

    @property
    def trusted(self) -> tuple[bool, str]:
        """(can these timings be trusted, one line saying so and what to do if not)."""
        timed = [r for r in self.records if r.error is None and r.unsupported is None]
        unstable = [r.form for r in timed if r.stable is False]
        odd = [r.form for r in timed if r.implausible]
        if not unstable and not odd:
            return True, f"timings trusted: every row stable ({timed[0].rounds if timed else 0} interleaved rounds)"
        parts = ([f"{len(unstable)} unstable ({', '.join(unstable)})"] if unstable else []) + \
                ([f"{len(odd)} faster than a copy ({', '.join(odd)})"] if odd else [])
        return False, ("timings NOT trusted: " + "; ".join(parts) + ". Rerun on an idle machine, with --threads 1, "
                       "or with more --rounds")

    def to_dict(self) -> dict:
        ok, line = self.trusted
        return {"spec_id": self.spec.id, "spec": self.spec.to_dict(), "machine": self.machine, "trusted": ok,
                "verdict": line, "records": [r.to_dict() for r in self.records],
                # what the `valid` field covers (validate judges every stress suite)
                "checked": "valid: normal inputs only, to time forms that compute a norm; not the stress suites"}


# the name before issue 35 ("report" is now only the HTML/Markdown report), kept for code that imports it
BenchReport = BenchResult


def machine_info() -> dict:
    """The machine a timing or a sweep ran on (torch's threads and GPU where torch is installed)."""
    import onnxruntime as ort

    from ..core.errors import module_missing

    torch: Any = None  # the module, where installed
    if not module_missing("torch"):  # installed without torch, a sweep folder still says which machine
        import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__ if torch else None,
            "onnxruntime": ort.__version__, "torch_threads": torch.get_num_threads() if torch else None}
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _bind(session, x_t, y_t, device: str):
    """IOBinding of torch tensors' memory: bound once, reused by every timed run."""
    io = session.io_binding()
    np_dtype = next(d.numpy for d in DTYPES.values() if d.torch == x_t.dtype)
    dev_id = x_t.device.index or 0
    io.bind_input(session.get_inputs()[0].name, device, dev_id, np_dtype, tuple(x_t.shape), x_t.data_ptr())
    io.bind_output(session.get_outputs()[0].name, device, dev_id, np_dtype, tuple(y_t.shape), y_t.data_ptr())
    return io


def benchmark(
    spec: NormSpec,
    variants: list[str] | None = None,
    *,
    run: RunOptions = RunOptions(("cpu",)),
    opset: int = 21,
    exporter: str = DEFAULT_EXPORTER,
    timing: TimingOptions = TimingOptions(),
    validate_first: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Time every variant of `spec` (default: every one that can express it at `opset`) on each of
    run's providers (default: cpu; run.config's threads and optimization level) next to torch eager and a
    copy, interleaved as `timing` says; see normonnx.core.timing."""
    if run.skip_missing:
        raise BadInput("bench times every provider it is given: skip_missing does not apply")
    t = timing
    variants, providers = _check_request(spec, variants, list(run.runtimes or ()), opset, t.warmup, t.min_time,
                                         t.rounds)
    # every form is exported from PyTorch and timed beside it: without torch, exit 3 before any work
    get_exporter(exporter).require("bench")
    torch = need_torch("bench")
    config, threads = run.config, run.config.threads
    if threads:
        torch.set_num_threads(threads)
    result = BenchResult(spec, machine=machine_info())
    result.machine["threads"] = threads or "default"
    say = progress or (lambda s: None)
    base: dict[str, Any] = dict(spec_id=spec.id, norm=spec.kind, dtype=spec.dtype, shape="x".join(map(str, spec.shape)))
    with tempfile.TemporaryDirectory(prefix="normonnx-bench-") as tmp:
        models: dict[str, Path | NormonnxError] = {}  # the exported model, or why it could not be
        for v in variants:
            say(f"export {v}")
            try:
                models[v] = export_result(spec, v, opset, exporter, output=Path(tmp) / f"{v}.onnx").path
            except NormonnxError as e:
                models[v] = e
        for p in providers:
            forms, rows, sync = _forms(spec, p, variants, models, opset, exporter, config, validate_first, say)
            say(f"{p}: timing {', '.join(forms)} in {t.rounds} interleaved rounds")
            _time(forms, rows, sync, spec, result, rounds=t.rounds, min_time=t.min_time, warmup=t.warmup, seed=t.seed)
            fastest = _fastest(rows)
            for name, r in rows.items():
                result.records.append(BenchRecord(
                    **base, provider=p, form=r["form"], opset=r["opset"], exporter=r["exporter"], **r.get("times", {}),
                    **{k: r.get(k) for k in ("gbps", "x_copy", "x_torch", "ci_low", "ci_high", "x_torch_ci_low",
                                             "x_torch_ci_high", "stable", "unstable_reason", "implausible", "rounds",
                                             "batch", "check", "validation", "ort_provider")},
                    io_binding=r.get("io_binding", False),
                    opt_level=config.opt_level if r["form"] not in ("copy", "torch") else None,
                    threads=threads or "default", fastest=name == fastest, error=r.get("error"),
                    unsupported=r.get("unsupported")))
    return result


def _check_request(spec: NormSpec, variants, providers, opset: int, warmup: int, min_time: float,
                   rounds: int) -> tuple[list[str], list[str]]:
    """The variants and providers to time, or BadInput / RuntimeUnavailable saying why not."""
    if spec.dtype == "bfloat16":
        raise BadInput("bench times float32 and float16: ORT's IOBinding has no numpy bfloat16 type")
    if warmup < 0 or min_time < 0 or rounds < 3:
        raise BadInput("bench needs --warmup >= 0, --min-time >= 0 and --rounds >= 3 (a confidence interval "
                       "needs rounds)")
    # by default every variant that can express the spec at this opset (RMS native needs 23); a
    # variant asked for by name that cannot is bad input
    variants = variants or usable_variants(spec, opset)
    for v in variants:
        get_variant(v).check(spec, opset)
    providers = list(resolve_names(providers, can_time) or ()) or ["cpu"]  # "all": every runtime here bench can time
    for p in providers:
        if p not in DEVICES and not can_time(get_runtime(p)):
            raise BadInput(f"unknown runtime {p!r} for bench: valid runtimes are {', '.join(DEVICES)} and the "
                           "runtimes that bind their own input (see normonnx list)")
        why = get_runtime(p).unavailable()
        if why:
            raise RuntimeUnavailable(f"provider {p!r} is unavailable: {why}")
    return variants, providers


def _forms(spec: NormSpec, p: str, variants: list[str], models: dict, opset: int, exporter: str, config,
           validate_first: bool, say) -> tuple[dict, dict, Callable[[], object]]:
    """On provider `p`: the callables to time (copy, torch, and each variant's ORT session bound to the
    same tensors), a row per form (what will not be timed says why), and the device's sync."""
    import torch

    device = DEVICES.get(p, "cpu")  # a plugin that binds its own input runs on the CPU's tensors
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    dt = DTYPES[spec.dtype].torch
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(spec.shape, generator=gen).to(dt).to(device)
    y = torch.empty_like(x)
    module = get_variant("native").build(spec, make_params(spec)).to(dt).to(device)
    forms: dict[str, Callable[[], object]] = {"copy": lambda: y.copy_(x), "torch": lambda: module(x)}
    rows: dict[str, dict] = {"copy": dict(form="copy", opset=None, exporter=None),
                             "torch": dict(form="torch", opset=None, exporter=None)}
    for v in variants:
        row = rows[v] = dict(form=v, opset=opset, exporter=exporter)
        variant = get_variant(v)
        if variant.unsupported_on(p):
            row["unsupported"] = variant.unsupported_on(p)  # reported, not timed, not an error
            continue
        if isinstance(models[v], Exception):
            row["error"] = str(models[v])
            continue
        if validate_first:
            say(f"{p}: validate {v}")
            row.update(_validation(models[v], p, config))
        try:
            forms[v] = _bound_run(models[v], variant, p, config, x, y, row)
        except Exception as e:
            from ..core.errors import first_line

            row["error"] = f"{p} cannot run {v}: {first_line(e)}"
    return forms, rows, sync


def _validation(model: Path, p: str, config) -> dict:
    """The variant validated on normal inputs on `p`: the judge's status (check) and why."""
    from ..core.errors import BadInput
    from .inputs import CheckOptions
    from .runtimes import RunOptions
    from .validate import validate

    try:
        rep = validate(model=model, run=RunOptions.on(p, config=config), check=CheckOptions(("normal",)))
    except BadInput as e:  # this form's file cannot be judged here: its row says why, the other forms go on
        return {"check": "not checked", "validation": f"not checked: {e}"}
    # only a finished comparison says FAIL; a check that could not run leaves it unknown
    bad, v = rep.failures(), rep.verdict
    return {"check": v.status, "validation": "pass" if v.status == "pass" else (
        next((r.reason for r in bad if r.status == "fail"), None) or f"not checked: {bad[0].error if bad else 'no result'}")}


def _bound_run(model: Path, variant, p: str, config, x, y, row: dict) -> Callable[[], object]:
    import torch

    bind = get_runtime(p).bind
    if bind is not None:  # a runtime other than ORT binds its own input (numpy, shared with x's copy)
        row["io_binding"] = False
        return bind(model, config, variant.to_model(x).cpu().numpy())
    sess = ort_session(model, session_options(config), p)
    xv = variant.to_model(x)  # an NHWC variant binds its own channels-last copy
    out = torch.empty_like(xv) if xv is not x else y
    io = _bind(sess, xv, out, DEVICES[p])
    row["ort_provider"] = sess.get_providers()[0]
    row["io_binding"] = True

    def run(keep=(xv, out)):  # the binding holds raw pointers: the tensors live as long as the run does
        return sess.run_with_iobinding(io)
    return run


def _time(forms: dict, rows: dict, sync, spec: NormSpec, result: BenchResult, *, rounds: int, min_time: float,
          warmup: int, seed: int) -> None:
    """Run the interleaved rounds and put each timed form's figures in its row."""
    import torch

    from ..core import timing

    load0 = timing.load_average()
    with torch.inference_mode(), timing.OtherCpu() as others:
        measured = timing.run_rounds(forms, sync, rounds=rounds, min_time=min_time, warmup=warmup, seed=seed)
    load1 = timing.load_average()
    result.machine["other_cores_while_timing"] = others.cores
    load = (load0, load1) if load0 is not None and load1 is not None else None
    vs_copy = timing.paired_ratios(measured.per_round, "copy")
    vs_torch = timing.paired_ratios(measured.per_round, "torch")
    copy_cv = timing.copy_cv(measured.per_round["copy"])
    nbytes = int(np.prod(spec.shape)) * DTYPES[spec.dtype].itemsize
    cores = os.cpu_count() or 1
    for name, row in rows.items():
        if name not in forms:
            continue
        t = Timing.of(measured.calls[name])
        xc, xt = timing.median_ci(vs_copy[name], seed), timing.median_ci(vs_torch[name], seed)
        verdict = timing.Noise.of(xc if name != "copy" else xt, copy_cv, load, cores, others.cores)
        row.update(times=asdict(t), gbps=2 * nbytes / (t.p50_ms / 1e3) / 1e9, x_copy=xc[0], ci_low=xc[1],
                   ci_high=xc[2], x_torch=xt[0], x_torch_ci_low=xt[1], x_torch_ci_high=xt[2],
                   stable=verdict.stable, unstable_reason=verdict.reason,
                   implausible=timing.implausible(xc[0]) if name != "copy" else None,
                   rounds=rounds, batch=measured.batch[name])


def _fastest(rows: dict[str, dict]) -> str | None:
    """The variant with the lowest x copy among those whose validation ran and passed and whose timing is
    plausible, if its timing is stable; None otherwise (a slower form with a steadier timing is not the
    fastest, and a form not validated -- --no-validate, or a check that could not run -- is never called
    fastest)."""
    ok = [r for n, r in rows.items() if n not in ("copy", "torch") and r.get("x_copy") is not None
          and r.get("check") == "pass" and not r.get("implausible")]
    best = min(ok, key=lambda r: r["x_copy"]) if ok else None
    return best["form"] if best is not None and best.get("stable") else None
