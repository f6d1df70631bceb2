"""A sweep's failures grouped by finding: one row per distinct cause, with the cases it covers.

A matrix repeats one cause many times (an exporter that keeps opset 18 whatever it is asked, a form
whose variance cancels at every opset and with both exporters), so the report lists causes, not
cases. A failing case's cause is its form, runtime and the input suites it fails; a mismatch's or an
error's is its reason with the numbers taken out.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

_NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")


@dataclass(frozen=True)
class Finding:
    status: str  # fail, mismatch or error
    what: str  # the cause, in a sentence
    example: str  # one case's own reason, numbers and all
    cases: tuple[str, ...]


def failing_suites(recs: list[dict]) -> tuple[tuple[str, ...], float, bool]:
    """(the input suites these records fail, the worst error among them, any NaN/Inf where the oracle
    is finite)."""
    fails = [(n, s) for r in recs for n, s in (r.get("inputs") or {}).items()
             if isinstance(s, dict) and s.get("status") == "fail"]
    worst = max((s["max_abs_err"] for _, s in fails if isinstance(s.get("max_abs_err"), (int, float))), default=0.0)
    return tuple(sorted({n for n, _ in fails})), worst, any(s.get("nonfinite_mismatch") for _, s in fails)


def _key(r: dict) -> tuple:
    if r["status"] == "fail":
        return ("fail", r["norm"], r["variant"], r["provider"], r["dtype"], failing_suites([r])[0])
    text = r.get("reason") or r.get("error") or ""
    return (r["status"], r.get("error_type") or "", _NUMBER.sub("N", text.splitlines()[0] if text else ""))


def group_failures(records: list[dict]) -> list[Finding]:
    """Failing, mismatched and erroring cases as findings, the most common first."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("type", "case") == "case" and r.get("status") in ("fail", "mismatch", "not checked", "internal error"):
            groups[_key(r)].append(r)
    out = []
    for key, recs in groups.items():
        first = recs[0]
        if key[0] == "fail":
            _, norm, variant, provider, dtype, names = key
            _, worst, nan = failing_suites(recs)
            at = sorted({(r["exporter"], r["opset"]) for r in recs})
            what = (f"{norm} {variant} {dtype} on {provider} fails {', '.join(names) or 'a suite'} "
                    f"({'NaN/Inf where the oracle is finite' if nan else f'worst error {worst:.2g}'}) at "
                    + ", ".join(f"opset {o} ({e})" for e, o in at))
        else:
            what = _first(first) or first["status"]
            if len(recs) > 1:
                what = _NUMBER.sub("N", what) if len({_first(r) for r in recs}) > 1 else what
        out.append(Finding(key[0], what, _first(first), tuple(r["case_id"] for r in recs)))
    return sorted(out, key=lambda f: (-len(f.cases), f.status, f.what))


def _first(r: dict) -> str:
    text = r.get("reason") or r.get("error") or ""
    return text.splitlines()[0] if text else ""
