"""What a norm found in a foreign graph claims to compute: its NormSpec and float32 parameters, read
from the graph alone. The one parameter reader, shared by `scan --validate` and `validate --model`."""
from __future__ import annotations

import numpy as np
import onnx

from ..core.errors import BadInput
from ..core.spec import NormSpec
from ..core.tables import BATCH_STAND_IN, DIM_STAND_IN, check_dtype, per_feature
from .graph import Graph
from .patterns import FoundNorm


def concrete_shape(f: FoundNorm, dims: list, params: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The shape to run a layer at. Known dims stay; a symbolic dim that the parameters fix (the
    channel dim of bn/in/gn, the normalized dims of ln/rms) takes the parameters' size, since any
    other value could not broadcast; the rest get small stand-ins (batch 2, others 8)."""
    shape = [d if isinstance(d, int) and d > 0 else None for d in dims]
    rank = len(shape)
    w = next((params[k] for k in ("weight", "bias", "running_mean", "post_weight") if k in params), None)
    if w is not None and rank:
        if per_feature(f.kind):
            start = min(a % rank for a in (f.axes or (-1,)))
            tail = list(np.shape(w))[-(rank - start):] if np.ndim(w) else []
            if len(tail) == rank - start:
                for i, v in zip(range(start, rank), tail, strict=False):
                    shape[i] = shape[i] or int(v)
        elif rank > 1 and shape[1] is None and f.param_layout != "per-group":
            shape[1] = int(np.size(w))
    if f.kind == "gn" and rank > 1 and shape[1] is None and f.groups:
        shape[1] = f.groups * DIM_STAND_IN
    return tuple(d or (BATCH_STAND_IN if i == 0 else DIM_STAND_IN) for i, d in enumerate(shape))


def _fit(name: str, v: np.ndarray, size: int, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    if v.size == 1:
        return np.full(size, v[0], np.float32)
    if v.size != size:
        raise BadInput(f"{name} has {v.size} values but the layer has {size} {what}")
    return v


def _float_param(name: str, tensor: str, v: np.ndarray) -> np.ndarray:
    if not np.issubdtype(v.dtype, np.floating) and v.dtype.name != "bfloat16":  # ml_dtypes' bfloat16 is no numpy float
        raise BadInput(f"{name} ({tensor}) has dtype {v.dtype}, not a float")
    return np.asarray(v, dtype=np.float32)


def _at_shape(layer: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    """A copy of the layer with its first input's dims set to `shape` and shapes inferred again (the
    layer is a cut-out: a few nodes and the layer's own tensors)."""
    m = onnx.ModelProto()
    m.CopyFrom(layer)
    del m.graph.value_info[:]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, shape, strict=False):
        d.Clear()
        d.dim_value = int(v)
    try:
        return onnx.shape_inference.infer_shapes(m)
    except Exception:
        return m  # com.microsoft ops: the input's own dims are what a Shape of it reads


def _params_and_shape(f: FoundNorm, layer: onnx.ModelProto, g: Graph) -> tuple[dict, tuple[int, ...]]:
    """The layer's float32 parameters and the concrete shape it runs at."""
    x = layer.graph.input[0]
    params, pending = {}, []
    folded = None
    for name, tensor in f.params:
        v = g.const(tensor)
        if v is None:  # a quantized parameter's DequantizeLinear, a Cast of a float16 one: folded on the IR
            folded = folded if folded is not None else _folder(layer)
            v = folded(tensor)
        if v is None:
            pending.append((name, tensor))
            continue
        params[name] = _float_param(name, tensor, v)
    if not x.type.tensor_type.HasField("shape"):
        raise BadInput("the layer's input shape is unknown (no shape in the graph and none inferred)")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in x.type.tensor_type.shape.dim]
    shape = concrete_shape(f, dims, params)
    if pending:
        # a parameter made from the input's own shape (normonnx fix writes the layernorm-trick's scale of
        # ones as ConstantOfShape(Shape(x)) to keep symbolic dims symbolic): read it at the shape the
        # layer runs at. Anything else computed stays unreadable.
        g = Graph(_at_shape(layer, shape).graph)
        for name, tensor in pending:
            v = g.const(tensor)
            if v is None:
                raise BadInput(f"{name} ({tensor}) is computed in the graph or stored elsewhere, not a constant")
            params[name] = _float_param(name, tensor, v)
        shape = concrete_shape(f, dims, params)
    return params, shape


def _folder(layer: onnx.ModelProto):
    """A reader of the layer's constants folded through the ops parameters come wrapped in (irview.View.const)."""
    import onnx_ir as ir

    from .irview import View

    view = View(ir.from_proto(layer).graph)

    def read(name: str):
        v = view.value(name)
        return view.const(v) if v is not None else None

    return read


def derive_spec(f: FoundNorm, layer: onnx.ModelProto) -> tuple[NormSpec, dict[str, np.ndarray]]:
    """(NormSpec, params) that the layer (its first input is the norm's input) claims to compute. A written-out
    norm the probe confirmed claims what the probe measured (its cut-out is in the measured layout)."""
    if f.derived is not None:
        return _measured_spec(f, layer)
    try:
        layer = onnx.shape_inference.infer_shapes(layer)
    except Exception:
        pass  # com.microsoft ops: shapes come from the boundary value info scan added
    g = Graph(layer.graph)
    x = layer.graph.input[0]
    params, shape = _params_and_shape(f, layer, g)
    dtype = check_dtype(f.dtype or g.dtype(x.name), "the layer")
    if f.eps is None or not np.isfinite(f.eps) or f.eps <= 0:
        raise BadInput(f"eps = {f.eps}: a zero-variance row divides by zero; the oracle needs a finite eps > 0")
    # an epsilon attribute is a float32: 1e-5 reads back as 9.99999974738e-06; keep the float32's
    # shortest decimal so the spec (and its id) says 1e-05, as the model's author wrote it
    kw = dict(eps=float(np.format_float_positional(np.float32(f.eps), unique=True, trim="-")), dtype=dtype)
    if per_feature(f.kind):
        return _per_feature_spec(f, shape, params, kw)
    return _per_channel_spec(f, shape, params, kw)


def _per_feature_spec(f: FoundNorm, shape: tuple, params: dict, kw: dict) -> tuple[NormSpec, dict[str, np.ndarray]]:
    """LN and RMS: the trailing axes the layer normalizes, and its parameters over their shape."""
    rank = len(shape)
    if not rank:
        raise BadInput("a scalar input has nothing to normalize")
    axes = sorted({a % rank for a in (f.axes or (-1,))})
    if f.form != "decomposed":
        axes = list(range(axes[0], rank))  # the ops normalize from `axis` to the last dim
    if axes != list(range(axes[0], rank)):
        raise BadInput(f"normalizes axes {axes}, not trailing dims")
    nshape = shape[axes[0]:]
    for k in list(params):
        v = params[k]
        if v.ndim > len(nshape):  # e.g. (1, 1, C) from a decomposed chain's Mul
            if any(d != 1 for d in v.shape[:v.ndim - len(nshape)]):
                raise BadInput(f"{k} of shape {list(v.shape)} varies over dims the norm does not normalize")
            v = v.reshape(v.shape[v.ndim - len(nshape):])
        try:
            params[k] = np.broadcast_to(v, nshape).astype(np.float32)
        except ValueError:
            raise BadInput(f"{k} of shape {list(v.shape)} does not fit the normalized shape {list(nshape)}") \
                from None
    if f.kind == "ln" and "bias" in params and "weight" not in params:
        params["weight"] = np.ones(nshape, np.float32)
    spec = NormSpec(kind=f.kind, shape=shape, normalized_ndim=len(nshape), affine="weight" in params,
                    bias="bias" in params, **kw)
    return spec, params


def _per_channel_spec(f: FoundNorm, shape: tuple, params: dict, kw: dict) -> tuple[NormSpec, dict[str, np.ndarray]]:
    """BN, IN and GN: parameters per channel (GroupNormalization-18's per group spread over its channels)."""
    c = shape[1]
    for k in list(params):
        v = params[k].reshape(-1)
        if f.param_layout == "per-group" and k in ("weight", "bias") and f.groups and v.size == f.groups:
            v = np.repeat(v, c // f.groups)  # GroupNormalization-18: one value per group, to per channel
        params[k] = _fit(k, v, c, "channels")
    # a per-channel Mul/Add after GroupNormalization-18 folds into the per-channel affine
    pw, pb = params.pop("post_weight", None), params.pop("post_bias", None)
    if pw is not None or pb is not None:
        w = params.get("weight", np.ones(c, np.float32))
        b = params.get("bias", np.zeros(c, np.float32))
        if pw is not None:
            w, b = w * pw, b * pw
        params["weight"], params["bias"] = w, b + (pb if pb is not None else 0)
    if f.kind == "bn":
        missing = [k for k in ("weight", "bias", "running_mean", "running_var") if k not in params]
        if missing:
            raise BadInput(f"BatchNormalization without constant {', '.join(missing)}")
        return NormSpec(kind="bn", shape=shape, track_running_stats=True, **kw), params
    if f.kind == "in":
        return NormSpec(kind="in", shape=shape, affine=True, **kw), params
    if "bias" in params and "weight" not in params:
        params["weight"] = np.ones(c, np.float32)
    if "weight" in params and "bias" not in params:
        params["bias"] = np.zeros(c, np.float32)
    return NormSpec(kind="gn", shape=shape, groups=f.groups or 1, affine="weight" in params, **kw), params


def _measured_spec(f: FoundNorm, layer: onnx.ModelProto) -> tuple[NormSpec, dict[str, np.ndarray]]:
    """The spec and parameters the probe measured, at the dims the (wrapped) cut-out takes: known dims
    stay, symbolic ones take the probe's."""
    d = f.derived
    dims = [x.dim_value if x.HasField("dim_value") else None for x in layer.graph.input[0].type.tensor_type.shape.dim]
    probe = [d.dims[i] for i in d.perm] if d.perm is not None else list(d.dims)
    shape = tuple(a or b for a, b in zip(dims, probe, strict=True)) if len(dims) == len(probe) else tuple(probe)
    if not np.isfinite(d.eps) or d.eps <= 0:
        raise BadInput(f"eps = {d.eps}: a zero-variance row divides by zero; the oracle needs a finite eps > 0")
    eps = float(np.format_float_positional(np.float32(d.eps), unique=True, trim="-"))
    params = {k: np.asarray(v, np.float32) for k, v in d.params.items()}
    kw = dict(eps=eps, dtype=d.dtype)
    if d.kind in ("ln", "rms"):
        if d.kind == "rms":
            params.pop("bias", None)
        spec = NormSpec(kind=d.kind, shape=shape, normalized_ndim=d.normalized_ndim, affine=bool(params),
                        bias="bias" in params, **kw)
        return spec, params
    if d.kind == "in":
        if not params:
            c = shape[1]
            params = {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}
        return NormSpec(kind="in", shape=shape, affine=True, **kw), params
    return NormSpec(kind="gn", shape=shape, groups=d.groups, affine=bool(params), **kw), params


def params_from_model(model: onnx.ModelProto, norms: list[FoundNorm]) -> tuple[FoundNorm, NormSpec, dict[str, np.ndarray]]:
    """The one norm of a model that normonnx did not write (`norms`: what normonnx.engine.probe.find_layers found in
    it): (found, spec, params), or BadInput saying how many norms the model holds."""
    norms = [f for f in norms if not f.scope]
    if len(norms) != 1:
        found = ", ".join(f"{f.kind} {f.form} at {f.nodes[0]}" for f in norms[:4]) or "none"
        raise BadInput(f"the model holds {len(norms)} norm layers ({found}), not one: validate a model of one "
                       "norm, or use 'normonnx scan MODEL --validate' for every norm of a model")
    f = norms[0]
    _check_whole_file(model, f)
    if f.derived is not None:
        from .cutout import wrap

        model = wrap(model, f)
    spec, params = derive_spec(f, model)
    return f, spec, params


def _check_whole_file(model: onnx.ModelProto, f: FoundNorm) -> None:
    """BadInput unless the file is the norm alone: its graph input is what the norm normalizes (Casts and
    Identities aside) and its output is the norm's. A whole model (Conv -> GroupNorm) is scan's job."""
    g = Graph(model.graph)
    inputs = {i.name for i in model.graph.input} - set(g.initializers)
    outputs = {o.name for o in model.graph.output}
    starts = {f.input, g.origin(f.input)}
    ends = {f.output}
    for _ in range(4):  # a Cast or Identity after the norm (a float16 island closing) is still the norm's output
        nxt = {n.output[0] for e in ends for i in g.consumers.get(e, []) for n in [g.nodes[i]]
               if n.op_type in ("Cast", "Identity")}
        if not nxt - ends:
            break
        ends |= nxt
    if starts & inputs and ends & outputs:
        return
    others = sorted({n.op_type for i, n in enumerate(g.nodes) if g.names[i] not in set(f.nodes)
                     and n.op_type not in ("Constant", "Cast", "Identity")})
    raise BadInput(f"the model holds one norm ({f.kind} at {f.nodes[0]}) and other layers around it "
                   f"({', '.join(others[:6]) or 'its input is computed'}): validate --model takes a file of one norm; "
                   "use 'normonnx scan MODEL --validate' to check each norm of a whole model")


