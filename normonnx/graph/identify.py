"""Finding norms in a graph on onnx_ir (`irview`), by their ops where an op says what it computes and by
what they compute where the graph writes a norm out.

- Native ops (BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization,
  RMSNormalization), ONNX Runtime's contrib norms and the GroupNorm instance-trick are read from the op,
  looking through Identity, Cast and Q/DQ pairs (a quantized model's GroupNorm is one GroupNorm).
- A norm written out is found from its statistics, whatever its spelling: every mean-type reduction
  (ReduceMean, GlobalAveragePool, ReduceSum or ReduceSumSquare divided by a count) is followed forward, in
  graph order, to the value where everything computed from it has merged back into the data path after a
  square root (its post-dominator): that value ends a norm, and its input is where the statistics started
  (back through squares and the centering Sub). Between the two lies the candidate region, whatever ops
  the converter wrote (folded affine, `Max(var, 0)` and `Where` guards, CastLike'd eps, float64 Casts,
  Q/DQ pairs, BatchNormalization fed computed statistics). What it computes is then *confirmed* by running
  the region on probe inputs (normonnx.engine.probe, on the engine floor): normalization sets, centering, eps,
  scale and shift, all measured, not assumed from the spelling.
- Structure shaped like a norm that cannot be made a norm of one input is named, never dropped: a
  "possible norm" with why (scan --validate counts it as not checked).
"""
from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass

import numpy as np
import onnx

from ..core.errors import BadInput
from ..core.tables import LOW_PRECISION, per_feature
from .graph import _all_graphs, check_initializers, check_node
from .irview import DEFAULT_DOMAINS, MS, TRANSPARENT, View, attr, is_op, is_qdq_pair, region, views
from .patterns import CONTRIB, NATIVE, WEIGHT_STD, FoundNorm, LeftOut, Risk, risk

MEAN_REDUCTIONS = ("ReduceMean", "GlobalAveragePool")
SUM_REDUCTIONS = ("ReduceSum", "ReduceSumSquare")
SQRT_LIKE = ("Sqrt", "Rsqrt")
# what a written-out norm is made of; a candidate region holding anything else (a Conv, an Exp) is no norm
VOCABULARY = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Max", "Min", "Abs", "Where", "Equal", "And",
    "Or", "Not", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "IsNaN", "IsInf", "ReduceMean", "ReduceSum",
    "ReduceSumSquare", "GlobalAveragePool", "ReduceMin", "ReduceMax", "ReduceProd", "Identity", "Cast", "CastLike",
    "QuantizeLinear", "DequantizeLinear", "Reshape", "Shape", "Gather", "Concat", "Slice", "Unsqueeze", "Squeeze",
    "Expand", "Transpose", "Flatten", "Size", "ConstantOfShape", "Range", "BatchNormalization", "Constant", "Clip",
    "Sign", "Floor", "Ceil", "Round",
}
LAYOUT = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "CastLike")
MERGE_LIMIT = 400  # nodes followed from one reduction before giving up on its merge point


@dataclass(frozen=True)
class Candidate:
    """What the structure of a written-out norm says before the probe confirms it: where it starts and ends,
    eps candidates (constants added to a statistic, a BatchNormalization's epsilon), the constants that may
    be its scale and shift, whether Q/DQ pairs run between its nodes, the dtype its statistics are computed in."""

    start: str
    output: str
    eps: tuple[float, ...] = ()
    frozen: tuple[str, ...] = ()  # shapes the region reads from outside it (computed from a Shape): fixed per run
    params: tuple[str, ...] = ()  # value names of per-feature constants inside the region
    qdq: bool = False
    stats_dtype: str | None = None
    centered: bool = True  # the structure subtracts a mean (the probe measures it)


# -- the search --------------------------------------------------------------------------------------------
def find_all(model: onnx.ModelProto, *, infer: bool = True, main=None, base=None) -> tuple[list[FoundNorm], list[LeftOut]]:
    """Every norm in the model -- main graph first (graph order), then If/Loop/Scan bodies at any depth and
    model-local functions, each outside the main graph naming its path ('If_3.then_branch/...',
    'local.Block/...') -- and what was left out with why (weight standardisation; possible norms not
    identified). Written-out norms are candidates until normonnx.engine.probe confirms them. infer=False when
    the caller has already run shape inference; `main` is accepted for callers that index the model
    themselves (unused); `base`: the model's folder, for parameters stored as external data."""
    import onnx_ir as ir

    from .graph import opset_of

    if infer:
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:
            pass
    opset = opset_of(model)
    for g in _all_graphs(model.graph):  # every initializer's data fits its dims (BadInput naming it otherwise)
        check_initializers(g)
    protos = {t.name: t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    try:
        irm = ir.from_proto(model)
    except Exception as e:
        raise BadInput(f"the model's graph cannot be read ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") \
            from None
    fn_opsets = {f"{f.domain}.{f.name}": f.opset_imports.get("", opset) for f in irm.functions.values()}
    norms, left_out = [], []
    for view, scope in views(irm, base, protos):
        found, skipped = find_in_view(view, fn_opsets.get(scope, opset), scope)
        norms += found
        left_out += skipped
    return norms, left_out


def find_in_view(view: View, opset: int, scope: str = "") -> tuple[list[FoundNorm], list[LeftOut]]:
    """The norms of one graph in graph order, and what was left out."""
    _check_nodes(view, opset)
    found: list[tuple[int, FoundNorm]] = []
    used: set[int] = set()
    for n in view.nodes:
        f = None
        if is_op(n, "InstanceNormalization"):
            f = _instance_trick(view, n)
        f = f or _native(view, n, opset)
        if f:
            nodes = _region_nodes(view, f)
            found.append((view.pos[n], dataclasses.replace(f, nodes=tuple(view.name(m) for m in nodes) or f.nodes)))
            used.update(id(m) for m in nodes)
            used.add(id(n))
    decomposed, possible = _written_out(view, used)
    found += decomposed
    left_out = list(possible)
    out = []
    for _, f in sorted(found, key=lambda t: t[0]):
        x = view.value(f.input)
        if x is not None and view.is_const(x):
            left_out.append(LeftOut(f.kind, f.nodes[0], WEIGHT_STD))
            continue
        out.append(dataclasses.replace(f, scope=scope) if scope else f)
    return out, left_out


def _check_nodes(view: View, opset: int) -> None:
    """Every node the finder reads fits its op's schema (a malformed one is a one-line BadInput naming it)."""
    from .patterns import PATTERN_OPS

    for n in view.nodes:
        if (n.domain in DEFAULT_DOMAINS and n.op_type in PATTERN_OPS) or (n.domain == MS and n.op_type in CONTRIB):
            check_node(_as_proto(n), opset)


def _as_proto(n) -> onnx.NodeProto:
    """Enough of the node for onnx's schema check: op, domain, name, input names, attribute kinds."""
    p = onnx.NodeProto(op_type=n.op_type, domain=n.domain, name=n.name or "")
    p.input.extend(v.name if v is not None else "" for v in n.inputs)
    p.output.extend(v.name or "" for v in n.outputs)
    for key, a in n.attributes.items():
        p.attribute.append(onnx.AttributeProto(name=key, type=int(a.type)))  # type: ignore[arg-type]  # takes an int
    return p


def _region_nodes(view: View, f: FoundNorm) -> list:
    x, y = view.value(f.input), view.value(f.output)
    if x is None or y is None:
        return []
    return region(view, x, y)


# -- native ops, contrib ops, the instance-trick --------------------------------------------------------------
def _affine(view: View, value):
    """Optional Mul(value, const) then Add(., const), through transparent ops and Q/DQ pairs:
    (out, weight value, bias value)."""
    out, weight, bias = value, None, None
    muls = [m for m in view.uses_through(out, "Mul") if _const_other(view, m, out) is not None]
    if len(muls) == 1:
        weight, out = _const_other(view, muls[0], out), muls[0].outputs[0]
    adds = [m for m in view.uses_through(out, "Add") if _const_other(view, m, out) is not None]
    if len(adds) == 1:
        bias, out = _const_other(view, adds[0], out), adds[0].outputs[0]
    return out, weight, bias


def _const_other(view: View, node, value):
    """The input of a binary node that is not `value` (comparing through transparent ops), if it is a constant."""
    if len(node.inputs) < 2:
        return None
    a, b = node.inputs[0], node.inputs[1]
    other = b if view.same(a, value) else a if view.same(b, value) else None
    return other if other is not None and view.is_const(other) and not _overridden(view, other) else None


def _overridden(view: View, v) -> bool:
    o = view.origin(v)
    return o is not None and view.overridable(o)


def _name(v) -> str:
    return v.name if v is not None else ""


def _instance_trick(view: View, n) -> FoundNorm | None:
    """Reshape -> InstanceNormalization -> Reshape -> Mul -> Add: GroupNorm with G = IN's channels (Q/DQ
    pairs between them, as a quantizer writes them, included)."""
    src = view.origin(n.inputs[0])
    r1 = src.producer() if src is not None else None
    r2s = view.uses_through(n.outputs[0], "Reshape")
    if not is_op(r1, "Reshape") or len(r2s) != 1:
        return None
    assert r1 is not None  # is_op is False for None
    scale = view.const(n.inputs[1])
    groups = int(scale.size) if scale is not None else None
    if groups is None:
        shape = view.const(r1.inputs[1]) if len(r1.inputs) > 1 else None
        groups = int(shape.reshape(-1)[1]) if shape is not None and shape.size >= 2 else None
    out, weight, bias = _affine(view, r2s[0].outputs[0])
    risks = []
    b = view.const(n.inputs[2])
    if scale is not None and (not np.allclose(scale, 1) or (b is not None and not np.allclose(b, 0))):
        risks.append(risk("trick-affine"))
    params = tuple((k, _name(v)) for k, v in (("weight", weight), ("bias", bias)) if v is not None)
    ops = "Reshape/InstanceNormalization/Reshape" + ("/Mul" if weight is not None else "") + ("/Add" if bias is not None else "")
    x = r1.inputs[0]
    return FoundNorm("gn", "instance-trick", ops, (view.name(n),), x.name, out.name, None, groups,
                     float(attr(n, "epsilon", 1e-5)), weight is not None, view.dtype(x), tuple(risks), params,
                     notes=_qdq_note(view, x, out))


def _qdq_note(view: View, x, y) -> tuple[str, ...]:
    nodes = region(view, x, y)
    return ("runs between Q/DQ pairs: checked as float (scan --activations measures its int8 rounding)",) if any(
        is_qdq_pair(m) for m in nodes) else ()


def _native(view: View, n, opset: int) -> FoundNorm | None:
    # ORT registers SimplifiedLayerNormalization in the default domain (its fusion writes it there)
    if not ((n.domain in DEFAULT_DOMAINS and n.op_type in (*NATIVE, "SimplifiedLayerNormalization"))
            or (n.domain == MS and n.op_type in CONTRIB)):
        return None
    name = view.name(n)
    x = n.inputs[0]
    dt = view.dtype(x)
    inputs = list(n.inputs) + [None] * 9
    if n.domain in DEFAULT_DOMAINS and n.op_type in NATIVE:
        kind = NATIVE[n.op_type]
        risks, layout, axes, groups = [], "per-channel", None, None
        eps = float(attr(n, "epsilon", 1e-5))
        stats = dt
        if kind == "bn":
            if any(v is not None and v.producer() is not None and not view.is_const(v) for v in inputs[3:5]):
                return None  # statistics computed in the graph (tf.keras' LayerNorm): a norm written out
            params = tuple((k, _name(inputs[i])) for k, i in (("weight", 1), ("bias", 2), ("running_mean", 3),
                                                              ("running_var", 4)))
            if attr(n, "training_mode", 0):
                risks.append(risk("training-mode"))
        elif kind == "in":
            params = (("weight", _name(inputs[1])), ("bias", _name(inputs[2])))
        elif per_feature(kind):
            axes = (int(attr(n, "axis", -1)),)
            params = tuple((k, _name(v)) for k, v in zip(("weight", "bias"), inputs[1:3], strict=False)
                           if v is not None)
            if dt in LOW_PRECISION:
                if attr(n, "stash_type", 1) != 1:
                    risks.append(risk("fp16-stash"))
                else:
                    stats = "float32"  # stash_type=1: the statistics are float32
        else:  # gn
            groups = int(attr(n, "num_groups"))
            params = (("weight", _name(inputs[1])), ("bias", _name(inputs[2])))
            risks.append(risk("gn-function-body"))
            if dt in LOW_PRECISION and opset >= 21 and attr(n, "stash_type", 1) == 1:
                stats = "float32"
            if opset < 21:
                layout = "per-group"
                risks.append(risk("gn18-per-group-affine"))
                # the usual repair: identity per-group scale, the per-channel affine as Mul/Add after it
                out, w, b = _affine(view, n.outputs[0])
                if w is not None or b is not None:
                    post = tuple((k, _name(v)) for k, v in (("post_weight", w), ("post_bias", b)) if v is not None)
                    return FoundNorm(kind, "native", f"{n.op_type}-{opset}" + ("/Mul" if w is not None else "") +
                                     ("/Add" if b is not None else ""), (name,), x.name, out.name, axes, groups, eps,
                                     True, dt, tuple(risks), params + post, (), layout, stats_dtype=stats,
                                     notes=_qdq_note(view, x, out))
        version = f"-{opset}" if kind == "gn" else ""
        return FoundNorm(kind, "native", n.op_type + version, (name,), x.name, n.outputs[0].name, axes, groups, eps,
                         kind != "rms" or inputs[1] is not None, dt, tuple(risks), params, (), layout, stats_dtype=stats)
    return _contrib(view, n)


def _contrib(view: View, n) -> FoundNorm:
    """ONNX Runtime's own norms (com.microsoft, and SimplifiedLayerNormalization in the default domain)."""
    name, x = view.name(n), n.inputs[0]
    dt = view.dtype(x)
    inputs = list(n.inputs) + [None] * 9
    kind = CONTRIB[n.op_type] if n.domain == MS else "rms"
    eps = float(attr(n, "epsilon", 1e-5))
    extra: tuple[str, ...] = ()
    risks: tuple[Risk, ...]
    groups, axes, pre_bias, blocked, risks = None, None, None, None, ()

    def named(*pairs):
        return tuple((k, inputs[i].name) for k, i in pairs if inputs[i] is not None and inputs[i].name)

    if n.op_type in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"):
        # (input, skip, gamma, beta?, bias?) and (input, skip, gamma, bias?): LN(x + skip + bias)
        extra, axes = (_name(inputs[1]),), (-1,)
        params = named(("weight", 2), ("bias", 3)) if kind == "ln" else named(("weight", 2))
        pre_bias = _name(inputs[4] if kind == "ln" else inputs[3])
    elif n.op_type in ("GroupNorm", "SkipGroupNorm"):
        # (X, gamma, beta) and (X, gamma, beta, skip, bias?): NHWC, an optional fused SiLU
        groups = int(attr(n, "groups", 0))
        if groups < 1:
            raise BadInput(f"{name}: com.microsoft {n.op_type} has groups={groups}; it needs a positive group count")
        params = named(("weight", 1), ("bias", 2))
        risks = (risk("one-pass-variance"),)
        if n.op_type == "SkipGroupNorm":
            extra, pre_bias = (_name(inputs[3]),), _name(inputs[4])
        if attr(n, "activation", 0):
            blocked = "fuses a SiLU after the norm: the oracle checks the norm alone"
        if attr(n, "channels_last", 1):
            blocked = "channels_last (NHWC) input: the oracle takes NCHW"
    elif n.op_type == "EmbedLayerNormalization":
        # (input_ids, segment_ids, word, position, segment embeddings, gamma, beta, ...)
        axes, params = (-1,), named(("weight", 5), ("bias", 6))
        blocked = "normalizes the sum of embedding lookups inside the op: there is no float input to drive"
    else:
        axes = (int(attr(n, "axis", -1)),)
        params = named(("weight", 1), ("bias", 2))
    return FoundNorm(kind, "contrib", f"{n.domain or 'ai.onnx'}.{n.op_type}", (name,), x.name, n.outputs[0].name, axes,
                     groups, eps, True, dt, risks, params, extra, pre_bias=pre_bias or None, unvalidatable=blocked,
                     stats_dtype="float32" if dt in LOW_PRECISION else dt)


# -- written out: from the statistics to the merge point ------------------------------------------------------
def _is_anchor(view: View, n) -> bool:
    """A reduction that takes a mean: ReduceMean, GlobalAveragePool, or a sum divided by a count."""
    if is_op(n, *MEAN_REDUCTIONS):
        return True
    if is_op(n, *SUM_REDUCTIONS):
        for m in view.uses_through(n.outputs[0], "Div", "Mul"):
            other = m.inputs[1] if view.same(m.inputs[0], n.outputs[0]) else None
            if other is None:
                continue
            c = view.scalar(other)
            if m.op_type == "Div" or (c is not None and 0 < c < 1):
                return True
    return False


@dataclass
class _Reached:
    """Where a reduction's influence merged back: the value, whether a square root (or a reciprocal of one,
    or a BatchNormalization) lies on the way, and the nodes crossed."""

    value: object
    rooted: bool
    nodes: list


def _same_shape(view: View, a, b) -> bool:
    """Same rank, and equal dims wherever both are known numbers (a symbolic dim may be anything)."""
    da, db = view.dims(a), view.dims(b)
    if da is None or db is None or len(da) != len(db):
        return False
    return all(not isinstance(x, int) or not isinstance(y, int) or x == y for x, y in zip(da, db, strict=False))


def merge_point(view: View, anchor, limit: int = MERGE_LIMIT) -> _Reached | None:
    """Follow everything computed from the reduction `anchor`, node by node in graph order, until one value is
    left that carries all of it and the data path has been joined (a value of the data's shape, not computed
    from the reduction, met a value that is): the end of the norm this reduction belongs to. None if it
    never merges within `limit` nodes, leaves the graph (a graph output, a subgraph) or meets an op no norm
    is made of."""
    flow = _Flow(view, anchor.inputs[0])
    if not all(flow.add(o) for o in anchor.outputs):
        return None
    while flow.heap:
        if flow.merged() is not None:
            return flow.merged()
        _, _, m = heapq.heappop(flow.heap)
        if len(flow.crossed) >= limit or (m.domain not in DEFAULT_DOMAINS or m.op_type not in VOCABULARY):
            return None
        if not flow.cross(m):
            return None
    return flow.merged()


class _Flow:
    """merge_point's walk: the values computed from the reduction still to be read (value, reads left), the nodes
    queued in graph order, those crossed, whether the data path has joined and a square root been passed."""

    def __init__(self, view: View, data):
        self.view, self.data = view, data
        self.live: dict[int, list] = {}
        self.heap: list = []
        self.queued: set[int] = set()
        self.crossed: list = []
        self.joined = self.rooted = False

    def add(self, v) -> bool:
        """v is computed from the reduction: queue its readers (False: it is read inside a subgraph)."""
        uses = v.uses()
        remaining = len(uses) + (1 if v.is_graph_output() else 0)  # a graph output is read after the graph
        if not remaining:
            return True
        self.live[id(v)] = [v, remaining]
        for u in uses:
            m = u.node
            if m not in self.view.pos:
                return False  # read inside an If/Loop/Scan body
            if id(m) not in self.queued:
                self.queued.add(id(m))
                heapq.heappush(self.heap, (self.view.pos[m], id(m), m))
        return True

    def cross(self, m) -> bool:
        """Node m reads what the reduction computed: its inputs are read once more, its outputs carry it on."""
        view = self.view
        self.crossed.append(m)
        for i in m.inputs:
            if i is None:
                continue
            if id(i) in self.live:
                self.live[id(i)][1] -= 1
                if self.live[id(i)][1] <= 0:
                    del self.live[id(i)]
            elif not view.is_const(i) and _maybe_same_shape(view, i, self.data):
                self.joined = True  # the data path meets the statistics
        if is_op(m, *SQRT_LIKE, "BatchNormalization") or (is_op(m, "Pow") and view.scalar(m.inputs[1]) in (0.5, -0.5)):
            self.rooted = True
        return all(self.add(o) for o in m.outputs)

    def merged(self) -> _Reached | None:
        """The one value left, once the data has joined and a root been passed, if it has the data's shape."""
        if len(self.live) == 1 and self.joined and self.rooted:
            (v, _), = self.live.values()
            if _maybe_same_shape(self.view, v, self.data):
                return _Reached(v, self.rooted, self.crossed)
        return None


def _maybe_same_shape(view: View, a, b) -> bool:
    """Same shape, or a shape inference left unknown (a converter's Reshape to a computed shape)."""
    da, db = view.dims(a), view.dims(b)
    return da is None or db is None or _same_shape(view, a, b)


def _square_of(view: View, v):
    """a if v is Pow(a, 2) or Mul(a, a) (through transparent ops), else None."""
    n = view.origin(v).producer()
    if is_op(n, "Pow") and view.scalar(n.inputs[1]) == 2.0:
        return n.inputs[0]
    if is_op(n, "Mul") and view.same(n.inputs[0], n.inputs[1]):
        return n.inputs[0]
    return None


def _start_of(view: View, anchor):
    """The value a norm's statistics start from: back from the reduction's input through squares, the ops that
    pass a value on, the centering Sub (x - mean(x)) and the shifting one (x - a sample of x: shifted
    statistics, exact on constant sets)."""
    v = anchor.inputs[0]
    for _ in range(8):
        v = view.origin(v)
        sq = _square_of(view, v)
        if sq is not None:
            v = sq
            continue
        n = v.producer()
        if is_op(n, "Sub") and (_is_reduction_of(view, n.inputs[1], n.inputs[0]) or
                                _is_sample_of(view, n.inputs[1], n.inputs[0])):
            v = n.inputs[0]
            continue
        if is_op(n, "Mul") and len(n.inputs) == 2:  # weighted moments (tf.keras): x times weights of ones
            w = [i for i in n.inputs if i is not None and (view.is_const(i) or _shape_only(view, i))]
            if len(w) == 1:
                v = n.inputs[1] if w[0] is n.inputs[0] else n.inputs[0]
                continue
        return v
    return v


def _is_sample_of(view: View, s, x) -> bool:
    n = view.origin(s).producer()
    return n is not None and is_op(n, "Slice", "Gather") and view.same(n.inputs[0], x)


def _is_reduction_of(view: View, stat, x) -> bool:
    n = view.origin(stat).producer()
    return n is not None and is_op(n, *MEAN_REDUCTIONS, *SUM_REDUCTIONS) and view.same(n.inputs[0], x)


def _written_out(view: View, used: set[int]) -> tuple[list[tuple[int, FoundNorm]], list[LeftOut]]:
    """Written-out norms (as candidates the probe confirms) and the possible norms that could not be made one."""
    ends: dict[int, list] = {}  # id(end value) -> [end value, anchors, rooted]
    partial = []
    for n in view.nodes:
        if id(n) in used or not _is_anchor(view, n):
            continue
        if view.is_const(n.inputs[0]) or _shape_only(view, n.inputs[0]):
            continue  # a statistic of constants or shapes (a count, a sum of weights): not of the data
        reached = merge_point(view, n)
        if reached is None or not reached.rooted:
            partial.append((n, reached))
            continue
        entry = ends.setdefault(id(reached.value), [reached.value, [], True])
        entry[1].append(n)
    found, possible, claimed, failed = [], [], set(), []
    for y, anchors, _ in ends.values():
        first = min(anchors, key=view.pos.__getitem__)
        x = _start_of(view, first)
        got = _candidate(view, x, y, anchors)
        if isinstance(got, str):
            failed.append((first, got))
            continue
        f, nodes = got
        if any(id(m) in used for m in nodes):
            continue
        found.append((view.pos[nodes[0]], f, {id(m) for m in nodes}))
    # a region inside another's is part of that norm (a statistic whose own merge point stops short)
    found = [(pos, f, ids) for pos, f, ids in found if not any(ids < other for _, _, other in found)]
    for _, _, ids in found:
        claimed |= ids
    ranked = [(pos, f) for pos, f, _ in found]
    for first, why in failed:  # a reduction inside a found norm is that norm's, whatever else it reached
        if id(first) not in claimed:
            possible.append(LeftOut("?", view.name(first), f"possible norm, not identified: {why}"))
    flagged: set = set()
    for n, _reached in partial:  # a reduction no found norm explains, shaped like one: say so (once per structure)
        if id(n) in claimed or id(n) in flagged:
            continue
        like = _norm_like(view, n)
        if like:
            why, cone = like
            flagged |= cone
            possible.append(LeftOut("?", view.name(n), f"possible norm, not identified: {why}"))
    return ranked, possible


MIXING = ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Attention", "LSTM", "GRU", "RNN")


def _norm_like(view: View, anchor) -> tuple[str, set] | None:
    """Why a reduction no found norm explains looks like a norm's statistics -- within a few nodes, a square root of
    them, or a variance (a mean of squares) computed from them, while a value of the data's shape is scaled by
    what they feed -- and the nodes it reached; None if it does not (a mean pooled into a classifier, a softmax's
    sum)."""
    frontier, seen, cone, rooted = [anchor], {id(anchor)}, [], False
    for _ in range(12):
        nxt = []
        for m in frontier:
            for o in m.outputs:
                for u in o.uses():
                    c = u.node
                    if id(c) in seen or c not in view.pos:
                        continue
                    seen.add(id(c))
                    if c.domain not in DEFAULT_DOMAINS or c.op_type in MIXING:
                        continue
                    rooted = rooted or is_op(c, *SQRT_LIKE) or (
                        is_op(c, "Pow") and view.scalar(c.inputs[1]) in (0.5, -0.5)) or (
                        is_op(c, *MEAN_REDUCTIONS) and _square_of(view, c.inputs[0]) is not None)
                    cone.append(c)
                    nxt.append(c)
        frontier = nxt
    scaled = next((c for c in cone if is_op(c, "Div", "Mul") and not view.same(c.inputs[0], c.inputs[-1]) and any(
        i is not None and not view.is_const(i) and _same_shape(view, i, anchor.inputs[0]) for i in c.inputs)), None)
    if not rooted or scaled is None:
        return None
    return (f"a square root (or variance) of its statistics scales its input at {view.name(scaled)}, but no norm "
            "normonnx knows computes it that way (or its statistics are also used elsewhere)", seen)


def _candidate(view: View, x, y, anchors) -> tuple[FoundNorm, list] | str:
    """The candidate norm from x to y (extended through its affine and back to x's layout), or why not."""
    y = _extend(view, x, y)
    x = _back_to_layout(view, x, y)
    for _ in range(4):
        nodes = region(view, x, y)
        if not nodes:
            return f"no node computes {y.name} from {x.name}"
        foreign = [m for m in nodes if m.domain not in DEFAULT_DOMAINS or m.op_type not in VOCABULARY]
        if foreign:
            return f"its region holds {foreign[0].op_type} ({view.name(foreign[0])}), which no norm computes"
        made = {id(o) for m in nodes for o in m.outputs} | {id(x)}
        reads = [(m, i) for m in nodes for i in m.inputs if i is not None and id(i) not in made and not view.is_const(i)]
        outside = next(((m, i) for m, i in reads if not _shape_only(view, i)), None)
        if outside is None:  # what it reads from outside is at most a shape (dynamic batch): fixed when it runs
            f = _describe(view, x, y, nodes, anchors)
            frozen = tuple(dict.fromkeys(i.name for _, i in reads))
            return (dataclasses.replace(f, candidate=dataclasses.replace(f.candidate, frozen=frozen)) if frozen else f), nodes
        n = x.producer()  # a shape read from the value x was reshaped from: start there
        if n is None or not is_op(n, *LAYOUT) or not n.inputs or n.inputs[0] is None:
            break
        x = n.inputs[0]
    assert outside is not None  # a pass that does not return found one
    m, i = outside
    return f"{view.name(m)} also reads {i.name}, which is neither its input {x.name} nor a constant: not a norm of one input"


def _shape_only(view: View, v) -> bool:
    """Whether `v` is computed from tensors' shapes and constants alone (Shape, Gather, Concat, Cast, ...):
    a dynamic dim a converter reads, never the data."""
    stack, seen = [v], set()
    while stack:
        cur = stack.pop()
        if id(cur) in seen or view.is_const(cur):
            continue
        seen.add(id(cur))
        n = cur.producer()
        if n is None or len(seen) > 64:
            return False
        if is_op(n, "Shape", "Size"):
            continue
        if not is_op(n, "Gather", "Concat", "Slice", "Cast", "Unsqueeze", "Squeeze", "ReduceProd", "ReduceSum", "Mul", "Add", "Sub",
                     "Div", "Equal", "Where", "Identity", "ConstantOfShape", "Expand", "Range", "Max", "Min", "Reshape"):
            return False
        if is_op(n, "ConstantOfShape", "Expand") and n.inputs and n.inputs[0] is not None:
            stack.append(n.inputs[1] if is_op(n, "Expand") and len(n.inputs) > 1 else n.inputs[0])
            if is_op(n, "Expand"):
                stack.append(n.inputs[0])
            continue
        stack.extend(i for i in n.inputs if i is not None)
    return True


def _extend(view: View, x, y):
    """Past the merge point: the ops that finish a norm -- a per-feature Mul and Add by constants, a Cast back,
    a Q/DQ pair, a Reshape back to the shape of a value the statistics' input was reshaped from."""
    chain = _layout_chain(view, x)[1:]
    # a reshape in front of the statistics that keeps the last dim (a Dense's flattening) is the model's, not the
    # norm's: only one that regroups the reduced axis (GroupNorm over (N, G, -1)) is undone by the norm itself
    xd = view.dims(x)
    if xd and chain and all(isinstance(d[-1], int) and d[-1] == xd[-1] for d in [view.dims(v) for v in chain] if d):
        chain = []
    for _ in range(8):
        uses = y.uses()
        if len(uses) != 1 or y.is_graph_output():
            return y
        c = uses[0].node
        if c not in view.pos:
            return y
        if is_op(c, "Cast", "Identity"):
            y = c.outputs[0]
        elif is_qdq_pair(c) and len(c.outputs[0].uses()) == 1:
            y = c.outputs[0].uses()[0].node.outputs[0]
        elif is_op(c, "Mul", "Add") and _const_other(view, c, y) is not None and _broadcasts(view, _const_other(view, c, y), y):
            y = c.outputs[0]
        elif is_op(c, "Reshape") and not any(_same_shape(view, y, v) for v in chain) and \
                any(_same_shape(view, c.outputs[0], v) for v in chain):
            y = c.outputs[0]
        else:
            return y
    return y


def _broadcasts(view: View, c, y) -> bool:
    """A constant that broadcasts onto y without growing it (a per-feature scale, not a new dim)."""
    cd, yd = view.dims(c), view.dims(y)
    if cd is None or yd is None or len(cd) > len(yd):
        return cd is not None and len(cd) <= 1
    return all(a == 1 or not isinstance(b, int) or a == b for a, b in zip(reversed(cd), reversed(yd), strict=False))


def _layout_chain(view: View, x) -> list:
    """x and the values it was reshaped or transposed from (through layout ops), nearest first."""
    out = [x]
    for _ in range(4):
        n = out[-1].producer()
        if n is None or not is_op(n, *LAYOUT) or not n.inputs or n.inputs[0] is None:
            break
        out.append(n.inputs[0])
    return out


def _back_to_layout(view: View, x, y):
    """The start moved back through the Reshape (or Transpose) in front of the statistics when the norm's
    output has the shape of the value before it (GroupNorm written over a reshape), or when the region reads
    that value itself (a Reshape whose shape is computed from it)."""
    cur = x
    for _ in range(4):
        if _same_shape(view, cur, y) and view.dims(y) is not None:
            break
        n = cur.producer()
        if n is None or not is_op(n, *LAYOUT) or not n.inputs or n.inputs[0] is None:
            break
        cur = n.inputs[0]
    if _same_shape(view, cur, y):
        return cur
    return x


def _describe(view: View, x, y, nodes: list, anchors: list) -> FoundNorm:
    """What the structure says of a written-out norm, before the probe measures it."""
    reductions = [m for m in nodes if is_op(m, *MEAN_REDUCTIONS, *SUM_REDUCTIONS)]
    first = min(anchors, key=view.pos.__getitem__)
    squared_input = _square_of(view, first.inputs[0])
    centered = not (squared_input is not None and len([r for r in reductions if r is not first]) == 0)
    eps, eps_outside = _eps_candidates(view, nodes)
    params = _param_constants(view, nodes, y)
    stats = view.dtype(first.inputs[0])  # what the reduction reads (past a float16 island's Cast: float32)
    kind = "ln" if centered else "rms"
    risks = []
    chain = {id(v) for v in _layout_chain(view, x)} | {id(x)}
    if centered and len(reductions) >= 2 and any(
            (sq := _square_of(view, r.inputs[0])) is not None and
            ({id(v) for v in _layout_chain(view, view.origin(sq))} & chain or any(
                id(u.node.outputs[0]) == id(view.origin(sq)) for u in x.uses() if is_op(u.node, *LAYOUT)))
            for r in reductions):
        risks.append(risk("variance-e-x2"))  # E[x^2] - E[x]^2: a mean of the uncentered input's square
    if eps_outside:
        risks.append(risk("eps-outside-sqrt"))
    if stats in LOW_PRECISION:
        risks.append(risk("fp16-statistics"))
    axes = _axes_of(view, first)
    groups = None
    src = view.origin(first.inputs[0]).producer()
    if centered and is_op(src, "Reshape") and view.origin(first.inputs[0]) is not x and len(src.inputs) > 1:
        shape = view.const(src.inputs[1])  # x reshaped to (N, G, -1) for the statistics: a GroupNorm
        if shape is not None and shape.size == 3:
            kind, groups = "gn", int(shape.reshape(-1)[1])
    weight, bias = _structural_affine(view, nodes, y)
    qdq = any(is_qdq_pair(m) for m in nodes)
    ops = "/".join(m.op_type for m in nodes if m.op_type not in ("Shape", "Gather", "Concat", "Slice", "Unsqueeze",
                                                                 "Squeeze", "Constant", "Identity", "Cast", "CastLike",
                                                                 "QuantizeLinear", "DequantizeLinear"))
    cand = Candidate(x.name, y.name, eps, params=tuple(p.name for p in params), qdq=qdq, stats_dtype=stats,
                     centered=centered)
    param_names = tuple((k, v.name) for k, v in (("weight", weight), ("bias", bias)) if v is not None)
    notes = ("runs between Q/DQ pairs: checked as float (scan --activations measures its int8 rounding)",) if qdq else ()
    return FoundNorm(kind, "decomposed", ops, tuple(view.name(m) for m in nodes), x.name, y.name, axes, groups,
                     eps[0] if eps else None, weight is not None, view.dtype(y) or view.dtype(x), tuple(risks),
                     param_names, stats_dtype=stats, notes=notes, candidate=cand)


def _axes_of(view: View, r) -> tuple[int, ...] | None:
    if is_op(r, "GlobalAveragePool"):
        d = view.dims(r.inputs[0])
        return tuple(range(2, len(d))) if d is not None else None
    axes = attr(r, "axes")
    if axes is None and len(r.inputs) > 1 and r.inputs[1] is not None:
        c = view.const(r.inputs[1])
        axes = c.reshape(-1).tolist() if c is not None else None
    return tuple(int(a) for a in axes) if axes is not None else None


def _eps_candidates(view: View, nodes: list) -> tuple[tuple[float, ...], bool]:
    """Scalar constants a statistic is shifted by before (or after: eps outside the root) its square root,
    and a BatchNormalization's epsilon; and whether eps sits outside the root."""
    out, outside = [], False
    for m in nodes:
        if is_op(m, "BatchNormalization"):
            out.append(float(attr(m, "epsilon", 1e-5)))
        if not is_op(m, "Add"):
            continue
        for i in m.inputs:
            c = view.scalar(i) if i is not None and view.is_const(i) else None
            if c is None or not 0 <= c < 1:
                continue
            other = m.inputs[1] if i is m.inputs[0] else m.inputs[0]
            src = view.origin(other).producer()
            if is_op(src, *SQRT_LIKE):
                outside = True
            out.append(float(np.float32(c)))
    return tuple(dict.fromkeys(out)), outside


def _param_constants(view: View, nodes: list, y) -> list:
    """Constants with more than one element that nodes of the region read: where a scale or shift may hide
    (folded into the inverse, subtracted from a shift, dequantized)."""
    out, seen = [], set()
    for m in nodes:
        if is_op(m, "Reshape", "Shape", "Gather", "Concat", "Slice", "Unsqueeze", "Squeeze", "Expand", "Range",
                 "ConstantOfShape", "ReduceMean", "ReduceSum", "ReduceSumSquare", "QuantizeLinear", "DequantizeLinear"):
            continue
        for i in m.inputs:
            if i is None or id(i) in seen or not view.is_const(i):
                continue
            seen.add(id(i))
            c = view.const(i)
            if c is not None and c.size > 1 and np.issubdtype(c.dtype, np.floating):
                out.append(i)
    return out


def _structural_affine(view: View, nodes: list, y) -> tuple:
    """The trailing Mul and Add by constants the region ends with, as a chain written plainly would (the
    probe reads the scale and shift whatever the spelling; these names let fix reuse the tensors)."""
    weight = bias = None
    n = y.producer()
    if is_op(n, "Add") and n in nodes:
        c = next((i for i in n.inputs if i is not None and view.is_const(i)), None)
        other = next((i for i in n.inputs if i is not None and i is not c), None)
        if c is not None and other is not None and (k := view.const(c)) is not None and k.size > 1:
            bias = c
            n = view.origin(other).producer()
    if is_op(n, "Mul") and n in nodes:
        c = next((i for i in n.inputs if i is not None and view.is_const(i)), None)
        if c is not None and (k := view.const(c)) is not None and k.size > 1:
            weight = c
    return weight, bias


__all__ = ["find_all", "find_in_view", "Candidate", "merge_point", "TRANSPARENT"]
