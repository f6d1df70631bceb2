"""The float64 oracle against two independent sources: torch in float64 and ONNX's own conformance cases.

Each check is also run on deliberately broken oracles (eps outside the sqrt, E[x^2]-E[x]^2 variance,
swapped scale/bias) to prove it fails when the oracle is wrong."""
from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch

from normonnx.core import reference as R
from normonnx.core.params import make_params
from normonnx.core.spec import NormSpec


# -- broken oracles: each must be caught --------------------------------------------------------
def _eps_outside_sqrt(x, axes, eps):
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    return d / (np.sqrt((d * d).mean(axis=axes, keepdims=True)) + eps)


def _naive_variance(x, axes, eps):
    mean = x.mean(axis=axes, keepdims=True)
    var = (x * x).mean(axis=axes, keepdims=True) - mean * mean  # E[x^2] - E[x]^2
    return (x - mean) / np.sqrt(var + eps)


BROKEN_NORMALIZE = {"eps-outside-sqrt": _eps_outside_sqrt, "naive-variance": _naive_variance}


@pytest.fixture(params=[None, *BROKEN_NORMALIZE], ids=["oracle", *BROKEN_NORMALIZE])
def oracle(request, monkeypatch):
    """The oracle, or a broken one (monkeypatched normalize); yields (name, is_broken)."""
    if request.param:
        monkeypatch.setattr(R, "_normalize", BROKEN_NORMALIZE[request.param])
    return request.param


# -- against torch float64 ----------------------------------------------------------------------
def _torch64(spec: NormSpec, params: dict, x: np.ndarray) -> np.ndarray:
    from normonnx.models import native_module

    m = native_module(spec, params).double()
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def _random_specs(n: int, seed: int = 1234) -> list[NormSpec]:
    rng = np.random.default_rng(seed)
    specs = []
    while len(specs) < n:
        kind = ["bn", "ln", "in", "gn"][len(specs) % 4]
        eps = float(rng.choice([1e-5, 1e-3, 1e-1, 1.0]))
        affine = bool(rng.random() < 0.8)
        if kind == "ln":
            nd = int(rng.integers(1, 3))
            shape = tuple(int(d) for d in rng.integers(1, 7, size=int(rng.integers(nd, nd + 3))))
            specs.append(NormSpec(kind="ln", shape=shape, normalized_ndim=nd, eps=eps, affine=affine,
                                  bias=bool(rng.random() < 0.8)))
            continue
        rank = int(rng.integers(2 if kind == "bn" else 3, 6))
        c = int(rng.choice([1, 2, 3, 4, 6, 8]))
        shape = (int(rng.integers(1, 4)), c) + tuple(int(d) for d in rng.integers(1, 6, size=rank - 2))
        if kind in ("in", "gn") and int(np.prod(shape[2:])) < 2:
            shape = shape[:2] + (2,) * (rank - 2)  # torch refuses a single element per channel/group
        if kind == "gn":
            groups = int(rng.choice([g for g in range(1, c + 1) if c % g == 0]))
            specs.append(NormSpec(kind="gn", shape=shape, groups=groups, eps=eps, affine=affine))
        elif kind == "in":
            specs.append(NormSpec(kind="in", shape=shape, eps=eps, affine=affine,
                                  track_running_stats=bool(rng.random() < 0.3)))
        else:
            specs.append(NormSpec(kind="bn", shape=shape, eps=eps, affine=affine, track_running_stats=True))
    return specs


SPECS = _random_specs(120)


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_oracle_matches_torch_float64(spec):
    params = make_params(spec)
    x = np.random.default_rng(7).standard_normal(spec.shape) * 2 + 0.5
    np.testing.assert_allclose(R.reference(spec, params, x), _torch64(spec, params, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["ln", "in", "gn"])
def test_broken_oracles_disagree_with_torch(kind, oracle):
    """eps outside the sqrt shows with a large eps; E[x^2]-E[x]^2 shows at offset 1e7 even in float64."""
    spec = NormSpec.make(kind, eps=0.5)
    params = make_params(spec)
    x = 1e7 + np.random.default_rng(3).standard_normal(spec.shape)
    err = np.abs(R.reference(spec, params, x) - _torch64(spec, params, x)).max()
    if oracle is None:
        assert err < 1e-6
    else:
        assert err > 1e-3, f"broken oracle {oracle} went unnoticed (max err {err:.2e})"


# -- against the ONNX conformance node cases from the installed onnx package --------------------
@functools.lru_cache(maxsize=1)
def _conformance_cases() -> dict:
    import importlib
    import warnings

    from onnx.backend.test.case import node

    # only the norm ops' case modules (each registers its cases as it is imported): onnx's
    # load_model_tests(kind="node") imports all of them, 15 s of collection for cases never used here
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for name in ("batch_normalization", "instance_normalization", "layernormalization", "groupnormalization",
                     "rmsnormalization"):
            importlib.import_module(f"onnx.backend.test.case.node.{name}")
        cases = node._NodeTestCases
    wanted = ("test_batchnorm_", "test_instancenorm_", "test_layer_normalization_", "test_group_normalization_",
              "test_rms_normalization_")
    return {c.name: c for c in cases if c.name.startswith(wanted) and "expanded" not in c.name
            and "training_mode" not in c.name}


def _attr(node, name, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _oracle_for_node(node, inputs):
    """Run the oracle with an ONNX node's attributes: how each op's attributes map onto the maths."""
    op = node.op_type
    eps = _attr(node, "epsilon", 1e-5)
    if op == "BatchNormalization":
        x, scale, bias, mean, var = inputs
        return R.batch_norm(x, mean, var, scale, bias, eps)
    if op == "InstanceNormalization":
        x, scale, bias = inputs
        return R.instance_norm(x, scale, bias, eps)
    if op == "LayerNormalization":
        x, scale, *rest = inputs
        return R.layer_norm(x, _attr(node, "axis", -1), scale, rest[0] if rest else None, eps)
    if op == "GroupNormalization":
        x, scale, bias = inputs
        return R.group_norm(x, _attr(node, "num_groups", 1), scale, bias, eps)
    if op == "RMSNormalization":
        x, scale = inputs
        return R.rms_norm(x, _attr(node, "axis", -1), scale, eps)
    raise AssertionError(op)


def _conformance_names() -> list[str]:
    return sorted(_conformance_cases())


def test_conformance_collection_is_complete():
    names = _conformance_names()
    for prefix in ("test_batchnorm_", "test_instancenorm_", "test_layer_normalization_4d_axis",
                   "test_layer_normalization_2d", "test_layer_normalization_3d", "test_group_normalization_",
                   "test_rms_normalization_"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert sum(n.startswith("test_layer_normalization_") for n in names) >= 19  # every axis case: 4d x8, 3d x6, 2d x4, default


def _conformance_error(name: str) -> float:
    """Worst |oracle - expected| over the case's data, in units of a float32-data tolerance."""
    case = _conformance_cases()[name]
    node = case.model.graph.node[0]
    worst = 0.0
    for inputs, outputs in case.data_sets:
        got = _oracle_for_node(node, inputs)
        expected = np.asarray(outputs[0], dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(got - expected) / (1e-5 + 1e-4 * np.abs(expected)))))
    return worst


@pytest.mark.parametrize("name", _conformance_names())
def test_oracle_matches_onnx_conformance(name):
    worst = _conformance_error(name)
    assert worst <= 1.0, f"{name}: oracle off by {worst:.2f}x the float32 tolerance"


def _eps_sensitive_cases() -> list[str]:
    # eps placement only shows where eps is large (the *_epsilon cases): at 1e-5 it moves outputs by
    # ~1e-6, below the float32 data's precision. BN and RMSNorm have no centered-normalize step.
    out = []
    for name in _conformance_names():
        node = _conformance_cases()[name].model.graph.node[0]
        if node.op_type not in ("BatchNormalization", "RMSNormalization") and _attr(node, "epsilon", 1e-5) >= 1e-3:
            out.append(name)
    return out


@pytest.mark.parametrize("name", _eps_sensitive_cases())
def test_conformance_catches_eps_outside_sqrt(name, monkeypatch):
    monkeypatch.setattr(R, "_normalize", _eps_outside_sqrt)
    assert _conformance_error(name) > 1.0, f"{name}: an oracle with eps outside the sqrt still matched"


def test_batchnorm_conformance_catches_swapped_mean_and_var():
    case = _conformance_cases()["test_batchnorm_example"]
    x, scale, bias, mean, var = case.data_sets[0][0]
    expected = case.data_sets[0][1][0]
    assert np.allclose(R.batch_norm(x, mean, var, scale, bias, 1e-5), expected, atol=1e-5)
    with np.errstate(invalid="ignore"):  # negative "variance" -> NaN, which is the point
        assert not np.allclose(R.batch_norm(x, var, mean, scale, bias, 1e-5), expected, atol=1e-3)
    assert not np.allclose(R.batch_norm(x, mean, var, bias, scale, 1e-5), expected, atol=1e-3)


def _gn_model(opset: int, x, scale, bias, groups: int, eps: float):
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=groups, epsilon=eps)
    graph = helper.make_graph([node], f"gn{opset}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
                              [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_group_norm_18_per_group_scale_against_onnx_reference():
    """No conformance case for GroupNormalization-18 ships any more; onnx.reference runs the opset-18
    function body directly. Its scale has one value per group: the per-group oracle must agree, and
    so must the per-channel oracle given that value repeated over each group's channels (the 18->21
    conversion normonnx's scan uses)."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 3, 3)).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 3).astype(np.float32)
    bias = rng.normal(0, 0.5, 3).astype(np.float32)
    got = ReferenceEvaluator(_gn_model(18, x, scale, bias, 3, 1e-3)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, R.group_norm(x, 3, scale, bias, 1e-3, per_group=True), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(got, R.group_norm(x, 3, np.repeat(scale, 2), np.repeat(bias, 2), 1e-3),
                               atol=1e-5, rtol=1e-4)


def test_group_norm_21_per_channel_scale_is_not_expressible_per_group():
    """GroupNormalization-21 scales each channel: with a scale that varies inside a group, no
    per-group reading (18's semantics) reproduces it. This is the 18 vs 21 difference, and the test
    fails if the oracle's per-channel mode collapsed to per-group values."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 3, 3)).astype(np.float32)
    scale = np.array([0.5, 1.5, 0.7, 1.3, 0.9, 1.1], np.float32)  # differs inside every group of 2
    bias = np.array([-0.4, 0.4, -0.2, 0.2, 0.1, -0.1], np.float32)
    got = ReferenceEvaluator(_gn_model(21, x, scale, bias, 3, 1e-3)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, R.group_norm(x, 3, scale, bias, 1e-3), atol=1e-5, rtol=1e-4)
    for pick in (scale[::2], scale[1::2], scale.reshape(3, 2).mean(1)):
        per_group = R.group_norm(x, 3, pick.copy(), bias.reshape(3, 2).mean(1), 1e-3, per_group=True)
        assert not np.allclose(got, per_group, atol=1e-3)
    assert onnx.defs.get_schema("GroupNormalization", 18).since_version == 18


def test_rms_norm_matches_definition():
    x = np.random.default_rng(1).standard_normal((3, 5))
    y = R.rms_norm(x, -1, None, 1e-6)
    np.testing.assert_allclose((y * y).mean(-1), 1.0, rtol=1e-4)
