"""NormSpec: defaults, ids, and a clear BadInput for every invalid request."""
import dataclasses

import pytest

from normonnx import BadInput, NormSpec


@pytest.mark.parametrize("kwargs, expected_id", [
    (dict(kind="gn", groups=4), "gn-g4-c8-2x8x16x16-fp32"),
    (dict(kind="ln"), "ln-n64-2x16x64-fp32"),
    (dict(kind="ln", normalized_shape="16x64"), "ln-n16x64-2x16x16x64-fp32"),
    (dict(kind="bn", shape="4x3x5"), "bn-c3-4x3x5-fp32"),
    (dict(kind="in", channels=4, dtype="float16"), "in-c4-2x4x16x16-fp16"),
    (dict(kind="in", track_running_stats=True), "in-c8-2x8x16x16-rs-fp32"),
    (dict(kind="ln", eps=1e-3, bias=False), "ln-n64-2x16x64-e1e-3-nobias-fp32"),
    (dict(kind="gn", affine=False, dtype="bfloat16"), "gn-g4-c8-2x8x16x16-noaffine-bf16"),
])
def test_ids_are_stable_and_readable(kwargs, expected_id):
    kind = kwargs.pop("kind")
    assert NormSpec.make(kind, **kwargs).id == expected_id


@pytest.mark.parametrize("kind, kwargs, message", [
    ("gn", dict(groups=3), "valid group counts are 1, 2, 4, 8"),
    ("xx", dict(), "valid norms are bn, ln, in, gn"),
    ("ln", dict(dtype="float64"), "valid dtypes are float32, float16, bfloat16"),
    ("bn", dict(shape="2x0x4"), "positive"),
    ("bn", dict(shape="2xax4"), "e.g. 2x8x16x16"),
    ("in", dict(shape="2x8"), "rank 3..5"),
    ("ln", dict(eps=0.0), "eps must be a positive"),
    ("ln", dict(eps=float("nan")), "eps must be a positive"),
    ("ln", dict(shape="2x16x64", normalized_shape="32"), "trailing dims"),
    ("bn", dict(groups=2), "gn only"),
    ("bn", dict(track_running_stats=False), "needs running statistics"),
    ("gn", dict(bias=False), "ln only"),
    ("bn", dict(shape="2x8x4", channels=4), "disagrees"),
])
def test_bad_specs_are_rejected_with_what_is_valid(kind, kwargs, message):
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(".", r"\.")):
        NormSpec.make(kind, **kwargs)


def test_spec_round_trips_through_json():
    s = NormSpec.make("gn", shape="2x8x4x4x4", groups=2, eps=1e-3, affine=False)
    import json

    assert NormSpec.from_dict(json.loads(s.to_json())) == s


def test_spec_is_immutable():
    s = NormSpec.make("ln")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.eps = 1.0  # type: ignore[misc]
