"""Every norm of a model checked on the activations the model really feeds it (`scan --activations`).

The model runs on ORT with every main-graph norm's input and output added as graph outputs (capture.py: the
session built beside the probe, the values fetched a bounded number of bytes at a time), on a user's --data or on
seeded inputs (data.py). Per norm, on its captured input: the float64 oracle with the layer's own parameters
against the captured output (validate's conditioning-aware rule, checks.against_oracle), the statistics that
decide the risk (max|x|, common offset relative to the spread of a normalization set, the largest squared
deviation against float16's range), and the float16 what-if (float16.py). With --runtimes each layer is replayed
on other runtimes and the whole model run there (replay.py); --save-outputs stores golden outputs (golden.py).
"""
from __future__ import annotations

import tempfile
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ...core.errors import BadInput
from ...core.judge import INTERNAL, internal_reason, judge, status_of
from ...core.tables import per_feature
from ...engine.probe import find_layers
from ...graph.cutout import Cutter
from ...graph.derive import derive_spec
from ...graph.graph import Graph, load_model
from ...graph.patterns import FoundNorm
from .capture import Capture, batches, captured_names, fetch, nbytes, quantized_ends
from .checks import ActivationResult, Int8Rounding, LayerCheck, against_oracle
from .data import MAX_DATA_BYTES, MAX_SAMPLES, load_data, seeded_samples
from .float16 import WHAT_IF_SAMPLES, WhatIfs
from .golden import Golden
from .replay import WHOLE_SAMPLES, replay, replay_runtimes, whole_run

FLOAT16_MAX = 65504.0
MAX_FETCH_BYTES = 1 << 30  # captured tensors fetched per model run: 1 GiB (more layers: more runs)


def _set_axes(spec, x: np.ndarray):
    """x viewed per normalization set, and the axes each set spans."""
    if per_feature(spec.kind):
        return x, tuple(range(x.ndim - spec.normalized_ndim, x.ndim))
    if spec.kind == "gn":
        return x.reshape(x.shape[0], spec.groups, -1), (2,)
    if spec.kind == "in":
        return x, tuple(range(2, x.ndim))
    return x, (0,) + tuple(range(2, x.ndim))  # bn: running statistics, the batch's spread for context


def activation_stats(spec, x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    xs, axes = _set_axes(spec, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xs.mean(axis=axes, keepdims=True)
        std = xs.std(axis=axes, keepdims=True)
        offset = np.abs(mean) / np.maximum(std, 1e-30)
        dev = np.abs(xs - mean).max() if xs.size else 0.0
    finite = np.isfinite(x)
    return {"max_abs": float(np.abs(x[finite]).max()) if finite.any() else None,
            "max_offset_over_std": float(np.nanmax(offset)) if offset.size else None,
            "max_abs_deviation": float(dev),
            "max_x2_over_fp16_max": float(np.abs(x[finite]).max() ** 2 / FLOAT16_MAX) if finite.any() else None,
            "max_dev2_over_fp16_max": float(dev ** 2 / FLOAT16_MAX)}


def check_activations(path: str | Path, *, data: str | Path | None = None,
                      input_shapes: dict[str, tuple[int, ...]] | None = None, seed: int = 0, what_if: bool = True,
                      progress=None, max_fetch_bytes: int = MAX_FETCH_BYTES, max_samples: int = MAX_SAMPLES,
                      max_data_bytes: int = MAX_DATA_BYTES, runtimes: list[str] | None = None,
                      save_outputs: str | Path | None = None, found: tuple | None = None,
                      capture: Capture | None = None) -> ActivationResult:
    """Run the model on `data` (an .npz, one array per graph input, optional leading sample axis) or on
    seeded inputs, capture every main-graph norm's input and output, and judge each (see the module doc).
    runtimes: besides the capture on ORT, replay each cut-out layer on these runtimes on the captured
    inputs (`--runtimes openvino`); save_outputs: write each judged layer's captured inputs and outputs
    to this .npz (golden outputs that `--load-outputs` judges elsewhere); found: (norms, left out) as scan found
    them in this model (scan --activations: the probe's work is not done twice); capture: the Capture that
    scan started beside its probe (find_layers' confirming), whose session this run takes."""
    import time

    from ...graph.shapes import fix_input_shapes, infer_shapes

    t0 = time.perf_counter()
    p = Path(path)
    stored = load_model(p, load_external_data=False)  # every check first
    if data is not None:
        samples, shapes = load_data(data, stored, max_samples=max_samples, max_bytes=max_data_bytes)
        source = f"--data {data}"
    else:
        samples = seeded_samples(stored, input_shapes, seed)
        shapes = {k: list(v.shape) for k, v in samples[0].items()}
        source = "seeded inputs (standard normal floats; token ids within the embedding's rows)"
    analysed = onnx.ModelProto()
    analysed.CopyFrom(stored)
    fix_input_shapes(analysed, {k: tuple(v) for k, v in shapes.items()})
    analysed = infer_shapes(analysed)
    with Capture(p) if capture is None else nullcontext(capture) as cap:
        norms, left = found if found is not None else find_layers(analysed, p.parent, cap.start)
        layers = [LayerCheck(i, f) for i, f in enumerate(norms)]
        result = ActivationResult(str(p), len(samples), source, shapes, layers,
                                  unidentified=[x for x in left if x.kind == "?"])
        todo = _capturable(layers)
        if todo:
            _run_checks(p, cap, stored, analysed, todo, samples, result, what_if=what_if, progress=progress,
                        max_fetch_bytes=max_fetch_bytes, runtimes=runtimes, save_outputs=save_outputs)
    result.seconds = time.perf_counter() - t0
    return result


def _capturable(layers: list[LayerCheck]) -> list[LayerCheck]:
    """The layers whose values a run of the main graph can capture (the others say why not)."""
    todo = []
    for lc in layers:
        f = lc.norm
        if f.scope:
            lc.why = f"inside {f.scope}: only main-graph values can be captured"
        elif f.unvalidatable:
            lc.why = f.unvalidatable
        else:
            todo.append(lc)
    return todo


def _run_checks(p: Path, cap: Capture, stored: onnx.ModelProto, analysed: onnx.ModelProto, todo: list[LayerCheck],
                samples: list, result: ActivationResult, *, what_if: bool, progress, max_fetch_bytes: int, runtimes,
                save_outputs):
    """Capture, judge, replay and save each layer of `todo`, a batch of captured values at a time; then the whole
    model on each named runtime that runs whole models."""
    from ...engine.runtimes import get_runtime

    g = Graph(analysed.graph)
    extractor = Cutter(analysed, p.parent)
    for lc in todo:
        lc.source, lc.grid = quantized_ends(extractor.view, lc.norm)
    wanted = captured_names(extractor.view, [lc.norm for lc in todo])
    replays = replay_runtimes(runtimes)
    golden = Golden(save_outputs) if save_outputs is not None else None
    with tempfile.TemporaryDirectory(prefix="normonnx-act-") as tmp, WhatIfs(what_if) as what_ifs:
        work = Path(tmp)
        sess, result.provider = cap.session(wanted)
        for batch in batches(todo, lambda n: nbytes(g, n), max_fetch_bytes):
            names = list(dict.fromkeys(n for lc in batch for n in (lc.source, *lc.norm.extra_inputs,
                                                                      lc.norm.output)))
            got = fetch(sess, names, samples, result, f"{p} on {result.source.split(' (')[0]}")
            for lc in batch:
                if progress:
                    progress(lc.index, len(result.layers), lc.norm)
                xs = _check_layer(lc, got, extractor, work, what_ifs.submit if what_if else None)
                if xs is not None:
                    for rt in replays:
                        lc.on[rt] = replay(work / f"layer{lc.index}.onnx", lc, xs, rt)
                    if golden is not None:
                        golden.add(lc, xs, [_measured_layout(lc.norm, y) for y in got[lc.norm.output]],
                                   work / f"layer{lc.index}.onnx")
            what_ifs.collect()
            del got  # one batch's tensors at a time
        whole = [rt for rt in replays if get_runtime(rt).open_model is not None]
        quantized = any(n.op_type == "QuantizeLinear" for n in stored.graph.node)
        for rt in whole:
            w = whole_run(p, sess, [o.name for o in stored.graph.output], samples[:WHOLE_SAMPLES], rt)
            result.whole[rt] = replace(w, judged=False) if quantized else w
        if len(whole) < len(replays):
            result.notes.append(f"the whole model is not compared on {', '.join(r for r in replays if r not in whole)}: "
                                "normonnx runs cut-out layers only there")
    if golden is not None:
        golden.write()


def _float_run(layer_path: Path, xs: list) -> list:
    """The cut-out layer (Q/DQ pairs out: float arithmetic) on ORT CPU on each input."""
    from ...engine.runtimes import SessionConfig, get_runtime

    sess = get_runtime("cpu").open(layer_path, SessionConfig(), None)
    return [sess.run(np.ascontiguousarray(x)) for x in xs]


def _int8(spec, params, xs: list, ys: list, grid: float, dtype: str) -> Int8Rounding:
    """The model's own output of a QDQ layer against the oracle, at its dtype's tolerance plus two steps of its
    output's int8 grid: what int8 rounding between the norm's nodes costs (a what-if's status: never the exit)."""
    from ...core.compare import Tolerance, compare, tolerance_for
    from ...core.reference import reference

    tol = tolerance_for(dtype)
    tol = Tolerance(tol.atol + 2 * grid, tol.rtol)
    cs = [compare(np.asarray(y), reference(spec, params, np.asarray(x, np.float64)), dtype, tol)
          for x, y in zip(xs, ys, strict=True)]
    worst = max(c.max_abs_err for c in cs)
    bad = [c.reason for c in cs if not c.passed]
    return Int8Rounding(judge(status_of(c.passed) for c in cs).status, worst, grid, worst / grid if grid else None,
                        bad[0] if bad else None)


def _check_layer(lc: LayerCheck, got: dict, extractor: Cutter, work: Path, what_if) -> list | None:
    """Judge the layer's captured output; the inputs it was judged on (None when it could not be). what_if:
    WhatIfs.submit, given the float16 what-if's arguments (None: no what-if)."""
    f = lc.norm
    try:
        layer_path = extractor.extract(f, work / f"layer{lc.index}.onnx")
        spec, params = derive_spec(f, onnx.load(str(layer_path)))
    except BadInput as e:
        lc.why = str(e)
        return None
    except Exception as e:  # normonnx's own failure on this layer: exit 5, the other layers still judged
        lc.status, lc.why = INTERNAL, internal_reason(e, 120)
        return None
    xs = []
    for s, x in enumerate(got[lc.source]):
        x = np.asarray(x)
        for extra in f.extra_inputs:  # Skip*: the op normalizes input + skip (+ its bias)
            x = x + got[extra][s]
        if f.pre_bias:
            v = extractor.view.value(f.pre_bias)
            bias = extractor.view.const(v) if v is not None else None
            if bias is not None:
                x = x + bias
        xs.append(_measured_layout(f, x))
    if not any(np.isfinite(x).any() for x in xs):
        lc.why = ("the captured input has no finite element (e.g. --data values beyond float32's range): nothing "
                  "to judge")
        return None
    try:
        s_spec = spec.replace(shape=tuple(xs[0].shape))
    except Exception as e:
        lc.why = f"the captured input {list(xs[0].shape)} does not fit the layer's spec: {e}"
        return None
    ys = [_measured_layout(f, y) for y in got[f.output]]
    try:
        if lc.grid is not None:  # judged as float (Q/DQ out), the model's own int8 rounding measured beside
            lc.int8 = _int8(s_spec, params, xs, ys, lc.grid, spec.dtype)
            ys = _float_run(layer_path, xs)
        verdicts = [against_oracle(s_spec, params, x, y, spec.dtype) for x, y in zip(xs, ys, strict=True)]
    except Exception as e:  # normonnx's own failure is never a verdict on the layer
        lc.status, lc.why = INTERNAL, internal_reason(e, 120)
        return None
    bad = [d for ok, d in verdicts if not ok]
    lc.status = judge(status_of(ok) for ok, _ in verdicts).status
    worst = max((d for _, d in verdicts), key=lambda d: d.max_abs_err or 0.0)
    lc.error = bad[0] if bad else worst
    stats = [activation_stats(s_spec, x) for x in xs]
    lc.stats = {k: max((s[k] for s in stats if s[k] is not None), default=None) for k in stats[0]}
    if what_if is not None:
        what_if(lc, layer_path, s_spec, params, xs[:WHAT_IF_SAMPLES], work)
    return xs


def _measured_layout(f: FoundNorm, a):
    """A captured value in the layout (and dtype) the layer is judged in: a norm written over another layout
    is judged after the probe's permutation, a float16 island as float16."""
    a = np.asarray(a)
    d = f.derived
    if d is None:
        return a
    if d.perm is not None:
        a = np.transpose(a, d.perm)
    return a.astype(d.dtype) if d.dtype in ("float16", "float32") and a.dtype != np.dtype(d.dtype) else a
