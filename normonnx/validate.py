"""The validate engine: run a norm model on several runtimes and input suites, judge every output
against the float64 oracle, and report graph facts next to the numbers."""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import inputs as suites_mod
from .compare import compare, tolerance_for
from .errors import BadInput
from .export import DEFAULT_EXPORTER, DEFAULT_OPSET, DEFAULT_VARIANT, case_id, export_report
from .exporters import TORCH_DTYPES
from .graph import load_model, metadata, model_facts, opset_of
from .params import make_params, params_as
from .reference import normalized_stats, reference
from .runtimes import REGISTRY as RUNTIMES, SessionConfig, SessionError, available_runtimes, get_runtime, placement
from .spec import NormSpec, numpy_dtype
from .variants import NATIVE_OPS, get_variant


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
    status: str  # pass | fail | error | skipped
    passed: bool | None
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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ValidationReport:
    spec: NormSpec
    case_id: str
    source: str  # "export" or the user's file
    model: dict  # requested vs actual opset, op histogram
    runtimes: dict  # runtime -> facts (optimized ops, fusion, placement)
    results: list[Result] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        c = {"pass": 0, "fail": 0, "error": 0, "skipped": 0}
        for r in self.results:
            c[r.status] += 1
        return c

    @property
    def passed(self) -> bool:
        c = self.counts
        return c["fail"] == 0 and c["error"] == 0 and c["pass"] > 0

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status in ("fail", "error")]

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "spec_id": self.spec.id, "spec": self.spec.to_dict(), "source": self.source,
                "model": self.model, "runtimes": self.runtimes, "passed": self.passed, "counts": self.counts,
                "results": [r.to_dict() for r in self.results]}


# -- parameters of a model that normonnx did not write ------------------------------------------
def params_from_graph(model, spec: NormSpec) -> dict[str, np.ndarray]:
    """Read weight/bias (and running stats) from the model's single native norm node.

    Input order follows the ONNX op definitions: BatchNormalization(X, scale, B, mean, var),
    InstanceNormalization(X, scale, B), LayerNormalization(X, Scale, B), GroupNormalization(X, scale, bias)."""
    from onnx import numpy_helper

    if not spec.affine and not spec.track_running_stats:
        return {}  # nothing to read: the spec alone defines the function
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    nodes = [n for n in model.graph.node if n.op_type == NATIVE_OPS[spec.kind] or
             (spec.kind == "in" and spec.track_running_stats and n.op_type == "BatchNormalization")]
    if len(nodes) != 1:
        raise BadInput(f"cannot read {spec.kind} parameters from the graph: it holds {len(nodes)} "
                       f"{NATIVE_OPS[spec.kind]} nodes and no normonnx metadata; validate a normonnx export, "
                       "or a model with exactly one native norm node")
    node = nodes[0]
    names = ["weight", "bias", "running_mean", "running_var"] if node.op_type == "BatchNormalization" else ["weight", "bias"]
    out = {}
    for name, inp in zip(names, list(node.input)[1:]):
        if inp in consts:
            out[name] = consts[inp].astype(np.float32)
    if spec.kind == "gn" and opset_of(model) < 21 and "weight" in out and out["weight"].size == spec.groups:
        raise BadInput("GroupNormalization-18 with per-group scale: give the equivalent per-channel spec "
                       "(scale repeated C/G times) or re-export at opset 21")
    return out


def _model_spec(model, spec: NormSpec | None, path: Path) -> tuple[NormSpec, dict, str, str | None]:
    """(spec, params, variant, exporter) for a given file: normonnx metadata first, then the flags."""
    meta = metadata(model)
    if spec is None:
        if "spec" not in meta:
            raise BadInput(f"{path} has no normonnx metadata: give its spec with --norm/--shape/... flags")
        import json

        spec = NormSpec.from_dict(json.loads(meta["spec"]))
        return spec, make_params(spec), meta.get("variant", "native"), meta.get("exporter")
    if "spec" in meta:
        # flags given for a normonnx file: its parameters are still the seeded ones of that file's spec
        import json

        return spec, make_params(NormSpec.from_dict(json.loads(meta["spec"]))), meta.get("variant", "native"), \
            meta.get("exporter")
    return spec, params_from_graph(model, spec), "native", None


def _check_input_shape(model, spec: NormSpec, path) -> bool:
    """Raise BadInput if the model's input cannot take the spec's shape; return whether it is dynamic."""
    if len(model.graph.input) != 1:
        raise BadInput(f"{path} has {len(model.graph.input)} graph inputs; a norm model takes exactly one")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != len(spec.shape):
        raise BadInput(f"{path} takes a rank-{len(dims)} input but the spec's shape "
                       f"{'x'.join(map(str, spec.shape))} has rank {len(spec.shape)}")
    dynamic = False
    for i, (d, want) in enumerate(zip(dims, spec.shape)):
        if d.HasField("dim_value"):
            if d.dim_value != want:
                raise BadInput(f"{path} input dim {i} is {d.dim_value} but the spec's shape has {want}")
        else:
            dynamic = True
    return dynamic


def _graph_notes(model_ops: dict, optimized: dict | None, variant: str, kind: str, dtype: str) -> dict:
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


def _scale_broadcast(spec: NormSpec, params: dict, shape) -> np.ndarray | None:
    w = params.get("weight") if spec.affine else None
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float64)
    if spec.kind in ("ln", "rms"):
        return np.broadcast_to(w, shape)
    return np.broadcast_to(w.reshape((1, -1) + (1,) * (len(shape) - 2)), shape)


def validate(
    spec: NormSpec | None = None,
    *,
    variant: str = DEFAULT_VARIANT,
    opset: int = DEFAULT_OPSET,
    exporter: str = DEFAULT_EXPORTER,
    dynamic: bool = False,
    model: str | Path | None = None,
    runtimes: list[str] | None = None,
    inputs: list[str] | None = None,
    config: SessionConfig = SessionConfig(),
    atol: float | None = None,
    rtol: float | None = None,
    save_inputs: str | Path | None = None,
    skip_missing: bool = False,
    seed: int = 0,
    allow_mismatch: bool = False,
    workdir: str | Path | None = None,
    progress=None,
    cache=None,
    params: dict | None = None,
) -> ValidationReport:
    """Validate a spec (exported on the fly) or a model file against the float64 oracle.

    runtimes: names from normonnx.runtimes (default: every one available here). A requested runtime
    that is missing raises RuntimeUnavailable, or with skip_missing is recorded as skipped.
    cache: a normonnx.cache.ExportCache to serve every export (the main one and the suites' own)."""
    def do_export(s: NormSpec, out: Path) -> Path:
        if cache is not None:
            return cache.export(s, variant, opset, exporter, dynamic, None, allow_mismatch)
        return export_report(s, variant, opset, exporter, dynamic, out, allow_mismatch).path

    if spec is None and model is None:
        raise BadInput("give a spec (--norm ...) or a model file (--model FILE.onnx)")
    suites = suites_mod.get_suites(inputs)
    names = list(runtimes) if runtimes else available_runtimes()
    skipped_runtimes: dict[str, str] = {}
    for n in names:
        r = get_runtime(n)
        why = r.unavailable()
        if why:
            if runtimes and not skip_missing:
                from .errors import RuntimeUnavailable

                raise RuntimeUnavailable(f"runtime {n!r} is unavailable: {why} (pass --skip-missing to skip it)")
            skipped_runtimes[n] = why
    if not runtimes:  # default: what exists here, and say what does not
        for n, r in RUNTIMES.items():
            why = r.unavailable()
            if why and n not in skipped_runtimes:
                skipped_runtimes[n] = why
    active = [n for n in names if n not in skipped_runtimes]
    if save_inputs is not None:
        save_dir = Path(save_inputs)
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"cannot create --save-inputs folder {save_dir}: {e.strerror}") from None

    preopened: dict = {}  # runtime -> Session already opened on the main model
    tmp = tempfile.TemporaryDirectory(prefix="normonnx-validate-") if workdir is None else None
    work = Path(workdir or tmp.name)
    try:
        if model is not None:
            path = Path(model)
            m = load_model(path)
            if params is not None and spec is not None:  # the caller knows the parameters (normonnx scan)
                variant, exporter = "native", None
            else:
                spec, params, variant, exporter = _model_spec(m, spec, path)
            dynamic = _check_input_shape(m, spec, path)
            opset = opset_of(m)
            exporter = exporter or "unknown"
            cid = f"{spec.id}-{path.stem}"
            source = str(path)
            can_reexport = False
            # a given file that ORT cannot load is bad input; the session it takes is kept for the run
            try:
                preopened["cpu"] = get_runtime("cpu").open(path, config, None)
            except SessionError as e:
                raise BadInput(f"{path} cannot be loaded by ONNX Runtime: {e}") from None
        else:
            path = do_export(spec, work / "model.onnx")
            m = load_model(path)
            params = make_params(spec)
            cid = case_id(spec, variant, opset, exporter, dynamic)
            source = "export"
            can_reexport = True
        facts = model_facts(m)
        model_info = {"opset_requested": opset if source == "export" else None, "opset": facts["opset"],
                      "ops": facts["ops"], "variant": variant, "exporter": exporter, "dynamic": dynamic}
        tol = tolerance_for(spec.dtype, atol, rtol)
        report = ValidationReport(spec, cid, source, model_info, {})
        for n, why in skipped_runtimes.items():
            report.results.append(_row(cid, spec, variant, opset, exporter, n, "*", "skipped", None, tol,
                                       reason=f"runtime unavailable: {why}"))
        ctx = suites_mod.Context(spec, dynamic, can_reexport)
        sessions_by_model: dict[str, dict] = {}

        def sessions_for(s: NormSpec, model_path: Path) -> dict:
            key = str(model_path)
            if key not in sessions_by_model:
                module = get_variant(variant).build(s, make_params(s) if can_reexport else params) \
                    .to(TORCH_DTYPES[s.dtype]) if any(RUNTIMES[n].kind == "torch" for n in active) else None
                opened = {}
                for n in active:
                    if model_path == path and n in preopened:
                        opened[n] = preopened[n]
                        continue
                    try:
                        opened[n] = get_runtime(n).open(model_path, config, module)
                    except SessionError as e:
                        opened[n] = e
                sessions_by_model[key] = opened
            return sessions_by_model[key]

        total = sum(1 for _ in suites)
        for i, suite in enumerate(suites):
            if progress:
                progress(i, total, suite.name)
            why = suite.applies(ctx)
            if why:
                report.results.append(_row(cid, spec, variant, opset, exporter, "*", suite.name, "skipped", None, tol,
                                           reason=why))
                continue
            s_spec, s_path, s_params = spec, path, params
            if suite.derive_spec is not None:
                s_spec = suite.derive_spec(spec)
                refused = _torch_refuses(s_spec, variant, seed)
                if refused:
                    report.results.append(_row(cid, spec, variant, opset, exporter, "*", suite.name, "skipped", None,
                                               tol, reason=f"PyTorch itself refuses shape "
                                               f"{'x'.join(map(str, s_spec.shape))}: {refused}"))
                    continue
                try:
                    s_path = do_export(s_spec, work / f"{suite.name}.onnx")
                except Exception as e:
                    report.results.append(_row(cid, spec, variant, opset, exporter, "*", suite.name, "error", False,
                                               tol, error=f"export for {suite.name} failed: {e}"))
                    continue
                s_params = make_params(s_spec)
            sess = sessions_for(s_spec, s_path)
            mparams = params_as(s_params, numpy_dtype(spec.dtype) if spec.dtype != "bfloat16" else np.float32)
            if spec.dtype == "bfloat16":
                mparams = params_as(params_as(s_params, numpy_dtype("bfloat16")), np.float32)
            for sample in suites_mod.samples(suite, s_spec, seed):
                label = f"{suite.name}:{sample.name}"
                ref = reference(s_spec, mparams, sample.x)
                mag, std = normalized_stats(s_spec, mparams, sample.x)
                with np.errstate(invalid="ignore", divide="ignore"):
                    cond = mag / std
                scale = _scale_broadcast(s_spec, mparams, sample.x.shape)
                outputs: dict[str, np.ndarray] = {}
                torch_out = None
                for n in sorted(active, key=lambda r: RUNTIMES[r].kind != "torch"):  # torch first
                    se = sess[n]
                    if isinstance(se, Exception):
                        report.results.append(_row(cid, spec, variant, opset, exporter, n, label, "error", False,
                                                   tol, error=str(se)))
                        continue
                    try:
                        with np.errstate(all="ignore"):
                            y = se.run(sample.x)
                    except Exception as e:
                        from .runtimes import _first_line

                        report.results.append(_row(cid, spec, variant, opset, exporter, n, label, "error", False,
                                                   tol, error=f"{n} failed to run: {_first_line(e)}"))
                        continue
                    outputs[n] = y
                    if RUNTIMES[n].kind == "torch" and torch_out is None:
                        torch_out = np.asarray(y, dtype=np.float64)
                    c = compare(y, ref, spec.dtype, tol, cond, scale)
                    vs_torch = None
                    if torch_out is not None and RUNTIMES[n].kind != "torch" and torch_out.shape == np.shape(y):
                        with np.errstate(invalid="ignore"):
                            d = np.abs(np.asarray(y, dtype=np.float64) - torch_out)
                        d = d[np.isfinite(d)]
                        vs_torch = float(d.max()) if d.size else None
                    report.results.append(Result(
                        cid, spec.id, variant, opset, exporter, spec.dtype, n, label,
                        "pass" if c.passed else "fail", c.passed, c.max_abs_err, c.mean_abs_err, c.p99_abs_err,
                        c.max_rel_err, c.max_ulp, c.frac_outside, c.nonfinite_mismatch, c.max_cond,
                        list(c.worst_index) if c.worst_index is not None else None, c.worst_got,
                        c.worst_expected, c.worst_allowed, vs_torch, tol.atol, tol.rtol, c.reason))
                if save_inputs is not None:
                    np.savez(Path(save_inputs) / f"{cid}-{sample.name}.npz", x=sample.x.astype(np.float32)
                             if spec.dtype == "bfloat16" else sample.x, oracle=ref,
                             **{f"out_{k.replace('-', '_')}": np.asarray(v) for k, v in outputs.items()})
        # graph facts per runtime, from the main model's sessions
        main = sessions_by_model.get(str(path)) or sessions_for(spec, path)
        for n, se in main.items():
            if isinstance(se, Exception):
                report.runtimes[n] = {"error": str(se)}
                continue
            f = dict(se.facts)
            if "optimized_ops" in f:
                f.update(_graph_notes(facts["ops"], f.pop("optimized_ops"), variant, spec.kind, spec.dtype))
                if n == "cuda":
                    try:
                        x = suites_mod.samples(suites_mod.REGISTRY["normal"], spec, seed)[0].x
                        f["placement"] = placement(se, x)
                    except Exception as e:  # profiling is a nicety; never fail validation on it
                        f["placement"] = f"unavailable: {e}"
            report.runtimes[n] = f
        return report
    finally:
        if tmp is not None:
            tmp.cleanup()


def _torch_refuses(spec: NormSpec, variant: str, seed: int) -> str | None:
    """Why the source module cannot run a spec's shape in eager mode (e.g. InstanceNorm on 1x1), or None."""
    import torch

    from .runtimes import _first_line

    module = get_variant(variant).build(spec, make_params(spec))
    try:
        with torch.inference_mode():
            module(torch.zeros(spec.shape))
    except Exception as e:
        return f"{type(e).__name__}: {_first_line(e)}"
    return None


def _row(cid, spec, variant, opset, exporter, runtime, inputs, status, passed, tol, reason=None, error=None) -> Result:
    return Result(cid, spec.id, variant, opset, exporter, spec.dtype, runtime, inputs, status, passed,
                  atol=tol.atol, rtol=tol.rtol, reason=reason, error=error)
