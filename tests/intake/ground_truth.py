"""Ground truth for the intake corpus (ONNX files that other toolchains write): the manifest format,
the expected-norm record, and the two checks every file passes before it counts — it runs on ONNX
Runtime CPU, and each expected norm's input and output are found among the graph's values by running
it (so the recorded axes are those of the tensor as it appears in the ONNX graph, NCHW or NHWC).

Needs only numpy, onnx and onnxruntime, so both builders (build_foreign.py in the converters' venv,
build_local.py in the project's) and benchmarks/intake_recall.py share it.

Manifest (OUT_DIR/manifest.json):
    {"version": 1, "builder": ..., "seed": ..., "files": [FILE, ...], "dropped": [{file, producer, why}],
     "duplicates": [{file, same_as}]}
    FILE = {"file", "producer", "class", "opset", "options", "inputs": {name: [shape, dtype]},
            "expected": [NORM, ...],   # what a correct tool reports, in graph order
            "folded": [...],           # framework norms the converter turned into plain per-channel affine
                                       #   (nothing left to find: a norm reported there is unexpected)
            "other": [...],            # norm-like structure that is none of the five kinds (e.g. Keras'
                                       #   deprecated rms_scaling: x * rsqrt(var(x) + eps) * gamma)
            "notes": str}
    NORM = {"kind": bn|ln|in|gn|rms, "eps", "affine", "groups", "channel_axis", "normalized_axes",
            "input_shape", "layout", "stats_dtype", "reduction_dtypes", "weight", "bias",
            ("mean", "var" for bn), "framework_axes", "input", "output", "input_perm", "locate_error", "op_chain", "param_ops"}

Axes: `normalized_axes` are axes of the norm's input tensor in the ONNX graph (`input`), non-negative.
  ln/rms: the reduced axes. in: the reduced (spatial) axes; bn: the axes its statistics run over (all but
  the channel axis). gn: the reduced axes *including* `channel_axis`, which is split into `groups`
  contiguous groups (NHWC GroupNorm: normalized_axes [1, 2, 3], channel_axis 3).
  `framework_axes` are the same axes as the framework module saw its input (Keras/Flax: channels-last).
`weight`/`bias` are the module's values, per channel along `channel_axis` (bn/in/gn) or in the shape of
  the normalized axes (ln/rms), flattened; null when the module has none.
`stats_dtype`: the element type the mean/variance are computed in, read from the graph: the output type
  of the region's reductions; for a native LayerNormalization/GroupNormalization-21/RMSNormalization its
  stash_type (float32 unless set); for BatchNormalization/InstanceNormalization the input's type.
  `reduction_dtypes`: the output type of every reduction in the region, in order (a float64 variance
  behind a float32 mean shows there).
`input`/`output`: graph value names (null when the value does not exist, e.g. inside a fused
  SkipLayerNormalization); `op_chain`: the op types from input to output; `param_ops`: ops that feed the
  region from constants only (DequantizeLinear, CastLike, ...).
"""
from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

MANIFEST_VERSION = 1
KINDS = ("bn", "ln", "in", "gn", "rms")
FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64",
               TensorProto.BFLOAT16: "bfloat16"}
REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "GlobalAveragePool", "ReduceL2"}
# a value matches a framework activation when max|onnx - framework| <= TOL * max|framework|: loose
# enough for int8 Q/DQ (up to ~3 % seen after a quantized norm) and float16 (~0.1 %), tight enough that x - mean(x)
# (a per-row shift of ~10-20 % of the range) does not pass for x; the smallest-region pairing decides the rest
TOL = 0.06
TIGHT_TOL = 0.002


@dataclass
class Norm:
    """One normalization layer as the framework module holds it, with its activations on the probe.

    axes: the framework's reduced axes of the module's input (non-negative; for gn they include the
    channel axis). x, y: the module's input and output on the probe input (for locating them)."""

    kind: str
    eps: float
    axes: tuple[int, ...]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    groups: int | None = None
    channel_axis: int | None = None
    mean: np.ndarray | None = None
    var: np.ndarray | None = None
    layout: str = ""
    note: str = ""
    x: np.ndarray | None = field(default=None, repr=False)
    y: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        if self.x is not None:
            self.axes = tuple(sorted(a % self.x.ndim for a in self.axes))
            if self.channel_axis is not None:
                self.channel_axis %= self.x.ndim

    def record(self) -> dict:
        """The manifest entry before locating (framework axes)."""
        def flat(a):
            return None if a is None else [float(v) for v in np.asarray(a, np.float64).reshape(-1)]

        d = {"kind": self.kind, "eps": float(self.eps), "affine": self.weight is not None or self.bias is not None,
             "groups": self.groups, "channel_axis": self.channel_axis, "normalized_axes": list(self.axes),
             "framework_axes": list(self.axes), "input_shape": list(self.x.shape) if self.x is not None else None,
             "layout": self.layout, "stats_dtype": None, "weight": flat(self.weight), "bias": flat(self.bias)}
        if self.kind == "bn":
            d.update(mean=flat(self.mean), var=flat(self.var))
        if self.note:
            d["note"] = self.note
        return d


# -- running a model ----------------------------------------------------------------------------------
def ort_session(model: onnx.ModelProto | str | Path, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def ort_check(path: Path, feeds: dict[str, np.ndarray]) -> str | None:
    """None when the file loads and runs on ORT CPU with every output finite, else why not (one line)."""
    try:
        outs = ort_session(path).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - any refusal by ORT drops the file
        return f"ORT CPU: {first_line(e)}"
    for o in outs:
        if np.issubdtype(np.asarray(o).dtype, np.floating) and not np.all(np.isfinite(o)):
            return "ORT CPU: non-finite output on the probe input"
    return None


def first_line(e: BaseException) -> str:
    for line in str(e).strip().splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(e).__name__


def all_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every float value of the main graph on `feeds` (graph inputs included), ORT CPU, no graph
    optimization, so each value is the one the graph names."""
    m = copy.deepcopy(model)
    try:
        typed = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - contrib ops or out-of-order nodes: use what is declared
        typed = m
    types = {v.name: v.type for v in [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]}
    have = {o.name for o in m.graph.output}
    untyped = []
    for n in m.graph.node:
        for name in n.output:
            if not name or name in have:
                continue
            have.add(name)
            t = types.get(name)
            if t is None or not t.HasField("tensor_type") or not t.tensor_type.elem_type:
                untyped.append(onnx.ValueInfoProto(name=name))  # ORT infers it (a function op's output)
            elif t.tensor_type.elem_type in FLOAT_TYPES:
                vi = onnx.ValueInfoProto(name=name)
                vi.type.tensor_type.elem_type = t.tensor_type.elem_type
                m.graph.output.append(vi)
    typed_only = copy.deepcopy(m)
    m.graph.output.extend(untyped)
    try:
        sess = ort_session(m, optimize=False)
    except Exception:  # noqa: BLE001 - an untyped value ORT cannot expose: the typed ones only
        sess = ort_session(typed_only, optimize=False)
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, feeds), strict=True))
    values.update(feeds)
    return {k: v for k, v in values.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}


# -- graph helpers ------------------------------------------------------------------------------------
class Index:
    """Producers, consumers and a topological position for every value of a main graph (sorted here
    when the file is out of order, as ORT's loader does)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.consts = {t.name for t in g.initializer}
        self.inputs = {i.name for i in g.input} - self.consts
        self.nodes = _topological(list(g.node), self.consts | self.inputs)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for v in n.input:
                if v:
                    self.consumers.setdefault(v, []).append(i)

    def position(self, value: str) -> int:
        return self.producer.get(value, -1)

    def descendants(self, value: str) -> set[int]:
        seen, stack = set(), [value]
        while stack:
            for i in self.consumers.get(stack.pop(), []):
                if i not in seen:
                    seen.add(i)
                    stack.extend(o for o in self.nodes[i].output if o)
        return seen

    def ancestors(self, value: str) -> set[int]:
        seen, stack = set(), [value]
        while stack:
            i = self.producer.get(stack.pop())
            if i is not None and i not in seen:
                seen.add(i)
                stack.extend(v for v in self.nodes[i].input if v)
        return seen

    def region(self, start: str | None, end: str) -> list[int]:
        """Node positions on a path from `start` to `end` (both values), in topological order."""
        back = self.ancestors(end)
        nodes = back & self.descendants(start) if start else back
        return sorted(nodes)

    def constant_feeders(self, region: list[int], start: str | None) -> list[int]:
        """Nodes outside the region that feed it and compute from constants only (no graph input)."""
        live = set().union(*(self.descendants(v) for v in self.inputs)) if self.inputs else set()
        inside, out = set(region), set()
        for i in region:
            for v in self.nodes[i].input:
                out |= {j for j in self.ancestors(v) if j not in inside and j not in live}
        return sorted(out)

    def chain(self, start: str | None, end: str) -> str:
        return "/".join(self.nodes[i].op_type for i in self.region(start, end))


def _topological(nodes: list, known: set[str]) -> list:
    """Kahn's order, stable: a node comes out once every input it reads is known (a cycle keeps the
    remaining nodes in file order at the end)."""
    known = set(known) | {""}
    produced = {o for n in nodes for o in n.output}
    out, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(v in known or v not in produced for v in n.input):
                out.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            return out + rest
        pending = rest
    return out


# -- locating a norm's input and output ---------------------------------------------------------------
def _matches(a: np.ndarray, ref: np.ndarray) -> list[tuple[tuple[int, ...], float]]:
    """(perm, relative error) for each axis permutation p with a ~= ref.transpose(p)."""
    if a.size != ref.size or a.ndim != ref.ndim:
        return []
    scale = float(np.max(np.abs(ref))) or 1.0
    found = []
    perms = itertools.permutations(range(ref.ndim)) if ref.ndim <= 5 else [tuple(range(ref.ndim))]
    for p in perms:
        t = ref.transpose(p)
        if t.shape != a.shape:
            continue
        err = float(np.max(np.abs(a.astype(np.float64) - t))) / scale
        if err <= TOL:
            found.append((tuple(p), err))
    return found


def locate(model: onnx.ModelProto, feeds: dict[str, np.ndarray], norms: list[Norm]) -> list[dict]:
    """The manifest entries of `norms`, each with its input/output value in the graph, axes in the
    layout of that value, the op chain between them and the statistics' dtype.

    Candidates are the values equal to the module's input (output) up to an axis permutation and TOL;
    the pair that encloses the fewest nodes wins (see _pair), so of several copies of the input (a Cast,
    a DequantizeLinear, a Transpose) the one the norm reads is taken."""
    values = all_values(model, feeds)
    idx = Index(model)
    # dtypes as the run produced them, then as declared (initializers, values ORT did not expose)
    typed = {**_types(model), **{k: str(np.asarray(v).dtype) for k, v in values.items()}}
    out = []
    for norm in norms:
        rec = norm.record()
        ins = [(idx.position(v), v, p, e) for v, a in values.items() for p, e in _matches(np.asarray(a), norm.x)]
        ins = [c for c in ins if c[0] >= 0 or c[1] in idx.inputs]
        outs_all = [(idx.position(v), v, p, e) for v, a in values.items() for p, e in _matches(np.asarray(a), norm.y)]
        # tight first (float32 and float16 copies), loose only where nothing pairs so (Q/DQ): a loose
        # tolerance alone can take x - mean(x) for x when the mean is small (a LayerNorm over 80 values)
        for tol in (TIGHT_TOL, TOL):
            inp, res = _pair(idx, [c for c in ins if c[3] <= tol], [o for o in outs_all if o[3] <= tol])
            if inp is not None and res is not None:
                break
        perm = inp[2] if inp else (res[2] if res else tuple(range(norm.x.ndim)))
        # the ONNX tensor is framework.transpose(perm): framework axis a sits at ONNX axis perm.index(a)
        where = {a: perm.index(a) for a in range(len(perm))}
        rec.update(normalized_axes=sorted(where[a] for a in norm.axes),
                   channel_axis=where[norm.channel_axis] if norm.channel_axis is not None else None,
                   input_shape=[norm.x.shape[p] for p in perm], input_perm=list(perm),
                   input=inp[1] if inp else None, output=res[1] if res else None,
                   locate_error=max(inp[3] if inp else 0.0, res[3] if res else 0.0))
        if res:
            # no input value (fused into e.g. SkipLayerNormalization): the chain is the output's producer
            region = (idx.region(rec["input"], res[1]) if inp else []) or [idx.position(res[1])]
            rec["op_chain"] = "/".join(idx.nodes[i].op_type for i in region)
            feeders = idx.constant_feeders(region, rec["input"])
            rec["param_ops"] = sorted({idx.nodes[i].op_type for i in feeders})
            rec["stats_dtype"] = _stats_dtype(idx, region, typed, rec["input"])
            rec["reduction_dtypes"] = [typed.get(idx.nodes[i].output[0]) for i in region
                                       if idx.nodes[i].op_type in REDUCTIONS]
        else:
            rec.update(op_chain=None, param_ops=[], stats_dtype=None, reduction_dtypes=[])
        out.append(rec)
    return out


def _pair(idx: Index, ins: list, outs: list):
    """The (input, output) candidates that enclose the smallest region: for each input copy, the
    earliest matching output among its descendants (or beside it: a SkipLayerNormalization computes
    the sum it reads as a second output), then the pair with the fewest nodes between, the later input
    first (a Cast or DequantizeLinear copy right before the norm is the one it reads)."""
    best = None
    for c in ins:
        live = idx.descendants(c[1]) | {idx.position(c[1])}
        mine = [o for o in outs if o[1] != c[1] and o[0] >= 0 and o[0] in live]
        if not mine:
            continue
        o = min(mine, key=lambda t: (t[0], t[3]))
        key = (len(idx.region(c[1], o[1])), -c[0], c[3])
        if best is None or key < best[0]:
            best = (key, c, o)
    if best is not None:
        return best[1], best[2]
    # no input value (fused away): the earliest matching output anywhere
    outs = [o for o in outs if o[0] >= 0]
    return (max(ins, key=lambda c: (c[0], -c[3])) if ins else None,
            min(outs, key=lambda t: (t[0], t[3])) if outs else None)


def _types(model: onnx.ModelProto) -> dict[str, str]:
    try:
        m = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001
        m = model
    out = {}
    for v in [*m.graph.value_info, *m.graph.input, *m.graph.output]:
        t = v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else 0
        if t in FLOAT_TYPES:
            out[v.name] = FLOAT_TYPES[t]
    for t in m.graph.initializer:
        if t.data_type in FLOAT_TYPES:
            out[t.name] = FLOAT_TYPES[t.data_type]
    return out


def _stats_dtype(idx: Index, region: list[int], typed: dict[str, str], start: str | None) -> str | None:
    for i in region:
        n = idx.nodes[i]
        if n.op_type in REDUCTIONS and n.output and n.output[0] in typed:
            return typed[n.output[0]]
    for i in region:
        n = idx.nodes[i]
        if n.op_type in ("LayerNormalization", "GroupNormalization", "RMSNormalization",
                         "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization"):
            stash = next((a.i for a in n.attribute if a.name == "stash_type"), 1)
            return FLOAT_TYPES.get(stash, "float32") if n.domain in ("", "ai.onnx") else "float32"
        if n.op_type in ("BatchNormalization", "InstanceNormalization", "GroupNorm", "SkipGroupNorm"):
            return typed.get(n.input[0])
    return typed.get(start) if start else None


# -- the manifest -------------------------------------------------------------------------------------
@dataclass
class Manifest:
    builder: str
    seed: int
    files: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    _graphs: dict[bytes, str] = field(default_factory=dict, repr=False)

    def add(self, out_dir: Path, name: str, model: onnx.ModelProto, *, producer: str, cls: str,
            options: dict, feeds: dict[str, np.ndarray], norms: list[Norm], folded: list[dict] = (),
            other: list[dict] = (), notes: str = "") -> bool:
        """Check `model` (runs on ORT CPU; not a duplicate of a file already written), locate its norms,
        write OUT_DIR/name.onnx and record it. False (and a `dropped` or `duplicates` entry) when not."""
        key = _graph_key(model)
        if key in self._graphs:
            self.duplicates.append({"file": f"{name}.onnx", "producer": producer, "same_as": self._graphs[key]})
            return False
        path = Path(out_dir) / f"{name}.onnx"
        onnx.save(model, str(path))
        why = ort_check(path, feeds)
        if why is None:
            try:
                expected = locate(model, feeds, norms)
            except Exception as e:  # noqa: BLE001 - a file whose values cannot be read is not ground truth
                why = f"locating its norms failed: {first_line(e)}"
        if why is not None:
            path.unlink()
            self.dropped.append({"file": path.name, "producer": producer, "why": why})
            print(f"  DROPPED {path.name}: {why}", flush=True)
            return False
        lost = [e for e in expected if e["output"] is None]
        self._graphs[key] = path.name
        self.files.append({
            "file": path.name, "producer": producer, "class": cls, "opset": _opset(model), "options": options,
            "inputs": {k: [list(v.shape), str(v.dtype)] for k, v in feeds.items()},
            "expected": expected, "folded": list(folded), "other": list(other),
            "notes": notes + (f"; {len(lost)} expected norm(s) not located in the graph's values" if lost else "")})
        print(f"  {path.name}: {len(expected)} norms ({', '.join(e['kind'] for e in expected) or '-'})"
              + (f"; NOT LOCATED: {len(lost)}" if lost else ""), flush=True)
        return True

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / "manifest.json"
        doc = {"version": MANIFEST_VERSION, "builder": self.builder, "seed": self.seed, "files": self.files,
               "dropped": self.dropped, "duplicates": self.duplicates}
        path.write_text(json.dumps(doc, indent=1) + "\n")
        return path


def _graph_key(model: onnx.ModelProto) -> bytes:
    g = copy.deepcopy(model.graph)
    g.name = ""  # converters name the graph after the call; the same graph at another opset is kept
    return g.SerializeToString(deterministic=True) + str(sorted((o.domain, o.version) for o in model.opset_import)).encode()


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def load_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())
