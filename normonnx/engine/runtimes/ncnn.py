"""ncnn (runtime "ncnn"): the ONNX file converted by the `pnnx` executable to .ncnn.param/.bin (in a temporary
folder: pnnx writes eight files beside the model), run by ncnn's CPU layers with fp16/bf16 storage and
arithmetic off. `ran_as` counts the ncnn layer types pnnx wrote.

ncnn has no batch axis. pnnx drops a batch of 1 (the layers then see C as ncnn's channel axis, as an
application feeding ncnn does) and keeps a larger batch as ncnn's leading axis; normonnx feeds each as pnnx
wrote it. Before a model runs, every layer whose numerics pnnx can get silently wrong is audited on a probe
run, and a model pnnx converted wrongly is "not checked" with why (a converter that silently changes the
numerics is a finding, said in the reason):
  - a Reduction with no axes and reduce_all=0 (`-23303=0`): opset-18 ReduceMean, whose axes are an input,
    loses them, and the "mean" is the input itself;
  - a Reduction axis outside its input blob's rank: ncnn ignores it (pnnx numbers a batch-1 tensor's axes
    with the batch it dropped, so a mean over H, W of NCHW reduces W only);
  - a GroupNorm / InstanceNorm / BatchNorm whose channel count differs from its input blob's (pnnx takes
    GroupNormalization-18's per-group scale for a per-channel one; a kept batch lands on the channel axis).
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.errors import first_line
from .base import (
    Runtime,
    Session,
    SessionConfig,
    SessionError,
    ShapeCompiled,
    module_found,
    package_version,
    read_model,
    register,
    shape_text,
)

NCNN_INSTALL = 'pip install "normonnx[ncnn]"'
# pnnx declares torch, which only its Python API needs: the ONNX converter is a bundled executable, and
# with its dependencies pip would bring a CUDA torch and NVIDIA's libraries (gigabytes) where torch is absent
PNNX_INSTALL = "pip install --no-deps pnnx"
AUDITED = ("Reduction", "GroupNorm", "InstanceNorm", "BatchNorm")


def pnnx_executable() -> str | None:
    """The pnnx executable bundled in the pnnx package (found without `import pnnx`, which needs torch)."""
    spec = importlib.util.find_spec("pnnx")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        exe = os.path.join(folder, "pnnx")
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    return None


def _unavailable() -> str | None:
    if not module_found("ncnn"):
        return f"the ncnn package is not installed ({NCNN_INSTALL}, then {PNNX_INSTALL})"
    if pnnx_executable() is None:
        return f"the pnnx converter is not installed ({PNNX_INSTALL}: --no-deps, its torch requirement is for " \
               "its Python API only)"
    return None


@dataclass(frozen=True)
class Layer:
    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[str, str]


def parse_param(text: str) -> list[Layer]:
    """The layers of an .ncnn.param file (magic line, counts line, then one layer a line)."""
    layers = []
    for line in text.splitlines()[2:]:
        f = line.split()
        if len(f) < 4:
            continue
        nb, nt = int(f[2]), int(f[3])
        bottoms, tops = tuple(f[4:4 + nb]), tuple(f[4 + nb:4 + nb + nt])
        params = dict(p.split("=", 1) for p in f[4 + nb + nt:] if "=" in p)
        layers.append(Layer(f[0], f[1], bottoms, tops, params))
    return layers


def _axes(layer: Layer) -> list[int]:
    v = layer.params.get("-23303")
    if v is None:
        return []
    n, *rest = (int(a) for a in v.split(","))
    return rest[:n]


def _channels(blob) -> int:
    return {1: blob.w, 2: blob.h}.get(blob.dims, blob.c)


def static_finding(layers: list[Layer]) -> str | None:
    """A wrong conversion visible in the param file alone."""
    for ly in layers:
        if ly.type == "Reduction" and ly.params.get("1", "1") == "0" and not _axes(ly):
            return (f"pnnx converted it wrongly: Reduction {ly.name} has no axes and reduce_all=0 (-23303=0), so "
                    "its mean is its input itself (opset-18 ReduceMean takes its axes as an input, which pnnx drops; "
                    "the opset-17 form converts right): a converter that silently changes the numerics")
    return None


def blob_finding(ly: Layer, blob, kept: tuple[int, ...] | None = None) -> str | None:
    """A wrong conversion visible from a layer's input blob (read on a probe run, before the layer runs);
    `kept`: the model's input shape where pnnx kept its batch as ncnn's leading axis (None: it dropped a batch of 1)."""
    batch = kept[0] if kept else None
    shape = "x".join(str(v) for v in {1: (blob.w,), 2: (blob.h, blob.w), 3: (blob.c, blob.h, blob.w)}.get(
        blob.dims, (blob.c, blob.d, blob.h, blob.w)))
    if ly.type == "Reduction" and ly.params.get("1", "1") == "0":
        bad = [a for a in _axes(ly) if a >= blob.dims]
        if bad:
            return (f"pnnx converted it wrongly: Reduction {ly.name} reduces axes {_axes(ly)} of a {blob.dims}-D "
                    f"ncnn blob ({shape}); ncnn ignores axis {bad[0]}, so fewer values are averaged than the ONNX "
                    "graph says (pnnx counted the batch axis it dropped): a converter that silently changes the numerics")
    key = {"GroupNorm": "1", "InstanceNorm": "0", "BatchNorm": "0"}.get(ly.type)
    if key is None or key not in ly.params or int(ly.params[key]) == _channels(blob):
        return None
    if kept and batch is not None and batch > 1 and _channels(blob) == batch:
        return (f"ncnn has no batch axis: pnnx kept this model's batch of {batch} as the leading axis of the blob "
                f"({shape}) that ncnn's {ly.type} {ly.name} reads as {ly.params[key]} channels; ncnn runs one sample "
                f"at a time (validate a batch-1 shape: --shape {'x'.join(map(str, (1, *kept[1:])))})")
    cause = " (GroupNormalization-18's per-group scale read as per-channel)" if ly.type == "GroupNorm" else ""
    return (f"pnnx converted it wrongly: {ly.type} {ly.name} is written for {ly.params[key]} channels but its input "
            f"blob ({shape}) has {_channels(blob)}{cause}: a converter that silently changes the numerics")


def pnnx_refusal(log: str, status: int) -> str:
    """pnnx's reason in one line: its most telling line (an op it does not know, then ONNX Runtime's error, then
    any error), the colour codes and pass names stripped; and whether it crashed."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in log.splitlines()]
    lines = [re.sub(r"^\w+ \.\.\.\s+", "", ln) for ln in lines if ln and not re.fullmatch(r"[\d.]+ms", ln)]
    why = None
    for pattern in (r"unexpected op_type|not supported|unsupported", r"failed|error|expect"):
        why = next((ln for ln in lines if re.search(pattern, ln, re.I) and "LogEarlyWarning" not in ln), None)
        if why:
            break
    why = why or (lines[-1] if lines else "no output")
    ort = re.search(r"(Unsupported model IR version.*|Fatal error: .*)", why)  # ONNX Runtime inside pnnx, past its C++ frame
    why = f"its ONNX Runtime says: {ort.group(1)}" if ort else why
    crashed = f" (pnnx then crashed: signal {-status})" if status < 0 else ""
    return f"pnnx refused the model: {why[:240]}{crashed}"


def _convert(exe: str, model, shape: tuple[int, ...], dtype: str, folder: Path) -> tuple[str, Path, Path]:
    import onnx

    src = folder / "model.onnx"
    onnx.save(model, str(src))
    suffix = {"float32": "f32", "float16": "f16"}.get(dtype, "f32")
    cmd = [exe, src.name, f"inputshape=[{','.join(map(str, shape))}]{suffix}", "fp16=0"]
    try:
        p = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SessionError(f"pnnx could not run: {first_line(e)}") from e
    param, weights = folder / "model.ncnn.param", folder / "model.ncnn.bin"
    if p.returncode != 0 or not param.is_file() or not weights.is_file():
        raise SessionError(pnnx_refusal(p.stdout + "\n" + p.stderr, p.returncode))
    return param.read_text(), param, weights


def _load_net(ncnn, exe: str, model, shape: tuple[int, ...], dtype: str, threads: int):
    """pnnx's conversion at `shape`, audited for what it writes wrongly, loaded into an ncnn.Net (f32 pinned)."""
    with tempfile.TemporaryDirectory(prefix="normonnx-ncnn-") as tmp:
        text, param, weights = _convert(exe, model, shape, dtype, Path(tmp))
        layers = parse_param(text)
        why = static_finding(layers)
        if why:
            raise SessionError(why)
        net = ncnn.Net()
        for opt in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
            if hasattr(net.opt, opt):  # f32 pinned: the verdict is on the graph's own numerics
                setattr(net.opt, opt, False)
        net.opt.num_threads = threads
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise SessionError("ncnn cannot load the model pnnx wrote")
    return net, layers


def _end_blobs(layers) -> tuple[str, str]:
    """The one input blob and the one output blob of the converted net."""
    inputs = [ly.tops[0] for ly in layers if ly.type == "Input"]
    if len(inputs) != 1:
        raise SessionError(f"pnnx wrote {len(inputs)} inputs for a one-input model")
    produced = {t for ly in layers for t in ly.tops}
    consumed = {b for ly in layers for b in ly.bottoms}
    outs = [t for t in produced if t not in consumed]
    if len(outs) != 1:
        raise SessionError(f"pnnx wrote {len(outs)} outputs for a one-output model")
    return inputs[0], outs[0]


def _open(model_path, config: SessionConfig, module=None) -> Session:

    exe = pnnx_executable()
    if exe is None:
        raise SessionError(f"the pnnx converter is not installed ({PNNX_INSTALL})")
    try:
        import ncnn
    except Exception as e:
        raise SessionError(f"ncnn cannot be imported ({type(e).__name__}: {first_line(e)}; {NCNN_INSTALL})") from e
    model, inp = read_model(model_path, "ncnn")
    threads = config.threads or 1

    def compile_for(shape: tuple[int, ...]):
        net, layers = _load_net(ncnn, exe, model, shape, inp.dtype, threads)
        in_blob, out_blob = _end_blobs(layers)
        drop_batch = len(shape) >= 2 and shape[0] == 1  # pnnx drops a batch of 1, keeps a larger one

        def extract(x: np.ndarray, blob: str):
            # ncnn.Mat(array) wraps the array's memory without a reference, with no channel alignment: the
            # array is bound to a name first (a temporary segfaults) and the Mat cloned into ncnn's own
            # aligned memory (the wrapper itself segfaults in LayerNorm)
            arr = np.ascontiguousarray(x[0] if drop_batch else x, dtype=np.float32)
            wrapped = ncnn.Mat(arr)
            mat = wrapped.clone()
            ex = net.create_extractor()
            ex.input(in_blob, mat)
            ret, out = ex.extract(blob)
            if ret != 0:
                raise SessionError(f"ncnn failed to compute blob {blob} (status {ret})")
            return out, (arr, wrapped, mat)

        _audit(layers, extract, shape, drop_batch)

        def run(x: np.ndarray) -> np.ndarray:
            out, keep = extract(x, out_blob)
            y = np.array(out, copy=True)
            if y.size != x.size:
                raise SessionError(f"ncnn returned {y.size} values for a {shape_text(x.shape)} input")
            return y.reshape(x.shape).astype(x.dtype, copy=False)

        ran_as = dict(sorted(Counter(ly.type for ly in layers if ly.type not in ("Input", "MemoryData", "Split")).items()))
        return run, {"ran_as": ran_as, "converted_for": shape_text(shape),
                     "batch": "dropped (batch 1)" if drop_batch else "kept as ncnn's leading axis"}

    precision = "f32 (fp16/bf16 storage and arithmetic off; pnnx fp16=0)"
    if inp.dtype != "float32":
        precision += f"; ncnn computes this {inp.dtype} graph in float32"
    facts = {"version": package_version("ncnn"), "pnnx_version": package_version("pnnx"), "precision": precision,
             "threads": threads}
    run = ShapeCompiled(compile_for, inp.static, facts)
    return Session("ncnn", run, facts, run, str(model_path))


def _audit(layers, extract, shape: tuple[int, ...], drop_batch: bool) -> None:
    """Every layer pnnx can convert wrongly, on a probe run before the model runs: SessionError naming the first."""
    probe = np.zeros(shape, np.float32)
    for ly in layers:  # in the param file's (topological) order: a layer's input is read before it runs
        if ly.type in AUDITED and ly.bottoms:
            blob, _ = extract(probe, ly.bottoms[0])
            why = blob_finding(ly, blob, None if drop_batch else shape)
            if why:
                raise SessionError(why)


def _bind(model_path, config: SessionConfig, x: np.ndarray):
    session = _open(model_path, config)
    x = np.ascontiguousarray(x)
    return lambda keep=x: session.run(keep)


register(Runtime("ncnn", "ncnn CPU through the pnnx converter (batch-less layers; fp16/bf16 off), with an audit of "
                 "what pnnx converts wrongly", _unavailable, _open, default=False, bind=_bind,
                 unsupported_dtypes={"bfloat16": "ncnn's Python Mat takes float32 arrays; no bfloat16 input"}))
