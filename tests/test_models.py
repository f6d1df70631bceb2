"""The PyTorch reference modules: every decomposed form equals torch.nn's module in float64."""
import numpy as np
import pytest
import torch

from normonnx.core.params import make_params
from normonnx.core.spec import NormSpec
from normonnx.exporting.variants import get_variant, usable_variants

SPECS = [
    NormSpec.make("bn", shape="3x5"),
    NormSpec.make("bn", shape="2x6x7"),
    NormSpec.make("bn", shape="2x4x5x6"),
    NormSpec.make("bn", shape="2x3x4x5x3", eps=1e-2),
    NormSpec.make("ln"),
    NormSpec.make("ln", normalized_shape="4x8", shape="3x4x8"),
    NormSpec.make("ln", bias=False),
    NormSpec.make("ln", affine=False, eps=0.1),
    NormSpec.make("in", shape="2x3x9"),
    NormSpec.make("in", shape="2x4x5x6", affine=True),
    NormSpec.make("in", shape="2x4x5x6", affine=True, track_running_stats=True),
    NormSpec.make("in", shape="2x2x3x4x5", affine=False),
    NormSpec.make("gn", groups=4),
    NormSpec.make("gn", shape="2x6x10", groups=3, eps=1e-3),
    NormSpec.make("gn", shape="2x8x3x3x3", groups=2, affine=False),
    NormSpec.make("rms"),
    NormSpec.make("rms", normalized_shape="4x8", shape="3x4x8", eps=1e-6),
]
CASES = [(s, v) for s in SPECS for v in usable_variants(s, 23) if v != "native"]


@pytest.mark.parametrize("spec, variant", CASES, ids=[f"{s.id}-{v}" for s, v in CASES])
def test_decomposed_equals_native_in_float64(spec, variant):
    params = make_params(spec)
    native = get_variant("native").build(spec, params).double()
    other = get_variant(variant).build(spec, params).double()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(spec.shape) * 3 + 1)
    v = get_variant(variant)  # contrib-nhwc's module takes and gives NHWC
    with torch.no_grad():
        torch.testing.assert_close(v.from_model(other(v.to_model(x))), native(x), rtol=1e-12, atol=1e-12)


def test_params_are_non_trivial_and_distinct():
    p = make_params(NormSpec.make("in", affine=True, track_running_stats=True))
    for name, v in p.items():
        assert not np.allclose(v, 0) and not np.allclose(v, 1), name
    assert not np.allclose(p["weight"], p["bias"])
    assert not np.allclose(p["running_mean"], p["running_var"])


def test_swapped_scale_and_bias_is_caught():
    """Non-trivial parameters are the point: swapping weight and bias must change the output."""
    spec = NormSpec.make("gn", groups=4)
    p = make_params(spec)
    swapped = dict(p, weight=p["bias"], bias=p["weight"])
    x = torch.randn(spec.shape, dtype=torch.float64)
    a = get_variant("native").build(spec, p).double()(x)
    b = get_variant("decomposed").build(spec, swapped).double()(x)
    assert not torch.allclose(a, b, atol=1e-3)
