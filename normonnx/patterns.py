"""The patterns scan recognizes: each returns a FoundNorm (what the layer is, where, its risks and
parameter tensors) or nothing. Native ops, ONNX Runtime contrib ops, the GroupNorm instance-trick,
and LayerNorm/RMSNorm chains decomposed the way exporters and people write them; searched in the
main graph, in If/Loop/Scan bodies and in model-local functions."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx

from .errors import BadInput
from .graph import DEFAULT_DOMAINS, MS, Graph, check_initializers, check_node, opset_of
from .graph import attr as _attr
from .tables import KIND_OF_NATIVE_OP, LOW_PRECISION, per_feature

NATIVE = KIND_OF_NATIVE_OP
CONTRIB = {"LayerNormalization": "ln", "SimplifiedLayerNormalization": "rms", "SkipLayerNormalization": "ln",
           "SkipSimplifiedLayerNormalization": "rms", "GroupNorm": "gn", "SkipGroupNorm": "gn",
           "EmbedLayerNormalization": "ln"}
# Risks are data: a stable code (what fix's rules and tests match) and a message (what people read).
# Rewording a message changes nothing a rule does.
RISKS = {
    "gn-function-body": "ORT has no GroupNormalization kernel: it inlines the function body, whose variance is "
                        "E[x^2]-E[x]^2 (NaN at large offsets and on zero-variance groups)",
    "gn18-per-group-affine": "GroupNormalization-18: scale/bias per group, not per channel (onnx/onnx#5466)",
    # com.microsoft GroupNorm/SkipGroupNorm kernels compute the variance in one pass (CUDA only)
    "one-pass-variance": "com.microsoft GroupNorm computes E[x^2]-E[x]^2 in one pass: wrong at large offsets",
    "variance-e-x2": "variance as E[x^2]-E[x]^2: cancels catastrophically at large offsets",
    "fp16-statistics": "float16 statistics without float32 accumulation",
    "fp16-stash": "float16 statistics without float32 accumulation (stash_type != 1)",
    "eps-outside-sqrt": "eps added outside the sqrt: std + eps, not sqrt(var + eps)",
    "training-mode": "training_mode=1: normalizes with batch statistics",
    "trick-affine": "InstanceNormalization inside the GroupNorm trick has a non-identity scale/bias",
}


@dataclass(frozen=True)
class Risk:
    """A risk of one found layer: `code` is stable (rules match it), the message is for people."""

    code: str

    @property
    def message(self) -> str:
        return RISKS[self.code]

    def __str__(self) -> str:
        return self.message


def risk(code: str) -> Risk:
    if code not in RISKS:
        raise KeyError(f"unknown risk code {code!r}")
    return Risk(code)


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
    risks: tuple[Risk, ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    extra_inputs: tuple[str, ...] = ()  # inputs set to zero to check the norm of x alone: Skip*'s residual
    param_layout: str = "per-channel"  # or "per-group" (GroupNormalization-18)
    pre_bias: str | None = None  # a constant added before normalizing (Skip*'s bias): zeroed for the check
    unvalidatable: str | None = None  # why this layer cannot be checked as a norm of one input
    scope: str = ""  # "" for the main graph, else where: "If 'cond' then_branch", "function local.Block"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "form": self.form, "op": self.op, "nodes": list(self.nodes), "input": self.input,
                "output": self.output, "axes": list(self.axes) if self.axes is not None else None,
                "groups": self.groups, "eps": self.eps, "affine": self.affine, "dtype": self.dtype,
                "risks": [r.message for r in self.risks],
                "risk_codes": [r.code for r in self.risks], "params": dict(self.params), "scope": self.scope or "main graph"}


def _other(node, name: str, g: Graph) -> str | None:
    """The input of a binary node that is not `name` (comparing through Cast)."""
    if len(node.input) < 2:
        return None
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
                    return out, [ia, ie] + nodes, eps, [risk("eps-outside-sqrt")]
    return None


def _divide(g: Graph, denom: str, numer: str):
    """numer / denom as Div(numer, denom), Mul(numer, Reciprocal(denom)), or Mul(numer, Div(1, denom))
    (torch.rsqrt through the TorchScript exporter): (out, nodes) or None."""
    for i in g.uses(denom, "Div"):
        d = g.nodes[i]
        if g.origin(d.input[1]) != g.origin(denom):
            continue
        if g.origin(d.input[0]) == g.origin(numer):
            return d.output[0], [i]
        if g.scalar(d.input[0]) == 1.0:  # 1 / denom, then a Mul below
            found = _times(g, d.output[0], numer)
            if found:
                return found[0], [i, found[1]]
    for ir in g.uses(denom, "Reciprocal"):
        found = _times(g, g.nodes[ir].output[0], numer)
        if found:
            return found[0], [ir, found[1]]
    return None


def _times(g: Graph, inv: str, numer: str):
    """The Mul(numer, inv) consuming `inv`: (out, node index) or None."""
    for im in g.uses(inv, "Mul"):
        other = _other(g.nodes[im], inv, g)
        if other is not None and g.origin(other) == g.origin(numer):
            return g.nodes[im].output[0], im
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
    return g.dtype(reduce_input) in LOW_PRECISION


def _find_decomposed(g: Graph, used: set[int]) -> list[FoundNorm]:
    found = []
    for i, n in enumerate(g.nodes):
        if i in used or n.op_type != "ReduceMean" or n.domain not in DEFAULT_DOMAINS or not n.input:
            continue
        if _attr(n, "keepdims", 1) != 1:
            continue  # a mean without its reduced axes broadcasts against other dims: not a norm's statistics
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
                        if _attr(g.nodes[irm], "keepdims", 1) == 1:
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
                                risks = [risk("variance-e-x2")]
            if var is None:
                continue  # a mean-centering without a variance is not a norm
            chain = _denominator_chain(g, var, d)
            if chain is None:
                continue
            normed, den_nodes, eps, den_risks = chain
            out, aff_nodes, weight, bias = _affine(g, _through_casts(g, normed))
            idx = [i, isub] + var_nodes + den_nodes + aff_nodes
            if _accumulates_in_low_precision(g, x):
                risks.append(risk("fp16-statistics"))
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
            risks.append(risk("fp16-statistics"))
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
        risks.append(risk("trick-affine"))
    idx = [g.producer[n.input[0]], i, r2s[0]] + aff_nodes
    params = tuple((k, v) for k, v in (("weight", weight), ("bias", bias)) if v)
    return FoundNorm("gn", "instance-trick", "Reshape/InstanceNormalization/Reshape" + "".join(
        "/" + g.nodes[j].op_type for j in aff_nodes), tuple(g.names[j] for j in sorted(idx)), r1.input[0], out,
        None, groups, float(_attr(n, "epsilon", 1e-5)), weight is not None, g.dtype(r1.input[0]), tuple(risks), params)


def _native(g: Graph, i: int, n, opset: int) -> FoundNorm | None:
    # ORT registers SimplifiedLayerNormalization in the default domain (its fusion writes it there)
    if not ((n.domain in DEFAULT_DOMAINS and n.op_type in (*NATIVE, "SimplifiedLayerNormalization"))
            or (n.domain == MS and n.op_type in CONTRIB)):
        return None
    name = g.names[i]
    x = n.input[0]
    dt = g.dtype(x)
    if n.domain in DEFAULT_DOMAINS and n.op_type in NATIVE:
        kind = NATIVE[n.op_type]
        risks, layout, axes, groups = [], "per-channel", None, None
        eps = float(_attr(n, "epsilon", 1e-5))
        if kind == "bn":
            params = (("weight", n.input[1]), ("bias", n.input[2]), ("running_mean", n.input[3]),
                      ("running_var", n.input[4]))
            if _attr(n, "training_mode", 0):
                risks.append(risk("training-mode"))
        elif kind == "in":
            params = (("weight", n.input[1]), ("bias", n.input[2]))
        elif per_feature(kind):
            axes = (int(_attr(n, "axis", -1)),)
            params = tuple((k, v) for k, v in zip(("weight", "bias"), n.input[1:]) if v)
            if dt in LOW_PRECISION and _attr(n, "stash_type", 1) != 1:
                risks.append(risk("fp16-stash"))
        else:  # gn
            groups = int(_attr(n, "num_groups"))
            params = (("weight", n.input[1]), ("bias", n.input[2]))
            risks.append(risk("gn-function-body"))
            if opset < 21:
                layout = "per-group"
                risks.append(risk("gn18-per-group-affine"))
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
    if (n.domain == MS and n.op_type in CONTRIB) or (n.domain in DEFAULT_DOMAINS and n.op_type ==
                                                      "SimplifiedLayerNormalization"):
        kind = CONTRIB[n.op_type]
        eps = float(_attr(n, "epsilon", 1e-5))
        extra: tuple[str, ...] = ()
        groups, axes, pre_bias, blocked, risks = None, None, None, None, ()
        inputs = list(n.input) + [""] * 9

        def named(*pairs):
            return tuple((k, inputs[i]) for k, i in pairs if inputs[i])

        if n.op_type in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"):
            # (input, skip, gamma, beta?, bias?) and (input, skip, gamma, bias?): LN(x + skip + bias)
            extra, axes = (inputs[1],), (-1,)
            params = named(("weight", 2), ("bias", 3)) if kind == "ln" else named(("weight", 2))
            pre_bias = inputs[4] if kind == "ln" else inputs[3]
        elif n.op_type in ("GroupNorm", "SkipGroupNorm"):
            # (X, gamma, beta) and (X, gamma, beta, skip, bias?): NHWC, an optional fused SiLU
            groups = int(_attr(n, "groups", 0))
            if groups < 1:
                raise BadInput(f"{name}: com.microsoft {n.op_type} has groups={groups}; it needs a positive group count")
            params = named(("weight", 1), ("bias", 2))
            risks = (risk("one-pass-variance"),)
            if n.op_type == "SkipGroupNorm":
                extra, pre_bias = (inputs[3],), inputs[4]
            if _attr(n, "activation", 0):
                blocked = "fuses a SiLU after the norm: the oracle checks the norm alone"
            if _attr(n, "channels_last", 1):
                blocked = "channels_last (NHWC) input: the oracle takes NCHW"
        elif n.op_type == "EmbedLayerNormalization":
            # (input_ids, segment_ids, word, position, segment embeddings, gamma, beta, ...)
            axes, params = (-1,), named(("weight", 5), ("bias", 6))
            blocked = "normalizes the sum of embedding lookups inside the op: there is no float input to drive"
        else:
            axes = (int(_attr(n, "axis", -1)),)
            params = named(("weight", 1), ("bias", 2))
        return FoundNorm(kind, "contrib", f"{n.domain or 'ai.onnx'}.{n.op_type}", (name,), x, n.output[0], axes,
                         groups, eps, True, dt, risks, params, extra, pre_bias=pre_bias or None, unvalidatable=blocked)
    return None


# the ops the patterns read: each such node is schema-checked first, so a malformed one is a
# one-line BadInput naming it, never an IndexError deep in a matcher
PATTERN_OPS = {"ReduceMean", "Sub", "Pow", "Mul", "Div", "Add", "Sqrt", "Reciprocal", "Reshape", "Cast",
               "Identity", *NATIVE, "SimplifiedLayerNormalization"}


def check_graph(model: onnx.ModelProto) -> None:
    """The checks a norm search relies on, for the main graph: every initializer's data fits its
    dims, every node the patterns read fits its op's schema. BadInput names the first offender."""
    check_initializers(model.graph)
    _check_nodes(Graph(model.graph), opset_of(model))


def _check_nodes(g: Graph, opset: int) -> None:
    for n in g.nodes:
        if (n.domain in DEFAULT_DOMAINS and n.op_type in PATTERN_OPS) or (n.domain == MS and n.op_type in CONTRIB):
            check_node(n, opset)


def _find_in_graph(g: Graph, opset: int, scope: str) -> list[FoundNorm]:
    g.check_order()
    _check_nodes(g, opset)
    check_initializers(g.graph)
    found: list[tuple[int, FoundNorm]] = []
    used: set[int] = set()
    for i, n in enumerate(g.nodes):
        if n.op_type == "InstanceNormalization" and n.domain in DEFAULT_DOMAINS:
            trick = _instance_trick(g, i, n)
            if trick:
                found.append((i, trick))
                used.update(g.index[nm] for nm in trick.nodes)
                continue
        f = _native(g, i, n, opset)
        if f:
            found.append((i, f))
            used.add(i)
    for f in _find_decomposed(g, used):
        found.append((g.index[f.nodes[0]], f))
    out = [f for _, f in sorted(found, key=lambda t: t[0])]
    return [dataclasses.replace(f, scope=scope) for f in out] if scope else out


def _subgraphs(g: Graph):
    """(path, GraphProto) for every graph-valued attribute of g's nodes: 'node.attr' ('If_3.then_branch')."""
    for i, n in enumerate(g.nodes):
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else (
                list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else [])
            for k, sg in enumerate(subs):
                yield f"{n.name or f'{n.op_type}_{i}'}.{a.name}" + (f"[{k}]" if len(subs) > 1 else ""), sg


@dataclass(frozen=True)
class LeftOut:
    """Something shaped like a norm that is not an activation norm, and why it is not listed."""

    kind: str
    node: str
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


WEIGHT_STD = "weight standardisation: normalizes a value computed from constants (a weight), not an activation"


def find_all(model: onnx.ModelProto, *, infer: bool = True,
             main: Graph | None = None) -> tuple[list[FoundNorm], list[LeftOut]]:
    """Every norm in the model — main graph first (graph order), then If/Loop/Scan bodies at any depth
    and model-local functions, each outside the main graph naming its path ('If_3.then_branch/...',
    'local.Block/...') — and what was left out with why (weight standardisation). infer=False when
    the caller has already run shape inference (it is the costliest step on a large model); `main`,
    the caller's index of that model's main graph, so a scan builds it once."""
    if infer:
        try:
            model = onnx.shape_inference.infer_shapes(model)  # types/shapes for dtype and spec derivation
        except Exception:
            pass
    opset = opset_of(model)
    main = main if main is not None else Graph(model.graph)
    graphs = [(main, opset, "")]
    # an explicit queue, not recursion: a hostile model may nest bodies hundreds deep
    queue = [(main, path, sg) for path, sg in _subgraphs(main)]
    while queue:
        outer, path, sg = queue.pop(0)
        g = Graph(sg, outer=outer, prefix=f"{path}/")
        graphs.append((g, opset, path))
        queue.extend((g, f"{path}/{sub}", ssg) for sub, ssg in _subgraphs(g))
    for fn in model.functions:
        fn_opset = next((o.version for o in fn.opset_import if o.domain in DEFAULT_DOMAINS), opset)
        path = f"{fn.domain}.{fn.name}"
        graphs.append((Graph(onnx.helper.make_graph(list(fn.node), fn.name, [], []), prefix=f"{path}/"), fn_opset,
                       path))
    norms, left_out = [], []
    for g, gopset, path in graphs:
        for f in _find_in_graph(g, gopset, path):
            if g.from_constants(f.input):
                left_out.append(LeftOut(f.kind, f.nodes[0], WEIGHT_STD))
            else:
                norms.append(f)
    return norms, left_out


def find_norms(model: onnx.ModelProto) -> list[FoundNorm]:
    """Every activation norm in the model (see find_all)."""
    return find_all(model)[0]
