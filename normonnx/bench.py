"""Latency of each exported graph form on ORT, side by side with PyTorch eager and with a plain copy
of the same tensor (the memory-bandwidth floor for a norm: it must read x once and write y once).

Inputs and outputs are bound once with IOBinding on the provider's device, so the timed region is
the session's run alone: no host<->device copy, no output allocation.
"""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BadInput, NormonnxError, RuntimeUnavailable
from .export import DEFAULT_EXPORTER, export_report
from .params import make_params
from .runtimes import SessionConfig, get_runtime, session_options
from .spec import NormSpec
from .tables import DTYPES, PROVIDERS
from .variants import get_variant, variants_for

# the standard shapes: what the benchmark suite runs and what `normonnx bench` uses by default
BENCH_SHAPES = {"ln": (8, 512, 768), "gn": (8, 320, 64, 64), "in": (8, 64, 128, 128), "bn": (32, 64, 56, 56),
                "rms": (8, 512, 768)}
# a few hundred KB: where per-call overhead, not memory bandwidth, decides
SMALL_SHAPES = {"ln": (1, 64, 768), "gn": (1, 64, 32, 32), "in": (1, 16, 32, 32), "bn": (1, 64, 28, 28),
                "rms": (1, 64, 768)}
BENCH_GROUPS = 32
DEVICES = {"cpu": "cpu", "cuda": "cuda"}


def bench_spec(kind: str, dtype: str = "float32", **overrides) -> NormSpec:
    """The standard benchmark spec of a norm (GN with 32 groups), with CLI overrides applied."""
    shape = overrides.pop("shape", None) or BENCH_SHAPES[kind]
    groups = overrides.pop("groups", None) or (BENCH_GROUPS if kind == "gn" else None)
    return NormSpec.make(kind, shape=shape, groups=groups, dtype=dtype, **overrides)


@dataclass(frozen=True)
class Timing:
    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float


def measure(fn: Callable[[], object], sync: Callable[[], object], warmup: int, min_time: float,
            min_runs: int = 10, max_runs: int = 100_000) -> Timing:
    """Warm up, then time fn()+sync() one call at a time until min_time seconds and min_runs calls."""
    for _ in range(warmup):
        fn()
        sync()
    times: list[int] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_time):
        t0 = time.perf_counter_ns()
        fn()
        sync()
        times.append(time.perf_counter_ns() - t0)
    ms = np.asarray(times, dtype=np.float64) / 1e6
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
    x_copy: float | None = None  # p50 / copy's p50, same run
    x_torch: float | None = None  # p50 / torch's p50, same run
    passed: bool | None = None  # validation on the `normal` inputs, same provider
    validation: str | None = None
    io_binding: bool = False
    ort_provider: str | None = None  # what the session actually used
    opt_level: str | None = None
    threads: int | str | None = None
    fastest: bool = False  # the fastest variant that also passed validation
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchReport:
    spec: NormSpec
    records: list[BenchRecord] = field(default_factory=list)
    machine: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"spec_id": self.spec.id, "spec": self.spec.to_dict(), "machine": self.machine,
                "records": [r.to_dict() for r in self.records]}


def machine_info() -> dict:
    import onnxruntime as ort
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
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
    providers: list[str] | None = None,
    *,
    opset: int = 21,
    exporter: str = DEFAULT_EXPORTER,
    warmup: int = 5,
    min_time: float = 1.0,
    min_runs: int = 10,
    threads: int | None = None,
    opt_level: str = "all",
    validate_first: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time every variant of `spec` on each provider next to torch eager and a copy, in one run."""
    import onnxruntime as ort
    import torch

    from .validate import validate

    if spec.dtype == "bfloat16":
        raise BadInput("bench times float32 and float16: ORT's IOBinding has no numpy bfloat16 type")
    if warmup < 0 or min_time < 0 or min_runs < 1:
        raise BadInput("bench needs --warmup >= 0, --min-time >= 0 and at least one run")
    variants = variants or variants_for(spec.kind)
    for v in variants:
        get_variant(v).check(spec, opset)
    providers = providers or ["cpu"]
    for p in providers:
        if p not in DEVICES:
            raise BadInput(f"unknown provider {p!r}: valid providers are {', '.join(DEVICES)}")
        why = get_runtime(p).unavailable()
        if why:
            raise RuntimeUnavailable(f"provider {p!r} is unavailable: {why}")
    config = SessionConfig(opt_level, threads)
    if threads:
        torch.set_num_threads(threads)
    report = BenchReport(spec, machine=machine_info())
    report.machine["threads"] = threads or "default"
    say = progress or (lambda s: None)
    nbytes = int(np.prod(spec.shape)) * DTYPES[spec.dtype].itemsize
    dt = DTYPES[spec.dtype].torch
    base = dict(spec_id=spec.id, norm=spec.kind, dtype=spec.dtype, shape="x".join(map(str, spec.shape)))
    with tempfile.TemporaryDirectory(prefix="normonnx-bench-") as tmp:
        models = {}
        for v in variants:
            say(f"export {v}")
            try:
                models[v] = export_report(spec, v, opset, exporter, output=Path(tmp) / f"{v}.onnx").path
            except NormonnxError as e:
                models[v] = e
        for p in providers:
            device = DEVICES[p]
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(spec.shape, generator=gen).to(dt).to(device)
            y = torch.empty_like(x)
            rows: list[dict] = []
            say(f"{p}: copy")
            copy_t = measure(lambda: y.copy_(x), sync, warmup, min_time, min_runs)
            rows.append(dict(form="copy", opset=None, exporter=None, timing=copy_t))
            say(f"{p}: torch")
            module = get_variant("native").build(spec, make_params(spec)).to(dt).to(device)
            with torch.inference_mode():
                torch_t = measure(lambda: module(x), sync, warmup, min_time, min_runs)
            rows.append(dict(form="torch", opset=None, exporter=None, timing=torch_t))
            for v in variants:
                row = dict(form=v, opset=opset, exporter=exporter)
                rows.append(row)
                if isinstance(models[v], Exception):
                    row["error"] = str(models[v])
                    continue
                if validate_first:
                    say(f"{p}: validate {v}")
                    rep = validate(model=models[v], runtimes=[p], inputs=["normal"], config=config)
                    row["passed"] = rep.passed
                    bad = rep.failures()
                    row["validation"] = "pass" if rep.passed else (bad[0].reason or bad[0].error if bad else "no result")
                say(f"{p}: time {v}")
                try:
                    sess = ort.InferenceSession(str(models[v]), session_options(config),
                                                providers=[PROVIDERS[p]])
                    io = _bind(sess, x, y, device)
                    row["timing"] = measure(lambda: sess.run_with_iobinding(io), sync, warmup, min_time, min_runs)
                    row["ort_provider"] = sess.get_providers()[0]
                    row["io_binding"] = True
                except Exception as e:
                    from .runtimes import first_line

                    row["error"] = f"ORT {p} cannot run {v}: {first_line(e)}"
            ok = [r for r in rows if r["form"] not in ("copy", "torch") and r.get("timing") and r.get("passed") is not False]
            fastest = min(ok, key=lambda r: r["timing"].p50_ms)["form"] if ok else None
            for r in rows:
                t = r.pop("timing", None)
                times = asdict(t) if t else {}
                report.records.append(BenchRecord(
                    **base, provider=p, **{k: r.get(k) for k in ("form", "opset", "exporter")}, **times,
                    gbps=(2 * nbytes / (t.p50_ms / 1e3) / 1e9) if t else None,
                    x_copy=(t.p50_ms / copy_t.p50_ms) if t else None,
                    x_torch=(t.p50_ms / torch_t.p50_ms) if t else None,
                    passed=r.get("passed"), validation=r.get("validation"), io_binding=r.get("io_binding", False),
                    ort_provider=r.get("ort_provider"), opt_level=opt_level if r["form"] not in ("copy", "torch") else None,
                    threads=threads or "default", fastest=r["form"] == fastest, error=r.get("error")))
    return report
