"""PyTorch reference implementations of the four norms (installed as `normonnx.models`).

`native` wraps torch.nn's own modules; `decomposed` spells each norm out with mean/sub/mul/sqrt/div
so that exporters write plain arithmetic instead of a *Normalization op (with shifted=True, one sample
of each set subtracted first: the `shifted` variant); `InstanceTrickGroupNorm` is GroupNorm as
Reshape -> InstanceNorm -> Reshape -> affine, the form torch's exporters fall back to.
"""
from .decomposed import (
    DecomposedBatchNorm,
    DecomposedGroupNorm,
    DecomposedInstanceNorm,
    DecomposedLayerNorm,
    DecomposedRMSNorm,
    InstanceTrickGroupNorm,
    LayerNormTrick,
)
from .native import ChannelsLast, native_module

__all__ = [
    "native_module",
    "ChannelsLast",
    "DecomposedBatchNorm",
    "DecomposedLayerNorm",
    "DecomposedInstanceNorm",
    "DecomposedGroupNorm",
    "DecomposedRMSNorm",
    "InstanceTrickGroupNorm",
    "LayerNormTrick",
]
