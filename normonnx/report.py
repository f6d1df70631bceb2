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
from typing import Callable

import numpy as np

from .errors import BadInput
from .inputs import REGISTRY as SUITES
from .judge import judge
from .results import RESULTS, read_meta, read_results
from .tables import DTYPES, kind_order
from .timing import separated
from .variants import REGISTRY as VARIANTS

STATUS_STYLE = {"pass": ("#d7f5d7", "pass"), "fail": ("#f8d0d0", "FAIL"), "mismatch": ("#fde6c4", "mismatch"),
                "unsupported": ("#eeeeee", "n/a"), "error": ("#e6d5f5", "error")}
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
    out = []
    for r in records:
        if r.get("type") == "bench" and r.get("status") == "timed":
            out.extend(b for b in r.get("records", []) if all(isinstance(b.get(k), str) for k in
                                                              ("form", "norm", "dtype", "provider"))
                       and (b.get("error") or all(_num(b.get(k)) is not None for k in TIMING_FIELDS)))
    return out


def recommendations(records: list[dict]) -> list[dict]:
    """Per norm x provider x dtype: the fastest variant that passed every input suite in every case
    it was tested in (timed by `sweep --bench`); without timings, the passing variants, untimed."""
    cases = [r for r in records if r.get("type", "case") == "case"]
    status, by_form = defaultdict(list), defaultdict(list)
    for r in cases:
        status[(r["norm"], r["provider"], r["dtype"], r["variant"])].append(r["status"])
        by_form[(r["norm"], r["provider"], r["dtype"], r["variant"])].append(r)
    timing = {}
    for b in bench_rows(records):
        if b["form"] not in ("copy", "torch") and not b.get("error"):
            timing[(b["norm"], b["provider"], b["dtype"], b["form"])] = b
    out = []
    for norm, provider, dtype in sorted({(k[0], k[1], k[2]) for k in status},
                                        key=lambda k: (kind_order(k[0]), k[1], k[2])):
        ok, bad = [], []
        for v in VARIANTS:
            sts = status.get((norm, provider, dtype, v))
            if not sts:
                continue
            # the one judge over the form's records (a mismatch or an unsupported case checks nothing)
            verdict = judge(s if s in ("pass", "fail", "error") else "skipped" for s in sts)
            if verdict.status == "pass":
                ok.append(v)
            elif verdict.status == "fail" or "error" in sts:
                bad.append(v)
        # a timing counts only if it is trustworthy: stable across rounds and not faster than a copy
        timed = [v for v in ok if (norm, provider, dtype, v) in timing and trustworthy(timing[(norm, provider, dtype, v)])]
        untrusted = [v for v in ok if (norm, provider, dtype, v) in timing and v not in timed]
        if timed:
            ci = {v: _ci(timing[(norm, provider, dtype, v)]) for v in timed}
            best = min(timed, key=lambda v: ci[v][0])
            tied = [v for v in timed if v != best and not separated(ci[v], ci[best])]
            t = timing[(norm, provider, dtype, best)]
            if tied:
                # within each other's CIs: no measurable difference, so the more portable form wins
                best = min([best, *tied], key=_preference)
                t = timing[(norm, provider, dtype, best)]
                why = (f"no measurable difference in speed between {', '.join(sorted([*tied, best]))} (95% CIs "
                       f"overlap): the more portable form, {t['x_copy']:.2f}x copy")
            else:
                why = (f"fastest passing: {t['x_copy']:.2f}x copy [{ci[best][1]:.2f}, {ci[best][2]:.2f}], "
                       f"{t['x_torch']:.2f}x torch, {t['p50_ms']:.3g} ms")
            if untrusted:
                why += f"; timing of {', '.join(untrusted)} not trusted (unstable or faster than a copy)"
        elif ok:
            best = min(ok, key=_preference)
            why = ("passes every suite (timings not trusted: unstable or faster than a copy)" if untrusted else
                   "passes every suite (untimed: run sweep --bench for the fastest)")
        else:
            best, why = None, _least_bad(provider, {v: by_form[(norm, provider, dtype, v)] for v in bad})
        out.append({"norm": norm, "provider": provider, "dtype": dtype, "recommended": best, "why": why,
                    "passing": ok, "failing": bad})
    return _mark_portable(out)


def _least_bad(provider: str, failing: dict[str, list[dict]]) -> str:
    """Where no form passes on a runtime: say so, with the form that fails fewest suites (then the
    smallest worst error) and what it fails."""
    def score(v):
        fails = {n: s for r in failing[v] for n, s in (r.get("inputs") or {}).items()
                 if isinstance(s, dict) and s.get("status") == "fail"}
        worst = max((_num(s.get("max_abs_err")) or 0.0 for s in fails.values()), default=math.inf)
        return len(fails) or math.inf, worst, sorted(fails)

    if not failing:
        return f"no form passes every suite on {provider}"
    v = min(failing, key=score)
    n, worst, names = score(v)
    if n == math.inf:
        return f"no form passes every suite on {provider}; none of them ran every suite"
    return (f"no form passes every suite on {provider}; least bad: {v}, failing {', '.join(names)} "
            f"(worst error {worst:.2g})")


def _mark_portable(rows: list[dict]) -> list[dict]:
    """With more than one runtime in the sweep: a form that passes on every one of them for a norm x dtype
    is `portable`; the recommendation says so, or names the portable forms beside a runtime's own pick."""
    providers = defaultdict(set)
    for r in rows:
        providers[(r["norm"], r["dtype"])].add(r["provider"])
    for r in rows:
        same = [x for x in rows if (x["norm"], x["dtype"]) == (r["norm"], r["dtype"])]
        portable = sorted(set.intersection(*(set(x["passing"]) for x in same))) if len(same) > 1 else []
        r["portable"] = portable
        if len(same) > 1 and r["recommended"] in portable:
            r["why"] += f"; portable: passes on {', '.join(sorted(providers[(r['norm'], r['dtype'])]))} too"
    return rows


def _preference(v: str) -> int:
    return UNTIMED_PREFERENCE.index(v) if v in UNTIMED_PREFERENCE else len(UNTIMED_PREFERENCE)


def _ci(b: dict) -> tuple[float, float, float]:
    x = _num(b.get("x_copy"))
    lo, hi = _num(b.get("ci_low")), _num(b.get("ci_high"))
    return (x, lo if lo is not None else x, hi if hi is not None else x)


def trustworthy(b: dict) -> bool:
    """A timing row stable across its rounds and not faster than a copy (normonnx.timing)."""
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
    fig, axes = plt.subplots(1, len(norms), figsize=(4.2 * len(norms), 3.6), squeeze=False)
    nan_level = 1e3
    for ax, norm in zip(axes[0], norms):
        series = defaultdict(dict)
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
            zero_x = [x for x, y in zip(xs, ys) if y == 0]
            ax.plot(zero_x, [zero_level] * len(zero_x), "v", ms=6, mfc="none", color=line.get_color())
            nan_x = [x for x, y in zip(xs, ys) if y >= nan_level]
            ax.plot(nan_x, [nan_level] * len(nan_x), "kx", ms=7)
        ax.set_yscale("log")
        ax.set_xticks(range(len(samples)))
        ax.set_xticklabels(samples, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{norm}: worst |error| vs float64 oracle", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("max abs error (x = NaN/Inf mismatch,\nopen triangle at the bottom = exactly 0)")
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
        for bar, b in zip(bars, shown):
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
    c = defaultdict(int)
    for r in records:
        if r.get("type", "case") == "case":
            c[r["status"]] += 1
    return dict(c)


def render_html(records: list[dict], meta: dict) -> str:
    rows, cols, cells = matrix(records)
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>normonnx report</title><style>",
             "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:3px 5px;text-align:center}"
             "th.row{text-align:left}h2{margin-top:1.6em}.legend span{padding:2px 8px;margin-right:6px}"
             "img{max-width:100%}code{background:#f4f4f4;padding:1px 3px}</style></head><body>",
             "<h1>normonnx compatibility report</h1>"]
    counts = summary_counts(records)
    parts.append("<p>" + ", ".join(f"<b>{int(v)}</b> {e(k)}" for k, v in sorted(counts.items())) + " cases.</p>")
    banner = timing_banner(records)
    if banner:
        parts.append(f"<p style='background:#fde6c4;padding:8px;border:1px solid #e0a040'><b>Timings not "
                     f"trusted.</b> {e(banner)}</p>")
    parts.append("<h2>Compatibility matrix</h2><p class='legend'>" + "".join(
        f"<span style='background:{c}'>{e(t)}</span>" for c, t in STATUS_STYLE.values())
        + " Hover a cell for the reason. FAIL names the worst input suite.</p>")
    parts.append("<table><tr><th class='row'>norm / variant</th>" + "".join(f"<th>{_col_label(c)}</th>" for c in cols)
                 + "</tr>")
    for row in rows:
        parts.append(f"<tr><th class='row'>{e(row[0])} / {e(row[1])}</th>")
        for col in cols:
            st, short, hover = cell_text(cells.get((row, col)))
            parts.append(f"<td style='background:{STATUS_STYLE.get(st, ('#fff',))[0]}' title='{e(hover)}'>"
                         f"{e(short)}</td>")
        parts.append("</tr>")
    parts.append("</table>")
    parts.append("<h2>Recommended graph form</h2><table><tr><th>norm</th><th>provider</th><th>dtype</th>"
                 "<th>recommended</th><th>why</th><th>fails some suite</th></tr>")
    for rec in recommendations(records):
        parts.append(f"<tr><td>{e(rec['norm'])}</td><td>{e(rec['provider'])}</td><td>{e(rec['dtype'])}</td>"
                     f"<td><b>{e(rec['recommended'] or '-')}</b></td><td>{e(rec['why'])}</td>"
                     f"<td>{e(', '.join(rec['failing']) or '-')}</td></tr>")
    parts.append("</table>")
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
    failures = [r for r in records if r.get("type", "case") == "case" and r["status"] in ("fail", "error", "mismatch")]
    if failures:
        parts.append("<h2>Failures and mismatches</h2><table><tr><th>case</th><th>status</th><th>reason</th></tr>")
        for r in failures:
            parts.append(f"<tr><td style='text-align:left'>{e(r['case_id'])}</td><td>{e(r['status'])}</td>"
                         f"<td style='text-align:left'>{e((r.get('reason') or r.get('error') or '')[:300])}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Environment</h2><table>")
    env = {**meta.get("versions", {}), **{f"machine.{k}": v for k, v in meta.get("machine", {}).items()},
           "shard": meta.get("shard"), "matrix": json.dumps(meta.get("matrix"))}
    for k, v in env.items():
        parts.append(f"<tr><th class='row'>{e(str(k))}</th><td style='text-align:left'>{e(str(v))}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def _md(v) -> str:
    """A string from a results file, safe in a Markdown table cell (GitHub renders inline HTML)."""
    return html.escape(str(v)).replace("|", "\\|").replace("\n", " ")


def render_markdown(records: list[dict], meta: dict) -> str:
    rows, cols, cells = matrix(records)
    icon = {"pass": "✅", "fail": "❌", "mismatch": "⚠️", "unsupported": "·", "error": "💥"}
    banner = timing_banner(records)
    lines = ["# normonnx compatibility report", "",
             ", ".join(f"**{v}** {k}" for k, v in sorted(summary_counts(records).items())) + " cases.", "",
             *([f"> **Timings not trusted.** {_md(banner)}", ""] if banner else []),
             "✅ pass · ❌ fail (worst input suite) · ⚠️ exporter wrote another opset/op set · `·` unsupported · 💥 error",
             "", "| norm / variant | " + " | ".join(_md(f"op{c[0]} {c[1]} {c[2]} {c[3]}") for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for row in rows:
        out = []
        for col in cols:
            r = cells.get((row, col))
            st = r["status"] if r else "unsupported"
            out.append(icon.get(st, _md(st)) + (f" {_md(r.get('worst_input'))}" if st == "fail" and r.get("worst_input")
                                                else ""))
        lines.append(f"| {_md(row[0])} / {_md(row[1])} | " + " | ".join(out) + " |")
    lines += ["", "## Recommended graph form", "", "| norm | provider | dtype | recommended | why | fails some suite |",
              "|---|---|---|---|---|---|"]
    for rec in recommendations(records):
        lines.append(f"| {_md(rec['norm'])} | {_md(rec['provider'])} | {_md(rec['dtype'])} | "
                     f"**{_md(rec['recommended'] or '-')}** | {_md(rec['why'])} | {_md(', '.join(rec['failing']) or '-')} |")
    v = meta.get("versions", {})
    m = meta.get("machine", {})
    lines += ["", "## Environment", "", _md(", ".join(f"{k} {val}" for k, val in v.items())
              + f"; {m.get('cpu', '?')} ({m.get('cores', '?')} cores)" + (f", GPU {m['gpu']}" if m.get("gpu") else ""))]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, output: str | Path, warn: Callable[[str], None] | None = None) -> Path:
    """Write OUT's report to `output` (.html, or .md for Markdown)."""
    from .safeio import atomic_write, check_output_path

    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm", ".md"):
        raise BadInput(f"report output {output} must end in .html or .md")
    check_output_path(output, "report")
    records, meta = load(out_dir, warn)
    text = render_markdown(records, meta) if output.suffix.lower() == ".md" else render_html(records, meta)
    atomic_write(output, text.encode("utf-8"))
    return output
