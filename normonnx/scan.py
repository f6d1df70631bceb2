"""Find every normalization layer inside a user's ONNX model, say what it is and how risky it is,
and (optionally) validate each one in isolation against the float64 oracle.

Detected: native ops (BatchNormalization, InstanceNormalization, LayerNormalization,
GroupNormalization-18/21, RMSNormalization), ONNX Runtime contrib ops (com.microsoft), the GroupNorm
instance-trick, and LayerNorm/RMSNorm chains decomposed the way exporters and people write them.
The model is only read: external data is checked (never read outside the model's folder) and
loaded only for the tensors of the layers being validated.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import BadInput
from .graph import opset_of

NATIVE = {"BatchNormalization": "bn", "InstanceNormalization": "in", "LayerNormalization": "ln",
          "GroupNormalization": "gn", "RMSNormalization": "rms"}
CONTRIB = {"LayerNormalization": "ln", "SimplifiedLayerNormalization": "rms", "SkipLayerNormalization": "ln",
           "SkipSimplifiedLayerNormalization": "rms", "GroupNorm": "gn"}
MS = "com.microsoft"
PASS_THROUGH = ("Cast", "Identity")
FLOAT16 = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class FoundNorm:
    """One normalization layer found in a graph. `params` maps weight/bias/running_* to tensor names."""

    kind: str  # bn, ln, in, gn, rms
    form: str  # native, contrib, instance-trick, decomposed
    op: str  # the op (with version/domain) or the chain's shape, e.g. "ReduceMean/Sub/Pow/.../Div"
    nodes: tuple[str, ...]
    input: str
    output: str
    axes: tuple[int, ...] | None = None
    groups: int | None = None
    eps: float | None = None
    affine: bool = False
    dtype: str | None = None
    risks: tuple[str, ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    extra_inputs: tuple[str, ...] = ()  # e.g. SkipLayerNormalization's residual
    param_layout: str = "per-channel"  # or "per-group" (GroupNormalization-18)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "form": self.form, "op": self.op, "nodes": list(self.nodes), "input": self.input,
                "output": self.output, "axes": list(self.axes) if self.axes is not None else None,
                "groups": self.groups, "eps": self.eps, "affine": self.affine, "dtype": self.dtype,
                "risks": list(self.risks), "params": dict(self.params)}


class Graph:
    """Producer/consumer maps and constant lookup over a model's main graph (nothing is executed)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        self.names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(self.nodes)]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                self.producer[o] = i
            for x in n.input:
                self.consumers.setdefault(x, []).append(i)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list] = {}
        vis = list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)
        for v in vis:
            tt = v.type.tensor_type
            self.types[v.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                       for d in tt.shape.dim]
        for t in model.graph.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = list(t.dims)

    def node(self, name: str):
        i = self.producer.get(name)
        return (i, self.nodes[i]) if i is not None else (None, None)

    def origin(self, name: str) -> str:
        """Follow a value back through Cast/Identity to where it was computed."""
        seen = 0
        while seen < 16:
            i, n = self.node(name)
            if n is None or n.op_type not in PASS_THROUGH:
                return name
            name = n.input[0]
            seen += 1
        return name

    def uses(self, name: str, op_type: str | tuple[str, ...]) -> list[int]:
        """Consumers of `name` (looking forward through Cast/Identity) with the given op type."""
        ops = (op_type,) if isinstance(op_type, str) else op_type
        out, frontier, seen = [], [name], set()
        while frontier:
            v = frontier.pop()
            for i in self.consumers.get(v, []):
                if i in seen:
                    continue
                seen.add(i)
                n = self.nodes[i]
                if n.op_type in ops and n.domain in ("", "ai.onnx"):
                    out.append(i)
                elif n.op_type in PASS_THROUGH:
                    frontier.append(n.output[0])
        return out

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output (None if computed or stored externally)."""
        name = self.origin(name)
        if name in self.initializers:
            t = self.initializers[name]
            if t.data_location == onnx.TensorProto.EXTERNAL:
                return None
            return numpy_helper.to_array(t)
        i, n = self.node(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.asarray(onnx.helper.get_attribute_value(a))
                if a.name in ("value_floats", "value_ints"):
                    return np.asarray(onnx.helper.get_attribute_value(a))
        return None

    def is_const(self, name: str) -> bool:
        name = self.origin(name)
        if name in self.initializers:
            return True
        _, n = self.node(name)
        return n is not None and n.op_type == "Constant"

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def dtype(self, name: str) -> str | None:
        t = self.types.get(name)
        return {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.DOUBLE: "float64"}.get(t) if t else None


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _other(node, name: str, g: Graph) -> str | None:
    """The input of a binary node that is not `name` (comparing through Cast)."""
    a, b = node.input[0], node.input[1]
    if g.origin(a) == g.origin(name):
        return b
    if g.origin(b) == g.origin(name):
        return a
    return None


def _reduce_axes(g: Graph, node) -> tuple[int, ...] | None:
    axes = _attr(node, "axes")  # opset <= 17: an attribute
    if axes is None and len(node.input) > 1 and node.input[1]:  # opset >= 18: an input
        v = g.const(node.input[1])
        axes = v.reshape(-1).tolist() if v is not None else None
    return tuple(int(a) for a in axes) if axes is not None else None


def _is_square_of(g: Graph, node, x: str) -> bool:
    if node.op_type == "Pow":
        return g.origin(node.input[0]) == g.origin(x) and g.scalar(node.input[1]) == 2.0
    if node.op_type == "Mul":
        return g.origin(node.input[0]) == g.origin(x) and g.origin(node.input[1]) == g.origin(x)
    return False


# -- decomposed chains ---------------------------------------------------------------------------
def _denominator_chain(g: Graph, var: str, numer: str):
    """From a variance value to the normalized output: (out_value, nodes, eps, risks) or None.

    Recognizes Add(var, eps) -> Sqrt -> Div(numer, .) | Reciprocal -> Mul(numer, .);
    Add(var, eps) -> Pow(., 0.5) -> Div; and Sqrt(var) -> Add(., eps) -> Div (eps outside the sqrt)."""
    for ia in g.uses(var, ("Add", "Sqrt")):
        a = g.nodes[ia]
        risks = []
        if a.op_type == "Add":
            eps_name = _other(a, var, g)
            eps = g.scalar(eps_name) if eps_name else None
            if eps is None:
                continue
            roots = [(i, "sqrt") for i in g.uses(a.output[0], "Sqrt")] + [
                (i, "pow") for i in g.uses(a.output[0], "Pow") if g.scalar(g.nodes[i].input[1]) == 0.5]
            for ir, how in roots:
                r = g.nodes[ir]
                found = _divide(g, r.output[0], numer)
                if found:
                    out, nodes = found
                    return out, [ia, ir] + nodes, eps, risks
        else:  # Sqrt(var) then eps: eps outside the square root
            for ie in g.uses(a.output[0], "Add"):
                e = g.nodes[ie]
                eps_name = _other(e, a.output[0], g)
                eps = g.scalar(eps_name) if eps_name else None
                if eps is None:
                    continue
                found = _divide(g, e.output[0], numer)
                if found:
                    out, nodes = found
                    return out, [ia, ie] + nodes, eps, ["eps added outside the sqrt: std + eps, not sqrt(var + eps)"]
    return None


def _divide(g: Graph, denom: str, numer: str):
    for i in g.uses(denom, "Div"):
        d = g.nodes[i]
        if g.origin(d.input[0]) == g.origin(numer) and g.origin(d.input[1]) == g.origin(denom):
            return d.output[0], [i]
    for ir in g.uses(denom, "Reciprocal"):
        for im in g.uses(g.nodes[ir].output[0], "Mul"):
            if _other(g.nodes[im], g.nodes[ir].output[0], g) is not None and \
                    g.origin(_other(g.nodes[im], g.nodes[ir].output[0], g)) == g.origin(numer):
                return g.nodes[im].output[0], [ir, im]
    return None


def _affine(g: Graph, value: str):
    """Optional Mul(value, const) then Add(., const): (out, nodes, weight_name, bias_name)."""
    nodes, weight, bias, out = [], None, None, value
    muls = [i for i in g.uses(out, "Mul") if _other(g.nodes[i], out, g) and g.is_const(_other(g.nodes[i], out, g))]
    if len(muls) == 1:
        weight = _other(g.nodes[muls[0]], out, g)
        out = g.nodes[muls[0]].output[0]
        nodes.append(muls[0])
    adds = [i for i in g.uses(out, "Add") if _other(g.nodes[i], out, g) and g.is_const(_other(g.nodes[i], out, g))]
    if len(adds) == 1:
        bias = _other(g.nodes[adds[0]], out, g)
        out = g.nodes[adds[0]].output[0]
        nodes.append(adds[0])
    return out, nodes, weight, bias


def _through_casts(g: Graph, value: str) -> str:
    """If `value` is only consumed by a Cast (a float16 island closing), continue from its output."""
    cons = g.consumers.get(value, [])
    if len(cons) == 1 and g.nodes[cons[0]].op_type == "Cast":
        return g.nodes[cons[0]].output[0]
    return value


def _accumulates_in_low_precision(g: Graph, reduce_input: str) -> bool:
    return g.types.get(reduce_input) in FLOAT16


def _find_decomposed(g: Graph, used: set[int]) -> list[FoundNorm]:
    found = []
    for i, n in enumerate(g.nodes):
        if i in used or n.op_type != "ReduceMean" or n.domain not in ("", "ai.onnx"):
            continue
        x = n.input[0]
        mean = n.output[0]
        axes = _reduce_axes(g, n)
        # LayerNorm: d = x - mean, var = mean(d^2) (or E[x^2] - mean^2), normalized = d / sqrt(var + eps)
        for isub in g.uses(mean, "Sub"):
            s = g.nodes[isub]
            if g.origin(s.input[1]) != g.origin(mean) or g.origin(s.input[0]) != g.origin(x):
                continue
            d = s.output[0]
            var, var_nodes, risks = None, [], []
            for isq in g.uses(d, ("Pow", "Mul")):
                if _is_square_of(g, g.nodes[isq], d):
                    for irm in g.uses(g.nodes[isq].output[0], "ReduceMean"):
                        var, var_nodes = g.nodes[irm].output[0], [isq, irm]
            if var is None:  # E[x^2] - E[x]^2
                for isq in g.uses(x, ("Pow", "Mul")):
                    if not _is_square_of(g, g.nodes[isq], x):
                        continue
                    for irm in g.uses(g.nodes[isq].output[0], "ReduceMean"):
                        for isv in g.uses(g.nodes[irm].output[0], "Sub"):
                            sv = g.nodes[isv]
                            _, m2 = g.node(sv.input[1])
                            if m2 is not None and m2.op_type in ("Mul", "Pow") and _is_square_of(g, m2, mean):
                                var = sv.output[0]
                                var_nodes = [isq, irm, g.producer[sv.input[1]], isv]
                                risks = ["variance as E[x^2]-E[x]^2: cancels catastrophically at large offsets"]
            if var is None:
                continue  # a mean-centering without a variance is not a norm
            chain = _denominator_chain(g, var, d)
            if chain is None:
                continue
            normed, den_nodes, eps, den_risks = chain
            out, aff_nodes, weight, bias = _affine(g, _through_casts(g, normed))
            idx = [i, isub] + var_nodes + den_nodes + aff_nodes
            if _accumulates_in_low_precision(g, x):
                risks.append("float16 statistics without float32 accumulation")
            found.append(_finish(g, "ln", "decomposed", "ReduceMean/Sub/" + "/".join(
                g.nodes[j].op_type for j in var_nodes + den_nodes), idx, x, out, axes, None, eps, weight, bias,
                risks + den_risks))
            used.update(idx)
            break
        if i in used:
            continue
        # RMSNorm: ms = mean(x^2), normalized = x / sqrt(ms + eps)
        _, sq = g.node(x)
        if sq is None or sq.op_type not in ("Pow", "Mul"):
            continue
        src = sq.input[0]
        if not _is_square_of(g, sq, src):
            continue
        _, pre = g.node(g.origin(src))
        if pre is not None and pre.op_type == "Sub":
            _, m = g.node(g.origin(pre.input[1]))
            if m is not None and m.op_type == "ReduceMean":
                continue  # the variance of a centered value: a LayerNorm chain, not RMSNorm
        chain = _denominator_chain(g, mean, src)
        if chain is None:
            continue
        normed, den_nodes, eps, den_risks = chain
        out, aff_nodes, weight, bias = _affine(g, _through_casts(g, normed))
        risks = list(den_risks)
        if _accumulates_in_low_precision(g, src):
            risks.append("float16 statistics without float32 accumulation")
        idx = [g.producer[x], i] + den_nodes + aff_nodes
        found.append(_finish(g, "rms", "decomposed", "Pow|Mul/ReduceMean/" + "/".join(
            g.nodes[j].op_type for j in den_nodes), idx, src, out, axes, None, eps, weight, bias, risks))
        used.update(idx)
    return found


def _finish(g, kind, form, op, idx, x, out, axes, groups, eps, weight, bias, risks) -> FoundNorm:
    # a chain wrapped in Reshape(N, G, -1) ... Reshape back is a decomposed GroupNorm
    _, pre = g.node(g.origin(x))
    if kind == "ln" and pre is not None and pre.op_type == "Reshape":
        shape = g.const(pre.input[1])
        if shape is not None and shape.size == 3:
            kind, groups = "gn", int(shape.reshape(-1)[1])
    params = tuple((k, v) for k, v in (("weight", weight), ("bias", bias)) if v)
    ordered = tuple(g.names[j] for j in sorted(set(idx)))
    return FoundNorm(kind, form, op, ordered, g.origin(x) if kind != "gn" else x, out, axes, groups, eps,
                     weight is not None, g.dtype(g.origin(x)) or g.dtype(x), tuple(risks), params)


# -- native, contrib and instance-trick ----------------------------------------------------------
def _instance_trick(g: Graph, i: int, n) -> FoundNorm | None:
    """Reshape -> InstanceNormalization -> Reshape -> Mul -> Add: GroupNorm with G = IN's channels."""
    _, r1 = g.node(n.input[0])
    r2s = [j for j in g.consumers.get(n.output[0], []) if g.nodes[j].op_type == "Reshape"]
    if r1 is None or r1.op_type != "Reshape" or len(r2s) != 1:
        return None
    scale = g.const(n.input[1])
    groups = int(scale.size) if scale is not None else None
    if groups is None:
        shape = g.const(r1.input[1])
        groups = int(shape.reshape(-1)[1]) if shape is not None and shape.size >= 2 else None
    out, aff_nodes, weight, bias = _affine(g, g.nodes[r2s[0]].output[0])
    risks = []
    b = g.const(n.input[2])
    if scale is not None and (not np.allclose(scale, 1) or (b is not None and not np.allclose(b, 0))):
        risks.append("InstanceNormalization inside the GroupNorm trick has a non-identity scale/bias")
    idx = [g.producer[n.input[0]], i, r2s[0]] + aff_nodes
    params = tuple((k, v) for k, v in (("weight", weight), ("bias", bias)) if v)
    return FoundNorm("gn", "instance-trick", "Reshape/InstanceNormalization/Reshape" + "".join(
        "/" + g.nodes[j].op_type for j in aff_nodes), tuple(g.names[j] for j in sorted(idx)), r1.input[0], out,
        None, groups, float(_attr(n, "epsilon", 1e-5)), weight is not None, g.dtype(r1.input[0]), tuple(risks), params)


def _native(g: Graph, i: int, n, opset: int) -> FoundNorm | None:
    # ORT registers SimplifiedLayerNormalization in the default domain (its fusion writes it there)
    if not ((n.domain in ("", "ai.onnx") and n.op_type in (*NATIVE, "SimplifiedLayerNormalization"))
            or (n.domain == MS and n.op_type in CONTRIB)):
        return None
    name = g.names[i]
    x = n.input[0]
    dt = g.dtype(x)
    if n.domain in ("", "ai.onnx") and n.op_type in NATIVE:
        kind = NATIVE[n.op_type]
        risks, layout, axes, groups = [], "per-channel", None, None
        eps = float(_attr(n, "epsilon", 1e-5))
        if kind == "bn":
            params = (("weight", n.input[1]), ("bias", n.input[2]), ("running_mean", n.input[3]),
                      ("running_var", n.input[4]))
            if _attr(n, "training_mode", 0):
                risks.append("training_mode=1: normalizes with batch statistics")
        elif kind == "in":
            params = (("weight", n.input[1]), ("bias", n.input[2]))
        elif kind in ("ln", "rms"):
            axes = (int(_attr(n, "axis", -1)),)
            params = tuple((k, v) for k, v in zip(("weight", "bias"), n.input[1:]) if v)
            if dt in ("float16", "bfloat16") and _attr(n, "stash_type", 1) != 1:
                risks.append("float16 statistics without float32 accumulation (stash_type != 1)")
        else:  # gn
            groups = int(_attr(n, "num_groups"))
            params = (("weight", n.input[1]), ("bias", n.input[2]))
            risks.append("ORT has no GroupNormalization kernel: it inlines the function body, whose variance is "
                         "E[x^2]-E[x]^2 (NaN at large offsets and on zero-variance groups)")
            if opset < 21:
                layout = "per-group"
                risks.append("GroupNormalization-18: scale/bias per group, not per channel (onnx/onnx#5466)")
                # the usual repair: identity per-group scale, the per-channel affine as Mul/Add after it
                out, aff, w, b = _affine(g, n.output[0])
                if aff:
                    post = tuple((k, v) for k, v in (("post_weight", w), ("post_bias", b)) if v)
                    return FoundNorm(kind, "native", f"{n.op_type}-{opset}" + "".join(
                        "/" + g.nodes[j].op_type for j in aff), (name, *(g.names[j] for j in aff)), x, out, axes,
                        groups, eps, True, dt, tuple(risks), params + post, (), layout)
        version = f"-{opset}" if kind == "gn" else ""
        return FoundNorm(kind, "native", n.op_type + version, (name,), x, n.output[0], axes, groups, eps,
                         kind != "rms" or len(n.input) > 1, dt, tuple(risks), params, (), layout)
    if (n.domain == MS and n.op_type in CONTRIB) or (n.domain in ("", "ai.onnx") and n.op_type ==
                                                      "SimplifiedLayerNormalization"):
        kind = CONTRIB[n.op_type]
        eps = float(_attr(n, "epsilon", 1e-5))
        extra: tuple[str, ...] = ()
        groups, axes = None, None
        if n.op_type.startswith("Skip"):
            extra = (n.input[1],)
            names = ("weight", "bias") if kind == "ln" else ("weight",)
            params = tuple((k, v) for k, v in zip(names, n.input[2:]) if v)
            if n.op_type == "SkipLayerNormalization" and len(n.input) > 4 and n.input[4]:
                extra += ("bias-before-norm",)
            axes = (-1,)
        elif kind == "gn":
            groups = int(_attr(n, "groups"))
            params = (("weight", n.input[1]), ("bias", n.input[2]))
            if _attr(n, "channels_last", 1):
                extra = ("channels_last",)
        else:
            axes = (int(_attr(n, "axis", -1)),)
            params = tuple((k, v) for k, v in zip(("weight", "bias"), n.input[1:]) if v)
        return FoundNorm(kind, "contrib", f"{n.domain or 'ai.onnx'}.{n.op_type}", (name,), x, n.output[0], axes, groups, eps, True, dt,
                         (), params, extra)
    return None


def find_norms(model: onnx.ModelProto) -> list[FoundNorm]:
    """Every norm in the model's main graph, in graph order."""
    try:
        model = onnx.shape_inference.infer_shapes(model)  # types/shapes for dtype and spec derivation
    except Exception:
        pass
    g = Graph(model)
    opset = opset_of(model)
    found: list[tuple[int, FoundNorm]] = []
    used: set[int] = set()
    for i, n in enumerate(g.nodes):
        if n.op_type == "InstanceNormalization" and n.domain in ("", "ai.onnx"):
            trick = _instance_trick(g, i, n)
            if trick:
                found.append((i, trick))
                used.update(g.names.index(nm) for nm in trick.nodes)
                continue
        f = _native(g, i, n, opset)
        if f:
            found.append((i, f))
            used.add(i)
    for f in _find_decomposed(g, used):
        found.append((g.names.index(f.nodes[0]), f))
    return [f for _, f in sorted(found, key=lambda t: t[0])]


# -- the scan ------------------------------------------------------------------------------------
def check_external_locations(model: onnx.ModelProto, base: Path) -> None:
    """Refuse (BadInput) any external-data location outside the model's folder; read nothing."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    root = base.resolve()
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            target = (root / loc).resolve()
            if Path(loc).is_absolute() or root not in target.parents:
                raise BadInput(f"external data location {loc!r} (tensor {t.name!r}) escapes the model's folder: refused")


@dataclass
class ScanReport:
    model: str
    opset: int
    producer: str
    norms: list[FoundNorm]
    fused: dict[int, bool | None] = field(default_factory=dict)
    validations: dict[int, dict] = field(default_factory=dict)  # index -> summary of a ValidationReport

    @property
    def validated(self) -> bool:
        return bool(self.validations)

    @property
    def passed(self) -> bool:
        return all(v.get("passed") is not False for v in self.validations.values())

    def to_dict(self) -> dict:
        norms = []
        for i, f in enumerate(self.norms):
            d = f.to_dict()
            d["ort_fused"] = self.fused.get(i)
            if i in self.validations:
                d.update(self.validations[i])
            norms.append(d)
        out = {"model": self.model, "opset": self.opset, "producer": self.producer, "count": len(self.norms),
               "norms": norms}
        if self.validated:
            out["passed"] = self.passed
        return out


def scan(path: str | Path, *, validate: bool = False, runtimes: list[str] | None = None,
         inputs: list[str] | None = None, check_fusion: bool = True, progress=None) -> ScanReport:
    """Find the norms of the model at `path`; with validate=True check each one in isolation."""
    from .graph import load_model

    p = Path(path)
    model = load_model(p, load_external_data=False)
    check_external_locations(model, p.parent)
    try:
        model = onnx.shape_inference.infer_shapes(model)  # value_info for the extractor and for dtypes
    except Exception:
        pass
    norms = find_norms(model)
    report = ScanReport(str(p), opset_of(model), f"{model.producer_name} {model.producer_version}".strip(), norms)
    if not (validate or check_fusion) or not norms:
        return report
    with tempfile.TemporaryDirectory(prefix="normonnx-scan-") as tmp:
        for i, f in enumerate(norms):
            if progress:
                progress(i, len(norms), f)
            layer = None
            try:
                layer = extract_layer(model, p.parent, f, Path(tmp) / f"layer{i}.onnx")
            except BadInput as e:
                if validate:
                    report.validations[i] = {"passed": None, "validation": f"not validated: {e}"}
                continue
            if check_fusion and f.form == "decomposed":
                report.fused[i] = _ort_fuses(layer)
            if validate:
                report.validations[i] = validate_layer(f, layer, runtimes, inputs)
    return report


def extract_layer(model: onnx.ModelProto, base: Path, f: FoundNorm, out: Path) -> Path:
    """The layer as a standalone single-input model (onnx.utils.Extractor), its weights loaded."""
    from onnx.utils import Extractor

    from .graph import _load_external_data_safely

    if "bias-before-norm" in f.extra_inputs:
        raise BadInput(f"{f.op} adds a bias before normalizing: LN(x + skip + bias) is not one norm of x")
    residual = [e for e in f.extra_inputs if e != "channels_last"]
    _ensure_value_info(model, [f.input, f.output, *residual])
    try:
        sub = Extractor(model).extract_model([f.input, *residual], [f.output])
    except Exception as e:
        raise BadInput(f"cannot extract {f.nodes[0]}..{f.nodes[-1]}: {str(e).splitlines()[0][:200]}") from None
    for r in residual:
        # Skip*LayerNormalization normalizes x + skip: with skip = 0 it is the norm of x alone
        vi = next(i for i in sub.graph.input if i.name == r)
        sub.graph.input.remove(vi)
        zero = onnx.helper.make_tensor("zero", vi.type.tensor_type.elem_type, [1], [0])
        sub.graph.node.insert(0, onnx.helper.make_node("ConstantOfShape", [f"{r}_shape"], [r], value=zero))
        sub.graph.node.insert(0, onnx.helper.make_node("Shape", [f.input], [f"{r}_shape"]))
    _load_external_data_safely(sub, base)  # only this layer's tensors
    # a standalone layer keeps only what a runtime needs; drop value_info that may reference the rest
    del sub.graph.value_info[:]
    if any(n.domain == MS for n in sub.graph.node) and not any(o.domain == MS for o in sub.opset_import):
        sub.opset_import.append(onnx.helper.make_opsetid(MS, 1))
    onnx.save(sub, str(out))
    return out


SHAPE_PRESERVING = {"Cast", "Identity", "Relu", "Sigmoid", "Tanh", "Erf", *NATIVE, *CONTRIB}


def _ensure_value_info(model: onnx.ModelProto, names: list[str]) -> None:
    """onnx's shape inference knows nothing of com.microsoft ops: give a norm's boundary tensors the
    type and shape they inherit through shape-preserving ops (norms, casts, activations)."""
    g = Graph(model)
    for name in names:
        if name in g.types:
            continue
        src, elem = name, None
        for _ in range(32):
            if src in g.shapes:
                break
            _, n = g.node(src)
            if n is None or n.op_type not in SHAPE_PRESERVING:
                break
            if n.op_type == "Cast" and elem is None:
                elem = _attr(n, "to")
            src = n.input[0]
        shape = g.shapes.get(src)
        elem = elem or g.types.get(src, onnx.TensorProto.FLOAT)
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, shape))


def _ort_fuses(layer: Path) -> bool | None:
    """Does ORT (default optimization level) turn this decomposed chain into one norm op?"""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="normonnx-fuse-") as tmp:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(tmp) / "o.onnx")
        so.log_severity_level = 3
        try:
            ort.InferenceSession(str(layer), so, providers=["CPUExecutionProvider"])
            opt = onnx.load(so.optimized_model_filepath)
        except Exception:
            return None
    return any(n.op_type.endswith("Normalization") for n in opt.graph.node)


def _concrete_shape(shape: list | None, kind: str) -> tuple[int, ...] | None:
    """Symbolic dims get small stand-ins (batch 2, others 8) so the layer can run at one shape."""
    if not shape:
        return None
    return tuple(d if isinstance(d, int) and d > 0 else (2 if i == 0 else 8) for i, d in enumerate(shape))


def derive_spec(f: FoundNorm, layer: onnx.ModelProto):
    """(NormSpec, params) that the extracted layer claims to compute, from its graph alone."""
    from .spec import NormSpec

    g = Graph(onnx.shape_inference.infer_shapes(layer))
    x = layer.graph.input[0]
    shape = _concrete_shape([d.dim_value if d.HasField("dim_value") else None
                             for d in x.type.tensor_type.shape.dim], f.kind)
    if shape is None:
        raise BadInput("the layer's input shape is unknown")
    dtype = f.dtype or g.dtype(x.name)
    dtype = dtype if dtype in ("float32", "float16", "bfloat16") else None
    if dtype is None:
        raise BadInput(f"layer dtype {f.dtype} is not float32/float16/bfloat16")
    params = {}
    for name, tensor in f.params:
        v = g.const(tensor)
        if v is None:
            raise BadInput(f"{name} ({tensor}) is computed in the graph, not a constant")
        params[name] = np.asarray(v, dtype=np.float32)
    rank = len(shape)
    kw = dict(eps=f.eps if f.eps and f.eps > 0 else 1e-5, dtype=dtype)
    if f.eps is not None and f.eps <= 0:
        raise BadInput(f"eps = {f.eps}: a zero-variance row divides by zero; the oracle needs eps > 0")
    if f.kind in ("ln", "rms"):
        axes = sorted(a % rank for a in (f.axes or (-1,)))
        if f.form != "decomposed":
            axes = list(range(axes[0], rank))
        if axes != list(range(axes[0], rank)):
            raise BadInput(f"normalizes axes {axes}, not trailing dims")
        nshape = shape[axes[0]:]
        for k in list(params):
            params[k] = np.broadcast_to(params[k].reshape(params[k].shape[-len(nshape):] if params[k].ndim >= len(nshape)
                                                          else params[k].shape), nshape).astype(np.float32)
        if f.kind == "ln" and "bias" in params and "weight" not in params:
            params["weight"] = np.ones(nshape, np.float32)
        spec = NormSpec(kind=f.kind, shape=shape, normalized_ndim=len(nshape), affine="weight" in params,
                        bias="bias" in params, **kw)
        return spec, params
    c = shape[1]
    for k in list(params):
        v = params[k].reshape(-1)
        if f.param_layout == "per-group" and v.size == f.groups and k in ("weight", "bias"):
            v = np.repeat(v, c // f.groups)  # GroupNormalization-18: one value per group, to per channel
        params[k] = v.astype(np.float32)
    # a per-channel Mul/Add after GroupNormalization-18 folds into the per-channel affine
    pw, pb = params.pop("post_weight", None), params.pop("post_bias", None)
    if pw is not None or pb is not None:
        w = params.get("weight", np.ones(c, np.float32))
        b = params.get("bias", np.zeros(c, np.float32))
        if pw is not None:
            w, b = w * pw, b * pw
        params["weight"], params["bias"] = w, b + (pb if pb is not None else 0)
    if f.kind == "bn":
        return NormSpec(kind="bn", shape=shape, track_running_stats=True, **kw), params
    if f.kind == "in":
        return NormSpec(kind="in", shape=shape, affine=True, **kw), params
    if "bias" in params and "weight" not in params:
        params["weight"] = np.ones(c, np.float32)
    if "weight" in params and "bias" not in params:
        params["bias"] = np.zeros(c, np.float32)
    return NormSpec(kind="gn", shape=shape, groups=f.groups or 1, affine="weight" in params, **kw), params


def validate_layer(f: FoundNorm, layer_path: Path, runtimes: list[str] | None, inputs: list[str] | None) -> dict:
    """Run the validate engine on one extracted layer; a summary dict (never raises)."""
    from .validate import validate

    try:
        spec, params = derive_spec(f, onnx.load(str(layer_path)))
        if any(e == "channels_last" for e in f.extra_inputs):
            raise BadInput("channels_last GroupNorm: the oracle takes NCHW")
        # the shape may hold stand-ins for symbolic dims: fix them in a copy so shapes line up
        m = onnx.load(str(layer_path))
        for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, spec.shape):
            if not d.HasField("dim_value"):
                d.dim_value = v
        onnx.save(m, str(layer_path))
        rep = validate(spec, model=layer_path, params=params, runtimes=runtimes or ["cpu"], inputs=inputs)
    except BadInput as e:
        return {"passed": None, "validation": f"not validated: {e}"}
    except Exception as e:
        return {"passed": False, "validation": f"error: {type(e).__name__}: {str(e)[:200]}"}
    bad = rep.failures()
    return {"passed": rep.passed, "spec_id": spec.id, "counts": rep.counts,
            "validation": "pass" if rep.passed else f"{bad[0].inputs}: {bad[0].reason or bad[0].error}" if bad
            else "nothing checked"}
