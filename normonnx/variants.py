"""The registry of graph forms ("variants") a norm can be exported as.

A variant declares which norms it supports and from which opset, builds the PyTorch module to
export, and says which ops the written graph must (not) hold. Adding a variant is one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable


from .errors import BadInput
from .registry import Registry
from .spec import NormSpec
from .tables import NATIVE_OPS

if TYPE_CHECKING:  # torch loads only when a variant builds its module
    from torch import nn



@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    min_opset: dict[str, int]  # norm -> lowest opset; norms absent are unsupported
    build: Callable[[NormSpec, dict], "nn.Module"] = field(repr=False, compare=False)
    expect: Callable[[NormSpec, int, set[str]], str | None] = field(repr=False, compare=False)
    emits: Callable[[str, int], str] = field(repr=False, compare=False)  # norm, opset -> ops, for docs

    def check(self, spec: NormSpec, opset: int) -> None:
        """Raise BadInput, saying what would be valid, if this variant cannot express spec at opset."""
        if spec.kind not in self.min_opset:
            ok = ", ".join(sorted(self.min_opset))
            raise BadInput(f"variant {self.name!r} does not support {spec.kind}: it supports {ok}")
        lo = self.min_opset[spec.kind]
        if opset < lo:
            raise BadInput(
                f"variant {self.name!r} needs opset >= {lo} for {spec.kind} (asked for {opset}): "
                f"use --opset {lo} or higher, or --variant decomposed"
            )


REGISTRY: Registry[Variant] = Registry("variant")
register = REGISTRY.register
get_variant = REGISTRY.lookup


def variants_for(kind: str) -> list[str]:
    return [n for n, v in REGISTRY.items() if kind in v.min_opset]


# -- native --------------------------------------------------------------------------------------
def _build_native(spec: NormSpec, params: dict) -> "nn.Module":
    from normonnx.models import native_module

    return native_module(spec, params)


def _expect_native(spec: NormSpec, opset: int, ops: set[str]) -> str | None:
    want = {NATIVE_OPS[spec.kind]}
    if spec.kind == "in" and spec.track_running_stats:
        # with running stats an eval-mode InstanceNorm is an inference BatchNorm
        want.add("BatchNormalization")
    if not want & ops:
        return f"expected {' or '.join(sorted(want))} in the graph, found only {', '.join(sorted(ops))}"
    return None


def _emits_native(kind: str, opset: int) -> str:
    if kind == "gn":
        if opset < 21:
            # GroupNormalization-18 takes scale/bias per group (onnx/onnx#5466): identity there,
            # the per-channel affine follows as Mul/Add
            return "GroupNormalization-18 (per-group scale=1) + Mul + Add"
        return "GroupNormalization-21 (per-channel scale)"
    return NATIVE_OPS[kind]


register(Variant(
    name="native",
    description="the ONNX norm op (BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization)",
    min_opset={"bn": 9, "in": 6, "ln": 17, "gn": 18, "rms": 23},
    build=_build_native, expect=_expect_native, emits=_emits_native,
))


# -- decomposed ----------------------------------------------------------------------------------
def _build_decomposed(spec: NormSpec, params: dict) -> "nn.Module":
    from normonnx import models
    from normonnx.models.native import load_params

    k = spec.kind
    if k == "bn":
        m = models.DecomposedBatchNorm(spec.channels, spec.eps, spec.affine)
    elif k == "ln":
        m = models.DecomposedLayerNorm(spec.normalized_shape, spec.eps, spec.affine, spec.bias)
    elif k == "rms":
        m = models.DecomposedRMSNorm(spec.normalized_shape, spec.eps, spec.affine)
    elif k == "in":
        m = models.DecomposedInstanceNorm(spec.channels, spec.eps, spec.affine, spec.track_running_stats)
    else:
        m = models.DecomposedGroupNorm(spec.groups, spec.channels, spec.eps, spec.affine)
    return load_params(m, params).eval()


def _expect_decomposed(spec: NormSpec, opset: int, ops: set[str]) -> str | None:
    norm_ops = sorted(o for o in ops if o.endswith("Normalization"))
    if norm_ops:
        return f"a decomposed graph must hold no *Normalization op, found {', '.join(norm_ops)}"
    if spec.kind != "bn" and not (spec.kind == "in" and spec.track_running_stats) and "ReduceMean" not in ops:
        return "a decomposed graph must compute its statistics with ReduceMean"
    return None


register(Variant(
    name="decomposed",
    description="ReduceMean/Sub/Mul/Sqrt/Div with a centered variance, affine as Mul/Add; no *Normalization op",
    min_opset={"bn": 11, "ln": 11, "in": 11, "gn": 11, "rms": 11},
    build=_build_decomposed, expect=_expect_decomposed,
    emits=lambda kind, opset: "Sub/Div/Sqrt/Mul/Add" if kind == "bn" else "ReduceMean/Sub/Mul/Sqrt/Div" + (
        " + Reshape" if kind == "gn" else "") if kind != "rms" else "ReduceMean/Mul/Sqrt/Div",
))


# -- instance-trick (GN only) --------------------------------------------------------------------
def _build_instance_trick(spec: NormSpec, params: dict) -> "nn.Module":
    from normonnx.models import InstanceTrickGroupNorm
    from normonnx.models.native import load_params

    return load_params(InstanceTrickGroupNorm(spec.groups, spec.channels, spec.eps, spec.affine), params).eval()


def _expect_instance_trick(spec: NormSpec, opset: int, ops: set[str]) -> str | None:
    missing = {"InstanceNormalization", "Reshape"} - ops
    if missing or "GroupNormalization" in ops:
        return (f"an instance-trick graph must hold Reshape and InstanceNormalization and no "
                f"GroupNormalization; found {', '.join(sorted(ops))}")
    return None


register(Variant(
    name="instance-trick",
    description="GroupNorm as Reshape -> InstanceNormalization -> Reshape -> Mul -> Add",
    min_opset={"gn": 11},
    build=_build_instance_trick, expect=_expect_instance_trick,
    emits=lambda kind, opset: "Reshape/InstanceNormalization/Reshape/Mul/Add",
))
