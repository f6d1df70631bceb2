"""Apache TVM (runtime "tvm"): the ONNX file translated by Relax's ONNX frontend, compiled by tvm.compile for
the LLVM CPU target, run by the Relax VM. `ran_as` counts the Relax ops the frontend wrote (e.g.
relax.nn.layer_norm for LayerNormalization, relax.mean for a ReduceMean). A model the frontend or the
compiler refuses is "not checked" with its reason."""
from __future__ import annotations

from collections import Counter

import numpy as np

from ...core.errors import first_line
from .base import (
    Runtime,
    Session,
    SessionConfig,
    SessionError,
    ShapeCompiled,
    captured_fds,
    module_found,
    package_version,
    read_model,
    register,
    shape_text,
)

TVM_INSTALL = 'pip install "normonnx[tvm]"'
# TVM 0.27 takes targets as JSON dicts (strings such as "llvm -mcpu=x" raise); "mcpu": "native" only logs an
# error and falls back to generic x86-64 with the wheel's LLVM, so the generic target is named outright
TARGET = {"kind": "llvm"}


def _unavailable() -> str | None:
    # found, not imported: `import tvm` takes seconds, and `normonnx list` asks every runtime
    if not module_found("tvm"):
        return f"the tvm package is not installed ({TVM_INSTALL})"
    return None


def _relax_ops(mod) -> dict[str, int]:
    """Relax op -> count in the module's main function: what the frontend turned the ONNX nodes into."""
    import tvm
    from tvm import relax

    c: Counter = Counter()

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            c[e.op.name] += 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return dict(sorted(c.items()))


def _open(model_path, config: SessionConfig, module=None) -> Session:

    try:
        with captured_fds():
            import tvm
            from tvm import relax
            from tvm.relax.frontend.onnx import from_onnx
    except Exception as e:  # ImportError, or a broken install's own error at import
        raise SessionError(f"TVM cannot be imported ({type(e).__name__}: {first_line(e)}; {TVM_INSTALL})") from e
    model, inp = read_model(model_path, "TVM")
    dev = tvm.cpu()

    def compile_for(shape: tuple[int, ...]):
        with captured_fds() as log:  # the frontend warns, the compiler logs: neither belongs in normonnx's output
            try:
                mod = from_onnx(model, shape_dict={inp.name: list(shape)}, dtype_dict={inp.name: inp.dtype})
            except Exception as e:
                raise SessionError(f"TVM's Relax ONNX frontend refused the model: {type(e).__name__}: "
                                   f"{first_line(e)}") from e
            ran_as: dict[str, int] | str
            try:
                ran_as = _relax_ops(mod)
            except Exception as e:  # a nicety: never a reason not to check
                ran_as = f"unavailable: {first_line(e)}"
            try:
                ex = tvm.compile(mod, target=tvm.target.Target(TARGET))
                vm = relax.VirtualMachine(ex, dev)
                main = vm["main"]
            except Exception as e:
                raise SessionError(f"TVM failed to compile the model: {type(e).__name__}: {first_line(e)}") from e
        del log

        def run(x: np.ndarray) -> np.ndarray:
            y = main(tvm.runtime.tensor(np.ascontiguousarray(x), dev))
            y = y[0] if isinstance(y, (tuple, list)) or type(y).__name__ == "Array" else y
            return y.numpy()

        return run, {"ran_as": ran_as, "compiled_for": shape_text(shape)}

    facts = {"version": package_version("apache-tvm"),
             "precision": f"{inp.dtype} as written (no mixed-precision pass)",
             "target": str(tvm.target.Target(TARGET)), "threads": "default (TVM's thread pool)"}
    run = ShapeCompiled(compile_for, inp.static, facts)
    return Session("tvm", run, facts, run, str(model_path))


def _bind(model_path, config: SessionConfig, x: np.ndarray):
    session = _open(model_path, config)
    x = np.ascontiguousarray(x)
    return lambda keep=x: session.run(keep)  # wrapped as a TVM tensor per call (a copy onto the device's buffer)


register(Runtime("tvm", "Apache TVM (Relax): ONNX frontend, compiled for the LLVM CPU target, float32 as written",
                 _unavailable, _open, default=False, bind=_bind,
                 unsupported_dtypes={"bfloat16": "normonnx feeds TVM numpy arrays, which have no bfloat16"}))
