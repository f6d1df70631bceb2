"""Plain-text rendering of reports for the terminal (the CLI prints what these return)."""
from __future__ import annotations

import json
import math
import shutil
import textwrap
from pathlib import Path
from typing import Sequence


def json_safe(value):
    """`value` with every non-finite float as a string ("nan", "inf", "-inf"): JSON has no NaN or
    Infinity, and a bare NaN makes a --json document unreadable to strict parsers."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy scalar
        return json_safe(value.item())
    return value


def json_text(doc: dict) -> str:
    """A --json document: valid JSON, non-finite numbers as strings (json_safe)."""
    return json.dumps(json_safe(doc), indent=2, allow_nan=False, default=str)


def verdict_word(code: int) -> str:
    """The last line's first word, one per exit code (normonnx.core.errors)."""
    return {0: "PASSED", 1: "FAILED", 4: "NOT CHECKED", 5: "INTERNAL ERROR"}.get(int(code), "ERROR")


def status_cell(status: str) -> str:
    """A check's status in a table: pass in lower case, everything else shouted (FAIL, NOT CHECKED, ...)."""
    return status if status == "pass" else status.upper()


def terminal_width() -> int:
    """The terminal's width; 120 when the output is not a terminal (a pipe, a file, a CI log)."""
    return max(40, shutil.get_terminal_size((120, 24)).columns)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], width: int | None = None) -> str:
    """Columns padded to their longest cell; wider than `width` (default: the terminal's), the widest
    columns are narrowed first and their cells wrap at spaces, never inside a word (a word longer than its
    column keeps the column that wide). The full texts are in --json."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    widths = _narrow(widths, headers, cells, width or terminal_width())
    def line(vals):  # one row, possibly over several lines
        parts = [textwrap.wrap(v, w, break_long_words=False, break_on_hyphens=False) or [""] if len(v) > w else [v]
                 for v, w in zip(vals, widths, strict=False)]
        return "\n".join("  ".join((p[k] if k < len(p) else "").ljust(w)
                                   for p, w in zip(parts, widths, strict=False)).rstrip()
                         for k in range(max(len(p) for p in parts)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _narrow(widths: list[int], headers: Sequence[str], cells: list[list[str]], width: int) -> list[int]:
    """Narrow the widest column by one until the table fits or no column can give more: a column is
    never narrower than its longest word (nor its header)."""
    floor = [max([len(h)] + [len(w) for r in cells for w in r[i].split()]) for i, h in enumerate(headers)]
    widths = list(widths)
    while sum(widths) + 2 * (len(widths) - 1) > width:
        give = [i for i in range(len(widths)) if widths[i] > floor[i]]
        if not give:
            break
        widths[max(give, key=lambda i: widths[i])] -= 1
    return widths


def wrap(text: str, width: int | None = None, indent: str = "  ") -> str:
    """A long line wrapped at spaces to the terminal's width, continuation lines indented."""
    return textwrap.fill(text, width or terminal_width(), subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.3g}"
    return str(v)


def ops_line(ops: dict) -> str:
    return ", ".join(f"{k}" + (f"x{v}" if v > 1 else "") for k, v in ops.items())


def short_version(v) -> str:
    """A runtime's version as a person reads it: OpenVINO's build suffix left out (the full one is in --json)."""
    return str(v).split("-")[0] if v else "?"


def facts_text(facts: dict) -> list[str]:
    """What a runtime's session says about the arithmetic, as notes: its version, the precision it ran in,
    and what the nodes ran as where it says (normonnx.engine.runtimes.Session.facts)."""
    out = []
    if facts.get("version"):
        out.append(f"version {short_version(facts['version'])}")
    if facts.get("precision"):
        out.append(f"precision {facts['precision']}")
    if facts.get("machine_default_precision") and facts["machine_default_precision"] != facts.get("precision"):
        out.append(f"this machine's default {facts['machine_default_precision']}")
    if isinstance(facts.get("ran_as"), dict) and facts["ran_as"]:
        out.append(f"ran as {ops_line(facts['ran_as'])}")
    return out


def precision_table(by_runtime: dict[str, dict], title: str = "ran on:") -> str:
    """Each runtime's version and the precision it ran in, one row a runtime: `by_runtime` maps a runtime to
    {"version": ..., "precision": {dtype: precision}} (ScanResult.runtime_facts); a runtime whose precision
    differs by dtype says which dtype ran in which. Empty when no session said."""
    rows = []
    for rt, d in by_runtime.items():
        precs: dict[str, list[str]] = {}
        for dtype, p in (d.get("precision") or {}).items():
            precs.setdefault(p or "not said", []).append(dtype)
        text = next(iter(precs)) if len(precs) == 1 else "; ".join(f"{', '.join(dts)}: {p}" for p, dts in precs.items())
        rows.append([rt, short_version(d.get("version")), text or "not said"])
    if not rows:
        return ""
    body = table(["runtime", "version", "precision"], rows)
    return title + "\n" + "\n".join("  " + line for line in body.splitlines())


def merge_facts(entries) -> dict[str, dict]:
    """(runtime, facts, dtype) triples (one per layer or case) as precision_table's input."""
    out: dict[str, dict] = {}
    for rt, f, dtype in entries:
        d = out.setdefault(rt, {"version": f.get("version"), "precision": {}})
        d["precision"].setdefault(dtype or "unknown", f.get("precision"))
    return out


def validation_text(result) -> str:
    """Table of a normonnx.engine.validate.ValidationResult: one row per runtime x input sample."""
    rows = []
    for r in result.results:
        detail = r.reason or r.error or ""
        if r.status == "pass":
            detail = ""
        rows.append([r.runtime, r.inputs, status_cell(r.status), r.max_abs_err,
                     r.max_rel_err, r.max_ulp, r.vs_torch_max_abs, detail])
    m = result.model
    head = [f"{result.case_id}  (source: {result.source})",
            f"model: opset {m['opset']}" + (f" (requested {m['opset_requested']})" if m.get("opset_requested") not in
                                          (None, m["opset"]) else "") + f"; ops: {ops_line(m['ops'])}"]
    for name, f in result.runtimes.items():
        notes = []
        if f.get("error"):
            notes.append(f["error"])
        notes += facts_text(f)
        if f.get("opt_level"):
            notes.append(f"opt={f['opt_level']}")
        if f.get("fused"):
            notes.append(f"fused into {', '.join(f['fused'])}")
        elif "fused" in f:
            notes.append("not fused")
        if f.get("inlined"):
            notes.append(f["inlined"])
        if f.get("casts_inserted"):
            notes.append(f"ORT inserted {f['casts_inserted']} Cast nodes: {result.spec.dtype} ops ran in float32 here")
        if f.get("placement"):
            notes.append(f"placement: {f['placement']}")
        if notes:
            head.append(wrap(f"{name}: " + "; ".join(str(n) for n in notes)))
    body = table(["runtime", "inputs", "status", "max_abs", "max_rel", "max_ulp", "vs_torch", "reason"], rows)
    v = result.verdict
    tail = f"{verdict_word(result.exit_code)}: {v.summary()}, {v.skipped} skipped"
    return "\n".join(head) + "\n\n" + body + "\n\n" + tail


def bench_text(result) -> str:
    """Table of a normonnx.engine.bench.BenchResult: median ratios with their 95 % CI per form, the noise
    verdict per row, '*' on the fastest variant that passed validation with a trustworthy timing, and
    a last line saying whether the timings can be trusted."""
    rows = []
    for r in result.records:
        if r.error:
            rows.append([r.form, r.provider, None, None, None, None, None, None, "ERROR", r.error])
            continue
        if r.unsupported:
            rows.append([r.form, r.provider, None, None, None, None, "n/a", None, "", r.unsupported])
            continue
        check = status_cell(r.check) if r.check else "-"
        note = r.implausible or (r.unstable_reason if r.stable is False else "") or \
            ("" if r.check in (None, "pass") else (r.validation or ""))
        rows.append([r.form + (" *" if r.fastest else ""), r.provider, f"{r.p50_ms:.4g}", f"{r.gbps:.1f}",
                     f"{r.x_copy:.2f}x [{r.ci_low:.2f}, {r.ci_high:.2f}]",
                     f"{r.x_torch:.2f}x [{r.x_torch_ci_low:.2f}, {r.x_torch_ci_high:.2f}]",
                     "IMPLAUSIBLE" if r.implausible else ("stable" if r.stable else "UNSTABLE"), check, "", note])
    for row in rows:
        del row[-2]
    m = result.machine
    head = (f"{result.spec.id}: {m.get('cpu')} ({m.get('cores')} cores), threads {m.get('threads')}"
            + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}")
    body = table(["form", "provider", "p50 ms", "GB/s", "x copy [95% CI]", "x torch [95% CI]", "timing", "valid",
                  "note"], rows)
    _, verdict = result.trusted
    return head + "\n\n" + body + "\n\nvalid: checked on normal inputs only, to time correct forms; the stress " \
        "suites (offsets, zero variance) are normonnx validate's verdict, and a form can pass here and fail there" \
        "\n* fastest variant that passed validation on normal inputs with a stable, " \
        "plausible timing; x copy/x torch: median over interleaved rounds of each round's own ratio, with a bootstrap " \
        "95% interval; GB/s counts x read once and y written once\n" + verdict


def scan_text(result) -> str:
    """Table of a normonnx.features.scan.ScanResult: one row per norm found."""
    head = f"{result.model}: opset {result.opset}, {result.producer or 'unknown producer'}; {len(result.norms)} norms"
    if not result.norms:
        out = head + " found (searched the main graph, If/Loop/Scan bodies and model-local functions)" + \
            _left_out_lines(result)
        if result.validated:
            out += f"\n\n{verdict_word(result.exit_code)}: " + (
                f"{result.verdict.summary()}" if result.unidentified else "no norm found, so nothing was checked")
        return out
    inner = sum(1 for f in result.norms if f.scope)
    if inner:
        head += f" ({inner} inside subgraphs or functions)"
    headers = ["#", "kind", "form", "nodes", "axes/groups", "eps", "affine", "dtype", "ORT fuses", "risks"]
    if result.validated:
        headers.append("validate")
    out = head + "\n\n" + table(headers, _scan_rows(result)) + _norm_notes(result) + _left_out_lines(result)
    if result.fusion_note:
        out += f"\n\nORT fuses: unknown ({result.fusion_note})"
    if result.validated:
        out += _scan_verdict_text(result)
    return out


def _scan_rows(result) -> list[list]:
    """One row per norm found: where, its measured claim, ORT's fusion, its risks (and its verdict)."""
    rows = []
    for i, f in enumerate(result.norms):
        where = f.nodes[0] if len(f.nodes) == 1 else f"{f.nodes[0]} .. {f.nodes[-1]} ({len(f.nodes)} nodes)"
        if f.scope:
            where = f"[{f.scope}] {where}"
        shape = f"groups={f.groups}" if f.groups else (f"axes={list(f.axes)}" if f.axes is not None else "")
        v = result.fused.get(i)
        fused = v if isinstance(v, str) else {True: "fused", False: "no", None: "-"}[v]
        dtype = (f.dtype or "-") + (f" (stats {f.stats_dtype})" if f.stats_dtype and f.dtype and
                                    f.stats_dtype != f.dtype else "")
        row = [i, f.kind, f.form, where[:60], shape, f"{f.eps:.3g}" if f.eps is not None else "-",
               "yes" if f.affine else "no", dtype, fused, "; ".join(map(str, f.risks)) or "-"]
        if result.validated:
            v = result.validations.get(i)
            row.append("-" if v is None else _validation_cell(v) if v.status in ("pass", "fail") or
                       len(v.by_runtime or {}) > 1 else v.validation)
        rows.append(row)
    return rows


def _norm_notes(result) -> str:
    """Each norm's notes: its layout, and what was measured by running a written-out one."""
    out = ""
    for i, f in enumerate(result.norms):
        said = list(f.notes) + ([f"written over another layout: checked after moving its axes {list(f.layout)}"]
                                if f.layout is not None else [])
        if f.derived is not None:
            said.append("written out: its sets, centering, eps and parameters measured by running it (" +
                        ", ".join(f"{k} {'the graph' + chr(39) + 's own' if k in f.derived.exact else 'measured'}"
                                  for k in f.derived.params) + ")" if f.derived.params else
                        "written out: its sets, centering and eps measured by running it (no scale or shift)")
        for note in said:
            out += "\n" + wrap(f"#{i}: {note}")
    return out


def _scan_verdict_text(result) -> str:
    """scan --validate's verdicts: per runtime where several ran, each layer's lines, the precisions, the last line."""
    out = ""
    several = len(result.runtimes) > 1
    if several:
        out += _per_runtime_table(result.runtimes, [(i, result.norms[i].nodes[0], {rt: _runtime_cell(v, rt)
                                                     for rt in result.runtimes})
                                                    for i, v in sorted(result.validations.items())]) + "\n"
    for i, v in sorted(result.validations.items()):
        out += _verdict_lines(i, result.norms[i].nodes[0], v, several)
    facts = precision_table(result.runtime_facts())
    if facts:
        out += "\n\n" + facts
    verdict = result.verdict
    out += f"\n\n{verdict_word(result.exit_code)}: {verdict.summary()}"
    if verdict.not_checked and not verdict.failed and not verdict.allowed and verdict.passed:
        out += "\n" + wrap(f"not checked: {verdict.not_checked} layers could not be checked (the table says why), so "
                            "the model is not proven; --allow-not-checked accepts that and says so")
    if result.checked_on:  # what this verdict covers (--activations judges the model's own activations)
        out += "\n" + wrap(f"checked: each layer cut out and run on {result.checked_on} (stress inputs aimed at "
                            "how norms break; the model's own activations: scan --activations)")
    if verdict.failed:
        out += "\n" + wrap(f"next: normonnx fix {result.model} -o FIXED.onnx gives each failing layer a form that "
                            "passes, or says why not")
    return out


def _left_out_lines(result) -> str:
    """What scan did not list as a norm, with why: weight standardisation (left out), structure shaped like a
    norm that could not be made one (a possible norm: not checked), and what normonnx did to read the model."""
    out = ""
    for x in result.left_out:
        if x.kind == "?":
            out += "\n" + wrap(f"possible norm at {x.node}: {x.reason.removeprefix('possible norm, ')}")
        else:
            out += f"\nleft out: {x.kind} at {x.node}: {x.reason}"
    for note in getattr(result, "notes", []):
        out += "\n" + wrap(f"note: {note}")
    return out


def _validation_cell(v) -> str:
    """A layer's LayerVerdict as a table cell: 'pass', 'FAIL constant:constant' (with several runtimes: 'on
    openvino', or 'FAIL on cpu, openvino' where several failed), 'not checked' ('not checked on ncnn')."""
    if v is None:
        return "-"
    failing = v.failing_on()
    if v.status == "fail":
        if len(failing) > 1:
            return "FAIL on " + ", ".join(failing)
        return ("FAIL " + v.validation.split(": ", 1)[0])[:60]
    per = v.by_runtime or {}
    if v.status != "pass" and len(per) > 1:
        return f"{v.status} on " + ", ".join(rt for rt, d in per.items() if d["status"] != "pass")
    return v.status


def _runtime_cell(v, rt: str) -> str:
    """One runtime's verdict on a layer: 'pass', 'FAIL offset:offset-1e2', 'not checked', '-' (not run)."""
    d = (v.by_runtime or {}).get(rt) if v is not None else None
    if d is None:
        return "-" if v is None or v.status == "pass" else v.status  # the layer never reached the runtime
    if d["status"] == "fail":
        return "FAIL " + d["validation"].split(": ", 1)[0]
    return d["status"]


def _per_runtime_table(runtimes, rows) -> str:
    """Layers x runtimes, each cell that runtime's own verdict on the layer: rows are (index, layer, {rt: cell})."""
    body = [[i, name[:36], *(cells.get(rt, "-") for rt in runtimes)] for i, name, cells in rows]
    return ("\n\nper runtime (each one's first failing input suite; --json: by_runtime):\n\n"
            + table(["#", "layer", *runtimes], body))


def _verdict_lines(i: int, name: str, v, several: bool) -> str:
    """A layer's failures, one line a runtime that failed it (naming the runtime and the suite), and with
    several runtimes, why it was not checked on each one where it was not."""
    if v is None:
        return ""
    per = v.by_runtime or {}
    out = ""
    if v.status == "fail" and per:
        for rt, d in per.items():
            if d["status"] == "fail":
                out += "\n" + wrap(f"FAIL #{i} {name} on {rt}: {d['validation']}")
    elif v.status == "fail":
        out += "\n" + wrap(f"FAIL #{i} {name}: {v.validation}")
    if several:
        for rt, d in per.items():
            if d["status"] not in ("pass", "fail"):
                why = d["validation"].removeprefix("not checked: ")
                out += "\n" + wrap(f"{d['status']} #{i} {name} on {rt}: {why}")
    return out


def fix_text(result) -> str:
    """Table of a normonnx.repair.fixer.FixResult: one row per norm (its validation before and, in the written
    model, after), the candidates each rewritten or failing layer had, the whole-model proof and timing,
    and a last line that says what the table says."""
    rts = ",".join(result.runtimes)
    head = f"{result.model}: opset {result.opset}; {len(result.layers)} norms; target runtimes: {rts}"
    if not result.layers:
        return head + "\n\nnothing to fix: no norm found\n\n" + fix_summary(result)
    rows = []
    for lf in result.layers:
        f = lf.norm
        where = f.nodes[0] if len(f.nodes) == 1 else f"{f.nodes[0]} .. ({len(f.nodes)} nodes)"
        rows.append([lf.index, where[:36], f.kind, f.op[:30], lf.status, lf.form or "-",
                     _validation_cell(lf.before), _validation_cell(lf.final)])
    out = head + "\n\n" + table(["#", "layer", "kind", "before", "status", "form", "validate before",
                                  "validate after"], rows)
    if len(result.runtimes) > 1:
        def cell(lf, rt):
            before = _runtime_cell(lf.before, rt)
            return before if lf.final is None else f"{before} -> {_runtime_cell(lf.final, rt)}"
        out += _per_runtime_table(result.runtimes, [(lf.index, lf.norm.nodes[0], {rt: cell(lf, rt) for rt in
                                                     result.runtimes}) for lf in result.layers
                                                    if lf.before is not None or lf.final is not None])
    tried = [lf for lf in result.layers if lf.candidates]
    if tried:
        out += f"\n\ncandidate forms, each validated against the layer's own norm on {rts}:"
        for lf in tried:
            sep = "; " if len(result.runtimes) == 1 else "\n      "  # several runtimes: a line a candidate
            out += f"\n  #{lf.index}: " + sep.join(c.summary() for c in lf.candidates)
    for lf in result.layers:
        if lf.reason and lf.status in ("refused", "failing", "rewritten", "would rewrite"):
            out += f"\n{lf.status}: #{lf.index} {lf.norm.nodes[0]}: {lf.reason}"
    w = result.whole_model
    if w is not None:
        if w.status not in ("pass", "fail"):
            out += f"\n\nwhole model: not compared ({w.error})"
        else:
            shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in w.inputs.items())
            out += (f"\n\nwhole model on ORT {w.provider.upper()}, seeded inputs ({shapes}): largest output difference "
                    f"{w.max_abs_diff:.3g} " + ("(within tolerance)" if w.status == "pass" else "(OUTSIDE tolerance)"))
    t = result.timing
    if t:
        lo, hi = t.ratio_ci
        out += (f"\ntiming on ORT {t.provider.upper()} ({t.rounds} interleaved rounds): original {t.original_ms:.3g} ms, fixed "
                f"{t.fixed_ms:.3g} ms, fixed/original {t.ratio:.2f}x (95% CI {lo:.2f}-{hi:.2f}"
                + ("" if t.stable else "; unstable: a busy machine") + ")")
    facts = precision_table(merge_facts((rt, f, lf.norm.dtype) for lf in result.layers
                                        for v in (lf.before, lf.final) if v is not None
                                        for rt, f in (v.runtime_facts or {}).items()))
    if facts:
        out += "\n\n" + facts
    for note in result.notes:
        out += f"\nnote: {note}"
    return out + "\n\n" + fix_summary(result)


def fix_summary(result) -> str:
    """The last line: the judge's word and the counts behind it, and whether the output was written."""
    n, failing = len(result.changes), len(result.failing)
    states = [(lf.final or lf.before).status if (lf.final or lf.before) is not None else "not checked"
              for lf in result.layers]
    unchecked = sum(st not in ("pass", "fail") for st in states)
    rts = ",".join(result.runtimes)
    tail = (f"; {failing} fail on {','.join(result.failing_on()) or rts} (no form passes)" if failing else "") + (
        f"; {unchecked} not checked" if unchecked else "") + (
        f" ({result.verdict.internal} internal errors: please report them)" if result.verdict.internal else "")
    if result.mode == "check":
        word = verdict_word(result.exit_code)
        return (f"{word}: {n} layers would change{tail}"
                + (f" (normonnx fix {result.model} -o FIXED.onnx)" if n else "")
                + ("" if n or failing or unchecked else f"; every layer passes on {rts}"))
    if result.mode == "dry-run":
        return f"dry run: {n} layers would change{tail}; nothing written"
    if not result.proven:
        return f"NOT PROVEN: {n} layers rewritten without a proof (--no-proof); " + (
            f"wrote {result.output}" if result.written else "nothing written")
    v = result.verdict
    word = verdict_word(result.exit_code)
    if not result.layers:
        return f"{word}: no norm found, so nothing was checked; nothing written"
    unproven = [lf for lf in result.unproven if lf.final is None]
    tail += f"; {len(unproven)} rewritten layers not found in the written model (not proven)" if unproven else ""
    w = result.whole_model
    whole = "" if w is None else {"fail": "; the whole model differs from the original",
                                  "not checked": "; the whole model could not be compared (not proven)"}.get(w.status, "")
    if not result.written:
        wrote = "nothing written"
    elif v.status == "pass":
        wrote = (f"wrote {result.output}"
                 + (f" (weights in {Path(result.data_output).name} beside it)" if result.data_output else "")
                 + (" (not-checked layers accepted by --allow-not-checked)" if v.allowed else ""))
    else:
        wrote = f"wrote {result.output} anyway (--write-unproven): it is NOT proven"
    done = "rewritten" if result.written or not n else "rewritten in a model not written"
    return f"{word}: {n} layers {done}{tail}{whole}; {wrote}"


def rules_text() -> str:
    from ..graph.rules import RULES

    return table(["rule", "default", "rewrites", "writes", "needs"],
                 [[r.name, "yes" if r.default else "opt-in", r.matches, r.writes, r.needs]
                  for r in RULES.values()]) + "\n\n" + "\n".join(f"{r.name}: safe because {r.why_safe}"
                                                                   for r in RULES.values())


def _what_if_cell(v) -> str:
    """A Float16Verdict (or None: no what-if)."""
    if v is None:
        return "-"
    if v.status not in ("pass", "fail"):
        return f"- ({v.why or 'not run'})"
    return f"{status_cell(v.status)} {v.max_abs_err:.2g}" + (f" [{v.rule}]" if v.rule else "")


def activations_text(result) -> str:
    """Table of a normonnx.features.scan.activations.ActivationResult: per norm, its captured input's statistics,
    the model's output against the oracle, and the float16 what-if."""
    rows = []
    for lc in result.layers:
        f, st = lc.norm, lc.stats
        verdict = status_cell(lc.status)
        if lc.status not in ("pass", "fail"):
            verdict = f"{lc.status}: {lc.why}"
        err = lc.error.max_abs_err if lc.error else None
        fp16 = lc.fp16
        rows.append([lc.index, f.nodes[0][:36], f"{f.kind} {f.form}", st.get("max_abs"), st.get("max_offset_over_std"),
                     st.get("max_x2_over_fp16_max" if f.kind == "rms" else "max_dev2_over_fp16_max"), err, verdict,
                     _what_if_cell(fp16.converted if fp16 else None),
                     _what_if_cell(fp16.fp32_statistics if fp16 else None)])
    head = (f"on the model's activations ({result.source}; {result.provider or 'ORT'}; {result.samples} samples, "
            f"{result.runs} model runs, "
            f"{result.captured_bytes / 1e6:.3g} MB captured, {result.seconds:.3g} s)")
    heads = ["#", "layer", "norm", "max|x|", "offset/std", "dev^2/fp16 max", "error", "float32 verdict",
             "as float16", "float16 + float32 stats [rule]"]
    quantized = [lc for lc in result.layers if lc.int8]
    if quantized:  # a QDQ layer as the model runs it: int8 rounding between its nodes, in steps of its output grid
        heads.append("as run, int8")
        for row, lc in zip(rows, result.layers, strict=False):
            row.append(_int8_cell(lc.int8))
    body = table(heads, rows)
    bad = [lc for lc in result.layers if lc.status == "fail"]
    out = head + "\n\n" + body
    for lc in bad:
        out += f"\nFAIL #{lc.index} {lc.norm.nodes[0]}: {lc.error.reason if lc.error else None}"
    out += ("\n\nmax|x|: largest captured input; offset/std: largest |mean|/std over its normalization sets (where "
            "E[x^2]-E[x]^2 and one-pass kernels break); dev^2/fp16 max: largest squared deviation from the set's mean "
            "(rms: largest x^2) over float16's largest value (> 1: a float16 variance overflows). As float16: the layer through "
            "onnxruntime's float16 converter, on onnx.reference (float16 ops in float16, as on a GPU); + float32 stats: "
            "after normonnx fix's rule.")
    if quantized:
        out += ("\nas run, int8: a QDQ layer's own output in the model (int8 rounding between its nodes) against the "
                "oracle, passing within two steps of its output's int8 grid; a what-if, never the exit code (the float32 "
                "verdict judges the layer as float on the dequantized input the model feeds it).")
    out += _replays_text(result)
    out += _whole_text(result)
    out += "".join(f"\nnote: {n}" for n in result.notes)
    out += f"\n\n{verdict_word(result.exit_code)}: {result.verdict.summary()} on the model's activations"
    out += (f"\nchecked: each layer on the activations {result.samples} model inputs ({result.source}) give it, not on stress inputs "
            "(offsets, zero variance: scan --validate); a pass here says this data is safe, not every input")
    if result.verdict.failed:
        out += f"\nnext: normonnx fix {result.model} -o FIXED.onnx gives each failing layer a form that passes, or says why not"
    return out


def _int8_cell(v) -> str:
    """An Int8Rounding (or None: not a QDQ layer)."""
    if v is None:
        return "-"
    text = f"{status_cell(v.status)} {v.max_abs_err:.2g}"
    return text + (f" ({v.steps:.2g} steps)" if v.steps is not None else "")


def _whole_text(result) -> str:
    """The whole model on each named runtime against the float32 run on ORT: part of the verdict."""
    if not result.whole:
        return ""
    def verdict(w) -> str:
        text = status_cell(w.status) if w.status in ("pass", "fail") else f"{w.status}: {w.why}"
        return text if w.judged else f"{text} (what-if)"

    rows = [[name, w.precision or "-", w.samples, "-" if w.max_abs_diff is None else f"{w.max_abs_diff:.3g}",
             verdict(w)] for name, w in result.whole.items()]
    out = ("\n\nthe whole model on each runtime against the float32 run on ORT (its outputs, at their dtype's "
           "tolerance):\n\n" + table(["runtime", "precision", "samples", "largest output difference", "verdict"], rows))
    for name, w in result.whole.items():
        if w.status == "fail":
            out += f"\n{'FAIL' if w.judged else 'what-if FAIL'} whole model on {name}: {w.why}"
    if any(not w.judged for w in result.whole.values()):
        out += ("\nwhat-if: a quantized (QDQ) model; runtimes round its int8 steps differently, so a whole run a step "
                "or more apart is shown, not judged (each layer's verdict above judges it as float)")
    return out


def _replay_cell(v) -> str:
    """A Replay (or None: the layer was not replayed on that runtime)."""
    if v is None:
        return "-"
    if v.status not in ("pass", "fail"):
        return v.why
    text = f"{status_cell(v.status)} {v.max_abs_err:.2g}"
    return text + (f", {v.max_diff_from_stored:.2g} from stored" if v.max_diff_from_stored is not None else "")


def _replays_text(result, title: str = "on other runtimes, each layer cut out and run on the same inputs (error "
                                         "against the oracle):") -> str:
    """Each layer replayed on the other runtimes on the captured (or stored) inputs: the same oracle and rule."""
    names = list(dict.fromkeys(rt for lc in result.layers for rt in lc.on))
    if not names:
        return ""
    rows = [[lc.index, lc.norm.nodes[0][:36], *(_replay_cell(lc.on.get(rt)) for rt in names)]
            for lc in result.layers if lc.on]
    out = f"\n\n{title}\n\n"
    out += table(["#", "layer", *names], rows)
    for lc in result.layers:
        for rt, v in lc.on.items():
            if v.status == "fail":
                out += f"\nFAIL #{lc.index} {lc.norm.nodes[0]} on {rt}: {v.why}"
    return out


def golden_text(result) -> str:
    """`scan --activations --load-outputs`: each stored layer replayed here, against the oracle and the stored outputs."""
    head = f"stored outputs ({result.source}; {result.samples} samples a layer) replayed on {result.provider}"
    notes = "".join(f"\nnote: {n}" for n in result.notes)
    title = "each stored layer cut out of this model and run on the stored inputs (error against the oracle, distance " \
            "from the stored outputs):"
    return (head + _replays_text(result, title) + notes + f"\n\n{verdict_word(result.exit_code)}: "
            f"{result.verdict.summary()} (layer x runtime)")


def _diff_rows(result) -> list[list[str]]:
    order = {"regression": 0, "improvement": 1, "new": 2}
    return [[c.kind, c.case, c.what] for c in sorted(result.changes, key=lambda c: (order[c.kind], c.case))]


def _diff_summary(result) -> str:
    n = len(result.regressions)
    better = sum(c.kind == "improvement" for c in result.changes)
    new = sum(c.kind == "new" for c in result.changes)
    if not n and not result.compared:
        return f"NOT CHECKED: nothing to compare (the base holds no case; {new} new)"
    head = f"FAILED: {n} regressions" if n else "PASSED: no regression"
    return f"{head} in {result.compared} cases compared ({better} improved, {new} new)"


def _versions_line(result) -> str:
    fmt = lambda v: ", ".join(f"{k} {v[k]}" for k in sorted(v)) or "not recorded"  # noqa: E731
    return f"base: {result.base} ({fmt(result.versions['base'])})\nnew:  {result.new} ({fmt(result.versions['new'])})"


def diff_text(result) -> str:
    """A normonnx.features.diff.DiffResult for the terminal: both sides' versions, the changes, the verdict line."""
    out = _versions_line(result)
    if result.changes:
        out += "\n\n" + table(["change", "case", "what"], _diff_rows(result))
    for note in result.notes:
        out += f"\nnote: {note}"
    return out + "\n\n" + _diff_summary(result)


def diff_markdown(result) -> str:
    """The same as Markdown, for a pull-request comment or a CI job summary."""
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [f"### normonnx diff: {_diff_summary(result)}", "", "```", _versions_line(result), "```", ""]
    if result.changes:
        lines += ["| change | case | what |", "|---|---|---|"]
        lines += [f"| {'**regression**' if k == 'regression' else k} | `{esc(c)}` | {esc(w)} |"
                  for k, c, w in _diff_rows(result)]
    lines += [f"\n_{esc(n)}_" for n in result.notes]
    return "\n".join(lines) + "\n"
