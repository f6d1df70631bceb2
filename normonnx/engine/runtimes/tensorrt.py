"""TensorRT (runtime "tensorrt": the ONNX file parsed by TensorRT's ONNX parser and built into an engine on the
GPU) and ONNX Runtime's TensorRT execution provider (runtime "ort-tensorrt"). Both say "not available" with
why where TensorRT, its ONNX parser, a CUDA GPU or ORT's provider is missing (as on a CPU machine: PyPI's
`tensorrt-cu12`/`-cu13` are source stubs that download the real wheel from NVIDIA's own index).

The engine is built in float32 as written: TF32 is turned off (it is on by default on Ampere and later),
FP16/BF16 are not enabled; `ran_as` is the engine inspector's layer list (layer type and precision)."""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter

import numpy as np

from ...core.errors import first_line
from .base import Runtime, Session, SessionConfig, SessionError, model_input, module_found, package_version, register

TENSORRT_INSTALL = ("pip install tensorrt-cu12 (or -cu13) on a machine with an NVIDIA GPU that can reach NVIDIA's "
                    "package index")
ORT_TRT_INSTALL = "an onnxruntime-gpu build with TensorRT, and TensorRT's libraries on the library path"
TRT_PROVIDER = "TensorrtExecutionProvider"


def _no_gpu() -> str | None:
    import sys

    if "torch" not in sys.modules and sys.platform.startswith("linux") and not os.path.exists("/dev/nvidiactl"):
        return "no NVIDIA GPU on this machine (no /dev/nvidiactl)"
    return None


def _tensorrt_unavailable() -> str | None:
    if not module_found("tensorrt"):
        return f"TensorRT is not installed ({TENSORRT_INSTALL})"
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # e.g. the bindings without their libraries: libnvonnxparser.so.* missing
        return f"tensorrt cannot be imported ({type(e).__name__}: {first_line(e)})"
    why = _no_gpu()
    if why:
        return why
    try:
        import torch
    except ImportError:
        return "normonnx runs TensorRT engines on torch's CUDA tensors: install torch with CUDA"
    if not torch.cuda.is_available():
        return "torch has no CUDA device here"
    return None


def _trt_dtype_to_torch(trt, dt):
    import torch

    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
            trt.int32: torch.int32, trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool}[dt]


def _ran_as(trt, engine) -> dict[str, int] | str:
    """Layer type (and precision, where the inspector says) -> count, from the engine inspector's JSON."""
    try:
        info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception as e:
        return f"unavailable: {first_line(e)}"
    c: Counter = Counter()
    for layer in info.get("Layers", []):
        if isinstance(layer, dict):
            kind = layer.get("LayerType", "?")
            prec = layer.get("Precision") or next((o.get("Format/Datatype") for o in layer.get("Outputs", [])), None)
            c[f"{kind}:{prec}" if prec else kind] += 1
        else:  # a plain name (ProfilingVerbosity below DETAILED)
            c[str(layer)] += 1
    return dict(sorted(c.items()))


def _open_tensorrt(model_path, config: SessionConfig, module=None) -> Session:
    why = _tensorrt_unavailable()
    if why:
        raise SessionError(f"TensorRT is unavailable: {why}")
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10 needs it; later ones ignore it
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(model_path, "rb") as f:
        ok = parser.parse(f.read(), str(model_path))
    if not ok:
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SessionError(f"TensorRT's ONNX parser refused the model: {first_line(errs[0]) if errs else 'no reason given'}")
    cfg = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        cfg.clear_flag(trt.BuilderFlag.TF32)  # float32 as written: no 10-bit-mantissa matmul/conv inputs
    if hasattr(cfg, "profiling_verbosity"):
        cfg.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then names each layer's precision
    import onnx

    inp = model_input(onnx.load(str(model_path), load_external_data=False))
    if inp.static is None:  # one optimization profile at the declared shape's dims; dynamic dims need a shape
        raise SessionError("TensorRT needs static input dims here: validate a model exported without --dynamic")
    serialized = builder.build_serialized_network(network, cfg)
    if serialized is None:
        raise SessionError("TensorRT failed to build an engine for the model (see its log at verbosity INFO)")
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(ins) != 1 or not outs:
        raise SessionError(f"TensorRT's engine has {len(ins)} inputs and {len(outs)} outputs; normonnx runs one of each")
    stream = torch.cuda.Stream()

    def run(x: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x)).cuda()
        context.set_input_shape(ins[0], tuple(x.shape))
        context.set_tensor_address(ins[0], xt.data_ptr())
        bufs = []
        for n in outs:
            shape = tuple(context.get_tensor_shape(n))
            bufs.append(torch.empty(shape, dtype=_trt_dtype_to_torch(trt, engine.get_tensor_dtype(n)), device="cuda"))
            context.set_tensor_address(n, bufs[-1].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise SessionError("TensorRT failed to run the engine")
        stream.synchronize()
        return bufs[0].cpu().numpy()

    facts = {"version": getattr(trt, "__version__", package_version("tensorrt")), "precision":
             f"{inp.dtype} as written (TF32 off, FP16/BF16 not enabled)", "ran_as": _ran_as(trt, engine),
             "device": torch.cuda.get_device_name()}
    return Session("tensorrt", run, facts, engine, str(model_path))


def _ort_trt_unavailable() -> str | None:
    try:
        import onnxruntime as ort
    except Exception as e:
        return f"onnxruntime cannot be imported ({first_line(e)})"
    if TRT_PROVIDER not in ort.get_available_providers():
        return (f"the installed onnxruntime has no {TRT_PROVIDER} (PyPI's onnxruntime is CPU-only; it needs "
                f"{ORT_TRT_INSTALL})")
    return _no_gpu()


def _open_ort_trt(model_path, config: SessionConfig, module=None) -> Session:
    why = _ort_trt_unavailable()
    if why:
        raise SessionError(f"ORT's TensorRT provider is unavailable: {why}")
    import onnxruntime as ort

    from .ort import _ort_providers, _placement, session_options

    _ort_providers()  # torch's CUDA libraries first, as for the CUDA provider
    options = {"trt_fp16_enable": False, "trt_int8_enable": False}  # float32 as written
    providers = [(TRT_PROVIDER, options), "CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(str(model_path), session_options(config), providers=providers)
    except Exception as e:
        raise SessionError(f"ORT's TensorRT provider cannot load the model: {first_line(e)}") from e
    name = sess.get_inputs()[0].name
    facts = {"provider": sess.get_providers()[0], "providers": sess.get_providers(), "version": ort.__version__,
             "precision": "as the graph's types (trt_fp16_enable off)", "opt_level": config.opt_level}
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    try:  # what ran where: nodes TensorRT does not take fall back to CUDA or CPU silently
        with tempfile.TemporaryDirectory(prefix="normonnx-prof-") as tmp:
            prof = ort.InferenceSession(str(model_path), session_options(config, profile_prefix=os.path.join(tmp, "p")),
                                        providers=providers)
            prof.run(None, {name: np.zeros(shape, dtype=np.dtype(model_input_dtype(sess)))})
            facts["placement"] = _placement(prof.end_profiling())
    except Exception as e:
        facts["placement"] = f"unavailable: {first_line(e)}"

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    return Session("ort-tensorrt", run, facts, sess, str(model_path))


def model_input_dtype(sess) -> str:
    t = sess.get_inputs()[0].type  # "tensor(float)", "tensor(float16)"
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}.get(t, "float32")


register(Runtime("tensorrt", "NVIDIA TensorRT: ONNX parser, engine built for this GPU in float32 (TF32 off)",
                 _tensorrt_unavailable, _open_tensorrt, default=False,
                 unsupported_dtypes={"bfloat16": "normonnx feeds TensorRT numpy arrays, which have no bfloat16"}))
register(Runtime("ort-tensorrt", "ONNX Runtime, TensorrtExecutionProvider (CUDA, then CPU, for the nodes TensorRT "
                 "does not take)", _ort_trt_unavailable, _open_ort_trt, default=False,
                 unsupported_dtypes={"bfloat16": "normonnx feeds ORT's TensorRT provider numpy arrays"}))
