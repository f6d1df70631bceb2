"""compare(): the pass rule at its edges, non-finite placement, ULPs, the conditioning allowance,
tolerances, shapes. Table-driven; each row either must pass or must fail, with why."""
from __future__ import annotations

import math

import numpy as np
import pytest

from normonnx.core.compare import COND_K, U32, compare, tolerance_for, ulp
from normonnx.core.errors import BadInput

T32 = tolerance_for("float32")  # atol 1e-4, rtol 1e-4
INF, NAN = math.inf, math.nan


def _allowed(ref: float, cond: float = 1.0, scale: float = 1.0) -> float:
    return T32.atol + T32.rtol * abs(ref) + COND_K * U32 * max(cond - 1.0, 0.0) * scale


# name -> (got, expected, cond, scale, passes, fragment of the reason when it fails)
ROWS = {
    "exact": ([1.0, -2.0], [1.0, -2.0], None, None, True, None),
    "at-the-edge": ([2.0 + _allowed(2.0) * 0.999], [2.0], None, None, True, None),
    "just-outside": ([2.0 + _allowed(2.0) * 1.001], [2.0], None, None, False, "1 elements outside tolerance"),
    "rtol-scales-with-ref": ([1000.0 + 0.09], [1000.0], None, None, True, None),
    "rtol-not-for-small-ref": ([0.001 + 0.0002], [0.001], None, None, False, "outside tolerance"),
    "nan-where-nan": ([NAN, 1.0], [NAN, 1.0], None, None, True, None),
    "nan-where-finite": ([NAN, 1.0], [0.5, 1.0], None, None, False, "1 non-finite mismatches: NaN at [0]"),
    "finite-where-nan": ([0.5, 1.0], [NAN, 1.0], None, None, False, "a finite value at [0]"),
    "inf-where-inf": ([INF, -INF], [INF, -INF], None, None, True, None),
    "wrong-sign-inf": ([-INF], [INF], None, None, False, "Inf at [0]"),
    "inf-where-finite": ([INF], [3.0], None, None, False, "Inf at [0]"),
    # conditioning: max|x|/std = 1001 buys 16*2^-24*1000 ~ 9.5e-4 more, times |scale|
    "cond-allowance-covers": ([1.0 + 9e-4], [1.0], [1001.0], None, True, None),
    "no-cond-no-allowance": ([1.0 + 9e-4], [1.0], None, None, False, "outside tolerance"),
    "allowance-has-a-limit": ([1.0 + 2e-3], [1.0], [1001.0], None, False, "outside tolerance"),
    "allowance-times-scale": ([1.0 + 9e-4], [1.0], [1001.0], [0.1], False, "outside tolerance"),
    "nan-cond-gives-no-allowance": ([1.0 + 9e-4], [1.0], [NAN], None, False, "outside tolerance"),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_pass_rule(name):
    got, ref, cond, scale, passes, why = ROWS[name]
    c = compare(np.array(got), np.array(ref), "float32", T32,
                None if cond is None else np.array(cond), None if scale is None else np.array(scale))
    assert c.passed is passes, (name, c.reason)
    if why:
        assert why in c.reason, c.reason
        assert c.worst_index is not None
    else:
        assert c.reason is None


def test_worst_element_is_the_largest_excess_over_what_is_allowed():
    # index 2 has a smaller error than index 0 but a far smaller allowance (ref near 0)
    ref = np.array([100.0, 1.0, 0.0])
    got = ref + np.array([0.005, 0.0, 0.0004])
    c = compare(got, ref, "float32", T32)
    assert c.worst_index == (2,) and c.worst_got == pytest.approx(0.0004)
    assert c.frac_outside == pytest.approx(1 / 3)


def test_ulps_are_counted_in_the_output_dtype_at_max_of_ref_and_one():
    one_ulp32 = 2.0 ** -23
    c = compare(np.array([1.0 + 3 * one_ulp32]), np.array([1.0]), "float32", T32)
    assert c.max_ulp == pytest.approx(3.0)
    c16 = compare(np.array([1.0 + 2 * 2.0 ** -10]), np.array([1.0]), "float16", tolerance_for("float16"))
    assert c16.max_ulp == pytest.approx(2.0)
    near_zero = compare(np.array([1e-30 + one_ulp32]), np.array([1e-30]), "float32", T32)
    assert near_zero.max_ulp == pytest.approx(1.0)  # counted at 1.0, not at 1e-30's subnormal spacing


@pytest.mark.parametrize("dtype, value, spacing", [
    ("float32", 1.0, 2.0 ** -23), ("float32", 3.0, 2.0 ** -22), ("float16", 1.0, 2.0 ** -10),
    ("bfloat16", 1.0, 2.0 ** -7), ("float16", 0.0, 2.0 ** -24), ("float32", 0.0, 2.0 ** -149),
])
def test_ulp_spacing(dtype, value, spacing):
    assert ulp(np.array([value]), dtype)[0] == pytest.approx(spacing)


def test_shape_mismatch_fails_without_comparing():
    c = compare(np.zeros((2, 3)), np.zeros((3, 2)), "float32", T32)
    assert not c.passed and "output shape (2, 3) differs from expected (3, 2)" in c.reason


@pytest.mark.parametrize("atol, rtol", [(NAN, None), (None, NAN), (-1.0, None), (None, INF), (INF, None)])
def test_tolerances_that_would_switch_the_check_off_are_refused(atol, rtol):
    with pytest.raises(BadInput, match="finite numbers >= 0"):
        tolerance_for("float32", atol, rtol)


def test_a_nan_tolerance_would_have_passed_garbage():
    """Why NaN is refused: with it, no element is ever 'outside' (every comparison with NaN is false)."""
    from normonnx.core.compare import Tolerance

    c = compare(np.array([5.0]), np.array([1.0]), "float32", Tolerance(NAN, NAN))
    assert c.passed  # the hole tolerance_for closes
