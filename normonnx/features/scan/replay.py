"""The layers `scan --activations` captured, replayed on other ONNX runtimes (`--runtimes`) on the captured inputs and
judged by the same oracle, and the whole model run there against ORT's float32 run."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ...core.errors import BadInput, NormonnxError, first_line, raised_by_normonnx
from ...core.judge import FAIL, INTERNAL, NOT_CHECKED, PASS, internal_reason, judge, status_of
from ...core.tables import DTYPES
from ...graph.derive import derive_spec
from .checks import LayerCheck, Replay, WholeRun, against_oracle

WHOLE_SAMPLES = 4  # the whole model on another runtime: the first samples (each a run on both)


def whole_run(p: Path, capture, names: list[str], samples: list[dict], runtime: str) -> WholeRun:
    """The whole model on `runtime` on each sample against the capture session's own outputs (the float32 run on
    ORT): compared output by output at the outputs' dtype tolerance (normonnx.core.outputs)."""
    from ...core.outputs import compare_outputs
    from ...engine.runtimes import SessionConfig, SessionError, get_runtime

    try:
        ms = get_runtime(runtime).open_model(p, SessionConfig())
        diffs = [compare_outputs(names, capture.run(names, feeds), ms.run(feeds)) for feeds in samples]
    except (NormonnxError, SessionError) as e:
        return WholeRun(runtime, NOT_CHECKED, why=f"the whole model not run on {runtime}: {first_line(e, 160)}")
    except Exception as e:
        if raised_by_normonnx(e):
            return WholeRun(runtime, INTERNAL, why=internal_reason(e, 120))
        return WholeRun(runtime, NOT_CHECKED, why=f"{runtime} failed to run the whole model ({type(e).__name__}: "
                                                  f"{first_line(e, 140)})")
    worst = max(diffs, key=lambda d: d.max_abs_diff)
    bad = [(o.reason or f"{name} differs").replace("the oracle", "the ORT run") for d in diffs
           for name, o in d.outputs.items() if not o.within]
    return WholeRun(runtime, judge(d.status for d in diffs).status, worst.max_abs_diff, worst.outputs, len(diffs),
                    ms.facts.get("precision"), bad[0] if bad else None)


def replay_runtimes(runtimes: list[str] | None) -> list[str]:
    from ...engine.runtimes import require

    names = [n for n in (runtimes or []) if n != "cpu"]  # cpu: the capture itself
    for n in names:
        if require(n).kind != "onnx":
            raise BadInput(f"--runtimes {n}: --activations replays the model's layers on ONNX runtimes "
                           "(the source PyTorch module of a user's model is not known)")
    return names


def replay(layer_path: Path, lc: LayerCheck, xs: list[np.ndarray], runtime: str,
           stored: list[np.ndarray] | None = None) -> Replay:
    """The cut-out layer on `runtime` on each input in xs, judged against the oracle (and, given the
    outputs stored by --save-outputs, how far this runtime's outputs are from them)."""
    from ...engine.runtimes import SessionConfig, SessionError, get_runtime

    try:
        spec, params = derive_spec(lc.norm, onnx.load(str(layer_path)))
        spec = spec.replace(shape=tuple(xs[0].shape))
        sess = get_runtime(runtime).open(layer_path, SessionConfig(), None)
        ys = [sess.run(np.ascontiguousarray(x.astype(DTYPES[spec.dtype].numpy))) for x in xs]
    except (NormonnxError, SessionError) as e:
        return Replay(NOT_CHECKED, f"not replayed on {runtime}: {first_line(e, 160)}")
    except Exception as e:  # the runtime failed to run the layer (or normonnx's wrapper did): no verdict
        if raised_by_normonnx(e):
            return Replay(INTERNAL, f"not replayed on {runtime}: {internal_reason(e, 120)}")
        return Replay(NOT_CHECKED, f"not replayed: {runtime} failed to run the layer "
                                   f"({type(e).__name__}: {first_line(e, 140)})")
    try:
        verdicts = [against_oracle(spec, params, x, y, spec.dtype) for x, y in zip(xs, ys, strict=True)]
    except Exception as e:  # normonnx's own failure is never a verdict on the layer
        return Replay(INTERNAL, internal_reason(e, 120))
    bad = [d for ok, d in verdicts if not ok]
    out = Replay(judge(status_of(ok) for ok, _ in verdicts).status, bad[0].reason if bad else None,
                 max((d.max_abs_err or 0.0) for _, d in verdicts))
    if stored is None:
        return out
    out = _against_stored(out, ys, stored, spec.dtype)
    if out.status == PASS and not out.matches_stored:
        out = replace(out, status=FAIL, why=(f"differs from the stored outputs beyond twice the {spec.dtype} tolerance "
                                             f"(the layer or its parameters changed since they were stored): "
                                             f"{out.stored_reason}"))
    return out


def _against_stored(out: Replay, ys: list, stored: list, dtype: str) -> Replay:
    """How far this run's outputs are from the stored ones, through compare.compare (the one comparator:
    non-finite values placed alike, shapes equal) at twice the dtype's tolerance (two correct runtimes may
    each be one tolerance from the oracle)."""
    from ...core.compare import compare, tolerance_for

    tol = tolerance_for(dtype)
    tol = tolerance_for(dtype, 2 * tol.atol, 2 * tol.rtol)
    cs = [compare(y, np.asarray(z, np.float64), dtype, tol) for y, z in zip(ys, stored, strict=True)]
    bad = next((c for c in cs if not c.passed), None)
    return replace(out, max_diff_from_stored=max((c.max_abs_err for c in cs), default=0.0), matches_stored=bad is None,
                   stored_reason=bad.reason if bad else None)
