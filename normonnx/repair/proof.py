"""The proof behind `normonnx fix`: each rewritten layer validated before and after on every input
suite (the after form must pass every suite the before form passed, else it is rolled back), and
the whole original and fixed models run side by side on ORT CPU on seeded normal inputs (largest
output difference against the dtype's tolerance) and timed in interleaved rounds."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx

from ..compare import DEFAULT_TOLERANCES
from ..errors import BadInput
from ..graph import Graph
from ..scan import LayerExtractor, derive_spec, fix_input_shapes, infer_shapes, run_layer
from ..scan.patterns import find_all

BATCH_STAND_IN, DIM_STAND_IN = 2, 8


def suite_statuses(report) -> dict[str, str]:
    """'runtime:suite' -> pass | fail | error | skipped, over a ValidationReport's samples (a suite
    passes on a runtime when every sample that ran passed)."""
    out: dict[str, str] = {}
    rank = {"skipped": 0, "pass": 1, "error": 2, "fail": 3}
    for r in report.results:
        if r.inputs == "*":
            continue
        suite = f"{r.runtime}:{r.inputs.split(':')[0]}"
        prev = out.get(suite)
        out[suite] = r.status if prev is None or rank[r.status] > rank[prev] else prev
    return out


# ORT CPU computes a float16 chain in float32 (it inserts Casts around ops it has no float16 kernel
# for and drops the Casts between them), so a float16 overflow never shows there; onnx's reference
# evaluator runs each op in the dtype the graph declares, as a GPU provider does
PROOF_RUNTIMES = ("cpu", "reference")


def _validate(f, path: Path, runtimes, inputs) -> tuple[dict[str, str], str | None, tuple | None]:
    """(suite statuses, why not validated, the (spec, params) the layer claims)."""
    try:
        claim = derive_spec(f, onnx.load(str(path)))
        return suite_statuses(run_layer(f, path, list(runtimes), inputs)), None, claim
    except BadInput as e:
        return {}, str(e), None
    except Exception as e:  # normonnx's own failure: the layer is not validated (a rewrite is then rolled back)
        return {}, f"internal error ({type(e).__name__}: {str(e).strip()[:120]}); please report it", None


def _cut_and_validate(extractor, f, path: Path, runtimes, inputs) -> tuple[dict[str, str], str | None, tuple | None]:
    try:
        return _validate(f, extractor.extract(f, path), runtimes, inputs)
    except BadInput as e:
        return {}, str(e), None


def claim_differs(before: tuple, after: tuple) -> str | None:
    """Why the after layer claims a different norm than the before layer (validation compares each
    with the oracle of its *own* parameters, so a rewrite that changed eps or a weight would pass it):
    kind, shape, groups, normalized dims, eps, and the weight/bias values (a missing weight is ones,
    a missing bias zeros; float16 weights may differ by float16 rounding)."""
    (s1, p1), (s2, p2) = before, after
    for what in ("kind", "shape", "groups", "normalized_ndim"):
        if getattr(s1, what) != getattr(s2, what):
            return f"{what} {getattr(s1, what)} became {getattr(s2, what)}"
    if not np.isclose(s1.eps, s2.eps, rtol=1e-6, atol=0):
        return f"eps {s1.eps:g} became {s2.eps:g}"
    rtol = 1e-3 if s2.dtype != "float32" or s1.dtype != "float32" else 1e-6
    for key, neutral in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        a, b = p1.get(key), p2.get(key)
        if a is None and b is None:
            continue
        a = np.full_like(b, neutral) if a is None else a
        b = np.full_like(a, neutral) if b is None else b
        if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=rtol * 1e-2):
            return f"its {key} values changed (largest difference {np.max(np.abs(a - b)) if a.shape == b.shape else 'shape'})"
    return None


def prove_layers(analysed: onnx.ModelProto, base: Path, fixed: onnx.ModelProto, layers: list, plans: dict,
                 work: Path, runtimes, inputs: list[str] | None, input_shapes: dict | None,
                 progress=None) -> list[int]:
    """Validate every planned layer before (cut from the original) and after (cut from the fixed
    model, found again by its node names); record the proof on each LayerFix and return the indices
    to roll back: a rewrite that fails a suite the original passed, or that cannot be validated."""
    from . import prefix_of

    after_model = onnx.ModelProto()
    after_model.CopyFrom(fixed)
    if input_shapes:
        fix_input_shapes(after_model, input_shapes)
    after_model = infer_shapes(after_model)
    after_norms, _ = find_all(after_model, infer=False, main=Graph(after_model.graph))
    by_index = {lf.index: lf for lf in layers}
    todo = list(plans)
    before_x = LayerExtractor(analysed, base, [by_index[k].norm for k in todo])
    after_x = LayerExtractor(after_model, work, after_norms)
    rolled = []
    for n, k in enumerate(todo):
        lf = by_index[k]
        if progress:
            progress(n, len(todo), lf.norm)
        before, before_note, claim = _cut_and_validate(before_x, lf.norm, work / f"before{k}.onnx", runtimes, inputs)
        prefix = prefix_of(k, plans[k][0].rule)
        found = [f for f in after_norms if any(name.startswith(prefix) for name in f.nodes)]
        if len(found) != 1:
            after, after_note, after_claim = {}, f"scan finds {len(found)} norms in the rewritten form, not one", None
        else:
            after, after_note, after_claim = _cut_and_validate(after_x, found[0], work / f"after{k}.onnx", runtimes,
                                                               inputs)
        lf.proof = {"before": before, "after": after, "before_note": before_note, "after_note": after_note,
                    "after_form": found[0].op if len(found) == 1 else None}
        lost = [s for s, st in before.items() if st == "pass" and after.get(s) != "pass"]
        changed = claim_differs(claim, after_claim) if claim and after_claim else None
        if after_note or not after or lost or "pass" not in after.values() or changed:
            lf.status = "rolled back"
            lf.reason = (f"the rewritten form could not be validated: {after_note}" if after_note or not after else
                         f"the rewritten form computes a different norm: {changed}" if changed else
                         f"the rewritten form fails {', '.join(lost)}, which the original passes" if lost else
                         "the rewritten form passes no input suite")
            rolled.append(k)
    return rolled


# -- the whole model ---------------------------------------------------------------------------------
def _dims(vi, given: dict | None) -> tuple[int, ...]:
    if given and vi.name in given:
        return tuple(given[vi.name])
    dims = vi.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                 (BATCH_STAND_IN if i == 0 else DIM_STAND_IN) for i, d in enumerate(dims))


def seeded_feeds(model: onnx.ModelProto, input_shapes: dict | None, seed: int = 0) -> dict[str, np.ndarray]:
    """One seeded array per graph input: standard normal floats, small non-negative ints (ids valid for
    any vocabulary), random bools. Symbolic dims: --input-shape, else batch 2 and 8 elsewhere."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = _dims(vi, input_shapes)
        elem = vi.type.tensor_type.elem_type
        dt = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if np.issubdtype(dt, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dt, np.integer):
            feeds[vi.name] = rng.integers(0, 2, shape).astype(dt)
        else:
            raise BadInput(f"graph input {vi.name} has element type {elem}: no seeded input is made for it")
    return feeds


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def compare_models(original: Path, fixed: Path, input_shapes: dict | None, seed: int = 0,
                   layer_dtypes: tuple[str, ...] = ()) -> dict:
    """Both models on ORT CPU on the same seeded normal inputs: per output the largest difference and
    whether it is within tolerance (|fixed - original| <= atol + rtol * |original|, non-finite values
    in the same places). The tolerance is that of the least precise of the output's dtype and the
    rewritten layers' dtypes: a float16 layer computed better differs from the original by float16
    rounding, which later float32 layers carry to the output."""
    model = onnx.load(str(original), load_external_data=False)
    feeds = seeded_feeds(model, input_shapes, seed)
    try:
        a = _session(original).run(None, feeds)
        sb = _session(fixed)
        b = sb.run(None, feeds)
    except Exception as e:
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return {"passed": None, "error": f"ORT could not run the models on seeded inputs: {line}",
                "inputs": {k: list(v.shape) for k, v in feeds.items()}}
    outputs, ok = {}, True
    for o, ya, yb in zip(sb.get_outputs(), a, b):
        ya, yb = np.asarray(ya), np.asarray(yb)
        dtype = str(ya.dtype)
        tol = DEFAULT_TOLERANCES.get(dtype)
        if tol is not None:
            looser = [DEFAULT_TOLERANCES[d] for d in layer_dtypes if d in DEFAULT_TOLERANCES]
            tol = max([tol, *looser], key=lambda t: t.atol)
        if tol is None or not np.issubdtype(ya.dtype, np.floating):
            same = bool(np.array_equal(ya, yb))
            outputs[o.name] = {"dtype": dtype, "max_abs_diff": 0.0 if same else None, "within": same}
            ok &= same
            continue
        fa, fb = ya.astype(np.float64), yb.astype(np.float64)
        finite = np.isfinite(fa) & np.isfinite(fb)
        placed = bool(np.array_equal(np.isnan(fa), np.isnan(fb)) and np.array_equal(np.isinf(fa) & (fa > 0),
                                                                                     np.isinf(fb) & (fb > 0)))
        diff = np.abs(fa - fb)[finite]
        allowed = (tol.atol + tol.rtol * np.abs(fa))[finite]
        within = placed and bool(np.all(diff <= allowed))
        outputs[o.name] = {"dtype": dtype, "max_abs_diff": float(diff.max()) if diff.size else 0.0,
                           "atol": tol.atol, "rtol": tol.rtol, "nonfinite_placed_alike": placed, "within": within}
        ok &= within
    worst = max((v["max_abs_diff"] or 0.0 for v in outputs.values()), default=0.0)
    return {"passed": ok, "max_abs_diff": worst, "outputs": outputs, "seed": seed,
            "inputs": {k: list(v.shape) for k, v in feeds.items()}, "feeds": feeds}


def time_models(original: Path, fixed: Path, feeds: dict, *, rounds: int = 9, min_time: float = 1.0,
                seed: int = 0) -> dict:
    """Latency of both models on ORT CPU, interleaved rounds (normonnx.timing): per-model median and
    the fixed/original ratio with its 95 % CI, so the cost of the fix is visible."""
    from .. import timing

    sa, sb = _session(original), _session(fixed)
    measured = timing.run_rounds({"original": lambda: sa.run(None, feeds), "fixed": lambda: sb.run(None, feeds)},
                                 lambda: None, rounds=rounds, min_time=min_time, warmup=2, seed=seed)
    ratio = timing.paired_ratios(measured.per_round, "original")["fixed"]
    med, lo, hi = timing.median_ci(ratio, seed)
    return {"original_ms": float(np.median(measured.per_round["original"])),
            "fixed_ms": float(np.median(measured.per_round["fixed"])), "ratio": med, "ratio_ci": [lo, hi],
            "stable": (hi - lo) / 2 <= timing.CI_WIDTH_LIMIT * med, "rounds": rounds,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, ORT CPU"}
