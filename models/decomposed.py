"""Norms written out with mean/sub/mul/sqrt/div only, so exporters emit ReduceMean/Sub/Mul/Sqrt/Div.

All use a centered variance mean((x - mean)^2), eps inside the sqrt, and affine as Mul then Add:
the same maths as torch.nn, spelled so that no *Normalization op appears in the exported graph.
With shifted=True (LN, IN, GN) one sample of each normalization set is subtracted first (a Slice).
"""
from __future__ import annotations

import torch
from torch import nn


class _Affine(nn.Module):
    """Holds optional weight/bias (and running stats) under torch.nn's names, so load_params works."""

    def __init__(self, param_shape, affine: bool, bias: bool = True, running: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(param_shape)) if affine else None
        self.bias = nn.Parameter(torch.zeros(param_shape)) if affine and bias else None
        if running:
            self.register_buffer("running_mean", torch.zeros(param_shape))
            self.register_buffer("running_var", torch.ones(param_shape))

    def _affine(self, y: torch.Tensor, view) -> torch.Tensor:
        if self.weight is not None:
            y = y * self.weight.reshape(view)
        if self.bias is not None:
            y = y + self.bias.reshape(view)
        return y


def _channel_view(rank: int) -> tuple[int, ...]:
    return (-1,) + (1,) * (rank - 2)


class DecomposedBatchNorm(_Affine):
    """(x - running_mean) / sqrt(running_var + eps) * weight + bias."""

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__((channels,), affine, running=True)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = _channel_view(x.dim())
        y = (x - self.running_mean.reshape(view)) / torch.sqrt(self.running_var.reshape(view) + self.eps)
        return self._affine(y, view)


_LOW = (torch.float16, torch.bfloat16)  # fp32=True widens these to float32 (float64 stays float64)


def _centered_normalize(x: torch.Tensor, dims: list[int], eps: float, fp32: bool = False,
                        shifted: bool = False) -> torch.Tensor:
    h = x.float() if fp32 and x.dtype in _LOW else x  # Casts around the statistics: x*x never in float16
    if shifted:
        h = h - _sample_of_each_set(h, dims)
    mean = h.mean(dim=dims, keepdim=True)
    d = h - mean
    var = (d * d).mean(dim=dims, keepdim=True)  # two-pass: no E[x^2]-E[x]^2 cancellation
    return (d / torch.sqrt(var + eps)).to(x.dtype)


def _sample_of_each_set(h: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """The first element of each normalization set (the trailing `dims`), broadcastable against h (a Slice).

    Why: a norm is shift-invariant, so subtracting any value near the set changes nothing in exact
    arithmetic, and a sample of the set is such a value on every input -- after it the statistics see
    values of the set's spread, not its offset (offset 1e4: the mean's float32 error no longer costs
    ~1e-2), and a zero-variance set becomes exact zeros (the output is the bias exactly, on runtimes whose
    reductions sum one value at a time too)."""
    if sorted(d % h.dim() for d in dims) != list(range(h.dim() - len(dims), h.dim())):
        raise ValueError(f"the shifted form normalizes trailing dims only, not {dims}")
    return h[(...,) + (slice(0, 1),) * len(dims)]


class DecomposedLayerNorm(_Affine):
    """LayerNorm over the trailing len(normalized_shape) dims."""

    def __init__(self, normalized_shape, eps: float = 1e-5, affine: bool = True, bias: bool = True,
                 fp32: bool = False, shifted: bool = False):
        super().__init__(tuple(normalized_shape), affine, bias)
        self.ndim = len(tuple(normalized_shape))
        self.eps, self.fp32, self.shifted = eps, fp32, shifted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _centered_normalize(x, list(range(-self.ndim, 0)), self.eps, self.fp32, self.shifted)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


class DecomposedInstanceNorm(_Affine):
    """InstanceNorm over the spatial dims; with track_running_stats it normalizes like inference BN."""

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = False, track_running_stats: bool = False,
                 fp32: bool = False, shifted: bool = False):
        super().__init__((channels,), affine, running=track_running_stats)
        self.eps, self.fp32, self.shifted = eps, fp32, shifted
        self.track_running_stats = track_running_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = _channel_view(x.dim())
        if self.track_running_stats:
            y = (x - self.running_mean.reshape(view)) / torch.sqrt(self.running_var.reshape(view) + self.eps)
        else:
            y = _centered_normalize(x, list(range(2, x.dim())), self.eps, self.fp32, self.shifted)
        return self._affine(y, view)


class DecomposedGroupNorm(_Affine):
    """GroupNorm: reshape to (N, G, -1), normalize the last dim, reshape back, per-channel affine."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5, affine: bool = True, fp32: bool = False,
                 shifted: bool = False):
        super().__init__((channels,), affine)
        self.groups = groups
        self.eps, self.fp32, self.shifted = eps, fp32, shifted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], self.groups, -1)
        y = _centered_normalize(h, [2], self.eps, self.fp32, self.shifted).reshape(x.shape)
        return self._affine(y, _channel_view(x.dim()))


class InstanceTrickGroupNorm(_Affine):
    """GroupNorm as Reshape(N, G, -1) -> InstanceNorm (no affine) -> Reshape -> Mul -> Add.

    This is what torch's exporters write for GroupNorm below opset 21: InstanceNormalization's
    per-(n, c) statistics become per-(n, group) statistics once the channels are folded into G."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5, affine: bool = True, fp32: bool = False):
        super().__init__((channels,), affine)
        self.groups = groups
        self.eps, self.fp32 = eps, fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float() if self.fp32 and x.dtype in _LOW else x  # InstanceNormalization in float32 between Casts
        y = nn.functional.instance_norm(h.reshape(x.shape[0], self.groups, -1), eps=self.eps).to(x.dtype)
        return self._affine(y.reshape(x.shape), _channel_view(x.dim()))


class LayerNormTrick(_Affine):
    """GroupNorm (sets = G) or InstanceNorm (sets = C) as Reshape(N, sets, -1) -> LayerNormalization over
    the last dim (no affine: its scale of ones is built to the row length at run time, so dynamic shapes
    work) -> Reshape -> per-channel Mul/Add. LayerNormalization kernels accumulate in float32
    (stash_type=1) and are exact on zero-variance rows in ORT, where InstanceNormalization is not."""

    def __init__(self, sets: int, channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__((channels,), affine)
        self.sets, self.eps = sets, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], self.sets, -1)
        y = nn.functional.layer_norm(h, h.shape[-1:], eps=self.eps).reshape(x.shape)
        return self._affine(y, _channel_view(x.dim()))


class DecomposedRMSNorm(_Affine):
    """RMSNorm over the trailing dims: x / sqrt(mean(x*x) + eps) * weight (no centering, no shift)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, affine: bool = True, fp32: bool = False):
        super().__init__(tuple(normalized_shape), affine, bias=False)
        self.ndim = len(tuple(normalized_shape))
        self.eps, self.fp32 = eps, fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float() if self.fp32 and x.dtype in _LOW else x
        y = (h / torch.sqrt((h * h).mean(dim=list(range(-self.ndim, 0)), keepdim=True) + self.eps)).to(x.dtype)
        return y * self.weight if self.weight is not None else y
