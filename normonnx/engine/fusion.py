"""What ONNX Runtime makes of a user's model: the whole model as ORT's optimizer rewrites it, and
which decomposed norm chains it fused into one norm op (judged in place, where neighbouring fusions
and layout transforms decide; a chain cut out alone can fuse when it does not in place)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from ..core.errors import first_line
from ..graph.graph import Graph, ort_source
from ..graph.patterns import FoundNorm
from .runtimes import ort_session

FUSED_OPS = ("Normalization", "GroupNorm")  # LayerNormalization, SimplifiedLayerNormalization, SkipLayerNormalization, ...


def ort_optimized(model_path: Path) -> tuple[onnx.ModelProto | None, str | None]:
    """The whole model as ONNX Runtime (CPU, default optimization level) rewrites it, or why not.
    Safe to run in a thread beside the pattern search: ORT releases the GIL for much of it."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="normonnx-fuse-") as tmp:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(Path(tmp) / "o.onnx")
        so.log_severity_level = 3
        # only the graph is read back: weights go to a side file nobody loads (a 300 MB model's
        # optimized copy is then under 1 MB to write and parse)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "o.bin")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        so.add_session_config_entry("session.disable_prepacking", "1")  # packs MatMul weights: no graph change
        try:
            model, folder = ort_source(model_path)
            if folder:
                so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
            ort_session(model, so)
            return onnx.load(so.optimized_model_filepath, load_external_data=False), None
        except Exception as e:
            return None, f"ORT cannot optimize the whole model here: {first_line(e)}"


def ort_fusion(optimized: onnx.ModelProto | None, g: Graph, norms: list[FoundNorm]) -> dict[int, object]:
    """What ONNX Runtime makes of each decomposed chain, judged in the whole model (`optimized`, from
    ort_optimized), where layout transforms and neighbouring fusions decide: a chain cut out alone
    can fuse when it does not in place. Per norm index: True (one norm op computes the chain's
    output), "partly: <ops>" (a norm op replaced part of the chain, e.g. Sub +
    SimplifiedLayerNormalization), or False. Empty when ORT could not optimize the model. `g`
    indexes the original model's main graph."""
    wanted = {i: f for i, f in enumerate(norms) if f.form == "decomposed" and not f.scope}
    if not wanted or optimized is None:
        return {}
    made = {o: n.op_type for n in optimized.graph.node if n.op_type.endswith(FUSED_OPS) for o in n.output}
    out: dict[int, object] = {}
    for i, f in wanted.items():
        if f.output in made:
            out[i] = True
            continue
        inner = {o for name in f.nodes if name in g.index for o in g.nodes[g.index[name]].output}
        ops = sorted({made[o] for o in inner if o in made})
        out[i] = f"partly: {', '.join(ops)}" if ops else False
    return out
