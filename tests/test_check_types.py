"""The frozen parts of a scan --activations layer check write the JSON documents wrote before they were types
(issue 35): the same keys, in the same order, for a form that ran and one that could not."""
from __future__ import annotations

import dataclasses

import pytest

from normonnx.features.scan.checks import Float16Verdict, Float16WhatIf, Int8Rounding, OracleError, Replay

NOT_RUN = Float16Verdict("not checked", "the float16 converter failed: x")
RAN = Float16Verdict("fail", "worst element ...", "ln-native", 2.5)


@pytest.mark.parametrize("value, keys", [
    (NOT_RUN, ["status", "why"]),
    (RAN, ["status", "why", "rule", "max_abs_err"]),
    (Float16WhatIf(NOT_RUN), ["converted"]),
    (Float16WhatIf(RAN, RAN), ["converted", "fp32_statistics"]),
    (Replay("not checked", "not replayed on tvm: ..."), ["status", "why"]),
    (Replay("pass", None, 1e-6), ["status", "max_abs_err", "why"]),
    (Replay("fail", "differs", 1e-6, 0.5, False, "worst"),
     ["status", "max_abs_err", "why", "max_diff_from_stored", "matches_stored", "stored_reason"]),
    (Int8Rounding("pass", 0.01, 0.02, 0.5), ["status", "max_abs_err", "grid", "steps", "why"]),
    (OracleError(1e-7), ["max_abs_err", "worst_index", "worst_got", "worst_expected", "reason"]),
], ids=lambda v: type(v).__name__ if not isinstance(v, list) else "")
def test_each_part_writes_the_keys_the_json_had(value, keys):
    assert list(value.to_dict()) == keys


def test_a_replay_with_stored_outputs_reports_a_zero_distance():
    """0.0 from the stored outputs (the same runtime) is a distance, not an absence."""
    assert Replay("pass", None, 1e-6, 0.0, True).to_dict()["max_diff_from_stored"] == 0.0


@pytest.mark.parametrize("value", [RAN, Float16WhatIf(RAN), Replay("pass"), Int8Rounding("pass", 0.0, 1.0, 0.0),
                                   OracleError(0.0)], ids=lambda v: type(v).__name__)
def test_the_parts_are_frozen(value):
    field = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, None)
