"""torch.nn's own norm modules, built from a spec and loaded with given parameters."""
from __future__ import annotations

import torch
from torch import nn

_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_IN = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def load_params(module: nn.Module, params: dict) -> nn.Module:
    """Copy numpy parameters/buffers (weight, bias, running_mean, running_var) into a module."""
    state = {k: torch.as_tensor(v) for k, v in params.items()}
    missing = set(state) - set(dict(module.named_parameters())) - set(dict(module.named_buffers()))
    if missing:
        raise KeyError(f"{type(module).__name__} has no {sorted(missing)}")
    with torch.no_grad():
        for name, value in state.items():
            getattr(module, name).copy_(value)
    return module


def native_module(spec, params: dict) -> nn.Module:
    """The torch.nn module for `spec` (a normonnx.NormSpec), in eval mode, float32."""
    k = spec.kind
    if k == "bn":
        # BatchNorm1d takes (N, C) or (N, C, L): spatial rank 0 or 1
        m = _BN[max(spec.spatial_rank, 1)](spec.channels, eps=spec.eps, affine=spec.affine)
    elif k == "in":
        m = _IN[spec.spatial_rank](
            spec.channels, eps=spec.eps, affine=spec.affine, track_running_stats=spec.track_running_stats
        )
    elif k == "ln":
        m = nn.LayerNorm(spec.normalized_shape, eps=spec.eps, elementwise_affine=spec.affine,
                         bias=spec.bias and spec.affine)
    elif k == "rms":
        m = nn.RMSNorm(spec.normalized_shape, eps=spec.eps, elementwise_affine=spec.affine)
    elif k == "gn":
        m = nn.GroupNorm(spec.groups, spec.channels, eps=spec.eps, affine=spec.affine)
    else:  # pragma: no cover - NormSpec validates kind
        raise ValueError(k)
    return load_params(m, params).eval()


class ChannelsLast(nn.Module):
    """`inner` (an NCHW module) taking and giving NHWC tensors: exported with com.microsoft GroupNorm
    (channels_last=1) the permutes cancel the op's own Transposes."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
