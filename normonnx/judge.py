"""The one judge: how comparisons become a verdict, for every command.

A comparison (`compare.compare`) says pass or fail for one output; a check that could not run is
"error" (not checked), one that does not apply is "skipped". `judge` turns any set of such statuses
into one Verdict, and every command (validate, scan --validate, scan --activations, fix's proof and
whole-model check, sweep records, bench's validation column, normonnx.testing) asks it, so two
commands cannot call one result by two names. The order: a finished comparison that failed decides
(FAIL); else a check that could not run, or nothing that ran, leaves it unproven ("not checked");
only then PASS.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from .errors import ExitCode

STATUSES = ("pass", "fail", "error", "skipped")


@dataclass(frozen=True)
class Verdict:
    status: str  # pass | fail | not checked
    passed: int = 0
    failed: int = 0
    not_checked: int = 0
    skipped: int = 0

    @property
    def ok(self) -> bool | None:
        """True (pass), False (fail) or None (not checked): the flag records and tables carry."""
        return {"pass": True, "fail": False}.get(self.status)

    @property
    def exit_code(self) -> ExitCode:
        return {"pass": ExitCode.PASSED, "fail": ExitCode.CHECK_FAILED}.get(self.status, ExitCode.NOT_CHECKED)

    def counts(self) -> dict[str, int]:
        return {"pass": self.passed, "fail": self.failed, "error": self.not_checked, "skipped": self.skipped}


def judge(statuses: Iterable[str]) -> Verdict:
    """One verdict over the statuses of a set of checks (pass | fail | error | skipped)."""
    c = Counter(statuses)
    unknown = set(c) - set(STATUSES)
    if unknown:
        raise ValueError(f"unknown check status {sorted(unknown)}: a status is one of {STATUSES}")
    if c["fail"]:
        status = "fail"
    elif c["error"] or not c["pass"]:
        status = "not checked"
    else:
        status = "pass"
    return Verdict(status, c["pass"], c["fail"], c["error"], c["skipped"])


def status_of(passed: bool) -> str:
    """The status of one finished comparison."""
    return "pass" if passed else "fail"


def over_layers(flags: Iterable[bool | None]) -> Verdict:
    """The verdict of a model over its layers' flags (True pass, False fail, None not checked): a failed
    layer fails it; layers that could not be checked are listed but do not hide the layers that passed
    (scan's rule); none checked: not checked; no layers at all: nothing to fail (pass)."""
    fl = list(flags)
    if not fl:
        return Verdict("pass")
    v = judge({True: "pass", False: "fail"}.get(x, "skipped") for x in fl)
    return Verdict(v.status, v.passed, v.failed, fl.count(None), 0)
