"""How each exporter writes the ops torch does not write itself, per variant: a variant's entry names
these `Translation`s (normonnx.exporting.variants), the exporters only apply them.

- native GroupNorm: torch writes GroupNormalization only from opset 21 (and the TorchScript exporter never
  does), because GroupNormalization-18 takes scale/bias per *group* while torch's are per *channel*. Here
  the op is written at 18..20 with identity per-group scale and the per-channel affine as Mul/Add after
  it, and from 21 with per-channel scale/bias;
- com.microsoft GroupNorm (the `contrib` variants), which onnx does not register.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

from ..core.spec import NormSpec
from ..core.tables import DTYPES


@dataclass(frozen=True)
class Translation:
    """What one exporter needs to write a variant: extra torch.onnx.export keyword arguments, and a
    context the export runs in (e.g. a TorchScript symbolic registered for it), both per spec and opset."""

    kwargs: Callable[[NormSpec, int], dict] = lambda spec, opset: {}
    context: Callable[[NormSpec, int], ContextManager] = lambda spec, opset: contextlib.nullcontext()


PLAIN = Translation()  # torch's own export


def _gn_only(make):
    """A translation factory applied to GroupNorm specs only (a variant's other kinds export plainly)."""
    return lambda spec, opset: make(spec, opset) if spec.kind == "gn" else {}


def _gn_only_context(make):
    return lambda spec, opset: make(spec, opset) if spec.kind == "gn" else contextlib.nullcontext()


# -- GroupNormalization with the right per-opset semantics --------------------------------------

def _gn_dynamo_translation(spec: NormSpec, opset: int):
    import onnxscript

    # the opset module is picked by name at run time: its ops' per-opset type vars cannot be checked here
    op: Any = getattr(onnxscript, f"opset{min(opset, 23)}", onnxscript.opset18)
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

    op: Any = getattr(onnxscript, f"opset{min(max(opset, 18), 23)}", onnxscript.opset18)  # picked by name, as above
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


NATIVE_GN = {
    "dynamo": Translation(kwargs=_gn_only(lambda spec, opset: {"custom_translation_table":
                                                                   _gn_dynamo_translation(spec, opset)})),
    "torchscript": Translation(context=_gn_only_context(_gn_torchscript_symbolic)),
}
CONTRIB_GN = {
    "dynamo": Translation(kwargs=lambda spec, opset: {"custom_translation_table":
                                                          _gn_contrib_dynamo_translation(spec, opset)}),
    "torchscript": Translation(kwargs=lambda spec, opset: {"custom_opsets": {"com.microsoft": 1}},
                               context=_gn_contrib_torchscript_symbolic),
}
