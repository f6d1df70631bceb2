"""Every norm of a model checked on the activations the model really feeds it (`scan --activations`).

The model runs once per sample on ORT with every main-graph norm's input and output added as graph
outputs (fetched a bounded number of bytes at a time). Per norm, on its captured input: the float64
oracle with the layer's own parameters against the captured output (validate's conditioning-aware
rule), the statistics that decide the risk (max|x|, common offset relative to the spread of a
normalization set, the largest squared deviation against float16's range), and a float16 what-if:
the layer converted with onnxruntime's float16 converter, and that conversion with float32
statistics (`normonnx fix`'s rules), run on onnx's reference evaluator, which computes float16 ops
in float16 as a GPU provider does (ORT CPU computes them in float32 and would hide an overflow).
"""
from __future__ import annotations

import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ..errors import BadInput, ExitCode, NormonnxError, first_line, raised_by_normonnx
from ..graph import Graph, load_model
from ..judge import FAIL, INTERNAL, NOT_CHECKED, PASS, internal_reason, judge, status_of
from ..tables import DTYPES, per_feature
from ..derive import derive_spec
from ..cutout import Cutter
from ..patterns import FoundNorm
from ..probe import find_layers
from .capture import Capture, batches, captured_names, fetch, nbytes, quantized_ends

FLOAT16_MAX = 65504.0
MAX_FETCH_BYTES = 1 << 30  # captured tensors fetched per model run: 1 GiB (more layers: more runs)
MAX_SAMPLES = 1024  # --data samples (--max-samples raises it): each is one model run
MAX_DATA_BYTES = 1 << 30  # --data arrays, decompressed (--max-data-bytes raises it)
WHAT_IF_SAMPLES = 16  # the float16 what-if runs on onnx.reference, slowly: the first samples only
WHAT_IF_THREADS = 2  # what-ifs at once, beside the main thread: more gains nothing against the GIL (measured)
WHOLE_SAMPLES = 4  # the whole model on another runtime: the first samples (each a run on both)


@dataclass
class LayerCheck:
    """One norm on its captured activations: stats, the float32 verdict, the float16 what-if."""

    index: int
    norm: FoundNorm
    status: str = NOT_CHECKED  # the model's own output vs the oracle (normonnx.judge); not checked: why says why
    why: str | None = None
    stats: dict = field(default_factory=dict)
    error: dict | None = None  # max_abs_err, worst element, reason
    fp16: dict = field(default_factory=dict)  # converted / fp32_statistics: {"status", "why", "rule"} (a what-if)
    # runtime -> the cut-out layer replayed there on the captured inputs: {"status", "max_abs_err", "why",
    # and with --load-outputs "max_diff_from_stored"}
    on: dict = field(default_factory=dict)
    replayed_only: bool = False  # --load-outputs: the model is not run, only the replays are judged
    source: str | None = None  # the value captured as its input (a QDQ layer's: after its input's Q/DQ pair)
    int8: dict = field(default_factory=dict)  # a QDQ layer as the model runs it, int8 rounding and all (measured)
    grid: float | None = None  # a QDQ layer's output step: the scale of the last Q/DQ pair it runs through

    @property
    def statuses(self) -> list[str]:
        """The model's own output's status and each replay's: what the exit code is judged over."""
        return ([] if self.replayed_only and self.on else [self.status]) + [v["status"] for v in self.on.values()]

    def to_dict(self) -> dict:
        # "passed" (True/False/None) is kept beside "status" for documents read by older tools
        ok = lambda st: {PASS: True, FAIL: False}.get(st)  # noqa: E731
        return {"layer": self.norm.nodes[0], "kind": self.norm.kind, "form": self.norm.form, "op": self.norm.op,
                "dtype": self.norm.dtype, "status": self.status, "passed": ok(self.status), "why": self.why,
                "stats": self.stats, "error": self.error, "float16": self.fp16, "int8": self.int8 or None,
                "runtimes": {k: {**v, "passed": ok(v["status"])} for k, v in self.on.items()}}


@dataclass(frozen=True)
class WholeRun:
    """The whole model on one named runtime against the float32 run on ONNX Runtime (the capture's session), on
    the first WHOLE_SAMPLES inputs: a runtime's precision changes the layers around the norms too."""

    runtime: str
    status: str  # pass | fail | not checked | internal error
    max_abs_diff: float | None = None
    outputs: dict = field(default_factory=dict)  # output name -> outputs.OutputDiff, the worst sample's
    samples: int = 0
    precision: str | None = None
    why: str | None = None
    # False for a quantized (QDQ) model: runtimes round its int8 steps differently (a step of a Q/DQ pair apart is
    # no error), so its whole run is a what-if beside the layers' verdicts, never the exit code
    judged: bool = True

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "status": self.status, "max_abs_diff": self.max_abs_diff,
                "outputs": {k: o.to_dict() for k, o in self.outputs.items()}, "samples": self.samples,
                "precision": self.precision, "why": self.why, "judged": self.judged}


@dataclass
class ActivationReport:
    model: str
    samples: int
    source: str  # "--data FILE" or "seeded inputs"
    inputs: dict  # name -> shape of one sample
    layers: list[LayerCheck]
    runs: int = 0  # model runs (samples x fetch batches)
    provider: str | None = None  # the ORT provider the model ran on
    captured_bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    unidentified: list = field(default_factory=list)  # possible norms not identified: nothing checked there
    allow_not_checked: bool = False  # PASS beside layers that could not be checked
    whole: dict = field(default_factory=dict)  # runtime -> WholeRun: the whole model there against the float32 run

    @property
    def verdict(self):
        """The one judge over every layer (and replay), every whole-model run on a named runtime, and every
        possible norm not identified: no layer at all is nothing checked."""
        return judge([st for lf in self.layers for st in lf.statuses] + [w.status for w in self.whole.values() if w.judged]
                     + [NOT_CHECKED] * len(self.unidentified), self.allow_not_checked)

    @property
    def exit_code(self) -> ExitCode:
        return self.verdict.exit_code

    def to_dict(self) -> dict:
        return {"model": self.model, "provider": self.provider, "samples": self.samples, "source": self.source,
                "inputs": self.inputs,
                "runs": self.runs, "captured_bytes": self.captured_bytes, "seconds": round(self.seconds, 2),
                "notes": self.notes, "layers": [lf.to_dict() for lf in self.layers],
                "whole_model": {k: w.to_dict() for k, w in self.whole.items()}, "exit_code": int(self.exit_code),
                # what the verdict covers (scan --validate judges stress inputs instead)
                "checked": f"the activations of {self.samples} model inputs ({self.source}), not stress inputs"}


# -- inputs ------------------------------------------------------------------------------------------
def _graph_inputs(model: onnx.ModelProto) -> list:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def vocab_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs used as Gather indices into a constant table (token ids): name -> rows of the table."""
    g = Graph(model.graph)
    out = {}
    names = {i.name for i in _graph_inputs(model)}

    def source(v: str) -> str:  # through the reshapes exporters put between ids and the lookup
        for _ in range(8):
            _, n = g.node(v)
            if n is None or n.op_type not in ("Reshape", "Flatten", "Unsqueeze", "Squeeze", "Cast", "Identity"):
                return v
            v = n.input[0]
        return v

    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and source(n.input[1]) in names:
            table = g.shapes.get(g.origin(n.input[0]))
            if table and isinstance(table[0], int):
                name = source(n.input[1])
                out[name] = min(out.get(name, table[0]), table[0])
    return out


def _npz_sizes(p: Path) -> dict[str, tuple[tuple[int, ...], int]]:
    """Each array's (shape, bytes) from the .npz's headers, before anything is decompressed."""
    import zipfile

    out = {}
    with zipfile.ZipFile(p) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as f:
                major, _ = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            out[info.filename[:-4]] = (tuple(shape), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return out


def load_data(path: str | Path, model: onnx.ModelProto, *, max_samples: int = MAX_SAMPLES,
              max_bytes: int = MAX_DATA_BYTES) -> tuple[list[dict[str, np.ndarray]], dict]:
    """--data FILE.npz: one array per graph input, named as the input; an extra leading axis holds
    several samples. BadInput naming the input and what it expected otherwise; the file must be a
    regular file, and its sample count and decompressed size within the limits (checked from the
    arrays' headers, before any is read)."""
    from ..safeio import check_regular_file

    p = Path(path)
    check_regular_file(p, "--data")
    try:
        sizes = _npz_sizes(p)
    except Exception as e:
        raise BadInput(f"--data {p}: not a readable .npz file ({type(e).__name__}); save one with "
                       "numpy.savez(path, input_name=array, ...)") from None
    total = sum(b for _, b in sizes.values())
    if total > max_bytes:
        raise BadInput(f"--data {p}: its arrays hold {total / 2**20:.0f} MiB decompressed, over the limit of "
                       f"{max_bytes / 2**20:.0f} MiB; raise it with --max-data-bytes")
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in _graph_inputs(model)}
    n = max((shape[0] for k, (shape, _) in sizes.items() if len(shape) == ranks.get(k, -2) + 1), default=1)
    if n > max_samples:
        raise BadInput(f"--data {p}: {n} samples, over the limit of {max_samples} (each is one model run); raise it "
                       "with --max-samples or pass fewer")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise BadInput(f"--data {p}: not a readable .npz file ({type(e).__name__}); save one with "
                       "numpy.savez(path, input_name=array, ...)") from None
    inputs = _graph_inputs(model)
    want = {i.name: i for i in inputs}
    extra = sorted(set(arrays) - set(want))
    if extra:
        raise BadInput(f"--data {p}: no graph input named {extra[0]!r}; the model's inputs are {', '.join(want)}")
    missing = [n for n in want if n not in arrays]
    if missing:
        raise BadInput(f"--data {p}: no array for graph input {missing[0]!r} (give one per input: {', '.join(want)})")
    counts = set()
    for name, vi in want.items():
        arrays[name], count = _fit_input(p, name, arrays[name], vi)
        counts.add(count)
    if len(counts) != 1:
        raise BadInput(f"--data {p}: every array needs the same sample layout (all with, or all without, a "
                       "leading sample axis of one length)")
    n = counts.pop()
    samples = [{k: v for k, v in arrays.items()}] if n == 0 else [{k: v[s] for k, v in arrays.items()}
                                                                  for s in range(n)]
    return samples, {k: list(v.shape) for k, v in samples[0].items()}


def _fit_input(p: Path, name: str, a: np.ndarray, vi) -> tuple[np.ndarray, int]:
    """One --data array against its graph input: rank (with or without a leading sample axis), fixed dims and
    dtype kind; the array in the input's dtype and its sample count (0: no sample axis)."""
    tt = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    np_dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    if a.ndim not in (len(dims), len(dims) + 1):
        raise BadInput(f"--data {p}: {name} has rank {a.ndim}; the input takes rank {len(dims)} (or "
                       f"{len(dims) + 1} with a leading sample axis)")
    count = a.shape[0] if a.ndim == len(dims) + 1 else 0
    shape = a.shape[1:] if a.ndim == len(dims) + 1 else a.shape
    for i, (d, got) in enumerate(zip(dims, shape)):
        if d is not None and d != got:
            raise BadInput(f"--data {p}: {name} dim {i} is {got}; the model's input has {d} there")
    if np.dtype(a.dtype).kind != np.dtype(np_dt).kind:
        raise BadInput(f"--data {p}: {name} is {a.dtype}; the input takes {np.dtype(np_dt)}")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: judged as "no finite"
        return a.astype(np_dt), count


def seeded_samples(model: onnx.ModelProto, input_shapes: dict | None, seed: int = 0) -> list[dict]:
    """One sample of seeded inputs (inputs.seeded_feeds), token ids drawn in the vocabulary range."""
    from ..inputs import seeded_feeds

    feeds = seeded_feeds(model, input_shapes, seed)
    rng = np.random.default_rng(seed + 1)
    for name, vocab in vocab_sizes(model).items():
        if name in feeds and np.issubdtype(feeds[name].dtype, np.integer):
            feeds[name] = rng.integers(0, vocab, feeds[name].shape).astype(feeds[name].dtype)
    return [feeds]


# -- the check ---------------------------------------------------------------------------------------
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


def _oracle(spec, params, x) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(the float64 oracle's output, each element's conditioning, the scale weighing it) on input x: what any
    output of the layer on x is compared against (the float16 what-if's two forms share one)."""
    from ..reference import normalized_stats, reference, scale_broadcast

    ref = reference(spec, params, np.asarray(x, np.float64))
    mag, std = normalized_stats(spec, params, x)
    with np.errstate(invalid="ignore", divide="ignore"):
        cond = mag / std
    return ref, cond, scale_broadcast(spec, params, np.shape(x))


def _judge(spec, params, x, y, dtype: str, oracle=None) -> tuple[bool, dict]:
    from ..compare import compare, tolerance_for

    ref, cond, scale = oracle if oracle is not None else _oracle(spec, params, x)
    c = compare(np.asarray(y), ref, dtype, tolerance_for(dtype), cond, scale)
    d = c.to_dict()
    return c.passed, {k: d.get(k) for k in ("max_abs_err", "worst_index", "worst_got", "worst_expected", "reason")}


def _fp16_layer(layer_path: Path, out: Path) -> Path:
    """The layer as onnxruntime's float16 converter writes it (what a float16 deployment would run)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = _fold_dequantized(onnx.load(str(layer_path)))
    if m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
        m = convert_float_to_float16(m, keep_io_types=False, disable_shape_infer=True)
    onnx.save(m, str(out))
    return out


def _fold_dequantized(m: onnx.ModelProto) -> onnx.ModelProto:
    """A QDQ layer's parameters (DequantizeLinear of int8 constants) as the float constants they are: the float16
    converter then converts them like any weight, and onnx.reference, which has no DequantizeLinear below opset
    19, runs the layer."""
    import onnx_ir as ir

    from ..irview import View, is_op

    view = View(ir.from_proto(m).graph)
    folded = {}
    for n in view.nodes:
        if is_op(n, "DequantizeLinear") and view.is_const(n.outputs[0]):
            value = view.const(n.outputs[0])
            if value is not None:
                folded[n.outputs[0].name] = value
    if not folded:
        return m
    keep = [n for n in m.graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in folded)]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    m.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in folded.items())
    used = {i for n in keep for i in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    return m


def _run_reference(path: Path, x: np.ndarray) -> np.ndarray:
    from ..runtimes import SessionConfig, get_runtime

    return get_runtime("reference").open(path, SessionConfig(), None).run(x)


def _float16_verdict(path: Path, spec16, params, xs: list[np.ndarray], oracles: dict, rule: str | None) -> dict:
    """A float16 layer on the captured inputs (as float16), on onnx.reference, against the oracle at float16's
    tolerance. oracles: {sample: _oracle}, filled on first use (both forms are judged against the same)."""
    try:
        verdicts = []
        for i, x in enumerate(xs):
            if i not in oracles:
                oracles[i] = _oracle(spec16, params, x)
            verdicts.append(_judge(spec16, params, x, _run_reference(path, x), "float16", oracles[i]))
    except Exception as e:
        return {"status": NOT_CHECKED, "why": f"could not run on onnx.reference: {first_line(e, 120)}"}
    bad = [d for ok, d in verdicts if not ok]
    return {"status": judge(status_of(ok) for ok, _ in verdicts).status, "why": bad[0]["reason"] if bad else None, "rule": rule,
            "max_abs_err": max((d["max_abs_err"] or 0.0) for _, d in verdicts)}


def float16_what_if(layer_path: Path, spec, params, xs: list[np.ndarray], work: Path) -> dict:
    """{converted: {...}, fp32_statistics: {...}}: the layer in float16 (onnxruntime's converter), and
    that float16 layer with float32 statistics (normonnx fix), on the captured inputs."""
    from ..rewrite import first_forms
    from ..rules import select

    try:
        conv = _fp16_layer(layer_path, work / f"{layer_path.stem}-fp16.onnx")
    except Exception as e:
        return {"converted": {"status": NOT_CHECKED, "why": f"the float16 converter failed: {first_line(e, 120)}"}}
    spec16 = spec.replace(dtype="float16")
    xs = [x.astype(np.float16) for x in xs]
    oracles: dict = {}
    out = {"converted": _float16_verdict(conv, spec16, params, xs, oracles, None)}
    fixed = work / f"{layer_path.stem}-fp16-fixed.onnx"
    try:  # the rules registry's first form, as `normonnx fix --no-proof` writes it
        proto, rules, why = first_forms(onnx.load(str(conv)), select(None, None), conv.parent)
        if proto is not None:
            onnx.save(proto, str(fixed))
    except Exception as e:
        out["fp32_statistics"] = {"status": NOT_CHECKED, "why": f"the rewrite failed: {first_line(e, 120)}"}
        return out
    if not rules:
        out["fp32_statistics"] = {"status": NOT_CHECKED, "why": f"not rewritten: {why}"}
    else:
        out["fp32_statistics"] = _float16_verdict(fixed, spec16, params, xs, oracles, rules[0])
    return out


def check_activations(path: str | Path, *, data: str | Path | None = None,
                      input_shapes: dict[str, tuple[int, ...]] | None = None, seed: int = 0, what_if: bool = True,
                      progress=None, max_fetch_bytes: int = MAX_FETCH_BYTES, max_samples: int = MAX_SAMPLES,
                      max_data_bytes: int = MAX_DATA_BYTES, runtimes: list[str] | None = None,
                      save_outputs: str | Path | None = None, found: tuple | None = None,
                      capture: Capture | None = None) -> ActivationReport:
    """Run the model on `data` (an .npz, one array per graph input, optional leading sample axis) or on
    seeded inputs, capture every main-graph norm's input and output, and judge each (see the module doc).
    runtimes: besides the capture on ORT, replay each cut-out layer on these runtimes on the captured
    inputs (`--runtimes openvino`); save_outputs: write each judged layer's captured inputs and outputs
    to this .npz (golden outputs that `--load-outputs` judges elsewhere); found: (norms, left out) as scan found
    them in this model (scan --activations: the probe's work is not done twice); capture: the Capture that
    scan started beside its probe (find_layers' confirming), whose session this run takes."""
    import time

    from ..shapes import fix_input_shapes, infer_shapes

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
        report = ActivationReport(str(p), len(samples), source, shapes, layers,
                                  unidentified=[x for x in left if x.kind == "?"])
        todo = _capturable(layers)
        if todo:
            _run_checks(p, cap, stored, analysed, todo, samples, report, what_if=what_if, progress=progress,
                        max_fetch_bytes=max_fetch_bytes, runtimes=runtimes, save_outputs=save_outputs)
    report.seconds = time.perf_counter() - t0
    return report


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


def _run_checks(p: Path, cap: Capture, stored: onnx.ModelProto, analysed: onnx.ModelProto, todo: list[LayerCheck], samples: list,
                report: ActivationReport, *, what_if: bool, progress, max_fetch_bytes: int, runtimes, save_outputs):
    """Capture, judge, replay and save each layer of `todo`, a batch of captured values at a time; then the whole
    model on each named runtime that runs whole models."""
    from ..runtimes import get_runtime

    g = Graph(analysed.graph)
    extractor = Cutter(analysed, p.parent)
    for lc in todo:
        lc.source, lc.grid = quantized_ends(extractor.view, lc.norm)
    wanted = captured_names(extractor.view, [lc.norm for lc in todo])
    replays = _replay_runtimes(runtimes)
    golden = Golden(save_outputs) if save_outputs is not None else None
    with tempfile.TemporaryDirectory(prefix="normonnx-act-") as tmp, _WhatIfs(what_if) as what_ifs:
        work = Path(tmp)
        sess, report.provider = cap.session(wanted)
        for batch in batches(todo, lambda n: nbytes(g, n), max_fetch_bytes):
            names = list(dict.fromkeys(n for lc in batch for n in (lc.source, *lc.norm.extra_inputs,
                                                                      lc.norm.output)))
            got = fetch(sess, names, samples, report, f"{p} on {report.source.split(' (')[0]}")
            for lc in batch:
                if progress:
                    progress(lc.index, len(report.layers), lc.norm)
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
            report.whole[rt] = replace(w, judged=False) if quantized else w
        if len(whole) < len(replays):
            report.notes.append(f"the whole model is not compared on {', '.join(r for r in replays if r not in whole)}: "
                                "normonnx runs cut-out layers only there")
    if golden is not None:
        golden.write()


def _float_run(layer_path: Path, xs: list) -> list:
    """The cut-out layer (Q/DQ pairs out: float arithmetic) on ORT CPU on each input."""
    from ..runtimes import SessionConfig, get_runtime

    sess = get_runtime("cpu").open(layer_path, SessionConfig(), None)
    return [sess.run(np.ascontiguousarray(x)) for x in xs]


def _int8(spec, params, xs: list, ys: list, grid: float, dtype: str) -> dict:
    """The model's own output of a QDQ layer against the oracle, at its dtype's tolerance plus two steps of its
    output's int8 grid: what int8 rounding between the norm's nodes costs (a what-if's status: never the exit)."""
    from ..compare import Tolerance, compare, tolerance_for
    from ..reference import reference

    tol = tolerance_for(dtype)
    tol = Tolerance(tol.atol + 2 * grid, tol.rtol)
    cs = [compare(np.asarray(y), reference(spec, params, np.asarray(x, np.float64)), dtype, tol) for x, y in zip(xs, ys)]
    worst = max(c.max_abs_err for c in cs)
    bad = [c.reason for c in cs if not c.passed]
    return {"status": judge(status_of(c.passed) for c in cs).status, "max_abs_err": worst, "grid": grid,
            "steps": worst / grid if grid else None, "why": bad[0] if bad else None}


class _WhatIfs:
    """The float16 what-ifs on threads beside the next layers' checks (onnx.reference's ops and the oracle are numpy
    on whole tensors, which lets go of the GIL: on two cores they overlap), collected before a batch's captured
    tensors are let go. A context manager: leaving it cancels what has not started and waits for the rest."""

    def __init__(self, on: bool):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=WHAT_IF_THREADS, thread_name_prefix="normonnx-what-if") if on else None
        self.pending: list = []

    def submit(self, lc: LayerCheck, *args) -> None:
        self.pending.append((lc, self.pool.submit(float16_what_if, *args)))

    def collect(self) -> None:
        for lc, job in self.pending:
            lc.fp16 = job.result()
        self.pending.clear()

    def __enter__(self) -> "_WhatIfs":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _check_layer(lc: LayerCheck, got: dict, extractor: Cutter, work: Path, what_if) -> list | None:
    """Judge the layer's captured output; the inputs it was judged on (None when it could not be). what_if:
    _WhatIfs.submit, given the float16 what-if's arguments (None: no what-if)."""
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
        verdicts = [_judge(s_spec, params, x, y, spec.dtype) for x, y in zip(xs, ys)]
    except Exception as e:  # normonnx's own failure is never a verdict on the layer
        lc.status, lc.why = INTERNAL, internal_reason(e, 120)
        return None
    bad = [d for ok, d in verdicts if not ok]
    lc.status = judge(status_of(ok) for ok, _ in verdicts).status
    worst = max((d for _, d in verdicts), key=lambda d: d["max_abs_err"] or 0.0)
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


# -- other runtimes, golden outputs ------------------------------------------------------------------------
# The model is captured on ORT (the one runtime that can hand back every intermediate value); each other
# runtime judges the cut-out layer replayed on those captured inputs, the same oracle, the same rule.
def whole_run(p: Path, capture, names: list[str], samples: list[dict], runtime: str) -> WholeRun:
    """The whole model on `runtime` on each sample against the capture session's own outputs (the float32 run on
    ORT): compared output by output at the outputs' dtype tolerance (normonnx.outputs)."""
    from ..outputs import compare_outputs
    from ..runtimes import SessionConfig, SessionError, get_runtime

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


def _replay_runtimes(runtimes: list[str] | None) -> list[str]:
    from ..runtimes import require

    names = [n for n in (runtimes or []) if n != "cpu"]  # cpu: the capture itself
    for n in names:
        if require(n).kind != "onnx":
            raise BadInput(f"--runtimes {n}: --activations replays the model's layers on ONNX runtimes "
                           "(the source PyTorch module of a user's model is not known)")
    return names


def replay(layer_path: Path, lc: LayerCheck, xs: list[np.ndarray], runtime: str,
           stored: list[np.ndarray] | None = None) -> dict:
    """The cut-out layer on `runtime` on each input in xs, judged against the oracle (and, given the
    outputs stored by --save-outputs, how far this runtime's outputs are from them)."""
    from ..runtimes import SessionConfig, SessionError, get_runtime

    try:
        spec, params = derive_spec(lc.norm, onnx.load(str(layer_path)))
        spec = spec.replace(shape=tuple(xs[0].shape))
        sess = get_runtime(runtime).open(layer_path, SessionConfig(), None)
        ys = [sess.run(np.ascontiguousarray(x.astype(DTYPES[spec.dtype].numpy))) for x in xs]
    except (NormonnxError, SessionError) as e:
        return {"status": NOT_CHECKED, "why": f"not replayed on {runtime}: {first_line(e, 160)}"}
    except Exception as e:  # the runtime failed to run the layer (or normonnx's wrapper did): no verdict
        if raised_by_normonnx(e):
            return {"status": INTERNAL, "why": f"not replayed on {runtime}: {internal_reason(e, 120)}"}
        return {"status": NOT_CHECKED, "why": f"not replayed: {runtime} failed to run the layer "
                                              f"({type(e).__name__}: {first_line(e, 140)})"}
    try:
        verdicts = [_judge(spec, params, x, y, spec.dtype) for x, y in zip(xs, ys)]
    except Exception as e:  # normonnx's own failure is never a verdict on the layer
        return {"status": INTERNAL, "why": internal_reason(e, 120)}
    bad = [d for ok, d in verdicts if not ok]
    out = {"status": judge(status_of(ok) for ok, _ in verdicts).status,
           "max_abs_err": max((d["max_abs_err"] or 0.0) for _, d in verdicts), "why": bad[0]["reason"] if bad else None}
    if stored is not None:
        out.update(_against_stored(ys, stored, spec.dtype))
        if out["status"] == PASS and not out["matches_stored"]:
            out["status"] = FAIL
            out["why"] = (f"differs from the stored outputs beyond twice the {spec.dtype} tolerance (the layer or its "
                          f"parameters changed since they were stored): {out['stored_reason']}")
    return out


def _against_stored(ys: list, stored: list, dtype: str) -> dict:
    """How far this run's outputs are from the stored ones, through compare.compare (the one comparator:
    non-finite values placed alike, shapes equal) at twice the dtype's tolerance (two correct runtimes may
    each be one tolerance from the oracle)."""
    from ..compare import compare, tolerance_for

    tol = tolerance_for(dtype)
    tol = tolerance_for(dtype, 2 * tol.atol, 2 * tol.rtol)
    cs = [compare(y, np.asarray(z, np.float64), dtype, tol) for y, z in zip(ys, stored)]
    bad = next((c for c in cs if not c.passed), None)
    return {"max_diff_from_stored": max((c.max_abs_err for c in cs), default=0.0), "matches_stored": bad is None,
            "stored_reason": bad.reason if bad else None}


GOLDEN_META = "normonnx-golden.json"  # in a --save-outputs folder: which layer each test-data folder holds


class Golden:
    """--save-outputs: each judged layer's inputs (as the oracle takes them) and the model's outputs. A path ending
    in .npz: one compressed file. Any other path: a new folder in ONNX's own test-data layout, one folder per layer
    (`layerK/test_data_set_S/input_0.pb`, `output_0.pb`: TensorProtos onnx.load_tensor reads), with the cut-out
    layer as `model.onnx` where it takes exactly the stored tensors, so ONNX Runtime's onnx_test_runner runs it."""

    def __init__(self, path: str | Path):
        from ..safeio import check_output_folder, check_output_path

        self.path = Path(path)
        self.folder = self.path.suffix != ".npz"
        if self.folder:
            check_output_folder(self.path, "--save-outputs", "or a path ending in .npz for one file")
        else:
            check_output_path(self.path, "golden outputs")
        self.arrays: dict[str, np.ndarray] = {}
        self.models: dict[int, bytes] = {}
        self.layers: list[dict] = []

    def add(self, lc: LayerCheck, xs: list[np.ndarray], ys: list[np.ndarray], layer_path: Path | None = None) -> None:
        self.layers.append({"index": lc.index, "layer": lc.norm.nodes[0], "output": lc.norm.output, "samples": len(xs)})
        for s, (x, y) in enumerate(zip(xs, ys)):
            self.arrays[f"x_{lc.index}_{s}"], self.arrays[f"y_{lc.index}_{s}"] = np.asarray(x), np.asarray(y)
        if self.folder and layer_path is not None and xs and _takes(layer_path, xs[0], ys[0]):
            self.models[lc.index] = layer_path.read_bytes()

    def write(self) -> None:
        import io
        import json

        from ..safeio import atomic_write

        if self.folder:
            return self._write_folder()
        meta = np.frombuffer(json.dumps({"normonnx_golden": 1, "layers": self.layers}).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, __meta__=meta, **self.arrays)
        atomic_write(self.path, buf.getvalue())

    def _write_folder(self) -> None:
        """Staged beside the folder, then renamed into place: a reader never sees half of it."""
        import json
        import os
        import tempfile

        from onnx import numpy_helper

        from ..safeio import check_output_folder, umask

        stage = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}."))
        try:
            for layer in self.layers:
                k = layer["index"]
                layer["dir"] = f"layer{k}"
                if k in self.models:
                    (stage / layer["dir"]).mkdir()
                    (stage / layer["dir"] / "model.onnx").write_bytes(self.models[k])
                for s in range(layer["samples"]):
                    d = stage / layer["dir"] / f"test_data_set_{s}"
                    d.mkdir(parents=True)
                    for what, key in (("input", "x"), ("output", "y")):
                        t = numpy_helper.from_array(self.arrays[f"{key}_{k}_{s}"], f"{what}_0")
                        (d / f"{what}_0.pb").write_bytes(t.SerializeToString())
            (stage / GOLDEN_META).write_text(json.dumps({"normonnx_golden": 2, "layers": self.layers}, indent=1))
            os.chmod(stage, 0o777 & ~umask())  # mkdtemp makes 0700: the folder gets what mkdir would give it
            check_output_folder(self.path, "--save-outputs", "or a path ending in .npz for one file")
            os.rename(stage, self.path)
        except BaseException:
            import shutil

            shutil.rmtree(stage, ignore_errors=True)
            raise


def _takes(layer_path: Path, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether the cut-out layer takes exactly the stored input and gives the stored output (one input, one output,
    their dtypes and ranks): not a norm judged after a permutation, or with extra inputs."""
    m = onnx.load(str(layer_path), load_external_data=False)
    ins = [i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    if len(ins) != 1 or len(m.graph.output) != 1:
        return False
    return all(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) == a.dtype and
               len(v.type.tensor_type.shape.dim) == a.ndim for v, a in ((ins[0], x), (m.graph.output[0], y)))


def load_golden(path: str | Path) -> dict[str, tuple[list, list]]:
    """layer name -> (stored inputs, stored outputs) of what --save-outputs wrote (a .npz file or a test-data
    folder); BadInput saying what is wrong."""
    import json
    import zipfile

    from ..safeio import check_regular_file

    p = Path(path)
    if p.is_dir():
        return _load_golden_folder(p)
    check_regular_file(p, "--load-outputs")
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            out = {}
            for layer in meta["layers"]:
                k, n = layer["index"], layer["samples"]
                out[layer["layer"]] = ([z[f"x_{k}_{s}"] for s in range(n)], [z[f"y_{k}_{s}"] for s in range(n)])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise BadInput(f"--load-outputs {p} is not a file `scan --activations --save-outputs` wrote "
                       f"({type(e).__name__}: {first_line(e, 120)})") from None
    return out


def _load_golden_folder(p: Path) -> dict[str, tuple[list, list]]:
    import json

    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    from ..safeio import check_regular_file

    out = {}
    try:
        check_regular_file(p / GOLDEN_META, "--load-outputs")
        meta = json.loads((p / GOLDEN_META).read_text())
        for layer in meta["layers"]:
            d = p / Path(layer["dir"]).name  # a name inside the folder, never a path out of it
            sets = [d / f"test_data_set_{s}" for s in range(int(layer["samples"]))]
            for s in sets:
                for f in ("input_0.pb", "output_0.pb"):
                    check_regular_file(s / f, "--load-outputs")
            out[layer["layer"]] = tuple([numpy_helper.to_array(onnx.load_tensor(str(s / f"{w}_0.pb"))) for s in sets]
                                        for w in ("input", "output"))
    except BadInput as e:
        raise BadInput(f"--load-outputs {p} is not a folder `scan --activations --save-outputs` wrote ({e})") from None
    except (OSError, ValueError, KeyError, TypeError, DecodeError) as e:  # JSONDecodeError is a ValueError
        raise BadInput(f"--load-outputs {p} is not a folder `scan --activations --save-outputs` wrote "
                       f"({type(e).__name__}: {first_line(e, 120)})") from None
    return out


def check_golden(path: str | Path, golden: str | Path, runtimes: list[str] | None = None,
                 input_shapes: dict | None = None, progress=None) -> ActivationReport:
    """--load-outputs: each stored layer of the model at `path`, cut out and run on each runtime (default:
    ORT CPU) on the stored inputs, judged against the oracle of those inputs, with its distance from the
    stored outputs. A stored layer the model no longer has, or a layer with nothing stored, is said so."""
    from ..runtimes import require
    from ..shapes import fix_input_shapes, infer_shapes

    stored = load_golden(golden)
    names = list(dict.fromkeys(runtimes or ["cpu"]))
    for n in names:
        if require(n).kind != "onnx":
            raise BadInput(f"--runtimes {n}: stored outputs are judged on ONNX runtimes")
    p = Path(path)
    model = load_model(p, load_external_data=False)
    if input_shapes:
        fix_input_shapes(model, input_shapes)
    analysed = infer_shapes(model)
    norms, _ = find_layers(analysed, p.parent)
    layers = [LayerCheck(i, f, replayed_only=True) for i, f in enumerate(norms)]
    report = ActivationReport(str(p), 0, f"--load-outputs {golden}", {}, layers)
    missing = sorted(set(stored) - {f.nodes[0] for f in norms})
    if missing:
        report.notes.append(f"stored layers this model does not have: {', '.join(missing[:5])}")
    extractor = Cutter(analysed, p.parent)
    with tempfile.TemporaryDirectory(prefix="normonnx-golden-") as tmp:
        for lc in layers:
            if lc.norm.nodes[0] not in stored:
                lc.why = "nothing stored for this layer"
                continue
            xs, ys = stored[lc.norm.nodes[0]]
            report.samples = max(report.samples, len(xs))
            if progress:
                progress(lc.index, len(layers), lc.norm)
            try:
                path_l = extractor.extract(lc.norm, Path(tmp) / f"layer{lc.index}.onnx")
            except BadInput as e:
                lc.why = str(e)
                continue
            for rt in names:
                lc.on[rt] = replay(path_l, lc, xs, rt, stored=ys)
    report.provider = ",".join(names)
    return report
