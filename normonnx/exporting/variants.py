"""The registry of graph forms ("variants") a norm can be exported as.

A variant declares which norms it supports and from which opset, builds the PyTorch module to
export, and says which ops the written graph must (not) hold. Adding a variant is one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from ..core.errors import BadInput
from ..core.registry import Registry
from ..core.spec import NormSpec
from ..core.tables import NATIVE_OPS
from .translations import CONTRIB_GN, NATIVE_GN, PLAIN, Translation

if TYPE_CHECKING:  # torch loads only when a variant builds its module
    from torch import nn



@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    min_opset: dict[str, int]  # norm -> lowest opset; norms absent are unsupported
    build: Callable[[NormSpec, dict], "nn.Module"] = field(repr=False, compare=False)
    expect: Callable[[NormSpec, int, set[str]], str | None] = field(repr=False, compare=False)
    # norm, opset -> ops: for docs, and the opsets a quick sweep tries a form at (where this changes)
    emits: Callable[[str, int], str] = field(repr=False, compare=False)
    refuses: Callable[[NormSpec], str | None] = field(default=lambda spec: None, repr=False, compare=False)
    # the ORT providers with a kernel for every op it writes (None: all); elsewhere "unsupported", with why
    providers: tuple[str, ...] | None = None
    providers_why: str = ""
    layout: str = "nchw"  # "nhwc": the model takes and gives channels-last tensors (the spec's shape stays NCHW)
    # exporter name -> how it writes the ops torch does not (normonnx.exporting.translations);
    # absent: torch's own export
    translations: Mapping[str, Translation] = field(default_factory=dict, repr=False, compare=False)
    # a file onnx.checker refuses that is still this variant's right answer (GroupNormalization-18 is
    # deprecated in onnx, yet the op opsets 18..20 define): checked by strict shape inference instead
    checker_exempt: Callable[[NormSpec], bool] = field(default=lambda spec: False, repr=False, compare=False)

    def translation(self, exporter: str) -> Translation:
        return self.translations.get(exporter, PLAIN)

    def unsupported_on(self, runtime: str) -> str | None:
        """Why this variant's graph cannot run on a normonnx runtime ('cpu', 'cuda', 'reference', ...)."""
        if self.providers is None or runtime in self.providers:
            return None
        return f"variant {self.name!r} does not run on {runtime}: {self.providers_why}"

    def model_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[i] for i in TO_NHWC) if self.layout == "nhwc" else tuple(shape)

    def to_model(self, x):
        """An NCHW array (numpy or torch) as the model takes it."""
        if self.layout != "nhwc":
            return x
        return x.permute(*TO_NHWC).contiguous() if hasattr(x, "permute") else np.ascontiguousarray(x.transpose(TO_NHWC))

    def from_model(self, y):
        if self.layout != "nhwc":
            return y
        return y.permute(*TO_NCHW) if hasattr(y, "permute") else np.asarray(y).transpose(TO_NCHW)

    def check(self, spec: NormSpec, opset: int) -> None:
        """Raise BadInput, saying what would be valid, if this variant cannot express spec at opset."""
        if spec.kind not in self.min_opset:
            ok = ", ".join(sorted(self.min_opset))
            raise BadInput(f"variant {self.name!r} does not support {spec.kind}: it supports {ok}")
        why = self.refuses(spec)
        if why:
            raise BadInput(f"variant {self.name!r} cannot express {spec.id}: {why}")
        lo = self.min_opset[spec.kind]
        if opset < lo:
            raise BadInput(
                f"variant {self.name!r} needs opset >= {lo} for {spec.kind} (asked for {opset}): "
                f"use --opset {lo} or higher, or --variant decomposed"
            )


TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
REGISTRY: Registry[Variant] = Registry("variant")
register = REGISTRY.register
get_variant = REGISTRY.lookup


def variants_for(kind: str) -> list[str]:
    return [n for n, v in REGISTRY.items() if kind in v.min_opset]


def usable_variants(spec: NormSpec, opset: int) -> list[str]:
    """The variants that can express `spec` at `opset` (what bench and a sweep's timing run by default)."""
    out = []
    for n in variants_for(spec.kind):
        try:
            REGISTRY[n].check(spec, opset)
            out.append(n)
        except BadInput:
            pass
    return out


# -- native --------------------------------------------------------------------------------------
def _build_native(spec: NormSpec, params: dict) -> "nn.Module":
    from ..models import native_module

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
    translations=NATIVE_GN, checker_exempt=lambda spec: spec.kind == "gn",
))


# -- decomposed ----------------------------------------------------------------------------------
def _build_decomposed(spec: NormSpec, params: dict, fp32: bool = False, shifted: bool = False) -> "nn.Module":
    from .. import models
    from ..models.native import load_params

    k = spec.kind
    if k == "bn":
        m = models.DecomposedBatchNorm(spec.channels, spec.eps, spec.affine)
    elif k == "ln":
        m = models.DecomposedLayerNorm(spec.normalized_shape, spec.eps, spec.affine, spec.bias, fp32=fp32,
                                       shifted=shifted)
    elif k == "rms":
        m = models.DecomposedRMSNorm(spec.normalized_shape, spec.eps, spec.affine, fp32=fp32)
    elif k == "in":
        m = models.DecomposedInstanceNorm(spec.channels, spec.eps, spec.affine, spec.track_running_stats, fp32=fp32,
                                          shifted=shifted)
    else:
        m = models.DecomposedGroupNorm(spec.groups, spec.channels, spec.eps, spec.affine, fp32=fp32, shifted=shifted)
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
def _build_instance_trick(spec: NormSpec, params: dict, fp32: bool = False) -> "nn.Module":
    from ..models import InstanceTrickGroupNorm
    from ..models.native import load_params

    return load_params(InstanceTrickGroupNorm(spec.groups, spec.channels, spec.eps, spec.affine, fp32=fp32),
                       params).eval()


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


# -- layernorm-trick (GN, IN) ----------------------------------------------------------------------
def _build_layernorm_trick(spec: NormSpec, params: dict) -> "nn.Module":
    from ..models import LayerNormTrick
    from ..models.native import load_params

    sets = spec.groups if spec.kind == "gn" else spec.channels
    return load_params(LayerNormTrick(sets, spec.channels, spec.eps, spec.affine), params).eval()


def _expect_layernorm_trick(spec: NormSpec, opset: int, ops: set[str]) -> str | None:
    if "LayerNormalization" not in ops or ops & {"GroupNormalization", "InstanceNormalization"}:
        return f"a layernorm-trick graph must hold LayerNormalization and no Group/InstanceNormalization; found " \
               f"{', '.join(sorted(ops))}"
    return None


register(Variant(
    name="layernorm-trick",
    description="GroupNorm/InstanceNorm as Reshape(N, G or C, -1) -> LayerNormalization (float32 statistics, exact on "
                "zero-variance rows in ORT) -> Reshape -> Mul -> Add",
    min_opset={"gn": 17, "in": 17},
    build=_build_layernorm_trick, expect=_expect_layernorm_trick,
    emits=lambda kind, opset: "Reshape/LayerNormalization/Reshape/Mul/Add",
    refuses=lambda spec: "InstanceNorm with running statistics normalizes like BatchNorm: no per-row statistics"
    if spec.kind == "in" and spec.track_running_stats else None,
))


# -- shifted statistics (LN, IN, GN) ----------------------------------------------------------------
def _set_size(spec: NormSpec) -> int:
    """Elements per normalization set."""
    spatial = int(np.prod(spec.shape[2:]))
    if spec.kind == "gn":
        return spec.channels // spec.groups * spatial
    return int(np.prod(spec.normalized_shape)) if spec.kind == "ln" else spatial


def _expect_shifted(spec: NormSpec, opset: int, ops: set[str]) -> str | None:
    why = _expect_decomposed(spec, opset, ops)
    if why:
        return why
    if "Slice" not in ops and _set_size(spec) > 1:  # one element is its own sample: exporters drop that Slice
        return "a shifted graph must take one sample of each set with Slice"
    if spec.dtype != "float32" and "Cast" not in ops:
        return "expected Casts to float32 around the statistics"
    return None


register(Variant(
    name="shifted",
    description="one sample of each set (a Slice) subtracted before the two-pass ReduceMean statistics: exact on "
                "zero-variance sets and robust to large offsets where reductions sum in float32 one value at a time "
                "(OpenVINO; IREE, TVM, MNN, LiteRT as issue 34 measured); float32 statistics for float16/bfloat16",
    min_opset={"ln": 11, "in": 11, "gn": 11},
    # float16/bfloat16 statistics in float32 between Casts (as fix writes it). Measured with float16 statistics on
    # the reference runtime, which computes float16 in float16 as a GPU provider does: "wide" errs 2.4..3 (d*d
    # of a set ~600 wide overflows, shifted or not) and offsets >= 1e3 give NaN (the mean's float16 sum
    # overflows); ORT CPU and OpenVINO pass either way (they compute float16 ops in float32)
    build=lambda spec, params: _build_decomposed(spec, params, fp32=True, shifted=True),
    expect=_expect_shifted,
    emits=lambda kind, opset: "Slice shift, then ReduceMean/Sub/Mul/Sqrt/Div" + (" + Reshape" if kind == "gn" else ""),
    refuses=lambda spec: "InstanceNorm with running statistics normalizes like BatchNorm: no per-set statistics to "
                         "shift" if spec.kind == "in" and spec.track_running_stats else None,
))


# -- float32 statistics for float16 graphs ---------------------------------------------------------
def _fp32_only_for_low_precision(spec: NormSpec) -> str | None:
    if spec.dtype == "float32":
        return "float32 statistics are what float32 graphs compute already: use the variant without -fp32acc"
    if spec.kind == "in" and spec.track_running_stats:
        return "InstanceNorm with running statistics computes no statistics"
    return None


def _expect_fp32acc(base: Callable) -> Callable:
    def expect(spec: NormSpec, opset: int, ops: set[str]) -> str | None:
        return base(spec, opset, ops) or (None if "Cast" in ops else "expected Casts to float32 around the statistics")

    return expect


register(Variant(
    name="decomposed-fp32acc",
    description="decomposed, with Casts to float32 around the statistics (float16/bfloat16 specs): x*x never lives in "
                "float16",
    min_opset={"ln": 11, "in": 11, "gn": 11, "rms": 11},
    build=lambda spec, params: _build_decomposed(spec, params, fp32=True),
    expect=_expect_fp32acc(_expect_decomposed),
    emits=lambda kind, opset: "Cast -> ReduceMean/Sub/Mul/Sqrt/Div -> Cast" + (" + Reshape" if kind == "gn" else ""),
    refuses=_fp32_only_for_low_precision,
))
register(Variant(
    name="instance-trick-fp32acc",
    description="instance-trick with InstanceNormalization in float32 between Casts (float16/bfloat16 specs)",
    min_opset={"gn": 11},
    build=lambda spec, params: _build_instance_trick(spec, params, fp32=True),
    expect=_expect_fp32acc(_expect_instance_trick),
    emits=lambda kind, opset: "Reshape/Cast/InstanceNormalization/Cast/Reshape/Mul/Add",
    refuses=_fp32_only_for_low_precision,
))


# -- contrib (GN): ONNX Runtime's com.microsoft GroupNorm --------------------------------------------
CONTRIB_RUNTIMES = ("cuda", "torch", "torch-cuda")
CONTRIB_WHY = "ONNX Runtime has com.microsoft GroupNorm kernels only in its CUDA (and ROCm/DirectML) providers"


def _contrib_refuses(spec: NormSpec) -> str | None:
    if len(spec.shape) != 4:
        return "com.microsoft GroupNorm takes 4-D (N, H, W, C) input only"
    if spec.dtype not in ("float32", "float16"):
        return "com.microsoft GroupNorm takes float32 or float16"
    return None


def _expect_contrib(spec: NormSpec, opset: int, ops: set[str]) -> str | None:
    if "com.microsoft.GroupNorm" not in ops:
        return f"expected com.microsoft GroupNorm in the graph, found {', '.join(sorted(ops))}"
    return None


register(Variant(
    name="contrib",
    description="ONNX Runtime's com.microsoft GroupNorm (channels_last, one-pass variance: fast on CUDA, wrong at large "
                "offsets) between Transposes, so the model stays NCHW; CUDA only",
    min_opset={"gn": 11},
    build=_build_native, expect=_expect_contrib,
    emits=lambda kind, opset: "Transpose/com.microsoft.GroupNorm/Transpose",
    refuses=_contrib_refuses, providers=CONTRIB_RUNTIMES, providers_why=CONTRIB_WHY, translations=CONTRIB_GN,
))


def _build_channels_last(spec: NormSpec, params: dict) -> "nn.Module":
    from ..models import ChannelsLast

    return ChannelsLast(_build_native(spec, params)).eval()


register(Variant(
    name="contrib-nhwc",
    description="com.microsoft GroupNorm on channels-last tensors: the model takes and gives NHWC (for models that "
                "keep activations channels-last; no Transposes); CUDA only",
    min_opset={"gn": 11},
    build=_build_channels_last, expect=_expect_contrib,
    emits=lambda kind, opset: "com.microsoft.GroupNorm (NHWC in and out)",
    refuses=_contrib_refuses, providers=CONTRIB_RUNTIMES, providers_why=CONTRIB_WHY, layout="nhwc",
    translations=CONTRIB_GN,
))
