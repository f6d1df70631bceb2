"""The float16 what-if of `scan --activations`: each layer converted with onnxruntime's float16 converter, and that
conversion with float32 statistics (`normonnx fix`'s rules), run on onnx's reference evaluator, which computes
float16 ops in float16 as a GPU provider does (ORT CPU computes them in float32 and would hide an overflow), on the
captured inputs. A what-if: never the exit code."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ...core.compare import Oracle
from ...core.errors import first_line
from ...core.judge import NOT_CHECKED, judge, status_of
from .checks import Float16Verdict, Float16WhatIf, LayerCheck, against_oracle

WHAT_IF_SAMPLES = 16  # the float16 what-if runs on onnx.reference, slowly: the first samples only
WHAT_IF_THREADS = 2  # what-ifs at once, beside the main thread: more gains nothing against the GIL (measured)


def _fp16_layer(layer_path: Path, out: Path) -> Path:
    """The layer as onnxruntime's float16 converter writes it (what a float16 deployment would run)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = _fold_dequantized(onnx.load(str(layer_path)))
    if m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
        m = convert_float_to_float16(m, keep_io_types=False, disable_shape_infer=True)
    onnx.save(m, str(out))
    return out


def _fold_dequantized(m: onnx.ModelProto) -> onnx.ModelProto:
    """A QDQ layer's parameters (DequantizeLinear of int8 constants) as the float constants they are: the float16
    converter then converts them like any weight, and onnx.reference, which has no DequantizeLinear below opset
    19, runs the layer."""
    import onnx_ir as ir

    from ...graph.irview import View, is_op

    view = View(ir.from_proto(m).graph)
    folded = {}
    for n in view.nodes:
        if is_op(n, "DequantizeLinear") and view.is_const(n.outputs[0]):
            value = view.const(n.outputs[0])
            if value is not None:
                folded[n.outputs[0].name] = value
    if not folded:
        return m
    keep = [n for n in m.graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in folded)]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    m.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in folded.items())
    used = {i for n in keep for i in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    return m


def _run_reference(path: Path, x: np.ndarray) -> np.ndarray:
    from ...engine.runtimes import SessionConfig, get_runtime

    return get_runtime("reference").open(path, SessionConfig(), None).run(x)


def _float16_verdict(path: Path, spec16, params, xs: list[np.ndarray], oracles: dict,
                     rule: str | None) -> Float16Verdict:
    """A float16 layer on the captured inputs (as float16), on onnx.reference, against the oracle at float16's
    tolerance. oracles: {sample: _oracle}, filled on first use (both forms are judged against the same)."""
    try:
        verdicts = []
        for i, x in enumerate(xs):
            if i not in oracles:
                oracles[i] = Oracle.of(spec16, params, x)
            verdicts.append(against_oracle(spec16, params, x, _run_reference(path, x), "float16", oracles[i]))
    except Exception as e:
        return Float16Verdict(NOT_CHECKED, f"could not run on onnx.reference: {first_line(e, 120)}")
    bad = [d for ok, d in verdicts if not ok]
    return Float16Verdict(judge(status_of(ok) for ok, _ in verdicts).status, bad[0].reason if bad else None, rule,
                          max((d.max_abs_err or 0.0) for _, d in verdicts))


def float16_what_if(layer_path: Path, spec, params, xs: list[np.ndarray], work: Path) -> Float16WhatIf:
    """The layer in float16 (onnxruntime's converter), and that float16 layer with float32 statistics
    (normonnx fix), on the captured inputs."""
    from ...graph.rewrite import first_forms
    from ...graph.rules import select

    try:
        conv = _fp16_layer(layer_path, work / f"{layer_path.stem}-fp16.onnx")
    except Exception as e:
        return Float16WhatIf(Float16Verdict(NOT_CHECKED, f"the float16 converter failed: {first_line(e, 120)}"))
    spec16 = spec.replace(dtype="float16")
    xs = [x.astype(np.float16) for x in xs]
    oracles: dict = {}
    converted = _float16_verdict(conv, spec16, params, xs, oracles, None)
    fixed = work / f"{layer_path.stem}-fp16-fixed.onnx"
    try:  # the rules registry's first form, as `normonnx fix --no-proof` writes it
        proto, rules, why = first_forms(onnx.load(str(conv)), select(None, None), conv.parent)
        if proto is not None:
            onnx.save(proto, str(fixed))
    except Exception as e:
        return Float16WhatIf(converted, Float16Verdict(NOT_CHECKED, f"the rewrite failed: {first_line(e, 120)}"))
    if not rules:
        return Float16WhatIf(converted, Float16Verdict(NOT_CHECKED, f"not rewritten: {why}"))
    return Float16WhatIf(converted, _float16_verdict(fixed, spec16, params, xs, oracles, rules[0]))


class WhatIfs:
    """The float16 what-ifs on threads beside the next layers' checks (onnx.reference's ops and the oracle are numpy
    on whole tensors, which lets go of the GIL: on two cores they overlap), collected before a batch's captured
    tensors are let go. A context manager: leaving it cancels what has not started and waits for the rest."""

    def __init__(self, on: bool):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = (ThreadPoolExecutor(max_workers=WHAT_IF_THREADS, thread_name_prefix="normonnx-what-if") if on
                     else None)
        self.pending: list = []

    def submit(self, lc: LayerCheck, *args) -> None:
        assert self.pool is not None, "what-ifs were not asked for"
        self.pending.append((lc, self.pool.submit(float16_what_if, *args)))

    def collect(self) -> None:
        for lc, job in self.pending:
            lc.fp16 = job.result()
        self.pending.clear()

    def __enter__(self) -> "WhatIfs":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
