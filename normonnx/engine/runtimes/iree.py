"""IREE (runtime "iree"): the ONNX file imported to MLIR by IREE's own ONNX importer, compiled by
iree-compile for llvm-cpu on this CPU, run by the local-task driver. A model the compiler cannot lower
(e.g. GroupNormalization-18) is "not checked" with the compiler's first error line."""
from __future__ import annotations

import re
import warnings

import numpy as np

from ...core.errors import first_line
from .base import (
    Runtime,
    Session,
    SessionConfig,
    SessionError,
    ShapeCompiled,
    missing_module,
    package_version,
    read_model,
    register,
    shape_text,
)

IREE_INSTALL = 'pip install "normonnx[iree]"'
TARGET = ["--iree-llvmcpu-target-cpu=host"]


def _unavailable() -> str | None:
    return missing_module("iree.compiler", IREE_INSTALL) or missing_module("iree.runtime", IREE_INSTALL)


def _fixed(model, name: str, shape: tuple[int, ...]):
    """A copy of the model whose input has these dims (IREE compiles static shapes; a dynamic model is
    compiled once per shape it is run at)."""
    m = type(model)()
    m.CopyFrom(model)
    inp = next(i for i in m.graph.input if i.name == name)
    for d, n in zip(inp.type.tensor_type.shape.dim, shape, strict=False):
        d.Clear()
        d.dim_value = n
    return m


def compile_error(e: BaseException) -> str:
    """iree-compile's diagnostics in one line: the first `error:` line, location stripped, and for an ONNX
    op the compiler has no lowering for, which op."""
    text = str(e)
    line = next((ln.strip() for ln in text.splitlines() if "error:" in ln), None)
    if line is None:
        return f"IREE failed to compile the model: {first_line(e)}"
    line = re.sub(r"^\S*:\d+:\d+:\s*", "", line)
    op = re.search(r'name = "onnx\.(\w+)"', line)
    if op and "failed to legalize" in line:
        return f"IREE cannot lower onnx.{op.group(1)}: iree-compile failed to legalize it (left as torch.operator)"
    return f"IREE failed to compile the model: {line[:240]}"


def _open(model_path, config: SessionConfig, module=None) -> Session:
    import onnx

    try:
        import iree.compiler as ireec
        import iree.runtime as ireert
        from iree.compiler.extras import onnx_importer
        from iree.compiler.ir import Context
    except ImportError as e:
        raise SessionError(f"IREE cannot be imported ({first_line(e)}; {IREE_INSTALL})") from e
    model, inp = read_model(model_path, "IREE")

    def compile_for(shape: tuple[int, ...]):
        m = model if inp.static == shape else _fixed(model, inp.name, shape)
        try:  # the importer needs every value typed: without shapes Reshape's result is !torch.none
            m = onnx.shape_inference.infer_shapes(m, data_prop=True)
        except Exception as e:
            raise SessionError(f"ONNX shape inference, which IREE's importer needs, failed: {first_line(e)}") from e
        try:
            with warnings.catch_warnings():  # "a node without a valid type proto": said per node, not ours to print
                warnings.simplefilter("ignore")
                info = onnx_importer.ModelInfo(m)
                mlir = info.create_module(context=Context()).operation
                onnx_importer.NodeImporter.define_function(info.main_graph, mlir).import_all()
            asm = mlir.get_asm()
        except Exception as e:
            raise SessionError(f"IREE's ONNX importer refused the model: {type(e).__name__}: {first_line(e)}") from e
        try:
            vmfb = ireec.compile_str(asm, target_backends=["llvm-cpu"], input_type="onnx", extra_args=TARGET)
        except Exception as e:
            raise SessionError(compile_error(e)) from e
        try:
            vm = ireert.load_vm_flatbuffer(vmfb, driver="local-task")
            fn = getattr(vm, m.graph.name)  # the exported function is named after the graph, not "main"
        except Exception as e:
            raise SessionError(f"IREE cannot load the compiled module: {first_line(e)}") from e

        def run(x: np.ndarray) -> np.ndarray:
            y = fn(np.ascontiguousarray(x))
            y = y[0] if isinstance(y, (tuple, list)) else y
            return np.asarray(y.to_host())

        return run, {"compiled_for": shape_text(shape), "vmfb_bytes": len(vmfb)}

    facts = {"version": package_version("iree-base-compiler"), "runtime_version": package_version("iree-base-runtime"),
             "precision": f"{inp.dtype} as written (llvm-cpu: no reduced-precision rewrite asked for)",
             "target": "llvm-cpu, " + " ".join(TARGET), "driver": "local-task",
             "threads": "default (IREE's task topology)"}
    run = ShapeCompiled(compile_for, inp.static, facts)
    return Session("iree", run, facts, run, str(model_path))


def _bind(model_path, config: SessionConfig, x: np.ndarray):
    session = _open(model_path, config)
    x = np.ascontiguousarray(x)
    return lambda keep=x: session.run(keep)  # the input goes to IREE per call (a host buffer it may wrap or copy)


register(Runtime("iree", "IREE llvm-cpu: ONNX imported to MLIR, compiled by iree-compile for this CPU, float32 as "
                 "written", _unavailable, _open, default=False, bind=_bind,
                 unsupported_dtypes={"bfloat16": "normonnx feeds IREE numpy arrays, which have no bfloat16"}))
