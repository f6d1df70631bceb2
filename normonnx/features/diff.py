"""`normonnx diff BASE NEW`: the regression gate. Two sweep folders (or two `scan --validate --json`
documents of one model) compared case by case: what got worse, what got better, what disappeared.

Worse is: a case that passed and now fails or cannot run; an input suite whose error grew by more than
`factor` (above `floor`, where rounding noise lives) or went past its tolerance; a case or layer that
disappeared; with `timing`, a form whose latency (its ratio to the copy baseline of the same run, so
machine speed cancels out as far as it can) is slower with the two 95 % intervals apart."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

from ..core.errors import BadInput, ExitCode
from ..core.judge import PASS, status_name
from ..core.results import RESULTS, read_meta, read_results, versions_diff

FACTOR, FLOOR = 4.0, 1e-6


@dataclass(frozen=True)
class Change:
    """One case (or layer) that changed. kind: regression | improvement | new."""

    case: str
    kind: str
    what: str  # e.g. "pass -> fail", "offset-1e4: error 1.2e-05 -> 3.4e-03 (283x)", "disappeared"


@dataclass
class DiffResult:
    base: str
    new: str
    what: str  # "sweep" or "scan"
    versions: dict  # {"base": {...}, "new": {...}}
    compared: int = 0
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.kind == "regression"]

    @property
    def exit_code(self) -> ExitCode:
        """1 on any regression; 4 when nothing could be compared (no case of the base is in the new results
        and none disappeared: an empty base); else 0."""
        if self.regressions:
            return ExitCode.CHECK_FAILED
        return ExitCode.PASSED if self.compared else ExitCode.NOT_CHECKED

    def to_dict(self) -> dict:
        return {"base": self.base, "new": self.new, "what": self.what, "versions": self.versions,
                "compared": self.compared, "regressions": len(self.regressions),
                "changes": [asdict(c) for c in self.changes], "notes": self.notes, "exit_code": int(self.exit_code)}


# -- reading either side ----------------------------------------------------------------------------
def _load(path: Path) -> tuple[str, dict, dict]:
    """("sweep" | "scan", {case id: record}, versions) of one side; BadInput saying what is valid."""
    if path.is_dir():
        if not (path / RESULTS).is_file():
            raise BadInput(f"{path} holds no {RESULTS}: give a sweep's output folder or a `scan --validate --json` file")
        records, bad = read_results(path / RESULTS)
        if bad:
            raise BadInput(f"{path / RESULTS} {bad[0]} (sweep --resume sets such a folder right: it moves the line "
                           "aside and runs its case again)")
        meta = read_meta(path)
        return "sweep", {r["case_id"]: r for r in records}, meta.get("versions") or {}
    if not path.is_file():
        raise BadInput(f"{path} does not exist: give a sweep's output folder or a `scan --validate --json` file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"{path} is not a JSON document ({type(e).__name__}): give a `scan --validate --json` "
                       "output or a sweep folder") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("norms"), list) or "counts" not in doc:
        raise BadInput(f"{path} is not a `scan --validate --json` document (no validated norms): rerun scan with "
                       "--validate --json")
    layers = {}
    for n in doc["norms"]:
        if not isinstance(n, dict) or not n.get("nodes"):
            raise BadInput(f"{path}: a norm entry without nodes: not a scan document")
        layers[(f"[{n['scope']}] " if n.get("scope") else "") + str(n["nodes"][0])] = n
    return "scan", layers, {"normonnx": doc.get("normonnx_version")} if doc.get("normonnx_version") else {}


# -- comparing ---------------------------------------------------------------------------------------
def _worse_status(a: str, b: str) -> bool:
    """The judge's rule for a regression: a case that passed and now does anything but pass (fails, is a
    mismatch, could not be checked, hit an internal error, is unsupported) got worse."""
    return status_name(a) == PASS and status_name(b) != PASS


def _suite_changes(case: str, a: dict, b: dict, factor: float, floor: float) -> list[Change]:
    out = []
    for name, sa in sorted((a.get("inputs") or {}).items()):
        sb = (b.get("inputs") or {}).get(name)
        if not isinstance(sa, dict) or sa.get("status") != "pass":
            continue
        if sb is None:
            out.append(Change(case, "regression", f"{name}: passed, now not run"))
            continue
        if sb.get("status") != "pass":
            out.append(Change(case, "regression", f"{name}: pass -> {sb.get('status')}"
                                                   + (f" ({sb['reason']})" if sb.get("reason") else "")))
            continue
        ea, eb = sa.get("max_abs_err"), sb.get("max_abs_err")
        if ea is not None and eb is not None and eb > floor and eb > factor * max(ea, floor / factor):
            out.append(Change(case, "regression", f"{name}: error {ea:.2g} -> {eb:.2g} "
                                                   f"({eb / ea if ea else float('inf'):.0f}x, still within tolerance)"))
    return out


def _timing_changes(case: str, a: dict, b: dict) -> list[Change]:
    rows_a = {r.get("form"): r for r in a.get("records") or [] if isinstance(r, dict)}
    out = []
    for r in b.get("records") or []:
        ra = rows_a.get(r.get("form"))
        if not ra or r.get("form") in ("copy", None) or None in (ra.get("ci_low"), ra.get("ci_high"), ra.get("x_copy"),
                                                                  r.get("ci_low"), r.get("ci_high"), r.get("x_copy")):
            continue
        if r["ci_low"] > ra["ci_high"]:
            out.append(Change(case, "regression", f"{r['form']}: slower, {ra['x_copy']:.2f}x -> {r['x_copy']:.2f}x the "
                                                   f"copy (95 % intervals [{ra['ci_low']:.2f}, {ra['ci_high']:.2f}] "
                                                   f"and [{r['ci_low']:.2f}, {r['ci_high']:.2f}] apart)"))
    return out


def _sweep_case(case: str, a: dict, b: dict, factor: float, floor: float, timing: bool) -> list[Change]:
    if a.get("type") == "bench":
        return _timing_changes(case, a, b) if timing else []
    # check_record gave every sweep record a str status
    sa, sb = cast(str, a.get("status")), cast(str, b.get("status"))
    if _worse_status(sa, sb):
        failing = [n for n, x in sorted((b.get("inputs") or {}).items()) if isinstance(x, dict) and x.get("status") == "fail"]
        why = f"fails {', '.join(failing)}" if failing else b.get("error") or b.get("reason") or ""
        return [Change(case, "regression", f"{sa} -> {status_name(sb)}" + (f": {str(why)[:160]}" if why else ""))]
    if status_name(sa) != PASS and status_name(sb) == PASS:
        return [Change(case, "improvement", f"{status_name(sa)} -> pass")]
    return _suite_changes(case, a, b, factor, floor) if sa == sb == "pass" else []


def _layer_status(layer: dict) -> str:
    """A scan document's layer status: "status" since 0.3, the older "passed" flag before."""
    if isinstance(layer.get("status"), str):
        return status_name(layer["status"])
    by_flag: dict[object, str] = {True: "pass", False: "fail"}  # "passed" may be missing or not a bool
    return by_flag.get(layer.get("passed"), "not checked")


def _scan_layer(case: str, a: dict, b: dict) -> list[Change]:
    sa, sb = _layer_status(a), _layer_status(b)
    if _worse_status(sa, sb):
        return [Change(case, "regression", f"pass -> {sb.upper()}: {b.get('validation', '')}"[:200])]
    if sa != PASS and sb == PASS:
        return [Change(case, "improvement", f"{sa} -> pass")]
    return []


def diff(base: str | Path, new: str | Path, *, factor: float = FACTOR, floor: float = FLOOR,
         timing: bool = False) -> DiffResult:
    """Every case of `base` looked up in `new` by case id (a scan's layers by their first node's name)."""
    if factor <= 1:
        raise BadInput(f"--factor must be > 1, got {factor}")
    base, new = Path(base), Path(new)
    kind_a, a, va = _load(base)
    kind_b, b, vb = _load(new)
    if kind_a != kind_b:
        raise BadInput(f"{base} is a {kind_a} and {new} a {kind_b}: compare two sweep folders or two scan documents")
    rep = DiffResult(str(base), str(new), kind_a, {"base": va, "new": vb})
    if versions_diff(va, vb):
        rep.notes.append("versions differ: " + ", ".join(f"{k} {va.get(k)} -> {vb.get(k)}" for k in versions_diff(va, vb)))
    if kind_a == "sweep" and not timing and any(r.get("type") == "bench" for r in a.values()):
        rep.notes.append("timings not compared (--timing compares them; across machines they seldom mean much)")
    for case, ra in sorted(a.items()):
        rb = b.get(case)
        if rb is None:
            rep.changes.append(Change(case, "regression", "disappeared: in the base, not in the new results"))
            continue
        rep.compared += 1
        rep.changes += _sweep_case(case, ra, rb, factor, floor, timing) if kind_a == "sweep" else _scan_layer(case, ra, rb)
    rep.changes += [Change(case, "new", "not in the base") for case in sorted(set(b) - set(a))]
    return rep

