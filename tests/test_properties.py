"""Property tests (hypothesis): the oracle against torch in float64 for all five norms on drawn
shapes, parameters and offsets; compare's invariants on drawn arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from normonnx.core.compare import compare, tolerance_for
from normonnx.models import native_module
from normonnx.core.params import make_params
from normonnx.core.reference import reference
from normonnx.core.spec import NormSpec

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def specs(draw):
    kind = draw(st.sampled_from(["bn", "ln", "in", "gn", "rms"]))
    eps = draw(st.sampled_from([1e-6, 1e-5, 1e-3, 0.5]))
    affine = draw(st.booleans())
    if kind in ("ln", "rms"):
        nd = draw(st.integers(1, 2))
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=nd, max_size=nd + 2)))
        return NormSpec(kind=kind, shape=shape, normalized_ndim=nd, eps=eps, affine=affine,
                        bias=kind == "ln" and draw(st.booleans()))
    rank = draw(st.integers(2 if kind == "bn" else 3, 5))
    c = draw(st.sampled_from([1, 2, 3, 4, 6]))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=rank - 2, max_size=rank - 2)))
    if kind in ("in", "gn") and int(np.prod(spatial)) < 2:
        spatial = (2,) * (rank - 2)  # torch refuses one element per channel or group
    shape = (draw(st.integers(1, 3)), c) + spatial
    if kind == "gn":
        return NormSpec(kind="gn", shape=shape, groups=draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0])),
                        eps=eps, affine=affine)
    if kind == "bn":
        return NormSpec(kind="bn", shape=shape, eps=eps, affine=affine, track_running_stats=True)
    return NormSpec(kind="in", shape=shape, eps=eps, affine=affine)


@SETTINGS
@given(spec=specs(), offset=st.sampled_from([0.0, 3.0, 1e3]), seed=st.integers(0, 2 ** 16))
def test_oracle_matches_torch_float64(spec, offset, seed):
    params = make_params(spec)
    x = offset + np.random.default_rng(seed).standard_normal(spec.shape)
    m = native_module(spec, params).double()
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(reference(spec, params, x), want, rtol=1e-9, atol=1e-9 * (1 + offset))


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
arrays = st.lists(finite, min_size=1, max_size=64).map(lambda v: np.asarray(v, np.float64))


@SETTINGS
@given(ref=arrays)
def test_an_output_equal_to_the_oracle_passes_with_zero_error(ref):
    c = compare(ref.copy(), ref, "float32", tolerance_for("float32"))
    assert c.passed and c.max_abs_err == 0.0 and c.reason is None


@SETTINGS
@given(ref=arrays, i=st.integers(0, 63), excess=st.floats(1.01, 1e6))
def test_one_element_beyond_its_allowance_fails_and_is_the_worst(ref, i, excess):
    i %= ref.size
    tol = tolerance_for("float32")
    got = ref.copy()
    got[i] += excess * (tol.atol + tol.rtol * abs(ref[i]))
    c = compare(got, ref, "float32", tol)
    assert not c.passed and c.worst_index == (i,) and c.frac_outside == pytest.approx(1 / ref.size)


@SETTINGS
@given(ref=arrays, i=st.integers(0, 63), bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_a_non_finite_value_where_the_oracle_is_finite_always_fails(ref, i, bad):
    i %= ref.size
    got = ref.copy()
    got[i] = bad
    c = compare(got, ref, "float32", tolerance_for("float32"))
    assert not c.passed and c.nonfinite_mismatch == 1 and c.worst_index == (i,)
