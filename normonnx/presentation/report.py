"""The sweep report: compatibility matrix, error and latency plots, a recommended graph form per
norm x provider x dtype, and the environment. One self-contained HTML file (images embedded, no
network), or Markdown for a CI job summary."""
from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np

from ..core.compare import DEFAULT_TOLERANCES
from ..core.errors import BadInput
from ..core.judge import judge
from ..core.results import RESULTS, read_meta, read_results
from ..core.tables import DTYPES, kind_order
from ..core.timing import separated
from ..engine.inputs import REGISTRY as SUITES
from ..exporting.variants import REGISTRY as VARIANTS
from .findings import failing_suites, group_failures
from .render import short_version

STATUS_STYLE = {"pass": ("#d7f5d7", "pass"), "fail": ("#f8d0d0", "FAIL"), "mismatch": ("#fde6c4", "mismatch"),
                "unsupported": ("#eeeeee", "n/a"), "not checked": ("#e6d5f5", "not checked"),
                "internal error": ("#e6d5f5", "internal error")}
UNCHECKED = ("not checked", "internal error")
# without timings, prefer the form with the fewest nodes
UNTIMED_PREFERENCE = ("native", "instance-trick", "decomposed")


def sample_order(samples) -> list[str]:
    """Input samples in the input-suite registry's order (a sample's name starts with its suite's,
    e.g. offset-1e3), so a new suite appears in the plots without editing this module."""
    suites = list(SUITES)

    def key(s: str):
        i = next((k for k, n in enumerate(suites) if s == n or s.startswith(n + "-")), len(suites))
        return (i, s)

    return sorted(set(samples), key=key)


def load(out_dir: str | Path, warn: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Records and meta of a sweep folder. A malformed line or a corrupt meta.json is skipped with a
    warning (the report shows what is valid); a folder with no valid record is BadInput."""
    warn = warn or (lambda m: None)
    d = Path(out_dir)
    if not (d / RESULTS).is_file():
        raise BadInput(f"{d} holds no {RESULTS}: run 'normonnx sweep -o {d}' first")
    records, bad = read_results(d / RESULTS)
    for b in bad[:5]:
        warn(f"{d / RESULTS} {b}: skipped")
    if len(bad) > 5:
        warn(f"{d / RESULTS}: {len(bad) - 5} more malformed lines skipped")
    if not records:
        raise BadInput(f"{d / RESULTS} holds no valid result: run 'normonnx sweep -o {d}' first")
    try:
        meta = read_meta(d)
    except BadInput as e:
        warn(f"{e}; the report leaves out the environment")
        meta = {}
    return records, meta


# -- tables --------------------------------------------------------------------------------------
def matrix(records: list[dict]) -> tuple[list[tuple], list[tuple], dict]:
    """(rows: (norm, variant), columns: (opset, exporter, provider, dtype), cell record by (row, col))."""
    cases = [r for r in records if r.get("type", "case") == "case"]
    rows = sorted({(r["norm"], r["variant"]) for r in cases},
                  key=lambda k: (kind_order(k[0]), list(VARIANTS).index(k[1])
                                 if k[1] in VARIANTS else 9))
    dorder = {d: i for i, d in enumerate(DTYPES)}
    cols = sorted({(r["opset"], r["exporter"], r["provider"], r["dtype"]) for r in cases},
                  key=lambda c: (c[0], c[1], c[2], dorder.get(c[3], 9)))
    cells = {((r["norm"], r["variant"]), (r["opset"], r["exporter"], r["provider"], r["dtype"])): r for r in cases}
    return rows, cols, cells


def cell_text(r: dict | None) -> tuple[str, str, str]:
    """(status, short text, hover text) for one matrix cell."""
    if r is None:
        return "unsupported", "", "not in this sweep"
    st = r["status"]
    short = STATUS_STYLE.get(st, ("", st))[1]
    if st == "fail":
        short = f"FAIL {r.get('worst_input') or ''}".strip()
    return st, short, r.get("reason") or r.get("error") or ""


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


TIMING_FIELDS = ("p50_ms", "x_copy", "x_torch")


def bench_rows(records: list[dict]) -> list[dict]:
    """Timed forms of every bench record; a row without numeric timings (a hand-edited or foreign
    file) is left out rather than plotted."""
    out: list[dict] = []
    for r in records:
        if r.get("type") == "bench" and r.get("status") == "timed":
            out.extend(b for b in r.get("records", []) if all(isinstance(b.get(k), str) for k in
                                                              ("form", "norm", "dtype", "provider"))
                       and (b.get("error") or all(_num(b.get(k)) is not None for k in TIMING_FIELDS)))
    return out


def _units(recs: list[dict]) -> dict[tuple[str, int], str]:
    """A form's verdict at each (exporter, opset) it was tried at, by the one judge over its records
    there (an unsupported or mismatched case checks nothing: skipped)."""
    by_unit = defaultdict(list)
    for r in recs:
        by_unit[(r["exporter"], r["opset"])].append(r["status"])
    return {u: judge(s if s in ("pass", "fail", *UNCHECKED) else "skipped" for s in sts).status
            for u, sts in by_unit.items()}


def needs_text(units: dict[tuple[str, int], str]) -> str:
    """What a form needs to pass, from where it passed: 'opset >= 18 (dynamo)' when every opset tried
    from the lowest passing one up passed, else the passing opsets named."""
    parts = []
    for exporter in sorted({e for e, _ in units}, key=lambda e: (e != "dynamo", e)):
        tried = sorted((o, st) for (e, o), st in units.items() if e == exporter and st != "skipped")
        ok = [o for o, st in tried if st == "pass"]
        if not ok:
            continue
        above = [st for o, st in tried if o >= ok[0]]
        when = f"opset >= {ok[0]}" if all(st == "pass" for st in above) else "opset " + ", ".join(map(str, ok))
        parts.append(f"{when} ({exporter})")
    return " or ".join(parts) or "-"


def _fails_otherwise(forms: dict[str, list[dict]], units: dict[str, dict]) -> str:
    """What fails for this norm x runtime x dtype, a few words a form: the failing suites (worst first
    named) and, for a form that passes at another opset, where it fails."""
    out = []
    for v, recs in forms.items():
        bad = [r for r in recs if r["status"] in ("fail", *UNCHECKED)]
        if not bad:
            continue
        where = ""
        if any(st == "pass" for st in units[v].values()):
            where = " at " + ", ".join(f"opset {o}" for o in sorted({r["opset"] for r in bad}))
        if all(r["status"] in UNCHECKED for r in bad):
            out.append(f"{v}{where}: not checked")
            continue
        names, worst, nan = failing_suites(bad)
        shown = ", ".join(names[:2]) + (f" +{len(names) - 2}" if len(names) > 2 else "")
        out.append(f"{v}{where}: {shown} ({'NaN' if nan else f'{worst:.2g}'})")
    return "; ".join(out) or "-"


def recommendations(records: list[dict]) -> list[dict]:
    """Per norm x provider x dtype: the form to ship, the opset and exporter it needs, why, and what
    fails otherwise. A form qualifies where it passed every input suite at some (exporter, opset); the
    fastest such form with a trustworthy timing (sweep --bench) wins, else the preferred one, untimed."""
    cases = [r for r in records if r.get("type", "case") == "case"]
    by_form = defaultdict(list)
    for r in cases:
        by_form[(r["norm"], r["provider"], r["dtype"], r["variant"])].append(r)
    timing = {}
    for b in bench_rows(records):
        if b["form"] not in ("copy", "torch") and not b.get("error"):
            timing[(b["norm"], b["provider"], b["dtype"], b["form"])] = b
    out = []
    for norm, provider, dtype in sorted({k[:3] for k in by_form}, key=lambda k: (kind_order(k[0]), k[1], k[2])):
        forms = {v: by_form[(norm, provider, dtype, v)] for v in VARIANTS if (norm, provider, dtype, v) in by_form}
        units = {v: _units(recs) for v, recs in forms.items()}
        ok = [v for v in forms if any(st == "pass" for st in units[v].values())]
        bad = [v for v in forms if v not in ok and any(r["status"] in ("fail", *UNCHECKED) for r in forms[v])]
        best, why = _pick(ok, {v: timing.get((norm, provider, dtype, v)) for v in ok})
        if best is None:
            why = _least_bad(provider, {v: forms[v] for v in bad})
        out.append({"norm": norm, "provider": provider, "dtype": dtype, "recommended": best,
                    "needs": needs_text(units[best]) if best else "-", "why": why, "passing": ok, "failing": bad,
                    "fails_otherwise": _fails_otherwise(forms, units), "units": units})
    return _mark_portable(out)


def _pick(ok: list[str], timing: dict[str, dict | None]) -> tuple[str | None, str]:
    """(form, why in a few words) among the passing forms, by trustworthy timing, else by preference."""
    if not ok:
        return None, ""
    timed = [v for v in ok if timing[v] is not None and trustworthy(cast(dict, timing[v]))]
    untrusted = [v for v in ok if timing[v] is not None and v not in timed]
    note = f"; timing of {', '.join(untrusted)} not trusted" if untrusted else ""
    if timed:
        found = cast("dict[str, dict]", timing)  # read at timed forms only, each with its timing
        ci = {v: _ci(found[v]) for v in timed}
        fastest = min(timed, key=lambda v: ci[v][0])
        tied = [v for v in timed if v != fastest and not separated(ci[v], ci[fastest])]
        if tied:
            # within each other's CIs: no measurable difference, so the more portable form wins
            best = min([fastest, *tied], key=_preference)
            peers = sorted(v for v in [fastest, *tied] if v != best)
            return best, (f"as fast as {', '.join(peers)} (95% CIs overlap) and simpler; "
                          f"{found[best]['x_copy']:.2f}x copy{note}")
        best = fastest
        t = found[best]
        return best, (f"fastest of {len(ok)} passing: {t['x_copy']:.2f}x copy [{ci[best][1]:.2f}, "
                      f"{ci[best][2]:.2f}], {t['x_torch']:.2f}x torch{note}")
    best = min(ok, key=_preference)
    if len(ok) == 1:
        return best, f"the only form passing every suite{note}"
    peers = [v for v in ok if v != best]
    return best, f"passes every suite, as {', '.join(peers)} {'does' if len(peers) == 1 else 'do'}; fewest nodes{note}"


def _least_bad(provider: str, failing: dict[str, list[dict]]) -> str:
    """Where no form passes on a runtime: say so, with the form that fails fewest suites (then the
    smallest worst error) and what it fails."""
    def score(v):
        names, worst, _ = failing_suites(failing[v])
        return len(names) or math.inf, worst if names else math.inf, list(names)

    if not failing:
        return f"no form passes every suite on {provider}"
    v = min(failing, key=score)
    n, worst, names = score(v)
    if n == math.inf:
        return f"no form passes every suite on {provider}; none of them ran every suite"
    return (f"no form passes every suite on {provider}; least bad: {v}, failing {', '.join(names)} "
            f"(worst error {worst:.2g})")


def _mark_portable(rows: list[dict]) -> list[dict]:
    """With more than one runtime in the sweep: a form that passes on every one of them for a norm x dtype,
    at one same exporter and opset (one file), is `portable`; the recommendation says so."""
    providers = defaultdict(set)
    for r in rows:
        providers[(r["norm"], r["dtype"])].add(r["provider"])
    for r in rows:
        same = [x for x in rows if (x["norm"], x["dtype"]) == (r["norm"], r["dtype"])]
        portable = sorted(v for v in r["passing"] if _common_units(same, v)) if len(same) > 1 else []
        r["portable"] = portable
        if len(same) > 1 and r["recommended"] in portable:
            r["why"] += f"; portable: passes on {', '.join(sorted(providers[(r['norm'], r['dtype'])]))} too"
    return rows


def _common_units(rows: list[dict], form: str) -> dict[tuple[str, int], str]:
    """A form's verdict at each (exporter, opset) over several runtimes' rows, by the one judge over theirs:
    "pass" only where it passed on every one of them."""
    units: dict[tuple[str, int], list[str]] = defaultdict(list)
    for r in rows:
        for u, st in r["units"].get(form, {}).items():
            units[u].append(st)
    out = {u: "pass" if len(sts) == len(rows) and all(st == "pass" for st in sts) else
           "skipped" if all(st == "skipped" for st in sts) else "fail" if "fail" in sts else "not checked"
           for u, sts in units.items()}
    return out if any(st == "pass" for st in out.values()) else {}


# -- the answer: one row per norm x dtype, the form every runtime can take first -------------------------
def runtime_order(records: list[dict]) -> list[str]:
    """The runtimes a sweep ran, in the registry's order (cpu, cuda, reference, ... then plugins), others after."""
    from ..engine.runtimes import REGISTRY as RUNTIMES

    known = list(RUNTIMES)
    ran = {r["provider"] for r in records if r.get("type", "case") == "case"}
    return sorted(ran, key=lambda n: (known.index(n) if n in known else len(known), n))


def judged_runtimes(records: list[dict]) -> list[dict]:
    """Each runtime the sweep ran: its cases by status, its version and the precision it ran each dtype in
    (from the sessions' facts in the records), in runtime_order."""
    out = []
    cases = [r for r in records if r.get("type", "case") == "case"]
    for rt in runtime_order(records):
        mine = [r for r in cases if r["provider"] == rt]
        counts: defaultdict[str, int] = defaultdict(int)
        for r in mine:
            counts[r["status"]] += 1
        facts: dict = {"version": None, "precision": {}}
        for r in mine:
            f = cast(dict, r.get("runtime_facts")) if isinstance(r.get("runtime_facts"), dict) else {}  # just checked
            if f.get("version") and not facts["version"]:
                facts["version"] = str(f["version"])
            if f.get("precision"):
                facts["precision"].setdefault(r["dtype"], str(f["precision"]))
        facts["precision"] = {d: facts["precision"][d] for d in sorted(facts["precision"], key=_dtype_key)}
        out.append({"runtime": rt, "counts": dict(counts), **facts,
                    "checked": counts["pass"] + counts["fail"] > 0})
    return out


def ship_answer(records: list[dict]) -> list[dict]:
    """Per norm x dtype: the form to lead with — one that passes every suite on every runtime that checked
    anything, at one same exporter and opset (`everywhere` True), else the form that passes on the most of
    them — and per runtime the answer where it differs from that form:
    {"norm", "dtype", "lead", "everywhere", "needs", "passes_on", "misses": {runtime: why not},
     "not_checked": [...], "cells": {runtime: {"kind", "text", "title"}}}. A cell's kind: "lead" (the lead
    form passes here and is this runtime's own pick), "also" (it passes here; alone, this runtime would
    take another: text names it), "other" (it does not pass here: this runtime's own pick), "none" (no form
    passes here), "unchecked" (nothing could be checked here), "absent" (not in the sweep)."""
    rows = recommendations(records)
    order = runtime_order(records)
    out = []
    for norm, dtype in sorted({(r["norm"], r["dtype"]) for r in rows},
                              key=lambda k: (kind_order(k[0]), _dtype_key(k[1]))):
        same = {r["provider"]: r for r in rows if (r["norm"], r["dtype"]) == (norm, dtype)}
        judged = [rt for rt in order if rt in same and _checked(same[rt])]
        unchecked = [rt for rt in order if rt in same and rt not in judged]
        forms = list(dict.fromkeys(v for rt in judged for v in same[rt]["passing"]))
        # a form passes "on" a runtime at the units where it passed there; everywhere: one unit passing on all
        on = {v: [rt for rt in judged if v in same[rt]["passing"]] for v in forms}
        everywhere = [v for v in forms if len(on[v]) == len(judged) and _common_units([same[rt] for rt in judged], v)]
        picks: defaultdict[str | None, int] = defaultdict(int)  # a runtime with no passing form picks None
        for rt in judged:
            picks[same[rt]["recommended"]] += 1
        # the form most runtimes would pick alone, then the simplest
        rank = lambda v, picks=picks: (-picks[v], _preference(v), v)  # noqa: E731
        if everywhere:
            lead = min(everywhere, key=rank)
            needs = needs_text(_common_units([same[rt] for rt in judged], lead))
        elif forms:
            lead = min(forms, key=lambda v: (-len(on[v]), *rank(v)))
            common = _common_units([same[rt] for rt in on[lead]], lead)
            # passing on several runtimes, but at no one exporter and opset: what each needs
            needs = needs_text(common) if common else "; ".join(f"{rt}: {needs_text(same[rt]['units'][lead])}"
                                                                for rt in on[lead])
        else:
            lead, needs = None, "-"
        misses = {rt: _why_not(same[rt], lead) for rt in judged if lead is None or rt not in on.get(lead, [])}
        cells = {rt: _cell(same.get(rt), lead, lead is not None and rt in on.get(lead, []), needs, rt in judged)
                 for rt in order}
        out.append({"norm": norm, "dtype": dtype, "lead": lead, "everywhere": bool(everywhere), "needs": needs,
                    "passes_on": on.get(lead, []) if lead else [], "judged": judged, "misses": misses,
                    "not_checked": unchecked, "cells": cells})
    return out


def _dtype_key(d: str) -> int:
    return list(DTYPES).index(d) if d in DTYPES else len(DTYPES)


def _checked(row: dict) -> bool:
    """Whether anything finished a comparison for this norm x runtime x dtype (a pass or a fail)."""
    return any(st in ("pass", "fail") for units in row["units"].values() for st in units.values())


def _why_not(row: dict, form: str | None) -> str:
    """Why `form` is not shipped on this runtime, in a few words: what it fails there, or that it was not checked."""
    if form is None:
        return row["why"]
    for part in row["fails_otherwise"].split("; "):
        if part.startswith(form + ":") or part.startswith(form + " at "):
            return part
    return f"{form}: not in this sweep here"


def _cell(row: dict | None, lead: str | None, lead_passes: bool, needs: str, judged: bool) -> dict:
    """One runtime's answer for one norm x dtype, next to the lead form (see ship_answer)."""
    if row is None:
        return {"kind": "absent", "text": "", "title": "not in this sweep"}
    if not judged:
        return {"kind": "unchecked", "text": "not checked", "title": row["fails_otherwise"]}
    own = row["recommended"]
    if lead_passes:  # the lead form passes here: no exception to show (what this runtime alone would take: hover)
        if own == lead:
            return {"kind": "lead", "text": "✓", "title": f"{lead} passes every suite here; {row['why']}"}
        return {"kind": "also", "text": "✓", "title": f"{lead} passes every suite here; alone, this runtime "
                f"would take {own}: {row['why']}"}
    if own is None:
        least = row["why"].split("least bad: ", 1)[1].split(",")[0] if "least bad: " in row["why"] else None
        return {"kind": "none", "text": "none" + (f" (least bad: {least})" if least else ""), "title": row["why"]}
    text = own + (f", {row['needs']}" if row["needs"] != needs else "")
    return {"kind": "other", "text": text, "title": f"{row['why']}; {_why_not(row, lead) if lead else ''}"}


def _preference(v: str) -> int:
    return UNTIMED_PREFERENCE.index(v) if v in UNTIMED_PREFERENCE else len(UNTIMED_PREFERENCE)


def _ci(b: dict) -> tuple[float, float, float]:
    x = _num(b.get("x_copy"))
    lo, hi = _num(b.get("ci_low")), _num(b.get("ci_high"))
    assert x is not None  # bench_rows keeps a row without an error only with a numeric x_copy
    return (x, lo if lo is not None else x, hi if hi is not None else x)


def trustworthy(b: dict) -> bool:
    """A timing row stable across its rounds and not faster than a copy (normonnx.core.timing)."""
    return b.get("stable") is not False and not b.get("implausible")


def timing_banner(records: list[dict]) -> str | None:
    """One sentence when any timing row is unstable or faster than a copy, else None."""
    bad = [b for b in bench_rows(records) if not b.get("error") and not trustworthy(b)]
    if not bad:
        return None
    names = ", ".join(f"{b['norm']} {b['dtype']} {b['form']}" for b in bad[:6]) + (" ..." if len(bad) > 6 else "")
    return (f"{len(bad)} timing rows were unstable across rounds or faster than a copy ({names}); no recommendation "
            "rests on them. Rerun the timings on an idle machine (sweep --bench --force into a new folder).")


# -- plots ---------------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def error_plot(records: list[dict]) -> str | None:
    """Worst max-abs error per input suite, log scale, one panel per norm, one line per variant x dtype.
    Non-finite mismatches (NaN where the oracle is finite) are drawn as x at the top, errors of exactly
    zero as open triangles below the smallest error (a log axis has no 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [r for r in records if r.get("type", "case") == "case" and r.get("inputs")]
    if not cases:
        return None
    norms = sorted({r["norm"] for r in cases}, key=kind_order)
    ncols = min(2, len(norms))
    nrows = -(-len(norms) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.2 * ncols, 3.5 * nrows), squeeze=False)
    for ax in axes.flat[len(norms):]:
        ax.axis("off")
    nan_level = 1e3
    for ax, norm in zip(axes.flat, norms, strict=False):
        series: defaultdict[str, dict[str, float]] = defaultdict(dict)
        for r in cases:
            if r["norm"] != norm:
                continue
            for sample, v in r["inputs"].items():
                if sample == "*" or not isinstance(v, dict) or v.get("status") == "skipped":
                    continue
                err = nan_level if v.get("nonfinite_mismatch") else (_num(v.get("max_abs_err")) or 0.0)
                key = f"{r['variant']} {r['dtype']}"
                series[key][sample] = max(series[key].get(sample, 0.0), err)
        samples = sample_order(s for d in series.values() for s in d)
        positive = [e for d in series.values() for e in d.values() if e > 0]
        zero_level = min(positive) / 10 if positive else 1e-9  # exactly 0 has no place on a log axis
        for key, d in sorted(series.items()):
            xs = [i for i, s in enumerate(samples) if s in d]
            ys = [d[samples[i]] for i in xs]
            line = ax.plot(xs, [y if y > 0 else np.nan for y in ys], marker="o", ms=3, lw=1, label=key)[0]
            zero_x = [x for x, y in zip(xs, ys, strict=True) if y == 0]
            ax.plot(zero_x, [zero_level] * len(zero_x), "v", ms=6, mfc="none", color=line.get_color())
            nan_x = [x for x, y in zip(xs, ys, strict=True) if y >= nan_level]
            ax.plot(nan_x, [nan_level] * len(nan_x), "kx", ms=7)
        # the pass line: atol at |y| ~ 0 (the rule adds rtol*|ref|, so a unit-scale output may err up to about twice)
        for dtype in sorted({r["dtype"] for r in cases if r["norm"] == norm}):
            tol = DEFAULT_TOLERANCES.get(dtype)
            if tol:
                ax.axhline(tol.atol, color="#c0392b", lw=0.9, ls="--")
                ax.annotate(f"{DTYPE_SHORT.get(dtype, dtype)} tolerance", (1.0, tol.atol), xycoords=("axes fraction", "data"),
                            ha="right", va="bottom", fontsize=6, color="#c0392b")
        ax.set_yscale("log")
        ax.set_xticks(range(len(samples)))
        ax.set_xticklabels(samples, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{norm}: worst |error| vs float64 oracle", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # outside the data
        ax.set_ylabel("max abs error", fontsize=7)
    fig.text(0.01, -0.01, "x at the top: NaN/Inf where the oracle is finite; open triangle at the bottom: exactly 0; "
             "dashed red: the dtype's atol (the rule adds rtol x |y|, so an error above it passes where |y| > 1)", fontsize=7)
    fig.tight_layout()
    return _png(fig)


def latency_plot(records: list[dict]) -> str | None:
    """Ratios to the copy and to torch per form, log axis, 95% CI whiskers, 1x reference lines;
    green: the fastest trustworthy passing variant, hatched: an untrusted timing (unstable or faster
    than a copy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [b for b in bench_rows(records) if not b.get("error")]
    if not rows:
        return None
    groups = sorted({(b["norm"], b["dtype"], b["provider"]) for b in rows},
                    key=lambda g: (kind_order(g[0]), g[1], g[2]))
    shown = [b for g in groups for b in rows if (b["norm"], b["dtype"], b["provider"]) == g and b["form"] != "copy"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * len(shown) + 1.6), sharey=True)
    labels = [f"{b['norm']} {b['dtype']} {b['provider']}: {b['form']}" for b in shown]
    colors = ["#888888" if b["form"] == "torch" else ("#2a9d2a" if b.get("fastest") else "#4a78c2") for b in shown]
    y = np.arange(len(shown))
    for ax, key, lo, hi, title in ((axes[0], "x_copy", "ci_low", "ci_high", "x copy (1 = a copy: the memory floor)"),
                                   (axes[1], "x_torch", "x_torch_ci_low", "x_torch_ci_high", "x torch eager")):
        vals = np.array([b[key] for b in shown], dtype=float)
        los = np.array([_num(b.get(lo)) or b[key] for b in shown], dtype=float)
        his = np.array([_num(b.get(hi)) or b[key] for b in shown], dtype=float)
        bars = ax.barh(y, vals, color=colors, xerr=[vals - los, his - vals], error_kw={"lw": 0.8, "capsize": 2})
        for bar, b in zip(bars, shown, strict=True):
            if not trustworthy(b):
                bar.set_hatch("///")
                bar.set_edgecolor("#c0392b")
        ax.axvline(1.0, color="k", lw=1.0, ls="--")
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=9)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].invert_yaxis()
    return _png(fig)


# -- documents -----------------------------------------------------------------------------------
def _col_label(c) -> str:
    return "<br>".join(html.escape(str(v)) for v in (f"op{c[0]}", *c[1:]))


def summary_counts(records: list[dict]) -> dict:
    c: defaultdict[str, int] = defaultdict(int)
    for r in records:
        if r.get("type", "case") == "case":
            c[r["status"]] += 1
    return dict(c)


def visible_matrix(records: list[dict]) -> tuple[list[tuple], list[tuple], dict]:
    """matrix() less the rows and columns where no case ran (every cell n/a), which say nothing."""
    rows, cols, cells = matrix(records)
    ran = lambda r: r is not None and r["status"] != "unsupported"  # noqa: E731
    rows = [row for row in rows if any(ran(cells.get((row, c))) for c in cols)]
    cols = [c for c in cols if any(ran(cells.get((row, c))) for row in rows)]
    return rows, cols, cells


DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
CSS = ("body{font-family:system-ui,sans-serif;margin:1em 1.5em;color:#222;max-width:1360px}"
       "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 5px;text-align:center}"
       "th.row,td.l{text-align:left}h1{font-size:1.5em;margin:.3em 0}h2{margin-top:1.4em}"
       ".legend span{padding:2px 8px;margin-right:6px}img{max-width:100%}code{background:#f4f4f4;padding:1px 3px}"
       "table.m td,table.m th{font-size:10px;padding:2px 3px}table.m td{max-width:64px;overflow-wrap:anywhere}"
       "#ship td{vertical-align:top}#per-runtime td{vertical-align:top}"
       "#per-runtime td.why,#per-runtime td.else{font-size:11px;max-width:380px}"
       ".k-lead,.k-also{background:#d7f5d7}.k-other{background:#fde6c4}.k-none{background:#f8d0d0}"
       ".k-unchecked{background:#e6d5f5}#judged td,#judged th{font-size:11px}"
       "summary{cursor:pointer}.muted{color:#666;font-size:12px}")


def _lead_text(a: dict) -> str:
    """The lead form of a ship_answer row and how far it goes: 'shifted', 'shifted on 6 of 7', 'none'."""
    if a["lead"] is None:
        return "none"
    n, k = len(a["judged"]), len(a["passes_on"])
    if a["everywhere"]:
        return a["lead"]
    return f"{a['lead']} on {k} of {n}" + (", at no one opset" if k > 1 and ": " in a["needs"] else "")


def judged_sentence(records: list[dict]) -> str:
    """Which runtimes the answer judged, in one sentence (and, for one runtime, how to judge more)."""
    rts = judged_runtimes(records)
    names = ", ".join(r["runtime"] for r in rts)
    text = f"Judged on {len(rts)} runtime{'s' if len(rts) != 1 else ''}: {names}."
    idle = [r["runtime"] for r in rts if not r["checked"]]
    if idle:
        text += f" Nothing could be checked on {', '.join(idle)}."
    if len(rts) == 1:
        text += (" Other runtimes can give other answers: normonnx sweep --runtimes all judges every ONNX runtime "
                 "installed here (normonnx list names them).")
    return text


def ship_legend(answers: list[dict]) -> str:
    """What the answer table's words mean (fewer of them for a sweep of one runtime)."""
    if max((len(a["judged"]) for a in answers), default=0) <= 1:
        return ("ship: the form that passed every suite, at the exporter and opset in needs; ✓: it passes there; "
                "none: no form passes there (the least bad named). Why, and what the other forms fail: below, per "
                "runtime.")
    return ("ship: the form that passes every suite on every runtime that checked it, at the exporter and opset in "
            "needs (one file for all); where none does, the form that passes on the most, and on how many. Per "
            "runtime: ✓ it passes there; a form name: that runtime's own answer, where the lead form does not pass; "
            "none: no form passes there (the least bad named); not checked: nothing could be checked there. What "
            "each runtime alone would take, and why: below, per runtime.")


def _precision_text(r: dict) -> str:
    precs: dict[str, list[str]] = defaultdict(list)
    for d, p in r["precision"].items():
        precs[p].append(d)
    if not precs:
        return "not recorded"
    if len(precs) == 1:
        return next(iter(precs))
    return "; ".join(f"{', '.join(DTYPE_SHORT.get(d, d) for d in ds)}: {p}" for p, ds in precs.items())


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _ship_table(records: list[dict]) -> str:
    """The answer, one row per norm x dtype: the lead form and what it needs, then a column per runtime."""
    e = html.escape
    answers = ship_answer(records)
    order = runtime_order(records)
    out = ["<table id='ship'><tr><th>norm</th><th>dtype</th><th>ship</th><th>needs</th>"
           + "".join(f"<th>{e(rt)}</th>" for rt in order) + "</tr>"]
    for a in answers:
        cells = "".join(f"<td class='k-{c['kind']}' title='{e(c['title'])}'>{e(c['text'])}</td>"
                        for c in (a["cells"][rt] for rt in order))
        out.append(f"<tr><td>{e(a['norm'])}</td><td>{e(DTYPE_SHORT.get(a['dtype'], a['dtype']))}</td>"
                   f"<td class='l'><b>{e(_lead_text(a))}</b></td><td class='l'>{e(a['needs'])}</td>{cells}</tr>")
    return "\n".join(out) + "</table>"


def _judged_html(records: list[dict]) -> str:
    e = html.escape
    rows = "".join(f"<tr><th class='row'>{e(r['runtime'])}</th><td class='l' title='{e(r['version'] or '')}'>"
                   f"{e(short_version(r['version']) if r['version'] else '-')}</td>"
                   f"<td class='l'>{e(_precision_text(r))}</td><td class='l'>{e(_counts_text(r['counts']))}</td></tr>"
                   for r in judged_runtimes(records))
    return (f"<p>{e(judged_sentence(records))}</p><table id='judged'><tr><th>runtime</th><th>version</th>"
            f"<th>precision it ran in</th><th>cases</th></tr>{rows}</table>")


def _per_runtime_table(recs: list[dict]) -> str:
    e = html.escape
    out = ["<table id='per-runtime'><tr><th>norm</th><th>dtype</th><th>runtime</th><th>ship</th><th>needs</th>"
           "<th>why</th><th>what fails otherwise</th></tr>"]
    for r in recs:
        out.append(f"<tr><td>{e(r['norm'])}</td><td>{e(r['dtype'])}</td><td>{e(r['provider'])}</td>"
                   f"<td><b>{e(r['recommended'] or 'none')}</b></td><td class='l'>{e(r['needs'])}</td>"
                   f"<td class='l why'>{e(r['why'])}</td><td class='l else'>{e(r['fails_otherwise'])}</td></tr>")
    return "\n".join(out) + "</table>"


def _findings_table(records: list[dict]) -> str:
    e = html.escape
    found = group_failures(records)
    if not found:
        return "<p>No case failed.</p>"
    out = [f"<p class='muted'>{sum(len(f.cases) for f in found)} cases, {len(found)} distinct causes; "
           "open a row for its cases.</p><table><tr><th>status</th><th>finding</th><th>cases</th></tr>"]
    for f in found:
        example = f"<br><span class='muted'>e.g. {e(f.example[:300])}</span>" if f.example and f.example != f.what else ""
        out.append(f"<tr><td>{e(f.status)}</td><td class='l'>{e(f.what)}{example}</td><td class='l'><details>"
                   f"<summary>{len(f.cases)}</summary>{'<br>'.join(e(c) for c in f.cases)}</details></td></tr>")
    return "\n".join(out) + "</table>"


def _matrix_table(records: list[dict]) -> str:
    e = html.escape
    rows, cols, cells = visible_matrix(records)
    head = "".join(f"<th>op{c[0]}<br>{e(c[1])}<br>{e(c[2])}<br>{e(DTYPE_SHORT.get(c[3], c[3]))}</th>" for c in cols)
    out = ["<p class='legend'>" + "".join(f"<span style='background:{c}'>{e(t)}</span>" for c, t in STATUS_STYLE.values())
           + " Hover a cell for the reason; FAIL names the worst input suite; blank: not tried (the default "
           "sweep tries a form only at the opsets where its ops change; --full tries every one). Rows and columns "
           "where nothing ran are left out.</p>", f"<table class='m'><tr><th class='row'>norm / form</th>{head}</tr>"]
    for row in rows:
        tds = []
        for col in cols:
            if (row, col) not in cells:  # not tried: the quick matrix tries a form only where its ops change
                tds.append("<td title='not tried in this sweep'></td>")
                continue
            st, short, hover = cell_text(cells.get((row, col)))
            text = e(short).replace(" ", "<br>", 1) if st == "fail" else e(short)
            tds.append(f"<td style='background:{STATUS_STYLE.get(st, ('#fff',))[0]}' title='{e(hover)}'>{text}</td>")
        out.append(f"<tr><th class='row'>{e(row[0])} / {e(row[1])}</th>{''.join(tds)}</tr>")
    return "\n".join(out) + "</table>"


def render_html(records: list[dict], meta: dict) -> str:
    """The report: what to ship first (it answers the question by itself), then the evidence."""
    e = html.escape
    counts = summary_counts(records)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
             f"<title>normonnx report</title><style>{CSS}</style></head><body>",
             "<h1>normonnx compatibility report</h1><p class='muted'>"
             + ", ".join(f"<b>{int(v)}</b> {e(k)}" for k, v in sorted(counts.items()))
             + " cases; every output judged against a float64 oracle on stress inputs (offsets, zero variance, "
             "large rows, float16 range).</p>"]
    banner = timing_banner(records)
    if banner:
        parts.append(f"<p style='background:#fde6c4;padding:8px;border:1px solid #e0a040'><b>Timings not "
                     f"trusted.</b> {e(banner)}</p>")
    untimed = "" if bench_rows(records) else (" No timings in this sweep: among passing forms the one with the fewest "
                                              "nodes is named; <code>sweep --bench</code> ranks them by speed.")
    parts.append("<h2>What to ship</h2>")
    parts.append(_ship_table(records))
    parts.append(f"<p class='muted'>{e(ship_legend(ship_answer(records)))}{untimed} Hover a cell for why.</p>")
    parts.append(_judged_html(records))
    one = len(runtime_order(records)) <= 1  # one runtime: its why is the answer's, shown open
    parts.append(f"<details{' open' if one else ''}><summary>Per runtime: why each form, and what the other forms "
                 "fail</summary>"
                 + _per_runtime_table(recommendations(records)) + "</details>")
    parts.append("<h2>Failures, by finding</h2>")
    parts.append(_findings_table(records))
    parts.append("<h2>Compatibility matrix</h2>")
    parts.append(_matrix_table(records))
    img = error_plot(records)
    parts.append("<h2>Errors by input suite</h2>")
    parts.append(f"<img alt='error plot' src='data:image/png;base64,{img}'>" if img else "<p>No validated cases.</p>")
    parts.append("<h2>Latency</h2>")
    lat = latency_plot(records)
    parts.append("<p>Each norm at its standard shape, timed with IOBinding next to PyTorch eager (grey) and "
                 "a copy of the same tensor (x copy = 1, the memory-bandwidth floor), all forms in interleaved "
                 "rounds; bars are the median of each round's own ratio, whiskers its 95% interval, log axis. "
                 "Green: the fastest variant that passed validation with a trustworthy timing; hatched red: a "
                 "timing that is unstable or faster than a copy, never used for a recommendation.</p>" if lat else "")
    parts.append(f"<img alt='latency plot' src='data:image/png;base64,{lat}'>" if lat else
                 "<p>No timings in this sweep: run <code>normonnx sweep --bench</code>.</p>")
    parts.append("<h2>Environment</h2><table>")
    env = {**meta.get("versions", {}), **{f"machine.{k}": v for k, v in meta.get("machine", {}).items()},
           "shard": meta.get("shard"), "matrix": json.dumps(meta.get("matrix"))}
    for k, v in env.items():
        parts.append(f"<tr><th class='row'>{e(str(k))}</th><td class='l'>{e(str(v))}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def _md(v) -> str:
    """A string from a results file, safe in a Markdown table cell (GitHub renders inline HTML)."""
    return html.escape(str(v)).replace("|", "\\|").replace("\n", " ")


def render_markdown(records: list[dict], meta: dict) -> str:
    rows, cols, cells = visible_matrix(records)
    icon = {"pass": "✅", "fail": "❌", "mismatch": "⚠️", "unsupported": "·", "not checked": "❔", "internal error": "💥"}
    banner = timing_banner(records)
    lines = ["# normonnx compatibility report", "",
             ", ".join(f"**{v}** {k}" for k, v in sorted(summary_counts(records).items())) + " cases.", "",
             *([f"> **Timings not trusted.** {_md(banner)}", ""] if banner else []),
             "## What to ship", ""]
    answers, order = ship_answer(records), runtime_order(records)
    lines += ["| norm | dtype | ship | needs | " + " | ".join(_md(rt) for rt in order) + " |",
              "|---|---|---|---|" + "---|" * len(order)]
    for a in answers:
        lines.append(f"| {_md(a['norm'])} | {_md(DTYPE_SHORT.get(a['dtype'], a['dtype']))} | "
                     f"**{_md(_lead_text(a))}** | "
                     f"{_md(a['needs'])} | " + " | ".join(_md(a["cells"][rt]["text"]) for rt in order) + " |")
    lines += ["", _md(ship_legend(answers)) + ("" if bench_rows(records) else
                                              " No timings in this sweep: among passing forms the one with the "
                                              "fewest nodes is named; `sweep --bench` ranks them by speed."),
              "", _md(judged_sentence(records)), "",
              "| runtime | version | precision it ran in | cases |", "|---|---|---|---|"]
    lines += [f"| {_md(r['runtime'])} | {_md(short_version(r['version']) if r['version'] else '-')} | "
              f"{_md(_precision_text(r))} | "
              f"{_md(_counts_text(r['counts']))} |" for r in judged_runtimes(records)]
    lines += ["", f"<details{' open' if len(order) <= 1 else ''}><summary>Per runtime: why each form, and what the "
              "other forms fail</summary>", "",
              "| norm | dtype | runtime | ship | needs | why | what fails otherwise |", "|---|---|---|---|---|---|---|"]
    for rec in recommendations(records):
        lines.append(f"| {_md(rec['norm'])} | {_md(rec['dtype'])} | {_md(rec['provider'])} | "
                     f"**{_md(rec['recommended'] or 'none')}** | {_md(rec['needs'])} | {_md(rec['why'])} | "
                     f"{_md(rec['fails_otherwise'])} |")
    lines += ["", "</details>"]
    found = group_failures(records)
    if found:
        lines += ["", "## Failures, by finding", "", "| status | finding | cases |", "|---|---|---:|"]
        lines += [f"| {_md(f.status)} | {_md(f.what)} | {len(f.cases)} |" for f in found]
    lines += ["", "## Compatibility matrix", "",
              "✅ pass · ❌ fail (worst input suite) · ⚠️ exporter wrote another opset/op set · `·` unsupported · 💥 error",
              "", "| norm / variant | " + " | ".join(_md(f"op{c[0]} {c[1]} {c[2]} {c[3]}") for c in cols) + " |",
              "|---|" + "---|" * len(cols)]
    for row in rows:
        out = []
        for col in cols:
            r: Any = cells.get((row, col))  # a record, or None where not tried: st says which
            st = r["status"] if r else "unsupported"
            out.append(icon.get(st, _md(st)) + (f" {_md(r.get('worst_input'))}" if st == "fail" and r.get("worst_input")
                                                else ""))
        lines.append(f"| {_md(row[0])} / {_md(row[1])} | " + " | ".join(out) + " |")
    v = meta.get("versions", {})
    m = meta.get("machine", {})
    lines += ["", "## Environment", "", _md(", ".join(f"{k} {val}" for k, val in v.items())
              + f"; {m.get('cpu', '?')} ({m.get('cores', '?')} cores)" + (f", GPU {m['gpu']}" if m.get("gpu") else ""))]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, output: str | Path, warn: Callable[[str], None] | None = None) -> Path:
    """Write OUT's report to `output` (.html, or .md for Markdown)."""
    from ..core.safeio import atomic_write, check_output_path

    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm", ".md"):
        raise BadInput(f"report output {output} must end in .html or .md")
    check_output_path(output, "report")
    records, meta = load(out_dir, warn)
    text = render_markdown(records, meta) if output.suffix.lower() == ".md" else render_html(records, meta)
    atomic_write(output, text.encode("utf-8"))
    return output
