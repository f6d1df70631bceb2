"""ONNX Runtime: its CPU and CUDA execution providers (runtimes "cpu" and "cuda"), and the helpers every
caller that opens an ORT session uses (ort_session, session_options, placement)."""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ...core.errors import first_line
from ...core.tables import PROVIDERS
from ...graph.graph import op_histogram
from .base import ModelSession, Runtime, Session, SessionConfig, SessionError, register


def _ort():
    import onnxruntime as ort

    return ort


def _ort_providers() -> list[str]:
    ort = _ort()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:  # the CUDA build wants torch's CUDA libraries loaded first (see the device README)
            import torch  # noqa: F401  (imported for its side effect: CUDA libraries in the process)

            ort.preload_dlls()
        except Exception:
            pass
    return ort.get_available_providers()


def ort_session(model, so=None, provider: str = "cpu"):
    """The one way normonnx opens an ONNX Runtime session: `model` a path or the model's bytes, `provider`
    a runtime name (cpu, cuda). CUDA gets torch's CUDA libraries loaded first (see _ort_providers); ORT
    adds its CPU provider behind CUDA for the nodes CUDA has no kernel for."""
    ort = _ort()
    if provider != "cpu":
        _ort_providers()
    so = so or ort.SessionOptions()
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so, providers=[PROVIDERS[provider]])


def session_options(config: SessionConfig, optimized_path: str | None = None, profile_prefix: str | None = None):
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[config.opt_level]
    if config.threads:
        so.intra_op_num_threads = config.threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def _placement(profile_file: str) -> dict[str, int]:
    """Provider -> number of node runs, from an ORT profile (each node event names its provider)."""
    with open(profile_file) as f:
        events = json.load(f)
    c = Counter(e["args"]["provider"] for e in events
                if e.get("cat") == "Node" and "provider" in e.get("args", {}) and e["name"].endswith("_kernel_time"))
    return dict(c)


def _open_ort(provider: str):
    def open_(model_path: str | Path, config: SessionConfig, module=None) -> Session:
        ort = _ort()
        with tempfile.TemporaryDirectory(prefix="normonnx-ort-") as tmp:
            opt_path = os.path.join(tmp, "optimized.onnx")
            so = session_options(config, optimized_path=opt_path)
            try:
                sess = ort_session(model_path, so, provider)
            except Exception as e:
                raise SessionError(f"ORT {provider} cannot load the model: {first_line(e)}") from e
            facts = {"provider": sess.get_providers()[0], "opt_level": config.opt_level,
                     "threads": config.threads or "default", "ort_version": ort.__version__,
                     "version": ort.__version__, "precision": "as the graph's types"}
            try:
                facts["optimized_ops"] = op_histogram(onnx.load(opt_path, load_external_data=False))
            except Exception:  # ORT may not serialize some optimized graphs
                facts["optimized_ops"] = None
        in_name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            if x.dtype.name == "bfloat16":
                return _ort_run_bfloat16(sess, in_name, x)
            return sess.run(None, {in_name: x})[0]

        return Session(provider, run, facts, sess, str(model_path))

    return open_


def _ort_run_bfloat16(sess, name: str, x: np.ndarray) -> np.ndarray:
    """ORT's numpy interface has no bfloat16 (ml_dtypes' type): x goes in as an OrtValue of ONNX type
    BFLOAT16 over its 16-bit patterns, and a bfloat16 output comes back through IOBinding into a uint16
    buffer read as bfloat16 (a first run gives the output's shape and type)."""
    ort = _ort()
    bf16 = onnx.TensorProto.BFLOAT16
    v = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(x).view(np.uint16), bf16)
    first = sess.run_with_ort_values(None, {name: v})[0]
    if first.data_type() != "tensor(bfloat16)":
        return first.numpy()
    buf = np.empty(first.shape(), np.uint16)
    io = sess.io_binding()
    io.bind_ortvalue_input(name, v)
    io.bind_ortvalue_output(sess.get_outputs()[0].name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(buf, bf16))
    sess.run_with_iobinding(io)
    return buf.view(x.dtype)


def _ort_unavailable(provider: str) -> Callable[[], str | None]:
    def why() -> str | None:
        try:
            if PROVIDERS[provider] in _ort_providers():
                return None
        except Exception as e:  # onnxruntime not importable
            return f"onnxruntime cannot be imported ({first_line(e)})"
        if provider == "cuda":
            return ("the installed onnxruntime has no CUDAExecutionProvider (PyPI's onnxruntime is CPU-only; "
                    "install onnxruntime-gpu on a machine with an NVIDIA GPU)")
        return "onnxruntime lacks CPUExecutionProvider"

    return why


def placement(session: Session, x: np.ndarray) -> dict[str, int]:
    """Run once with ORT profiling and count node runs per provider (CUDA nodes that fell back to CPU)."""
    ort = _ort()
    sess, path = session.handle, session.model_path
    with tempfile.TemporaryDirectory(prefix="normonnx-prof-") as tmp:
        so = session_options(SessionConfig(session.facts["opt_level"]), profile_prefix=os.path.join(tmp, "p"))
        prof = ort.InferenceSession(path, so, providers=sess.get_providers())  # the same providers, profiled
        prof.run(None, {prof.get_inputs()[0].name: x})
        return _placement(prof.end_profiling())


def _open_model_ort(provider: str):
    def open_model(model_path, config: SessionConfig) -> ModelSession:
        from ...graph.graph import ort_source

        model, folder = ort_source(model_path)  # an inline model read in place, never parsed whole
        so = session_options(config)
        if folder:
            so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
        try:
            sess = ort_session(model, so, provider)
        except Exception as e:
            raise SessionError(f"ORT {provider} cannot load the model: {first_line(e)}") from e
        facts = {"provider": sess.get_providers()[0], "version": _ort().__version__, "precision": "as the graph's types"}
        return ModelSession(provider, lambda feeds: sess.run(None, feeds), [o.name for o in sess.get_outputs()], facts)

    return open_model


register(Runtime("cpu", "ONNX Runtime, CPUExecutionProvider", _ort_unavailable("cpu"), _open_ort("cpu"),
                 open_model=_open_model_ort("cpu")))
register(Runtime("cuda", "ONNX Runtime, CUDAExecutionProvider", _ort_unavailable("cuda"), _open_ort("cuda"),
                 open_model=_open_model_ort("cuda")))
