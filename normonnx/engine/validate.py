"""The validate engine: run a norm model on several runtimes and input suites, judge every output
against the float64 oracle, and report graph facts next to the numbers.

In steps: `resolve_source` (a spec exported on the fly, or a model file with its spec and
parameters from normonnx's metadata or from the graph), `choose_runtimes`, `SuiteRunner.run` (every
suite's samples on every runtime, one Result per comparison), `runtime_facts` (what ORT did to the
graph). A check that could not run is a Result with status "not checked" and why ("internal error" when
normonnx's own code failed), never a "fail".
"""
from __future__ import annotations

import io
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import numpy as np

from ..core.compare import Comparison, Oracle, Tolerance, tolerance_for
from ..core.errors import (
    BadInput,
    ExitCode,
    NormonnxError,
    RuntimeUnavailable,
    first_line,
    need_torch,
    raised_by_normonnx,
)
from ..core.judge import FAIL, INTERNAL, NOT_CHECKED, PASS, SKIPPED, Verdict, internal_reason, judge, status_of
from ..core.params import make_params, params_as
from ..core.safeio import atomic_write
from ..core.spec import NormSpec, numpy_dtype
from ..core.tables import DTYPES, NATIVE_OPS, PROVIDERS, dtype_of_onnx
from ..exporting.export import ExportOptions, case_id, export_result
from ..exporting.variants import get_variant
from ..graph.graph import load_model, metadata, model_facts, opset_of
from . import inputs as suites_mod
from .inputs import CheckOptions
from .runtimes import REGISTRY as RUNTIMES
from .runtimes import (
    RunOptions,
    Session,
    SessionConfig,
    SessionError,
    available_runtimes,
    get_runtime,
    placement,
    resolve_names,
)


@dataclass(frozen=True)
class Result:
    """One runtime x input sample: flat and JSON-serialisable; failures are data, not exceptions."""

    case_id: str
    spec_id: str
    variant: str
    opset: int
    exporter: str
    dtype: str
    runtime: str
    inputs: str  # suite:sample, e.g. offset:offset-1e4
    status: str  # pass | fail (a finished comparison) | not checked (could not run) | internal error | skipped
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    p99_abs_err: float | None = None
    max_rel_err: float | None = None
    max_ulp: float | None = None
    frac_outside: float | None = None
    nonfinite_mismatch: int | None = None
    max_cond: float | None = None
    worst_index: list | None = None
    worst_got: float | None = None
    worst_expected: float | None = None
    worst_allowed: float | None = None
    vs_torch_max_abs: float | None = None
    atol: float | None = None
    rtol: float | None = None
    reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool | None:
        """True (pass), False (fail), None (anything else)."""
        return {PASS: True, FAIL: False}.get(self.status)

    def to_dict(self) -> dict:
        # "passed" (True/False/None) is kept beside "status" for documents read by older tools
        return {**asdict(self), "passed": self.ok}


@dataclass(frozen=True)
class CaseInfo:
    """The fields every Result of one validation shares."""

    case_id: str
    spec_id: str
    variant: str
    opset: int
    exporter: str
    dtype: str
    tol: Tolerance

    def result(self, runtime: str, inputs: str, status: str, *, comparison: Comparison | None = None, vs_torch: float | None = None, reason: str | None = None,
               error: str | None = None) -> Result:
        measured = comparison.to_dict() if comparison is not None else {}
        measured.pop("passed", None)
        if comparison is not None:
            reason = measured.pop("reason")
        return Result(self.case_id, self.spec_id, self.variant, self.opset, self.exporter, self.dtype, runtime,
                      inputs, status, **measured, vs_torch_max_abs=vs_torch, atol=self.tol.atol,
                      rtol=self.tol.rtol, reason=reason, error=error)


@dataclass
class ValidationResult:
    spec: NormSpec
    case_id: str
    source: str  # "export" or the user's file
    model: dict  # requested vs actual opset, op histogram
    runtimes: dict  # runtime -> facts (optimized ops, fusion, placement)
    results: list[Result] = field(default_factory=list)
    allow_not_checked: bool = False  # CheckOptions.allow_not_checked: PASS beside checks that could not run

    @property
    def verdict(self) -> Verdict:
        return judge((r.status for r in self.results), self.allow_not_checked)

    @property
    def counts(self) -> dict[str, int]:
        return self.verdict.counts()

    @property
    def exit_code(self) -> ExitCode:
        """1 if a comparison failed; 5 if normonnx itself failed on a check; 4 if nothing ran or a requested
        check could not run (unless allow_not_checked); else 0."""
        return self.verdict.exit_code

    def failures(self) -> list[Result]:
        """The checks that failed or could not run (an internal error among them), in order."""
        return [r for r in self.results if r.status in (FAIL, NOT_CHECKED, INTERNAL)]

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "spec_id": self.spec.id, "spec": self.spec.to_dict(), "source": self.source,
                "model": self.model, "runtimes": self.runtimes, "verdict": self.verdict.status,
                "passed": self.verdict.status == PASS, "exit_code": int(self.exit_code), "counts": self.counts,
                "results": [r.to_dict() for r in self.results]}


# the name before issue 35 ("report" is now only the HTML/Markdown report), kept for code that imports it
ValidationReport = ValidationResult


# -- step 1: the source ---------------------------------------------------------------------------
@dataclass
class Source:
    """What is validated: the model file, the spec and parameters it must compute, and how it came."""

    spec: NormSpec
    params: dict
    variant: str
    exporter: str
    opset: int
    opset_requested: int | None
    path: Path
    case_id: str
    label: str  # "export" or the user's file
    dynamic: bool
    can_reexport: bool  # a suite may export its own shape (a spec, not a user's file)
    ops: dict
    preopened: dict = field(default_factory=dict)  # runtime -> Session already opened on `path`


Exporter = Callable[[NormSpec, Path], Path]


def resolve_source(spec: NormSpec | None, model: str | Path | None, *, variant: str, opset: int, exporter: str,
                   dynamic: bool, params: dict | None, do_export: Exporter, work: Path,
                   config: SessionConfig, runtimes: tuple[str, ...] = ("cpu",)) -> Source:
    if model is None:
        assert spec is not None  # validate refuses neither a spec nor a model
        path = do_export(spec, work / "model.onnx")
        m = load_model(path)
        return Source(spec, make_params(spec), variant, exporter, opset_of(m), opset, path,
                      case_id(spec, variant, opset, exporter, dynamic), "export", dynamic, True, model_facts(m)["ops"])
    from ..graph.patterns import check_graph

    path = given = Path(model)
    m = load_model(path)
    check_graph(m)  # a malformed norm node or initializer is named here, before ORT's own message
    # a given file that ORT cannot load is bad input; the session it takes is kept for the run. Loaded
    # on the first ORT provider this run uses: com.microsoft GroupNorm has a CUDA kernel and no CPU one
    ort_used = [n for n in runtimes if n in PROVIDERS]
    preopened = {}
    if ort_used:
        try:
            preopened = {ort_used[0]: get_runtime(ort_used[0]).open(path, config, None)}
        except SessionError as e:
            raise BadInput(f"{path} cannot be loaded by ONNX Runtime: {e}") from None
    meta = metadata(m)
    if params is not None and spec is not None:  # the caller knows the parameters (normonnx scan)
        variant, exp = "native", None
    elif "spec" in meta:
        # normonnx's own file: its parameters are the seeded ones of the spec in its metadata
        try:
            file_spec = NormSpec.from_dict(json.loads(meta["spec"]))
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            raise BadInput(f"{path}: normonnx metadata 'spec' is not a valid spec ({e})") from None
        spec = spec or file_spec
        params, variant, exp = make_params(file_spec), meta.get("variant", "native"), meta.get("exporter")
    elif spec is not None and not spec.affine and not spec.track_running_stats:
        params, variant, exp = {}, "native", None  # nothing to read: the spec alone defines the function
    else:
        from ..graph.derive import params_from_model
        from ..graph.shapes import infer_shapes
        from .probe import find_layers

        inferred = infer_shapes(load_model(path))
        found, graph_spec, params = params_from_model(inferred, find_layers(inferred, path.parent)[0])
        spec, variant, exp = spec or graph_spec, "native", None
        if found.derived is not None and (found.layout is not None or found.notes or
                                          dtype_of_onnx(m.graph.input[0].type.tensor_type.elem_type) != found.dtype):
            # written over another layout or precision (or between Q/DQ pairs): validated as the probe measured it
            from ..core.safeio import atomic_write
            from ..graph.cutout import wrap

            m = wrap(m, found)
            path = work / f"{path.stem}.measured.onnx"
            atomic_write(path, m.SerializeToString(), "measured model")
            preopened = {}
    dynamic = _check_input(m, spec, path, _variant_or_native(variant).model_shape(spec.shape))
    return Source(spec, params, variant, exp or "unknown", opset_of(m), None, path, f"{spec.id}-{given.stem}",
                  str(given), dynamic, False, model_facts(m)["ops"], preopened)


def _variant_or_native(name: str):
    from ..exporting.variants import REGISTRY

    return REGISTRY.get(name) or REGISTRY["native"]


def _check_input(model, spec: NormSpec, path, shape: tuple[int, ...]) -> bool:
    """Raise BadInput if the model's input cannot take `shape` (the spec's, in the variant's layout) and
    the spec's dtype; return whether it is dynamic."""
    if len(model.graph.input) != 1:
        raise BadInput(f"{path} has {len(model.graph.input)} graph inputs; a norm model takes exactly one")
    tt = model.graph.input[0].type.tensor_type
    dt = dtype_of_onnx(tt.elem_type)
    if dt != spec.dtype:
        raise BadInput(f"{path} takes {dt or 'an unknown type'} input but the spec says {spec.dtype}"
                       + ("" if dt in DTYPES else f": normonnx checks {', '.join(DTYPES)} norms"))
    dims = tt.shape.dim
    if len(dims) != len(shape):
        raise BadInput(f"{path} takes a rank-{len(dims)} input but the spec's shape "
                       f"{'x'.join(map(str, shape))} has rank {len(shape)}")
    dynamic = False
    for i, (d, want) in enumerate(zip(dims, shape, strict=False)):
        if d.HasField("dim_value"):
            if d.dim_value != want:
                raise BadInput(f"{path} input dim {i} is {d.dim_value} but the spec's shape has {want}")
        else:
            dynamic = True
    return dynamic


# -- step 2: the runtimes -------------------------------------------------------------------------
def choose_runtimes(runtimes: Sequence[str] | None, skip_missing: bool) -> tuple[list[str], dict[str, str]]:
    """(runtimes to run, {runtime: why skipped}). Default: every runtime available here, and the
    others listed as skipped with why. A requested missing one is RuntimeUnavailable unless skip_missing."""
    runtimes = resolve_names(runtimes)  # "all": every ONNX runtime available here
    names = list(dict.fromkeys(runtimes)) if runtimes else available_runtimes(defaults_only=True)
    skipped: dict[str, str] = {}
    for n in names:
        why = get_runtime(n).unavailable()
        if why:
            if runtimes and not skip_missing:
                raise RuntimeUnavailable(f"runtime {n!r} is unavailable: {why} (pass --skip-missing to skip it)")
            skipped[n] = why
    if not runtimes:
        for n, r in RUNTIMES.items():
            if n not in skipped and n not in names and r.default:  # an opt-in runtime (openvino) is no default's
                skipped[n] = r.unavailable() or "not requested"
    return [n for n in names if n not in skipped], skipped


# -- step 3: the suites ---------------------------------------------------------------------------
class SuiteRunner:
    """Every suite's samples on every active runtime; sessions opened once per model file."""

    def __init__(self, src: Source, active: list[str], config: SessionConfig, info: CaseInfo, seed: int,
                 do_export: Exporter, work: Path, save_inputs: Path | None):
        self.src, self.active, self.config, self.info, self.seed = src, active, config, info, seed
        self.do_export, self.work, self.save_inputs = do_export, work, save_inputs
        self.sessions: dict[str, dict[str, Session | Exception]] = {}
        self.variant = _variant_or_native(src.variant)

    def sessions_for(self, spec: NormSpec, model_path: Path) -> dict:
        key = str(model_path)
        if key not in self.sessions:
            src = self.src
            module = None
            if any(RUNTIMES[n].kind == "torch" for n in self.active):
                module = get_variant(src.variant).build(spec, make_params(spec) if src.can_reexport else src.params) \
                    .to(DTYPES[spec.dtype].torch)
            opened: dict = {}
            for n in self.active:
                if self.variant.unsupported_on(n):
                    continue  # reported per sample as skipped, with why
                if model_path == src.path and n in src.preopened:
                    opened[n] = src.preopened[n]
                    continue
                try:
                    opened[n] = get_runtime(n).open(model_path, self.config, module)
                except Exception as e:  # reported on each of its samples: not checked, or internal error
                    opened[n] = e
            self.sessions[key] = opened
        return self.sessions[key]

    def run(self, suites: list, progress=None) -> list[Result]:
        out: list[Result] = []
        ctx = suites_mod.Context(self.src.spec, self.src.dynamic, self.src.can_reexport)
        for i, suite in enumerate(suites):
            if progress:
                progress(i, len(suites), suite.name)
            why = suite.applies(ctx)
            if why:
                out.append(self.info.result("*", suite.name, SKIPPED, reason=why))
                continue
            out += self._run_suite(suite)
        return out

    def _run_suite(self, suite) -> list[Result]:
        src, info = self.src, self.info
        s_spec, s_path, s_params = src.spec, src.path, src.params
        if suite.derive_spec is not None:
            got = self._export_for(suite.name, suite.derive_spec(src.spec))
            if isinstance(got, Result):
                return [got]
            s_spec, s_path, s_params = got
        out = self._run_samples(suite, s_spec, s_path, s_params, "")
        big = suites_mod.large_spec(s_spec) if suite.large else None
        if big is not None:
            # the same suite at a realistic normalization-set size (see inputs.large_spec)
            label = f"{suite.name}-large"
            if not src.can_reexport:
                out.append(info.result("*", label, SKIPPED, reason="the large-size run needs its own export; not "
                                                                      "available for a given model file"))
            else:
                got = self._export_for(label, big)
                out += [got] if isinstance(got, Result) else self._run_samples(suite, *got, "-large")
        return out

    def _export_for(self, label: str, s_spec: NormSpec) -> Result | tuple[NormSpec, Path, dict]:
        """(spec, model path, params) for a suite that runs at its own shape, or the Result saying why not;
        one export per shape (constant, offset and wide share the large one)."""
        info, src = self.info, self.src
        refused = _torch_refuses(s_spec, src.variant)
        if refused:
            return info.result("*", label, SKIPPED, reason=f"PyTorch itself refuses shape "
                                                             f"{'x'.join(map(str, s_spec.shape))}: {refused}")
        memo = self.__dict__.setdefault("_exports", {})
        if s_spec.id not in memo:
            try:
                memo[s_spec.id] = self.do_export(s_spec, self.work / f"{label}-{s_spec.id}.onnx")
            except Exception as e:
                memo[s_spec.id] = e
        got = memo[s_spec.id]
        if isinstance(got, NormonnxError):  # the exporter refused this shape: the suite is not checked
            return info.result("*", label, NOT_CHECKED, error=f"export for {label} failed: {got}")
        if isinstance(got, Exception):  # normonnx's own export code failed: exit 5, as export would say
            return info.result("*", label, INTERNAL, error=f"export for {label}: {internal_reason(got)}")
        return s_spec, got, make_params(s_spec)

    def _run_samples(self, suite, s_spec: NormSpec, s_path: Path, s_params: dict, tag: str) -> list[Result]:
        src, info = self.src, self.info
        sess = self.sessions_for(s_spec, s_path)
        # the oracle takes the parameters as the model stores them: rounded to its dtype
        # cast: params_as's astype takes any dtype-like, a scalar type too
        mparams = params_as(params_as(s_params, numpy_dtype(src.spec.dtype)), cast(np.dtype, np.float32))
        out = []
        for sample in suites_mod.samples(suite, s_spec, self.seed):
            label = f"{suite.name}:{sample.name}{tag}"
            oracle = Oracle.of(s_spec, mparams, sample.x)
            outputs: dict[str, np.ndarray] = {}
            torch_out = None
            for n in sorted(self.active, key=lambda r: RUNTIMES[r].kind != "torch"):  # torch first
                cannot = RUNTIMES[n].unsupported_dtypes.get(src.spec.dtype) or self.variant.unsupported_on(n)
                if cannot:
                    out.append(info.result(n, label, SKIPPED, reason=cannot))
                    continue
                se = sess[n]
                if isinstance(se, Exception):
                    out.append(_unopened(info, n, label, se))
                    continue
                try:
                    with np.errstate(all="ignore"):
                        y = self.variant.from_model(se.run(self.variant.to_model(sample.x)))
                except Exception as e:  # the runtime's own failure: not checked; normonnx's: internal
                    # (a SessionError is a runtime's refusal said by normonnx's wrapper, e.g. a compile per shape)
                    out.append(info.result(n, label, NOT_CHECKED, error=str(e)) if isinstance(e, SessionError) else
                               info.result(n, label, INTERNAL, error=f"{n}: {internal_reason(e)}")
                               if raised_by_normonnx(e) else
                               info.result(n, label, NOT_CHECKED, error=f"{n} failed to run: {first_line(e)}"))
                    continue
                outputs[n] = y
                if RUNTIMES[n].kind == "torch" and torch_out is None:
                    torch_out = np.asarray(y, dtype=np.float64)
                c = oracle.compare(y, src.spec.dtype, info.tol)
                out.append(info.result(n, label, status_of(c.passed), comparison=c,
                                       vs_torch=_vs_torch(torch_out, y) if RUNTIMES[n].kind != "torch" else None))
            if self.save_inputs is not None:
                buf = io.BytesIO()
                # Any: savez's ** would also reach its allow_pickle keyword
                arrays: dict[str, Any] = {f"out_{k.replace('-', '_')}": np.asarray(v) for k, v in outputs.items()}
                np.savez(buf, x=sample.x.astype(np.float32) if src.spec.dtype == "bfloat16" else sample.x,
                         oracle=oracle.expected, **arrays)
                atomic_write(self.save_inputs / f"{info.case_id}-{sample.name}{tag}.npz", buf.getvalue(),
                             "--save-inputs file")
        return out


def _unopened(info: CaseInfo, runtime: str, label: str, e: Exception) -> Result:
    """A sample on a runtime whose session could not be opened: the runtime's refusal (SessionError, or
    its library's own exception) is not checked; an exception of normonnx's own code is an internal error."""
    if not isinstance(e, SessionError) and raised_by_normonnx(e):
        return info.result(runtime, label, INTERNAL, error=f"{runtime}: {internal_reason(e)}")
    return info.result(runtime, label, NOT_CHECKED, error=str(e) if isinstance(e, SessionError) else
                       f"{runtime} cannot load the model: {first_line(e)}")


def _vs_torch(torch_out: np.ndarray | None, y: np.ndarray) -> float | None:
    if torch_out is None or torch_out.shape != np.shape(y):
        return None
    with np.errstate(invalid="ignore"):
        d = np.abs(np.asarray(y, dtype=np.float64) - torch_out)
    d = d[np.isfinite(d)]
    return float(d.max()) if d.size else None


def _torch_refuses(spec: NormSpec, variant: str) -> str | None:
    """Why the source module cannot run a spec's shape in eager mode (e.g. InstanceNorm on 1x1), or None."""
    torch = need_torch("an input suite at its own shape")

    v = get_variant(variant)
    module = v.build(spec, make_params(spec))
    try:
        with torch.inference_mode():
            module(torch.zeros(v.model_shape(spec.shape)))
    except Exception as e:
        return f"{type(e).__name__}: {first_line(e)}"
    return None


# -- step 4: graph facts --------------------------------------------------------------------------
def _graph_notes(model_ops: dict, optimized: dict | None, kind: str, dtype: str) -> dict:
    """What ORT did to the graph: fused a decomposed norm, inlined a function op, inserted Casts."""
    if optimized is None:
        return {"optimized_ops": None}
    notes: dict = {"optimized_ops": optimized}
    native = NATIVE_OPS[kind]
    # a norm op that ORT's optimizer created (e.g. LayerNormFusion re-fusing ReduceMean..Div)
    created = sorted(o for o in optimized if (o.endswith("Normalization") or o.endswith("GroupNorm"))
                     and o not in model_ops)
    notes["fused"] = created or None
    if native in model_ops and not any(o.endswith(native) for o in optimized):
        notes["inlined"] = f"{native} was expanded into its ONNX function body ({', '.join(sorted(optimized))})"
    added = optimized.get("Cast", 0) - model_ops.get("Cast", 0)
    if added > 0 and dtype != "float32" and "inlined" not in notes:
        notes["casts_inserted"] = added
    return notes


def runtime_facts(runner: SuiteRunner, seed: int) -> dict:
    src = runner.src
    facts = {}
    for n, se in runner.sessions_for(src.spec, src.path).items():
        if isinstance(se, Exception):
            facts[n] = {"error": str(se)}
            continue
        f = dict(se.facts)
        if "optimized_ops" in f:
            f.update(_graph_notes(src.ops, f.pop("optimized_ops"), src.spec.kind, src.spec.dtype))
            if n == "cuda":
                try:
                    x = suites_mod.samples(suites_mod.REGISTRY["normal"], src.spec, seed)[0].x
                    f["placement"] = placement(se, runner.variant.to_model(x))
                except Exception as e:  # profiling is a nicety; never fail validation on it
                    f["placement"] = f"unavailable: {first_line(e)}"
        facts[n] = f
    for n in runner.active:
        why = runner.variant.unsupported_on(n)
        if why:
            facts[n] = {"unsupported": why}
    return facts


# -- the engine -----------------------------------------------------------------------------------
def _save_dir(save_inputs) -> Path | None:
    """--save-inputs' folder, made here (BadInput when it cannot be)."""
    if save_inputs is None:
        return None
    save_dir = Path(save_inputs)
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot create --save-inputs folder {save_dir}: {e.strerror}") from None
    return save_dir


def validate(
    spec: NormSpec | None = None,
    *,
    model: str | Path | None = None,
    params: dict | None = None,
    export: ExportOptions = ExportOptions(),
    run: RunOptions = RunOptions(),
    check: CheckOptions = CheckOptions(),
    workdir: str | Path | None = None,
    progress=None,
    cache=None,
) -> ValidationResult:
    """Validate a spec (exported on the fly as `export` says) or a model file against the float64 oracle,
    on the runtimes `run` names (see RunOptions; a missing one raises RuntimeUnavailable unless
    skip_missing), with the suites, tolerance and seed `check` names.

    params: the layer's parameters when the caller knows them (scan's cut-out layers).
    cache: a normonnx.exporting.cache.ExportCache to serve every export (the main one and the suites' own)."""
    if spec is None and model is None:
        raise BadInput("give a spec (--norm ...) or a model file (--model FILE.onnx)")
    if not isinstance(check.seed, int) or check.seed < 0:
        raise BadInput(f"--seed {check.seed}: give an integer >= 0")
    suites = suites_mod.get_suites(check.inputs)
    if model is None:  # a spec is exported from PyTorch first: without torch, exit 3 before any work
        from ..exporting.exporters import get_exporter

        get_exporter(export.exporter).require("validate --norm", "validate --model FILE.onnx needs no torch")
    active, skipped = choose_runtimes(run.runtimes, run.skip_missing)
    tolerance_for(spec.dtype if spec else "float32", check.atol, check.rtol)  # bad tolerances fail before any work
    save_dir = _save_dir(check.save_inputs)
    x = export

    def do_export(s: NormSpec, out: Path) -> Path:
        if cache is not None:
            return cache.export(s, x.variant, x.opset, x.exporter, x.dynamic, None, x.allow_mismatch)
        return export_result(s, x.variant, x.opset, x.exporter, x.dynamic, out, x.allow_mismatch).path

    with tempfile.TemporaryDirectory(prefix="normonnx-validate-") as tmp:
        work = Path(workdir or tmp)
        src = resolve_source(spec, model, variant=x.variant, opset=x.opset, exporter=x.exporter, dynamic=x.dynamic,
                             params=params, do_export=do_export, work=work, config=run.config,
                             runtimes=tuple(active) if model is not None else ())
        tol = tolerance_for(src.spec.dtype, check.atol, check.rtol)
        info = CaseInfo(src.case_id, src.spec.id, src.variant, src.opset_requested or src.opset, src.exporter,
                        src.spec.dtype, tol)
        model_info = {"opset_requested": src.opset_requested, "opset": src.opset, "ops": src.ops,
                      "variant": src.variant, "exporter": src.exporter, "dynamic": src.dynamic}
        result = ValidationResult(src.spec, src.case_id, src.label, model_info, {})
        result.allow_not_checked = check.allow_not_checked
        result.results += [info.result(n, "*", SKIPPED, reason=f"runtime unavailable: {why}")
                           for n, why in skipped.items()]
        runner = SuiteRunner(src, active, run.config, info, check.seed, do_export, work, save_dir)
        result.results += runner.run(suites, progress)
        result.runtimes = runtime_facts(runner, check.seed)
        return result
