"""The lookup tables every module shares, each in one place: norm kinds (with their native ONNX op),
floating-point dtypes (numpy, ONNX, torch, tolerances' inputs), and ORT execution providers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ONNX TensorProto elem types (values fixed by onnx.proto), so that importing this module, and so
# `import normonnx`, does not import onnx
ONNX_FLOAT, ONNX_FLOAT16, ONNX_BFLOAT16 = 1, 10, 16


# -- norm kinds ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    name: str  # bn, ln, in, gn, rms
    title: str
    native_op: str  # the default-domain ONNX op that computes it
    ranks: tuple[int, int]  # allowed input ranks
    per_feature: bool  # ln/rms: parameters over the normalized trailing dims (else per channel, dim 1)


KINDS_TABLE = {k.name: k for k in (
    Kind("bn", "BatchNorm", "BatchNormalization", (2, 5), False),
    Kind("ln", "LayerNorm", "LayerNormalization", (1, 8), True),
    Kind("in", "InstanceNorm", "InstanceNormalization", (3, 5), False),
    Kind("gn", "GroupNorm", "GroupNormalization", (3, 5), False),
    Kind("rms", "RMSNorm", "RMSNormalization", (1, 8), True),
)}
ALL_KINDS = tuple(KINDS_TABLE)
# The default matrix covers all five. RMSNorm (RMSNormalization, opset 23) is what LLaMA-style
# decoders ship, so leaving it out of the default sweep would hide the norm most often exported today.
KINDS = ALL_KINDS
NATIVE_OPS = {k.name: k.native_op for k in KINDS_TABLE.values()}
KIND_OF_NATIVE_OP = {v: k for k, v in NATIVE_OPS.items()}


def per_feature(kind: str) -> bool:
    """ln and rms: statistics and parameters over the trailing normalized dims (the others: per channel, dim 1)."""
    k = KINDS_TABLE.get(kind)
    return bool(k and k.per_feature)


def kind_order(kind: str) -> int:
    return ALL_KINDS.index(kind) if kind in ALL_KINDS else len(ALL_KINDS)


# -- dtypes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DType:
    name: str  # float32, float16, bfloat16
    tag: str  # in ids: fp32
    onnx: int  # TensorProto elem type
    itemsize: int
    mantissa_bits: int
    min_exp: int  # exponent of the smallest normal number

    @property
    def numpy(self) -> np.dtype:
        if self.name == "bfloat16":
            import ml_dtypes  # numpy has no bfloat16; ml_dtypes (installed with onnx) provides it

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(self.name)

    @property
    def torch(self):
        import torch

        return getattr(torch, self.name)


DTYPES = {d.name: d for d in (
    DType("float32", "fp32", ONNX_FLOAT, 4, 23, -126),
    DType("float16", "fp16", ONNX_FLOAT16, 2, 10, -14),
    DType("bfloat16", "bf16", ONNX_BFLOAT16, 2, 7, -126),
)}
LOW_PRECISION = ("float16", "bfloat16")


def dtype_of_onnx(elem_type: int | None) -> str | None:
    """ONNX elem type -> our dtype name; other types (float64, ints) by their numpy name, or None."""
    for d in DTYPES.values():
        if d.onnx == elem_type:
            return d.name
    if elem_type:
        import onnx

        try:
            return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
        except Exception:
            return None
    return None


def check_dtype(name: str | None, what: str) -> str:
    """Raise BadInput unless `name` is one of the dtypes normonnx checks."""
    from .errors import BadInput

    if name not in DTYPES:
        raise BadInput(f"{what} has dtype {name or 'unknown'}: normonnx checks {', '.join(DTYPES)} norms")
    return name


# -- ORT execution providers ---------------------------------------------------------------------
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}

# stand-ins for a user's symbolic dims where nothing gives them: batch 2, every other dim 8
BATCH_STAND_IN, DIM_STAND_IN = 2, 8
