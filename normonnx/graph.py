"""Facts about an ONNX model: opset, op histogram, normonnx metadata; loading with clear errors."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx

from .errors import BadInput

META_PREFIX = "normonnx."


def load_model(path: str | Path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file or raise BadInput with a one-line reason."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"no such model file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise BadInput(f"{p} is not a readable ONNX model ({type(e).__name__}): give a .onnx file") from None
    if not model.graph.node and not model.graph.output:
        raise BadInput(f"{p} holds no ONNX graph: give a .onnx file written by an exporter")
    if load_external_data:
        _load_external_data_safely(model, p.parent)
    return model


def _load_external_data_safely(model: onnx.ModelProto, base: Path) -> None:
    """Load external tensors, refusing locations that escape the model's folder."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data, load_external_data_for_tensor

    root = base.resolve()
    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (root / loc).resolve()
        if Path(loc).is_absolute() or root not in target.parents:
            raise BadInput(f"external data location {loc!r} escapes the model's folder: refused")
        if not target.is_file():
            raise BadInput(f"external data file {loc!r} for tensor {t.name!r} is missing next to the model")
        load_external_data_for_tensor(t, str(root))
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Op type -> count over the main graph (domain-qualified when not the default domain)."""
    c = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in model.graph.node)
    return dict(sorted(c.items()))


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def set_metadata(model: onnx.ModelProto, values: dict[str, object]) -> None:
    keep = [p for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in values.items():
        entry = model.metadata_props.add()
        entry.key = META_PREFIX + k
        entry.value = v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def model_facts(model: onnx.ModelProto, path: Path | None = None) -> dict:
    facts = {
        "opset": opset_of(model),
        "ops": op_histogram(model),
        "nodes": len(model.graph.node),
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
    }
    if path is not None:
        facts["path"] = str(path)
        facts["size_bytes"] = Path(path).stat().st_size
    return facts
