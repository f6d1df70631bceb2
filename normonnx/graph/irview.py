"""The model as onnx_ir holds it (the IR `fix` rewrites), and what normonnx reads of it: readable node names,
constants folded through the ops converters wrap them in (DequantizeLinear, Cast, CastLike, Reshape, ...),
values followed through ops that do not change them (Identity, Cast, a QuantizeLinear -> DequantizeLinear
pair), dtypes and dims, and the one region algorithm: the nodes that compute one value from another.

Finding norms (`identify`), cutting them out (`cutout`) and rewriting them (`rewrite`) all read the graph
through this view, so a layer found is the layer cut out is the layer replaced."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from ..core.errors import BadInput
from ..core.tables import dtype_of_onnx

DEFAULT_DOMAINS = ("", "ai.onnx")
MS = "com.microsoft"
# ops that pass a value on unchanged in what it means (a Cast changes its precision: see `dtype`)
TRANSPARENT = ("Identity", "Cast", "CastLike")
MAX_FOLD_BYTES = 64 << 20  # constants folded on demand: a norm's parameters, never a weight matrix
# nodes whose output is no constant even when every input is (random draws, control flow)
NOT_FOLDED = ("If", "Loop", "Scan", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
              "Multinomial", "Bernoulli", "Dropout")


def is_op(node, *ops: str) -> bool:
    return node is not None and node.op_type in ops and node.domain in DEFAULT_DOMAINS


def attr(node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def is_qdq_pair(node) -> bool:
    """A QuantizeLinear whose every use is a DequantizeLinear with the same scale and zero point: the pair
    rounds its value to the int8 grid and hands back floats (a QDQ model's fake quantization)."""
    if not is_op(node, "QuantizeLinear") or not node.outputs[0].uses():
        return False
    return all(is_op(u.node, "DequantizeLinear") and u.idx == 0 and
               [v.name if v is not None else "" for v in u.node.inputs[1:]] ==
               [v.name if v is not None else "" for v in node.inputs[1:]] for u in node.outputs[0].uses())


class View:
    """One graph of the model (the main graph, an If/Loop/Scan body, a model-local function's body) with
    names, constants and dtypes as normonnx reads them. `base`: the model's folder, for external tensors
    (read one by one, each checked: see graph.read_tensor); `protos`: the initializers as stored, by name."""

    def __init__(self, graph, *, base: Path | None = None, protos: dict | None = None, outer: "View | None" = None,
                 prefix: str = ""):
        self.graph = graph
        self.outer = outer
        self.base = base
        self.protos = protos or {}
        self.prefix = prefix
        self.nodes = list(graph)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.names = {n: prefix + (n.name or f"{n.op_type}_{i}") for n, i in self.pos.items()}
        self.by_name = {name: n for n, name in self.names.items()}
        self.values: dict[str, object] = {}
        for v in list(graph.inputs) + list(graph.initializers.values()):
            self.values[v.name] = v
        for n in self.nodes:
            for o in n.outputs:
                if o.name:
                    self.values[o.name] = o
        self._fold: dict[int, np.ndarray | None] = {}
        self._constness: dict[int, bool] = {}

    # -- naming ---------------------------------------------------------------------------------------
    def name(self, node) -> str:
        return self.names[node]

    def value(self, name: str):
        v = self.values.get(name)
        if v is None and self.outer is not None:
            return self.outer.value(name)
        return v

    # -- following values ------------------------------------------------------------------------------
    def origin(self, v):
        """Back through Identity, Cast, CastLike and QuantizeLinear -> DequantizeLinear pairs to the value
        they pass on."""
        for _ in range(32):
            n = v.producer() if v is not None else None
            if n is None:
                return v
            if is_op(n, *TRANSPARENT) and n.inputs and n.inputs[0] is not None:
                v = n.inputs[0]
            elif is_op(n, "DequantizeLinear") and is_qdq_pair(n.inputs[0].producer()):
                v = n.inputs[0].producer().inputs[0]
            else:
                return v
        return v

    def consumers(self, v) -> list:
        return [u.node for u in v.uses()] if v is not None else []

    def uses_through(self, v, *ops: str) -> list:
        """Consumers of `v` with one of `ops`, looking forward through the transparent ops and Q/DQ pairs."""
        out, frontier, seen = [], [v], set()
        while frontier:
            cur = frontier.pop()
            for n in self.consumers(cur):
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if is_op(n, *ops):
                    out.append(n)
                elif is_op(n, *TRANSPARENT) and n.outputs:
                    frontier.append(n.outputs[0])
                elif is_qdq_pair(n):
                    frontier.extend(u.node.outputs[0] for u in n.outputs[0].uses())
        return sorted(out, key=lambda n: self.pos.get(n, -1))

    def same(self, a, b) -> bool:
        return a is not None and b is not None and self.origin(a) is self.origin(b)

    # -- constants -------------------------------------------------------------------------------------
    def overridable(self, v) -> bool:
        """An initializer that is also a graph input (IR < 4 lists every initializer so) is only a default
        the caller may replace: its value is not a constant."""
        return v.is_graph_input() and v.is_initializer()

    def is_const(self, v) -> bool:
        """True if `v` is computed from initializers and Constants alone (no graph input reaches it)."""
        if v is None:
            return True
        key = id(v)
        if key in self._constness:
            return self._constness[key]
        stack = [v]
        while stack:
            cur = stack[-1]
            k = id(cur)
            if k in self._constness:
                stack.pop()
                continue
            n = cur.producer()
            if cur.is_initializer() and not self.overridable(cur):
                self._constness[k] = True
            elif n is None:  # a graph input, or a value of the outer scope
                up = self.outer
                outer = up.value(cur.name) if up is not None and cur.name else None
                self._constness[k] = up is not None and outer is not None and outer is not cur and up.is_const(outer)
            else:
                pending = [i for i in n.inputs if i is not None and id(i) not in self._constness]
                if pending:
                    stack.extend(pending)
                    continue
                self._constness[k] = n.op_type not in NOT_FOLDED and all(
                    self._constness[id(i)] for i in n.inputs if i is not None)
            stack.pop()
        return self._constness[key]

    def const(self, v) -> np.ndarray | None:
        """The value of a constant (an initializer, a Constant, or a small computation on constants: the
        DequantizeLinear of a quantized scale, the Cast of a float16 bias, ...), or None."""
        if v is None or not self.is_const(v):
            return None
        key = id(v)
        if key not in self._fold:
            self._fold[key] = self._evaluate(v)
        return self._fold[key]

    def scalar(self, v) -> float | None:
        c = self.const(v)
        if c is None or c.size != 1 or not np.issubdtype(np.asarray(c).dtype, np.number):
            return None
        return float(np.asarray(c, dtype=np.float64).reshape(-1)[0])

    def _evaluate(self, v) -> np.ndarray | None:
        if v.is_initializer():
            return self._tensor(v)
        if v.producer() is None:
            up = self.outer
            outer = up.value(v.name) if up is not None else None
            return up.const(outer) if up is not None and outer is not None else None
        n = v.producer()
        if n.op_type == "Constant":
            return _constant_attr(n)
        args = [self.const(i) if i is not None else None for i in n.inputs]
        if any(a is None for a, i in zip(args, n.inputs, strict=False) if i is not None):
            return None
        if sum(a.nbytes for a in args if a is not None) > MAX_FOLD_BYTES:
            return None
        try:
            return _fold(n, args, v)
        except Exception:  # an op this small evaluator does not know: not a constant normonnx reads
            return None

    def _tensor(self, v) -> np.ndarray | None:
        import onnx_ir as ir

        t = v.const_value
        if t is None:
            return None
        if isinstance(t, ir.ExternalTensor):
            proto = self.protos.get(v.name)
            if proto is None or self.base is None:
                return None
            from .graph import read_tensor

            return read_tensor(proto, self.base, MAX_FOLD_BYTES)
        try:
            return t.numpy()
        except Exception as e:
            raise BadInput(f"tensor {v.name[:80]!r} is malformed: {str(e)[:200]}") from None

    # -- types and shapes -------------------------------------------------------------------------------
    def dtype(self, v) -> str | None:
        if v is None or v.dtype is None:
            return None
        return dtype_of_onnx(int(v.dtype))

    def dims(self, v) -> list | None:
        """The value's dims: ints where known, a name or None where symbolic; None if its rank is unknown."""
        if v is None or v.shape is None:
            return None
        return [d if isinstance(d, int) else (getattr(d, "value", None) or None) for d in v.shape]

    def static_dims(self, v) -> tuple[int, ...] | None:
        d = self.dims(v)
        return tuple(d) if d is not None and all(isinstance(x, int) and x >= 0 for x in d) else None


# -- the one region algorithm ---------------------------------------------------------------------------
def region(view: View, start, output) -> list:
    """The nodes that compute `output` from `start`, in graph order: every node on a path between the two
    values (forward from `start`, backward from `output`). Constants feeding the chain from outside stay
    outside (a cut-out copies them; a rewrite leaves them where they are)."""
    end = output.producer()
    if end is None:
        return []
    first = view.pos.get(start.producer(), -1)
    seen, stack = set(), [end]
    while stack:  # backward from the output, only through nodes after the start's producer (graphs are sorted)
        n = stack.pop()
        if id(n) in seen or view.pos.get(n, -1) <= first:
            continue
        seen.add(id(n))
        stack.extend(i.producer() for i in n.inputs if i is not None and i is not start and i.producer() is not None)
    depends, nodes = {id(start)}, []
    for n in view.nodes[first + 1: view.pos[end] + 1]:  # of those, the ones that depend on the start
        if id(n) in seen and any(i is not None and id(i) in depends for i in n.inputs):
            nodes.append(n)
            depends.update(id(o) for o in n.outputs)
    return nodes


def leaks(view: View, nodes: list, output) -> tuple[str, str] | None:
    """(value, why) if a value computed inside the region, other than its output, is also used outside it
    (a graph output, a node outside, a subgraph's read): the region cannot be replaced alone."""
    inside = {id(n) for n in nodes}
    graph_outputs = {id(o) for o in view.graph.outputs}
    for n in nodes:
        for o in n.outputs:
            if o is output or not o.name and not o.uses():
                continue
            if id(o) in graph_outputs:
                return o.name, f"its intermediate value {o.name} is a graph output"
            outside = [u.node for u in o.uses() if id(u.node) not in inside]
            if outside:
                u = outside[0]
                if u.graph is not view.graph:  # a subgraph reads the outer value by name
                    return o.name, f"its intermediate value {o.name} is also read inside an If/Loop/Scan body"
                return o.name, f"its intermediate value {o.name} is also used by {view.name(u)}"
    return None


# -- folding the few ops constants come wrapped in ---------------------------------------------------------
def _constant_attr(n) -> np.ndarray | None:
    for key, a in n.attributes.items():
        if key == "value":
            return a.value.numpy()
        if key in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(a.value)
    return None


def _np_dtype(onnx_type: int):
    return onnx.helper.tensor_dtype_to_np_dtype(int(onnx_type))


def _dequantize(n, args: list) -> np.ndarray:
    a, scale = args[0], args[1].astype(np.float32)
    zp = args[2] if len(args) > 2 and args[2] is not None else np.zeros((), a.dtype)
    axis = attr(n, "axis", 1)
    if scale.ndim == 1 and scale.size > 1:  # per-axis
        shape = [1] * a.ndim
        shape[axis % a.ndim] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((a.astype(np.int64) - zp.astype(np.int64)).astype(np.float32) * scale).astype(scale.dtype)


def _arithmetic(ufunc):
    def run(n, args: list) -> np.ndarray:
        with np.errstate(all="ignore"):
            return ufunc(args[0], args[1]).astype(args[0].dtype)
    return run


def _reshape(n, args: list) -> np.ndarray:
    a = args[0]
    shape = [int(s) for s in args[1].reshape(-1)]
    return a.reshape([a.shape[i] if s == 0 and not attr(n, "allowzero", 0) else s for i, s in enumerate(shape)])


def _axes(n, args: list):
    return attr(n, "axes") if len(args) < 2 or args[1] is None else [int(x) for x in args[1].reshape(-1)]


def _squeeze(n, args: list) -> np.ndarray:
    axes = _axes(n, args)
    return np.squeeze(args[0], axis=tuple(axes)) if axes is not None else np.squeeze(args[0])


def _unsqueeze(n, args: list) -> np.ndarray:
    a, axes = args[0], _axes(n, args)
    r = a.ndim + len(axes)
    for ax in sorted(x % r for x in axes):
        a = np.expand_dims(a, ax)
    return a


def _constant_of_shape(n, args: list) -> np.ndarray | None:
    value = attr(n, "value")
    fill = value.numpy().reshape(-1)[0] if value is not None else np.float32(0)
    shape = [int(s) for s in args[0].reshape(-1)]
    return np.full(shape, fill, dtype=np.asarray(fill).dtype) if math.prod(shape) * 4 <= MAX_FOLD_BYTES else None


# the ops parameters come wrapped in, evaluated on constant numpy arguments (default domain); Shape is none of
# them: a value's shape is no constant of the graph (static dims are read with `dims`)
_FOLDS = {
    "Identity": lambda n, args: args[0],
    "Cast": lambda n, args: args[0].astype(_np_dtype(attr(n, "to"))),
    "CastLike": lambda n, args: args[0].astype(args[1].dtype),
    "DequantizeLinear": _dequantize,
    "Neg": lambda n, args: -args[0],
    "Add": _arithmetic(np.add), "Sub": _arithmetic(np.subtract),
    "Mul": _arithmetic(np.multiply), "Div": _arithmetic(np.divide),
    "Sqrt": lambda n, args: np.sqrt(args[0]),
    "Reciprocal": lambda n, args: (1 / args[0]).astype(args[0].dtype),
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": lambda n, args: np.transpose(args[0], attr(n, "perm")),
    "Expand": lambda n, args: args[0] * np.ones([int(s) for s in args[1].reshape(-1)], args[0].dtype),
    "ConstantOfShape": _constant_of_shape,
}


def _fold(n, args: list, out) -> np.ndarray | None:
    """Evaluate one node on constant numpy arguments, for the ops parameters come wrapped in (_FOLDS)."""
    fold = _FOLDS.get(n.op_type) if n.domain in DEFAULT_DOMAINS and args else None
    return fold(n, args) if fold is not None else None


def views(irm, base: Path | None = None, protos: dict | None = None) -> Iterable[tuple[View, str]]:
    """(view, scope) for the main graph ("" ), every If/Loop/Scan body at any depth ('If_3.then_branch'), and
    every model-local function ('local.Block'): an explicit queue, not recursion (a hostile model may nest
    bodies hundreds deep)."""
    import onnx_ir as ir

    main = View(irm.graph, base=base, protos=protos)
    yield main, ""
    queue = [(main, path, sg) for path, sg in _bodies(main)]
    while queue:
        outer, path, sg = queue.pop(0)
        v = View(sg, outer=outer, prefix=f"{path}/", base=base, protos=protos)
        yield v, path
        queue.extend((v, f"{path}/{sub}", ssg) for sub, ssg in _bodies(v))
    for fn in irm.functions.values():
        path = f"{fn.domain}.{fn.name}"
        yield View(fn.graph if hasattr(fn, "graph") else ir.Graph((), (), nodes=list(fn)), prefix=f"{path}/"), path


def _bodies(view: View):
    """('node.attr', graph) for every graph-valued attribute of the view's nodes."""
    for n in view.nodes:
        for key, a in n.attributes.items():
            graphs = [a.value] if a.type == onnx.AttributeProto.GRAPH else (
                list(a.value) if a.type == onnx.AttributeProto.GRAPHS else [])
            raw = view.name(n)[len(view.prefix):]
            for k, sg in enumerate(graphs):
                yield f"{raw}.{key}" + (f"[{k}]" if len(graphs) > 1 else ""), sg
