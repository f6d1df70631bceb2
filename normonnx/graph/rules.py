"""The rewrite rules of `normonnx fix`: one registry entry per rule, saying what it matches, what it
writes, the opset the written form needs and why it computes the same function as the original.

A rule's `plan` looks at one found norm (a `Site`) and answers None (not mine), a Plan with a
`write` (the replacement, built with onnx_ir by a `Writer`), or a Plan with `refused` (the layer is
risky but no rewrite computes the same function: eps outside the square root, eps = 0, weights that
are not constants). Rules never change what a layer computes in exact arithmetic; the proof in
`fix.proof` checks that they do not change it in floating point beyond what the original got wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, overload

import numpy as np

from ..core.registry import Registry
from ..core.tables import DTYPES, LOW_PRECISION, per_feature
from .graph import Graph, attr
from .patterns import FoundNorm

FLOAT = DTYPES["float32"].onnx


@dataclass(frozen=True)
class Site:
    """What a rule sees of one norm: the norm, the (shape-inferred) graph index, the model's opset,
    the input's rank and dims (None where unknown) and the dtypes of its input and output."""

    norm: FoundNorm
    g: Graph
    opset: int
    dims: tuple | None  # ints, or None per symbolic dim; None when even the rank is unknown
    dtype: str | None
    out_dtype: str | None

    @property
    def rank(self) -> int | None:
        return len(self.dims) if self.dims is not None else None


@dataclass(frozen=True)
class Plan:
    """One candidate of a rule for one norm: the form it writes (`form`, described by `after`), or why
    the rule refuses the layer, with advice."""

    rule: str
    form: str
    after: str
    write: Callable[["Writer"], Any] | None = None  # returns the output, an onnx_ir Value (imported lazily)
    refused: str | None = None


@dataclass(frozen=True)
class Rule:
    """A rewrite rule. `plan` answers None (not mine) or the candidate Plans in order of preference (one
    refused Plan when the layer cannot be rewritten). fix rewrites a layer that fails its validation on
    a target runtime, or that carries a risk in `hidden` (a hazard ORT CPU hides: it computes float16
    chains in float32 and re-fuses decomposed LayerNorm); without a proof, a layer with a risk in
    `fixes` or `hidden`."""

    name: str
    matches: str  # what it rewrites
    writes: str  # what it writes instead
    needs: str  # the opsets the written form needs
    why_safe: str  # why the written form computes the same function
    plan: Callable[[Site], "list[Plan] | None"]
    default: bool = True  # False: opt-in (--rules NAME)
    hidden: frozenset = frozenset()  # risk codes worth a rewrite even where the layer passes
    fixes: frozenset = frozenset()  # risk codes the rule's forms remove (what --no-proof rewrites)

    def wants(self, risks, proven: bool) -> bool:
        """Whether a layer with these risks is worth rewriting without a failing verdict."""
        codes = {r.code for r in risks}
        return bool(codes & self.hidden) or (not proven and bool(codes & self.fixes))


RULES: Registry[Rule] = Registry("rule")


class Writer:
    """Builds the replacement of one layer with onnx_ir: nodes in order, constants as initializers,
    every name fresh and under the layer's prefix (readable; rewrite.apply returns the names written)."""

    def __init__(self, graph, x, prefix: str, opset: int, values: dict, taken: set | None = None):
        self.graph, self.x, self.prefix, self.opset, self.values = graph, x, prefix, opset, values
        self.nodes: list = []
        self._n = 0
        # names the model already uses (values and nodes): a fresh name never collides with one of them
        self.taken = taken if taken is not None else set(values)

    def _name(self, what: str) -> str:
        while True:
            self._n += 1
            name = f"{self.prefix}{what}_{self._n}"
            if name not in self.taken and f"{name}:0" not in self.taken:
                self.taken.update((name, f"{name}:0"))
                return name

    def const(self, array: np.ndarray, what: str = "const"):
        import onnx_ir as ir

        name = self._name(what)
        t = ir.tensor(np.ascontiguousarray(array), name=name)
        v = ir.Value(name=name, const_value=t, type=ir.TensorType(t.dtype),
                     shape=ir.Shape(t.shape))  # type: ignore[arg-type]  # onnx_ir: t.shape is an ir.Shape, typed looser
        self.graph.register_initializer(v)
        return v

    def op(self, op_type: str, *inputs, domain: str = "", **attrs):
        import onnx_ir as ir

        node = ir.node(op_type, list(inputs), attrs or None, domain=domain, name=self._name(op_type))
        assert node.name is not None  # named just above
        node.outputs[0].name = node.name + ":0"
        self.nodes.append(node)
        return node.outputs[0]

    def value(self, name: str):
        return self.values[name]

    def reduce_mean(self, x, axes: tuple[int, ...]):
        # ReduceMean's axes: an attribute up to opset 17, an input from 18
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.const(np.asarray(axes, np.int64), "axes"), keepdims=1)
        return self.op("ReduceMean", x, axes=list(axes), keepdims=1)

    def cast(self, x, frm: str | None, to: str):
        return x if frm == to else self.op("Cast", x, to=DTYPES[to].onnx)


# -- what the rules read off a norm ----------------------------------------------------------------
class Refuse(Exception):
    """A reason a rule cannot rewrite a layer it matched (reported with advice, never rewritten)."""


def _param(site: Site, key: str) -> np.ndarray | None:
    name = dict(site.norm.params).get(key)
    if not name:
        return None
    if name in {i.name for i in site.g.graph.input}:
        # a graph input, or an initializer a graph input of the same name overrides (IR < 4): whatever
        # value fix saw, the caller may feed another at run time, so no rewrite may fold it in
        raise Refuse(f"its {key} ({name}) is fed at run time (a graph input): a rewrite would freeze the value it "
                     "saw; keep the layer as it is, or make the parameter an initializer")
    v = site.g.const(name)
    if v is None or not np.issubdtype(v.dtype, np.floating):
        raise Refuse(f"its {key} ({name}) is computed in the graph, not a float constant: a rule rewrites only "
                     "constant parameters")
    return np.asarray(v, np.float64)


def _check_eps(f: FoundNorm) -> None:
    if any(r.code == "eps-outside-sqrt" for r in f.risks):
        raise Refuse("eps is added outside the square root (std + eps, not sqrt(var + eps)): no standard op computes "
                     "that; fix it in the model's source (torch.nn.LayerNorm or x * rsqrt(var + eps)) and re-export")
    if f.eps is None or not np.isfinite(f.eps) or f.eps <= 0:
        raise Refuse(f"eps = {f.eps}: a zero-variance row divides by zero; if the source's eps underflowed on export "
                     "(float16 eps 1e-8 -> 0, pytorch/pytorch#86580), export in float32 or raise eps")


def _comp(dtype: str) -> str:
    """The dtype statistics are computed in: float32 for float16/bfloat16 (x^2 overflows float16 at |x|~256)."""
    return "float32" if dtype in LOW_PRECISION else dtype


def _dtype(site: Site) -> str:
    if site.dtype is None or site.dtype not in DTYPES:
        raise Refuse(f"the input's element type is unknown or not a float ({site.dtype})")
    return site.dtype


def _planned(name: str, forms: dict[str, str], build: Callable[[Site, str], Callable[[Writer], object]],
             site: Site) -> list[Plan]:
    """A Plan per form (name -> after), or one refused Plan when the layer cannot be rewritten."""
    try:
        return [Plan(name, form, after, write=build(site, form)) for form, after in forms.items()]
    except Refuse as e:
        return [Plan(name, "-", "-", refused=str(e))]


# -- GroupNorm and InstanceNorm: the forms a group norm can be written in ---------------------------
def gn_channel_affine(site: Site) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The per-channel weight and bias a GroupNorm/InstanceNorm layer applies, float64 (None where it has
    none; a single value stays one value and broadcasts over the channels)."""
    f = site.norm
    w, b = _param(site, "weight"), _param(site, "bias")
    pw, pb = _param(site, "post_weight"), _param(site, "post_bias")
    if f.param_layout == "per-group":
        # GroupNormalization-18: scale/bias per group; to channels by repeating each C/G times
        sizes = [v.size for v in (pw, pb) if v is not None and v.size > 1]
        c = sizes[0] if sizes else (site.dims[1] if site.dims and len(site.dims) > 1 else None)
        if not isinstance(c, int):
            raise Refuse("GroupNormalization-18 with a symbolic channel dim and no per-channel Mul/Add: the channel "
                         "count is unknown; give --input-shape")
        assert f.groups is not None  # identify sets the per-group layout only with num_groups
        rep = c // f.groups
        w = np.repeat(w.reshape(-1), rep) if w is not None else None
        b = np.repeat(b.reshape(-1), rep) if b is not None else None
        for v, what in ((pw, "Mul"), (pb, "Add")):
            if v is not None and (v.size not in (1, c) or _per_channel(site, v, what).size not in (1, c)):
                raise Refuse(f"the {what} after GroupNormalization-18 is not per channel ({v.size} values, {c} "
                             "channels)")
        if pw is not None:
            pw = pw.reshape(-1)
            w = pw * (w if w is not None else 1.0)
            b = b * pw if b is not None else None
        if pb is not None:
            b = pb.reshape(-1) + (b if b is not None else 0.0)
        w = np.broadcast_to(w, (c,)) if w is not None else None
        b = np.broadcast_to(b, (c,)) if b is not None else None
    elif f.form in ("native", "contrib"):  # the op's own scale/bias inputs: per channel by definition
        w = w.reshape(-1) if w is not None else None
        b = b.reshape(-1) if b is not None else None
    else:  # the Mul/Add after a trick
        w, b = (_per_channel(site, v, what) for v, what in ((w, "weight"), (b, "bias")))
    # an exact identity affine writes no Mul/Add
    if w is not None and np.all(w == 1):
        w = None
    if b is not None and np.all(b == 0):
        b = None
    return w, b


@overload
def _per_channel(site: Site, v: np.ndarray, what: str) -> np.ndarray: ...
@overload
def _per_channel(site: Site, v: None, what: str) -> None: ...
def _per_channel(site: Site, v: np.ndarray | None, what: str) -> np.ndarray | None:
    """A Mul/Add constant after the norm as C values or one, or Refuse. It broadcasts against (N, C, ...)
    from the trailing dims (numpy rules: a 1-D constant of C values scales the *last* dim), so it is per
    channel only when, padded to the input's rank, every dim but the channel dim is 1."""
    if v is None:
        return None
    if v.size == 1:
        return v.reshape(-1)
    rank = site.rank
    if rank is None or v.ndim > rank:
        raise Refuse(f"its {what} of shape {list(v.shape)} cannot be placed against an input of unknown rank")
    padded = (1,) * (rank - v.ndim) + tuple(v.shape)
    if padded[0] != 1 or any(d != 1 for d in padded[2:]):
        raise Refuse(f"its {what} of shape {list(v.shape)} is not per channel (it varies over other dims)")
    return v.reshape(-1)


# Which forms a group norm can take (ORT CPU, measured: torch 2.13 / onnx 1.23 / ORT 1.32): the
# layernorm-trick is exact on zero-variance groups at every size; InstanceNormalization and
# ReduceMean chains err ~1e-2 on a constant 64x64 group; GroupNormalization's body is E[x^2]-E[x]^2.
# The shifted chain is exact there on ORT CPU and OpenVINO alike (OpenVINO's LayerNormalization and every
# other form err 2.4e-2 on a constant 64x64 group), but costs more than the layernorm-trick on ORT CPU.
# Listed in order of preference: among forms that pass on every target runtime and time alike, the
# first is kept.
GROUP_FORMS = {
    "layernorm-trick": ("Reshape(N, G, -1)/LayerNormalization(stash_type=1)/Reshape/Mul/Add", 17),
    "shifted": ("Reshape(N, G, -1)/Slice shift (one sample of each group subtracted)/ReduceMean/Sub/Mul/ReduceMean/"
                "Add/Sqrt/Div (centered)/Reshape/Mul/Add", 13),
    "instance-trick": ("Reshape(N, G, -1)/InstanceNormalization/Reshape/Mul/Add", 6),
    "decomposed": ("Reshape(N, G, -1)/ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div (centered)/Reshape/Mul/Add", 13),
    # GroupNormalization-18 is deprecated (onnx.checker rejects it in a new model): only -21 is written
    "native": ("GroupNormalization-21 (InstanceNormalization for an InstanceNorm)", 21),
}


def write_group_form(w: Writer, form: str, *, groups: int | None, eps: float, weight, bias, rank: int, dtype: str,
                     dims: tuple | None, channels_last: bool = False, silu: bool = False):
    """A group norm over (N, C, *spatial) in one of GROUP_FORMS, statistics in float32 for float16 input.
    groups None: an InstanceNorm (one group per channel; the reshapes copy C from the input, so a
    symbolic C stays). The reshapes copy the batch dim (0) and infer the rest (-1): symbolic batch and
    spatial dims stay symbolic."""
    comp = _comp(dtype)
    npd = DTYPES[comp].numpy
    h = w.x
    if channels_last:  # com.microsoft GroupNorm's NHWC input, to NCHW and back
        h = w.op("Transpose", h, perm=[0, rank - 1, *range(1, rank - 1)])
    h = w.cast(h, dtype, comp)
    view = (-1,) + (1,) * (rank - 2)
    c = dims[1] if dims and isinstance(dims[1], int) else None
    affine_after = True
    if form == "native" and groups is None:
        if c is None and not all(v is not None and np.size(v) > 1 for v in (weight, bias)):
            raise Refuse("InstanceNormalization needs C scale/bias values and the channel dim is symbolic")
        sc = np.broadcast_to(weight if weight is not None else 1.0, (c,)) if c else np.asarray(weight)
        bi = np.broadcast_to(bias if bias is not None else 0.0, (c,)) if c else np.asarray(bias)
        y = w.op("InstanceNormalization", h, w.const(np.asarray(sc, npd), "scale"), w.const(np.asarray(bi, npd), "B"),
                 epsilon=float(eps))
        affine_after = False
    elif form == "native":
        if c is None:
            raise Refuse("GroupNormalization-21 takes a per-channel scale and the channel dim is symbolic")
        sc = np.broadcast_to(weight if weight is not None else 1.0, (c,))
        bi = np.broadcast_to(bias if bias is not None else 0.0, (c,))
        y = w.op("GroupNormalization", h, w.const(np.asarray(sc, npd), "scale"), w.const(np.asarray(bi, npd), "bias"),
                 epsilon=float(eps), num_groups=groups)
        affine_after = False
    else:
        shape = w.op("Shape", h)
        r = w.op("Reshape", h, w.const(np.array([0, groups or 0, -1], np.int64), "group_view"))
        if form == "layernorm-trick":
            # a scale of ones as long as a group, from the shape at run time: symbolic dims stay symbolic
            scale = _scale_of_ones(w, 2, comp, r)
            n = w.op("LayerNormalization", r, scale, axis=2, epsilon=float(eps), stash_type=1)
        elif form == "instance-trick":
            assert groups is not None  # _group_candidates never gives an InstanceNorm the instance-trick
            n = w.op("InstanceNormalization", r, w.const(np.ones(groups, npd), "ones"),
                     w.const(np.zeros(groups, npd), "zeros"), epsilon=float(eps))
        elif form in ("decomposed", "shifted"):
            n = _normalized(w, r, (2,), eps, npd, shifted=form == "shifted")
        else:
            raise ValueError(f"unknown group form {form!r}")
        y = w.op("Reshape", n, shape)
    if affine_after and weight is not None:
        y = w.op("Mul", y, w.const(np.asarray(weight, npd).reshape(view), "weight"))
    if affine_after and bias is not None:
        y = w.op("Add", y, w.const(np.asarray(bias, npd).reshape(view), "bias"))
    y = w.cast(y, comp, dtype)
    if channels_last:
        y = w.op("Transpose", y, perm=[0, *range(2, rank), 1])
    if silu:  # com.microsoft GroupNorm's fused activation
        y = w.op("Mul", y, w.op("Sigmoid", y))
    return y


def _group_candidates(site: Site, rule: str, *, skip: str | None, **layout) -> list[Plan]:
    """One Plan per group form the opset allows (the layer's own form left out, unless statistics move
    to float32); all refused alike when the layer itself cannot be rewritten."""
    f = site.norm
    try:
        _check_eps(f)
        dtype = _dtype(site)
        if site.rank is None or site.rank < 3:
            raise Refuse("the input's rank is unknown: give --input-shape")
        if any(r.code == "trick-affine" for r in f.risks):
            raise Refuse("the InstanceNormalization inside the trick has its own scale/bias: the layer is not a plain "
                         "GroupNorm")
        weight, bias = gn_channel_affine(site)
    except Refuse as e:
        return [Plan(rule, "-", "-", refused=str(e))]
    groups = f.groups if f.kind == "gn" else None
    plans = []
    for form, (after, needs) in GROUP_FORMS.items():
        if form == skip and dtype not in LOW_PRECISION or site.opset < (6 if f.kind == "in" and form == "native"
                                                                        else needs):
            continue
        if f.kind == "in" and form == "instance-trick":
            continue  # an InstanceNorm's instance-trick is the op itself
        kw = dict(groups=groups, eps=f.eps, weight=weight, bias=bias, rank=site.rank, dtype=dtype, dims=site.dims,
                  **layout)
        plans.append(Plan(rule, form, _after(after, **layout),
                          write=(lambda fm, k: lambda w: write_group_form(w, fm, **k))(form, kw)))
    return plans


def _after(text: str, channels_last: bool = False, silu: bool = False) -> str:
    return ("Transpose/" if channels_last else "") + text + ("/Transpose" if channels_last else "") + (
        "/Sigmoid/Mul" if silu else "")


def _plan_group(site: Site) -> list[Plan] | None:
    f = site.norm
    own = {"native": "native", "instance-trick": "instance-trick"}.get(f.form)
    if own is None or f.kind not in ("gn", "in") or (f.kind == "in" and f.form != "native"):
        return None
    return _group_candidates(site, "group-norm", skip=own)


def _plan_gn_contrib(site: Site) -> list[Plan] | None:
    f = site.norm
    if f.kind != "gn" or f.form != "contrib" or not f.op.endswith(".GroupNorm"):
        return None
    node = site.g.nodes[site.g.index[f.nodes[0]]]
    return _group_candidates(site, "ms-groupnorm", skip=None, channels_last=bool(attr(node, "channels_last", 1)),
                             silu=bool(attr(node, "activation", 0)))


RULES.register(Rule(
    "group-norm", "GroupNormalization-18/21 (ORT inlines its E[x^2]-E[x]^2 body: NaN at offset 1e4), the "
    "GroupNorm instance-trick torch writes below opset 21, and InstanceNormalization (both err on zero-variance "
    "groups at real sizes on ORT CPU)",
    "the first form that passes on every target runtime, of: " + "; ".join(
        f"{k} ({v[0]}, opset >= {v[1]})" for k, v in GROUP_FORMS.items()) + " (float32 statistics for float16)",
    "layernorm-trick: 17; GroupNormalization: 18",
    "the mean and variance over (C/G)*spatial elements per (n, g) are what each form computes on the (N, G, -1) "
    "view; GroupNormalization-18's per-group scale/bias and any per-channel Mul/Add after it fold into one "
    "per-channel affine", _plan_group, hidden=frozenset({"fp16-statistics"}),
    fixes=frozenset({"gn-function-body", "gn18-per-group-affine"})))
RULES.register(Rule(
    "ms-groupnorm", "com.microsoft GroupNorm (one-pass variance: error 2.3 at offset 1e3, NaN at 1e4)",
    "the group-norm rule's forms (Transposes for channels_last, Sigmoid/Mul for activation=1)", "any opset >= 6",
    "the same statistics computed centered; opt-in because the contrib kernel is 3-5x faster on CUDA than the "
    "standard-op form", _plan_gn_contrib, default=False, fixes=frozenset({"one-pass-variance"})))


# -- decomposed LayerNorm / RMSNorm -> the native op, or a float32-statistics island ---------------
def _norm_axes(site: Site) -> tuple[int, ...]:
    """The normalized axes as negative indices (trailing and contiguous, or Refuse)."""
    f = site.norm
    axes = f.axes or (-1,)
    rank = site.rank
    if any(a >= 0 for a in axes):
        if rank is None:
            raise Refuse(f"reduces axes {list(axes)} of an input of unknown rank: give --input-shape")
        axes = tuple(a - rank for a in axes)
    neg = sorted(set(axes))
    if neg != list(range(-len(neg), 0)):
        assert f.axes is not None  # None stood in as (-1,), a trailing axis
        raise Refuse(f"normalizes axes {list(f.axes)}, not the trailing dims: no standard norm op computes that")
    return tuple(neg)


def _feature_param(site: Site, key: str, axes: tuple[int, ...]) -> np.ndarray | None:
    """A decomposed chain's Mul/Add constant as an array over the normalized dims (LayerNormalization's
    and RMSNormalization's scale/bias must have that shape), or Refuse."""
    v = _param(site, key)
    if v is None:
        return None
    k = len(axes)
    while v.ndim > k and v.shape[0] == 1:
        v = v.reshape(v.shape[1:])
    if v.ndim > k:
        raise Refuse(f"its {key} of shape {list(v.shape)} varies over dims the norm does not normalize")
    nshape = tuple(site.dims[a] for a in axes) if site.dims is not None else None
    if nshape is not None and all(isinstance(d, int) for d in nshape):
        try:
            return np.broadcast_to(v, nshape)
        except ValueError:
            raise Refuse(f"its {key} of shape {list(v.shape)} does not fit the normalized shape {list(nshape)}") \
                from None
    if v.ndim == k and v.size > 1:
        return v
    raise Refuse(f"the normalized dims are symbolic and its {key} does not fix them: give --input-shape")


def _scale_of_ones(w: Writer, axis: int, dtype: str, x=None):
    """A scale of ones shaped like the dims of `x` (default: the layer's input) from `axis` on, taken at run
    time (symbolic dims stay symbolic; scan reads the scale back where the dims are known)."""
    import onnx_ir as ir

    dims = w.op("Shape", w.x if x is None else x, start=axis)
    return w.op("ConstantOfShape", dims, value=ir.tensor(np.ones(1, DTYPES[dtype].numpy)))


def write_layer_norm(w: Writer, *, axes, eps, weight, bias, dtype: str, out_dtype: str | None):
    """LayerNormalization with float32 statistics (stash_type=1: float16 rows accumulate in float32)."""
    npd = DTYPES[dtype].numpy
    scale = w.const(np.asarray(weight, npd), "weight") if weight is not None else _scale_of_ones(w, axes[0], dtype)
    ins = [w.x, scale] + ([w.const(np.asarray(bias, npd), "bias")] if bias is not None else [])
    y = w.op("LayerNormalization", *ins, axis=axes[0], epsilon=float(eps), stash_type=1)
    return w.cast(y, dtype, out_dtype or dtype)


def write_rms_norm(w: Writer, *, axes, eps, weight, bias, dtype: str, out_dtype: str | None):
    """RMSNormalization-23 with float32 statistics; a bias (rare in RMSNorm) stays an Add after it."""
    npd = DTYPES[dtype].numpy
    scale = w.const(np.asarray(weight, npd), "weight") if weight is not None else _scale_of_ones(w, axes[0], dtype)
    y = w.op("RMSNormalization", w.x, scale, axis=axes[0], epsilon=float(eps), stash_type=1)
    if bias is not None:
        y = w.op("Add", y, w.const(np.asarray(bias, npd), "bias"))
    return w.cast(y, dtype, out_dtype or dtype)


def _normalized(w: Writer, x, axes: tuple[int, ...], eps: float, npd, *, centered: bool = True,
                shifted: bool = False):
    """d / sqrt(mean(d*d) + eps) over `axes`: d = x - mean(x) when centered (two-pass, LN/IN/GN), d = x for RMS.
    shifted: one sample of each set (the first element along the trailing `axes`, a Slice) subtracted from x
    before that, as normonnx.models writes it (models.decomposed._sample_of_each_set says why); exact on
    zero-variance sets."""
    if shifted:
        k = len(axes)
        x0 = w.op("Slice", x, w.const(np.zeros(k, np.int64), "starts"), w.const(np.ones(k, np.int64), "ends"),
                  w.const(np.asarray(axes, np.int64), "axes"))
        x = w.op("Sub", x, x0)
    d = w.op("Sub", x, w.reduce_mean(x, axes)) if centered else x
    var = w.reduce_mean(w.op("Mul", d, d), axes)
    return w.op("Div", d, w.op("Sqrt", w.op("Add", var, w.const(np.array(eps, npd), "eps"))))


def write_island(w: Writer, *, axes, eps, weight, bias, dtype: str, out_dtype: str | None, centered: bool,
                 shifted: bool = False):
    """The chain rewritten with its statistics in float32 between Casts (for opsets below the native
    op): LN as mean, d = x - mean, mean(d*d) (centered, two-pass); RMS as mean(x*x). shifted (LN): one
    sample of each row subtracted first (see _normalized)."""
    comp = _comp(dtype)
    npd = DTYPES[comp].numpy
    y = _normalized(w, w.cast(w.x, dtype, comp), axes, eps, npd, centered=centered, shifted=shifted)
    if weight is not None:
        y = w.op("Mul", y, w.const(np.asarray(weight, npd), "weight"))
    if bias is not None:
        y = w.op("Add", y, w.const(np.asarray(bias, npd), "bias"))
    return w.cast(y, comp, out_dtype or dtype)


def _plan_decomposed(site: Site, kind: str) -> list[Plan] | None:
    f = site.norm
    if f.form != "decomposed" or (f.kind != kind and not (kind == "ln" and f.kind == "gn")):
        return None
    native_opset = 17 if kind == "ln" else 23
    op = "LayerNormalization" if kind == "ln" else "RMSNormalization"
    forms = {"native": f"{op}(stash_type=1)"} if site.opset >= native_opset else {}
    if kind == "ln" and site.opset >= 11:  # Slice with its axes as an input, negative ones counted from the back
        forms["shifted"] = "one sample of each row subtracted, then the centered chain, statistics in float32"
    advice = "" if "native" in forms else f" (opset {site.opset} < {native_opset}; --opset {native_opset} for {op})"
    forms["float32-island"] = f"{'centered ' if kind == 'ln' else ''}chain with float32 statistics" + advice

    def build(site, form):
        _check_eps(f)
        dtype = _dtype(site)
        axes = _norm_axes(site)
        weight, bias = _feature_param(site, "weight", axes), _feature_param(site, "bias", axes)
        # no weight: a scale of ones from the shape at run time (dims given by --input-shape may be symbolic
        # in the model; scan reads the scale back where the dims are known)
        kw = dict(axes=axes, eps=f.eps, weight=weight, bias=bias, dtype=dtype, out_dtype=site.out_dtype)
        if form == "native":
            writer = write_layer_norm if kind == "ln" else write_rms_norm
            return lambda w: writer(w, **kw)
        return lambda w: write_island(w, centered=kind == "ln", shifted=form == "shifted", **kw)

    return _planned(f"{kind}-native", forms, build, site)


RULES.register(Rule(
    "ln-native", "a decomposed LayerNorm (ReduceMean chains: Pow or Mul, Div(Sqrt), Mul(Reciprocal), Pow(.5), "
    "Cast islands, E[x^2]-E[x]^2), and a decomposed GroupNorm's inner chain",
    "LayerNormalization(stash_type=1) at opset >= 17; the shifted chain (one sample of each row subtracted first: "
    "exact on zero-variance rows where OpenVINO's LayerNormalization is not) at opset >= 11; a centered chain with "
    "float32 statistics at any opset (the first that passes on every target runtime)", "LayerNormalization: 17",
    "(x - mean) / sqrt(mean((x - mean)^2) + eps) * w + b over the same trailing axes, the Mul/Add constants as "
    "scale/bias; E[x^2]-E[x]^2 equals the centered variance in exact arithmetic",
    lambda site: _plan_decomposed(site, "ln"), hidden=frozenset({"variance-e-x2", "fp16-statistics"})))
RULES.register(Rule(
    "rms-native", "a decomposed RMSNorm (x / sqrt(mean(x^2) + eps) * w)",
    "RMSNormalization(stash_type=1) at opset >= 23; the chain with float32 statistics at any opset",
    "RMSNormalization: 23", "the same mean of squares over the same trailing axes, the Mul constant as scale",
    lambda site: _plan_decomposed(site, "rms"), hidden=frozenset({"fp16-statistics"})))


# -- native LayerNormalization/RMSNormalization with float16 statistics -----------------------------
def _plan_stash(site: Site) -> list[Plan] | None:
    f = site.norm
    if f.form != "native" or not per_feature(f.kind) or not any(r.code == "fp16-stash" for r in f.risks):
        return None
    node = site.g.nodes[site.g.index[f.nodes[0]]]

    def write(w: Writer):
        attrs = {a.name: onnx_attr(a) for a in node.attribute}
        attrs["stash_type"] = 1
        return w.op(node.op_type, *(w.value(n) if n else None for n in node.input), **attrs)

    return [Plan("stash-float32", "stash-float32", f"{node.op_type}(stash_type=1)", write=write)]


def onnx_attr(a):
    import onnx

    return onnx.helper.get_attribute_value(a)


RULES.register(Rule(
    "stash-float32", "LayerNormalization/RMSNormalization on float16 with stash_type != 1 (float16 statistics)",
    "the same op with stash_type=1", "LayerNormalization: 17, RMSNormalization: 23",
    "stash_type only sets the precision the mean and variance are computed in", _plan_stash,
    hidden=frozenset({"fp16-stash"})))


def select(rules: Sequence[str] | None, skip: Sequence[str] | None) -> list[Rule]:
    """The rules to apply: `rules` if given (opt-in ones included), else every default rule; minus
    `skip`. Unknown names are BadInput listing the valid ones."""
    chosen = [RULES.lookup(n) for n in rules] if rules else [r for r in RULES.values() if r.default]
    skipped = {RULES.lookup(n).name for n in (skip or [])}
    return [r for r in chosen if r.name not in skipped]
