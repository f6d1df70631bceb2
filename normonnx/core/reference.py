"""The float64 numpy oracle: one pure function per norm, the ground truth everything is judged by.

Every function computes in float64 with a centered (two-pass) variance, mean((x - mean)^2), never
E[x^2] - E[x]^2, which cancels catastrophically when |mean| >> std. eps is added to the variance
inside the square root, as PyTorch and every ONNX norm op define it.
"""
from __future__ import annotations

import numpy as np

from .spec import NormSpec
from .tables import per_feature


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _channel_view(p: np.ndarray, rank: int) -> np.ndarray:
    """Shape a per-channel vector [C] to broadcast against an (N, C, *spatial) tensor."""
    return _f64(p).reshape((1, -1) + (1,) * (rank - 2))


@np.errstate(invalid="ignore", over="ignore")  # NaN/Inf inputs propagate, as in every runtime
def _normalize(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)  # two-pass: no cancellation
    return centered / np.sqrt(var + eps)


def batch_norm(x, mean, var, scale, bias, eps: float) -> np.ndarray:
    """Inference BatchNorm: (x - running_mean) / sqrt(running_var + eps) * scale + bias, over axis 1."""
    x = _f64(x)
    r = x.ndim
    y = (x - _channel_view(mean, r)) / np.sqrt(_channel_view(var, r) + eps)
    return y * _channel_view(scale, r) + _channel_view(bias, r)


def layer_norm(x, axis: int, scale=None, bias=None, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over dims [axis, rank), as ONNX LayerNormalization's `axis` attribute means it.

    scale and bias have the normalized shape x.shape[axis:] (or broadcast to it)."""
    x = _f64(x)
    axis = axis % x.ndim
    y = _normalize(x, tuple(range(axis, x.ndim)), eps)
    if scale is not None:
        y = y * _f64(scale)
    if bias is not None:
        y = y + _f64(bias)
    return y


def instance_norm(x, scale=None, bias=None, eps: float = 1e-5) -> np.ndarray:
    """InstanceNorm: each (n, c) slice normalized over its spatial dims; per-channel affine."""
    x = _f64(x)
    y = _normalize(x, tuple(range(2, x.ndim)), eps)
    if scale is not None:
        y = y * _channel_view(scale, x.ndim)
    if bias is not None:
        y = y + _channel_view(bias, x.ndim)
    return y


def group_norm(x, groups: int, scale=None, bias=None, eps: float = 1e-5, *, per_group: bool = False) -> np.ndarray:
    """GroupNorm: channels split into `groups` contiguous groups, each normalized over (C/G, *spatial).

    PyTorch and ONNX GroupNormalization-21 take scale/bias per channel [C]. GroupNormalization-18
    took them per group [G] (a spec bug, onnx/onnx#5466): pass per_group=True for those semantics.
    """
    x = _f64(x)
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    y = _normalize(xg, (2,), eps)
    if per_group:
        # scale[g] applies to every element of group g
        if scale is not None:
            y = y * _f64(scale).reshape(1, groups, 1)
        if bias is not None:
            y = y + _f64(bias).reshape(1, groups, 1)
        return y.reshape(x.shape)
    y = y.reshape(x.shape)
    if scale is not None:
        y = y * _channel_view(scale, x.ndim)
    if bias is not None:
        y = y + _channel_view(bias, x.ndim)
    return y


def rms_norm(x, axis: int = -1, scale=None, eps: float = 1e-5) -> np.ndarray:
    """RMSNorm over dims [axis, rank): x / sqrt(mean(x^2) + eps) * scale (no centering)."""
    x = _f64(x)
    axes = tuple(range(axis % x.ndim, x.ndim))
    y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    return y if scale is None else y * _f64(scale)


@np.errstate(invalid="ignore", over="ignore")
def reference(spec: NormSpec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The oracle's answer for `spec` with `params` (see normonnx.core.params) on input x, in float64."""
    w = params.get("weight") if spec.affine else None
    b = params.get("bias") if spec.affine and spec.bias else None
    if spec.kind == "bn" or (spec.kind == "in" and spec.track_running_stats):
        # in eval mode torch normalizes with the running statistics, for BN and for IN that tracks them
        c = spec.channels
        ones, zeros = np.ones(c), np.zeros(c)
        return batch_norm(x, params["running_mean"], params["running_var"],
                          ones if w is None else w, zeros if b is None else b, spec.eps)
    if spec.kind == "ln":
        return layer_norm(x, -spec.normalized_ndim, w, b, spec.eps)
    if spec.kind == "rms":
        return rms_norm(x, -spec.normalized_ndim, w, spec.eps)
    if spec.kind == "in":
        return instance_norm(x, w, b, spec.eps)
    return group_norm(x, spec.groups, w, b, spec.eps)


def normalized_stats(spec: NormSpec, params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-element (mean |x| over the element's normalization set, std of that set), broadcast to x.

    Used for the conditioning bound: an implementation working in precision u cannot do better
    than about u * |x| / std on the normalized value (see normonnx.core.compare)."""
    x = _f64(x)
    if spec.kind == "bn" or (spec.kind == "in" and spec.track_running_stats):
        std = np.sqrt(_channel_view(params["running_var"], x.ndim) + spec.eps)
        mag = np.maximum(np.abs(x), np.abs(_channel_view(params["running_mean"], x.ndim)))
        return mag, np.broadcast_to(std, x.shape)
    if spec.kind == "rms":
        # no centering, no cancellation: |x| / rms(x) is the normalized value itself, well conditioned
        return np.ones_like(x), np.ones_like(x)
    if spec.kind == "ln":
        axes = tuple(range(x.ndim - spec.normalized_ndim, x.ndim))
        xs = x
    elif spec.kind == "in":
        axes = tuple(range(2, x.ndim))
        xs = x
    else:
        xs = x.reshape(x.shape[0], spec.groups, -1)
        axes = (2,)
    with np.errstate(invalid="ignore"):
        mag = np.abs(xs).max(axis=axes, keepdims=True)
        std = np.sqrt(xs.var(axis=axes, keepdims=True) + spec.eps)
    return (np.broadcast_to(mag, xs.shape).reshape(x.shape), np.broadcast_to(std, xs.shape).reshape(x.shape))


def scale_broadcast(spec: NormSpec, params: dict, shape) -> np.ndarray | None:
    """The affine weight broadcast to x's shape (compare weighs each element's error by it), or None."""
    w = params.get("weight") if spec.affine else None
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float64)
    if per_feature(spec.kind):
        return np.broadcast_to(w, shape)
    return np.broadcast_to(w.reshape((1, -1) + (1,) * (len(shape) - 2)), shape)
