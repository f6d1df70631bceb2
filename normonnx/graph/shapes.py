"""A user's model at the dims it runs at: dims given for symbolic graph inputs (`--input-shape`), and
shape inference that neither serializes nor copies the weights (onnx's, then ORT's symbolic inference
for the com.microsoft ops onnx does not know)."""
from __future__ import annotations

import onnx

from ..core.errors import BadInput
from .graph import tensor_nbytes


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """['input_ids=2x16', 'x=1x3x32x32'] -> {name: dims}; BadInput saying the form otherwise."""
    from ..core.spec import parse_shape

    out = {}
    for text in specs or []:
        name, sep, dims = text.partition("=")
        if not sep or not name:
            raise BadInput(f"--input-shape {text!r}: write NAME=DIMS, e.g. input_ids=2x16")
        out[name] = parse_shape(dims)
    return out


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Set the dims of the named graph inputs (symbolic dims the user knows), checking rank and names."""
    inputs = {i.name: i for i in model.graph.input}
    for name, dims in shapes.items():
        if name not in inputs:
            raise BadInput(f"--input-shape {name}: the model has no input {name!r}; its inputs are "
                           f"{', '.join(inputs) or 'none'}")
        tt = inputs[name].type.tensor_type
        if tt.HasField("shape") and len(tt.shape.dim) != len(dims):
            raise BadInput(f"--input-shape {name}: the input has rank {len(tt.shape.dim)}, not {len(dims)}")
        del tt.shape.dim[:]
        for d in dims:
            tt.shape.dim.add().dim_value = d


def _light(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the graph whose large initializers are marked external: shape inference reads their dims,
    never their data, so a 2 GB inline model is neither serialized for the C++ side nor copied."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    g.name = src.name
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, part).extend(getattr(src, part))
    for t in src.initializer:
        if (tensor_nbytes(t) or 0) <= 4096 or t.data_location == onnx.TensorProto.EXTERNAL:
            g.initializer.append(t)
            continue
        stub = g.initializer.add()
        stub.name, stub.data_type, stub.data_location = t.name, t.data_type, onnx.TensorProto.EXTERNAL
        stub.dims.extend(t.dims)
        e = stub.external_data.add()
        e.key, e.value = "location", "normonnx-weights-held-aside"
    return light


def _untyped(model: onnx.ModelProto) -> bool:
    """Whether some main-graph value is left without a rank (a converter's Reshape to a computed shape stops
    onnx's inference; ORT's own ops are unknown to it)."""
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)
             if v.type.tensor_type.HasField("shape")} | {t.name for t in model.graph.initializer}
    return any(o and o not in known for n in model.graph.node for o in n.output)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's shape inference and, where it leaves values without a rank (com.microsoft ops, which onnx does
    not know; shapes computed in the graph, as tf2onnx writes them without its optimizer), onnxruntime's
    symbolic shape inference, which propagates computed shapes. Both run on a copy whose large weights are
    held aside (`_light`); what they infer is put on `model` itself, which is returned. Either may fail on a
    given model: what they could not infer stays unknown (scan then says why where it needs a shape)."""
    light = _light(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except Exception:
        inferred = light
    if _untyped(inferred):
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            inferred = SymbolicShapeInference.infer_shapes(inferred, auto_merge=True, guess_output_rank=True) or inferred
        except Exception:
            pass
    src = model.graph
    for part in ("value_info", "output"):
        del getattr(src, part)[:]
        getattr(src, part).extend(getattr(inferred.graph, part))
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in src.node for a in n.attribute):
        del src.node[:]  # If/Loop/Scan bodies carry their own inferred value_info
        src.node.extend(inferred.graph.node)
    return model
