"""Cutting found norms out of a model (onnx.utils.Extractor) into standalone single-input models,
and asking ONNX Runtime, once for the whole model, which decomposed chains it fuses."""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from ..errors import BadInput
from ..graph import MS, Graph, attr, check_external_data, read_external_data
from .patterns import CONTRIB, NATIVE, FoundNorm

SHAPE_PRESERVING = {"Cast", "Identity", "Relu", "Sigmoid", "Tanh", "Erf", *NATIVE, *CONTRIB}


def residual_inputs(f: FoundNorm) -> list[str]:
    return [e for e in f.extra_inputs if e not in ("channels_last", "bias-before-norm")]


class LayerExtractor:
    """One onnx.utils.Extractor over the model, reused for every layer: building it (and the value
    info the layers' boundaries need) is linear in the model, so a scan stays linear too."""

    def __init__(self, model: onnx.ModelProto, base: Path, norms: list[FoundNorm]):
        from onnx.utils import Extractor

        self.base = base
        names = [n for f in norms if not f.scope for n in (f.input, f.output, *residual_inputs(f))]
        _ensure_value_info(model, names)
        try:
            self._extractor = Extractor(model)
        except Exception as e:  # e.g. two nodes writing one tensor: not a valid graph
            raise BadInput(f"cannot index the model's graph for extraction: {_first(e)}") from None

    def extract(self, f: FoundNorm, out: Path) -> Path:
        """The layer as a standalone single-input model, its weights loaded, saved at `out`."""
        if f.scope:
            raise BadInput(f"inside {f.scope}: only main-graph layers can be extracted")
        if "bias-before-norm" in f.extra_inputs:
            raise BadInput(f"{f.op} adds a bias before normalizing: LN(x + skip + bias) is not one norm of x")
        residual = residual_inputs(f)
        try:
            sub = self._extractor.extract_model([f.input, *residual], [f.output])
        except Exception as e:
            raise BadInput(f"cannot extract {f.nodes[0]}..{f.nodes[-1]}: {_first(e)}") from None
        for r in residual:
            # Skip*LayerNormalization normalizes x + skip: with skip = 0 it is the norm of x alone
            vi = next(i for i in sub.graph.input if i.name == r)
            sub.graph.input.remove(vi)
            zero = onnx.helper.make_tensor("zero", vi.type.tensor_type.elem_type, [1], [0])
            sub.graph.node.insert(0, onnx.helper.make_node("ConstantOfShape", [f"{r}_shape"], [r], value=zero))
            sub.graph.node.insert(0, onnx.helper.make_node("Shape", [f.input], [f"{r}_shape"]))
        read_external_data(check_external_data(sub, self.base))  # only this layer's tensors
        # a standalone layer keeps only what a runtime needs; drop value_info that may reference the rest
        del sub.graph.value_info[:]
        if any(n.domain == MS for n in sub.graph.node) and not any(o.domain == MS for o in sub.opset_import):
            sub.opset_import.append(onnx.helper.make_opsetid(MS, 1))
        onnx.save(sub, str(out))
        return out


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _ensure_value_info(model: onnx.ModelProto, names: list[str]) -> None:
    """onnx's shape inference knows nothing of com.microsoft ops: give a norm's boundary tensors the
    type and shape they inherit through shape-preserving ops (norms, casts, activations)."""
    g = Graph(model.graph)
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


FUSED_OPS = ("Normalization", "GroupNorm")  # LayerNormalization, SimplifiedLayerNormalization, SkipLayerNormalization, ...


def ort_fusion(model_path: Path, norms: list[FoundNorm]) -> tuple[dict[int, bool], str | None]:
    """Which decomposed chains ONNX Runtime (CPU, default optimization level) turns into one norm op,
    judged in the whole model, where layout transforms and neighbouring fusions decide (a layer cut
    out alone can fuse when it would not in place). Returns ({norm index: fused}, why unknown)."""
    import onnxruntime as ort

    wanted = {i: f for i, f in enumerate(norms) if f.form == "decomposed" and not f.scope}
    if not wanted:
        return {}, None
    with tempfile.TemporaryDirectory(prefix="normonnx-fuse-") as tmp:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(tmp) / "o.onnx")
        so.log_severity_level = 3
        try:
            ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
            opt = onnx.load(so.optimized_model_filepath, load_external_data=False)
        except Exception as e:
            return {}, f"ORT cannot optimize the whole model here: {_first(e)}"
    norm_outputs = {o for n in opt.graph.node if n.op_type.endswith(FUSED_OPS) for o in n.output}
    return {i: f.output in norm_outputs for i, f in wanted.items()}, None
