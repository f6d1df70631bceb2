"""The validate engine on layers cut out of a user's model: one layer (`validate_layer`, a summary
row, never an exception), memoized on the cut-out's bytes (`validate_cached`), or many in worker
processes (`validate_in_parallel`). scan --validate, fix's proof and the written model's check all
judge a layer here, so they agree."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import onnx

from ..core.errors import NormonnxError
from ..core.judge import FAIL, INTERNAL, NOT_CHECKED, PASS, internal_reason, judge
from ..graph.cutout import DRAWN
from ..graph.derive import derive_spec
from ..graph.patterns import FoundNorm
from . import inputs as suites
from .inputs import CheckOptions
from .runtimes import RunOptions, SessionConfig, require, resolve_names
from .validate import validate


@dataclass(frozen=True)
class LayerVerdict:
    """One layer's verdict as scan --validate reports it (normonnx.core.judge's words): pass or fail only from
    a finished comparison, "not checked" when the layer could not be checked, "internal error" when
    normonnx itself failed on it; `validation` says which input failed and why, or why it was not checked
    (with several runtimes, on which). by_runtime: each runtime's own verdict (runtime_verdicts); runtime_facts:
    what each runtime ran, in which precision (runtime_facts)."""

    status: str
    validation: str
    spec_id: str | None = None
    counts: dict | None = None
    parameters_drawn: tuple[str, ...] = ()
    by_runtime: dict | None = None
    runtime_facts: dict | None = None

    @classmethod
    def not_checked(cls, why: str) -> "LayerVerdict":
        return cls(NOT_CHECKED, f"not checked: {why}")

    @classmethod
    def internal(cls, e: BaseException) -> "LayerVerdict":
        return cls(INTERNAL, f"not checked: {internal_reason(e)}")

    @property
    def ok(self) -> bool | None:
        return {PASS: True, FAIL: False}.get(self.status)

    def to_dict(self) -> dict:
        # "passed" (True/False/None) is kept beside "status" for documents read by older tools
        out: dict[str, Any] = {"status": self.status, "passed": self.ok, "validation": self.validation}
        if self.spec_id is not None:
            out.update(spec_id=self.spec_id, counts=self.counts)
        if self.parameters_drawn:
            out["parameters_drawn"] = list(self.parameters_drawn)
        if self.by_runtime is not None:
            out["by_runtime"] = self.by_runtime
        if self.runtime_facts is not None:
            out["runtime_facts"] = self.runtime_facts
        return out

    def failing_on(self) -> list[str]:
        """The runtimes on which the layer failed a check, in the order they ran."""
        return [rt for rt, d in (self.by_runtime or {}).items() if d["status"] == FAIL]


def check_runtime_request(runtimes: list[str] | None, inputs: list[str] | None) -> list[str]:
    """Names checked before any work: an unknown name is BadInput (exit 2), a missing runtime
    RuntimeUnavailable (exit 3). Returns the runtimes to use (default: ORT CPU)."""
    suites.get_suites(inputs)
    # "all": every ONNX runtime available here; resolve_names answers None only for None
    names = list(cast(tuple[str, ...], resolve_names(runtimes))) if runtimes else ["cpu"]
    for n in names:
        require(n)
    return names


def validate_in_parallel(norms, layers: dict, runtimes, inputs, jobs: int, progress) -> dict[int, LayerVerdict]:
    """validate_layer over worker processes (normonnx.engine.pool). A worker that dies makes its layers
    "not validated", never a verdict."""
    from concurrent.futures.process import BrokenProcessPool

    from .pool import run_parallel

    out: dict[int, LayerVerdict] = {}

    def done(i, result):
        if progress:
            progress(len(out), len(layers), norms[i])
        out[i] = result

    def failed(i, e):  # the worker died or raised: normonnx's failure, never a verdict on the layer
        done(i, LayerVerdict.internal(e))

    try:
        run_parallel(((i, validate_layer, (norms[i], layer, runtimes, inputs, 1)) for i, layer in layers.items()),
                     jobs, done, failed)
    except BrokenProcessPool as e:
        for i in layers:
            if i not in out:
                failed(i, e)
    return out


def layer_key(path: Path, runtimes, inputs) -> str:
    """What a layer's validation depends on: the cut-out layer's bytes, the runtimes and the suites."""
    return hashlib.sha256(path.read_bytes()).hexdigest() + repr((tuple(runtimes), tuple(inputs or ())))


def validate_cached(f: FoundNorm, path: Path, runtimes, inputs, memo: dict) -> LayerVerdict:
    """validate_layer, memoized on layer_key (an unchanged layer of a fixed model is not validated twice)."""
    key = layer_key(path, runtimes, inputs)
    if key not in memo:
        memo[key] = validate_layer(f, path, list(runtimes), inputs)
    return memo[key]


def run_layer(f: FoundNorm, layer_path: Path, runtimes: list[str] | None, inputs: list[str] | None,
              threads: int | None = None):
    """The validate engine on one extracted layer: its ValidationResult. BadInput when the layer
    cannot be read as the norm it claims to be."""
    m = onnx.load(str(layer_path))
    spec, params = derive_spec(f, m)
    # the shape may hold stand-ins for symbolic dims: fix them in the layer so shapes line up
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, spec.shape, strict=False):
        if not d.HasField("dim_value"):
            d.dim_value = v
    onnx.save(m, str(layer_path))
    return validate(spec, model=layer_path, params=params,
                    run=RunOptions(tuple(runtimes or ["cpu"]), config=SessionConfig(threads=threads)),
                    check=CheckOptions(tuple(inputs) if inputs is not None else None))


def validate_layer(f: FoundNorm, layer_path: Path, runtimes: list[str] | None, inputs: list[str] | None,
                   threads: int | None = None) -> LayerVerdict:
    """Run the validate engine on one extracted layer; its LayerVerdict, never an exception. Only a
    finished comparison can say FAIL: a layer normonnx could not check is "not validated", why given."""
    try:
        rep = run_layer(f, layer_path, runtimes, inputs, threads)
    except NormonnxError as e:  # the layer cannot be read as the norm it claims to be, or a runtime refused
        return LayerVerdict.not_checked(str(e))
    except Exception as e:  # normonnx's own failure: never a verdict on the user's model (exit 5)
        return LayerVerdict.internal(e)
    out = summarize(f, rep)
    drawn = {p.key: p.value for p in onnx.load(str(layer_path), load_external_data=False).metadata_props}.get(DRAWN)
    if drawn:
        out = replace(out, validation=out.validation + f" (parameters drawn: {drawn.replace(',', ', ')} fed as "
                                                        "graph input)", parameters_drawn=tuple(drawn.split(",")))
    return out


# what a session's facts say about the arithmetic (normonnx.engine.runtimes.Session): shown beside every verdict
FACT_KEYS = ("version", "precision", "ran_as")


def _worst(fails) -> tuple[str, float | None]:
    r = max(fails, key=lambda r: (r.nonfinite_mismatch or 0, r.max_abs_err or 0.0))
    return f"{r.inputs}: {'non-finite' if r.nonfinite_mismatch else f'{r.max_abs_err:.2g}'}", r.max_abs_err


def runtime_verdicts(rep) -> dict[str, dict]:
    """Each runtime's own verdict on one ValidationResult, in the order they ran: status (the judge's over
    that runtime's checks), failed (how many of them failed), counts, validation (its first failing check
    with why, or why it was not checked, or "pass"), and for a failure worst (the worst check and its error)
    and max_abs_err. Checks that belong to no runtime (a suite skipped for the model) are left out."""
    by = defaultdict(list)
    for r in rep.results:
        if r.runtime != "*":
            by[r.runtime].append(r)
    out = {}
    for rt, rs in by.items():
        v = judge(r.status for r in rs)
        d = {"status": v.status, "failed": v.failed, "counts": v.counts()}
        fails = [r for r in rs if r.status == FAIL]
        if fails:
            d["validation"] = f"{fails[0].inputs}: {fails[0].reason}"
            d["worst"], d["max_abs_err"] = _worst(fails)
        elif v.status != PASS:
            first = next((r for r in rs if r.status == v.status), None)
            d["validation"] = "not checked: " + (first.error or first.reason or "no reason given" if first else
                                                 "every input suite was skipped")
        else:
            d["validation"] = "pass"
        out[rt] = d
    return out


def passed_where_checked(by_runtime: dict | None) -> bool:
    """Per-runtime verdicts (runtime_verdicts) that passed on some runtime and failed on none, the others not
    checked: fix writes such a form, scan --allow-not-checked accepts such a layer."""
    per = (by_runtime or {}).values()
    return any(d["status"] == PASS for d in per) and all(d["status"] in (PASS, NOT_CHECKED) for d in per)


def runtime_facts(rep) -> dict[str, dict]:
    """What each runtime that opened the model says it ran: version, precision and (where it says) ran_as."""
    return {rt: {k: f[k] for k in FACT_KEYS if f.get(k) is not None}
            for rt, f in rep.runtimes.items() if isinstance(f, dict) and ("version" in f or "precision" in f)}


def summarize(f: FoundNorm, rep) -> LayerVerdict:
    """A layer's ValidationResult as scan's row: the judge's verdict and its first reason (naming the runtime
    where several ran), each runtime's own verdict, and what each runtime ran in."""
    spec, v = rep.spec, rep.verdict
    c = v.counts()
    bad = rep.failures()
    per = runtime_verdicts(rep)
    facts = runtime_facts(rep)
    on = (lambda r: f" on {r.runtime}") if len(per) > 1 else (lambda r: "")
    if v.status == FAIL:
        first = next(r for r in bad if r.status == FAIL)
        return LayerVerdict(FAIL, f"{first.inputs}{on(first)}: {first.reason}", spec.id, c, by_runtime=per,
                            runtime_facts=facts)
    if v.status != PASS:
        first = next((r for r in bad if r.status == v.status), bad[0] if bad else None)
        why = ((f"{first.runtime}: " if len(per) > 1 and first.runtime != "*" else "")
               + (first.error or first.reason or "no reason given")) if first else \
            "every runtime or input suite was skipped"
        return LayerVerdict(v.status, f"not checked: {why}", spec.id, c, by_runtime=per, runtime_facts=facts)
    how = " (zero residual and bias: the norm of x alone)" if f.pre_bias else \
        " (zero residual: the norm of x alone)" if f.extra_inputs else ""
    return LayerVerdict(PASS, "pass" + how, spec.id, c, by_runtime=per, runtime_facts=facts)
