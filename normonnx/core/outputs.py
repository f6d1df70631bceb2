"""The outputs of two runs of one model compared, output by output, through compare.compare: fix compares the
written model with the original, scan --activations each named runtime's run of the whole model with the
float32 run on ONNX Runtime."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .compare import compare, tolerance_for
from .judge import judge, status_of

FLOATS = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class OutputDiff:
    """One output against the other run's: the largest difference (None: a non-float output that differs) and
    whether it is within the tolerance (float outputs: atol/rtol and why not)."""

    dtype: str
    max_abs_diff: float | None
    within: bool
    atol: float | None = None
    rtol: float | None = None
    nonfinite_mismatch: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d if self.atol is not None else {k: d[k] for k in ("dtype", "max_abs_diff", "within")}


@dataclass(frozen=True)
class OutputsDiff:
    status: str  # pass | fail, the judge's over the outputs
    max_abs_diff: float
    outputs: dict[str, OutputDiff]


def compare_outputs(names, expected: list, got: list, layer_dtypes: tuple[str, ...] = ()) -> OutputsDiff:
    """Per output, `got` against `expected` through compare.compare (the one comparator: |got - expected| <=
    atol + rtol*|expected|, non-finite values placed alike, sign included), at the tolerance of the least
    precise of the output's dtype and `layer_dtypes` (fix: a float16 layer computed better differs from the
    original by float16 rounding, which later float32 layers carry to the output). Non-float outputs must be
    equal."""
    outputs, statuses = {}, []
    for name, ya, yb in zip(names, expected, got, strict=False):
        ya, yb = np.asarray(ya), np.asarray(yb)
        dtype = str(ya.dtype)
        if not np.issubdtype(ya.dtype, np.floating) or dtype not in FLOATS:
            same = ya.shape == yb.shape and bool(np.array_equal(ya, yb, equal_nan=np.issubdtype(ya.dtype, np.floating)))
            outputs[name] = OutputDiff(dtype, 0.0 if same else None, same)
            statuses.append(status_of(same))
            continue
        tol = max([tolerance_for(d) for d in (dtype, *layer_dtypes) if d in FLOATS], key=lambda t: t.atol)
        c = compare(yb, ya.astype(np.float64), dtype, tol)
        outputs[name] = OutputDiff(dtype, c.max_abs_err, c.passed, tol.atol, tol.rtol, c.nonfinite_mismatch, c.reason)
        statuses.append(status_of(c.passed))
    v = judge(statuses)
    worst = max((o.max_abs_diff or 0.0 for o in outputs.values()), default=0.0)
    return OutputsDiff(v.status, worst, outputs)
