"""Helpers for users' own test suites: one call that exports, validates, and raises on failure."""
from __future__ import annotations

from pathlib import Path

from ..core.spec import NormSpec
from ..engine.inputs import CheckOptions
from ..engine.runtimes import RunOptions
from ..engine.validate import ValidationResult, validate
from ..exporting.export import ExportOptions


def assert_export_matches(
    spec: NormSpec | None = None,
    *,
    model: str | Path | None = None,
    variant: str = "native",
    opset: int = 18,
    exporter: str = "dynamo",
    runtimes: list[str] | None = None,
    inputs: list[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    dynamic: bool = False,
    allow_not_checked: bool = False,
) -> ValidationResult:
    """Validate and raise AssertionError naming every failing (or not checked) runtime x input with its worst
    element, by the one judge: a check that could not run fails the assertion too, unless allow_not_checked
    (then at least one check must have run and passed).

    Returns the result when everything passed, so a test can assert more on it."""
    result = validate(spec, model=model, export=ExportOptions(variant, opset, exporter, dynamic),
                      run=RunOptions(tuple(runtimes) if runtimes is not None else None),
                      check=CheckOptions(tuple(inputs) if inputs is not None else None, atol, rtol,
                                         allow_not_checked=allow_not_checked))
    return check_result(result)


def check_result(result: ValidationResult) -> ValidationResult:
    """Raise AssertionError unless the one judge (normonnx.core.judge) says the result passed."""
    v = result.verdict
    if v.status == "pass":
        return result
    bad = result.failures()
    if bad:
        lines = [f"{result.case_id}: {v.status.upper()}: {v.summary('checks')}"]
        for r in bad:
            lines.append(f"  {r.runtime} on {r.inputs}: {r.status}: {r.reason or r.error}")
        raise AssertionError("\n".join(lines))
    raise AssertionError(f"{result.case_id}: nothing was checked (every runtime or input suite was skipped)")
