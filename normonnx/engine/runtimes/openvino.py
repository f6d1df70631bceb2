"""OpenVINO's CPU plugin (runtimes "openvino", f32 pinned, and "openvino-default", the machine's default
precision): reads the ONNX file itself, reports what each node ran as and in which precision."""
from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np

from ...core.errors import first_line
from .base import ModelSession, Runtime, Session, SessionConfig, SessionError, register

# Opt-in by name: installing the extra changes no default run. "openvino" pins f32 inference precision, so
# the verdict is on the graph's own numerics; "openvino-default" keeps the machine's defaults (bf16 on CPUs
# with AVX512-BF16: what a user gets out of the box), judged as the model's dtype all the same.
OPENVINO_INSTALL = 'pip install "normonnx[openvino]"'


def _openvino_unavailable() -> str | None:
    try:
        import openvino  # noqa: F401  (0.4 s: asked only when a command names it, and by `normonnx list`)
    except ImportError as e:
        if e.name == "openvino":
            return f"the openvino package is not installed ({OPENVINO_INSTALL})"
        return f"openvino cannot be imported ({first_line(e)})"
    return None


def _ov_ran_as(compiled) -> dict[str, int]:
    """What the compiled model's nodes ran as: 'layerType:runtimePrecision' -> count (inputs, outputs and
    constants left out), from the runtime model's rt_info, as ORT's optimized ops are reported."""
    c: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if layer in ("Input", "Output", "Const"):
            continue
        c[f"{layer}:{rt['runtimePrecision'].astype(str)}" if "runtimePrecision" in rt else layer] += 1
    return dict(c)


def _ov_compile(model_path, config: SessionConfig, pinned: bool):
    import openvino as ov

    core = ov.Core()
    props: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": "f32"} if pinned else {}
    if config.threads:
        props["INFERENCE_NUM_THREADS"] = config.threads
    try:
        return core, core.compile_model(core.read_model(str(model_path)), "CPU", props)
    except Exception as e:
        raise SessionError(f"OpenVINO cannot load the model: {first_line(e)}") from e


def _open_openvino(name: str, pinned: bool):
    def open_(model_path, config: SessionConfig, module=None) -> Session:
        import openvino as ov

        core, compiled = _ov_compile(model_path, config, pinned)
        facts = {"openvino_version": ov.__version__, "version": ov.__version__,
                 "precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
                 "machine_default_precision": core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string(),
                 "ran_as": _ov_ran_as(compiled), "threads": config.threads or "default"}
        request = compiled.create_infer_request()
        out = compiled.output(0)

        def run(x: np.ndarray) -> np.ndarray:
            if x.dtype.name == "bfloat16":  # numpy has no bfloat16: OpenVINO's bf16 tensor, filled bit for bit
                t = ov.Tensor(ov.Type.bf16, ov.Shape(list(x.shape)))
                t.data.view(np.uint16)[...] = np.ascontiguousarray(x).view(np.uint16)
                request.set_input_tensor(0, t)
                request.infer()
                y = request.get_output_tensor(0)
                return np.array(y.data).view(np.uint16).view(x.dtype) if y.element_type == ov.Type.bf16 else np.array(y.data)
            return np.array(request.infer({0: np.ascontiguousarray(x)})[out])  # a copy: the request reuses its buffer

        return Session(name, run, facts, compiled, str(model_path))

    return open_


def _open_model_openvino(name: str, pinned: bool):
    def open_model(model_path, config: SessionConfig) -> ModelSession:
        import openvino as ov

        core, compiled = _ov_compile(model_path, config, pinned)
        request = compiled.create_infer_request()
        outs = list(compiled.outputs)

        def run(feeds: dict) -> list:
            got = request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
            return [np.array(got[o]) for o in outs]  # copies: the request reuses its buffers

        facts = {"version": ov.__version__, "precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
                 "machine_default_precision": core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()}
        return ModelSession(name, run, [o.get_any_name() for o in outs], facts)

    return open_model


def _bind_openvino(pinned: bool):
    def bind(model_path, config: SessionConfig, x: np.ndarray) -> Callable[[], object]:
        import openvino as ov

        _, compiled = _ov_compile(model_path, config, pinned)
        request = compiled.create_infer_request()
        x = np.ascontiguousarray(x)
        request.set_input_tensor(0, ov.Tensor(x, shared_memory=True))  # x's own memory, bound once

        def run(keep=x):  # the tensor shares x's buffer: x lives as long as the run does
            return request.infer(share_outputs=True)  # the output stays in OpenVINO's buffer

        return run

    return bind


register(Runtime("openvino", "OpenVINO CPU, f32 inference precision (the graph's own numerics)", _openvino_unavailable,
                 _open_openvino("openvino", True), default=False,
                 bind=_bind_openvino(True), open_model=_open_model_openvino("openvino", True)))
register(Runtime("openvino-default", "OpenVINO CPU with this machine's default precision (bf16 where the CPU has "
                 "AVX512-BF16), judged as the model's dtype", _openvino_unavailable,
                 _open_openvino("openvino-default", False), default=False,
                 bind=_bind_openvino(False), open_model=_open_model_openvino("openvino-default", False)))
