"""Cutting found norms out of a model (onnx.utils.Extractor) into standalone single-input models,
and asking ONNX Runtime, once for the whole model, which decomposed chains it fuses."""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import onnx

from .errors import BadInput, first_line
from .graph import MS, Graph, attr, check_external_data, read_external_data
from .patterns import CONTRIB, NATIVE, FoundNorm

SHAPE_PRESERVING = {"Cast", "Identity", "Relu", "Sigmoid", "Tanh", "Erf", *NATIVE, *CONTRIB}


def _local_extractor(model: onnx.ModelProto):
    """onnx.utils.Extractor whose per-layer cost does not grow with the model: its tensor collection
    scans every initializer and value_info of the model for each layer; here it looks up only the
    names the layer's nodes use (same result, dict lookups instead of a pass over the model)."""
    from onnx.utils import Extractor

    class LocalExtractor(Extractor):
        def _collect_reachable_tensors(self, nodes):
            names = {n for node in nodes for n in (*node.input, *node.output) if n}
            return ([self.initializers[n] for n in sorted(names) if n in self.initializers],
                    [self.value_infos[n] for n in sorted(names) if n in self.value_infos])

    return LocalExtractor(model)


class LayerExtractor:
    """One onnx.utils.Extractor over the model, reused for every layer: building it (and the value
    info the layers' boundaries need) is linear in the model, so a scan stays linear too."""

    def __init__(self, model: onnx.ModelProto, base: Path, norms: list[FoundNorm], g: Graph | None = None):
        self.base = base
        self.graph_inputs = {i.name: i for i in model.graph.input}
        self.initializer_names = {t.name for t in model.graph.initializer}
        names = [n for f in norms if not f.scope for n in (f.input, f.output, *f.extra_inputs)]
        _ensure_value_info(model, names, g or Graph(model.graph))
        try:
            self._extractor = _local_extractor(model)
        except Exception as e:  # e.g. two nodes writing one tensor: not a valid graph
            raise BadInput(f"cannot index the model's graph for extraction: {first_line(e, 200)}") from None

    def extract(self, f: FoundNorm, out: Path) -> Path:
        """The layer as a standalone single-input model, its weights loaded, saved at `out`."""
        if f.scope:
            raise BadInput(f"inside {f.scope}: only main-graph layers can be extracted")
        if f.unvalidatable:
            raise BadInput(f.unvalidatable)
        residual = list(f.extra_inputs)
        try:
            sub = self._extractor.extract_model([f.input, *residual], [f.output])
        except Exception as e:
            raise BadInput(f"cannot extract {f.nodes[0]}..{f.nodes[-1]}: {first_line(e, 200)}") from None
        for r in residual:
            # Skip*LayerNormalization normalizes x + skip: with skip = 0 it is the norm of x alone
            vi = next(i for i in sub.graph.input if i.name == r)
            sub.graph.input.remove(vi)
            zero = onnx.helper.make_tensor("zero", vi.type.tensor_type.elem_type, [1], [0])
            sub.graph.node.insert(0, onnx.helper.make_node("ConstantOfShape", [f"{r}_shape"], [r], value=zero))
            sub.graph.node.insert(0, onnx.helper.make_node("Shape", [f.input], [f"{r}_shape"]))
        if f.pre_bias:
            # Skip*'s bias is added before normalizing: zero it too, so the layer is the norm of x
            # alone and runs the same kernel; the bias add itself is an exact elementwise op
            for t in sub.graph.initializer:
                if t.name == f.pre_bias:
                    t.CopyFrom(onnx.helper.make_tensor(t.name, t.data_type, list(t.dims),
                                                       [0] * math.prod(t.dims)))
        drawn = self._draw_fed_parameters(f, sub)
        if drawn:
            onnx.helper.set_model_props(sub, {DRAWN: ",".join(drawn)})
        read_external_data(check_external_data(sub, self.base))  # only this layer's tensors
        # a standalone layer keeps only what a runtime needs; drop value_info that may reference the rest
        del sub.graph.value_info[:]
        if any(n.domain == MS for n in sub.graph.node) and not any(o.domain == MS for o in sub.opset_import):
            sub.opset_import.append(onnx.helper.make_opsetid(MS, 1))
        onnx.save(sub, str(out))
        return out


    def _draw_fed_parameters(self, f: FoundNorm, sub: onnx.ModelProto) -> list[str]:
        """A parameter fed at run time (a graph input: ONNX's conformance models feed scale and bias so)
        has no value to read: the layer is checked with seeded drawn values of its declared shape,
        scale ~ 1 + 0.1 N(0,1), bias and mean ~ N(0,1), variance ~ 0.5 + |N(0,1)| (> 0). An initializer
        that a graph input of the same name may override (IR < 4) keeps its stored value: that default
        is what runs unless the caller feeds another."""
        made = {o for n in sub.graph.node for o in n.output} | {t.name for t in sub.graph.initializer}
        drawn = []
        for key, name in f.params:
            if name in made or name not in self.graph_inputs or name in self.initializer_names:
                continue
            tt = self.graph_inputs[name].type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim] if tt.HasField("shape") else None
            if dims is None or any(d <= 0 for d in dims):
                raise BadInput(f"its {key} ({name}) is a graph input of unknown shape: no value can be drawn for it")
            np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            if not np.issubdtype(np_dtype, np.floating):
                raise BadInput(f"its {key} ({name}) is a graph input of non-float type")
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            z = rng.standard_normal(dims)
            v = {"weight": 1 + 0.1 * z, "running_var": 0.5 + np.abs(z)}.get(key, z)
            sub.graph.initializer.append(onnx.numpy_helper.from_array(v.astype(np_dtype), name))
            drawn.append(f"{key} {name}")
        return drawn


DRAWN = "normonnx.parameters_drawn"  # model property of a cut-out layer: which parameters were drawn



def _ensure_value_info(model: onnx.ModelProto, names: list[str], g: Graph) -> None:
    """onnx's shape inference knows nothing of com.microsoft ops: give a norm's boundary tensors the
    type and shape they inherit through shape-preserving ops (norms, casts, activations). `g` indexes
    the model as given (the value info added here is tracked in `added`, not in the index)."""
    added = set()
    for name in names:
        if name in g.types or name in added:
            continue
        src, elem = name, None
        for _ in range(32):
            if src in g.shapes:
                break
            _, n = g.node(src)
            if n is None or n.op_type not in SHAPE_PRESERVING or not n.input:
                break
            if n.op_type == "Cast" and elem is None:
                elem = attr(n, "to")
            src = n.input[0]
        shape = g.shapes.get(src)
        elem = elem or g.types.get(src) or onnx.TensorProto.FLOAT
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, shape))
        added.add(name)
