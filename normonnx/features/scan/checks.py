"""What `scan --activations` finds per layer and per model (LayerCheck with its frozen parts: OracleError,
Float16WhatIf, Int8Rounding, Replay; WholeRun; ActivationResult), and the one
way it judges an output: against the float64 oracle of the input it was given (compare.Oracle), at the dtype's
tolerance with the conditioning allowance validate uses."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...core.compare import Oracle
from ...core.errors import ExitCode
from ...core.judge import FAIL, NOT_CHECKED, PASS, judge
from ...graph.patterns import FoundNorm


@dataclass(frozen=True)
class OracleError:
    """An output against the float64 oracle: its largest error, its worst element and, failed, why."""

    max_abs_err: float | None
    worst_index: Any = None
    worst_got: float | None = None
    worst_expected: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        return {"max_abs_err": self.max_abs_err, "worst_index": self.worst_index, "worst_got": self.worst_got,
                "worst_expected": self.worst_expected, "reason": self.reason}


@dataclass(frozen=True)
class Float16Verdict:
    """One float16 form of a layer on its captured inputs (a what-if, never the exit code). max_abs_err None:
    the form could not be made or run, and why says why."""

    status: str
    why: str | None = None
    rule: str | None = None  # the form with float32 statistics: the rule that wrote it
    max_abs_err: float | None = None

    def to_dict(self) -> dict:
        if self.max_abs_err is None:
            return {"status": self.status, "why": self.why}
        return {"status": self.status, "why": self.why, "rule": self.rule, "max_abs_err": self.max_abs_err}


@dataclass(frozen=True)
class Float16WhatIf:
    """The layer in float16 (onnxruntime's converter) and that layer with float32 statistics (fix's rule); the
    second is None when the converter itself failed."""

    converted: Float16Verdict
    fp32_statistics: Float16Verdict | None = None

    def to_dict(self) -> dict:
        out = {"converted": self.converted.to_dict()}
        if self.fp32_statistics is not None:
            out["fp32_statistics"] = self.fp32_statistics.to_dict()
        return out


@dataclass(frozen=True)
class Int8Rounding:
    """A QDQ layer's own output in the model against the oracle, within two steps of its output's int8 grid (a
    what-if, never the exit code)."""

    status: str
    max_abs_err: float
    grid: float
    steps: float | None
    why: str | None = None

    def to_dict(self) -> dict:
        return {"status": self.status, "max_abs_err": self.max_abs_err, "grid": self.grid, "steps": self.steps,
                "why": self.why}


@dataclass(frozen=True)
class Replay:
    """The cut-out layer run on another runtime on the same inputs, against the oracle (max_abs_err None: not run,
    why says why); given the outputs --save-outputs stored, how far this runtime's are from them."""

    status: str
    why: str | None = None
    max_abs_err: float | None = None
    max_diff_from_stored: float | None = None  # None: no stored outputs
    matches_stored: bool | None = None
    stored_reason: str | None = None

    def to_dict(self) -> dict:
        out: dict = {"status": self.status}
        if self.max_abs_err is not None:
            out["max_abs_err"] = self.max_abs_err
        out["why"] = self.why
        if self.max_diff_from_stored is not None:
            out.update(max_diff_from_stored=self.max_diff_from_stored, matches_stored=self.matches_stored,
                       stored_reason=self.stored_reason)
        return out


@dataclass
class LayerCheck:
    """One norm on its captured activations: stats, the float32 verdict, the float16 what-if."""

    index: int
    norm: FoundNorm
    status: str = NOT_CHECKED  # the model's own output vs the oracle (normonnx.core.judge); not checked: why says why
    why: str | None = None
    stats: dict = field(default_factory=dict)  # statistic name -> its largest value over the captured inputs
    error: OracleError | None = None  # the first failing sample's, else the worst
    fp16: Float16WhatIf | None = None
    on: dict[str, Replay] = field(default_factory=dict)  # runtime -> the cut-out layer replayed there
    replayed_only: bool = False  # --load-outputs: the model is not run, only the replays are judged
    source: str | None = None  # the value captured as its input (a QDQ layer's: after its input's Q/DQ pair)
    int8: Int8Rounding | None = None  # a QDQ layer as the model runs it, int8 rounding and all (measured)
    grid: float | None = None  # a QDQ layer's output step: the scale of the last Q/DQ pair it runs through

    @property
    def statuses(self) -> list[str]:
        """The model's own output's status and each replay's: what the exit code is judged over."""
        return ([] if self.replayed_only and self.on else [self.status]) + [v.status for v in self.on.values()]

    def to_dict(self) -> dict:
        # "passed" (True/False/None) is kept beside "status" for documents read by older tools
        ok = lambda st: {PASS: True, FAIL: False}.get(st)  # noqa: E731
        return {"layer": self.norm.nodes[0], "kind": self.norm.kind, "form": self.norm.form, "op": self.norm.op,
                "dtype": self.norm.dtype, "status": self.status, "passed": ok(self.status), "why": self.why,
                "stats": self.stats, "error": self.error.to_dict() if self.error else None,
                "float16": self.fp16.to_dict() if self.fp16 else {}, "int8": self.int8.to_dict() if self.int8 else None,
                "runtimes": {k: {**v.to_dict(), "passed": ok(v.status)} for k, v in self.on.items()}}


@dataclass(frozen=True)
class WholeRun:
    """The whole model on one named runtime against the float32 run on ONNX Runtime (the capture's session), on
    the first WHOLE_SAMPLES inputs: a runtime's precision changes the layers around the norms too."""

    runtime: str
    status: str  # pass | fail | not checked | internal error
    max_abs_diff: float | None = None
    outputs: dict = field(default_factory=dict)  # output name -> outputs.OutputDiff, the worst sample's
    samples: int = 0
    precision: str | None = None
    why: str | None = None
    # False for a quantized (QDQ) model: runtimes round its int8 steps differently (a step of a Q/DQ pair apart is
    # no error), so its whole run is a what-if beside the layers' verdicts, never the exit code
    judged: bool = True

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "status": self.status, "max_abs_diff": self.max_abs_diff,
                "outputs": {k: o.to_dict() for k, o in self.outputs.items()}, "samples": self.samples,
                "precision": self.precision, "why": self.why, "judged": self.judged}


@dataclass
class ActivationResult:
    model: str
    samples: int
    source: str  # "--data FILE" or "seeded inputs"
    inputs: dict  # name -> shape of one sample
    layers: list[LayerCheck]
    runs: int = 0  # model runs (samples x fetch batches)
    provider: str | None = None  # the ORT provider the model ran on
    captured_bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    unidentified: list = field(default_factory=list)  # possible norms not identified: nothing checked there
    allow_not_checked: bool = False  # PASS beside layers that could not be checked
    whole: dict = field(default_factory=dict)  # runtime -> WholeRun: the whole model there against the float32 run

    @property
    def verdict(self):
        """The one judge over every layer (and replay), every whole-model run on a named runtime, and every
        possible norm not identified: no layer at all is nothing checked."""
        return judge([st for lf in self.layers for st in lf.statuses] + [w.status for w in self.whole.values() if w.judged]
                     + [NOT_CHECKED] * len(self.unidentified), self.allow_not_checked)

    @property
    def exit_code(self) -> ExitCode:
        return self.verdict.exit_code

    def to_dict(self) -> dict:
        return {"model": self.model, "provider": self.provider, "samples": self.samples, "source": self.source,
                "inputs": self.inputs,
                "runs": self.runs, "captured_bytes": self.captured_bytes, "seconds": round(self.seconds, 2),
                "notes": self.notes, "layers": [lf.to_dict() for lf in self.layers],
                "whole_model": {k: w.to_dict() for k, w in self.whole.items()}, "exit_code": int(self.exit_code),
                # what the verdict covers (scan --validate judges stress inputs instead)
                "checked": f"the activations of {self.samples} model inputs ({self.source}), not stress inputs"}


def against_oracle(spec, params, x, y, dtype: str, oracle: Oracle | None = None) -> tuple[bool, OracleError]:
    """(passed, the error) of output y of the layer on input x; oracle: one already made for x (the float16
    what-if's two forms share one)."""
    c = (oracle or Oracle.of(spec, params, x)).compare(np.asarray(y), dtype)
    d = c.to_dict()
    return c.passed, OracleError(**{k: d.get(k) for k in ("max_abs_err", "worst_index", "worst_got", "worst_expected",
                                                          "reason")})
