"""The registry of runtimes a model can run on: ORT CPU, ORT CUDA, onnx.reference, and torch eager.

Each runtime says whether it is available here (and why not), and opens a session on a model that
runs numpy inputs and reports facts: which ops ran after ORT's optimizations, what was placed where.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from .errors import BadInput, RuntimeUnavailable, first_line
from .graph import op_histogram
from .registry import Registry, freeze_names
from .tables import PROVIDERS

OPT_LEVELS = ("all", "extended", "basic", "disabled")


@dataclass(frozen=True)
class SessionConfig:
    """Session options that change numerics or speed, recorded with every result."""

    opt_level: str = "all"
    threads: int | None = None  # None: ORT's default (all cores)

    def __post_init__(self):
        if self.opt_level not in OPT_LEVELS:
            raise BadInput(f"unknown optimization level {self.opt_level!r}: valid levels are {', '.join(OPT_LEVELS)}")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class RunOptions:
    """Which runtimes run a model, and how. runtimes: names from normonnx.runtimes (None: every one
    available here); a named runtime that is missing raises RuntimeUnavailable, or with skip_missing is
    recorded as skipped; config: the session options recorded with every result."""

    runtimes: tuple[str, ...] | None = None
    skip_missing: bool = False
    config: SessionConfig = SessionConfig()

    def __post_init__(self):
        freeze_names(self, "runtimes")

    @classmethod
    def on(cls, *runtimes: str, **kw) -> "RunOptions":
        return cls(runtimes, **kw)


@dataclass
class Session:
    """An open model on one runtime: run(x) -> y, plus facts about what actually ran."""

    runtime: str
    run: Callable[[np.ndarray], np.ndarray]
    facts: dict = field(default_factory=dict)
    handle: object = None  # the underlying ORT session / module, for the bench harness
    model_path: str | None = None


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    unavailable: Callable[[], str | None] = field(repr=False)  # None when usable here
    open: Callable[..., Session] = field(repr=False)  # (model_path, SessionConfig, torch_module) -> Session
    kind: str = "onnx"  # "onnx" runs the exported file; "torch" runs the source module
    unsupported_dtypes: dict[str, str] = field(default_factory=dict, repr=False)  # dtype -> why not
    default: bool = True  # among "every runtime available here" when none is named (False: opt-in by name)
    # (model_path, SessionConfig, x) -> a call that runs the model on x bound once, nothing copied per call:
    # what bench times for a runtime other than ORT (whose IOBinding bench does itself, on torch's tensors)
    bind: Callable[..., Callable[[], object]] | None = field(default=None, repr=False)


REGISTRY: Registry[Runtime] = Registry("runtime")
register = REGISTRY.register
get_runtime = REGISTRY.lookup


def available_runtimes(defaults_only: bool = False) -> list[str]:
    return [n for n, r in REGISTRY.items() if (r.default or not defaults_only) and r.unavailable() is None]


def require(name: str) -> Runtime:
    r = get_runtime(name)
    why = r.unavailable()
    if why:
        raise RuntimeUnavailable(f"runtime {name!r} is unavailable: {why}")
    return r


# -- ONNX Runtime ---------------------------------------------------------------------------------


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
                     "threads": config.threads or "default", "ort_version": ort.__version__}
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


class SessionError(Exception):
    """A runtime could not open or run a model; the message is one line."""


register(Runtime("cpu", "ONNX Runtime, CPUExecutionProvider", _ort_unavailable("cpu"), _open_ort("cpu")))
register(Runtime("cuda", "ONNX Runtime, CUDAExecutionProvider", _ort_unavailable("cuda"), _open_ort("cuda")))


# -- onnx.reference -----------------------------------------------------------------------------
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

    return Session("reference", run, {"evaluator": "onnx.reference.ReferenceEvaluator"}, ev)


register(Runtime("reference", "onnx.reference.ReferenceEvaluator (the ONNX spec's Python implementation)",
                 lambda: None, _open_reference))


# -- torch eager --------------------------------------------------------------------------------
def _open_torch(device: str):
    def open_(model_path, config: SessionConfig, module=None) -> Session:
        import torch

        if module is None:
            raise SessionError("no PyTorch source module for this model")
        m = module.to(device)
        if config.threads:
            torch.set_num_threads(config.threads)

        def run(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(x)) if x.dtype.name != "bfloat16" else \
                torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
            with torch.inference_mode():
                y = m(t.to(device))
            if device == "cuda":
                torch.cuda.synchronize()
            y = y.cpu()
            return y.float().numpy() if y.dtype == torch.bfloat16 else y.numpy()

        return Session(f"torch-{device}" if device != "cpu" else "torch", run,
                       {"torch_version": torch.__version__, "device": device}, m)

    return open_


def _torch_cuda_unavailable() -> str | None:
    import sys

    # on Linux a machine without the NVIDIA driver's device has no CUDA for torch either: say so
    # without importing torch (seconds), so `normonnx list` and sweep's defaults stay light
    if "torch" not in sys.modules and sys.platform.startswith("linux") and not os.path.exists("/dev/nvidiactl"):
        return "no NVIDIA GPU on this machine (no /dev/nvidiactl)"
    import torch

    return None if torch.cuda.is_available() else "torch has no CUDA device here"


register(Runtime("torch", "the source PyTorch module, eager, on CPU", lambda: None, _open_torch("cpu"), kind="torch"))
register(Runtime("torch-cuda", "the source PyTorch module, eager, on CUDA", _torch_cuda_unavailable,
                 _open_torch("cuda"), kind="torch"))


# -- OpenVINO -------------------------------------------------------------------------------------
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
    props = {"INFERENCE_PRECISION_HINT": "f32"} if pinned else {}
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
        facts = {"openvino_version": ov.__version__,
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
                 bind=_bind_openvino(True)))
register(Runtime("openvino-default", "OpenVINO CPU with this machine's default precision (bf16 where the CPU has "
                 "AVX512-BF16), judged as the model's dtype", _openvino_unavailable,
                 _open_openvino("openvino-default", False), default=False,
                 bind=_bind_openvino(False)))
