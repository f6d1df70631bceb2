"""onnx.reference's ReferenceEvaluator (runtime "reference"): the ONNX spec's own Python implementation,
float16 ops computed in float16 as written."""
from __future__ import annotations

import numpy as np

from ...core.errors import first_line
from .base import Runtime, Session, SessionConfig, SessionError, package_version, register


def _stash_honouring_ops() -> list:
    """onnx.reference's LayerNormalization/RMSNormalization accept only stash_type=1 ("statistics in
    float32") and then compute in X's dtype anyway: a float16 row overflows at |x|~256 where the spec,
    and every runtime's kernel, accumulates in float32. These run onnx's own code on float32 copies
    and cast the results back, as the spec says."""
    from onnx.reference.ops.op_layer_normalization import LayerNormalization as LN
    from onnx.reference.ops.op_rms_normalization import RMSNormalization as RMS

    def widened(base):
        class Op(base):
            op_domain = ""

            def _run(self, X, *args, **kw):
                if X.dtype.itemsize >= 4 or kw.get("stash_type") != 1:
                    return base._run(self, X, *args, **kw)
                wide = [a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in args]
                return tuple(y.astype(X.dtype) for y in base._run(self, X.astype(np.float32), *wide, **kw))

        Op.__name__ = base.__name__
        return Op

    return [widened(LN), widened(RMS)]


def _open_reference(model_path, config: SessionConfig, module=None) -> Session:
    from onnx.reference import ReferenceEvaluator

    try:
        ev = ReferenceEvaluator(str(model_path), new_ops=_stash_honouring_ops())
    except Exception as e:
        raise SessionError(f"onnx.reference cannot load the model: {first_line(e)}") from e
    name = ev.input_names[0]

    def run(x):
        with np.errstate(all="ignore"):
            return ev.run(None, {name: x})[0]

    return Session("reference", run, {"evaluator": "onnx.reference.ReferenceEvaluator", "version": package_version("onnx"),
                                      "precision": "as the graph's types (numpy)"}, ev)


register(Runtime("reference", "onnx.reference.ReferenceEvaluator (the ONNX spec's Python implementation)",
                 lambda: None, _open_reference))
