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

from .errors import BadInput, RuntimeUnavailable
from .graph import op_histogram
from .registry import Registry
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


REGISTRY: Registry[Runtime] = Registry("runtime")
register = REGISTRY.register
get_runtime = REGISTRY.lookup


def available_runtimes() -> list[str]:
    return [n for n, r in REGISTRY.items() if r.unavailable() is None]


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
            return sess.run(None, {in_name: x})[0]

        return Session(provider, run, facts, sess, str(model_path))

    return open_


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


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return type(e).__name__


# ORT's Python API maps numpy types to tensor types and has no entry for ml_dtypes' bfloat16
_ORT_DTYPES = {"bfloat16": "ONNX Runtime's Python API takes no numpy bfloat16 input: bfloat16 is checked on "
                           "torch and reference"}
register(Runtime("cpu", "ONNX Runtime, CPUExecutionProvider", _ort_unavailable("cpu"), _open_ort("cpu"),
                 unsupported_dtypes=_ORT_DTYPES))
register(Runtime("cuda", "ONNX Runtime, CUDAExecutionProvider", _ort_unavailable("cuda"), _open_ort("cuda"),
                 unsupported_dtypes=_ORT_DTYPES))


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
