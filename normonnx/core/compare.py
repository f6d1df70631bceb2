"""Compare an output with the float64 oracle: error metrics, the worst element, and a verdict.

Pass rule, elementwise: |got - ref| <= atol + rtol*|ref| + allowance, where `allowance` is the
conditioning bound below. Non-finite values must sit exactly where the oracle's are.

Why an allowance: with a large common offset, the normalized value (x - mean)/std is
ill-conditioned. Any implementation that accumulates in float32 (what ONNX LayerNormalization's
default stash_type and PyTorch use, for float16/bfloat16 inputs too) loses about
u32 * max|x| / std on it, u32 = 2**-24, however carefully it computes. We allow
COND_K * u32 * max|x|/std * |scale|. A centered variance stays well inside (measured ~1-3x u32*kappa),
while E[x^2]-E[x]^2 exceeds it ~10x at offset 1e2, ~50x at 1e3 (and gives NaN at 1e4), and a
float16 accumulation (u16 = 2**-11) exceeds it by ~8000x: those are real failures, not rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import BadInput
from .tables import DTYPES

U32 = 2.0 ** -24
COND_K = 16.0


@dataclass(frozen=True)
class Tolerance:
    """atol/rtol for one output dtype.

    float32: 1e-4 leaves ~800 ulps at |y|~1 for reductions over up to 65536 elements (observed
    errors ~1e-6). float16: 1e-2 is ~10 ulps at |y|~1: output rounding (half an ulp) plus a few
    roundings of intermediates. bfloat16: 3 bits fewer than float16, so 8x that."""

    atol: float
    rtol: float


DEFAULT_TOLERANCES = {
    "float32": Tolerance(1e-4, 1e-4),
    "float16": Tolerance(1e-2, 1e-2),
    "bfloat16": Tolerance(8e-2, 8e-2),
}


def tolerance_for(dtype: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    base = DEFAULT_TOLERANCES[dtype]
    t = Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol)
    # NaN would switch the check off (no comparison with NaN is ever true), Inf would pass anything
    if not all(math.isfinite(v) and v >= 0 for v in (t.atol, t.rtol)):
        raise BadInput(f"tolerances must be finite numbers >= 0, got atol={t.atol} rtol={t.rtol}")
    return t


def ulp(values: np.ndarray, dtype: str) -> np.ndarray:
    """Spacing of `dtype` at each value (float64 result; subnormals use the min-normal spacing)."""
    bits, min_exp = DTYPES[dtype].mantissa_bits, DTYPES[dtype].min_exp
    a = np.abs(np.asarray(values, np.float64))
    # floor(log2 |a|) exactly, read from float64's exponent field (0 and subnormals read as -1023, below any
    # dtype's min_exp); then 2**(e - bits) written straight into an exponent field: integer work only, where
    # frexp/ldexp cost a large comparison most of its time
    e = a.view(np.int64) >> 52  # in place from here on: one array, where temporaries cost most of the time
    e -= 1023
    np.maximum(e, min_exp, out=e)
    nonfinite = e > 1023  # Inf and NaN (exponent field all ones): no spacing
    e += 1023 - bits
    e <<= 52
    spacing = e.view(np.float64)
    spacing[nonfinite] = np.inf
    return spacing


@dataclass(frozen=True)
class Comparison:
    passed: bool
    max_abs_err: float
    mean_abs_err: float
    p99_abs_err: float
    max_rel_err: float
    max_ulp: float
    frac_outside: float
    nonfinite_mismatch: int
    max_cond: float  # max |x|/std over normalization sets (1 = well conditioned)
    worst_index: tuple[int, ...] | None
    worst_got: float | None
    worst_expected: float | None
    worst_allowed: float | None
    reason: str | None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["worst_index"] = list(self.worst_index) if self.worst_index is not None else None
        return {k: (None if isinstance(v, float) and not np.isfinite(v) and k.startswith("worst") else v)
                for k, v in d.items()}

    def worst_str(self) -> str:
        if self.worst_index is None:
            return "-"
        return f"at {list(self.worst_index)} got {self.worst_got:.6g} expected {self.worst_expected:.6g}"


def _allowance(shape, size: int, cond, scale) -> tuple[float, np.ndarray | float]:
    """The largest conditioning and the per-element allowance it earns (0 without a conditioning array)."""
    if cond is None:  # no conditioning allowance (and no full-size arrays of ones to say so)
        return (1.0 if size else 0.0), 0.0
    cond_arr = np.broadcast_to(cond, shape)
    cond_arr = np.where(np.isfinite(cond_arr), cond_arr, 0.0)
    max_cond = float(cond_arr.max()) if cond_arr.size else 0.0
    scale_arr = 1.0 if scale is None else np.abs(np.broadcast_to(scale, shape))
    return max_cond, COND_K * U32 * np.maximum(cond_arr - 1.0, 0.0) * scale_arr


def _worst_index(nf_bad, nf_count: int, n_finite: int, err, allowed, both, shape) -> tuple[int, ...] | None:
    """The worst element: a non-finite mismatch first, else the largest excess over the allowed error."""
    if nf_count:
        return tuple(int(i) for i in np.argwhere(nf_bad)[0])
    if not n_finite:
        return None
    idx = np.unravel_index(int(np.argmax(err - allowed if nf_bad is None else
                                         np.where(both, err - allowed, -np.inf))), shape)
    return tuple(int(i) for i in idx)


def _reason(got, ref, err, allowed, outside, nf_count: int, idx) -> str | None:
    """Why a comparison failed, at its worst element (None when it passed)."""
    if nf_count:
        kind = "NaN" if np.isnan(got[idx]) else ("Inf" if np.isinf(got[idx]) else "a finite value")
        return f"{nf_count} non-finite mismatches: {kind} at {list(idx)} where the oracle has {ref[idx]:.6g}"
    if outside.any():
        return (f"{int(outside.sum())} elements outside tolerance; worst at {list(idx)}: got {got[idx]:.6g}, "
                f"expected {ref[idx]:.6g}, error {err[idx]:.3g} > allowed {allowed[idx]:.3g}")
    return None


@np.errstate(invalid="ignore", over="ignore", divide="ignore")
def compare(got: np.ndarray, ref: np.ndarray, dtype: str, tol: Tolerance,
            cond: np.ndarray | None = None, scale: np.ndarray | None = None) -> Comparison:
    """Compare `got` (any float dtype) with the float64 oracle `ref`.

    cond: per-element max|x|/std of its normalization set (reference.normalized_stats);
    scale: per-element |affine scale| (broadcast), multiplies the conditioning allowance."""
    got = np.asarray(got).astype(np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return Comparison(False, np.inf, np.inf, np.inf, np.inf, np.inf, 1.0, 0, 0.0, None, None, None, None,
                          f"output shape {got.shape} differs from expected {ref.shape}")
    fin_g, fin_r = np.isfinite(got), np.isfinite(ref)
    if fin_g.all() and fin_r.all():  # the common case, without masks (every element is compared)
        nf_bad, nf_count, both, pick = None, 0, True, ...
        err = np.abs(got - ref)
    else:
        # non-finite must match in kind: NaN where NaN, +Inf where +Inf, -Inf where -Inf
        nf_bad = (fin_g != fin_r) | (~fin_r & ~((np.isnan(got) & np.isnan(ref)) | (got == ref)))
        nf_count = int(nf_bad.sum())
        both = pick = fin_g & fin_r
        err = np.where(both, np.abs(got - ref), 0.0)
    max_cond, allowance = _allowance(ref.shape, ref.size, cond, scale)
    abs_ref = np.abs(ref) if nf_bad is None else np.where(fin_r, np.abs(ref), 0.0)
    allowed = tol.atol + tol.rtol * abs_ref + allowance
    outside = both & (err > allowed)
    n = ref.size or 1
    e_fin, r_fin = err[pick], abs_ref[pick]
    max_abs = float(e_fin.max()) if e_fin.size else 0.0
    rel = e_fin / np.maximum(r_fin, max(tol.atol, np.finfo(np.float64).tiny))
    # ULPs of the output dtype at max(|expected|, 1): normalized outputs are O(1), and near zero any
    # absolute error would be a huge count of tiny subnormal-scale ulps
    ulps = e_fin / ulp(np.maximum(r_fin, 1.0), dtype) if e_fin.size else np.zeros(0)
    idx = _worst_index(nf_bad, nf_count, e_fin.size, err, allowed, both, ref.shape)
    reason = _reason(got, ref, err, allowed, outside, nf_count, idx)
    return Comparison(
        passed=nf_count == 0 and not outside.any(),
        max_abs_err=max_abs,
        mean_abs_err=float(e_fin.mean()) if e_fin.size else 0.0,
        p99_abs_err=float(np.percentile(e_fin, 99)) if e_fin.size else 0.0,
        max_rel_err=float(rel.max()) if rel.size else 0.0,
        max_ulp=float(ulps.max()) if ulps.size else 0.0,
        frac_outside=float((outside.sum() + nf_count) / n),
        nonfinite_mismatch=nf_count,
        max_cond=max_cond,
        worst_index=idx,
        worst_got=float(got[idx]) if idx is not None else None,
        worst_expected=float(ref[idx]) if idx is not None else None,
        worst_allowed=float(allowed[idx]) if idx is not None else None,
        reason=reason,
    )


@dataclass(frozen=True)
class Oracle:
    """The float64 oracle on one input, ready to judge any output of the layer on it: its answer, each element's
    conditioning (max|x|/std of its normalization set) and the affine scale weighing it. validate, --activations,
    its float16 what-if and its replays all judge an output through `Oracle.of(...).compare(...)`."""

    expected: np.ndarray
    cond: np.ndarray
    scale: np.ndarray | None

    @classmethod
    def of(cls, spec, params: dict, x: np.ndarray) -> "Oracle":
        from .reference import normalized_stats, reference, scale_broadcast

        mag, std = normalized_stats(spec, params, x)
        with np.errstate(invalid="ignore", divide="ignore"):
            cond = mag / std
        return cls(reference(spec, params, np.asarray(x, np.float64)), cond, scale_broadcast(spec, params, np.shape(x)))

    def compare(self, got: np.ndarray, dtype: str, tol: Tolerance | None = None) -> Comparison:
        return compare(got, self.expected, dtype, tolerance_for(dtype) if tol is None else tol, self.cond, self.scale)
