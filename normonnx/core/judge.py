"""The one judge: how checks become a verdict and an exit code, for every command.

A check is one of five things (one word per state, everywhere: tables, JSON, the Python API):

    pass            a finished comparison within tolerance
    fail            a finished comparison outside it
    not checked     the check could not run (a runtime refused the model, a layer cannot be read as a
                    norm, a converter failed), with why
    internal error  not checked because normonnx itself failed: a bug to report (exit 5)
    skipped         the check does not apply (a float16 suite on a float32 model): not counted

`judge` turns any set of checks into one Verdict, and every command (validate, scan --validate,
scan --activations, fix's proof and whole-model check, sweep --strict, diff, bench's validation
column, normonnx.presentation.testing) asks it, so two commands cannot call one situation by two names. The rule:
a failed comparison decides (FAIL, exit 1); else normonnx's own failure (exit 5, never hidden behind
checks that passed); else anything not checked, or nothing checked at all, leaves it unproven (NOT
CHECKED, exit 4); only then PASS. `allow_not_checked` (the CLI's --allow-not-checked) accepts checks
that could not run beside at least one that passed: the verdict is then PASS and still counts them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from .errors import ExitCode

PASS, FAIL, NOT_CHECKED, INTERNAL, SKIPPED = "pass", "fail", "not checked", "internal error", "skipped"
STATUSES = (PASS, FAIL, NOT_CHECKED, INTERNAL, SKIPPED)
# older documents (results.jsonl schema 2, --json before 0.3) said "error" for not checked
LEGACY = {"error": NOT_CHECKED}
EXIT = {PASS: ExitCode.PASSED, FAIL: ExitCode.CHECK_FAILED, NOT_CHECKED: ExitCode.NOT_CHECKED,
        INTERNAL: ExitCode.INTERNAL}
ALLOW_FLAG = "--allow-not-checked"


@dataclass(frozen=True)
class Verdict:
    """The verdict over a set of checks: `status` is pass | fail | not checked | internal error; the
    counts say how many checks were in each state (not_checked includes the internal errors)."""

    status: str
    passed: int = 0
    failed: int = 0
    not_checked: int = 0
    internal: int = 0
    skipped: int = 0
    allowed: bool = False  # PASS with checks not run, accepted by allow_not_checked

    @property
    def ok(self) -> bool | None:
        """True (pass), False (fail) or None (not checked, for whatever reason)."""
        return {PASS: True, FAIL: False}.get(self.status)

    @property
    def exit_code(self) -> ExitCode:
        return EXIT[self.status]

    def counts(self) -> dict[str, int]:
        """Per state; "error" is the same count as "not checked", under its name before 0.3 (JSON stays readable)."""
        return {PASS: self.passed, FAIL: self.failed, NOT_CHECKED: self.not_checked, INTERNAL: self.internal,
                SKIPPED: self.skipped, "error": self.not_checked}

    def summary(self, noun: str = "") -> str:
        """'3 passed, 0 failed, 1 not checked (1 internal error)' -- the counts of a last line."""
        noun = f" {noun}" if noun else ""
        text = f"{self.passed}{noun} passed, {self.failed} failed, {self.not_checked} not checked"
        extra = [f"{self.internal} internal error{'s' if self.internal != 1 else ''}: please report it"] \
            if self.internal else []
        if self.allowed:
            extra.append(f"accepted by {ALLOW_FLAG}")
        return text + (f" ({'; '.join(extra)})" if extra else "")


def status_name(status: str) -> str:
    """A status as the current vocabulary names it (an older document's "error" is "not checked")."""
    return LEGACY.get(status, status)


def judge(statuses: Iterable[str], allow_not_checked: bool = False) -> Verdict:
    """One verdict over the statuses of a set of checks (see the module doc for the rule)."""
    c = Counter(status_name(s) for s in statuses)
    unknown = set(c) - set(STATUSES)
    if unknown:
        raise ValueError(f"unknown check status {sorted(unknown)}: a status is one of {', '.join(STATUSES)}")
    unrun = c[NOT_CHECKED] + c[INTERNAL]
    if c[FAIL]:
        status = FAIL
    elif c[INTERNAL]:
        status = INTERNAL
    elif not c[PASS] or (unrun and not allow_not_checked):
        status = NOT_CHECKED
    else:
        status = PASS
    return Verdict(status, c[PASS], c[FAIL], unrun, c[INTERNAL], c[SKIPPED], allowed=status == PASS and unrun > 0)


def status_of(passed: bool) -> str:
    """The status of one finished comparison."""
    return PASS if passed else FAIL


def internal_reason(e: BaseException, limit: int = 160) -> str:
    """What a row says when normonnx itself failed on it: the exception in one line, and what to do."""
    from .errors import first_line

    text = first_line(e, limit) if str(e).strip() else ""
    return f"internal error ({type(e).__name__}{': ' + text if text else ''}); please report it"


# the order in which exit codes of parts combine into one: a finished failure first, then normonnx's own
# failure, then "not checked", then pass (bad input and unavailable runtimes end a command before this)
_PRECEDENCE = (ExitCode.CHECK_FAILED, ExitCode.INTERNAL, ExitCode.NOT_CHECKED, ExitCode.PASSED)


def combined_exit(*codes: int) -> ExitCode:
    """One exit code for a command whose verdict has parts (scan --validate with --activations)."""
    given = {ExitCode(int(c)) for c in codes}
    return next((c for c in _PRECEDENCE if c in given), ExitCode.PASSED)
