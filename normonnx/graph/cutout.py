"""Cutting one found norm out of a model into a standalone model of one input, on the IR the finder read
(`irview.region`: the nodes between the layer's input and output values). The one cut-out every check runs:
the probe that confirms a written-out norm, scan --validate, fix's proof, --activations' replays.

A cut-out holds the region's nodes, the constants they read (initializers -- external ones read from their
checked bytes only -- Constants, and the small computations on constants in front of them, such as a
quantized scale's DequantizeLinear), and:
- Skip*'s residual and pre-norm bias at zero (the norm of x alone, on the same kernel);
- a parameter fed at run time (a graph input: ONNX's conformance models feed scale and bias so) drawn,
  seeded, at its declared shape: scale ~ 1 + 0.1 N(0,1), bias and mean ~ N(0,1), variance ~ 0.5 + |N(0,1)|;
- for a checked layer (`wrapped`), what the probe measured: a Transpose on each side where the norm is
  written over another layout (channels-last GroupNorm, LayerNorm over the channel axis), a Cast in front
  where its statistics run in another precision than its input, and its activations' Q/DQ pairs taken out
  (a quantized norm is checked as float: the int8 rounding is the quantizer's choice, not a norm's bug).
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..core.errors import BadInput
from .graph import MS, check_external_data, read_external_data
from .irview import View, is_qdq_pair, region
from .patterns import FoundNorm

DRAWN = "normonnx.parameters_drawn"  # model property of a cut-out layer: which parameters were drawn
WRAP = "normonnx.wrap/"  # names the wrappers add


class Cutter:
    """One IR of the model, reused for every layer: building it is linear in the model, so a scan stays
    linear too. `model`: shape-inferred; `base`: its folder (external data is read from there, only for the
    tensors a layer reads)."""

    def __init__(self, model: onnx.ModelProto, base: Path):
        import onnx_ir as ir

        self.base = Path(base)
        self.opsets = list(model.opset_import)
        self.ir_version = model.ir_version
        self.functions = list(model.functions)
        self.protos = {t.name: t for t in model.graph.initializer}
        self.fed = {i.name: i for i in model.graph.input if i.name not in self.protos}
        try:
            self.view = View(ir.from_proto(model).graph, base=self.base,
                             protos={k: t for k, t in self.protos.items() if t.data_location == onnx.TensorProto.EXTERNAL})
        except Exception as e:
            raise BadInput(f"cannot index the model's graph for extraction: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") \
                from None

    def nodes(self, f: FoundNorm) -> list:
        x, y = self.view.value(f.input), self.view.value(f.output)
        return region(self.view, x, y) if x is not None and y is not None else []

    def layer(self, f: FoundNorm, *, dims: tuple[int, ...] | None = None, wrapped: bool = False,
              frozen: dict | None = None) -> onnx.ModelProto:
        """The layer alone: input f.input (at `dims` where given), output f.output. wrapped: in the layout and
        dtype the probe measured it in, Q/DQ pairs taken out (see the module doc). frozen: values of the shapes it
        reads from outside (a dynamic dim), as a run of the model gave them (default: what the probe measured)."""
        x, y, nodes = self._region(f)
        if frozen is None and f.derived is not None:
            frozen = f.derived.frozen
        g, drawn = self._graph(f, x, y, nodes, dims, frozen or {})
        m = helper.make_model(g, opset_imports=self.opsets, ir_version=self.ir_version)
        if self.functions and any(n.domain not in ("", "ai.onnx", MS) for n in g.node):
            m.functions.extend(self.functions)
        if any(n.domain == MS for n in g.node) and not any(o.domain == MS for o in m.opset_import):
            m.opset_import.append(helper.make_opsetid(MS, 1))
        if drawn:
            helper.set_model_props(m, {DRAWN: ",".join(drawn)})
        return wrap(m, f) if wrapped else m

    def _region(self, f: FoundNorm) -> tuple:
        """(input value, output value, the nodes between) of a layer that can be cut out; BadInput saying why not."""
        if f.scope:
            raise BadInput(f"inside {f.scope}: only main-graph layers can be extracted")
        if f.unvalidatable:
            raise BadInput(f.unvalidatable)
        x, y = self.view.value(f.input), self.view.value(f.output)
        if x is None or y is None:
            raise BadInput(f"cannot extract {f.nodes[0]}: its input or output value is not in the main graph")
        nodes = region(self.view, x, y)
        if not nodes:
            raise BadInput(f"cannot extract {f.nodes[0]}..{f.nodes[-1]}: no node computes {f.output} from {f.input}")
        return x, y, nodes

    def _graph(self, f: FoundNorm, x, y, nodes: list, dims, frozen: dict) -> tuple[onnx.GraphProto, list]:
        """The layer's graph (what computes its constants in front of its nodes, its initializers and the frozen
        shapes; Skip*'s residual and bias zeroed) and the graph inputs it draws."""
        import onnx_ir as ir

        feeders, inits, zeroed, drawn_inputs = self._reads(f, x, nodes, set(frozen))
        order = sorted(feeders, key=lambda n: self.view.pos.get(n, -1)) + nodes
        g = helper.make_graph([], "layer", [self._value_info(x, dims)], [self._value_info(y, None)])
        g.node.extend(ir.serde.serialize_node(n) for n in order)
        for name in sorted(inits):
            g.initializer.append(self._initializer(name))
        for name, value in frozen.items():
            g.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        for v in zeroed:  # Skip*: with skip = 0 it is the norm of x alone
            zero = helper.make_tensor("zero", v.dtype.value if v.dtype is not None else onnx.TensorProto.FLOAT, [1], [0])
            g.node.insert(0, helper.make_node("ConstantOfShape", [f"{v.name}_shape"], [v.name], value=zero))
            g.node.insert(0, helper.make_node("Shape", [f.input], [f"{v.name}_shape"]))
        if f.pre_bias:  # Skip*'s bias is added before normalizing: zeroed too (the add itself is exact)
            for t in g.initializer:
                if t.name == f.pre_bias:
                    t.CopyFrom(helper.make_tensor(t.name, t.data_type, list(t.dims), [0] * math.prod(t.dims)))
        return g, self._draw(f, g, drawn_inputs)

    def _reads(self, f: FoundNorm, x, nodes: list,
               frozen: set | frozenset = frozenset()) -> tuple[list, dict, list, list]:
        """What the region reads from outside: (constant-computing nodes in front of it, initializers by name,
        Skip*'s residual values to zero, graph inputs to draw); anything else is refused."""
        view = self.view
        made = {id(o) for n in nodes for o in n.outputs}
        feeders, inits, zeroed, drawn = {}, {}, [], []
        residual, params = set(f.extra_inputs), set(dict(f.params).values())
        stack = [i for n in nodes for i in n.inputs if i is not None and id(i) not in made and i is not x]
        seen = set()
        while stack:
            v = stack.pop()
            if id(v) in seen:
                continue
            seen.add(id(v))
            if v.name in frozen:
                continue  # a shape read from outside: given as a constant of this run
            if v.name in residual:
                zeroed.append(v)
            elif v.is_initializer():
                inits[v.name] = v
            elif v.name in self.fed and v.name in params:
                drawn.append(v)
            elif v.producer() is not None and view.is_const(v):
                feeders[id(v.producer())] = v.producer()
                stack.extend(i for i in v.producer().inputs if i is not None)
            elif v.producer() is None and v.is_graph_input() and v.name in self.fed:
                raise BadInput(f"its value {v.name} is a graph input other than the layer's own: the layer is not a "
                               "function of its input alone")
            else:
                raise BadInput(f"it reads {v.name}, which is neither its input {f.input} nor a constant: not a norm of "
                               "one input")
        return list(feeders.values()), inits, zeroed, drawn

    def save(self, f: FoundNorm, out: Path, *, wrapped: bool = True) -> Path:
        """The checked layer (wrapped) saved at `out`: what scan --validate and fix's proof run."""
        onnx.save(self.layer(f, wrapped=wrapped), str(out))
        return out

    extract = save  # the name the layer engine has always called

    def _value_info(self, v, dims):
        elem = v.dtype.value if v.dtype is not None else onnx.TensorProto.FLOAT
        if dims is None:
            d = self.view.dims(v)
            dims = [x if isinstance(x, int) else (x or None) for x in d] if d is not None else None
        return helper.make_tensor_value_info(v.name, elem, dims)

    def _initializer(self, name: str) -> onnx.TensorProto:
        t = onnx.TensorProto()
        t.CopyFrom(self.protos[name])
        if t.data_location == onnx.TensorProto.EXTERNAL:
            holder = onnx.ModelProto()
            holder.graph.initializer.append(t)
            read_external_data(check_external_data(holder, self.base))
            return holder.graph.initializer[0]
        return t

    def _draw(self, f: FoundNorm, g: onnx.GraphProto, values: list) -> list[str]:
        """A parameter fed at run time has no value to read: seeded drawn values of its declared shape."""
        roles = {name: key for key, name in f.params}
        drawn = []
        for v in values:
            key = roles.get(v.name, "weight")
            tt = self.fed[v.name].type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim] if tt.HasField("shape") else None
            if shape is None or any(d <= 0 for d in shape):
                raise BadInput(f"its {key} ({v.name}) is a graph input of unknown shape: no value can be drawn for it")
            np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            if not np.issubdtype(np_dtype, np.floating):
                raise BadInput(f"its {key} ({v.name}) is a graph input of non-float type")
            z = np.random.default_rng(zlib.crc32(v.name.encode())).standard_normal(shape)
            value = {"weight": 1 + 0.1 * z, "running_var": 0.5 + np.abs(z)}.get(key, z)
            g.initializer.append(onnx.numpy_helper.from_array(value.astype(np_dtype), v.name))
            drawn.append(f"{key} {v.name}")
        return drawn


def wrap(m: onnx.ModelProto, f: FoundNorm) -> onnx.ModelProto:
    """The cut-out in what the probe measured (f.derived): activations' Q/DQ pairs out; a Transpose on each
    side when the layer is written over another layout; a Cast in front when its statistics run in a lower
    precision than its input (a float16 island in a float32 model: judged as float16). The wrappers take a new
    graph input and end at the layer's own input value, so every value of the layer keeps its name and type
    (a rewrite of the wrapped layer writes what it would write in the model)."""
    g = m.graph
    if f.notes and any("Q/DQ" in n for n in f.notes):  # natives too (a QDQ instance-trick GroupNorm)
        _strip_qdq(g)
    d = f.derived
    if d is None:
        return m
    x = g.input[0]
    elem = x.type.tensor_type.elem_type
    permuted = d.perm is not None and list(d.perm) != list(range(len(d.perm)))
    want = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(d.dtype)) if d.dtype in ("float16", "float32") else elem
    if permuted or want != elem:
        steps, cur = [], WRAP + "x"
        if want != elem:
            steps.append(helper.make_node("Cast", [cur], [WRAP + "x_cast"], to=elem))
            cur = WRAP + "x_cast"
        if permuted:
            steps.append(helper.make_node("Transpose", [cur], [WRAP + "x_layout"],
                                          perm=[d.perm.index(i) for i in range(len(d.perm))]))
            cur = WRAP + "x_layout"
        steps[-1].output[0] = x.name  # the layer reads its own input value, as in the model
        dims = [dd.dim_value if dd.HasField("dim_value") else None for dd in x.type.tensor_type.shape.dim]
        if permuted and dims:
            dims = [dims[p] for p in d.perm]
        for s in reversed(steps):
            g.node.insert(0, s)
        g.input[0].CopyFrom(helper.make_tensor_value_info(WRAP + "x", want, dims))
    if permuted:
        y = g.output[0]
        g.node.append(helper.make_node("Transpose", [y.name], [WRAP + "y_layout"], perm=list(d.perm)))
        g.output[0].CopyFrom(helper.make_tensor_value_info(WRAP + "y_layout", y.type.tensor_type.elem_type, None))
    return m


def _strip_qdq(g: onnx.GraphProto) -> None:
    """QuantizeLinear -> DequantizeLinear pairs on activations replaced by Identity (parameters' own
    DequantizeLinear of constants stay: they are how the values are stored)."""
    producers = {o: n for n in g.node for o in n.output}
    consts = {t.name for t in g.initializer}
    keep = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in producers and producers[n.input[0]].op_type == "QuantizeLinear":
            q = producers[n.input[0]]
            if q.input[0] not in consts:
                keep.append(helper.make_node("Identity", [q.input[0]], list(n.output)))
                continue
        keep.append(n)
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    keep = [n for n in keep if n.op_type != "QuantizeLinear" or any(o in used for o in n.output)]
    del g.node[:]
    g.node.extend(keep)


__all__ = ["Cutter", "wrap", "DRAWN", "is_qdq_pair"]
