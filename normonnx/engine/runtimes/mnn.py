"""MNN (runtime "mnn"): the ONNX file converted by MNN's converter to a .mnn model, run by MNN's CPU
backend through MNN.nn with PrecisionMode.High. `ran_as` counts the MNN ops the converter wrote (e.g.
LayerNorm for LayerNormalization, Reduction ops for a written-out GroupNorm). A model the converter
refuses ("These Op Not Support: ...") is "not checked" with that line.

The converter is the `_tools.mnnconvert` extension, called directly: MNN's `mnnconvert` / `mnnquant`
console scripts and `MNN.tools` import a usage logger that pip-installs a package through the shell and
posts the conversion (machine id, model uuid, arguments) to a remote log service. Nothing here imports
`MNN.tools`; tests/test_runtimes_plugins.py proves no pip runs and no connection is made."""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from ...core.errors import first_line
from .base import (
    Runtime,
    Session,
    SessionConfig,
    SessionError,
    captured_fds,
    model_input,
    module_found,
    package_version,
    quiet_import,
    register,
)

MNN_INSTALL = 'pip install "normonnx[mnn]"'
BIZ_CODE = "normonnx"  # the converter's required tag (it goes into the .mnn file, nowhere else)


def _unavailable() -> str | None:
    # found, not imported: importing MNN prints the CPU's features to stdout (quiet_import hides that later)
    for mod in ("MNN", "_tools"):
        if not module_found(mod):
            return f"the mnn package is not installed ({MNN_INSTALL})"
    return None


def _mnn():
    """(the converter extension, MNN.nn, MNN.expr), imported without MNN's banner on stdout."""
    try:
        tools = quiet_import("_tools")
        nn = quiet_import("MNN.nn")
        expr = quiet_import("MNN.expr")
    except Exception as e:
        raise SessionError(f"MNN cannot be imported ({type(e).__name__}: {first_line(e)}; {MNN_INSTALL})") from e
    return tools, nn, expr


def convert(tools, onnx_path: str | Path, out: Path) -> str:
    """ONNX -> .mnn through the converter extension; returns the converter's log, raises SessionError with
    its reason when it wrote no model (it says "Converted Failed!" and returns normally)."""
    with captured_fds() as log:
        try:
            tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", str(onnx_path), "--MNNModel", str(out),
                              "--bizCode", BIZ_CODE])
        except Exception as e:
            raise SessionError(f"MNN's converter failed: {type(e).__name__}: {first_line(e)}") from e
    text = log[0] if log else ""
    if not out.is_file() or out.stat().st_size == 0:
        raise SessionError(_refusal(text))
    return text


def raw_halves(model_path: str | Path, folder: Path) -> Path:
    """The model with its float16/bfloat16 tensors in raw_data: MNN's converter dies (SIGSEGV, taking the process
    with it) on a 16-bit tensor held in int32_data, an encoding ONNX allows and onnx.helper.make_tensor writes. A
    copy in `folder` where one needed it, else the model itself."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(model_path))
    halves = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute
                                               if a.type == onnx.AttributeProto.TENSOR]
    changed = [t for t in tensors if t.data_type in halves and len(t.int32_data)]
    if not changed:
        return Path(model_path)
    for t in changed:
        t.raw_data = numpy_helper.to_array(t).tobytes()
        del t.int32_data[:]
    onnx.save(model, str(folder / "raw-halves.onnx"))
    return folder / "raw-halves.onnx"


def _refusal(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for key in ("Not Support", "not support", "Error", "error", "Failed", "failed"):
        hit = next((ln for ln in lines if key in ln), None)
        if hit:
            hit = hit.split("] ", 1)[-1]  # "[12:00:00] :220: These Op Not Support: ..." -> the message
            hit = hit.split(": ", 1)[-1] if hit.startswith(":") else hit
            return f"MNN's converter refused the model: {hit[:240]}"
    return "MNN's converter wrote no model" + (f" (last line: {lines[-1][:200]})" if lines else "")


def ops_of(tools, mnn_path: Path) -> tuple[dict[str, int], str | None]:
    """(MNN op type -> count, the input's dtype) from the converter's JSON dump of the .mnn file."""
    js = mnn_path.with_suffix(".json")
    with captured_fds():
        tools.mnnconvert(["mnnconvert", "-f", "MNN", "--modelFile", str(mnn_path), "--JsonFile", str(js)])
    doc = json.loads(js.read_text())
    ops = Counter(o.get("type", "?") for o in doc.get("oplists", []) if o.get("type") not in ("Input", "Const"))
    dtype = next((o.get("main", {}).get("dtype") for o in doc.get("oplists", []) if o.get("type") == "Input"), None)
    return dict(sorted(ops.items())), dtype


def _open(model_path, config: SessionConfig, module=None) -> Session:
    import onnx

    tools, nn, F = _mnn()
    try:
        inp = model_input(onnx.load(str(model_path), load_external_data=False))
    except SessionError:
        raise
    except Exception as e:
        raise SessionError(f"cannot read the model for MNN: {first_line(e)}") from e
    threads = config.threads or 1  # MNN.nn's own default
    with tempfile.TemporaryDirectory(prefix="normonnx-mnn-") as tmp:
        out = Path(tmp) / "model.mnn"
        convert(tools, raw_halves(model_path, Path(tmp)), out)
        ran_as: dict[str, int] | str
        try:
            ran_as, in_dtype = ops_of(tools, out)
        except Exception as e:  # a nicety: never a reason not to check
            ran_as, in_dtype = f"unavailable: {first_line(e)}", None
        try:
            with captured_fds():
                net = nn.load_module_from_file(str(out), [inp.name], [inp.output], precision_mode=F.PrecisionMode.High,
                                               thread_num=threads)
        except Exception as e:
            raise SessionError(f"MNN cannot load the converted model: {first_line(e)}") from e
    float_in = in_dtype in (None, "DT_FLOAT")
    precision = "f32 (PrecisionMode.High; this CPU's MNN build has no fp16 arithmetic)"
    if inp.dtype != "float32" and float_in:
        precision += f"; the converter wrote this {inp.dtype} graph as a float32 one"

    def run(x: np.ndarray) -> np.ndarray:
        xf = np.ascontiguousarray(x, dtype=np.float32) if float_in else np.ascontiguousarray(x)
        v = F.const(xf, list(xf.shape), F.NCHW, F.float if float_in else F.int)
        y = F.convert(net.forward(v), F.NCHW).read()  # IN comes back NC4HW4: converted to plain NCHW first
        return np.array(y, copy=True).astype(x.dtype, copy=False)

    facts = {"version": package_version("mnn"), "precision": precision, "machine_default_precision": "Normal",
             "ran_as": ran_as, "threads": threads, "converter": "_tools.mnnconvert (no usage logger)"}
    return Session("mnn", run, facts, net, str(model_path))


def _bind(model_path, config: SessionConfig, x: np.ndarray):
    session = _open(model_path, config)
    x = np.ascontiguousarray(x)
    return lambda keep=x: session.run(keep)  # copied into an MNN variable per call


register(Runtime("mnn", "MNN CPU: MNN's converter (called directly, no usage logger), PrecisionMode.High",
                 _unavailable, _open, default=False, bind=_bind,
                 unsupported_dtypes={"bfloat16": "MNN's Python API takes float32 arrays; no bfloat16 input"}))
