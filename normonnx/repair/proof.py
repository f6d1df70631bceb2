"""The proof behind `normonnx fix`, judged as `scan --validate` judges (normonnx.core.judge):

- every layer is cut out and validated on every input suite on every target runtime, with the
  function scan uses (`layers.validate_layer`);
- a layer that fails there (or carries a hazard the target hides, `Rule.hidden`) gets each
  candidate form of its rule written into the cut-out layer and validated against the *original
  layer's* claim (its spec and parameters: a candidate that changed eps or a weight fails the
  oracle it is compared with); the first that passes everywhere is kept, or the fastest where
  interleaved timing tells them apart;
- the whole original and fixed models run side by side on seeded inputs, compared element by
  element with `compare.compare` (non-finite values placed alike, sign included).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..core.errors import BadInput, NormonnxError, first_line
from ..core.judge import FAIL, INTERNAL, NOT_CHECKED, PASS, internal_reason
from ..core.outputs import OutputDiff, compare_outputs
from ..core.tables import PROVIDERS
from ..engine.inputs import seeded_feeds
from ..engine.layers import LayerVerdict, layer_key, passed_where_checked, runtime_verdicts, validate_cached
from ..graph.cutout import Cutter
from ..graph.derive import derive_spec
from ..graph.graph import load_model, ort_source
from ..graph.rewrite import apply, to_checked_proto

# the runtimes a fix is proven on by default: the one a plain `pip install onnxruntime` gives
DEFAULT_RUNTIMES = ("cpu",)


def ort_target(runtimes) -> str:
    """The ONNX Runtime provider the whole models are compared and every form timed on: the first ORT one
    among the target runtimes (a fix for CUDA is timed on CUDA), else ORT CPU."""
    return next((r for r in runtimes if r in PROVIDERS), "cpu")


@dataclass(frozen=True)
class Candidate:
    """One form a layer could take, validated against the original layer's claim."""

    form: str
    after: str
    status: str  # pass | fail | not checked | internal error
    failed: int = 0  # failed checks (runtime x input sample)
    worst: str | None = None  # "constant:constant on cpu: 3.4e-03" (the worst failing check)
    max_abs_err: float | None = None
    note: str | None = None  # why not checked
    ms: float | None = None  # median latency on the first target runtime, where timed
    by_runtime: dict | None = None  # runtime -> its own verdict (layers.runtime_verdicts)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        timed = f" ({self.ms:.3g} ms)" if self.ms is not None else ""
        per = self.by_runtime or {}
        if len(per) > 1 and self.status in (FAIL, NOT_CHECKED, INTERNAL):
            # several targets: which runtime failed which suite, and where it passed
            parts = []
            for st in (FAIL, NOT_CHECKED, INTERNAL, PASS):
                rts = [rt for rt, d in per.items() if d["status"] == st]
                if not rts:
                    continue
                if st == FAIL:
                    parts.append("FAIL " + ", ".join(f"{d['worst'].split(': ')[0]} on {rt}: "
                                                     f"{d['worst'].rsplit(': ', 1)[-1]}"
                                                     for rt, d in per.items() if d["status"] == FAIL))
                elif st == NOT_CHECKED:  # with why: a converter's refusal names what to change
                    why = {per[rt]["validation"].removeprefix("not checked: ") for rt in rts}
                    parts.append(f"{st} on {', '.join(rts)}" + (f" ({first_line_of(why)})" if why else ""))
                else:
                    parts.append(f"{st} on {', '.join(rts)}")
            return f"{self.form}: " + "; ".join(parts)
        if self.status == "pass":
            return f"{self.form}: pass" + timed
        if self.status == "fail":
            return f"{self.form}: FAIL {self.worst}"
        return f"{self.form}: {self.status} ({self.note})"


def first_line_of(whys: set[str], limit: int = 320) -> str:
    """One reason of several runtimes' (the shortest), cut at `limit`."""
    why = min(whys, key=len)
    return why if len(why) <= limit else why[:limit - 3] + "..."


def passes_where_checked(c: Candidate) -> bool:
    """A form that passed every check on each runtime that could check it and failed none, where some runtime could
    not check it (a converter's refusal): fix writes it only as far as partial coverage is allowed."""
    return c.status == NOT_CHECKED and passed_where_checked(c.by_runtime)


def _worst(rep) -> tuple[str | None, float | None]:
    bad = [r for r in rep.results if r.status == "fail"]
    if not bad:
        return None, None
    r = max(bad, key=lambda r: (r.nonfinite_mismatch or 0, r.max_abs_err or 0.0))
    err = "non-finite" if r.nonfinite_mismatch else f"{r.max_abs_err:.2g}"
    return f"{r.inputs} on {r.runtime}: {err}", r.max_abs_err


def validate_candidate(path: Path, claim, runtimes, inputs, form: str, after: str) -> Candidate:
    """The candidate layer at `path` against the original layer's claim (spec, params)."""
    from ..engine.inputs import CheckOptions
    from ..engine.runtimes import RunOptions
    from ..engine.validate import validate

    spec, params = claim
    try:
        rep = validate(spec, model=path, params=params, run=RunOptions(tuple(runtimes)), check=CheckOptions(inputs))
    except NormonnxError as e:
        return Candidate(form, after, NOT_CHECKED, note=str(e))
    except Exception as e:  # normonnx's own failure: never a verdict
        return Candidate(form, after, INTERNAL, note=internal_reason(e, 120))
    v = rep.verdict
    worst, err = _worst(rep)
    note = None
    if v.status in (NOT_CHECKED, INTERNAL):
        bad = [r for r in rep.results if r.status == v.status]
        note = bad[0].error if bad else "every runtime or input suite was skipped"
    return Candidate(form, after, v.status, v.failed, worst, err, note, by_runtime=runtime_verdicts(rep))


def write_candidate(layer_path: Path, plan, start: str, f, out: Path) -> Path:
    """The cut-out layer with `plan` written in place of the norm (the same writer the whole model gets)."""

    layer = onnx.load(str(layer_path))
    irm, _ = apply(layer, {0: (plan, start)}, {0: f})  # the layer's values keep their names when cut out
    proto, _ = to_checked_proto(irm, layer)
    onnx.save(proto, str(out))
    return out


def try_candidates(lf, plans, start: str, layer_path: Path, work: Path, runtimes, inputs, memo: dict) -> list:
    """Every candidate Plan written into the layer and validated against the layer's claim."""
    try:
        claim = derive_spec(lf.norm, onnx.load(str(layer_path)))
    except BadInput as e:
        return [Candidate(p.form, p.after, NOT_CHECKED, note=f"the layer's claim cannot be read: {e}")
                for p in plans]
    out = []
    for p in plans:
        path = work / f"cand{lf.index}-{p.form}.onnx"
        try:
            write_candidate(layer_path, p, start, lf.norm, path)
        except Exception as e:  # the writer could not build this form here: not a verdict
            out.append(Candidate(p.form, p.after, NOT_CHECKED, note=f"cannot be written: {first_line(e, 200)}"))
            continue
        key = "cand:" + layer_key(path, runtimes, inputs)
        if key not in memo:
            memo[key] = validate_candidate(path, claim, runtimes, inputs, p.form, p.after)
        out.append(memo[key])
    return out


def fastest(paths: dict[str, Path], claim, seed: int = 0, rounds: int = 7, min_time: float = 0.3,
            provider: str = "cpu") -> tuple[str, dict]:
    """The form whose layer runs measurably fastest on ORT `provider` (interleaved rounds; its per-round
    ratio's 95 % CI to the first form lies below 1), else the first form. Returns (form, {form: median ms})."""
    from ..core import timing
    from ..engine.inputs import REGISTRY, samples

    spec, _ = claim
    x = samples(REGISTRY["normal"], spec, seed)[0].x
    runs: dict[str, Callable[[], object]] = {}
    for form, p in paths.items():
        s = _session(p, provider=provider)
        feed = {s.get_inputs()[0].name: x}
        runs[form] = functools.partial(s.run, None, feed)
    measured = timing.run_rounds(runs, lambda: None, rounds=rounds, min_time=min_time, warmup=2, seed=seed)
    ms = {f: float(np.median(v)) for f, v in measured.per_round.items()}
    first = next(iter(paths))
    best, best_med = first, 1.0
    for form, r in timing.paired_ratios(measured.per_round, first).items():
        med, lo, hi = timing.median_ci(r, seed)
        if form != first and hi < 1.0 and med < best_med:
            best, best_med = form, med
    return best, ms


def choose(lf, cands: list[Candidate], work: Path, claim_of, timed: bool, least_bad: bool,
           provider: str = "cpu") -> None:
    """Set lf's status, form and reason from its candidates (see the module doc)."""
    passing = [c for c in cands if c.status == PASS]
    if passing:
        pick = passing[0]
        if timed and len(passing) > 1:
            try:
                form, ms = fastest({c.form: work / f"cand{lf.index}-{c.form}.onnx" for c in passing}, claim_of(),
                                   provider=provider)
                cands[:] = [dataclasses.replace(c, ms=ms.get(c.form)) for c in cands]
                pick = next(c for c in cands if c.form == form)
            except Exception:  # timing is a nicety: the first passing form stands
                pass
        lf.status, lf.form, lf.after = "would rewrite", pick.form, pick.after
        return
    # never traded for a pass the current form has: where the candidate is not checked, the current form must not pass
    now = (lf.before.by_runtime or {}) if lf.before is not None else {}
    partial = [c for c in cands if passes_where_checked(c) and not any(
        d["status"] != PASS and now.get(rt, {}).get("status") == PASS for rt, d in (c.by_runtime or {}).items())]
    if partial:  # right wherever it could be checked: written, and the proof's not checked decides (exit 4 or allowed)
        pick = partial[0]
        lf.status, lf.form, lf.after = "would rewrite", pick.form, pick.after
        lf.reason = f"no form passes on every runtime: {pick.summary()}"
        return
    _no_form_passes(lf, cands, least_bad)


def _no_form_passes(lf, cands: list[Candidate], least_bad: bool) -> None:
    """Where no candidate passes: the least bad (fails fewer checks than the current form somewhere and no more
    anywhere; kept with --least-bad), else the closest and where it is worse; the layer's status and reason."""
    # every candidate that finished a comparison somewhere (one not checked on a runtime counts as worse there)
    checked = sorted((c for c in cands if c.status == FAIL or any(d["status"] in (PASS, FAIL) for d in
                                                                    (c.by_runtime or {}).values())),
                     key=lambda c: (c.failed, c.max_abs_err or 0.0))
    what = {"gn": "GroupNorm", "in": "InstanceNorm", "ln": "LayerNorm", "rms": "RMSNorm"}.get(lf.norm.kind, "norm")
    before = lf.before.status if lf.before is not None else NOT_CHECKED
    if not checked:
        why = "; ".join(c.summary() for c in cands) or "the rule has no form for this opset"
        lf.reason = f"no form of this {what} could be checked: {why}"
    else:
        runtimes = list(dict.fromkeys([*((lf.before.by_runtime or {}) if lf.before is not None else {}),
                                       *(rt for c in checked for rt in (c.by_runtime or {}))]))
        gains = {c.form: against_current(c, lf.before, runtimes) for c in checked}
        # the least bad: fails fewer checks than the current form somewhere and no more anywhere
        better = [c for c in checked if gains[c.form][0] and not gains[c.form][1] and not gains[c.form][2]]
        now_failed = (lf.before.counts or {}).get(FAIL) if lf.before is not None else None
        several = len(runtimes) > 1
        if better:
            best = better[0]
            lf.least_bad = {"form": best.form, "failed": best.failed, "current_failed": now_failed,
                            "better_on": gains[best.form][0], "kept": least_bad}
            lf.reason = f"no form of this {what} passes: best {best.form}, {_said(best)}"
            against = now_failed if now_failed is not None else "none checked"
            if least_bad:
                lf.status, lf.form, lf.after = "would rewrite", best.form, best.after
                lf.reason += f" (kept as the least bad: {best.failed} failed checks against {against})"
                return
            lf.reason += (f"; --least-bad keeps it ({best.failed} failed checks against the current form's "
                          f"{against}" + (", none more on any runtime" if several else "") + ")")
        else:
            closest = checked[0]
            worse = gains[closest.form][1]
            lf.least_bad = {"form": None, "closest": closest.form, "failed": closest.failed,
                            "current_failed": now_failed, "worse_on": worse, "kept": False}
            if before == PASS:
                lf.reason = (f"no form of this {what} passes where the current form does: closest {closest.form}, "
                             f"{_said(closest)}; the layer keeps its form")
            else:
                lf.reason = (f"no form of this {what} passes, and none fails fewer checks than the current form"
                             + (" without failing more on another runtime" if several else "")
                             + f": closest {closest.form}, {_said(closest)}"
                             + (f" (worse than the current form on {', '.join(worse)})" if several and worse else "")
                             + "; the layer keeps its form" + (" (--least-bad would too)" if not least_bad else ""))
    lf.status = {FAIL: "failing", PASS: "passes"}.get(before, NOT_CHECKED)


def _said(c: Candidate) -> str:
    """A candidate's worst failing check, or (checked on some runtimes only) where it passed and was not checked."""
    return c.worst if c.status == FAIL and c.worst else c.summary().split(": ", 1)[-1]


def _failed_checks(d: dict | None) -> float:
    """One runtime's verdict as a count of failed checks: 0 passes, n fails n, anything else (not checked,
    internal error, not run) infinitely many: unknown is never counted as better."""
    if d is None:
        return math.inf
    return 0 if d["status"] == PASS else d["failed"] if d["status"] == FAIL else math.inf


def against_current(c: Candidate, before: LayerVerdict | None, runtimes) -> tuple[list[str], list[str], list[str]]:
    """(the runtimes where candidate `c` fails fewer checks than the layer's current form, those where it
    fails more or is not checked where the current form was, those where it fails and the current form could
    not be checked: no better, as far as anyone knows)."""
    now = (before.by_runtime or {}) if before is not None else {}
    better, worse, unknown = [], [], []
    for rt in runtimes:
        b, k = _failed_checks(now.get(rt)), _failed_checks((c.by_runtime or {}).get(rt))
        if k < b and (b != math.inf or k == 0):
            better.append(rt)
        elif k > b:
            worse.append(rt)
        elif b == math.inf and k != 0:
            unknown.append(rt)
    return better, worse, unknown


def _spec_of(norm, path: Path):
    """The layer's spec and parameters as the cut-out at `path` holds them (choose asks for it when it times)."""
    return derive_spec(norm, onnx.load(str(path)))


def judge_layers(analysed: onnx.ModelProto, base: Path, layers: list, plans: dict, work: Path, runtimes,
                 inputs: list[str] | None, memo: dict, *, timed: bool = True, least_bad: bool = False,
                 native: bool = False, progress=None) -> None:
    """Validate every main-graph layer as scan does, and choose a form for each one that needs one.
    native: the user raised the opset to get native ops (--opset): a decomposed chain whose rule can write
    the native op tries it too, and takes it if it passes."""
    todo = [lf for lf in layers if lf.status != "left"]
    extractor = Cutter(analysed, base)
    for n, lf in enumerate(todo):
        if progress:
            progress(n, len(todo), lf.norm)
        path = work / f"layer{lf.index}.onnx"
        try:
            extractor.extract(lf.norm, path)
        except BadInput as e:
            lf.before = LayerVerdict.not_checked(str(e))
            if lf.index in plans and plans[lf.index].rule.wants(lf.norm.risks, proven=False):
                # a known hazard in a layer that cannot be checked as it is (e.g. com.microsoft GroupNorm on
                # NHWC input): the rule's first form, judged in the written model by scan --validate
                first = plans[lf.index].plans[0]
                lf.status, lf.form, lf.after = "would rewrite", first.form, first.after
                lf.reason = f"the original cannot be validated ({e}); the rewritten form is judged in the written model"
            continue
        except Exception as e:  # normonnx's own failure on this layer (exit 5); the others are still judged
            lf.before = LayerVerdict.internal(e)
            continue
        lf.before = validate_cached(lf.norm, path, runtimes, inputs, memo)
        passed = lf.before.ok
        if lf.index not in plans:
            if passed is False and lf.status == "unchanged":
                lf.status, lf.reason = "failing", "fails and no selected rule covers this form"
            continue  # a refused layer stays "refused", its validation shows whether it fails
        planned = plans[lf.index]
        rule, cand_plans, start = planned.rule, list(planned.plans), planned.start
        if native and passed is True and lf.norm.form == "decomposed" and any(p.form == "native" for p in cand_plans):
            cand_plans = [p for p in cand_plans if p.form == "native"]  # asked for: the native op, if it passes
        elif passed is True and not rule.wants(lf.norm.risks, proven=True):
            lf.status = "passes"
            continue
        if passed is None and not rule.wants(lf.norm.risks, proven=False):
            lf.status, lf.reason = NOT_CHECKED, lf.before.validation
            continue
        lf.candidates = try_candidates(lf, cand_plans, start, path, work, runtimes, inputs, memo)
        choose(lf, lf.candidates, work, functools.partial(_spec_of, lf.norm, path), timed, least_bad,
               ort_target(runtimes))


# -- the whole model ---------------------------------------------------------------------------------
def _session(path: Path, shared: dict | None = None, provider: str = "cpu"):
    """An ORT session on `provider`; `shared`: {initializer name: OrtValue} it takes instead of reading its
    own copy (see shared_weights), with prepacking off, so two sessions of one large model hold its weights once."""
    import onnxruntime as ort

    from ..engine.runtimes import ort_session

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if shared:
        so.add_session_config_entry("session.disable_prepacking", "1")  # a packed copy would be per session
        for name, value in shared.items():
            so.add_initializer(name, value)
    model, folder = ort_source(path)
    if folder:  # an inline model read in place (graph.map_inline), never parsed whole
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    return ort_session(model, so, provider)


def shared_weights(model: onnx.ModelProto, original: dict, fixed: dict, own: dict | None = None,
                   min_bytes: int = 1 << 20) -> dict:
    """OrtValues over the input's own weight files (read-only maps: pages the kernel shares, never a copy)
    for the main-graph initializers both models read from the same bytes of the same file: `original` and
    `fixed` map names to graph.ExternalEntry, where each model's bytes came from (the fixed model's data
    file is a streamed copy, so equal sources mean equal values by construction, not by assumption).
    own: where the fixed model's copies lie (its data file, large tensors page-aligned): mapped instead where
    the input's bytes are not aligned to their type (an inline model's tensors lie wherever protobuf put them)."""
    import onnxruntime as ort

    tensors = {t.name: t for t in model.graph.initializer}
    out = {}
    for name, e in fixed.items():
        o, t = original.get(name), tensors.get(name)
        if o is None or t is None or (o.path, o.offset, o.nbytes) != (e.path, e.offset, e.nbytes) or e.nbytes < min_bytes:
            continue
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        except Exception:
            continue
        if e.offset % dtype.itemsize and own and name in own and own[name].nbytes == e.nbytes:
            e = own[name]
        if dtype.kind not in "fiub" or e.offset % dtype.itemsize or dtype.itemsize * math.prod(t.dims) != e.nbytes:
            continue  # bfloat16 and other types numpy lacks: the session reads its own copy
        out[name] = ort.OrtValue.ortvalue_from_numpy(np.memmap(e.path, dtype, "r", e.offset, tuple(t.dims)))
    return out


@dataclass(frozen=True)
class WholeModel:
    """The whole fixed model against the original on the same seeded inputs, on one ORT provider.
    status: pass | fail (a finished comparison) | not checked (error says why it could not be compared)."""

    status: str
    provider: str
    inputs: dict[str, list[int]]
    max_abs_diff: float | None = None
    outputs: dict[str, OutputDiff] = dataclasses.field(default_factory=dict)
    seed: int | None = None
    error: str | None = None
    shared_weights: int = 0

    @property
    def ok(self) -> bool | None:
        return {PASS: True, FAIL: False}.get(self.status)

    def to_dict(self) -> dict:
        # "passed" (True/False/None) is kept beside "status" for documents read by older tools
        if self.status not in (PASS, FAIL):
            return {"status": self.status, "passed": None, "error": self.error, "inputs": self.inputs,
                    "provider": self.provider, "shared_weights": self.shared_weights}
        return {"status": self.status, "passed": self.ok, "max_abs_diff": self.max_abs_diff,
                "outputs": {k: o.to_dict() for k, o in self.outputs.items()}, "seed": self.seed,
                "inputs": self.inputs, "provider": self.provider, "shared_weights": self.shared_weights}


@dataclass(frozen=True)
class ModelTiming:
    """Latency of the original and the fixed model, interleaved rounds: medians and fixed/original with
    its 95 % CI (stable: the CI is narrow enough to read)."""

    original_ms: float
    fixed_ms: float
    ratio: float
    ratio_ci: tuple[float, float]
    stable: bool
    rounds: int
    prepacking: bool
    provider: str
    machine: str

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ratio_ci": list(self.ratio_ci)}


@dataclass(frozen=True)
class Loaded:
    """What compare_models leaves for time_models: both sessions and the feeds (never built twice)."""

    sessions: tuple
    feeds: dict
    run_s: float


def compare_models(original: Path, fixed: Path, input_shapes: dict | None, seed: int = 0,
                   layer_dtypes: tuple[str, ...] = (), shared: dict | None = None,
                   provider: str = "cpu") -> tuple[WholeModel, Loaded | None]:
    """Both models on ORT `provider` on the same seeded inputs (compare_outputs). The original runs twice: a
    model whose own outputs differ between runs (an unseeded random op) cannot prove a rewrite, and is
    reported as such instead of blamed on it. shared: weights both sessions take (shared_weights).
    Returns the comparison and, where both models ran, their sessions and feeds for time_models."""
    model = load_model(original, load_external_data=False)
    feeds = seeded_feeds(model, input_shapes, seed)
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    try:
        sa = _session(original, shared, provider)
        a = sa.run(None, feeds)
        t0 = time.perf_counter()
        a2 = sa.run(None, feeds)
        run_s = time.perf_counter() - t0
        sb = _session(fixed, shared, provider)
        b = sb.run(None, feeds)
    except Exception as e:
        return WholeModel(NOT_CHECKED, provider, shapes, error=f"ORT {provider} could not run the models on seeded "
                          f"inputs: {first_line(e, 200)}", shared_weights=len(shared or {})), None
    names = [o.name for o in sb.get_outputs()]
    if compare_outputs(names, a, a2).status != PASS:
        return WholeModel(NOT_CHECKED, provider, shapes, error="the original model gives different outputs on two "
                          "runs of the same inputs (a random op?): a rewrite cannot be compared with it",
                          shared_weights=len(shared or {})), None
    out = compare_outputs(names, a, b, layer_dtypes)
    return (WholeModel(out.status, provider, shapes, out.max_abs_diff, out.outputs, seed,
                       shared_weights=len(shared or {})), Loaded((sa, sb, shared), feeds, run_s))


LONG_RUN_S = 0.1  # a whole-model run this long or longer: its timing stops at the first steady round from the third


def time_models(loaded: Loaded, *, rounds: int = 9, min_time: float = 1.0, seed: int = 0) -> ModelTiming:
    """Latency of both models (the sessions compare_models made, on its provider), interleaved rounds
    (normonnx.core.timing): per-model median and the fixed/original ratio with its 95 % CI, so the cost of the
    fix is visible."""
    from ..core import timing

    (sa, sb, shared), feeds = loaded.sessions, loaded.feeds

    def steady(per_round: dict) -> bool:
        med, lo, hi = timing.median_ci(timing.paired_ratios(per_round, "original")["fixed"], seed)
        return (hi - lo) / 2 <= timing.CI_WIDTH_LIMIT * med

    # both sessions ran in compare_models (warm); a model whose run is long stops once its ratio is steady
    measured = timing.run_rounds({"original": lambda: sa.run(None, feeds), "fixed": lambda: sb.run(None, feeds)},
                                 lambda: None, rounds=rounds, min_time=min_time, warmup=0, seed=seed,
                                 enough=steady if loaded.run_s >= LONG_RUN_S else None)
    ratio = timing.paired_ratios(measured.per_round, "original")["fixed"]
    med, lo, hi = timing.median_ci(ratio, seed)
    cuda = "CUDA" in sa.get_providers()[0]
    return ModelTiming(float(np.median(measured.per_round["original"])), float(np.median(measured.per_round["fixed"])),
                       med, (lo, hi), (hi - lo) / 2 <= timing.CI_WIDTH_LIMIT * med, len(ratio), not shared,
                       "cuda" if cuda else "cpu",
                       f"{platform.machine()}, {platform.processor() or 'cpu'}, {sa.get_providers()[0]}"
                       + (" (numpy in and out: host copies included)" if cuda else ""))
