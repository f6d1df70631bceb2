"""Seeded, non-trivial parameters for a spec: ones and zeros would hide swapped scale/bias wiring."""
from __future__ import annotations

import zlib

import numpy as np

from .spec import NormSpec


def param_seed(spec: NormSpec) -> int:
    # the same parameters for every dtype of one spec, so fp16 and fp32 results compare directly
    return zlib.crc32(spec.replace(dtype="float32").id.encode())


def make_params(spec: NormSpec) -> dict[str, np.ndarray]:
    """float32 parameters, deterministic in the spec: weight in [0.5, 1.5], bias ~ N(0, 0.5),
    running mean ~ N(0, 1) and running var in [0.5, 2] (never equal to each other)."""
    rng = np.random.default_rng(param_seed(spec))
    shape = spec.param_shape
    out: dict[str, np.ndarray] = {}
    if spec.affine:
        out["weight"] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if spec.bias:
            out["bias"] = rng.normal(0.0, 0.5, shape).astype(np.float32)
    if spec.track_running_stats:
        out["running_mean"] = rng.normal(0.0, 1.0, shape).astype(np.float32)
        out["running_var"] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    return out


def params_as(params: dict[str, np.ndarray], dtype: np.dtype) -> dict[str, np.ndarray]:
    """The parameters rounded to the model's dtype, as the exported model stores them."""
    return {k: v.astype(dtype) for k, v in params.items()}
