"""The registry of torch exporters: the default dynamo-based one and the legacy TorchScript one.

Each entry exports a module to a file at an opset and declares the opsets it accepts. Neither is
trusted: normonnx.export checks the opset and op set of every file either one writes.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from functools import lru_cache
from typing import Callable

from .errors import BadInput
from .registry import Registry
from .spec import NormSpec
from .tables import DTYPES



@lru_cache(maxsize=None)
def _max_opset(name: str, default: int) -> int:
    """torch's own limit, read from torch/onnx/_constants.py without importing torch (2 s, and most
    commands never need it); importing it is the fallback."""
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec("torch")
        for root in (spec.submodule_search_locations or []) if spec else []:
            text = Path(root, "onnx", "_constants.py").read_text()
            m = re.search(rf"^{name}\s*=\s*(\d+)", text, re.M)
            if m:
                return int(m.group(1))
    except Exception:
        pass
    try:
        from torch.onnx import _constants

        return int(getattr(_constants, name))
    except Exception:  # pragma: no cover - private module moved
        return default


@dataclass(frozen=True)
class Exporter:
    name: str
    description: str
    first_opset: int
    max_opset: Callable[[], int] = field(repr=False, compare=False)  # torch's limit, looked up when asked
    native_from: int = 7  # below this the exporter converts (and may silently fail to)
    run: Callable[..., None] = field(default=None, repr=False, compare=False)

    @property
    def opsets(self) -> range:
        """What torch accepts as opset_version."""
        return range(self.first_opset, self.max_opset() + 1)

    def check(self, opset: int) -> None:
        if opset not in self.opsets:
            raise BadInput(
                f"exporter {self.name!r} writes opsets {self.opsets.start}..{self.opsets.stop - 1}, not {opset}"
                + ("; use --exporter dynamo for newer opsets" if opset >= self.opsets.stop and self.name != "dynamo" else "")
            )


@contextlib.contextmanager
def quiet_export(log: list[str]):
    """Silence the exporters' prints, warnings and log lines (torch's logging writes to fd 2 through
    handlers of its own), keeping their text in `log` so a report can show it."""
    import os
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()) as out:
                warnings.simplefilter("always")
                yield
            log.extend(str(w.message) for w in caught)
            log.extend(out.getvalue().splitlines())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            log.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def _dynamic_dims(spec: NormSpec, variant: str = "native") -> list[int]:
    """Dims that may vary at run time: batch and spatial for bn/in/gn; the leading dims for ln (of the
    model's input: an NHWC variant's spatial dims are 1..rank-2)."""
    from .variants import get_variant

    if spec.kind in ("ln", "rms"):
        return list(range(len(spec.shape) - spec.normalized_ndim))
    if get_variant(variant).layout == "nhwc":
        return list(range(len(spec.shape) - 1))
    return [0] + list(range(2, len(spec.shape)))


# -- GroupNormalization with the right per-opset semantics --------------------------------------
# torch writes GroupNormalization only from opset 21 (and the TorchScript exporter never does),
# because GroupNormalization-18 takes scale/bias per *group* while torch's are per *channel*.
# For the native variant we emit the op ourselves: at 18..20 with identity per-group scale and the
# per-channel affine as Mul/Add after it; from 21 with per-channel scale/bias.

def _gn_dynamo_translation(spec: NormSpec, opset: int):
    import onnxscript

    op = getattr(onnxscript, f"opset{min(opset, 23)}", onnxscript.opset18)
    c, g, rank = spec.channels, spec.groups, len(spec.shape)
    view = [c] + [1] * (rank - 2)

    def group_norm(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5, cudnn_enabled: bool = True):
        n = c if opset >= 21 else g
        ones = op.Expand(op.CastLike(op.Constant(value_float=1.0), input), op.Constant(value_ints=[n]))
        zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), input), op.Constant(value_ints=[n]))
        if opset >= 21:
            return op.GroupNormalization(input, ones if weight is None else weight,
                                         zeros if bias is None else bias, num_groups=num_groups, epsilon=eps)
        y = op.GroupNormalization(input, ones, zeros, num_groups=num_groups, epsilon=eps)
        if weight is not None:
            y = op.Mul(y, op.Reshape(weight, op.Constant(value_ints=view)))
        if bias is not None:
            y = op.Add(y, op.Reshape(bias, op.Constant(value_ints=view)))
        return y

    import torch

    return {torch.ops.aten.group_norm.default: group_norm}


@contextlib.contextmanager
def _gn_torchscript_symbolic(spec: NormSpec, opset: int):
    import torch
    from torch.onnx import symbolic_helper as sh

    c, g, rank = spec.channels, spec.groups, len(spec.shape)
    dt = DTYPES[spec.dtype].torch

    @sh.parse_args("v", "i", "v", "v", "f", "none")
    def group_norm(gr, input, num_groups, weight, bias, eps, cudnn_enabled):
        n = c if opset >= 21 else g
        ones = gr.op("Constant", value_t=torch.ones(n, dtype=dt))
        zeros = gr.op("Constant", value_t=torch.zeros(n, dtype=dt))
        w = None if sh._is_none(weight) else weight
        b = None if sh._is_none(bias) else bias
        if opset >= 21:
            return gr.op("GroupNormalization", input, w if w is not None else ones, b if b is not None else zeros,
                         num_groups_i=num_groups, epsilon_f=eps)
        y = gr.op("GroupNormalization", input, ones, zeros, num_groups_i=num_groups, epsilon_f=eps)
        view = gr.op("Constant", value_t=torch.tensor([c] + [1] * (rank - 2), dtype=torch.int64))
        if w is not None:
            y = gr.op("Mul", y, gr.op("Reshape", w, view))
        if b is not None:
            y = gr.op("Add", y, gr.op("Reshape", b, view))
        return y

    torch.onnx.register_custom_op_symbolic("::group_norm", group_norm, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("::group_norm", opset)


# -- com.microsoft GroupNorm (the `contrib` variants) -----------------------------------------------
# ORT's contrib GroupNorm (CUDA only) takes NHWC input (channels_last=1) with per-channel gamma/beta and
# computes the variance in one pass. `contrib` wraps it in Transposes so the model stays NCHW;
# `contrib-nhwc` models take and give NHWC (its module permutes, and the Transposes cancel).

def _contrib_schema():
    """com.microsoft GroupNorm's signature (ORT's contrib_defs), which onnx does not register: onnxscript
    needs a schema to emit a call."""
    from onnx.defs import OpSchema

    floats = ["tensor(float16)", "tensor(float)"]
    return OpSchema(
        "GroupNorm", "com.microsoft", 1,
        inputs=[OpSchema.FormalParameter("X", "T"), OpSchema.FormalParameter("gamma", "M"),
                OpSchema.FormalParameter("beta", "M")],
        outputs=[OpSchema.FormalParameter("Y", "T")],
        type_constraints=[("T", floats, ""), ("M", floats, "")],
        attributes=[OpSchema.Attribute(name, kind, "") for name, kind in (
            ("groups", OpSchema.AttrType.INT), ("epsilon", OpSchema.AttrType.FLOAT),
            ("activation", OpSchema.AttrType.INT), ("channels_last", OpSchema.AttrType.INT))])


def _gn_contrib_dynamo_translation(spec: NormSpec, opset: int):
    import onnxscript
    import torch

    op = getattr(onnxscript, f"opset{min(max(opset, 18), 23)}", onnxscript.opset18)
    group_norm_op = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "GroupNorm", _contrib_schema())
    c = spec.channels

    def group_norm(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5, cudnn_enabled: bool = True):
        # gamma/beta in float32 whatever X is: ORT's CUDA kernel refuses others ("GroupNorm only supports
        # gamma and beta in float type", measured on ORT 1.31 CUDA), as ORT's own UNet fusion writes them
        ones = op.Expand(op.Constant(value_float=1.0), op.Constant(value_ints=[c]))
        zeros = op.Expand(op.Constant(value_float=0.0), op.Constant(value_ints=[c]))
        w = ones if weight is None else op.Cast(weight, to=1)
        b = zeros if bias is None else op.Cast(bias, to=1)
        x = op.Transpose(input, perm=[0, 2, 3, 1])
        y = group_norm_op(x, w, b, groups=num_groups, epsilon=eps, activation=0, channels_last=1)
        return op.Transpose(y, perm=[0, 3, 1, 2])

    return {torch.ops.aten.group_norm.default: group_norm}


@contextlib.contextmanager
def _gn_contrib_torchscript_symbolic(spec: NormSpec, opset: int):
    import torch
    from torch.onnx import symbolic_helper as sh

    @sh.parse_args("v", "i", "v", "v", "f", "none")
    def group_norm(gr, input, num_groups, weight, bias, eps, cudnn_enabled):
        # float32 gamma/beta whatever X is (ORT's CUDA kernel takes no other; see the dynamo translation)
        w = gr.op("Constant", value_t=torch.ones(spec.channels)) if sh._is_none(weight) else gr.op("Cast", weight, to_i=1)
        b = gr.op("Constant", value_t=torch.zeros(spec.channels)) if sh._is_none(bias) else gr.op("Cast", bias, to_i=1)
        x = gr.op("Transpose", input, perm_i=[0, 2, 3, 1])
        y = gr.op("com.microsoft::GroupNorm", x, w, b, groups_i=num_groups, epsilon_f=eps, activation_i=0,
                  channels_last_i=1)
        return gr.op("Transpose", y, perm_i=[0, 3, 1, 2])

    torch.onnx.register_custom_op_symbolic("::group_norm", group_norm, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("::group_norm", opset)


def _gn_hooks(spec: NormSpec, variant: str):
    """(dynamo translation table factory, TorchScript symbolic context factory) for the GN variants
    that write GroupNorm ops torch does not (GroupNormalization-18/21, com.microsoft GroupNorm)."""
    if spec.kind != "gn":
        return None
    if variant == "native":
        return _gn_dynamo_translation, _gn_torchscript_symbolic
    if variant.startswith("contrib"):
        return _gn_contrib_dynamo_translation, _gn_contrib_torchscript_symbolic
    return None


def _run_dynamo(module, example, path: Path, opset: int, spec: NormSpec, variant: str, dynamic: bool) -> None:
    import torch

    kwargs = {}
    if dynamic:
        kwargs["dynamic_shapes"] = ({d: torch.export.Dim.DYNAMIC for d in _dynamic_dims(spec, variant)},)
    hooks = _gn_hooks(spec, variant)
    if hooks:
        kwargs["custom_translation_table"] = hooks[0](spec, opset)
    torch.onnx.export(module, (example,), str(path), opset_version=opset, dynamo=True, external_data=False,
                      input_names=["x"], output_names=["y"], verbose=False, **kwargs)


def _run_torchscript(module, example, path: Path, opset: int, spec: NormSpec, variant: str, dynamic: bool) -> None:
    import torch

    kwargs = {}
    if dynamic:
        dims = {d: f"d{d}" for d in _dynamic_dims(spec, variant)}
        kwargs["dynamic_axes"] = {"x": dims, "y": dims}
    hooks = _gn_hooks(spec, variant)
    ctx = hooks[1](spec, opset) if hooks else contextlib.nullcontext()
    if variant.startswith("contrib"):
        kwargs["custom_opsets"] = {"com.microsoft": 1}
    with ctx:
        torch.onnx.export(module, (example,), str(path), opset_version=opset, dynamo=False,
                          input_names=["x"], output_names=["y"], do_constant_folding=True, **kwargs)


REGISTRY: Registry[Exporter] = Registry("exporter")
REGISTRY.register(Exporter(
    "dynamo", "torch.onnx.export(dynamo=True), torch's default; implements opset >= 18 and "
    "converts down with the ONNX version converter, which may silently keep 18",
    7, lambda: _max_opset("ONNX_MAX_OPSET", 23), 18, _run_dynamo))
REGISTRY.register(Exporter(
    "torchscript", "torch.onnx.export(dynamo=False), the legacy TorchScript-based exporter",
    7, lambda: _max_opset("ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20), 7, _run_torchscript))
get_exporter = REGISTRY.lookup
