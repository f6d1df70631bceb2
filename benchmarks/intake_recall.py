"""Recall and precision of `normonnx.features.scan` on the intake corpus (ONNX files other toolchains write; built by
tests/intake/build_foreign.py and tests/intake/build_local.py), per producer, with every missed,
mislabelled and unexpected norm and the op chain around it.

    python benchmarks/intake_recall.py CORPUS_DIR [CORPUS_DIR ...] [--no-validate] [--json OUT]

For each file of each manifest: scan(path, validate=True) (its exit code and norms; when it raises, the
file is "refused" and a plain scan(path) is tried for the norms), then found norms are matched to the
expected ones: first by place (same input or output value as the ground truth located, or an output
computed inside its region), then greedily by kind, closest eps and groups. A found norm at an expected one's place with another kind is
"mislabelled" (a miss and a false find). Matched norms are also compared on eps, groups, axes and the
statistics' dtype ("spec differences").
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "intake"))
import ground_truth as gt  # noqa: E402  (numpy/onnx only: the manifest format and op chains)


def run_scan(path: Path, validate: bool) -> dict:
    """scan's norms, exit code and refusal (first line) for one file."""
    from normonnx.core.errors import ExitCode, NormonnxError
    from normonnx.features.scan import scan

    out = {"norms": [], "exit": None, "refused": None, "validations": {}}
    t0 = time.time()
    try:
        rep = scan(path, validate=validate)
        out["norms"], out["exit"] = rep.norms, int(rep.exit_code)
        out["validations"] = {i: v.status for i, v in rep.validations.items()}
    except Exception as e:  # noqa: BLE001 - a refusal is a measured outcome
        out["refused"] = gt.first_line(e)
        out["exit"] = int(e.exit_code) if isinstance(e, NormonnxError) else int(ExitCode.INTERNAL)
        if validate:
            try:
                out["norms"] = scan(path).norms
            except Exception:  # noqa: BLE001
                pass
    out["seconds"] = time.time() - t0
    return out


def _eps_distance(a: float | None, b: float | None) -> float:
    if not a or not b:
        return math.inf
    return abs(math.log(a / b))


def match(expected: list[dict], found: list, regions: list[set[str]] | None = None) -> dict:
    """Pair expected and found norms: by place (same input or output value, or the found norm's output
    computed inside the expected norm's region), then greedily by kind, eps and groups."""
    free_e, free_f = list(range(len(expected))), list(range(len(found)))
    matched, mislabelled = [], []
    regions = regions or [set() for _ in expected]
    for ie in list(free_e):
        e = expected[ie]
        here = [i for i in free_f if (e["output"] and found[i].output == e["output"])
                or (e["input"] and found[i].input == e["input"]) or found[i].output in regions[ie]]
        if not here:
            continue
        same = [i for i in here if found[i].kind == e["kind"]]
        i = same[0] if same else here[0]
        (matched if same else mislabelled).append((ie, i))
        free_e.remove(ie)
        free_f.remove(i)
    for ie in list(free_e):
        e = expected[ie]
        cands = [i for i in free_f if found[i].kind == e["kind"]]
        if not cands:
            continue
        i = min(cands, key=lambda i: (found[i].groups != e["groups"], _eps_distance(found[i].eps, e["eps"])))
        matched.append((ie, i))
        free_e.remove(ie)
        free_f.remove(i)
    return {"matched": matched, "mislabelled": mislabelled, "missed": free_e, "unexpected": free_f}


def spec_differences(e: dict, f) -> list[str]:
    diffs = []
    if f.eps is not None and e["eps"] and _eps_distance(f.eps, e["eps"]) > 0.05:  # float16 rounds 1e-6 by 1.3 %
        diffs.append(f"eps {f.eps:.3g} (expected {e['eps']:.3g})")
    if e["kind"] == "gn" and f.groups != e["groups"]:
        diffs.append(f"groups {f.groups} (expected {e['groups']})")
    if e["kind"] in ("ln", "rms") and f.axes is not None and e["input_shape"]:
        nd = len(e["input_shape"])
        if sorted(a % nd for a in f.axes) != e["normalized_axes"]:
            diffs.append(f"axes {list(f.axes)} (expected {e['normalized_axes']})")
    stats = getattr(f, "stats_dtype", None) or f.dtype
    if e["stats_dtype"] and stats and stats != e["stats_dtype"]:
        diffs.append(f"statistics dtype {stats}, computed in {e['stats_dtype']}")
    return diffs


def regions_of(index: gt.Index | None, expected: list[dict]) -> list[set[str]]:
    """The values computed inside each expected norm's region (input to output)."""
    out = []
    for e in expected:
        vals: set[str] = set()
        if index is not None and e["input"] and e["output"]:
            for i in index.region(e["input"], e["output"]):
                vals.update(index.nodes[i].output)
        out.append(vals)
    return out


def chain_of(index: gt.Index | None, f) -> str:
    if index is None:
        return f.op
    try:
        return index.chain(f.input, f.output) or f.op
    except Exception:  # noqa: BLE001
        return f.op


def evaluate(corpora: list[Path], validate: bool, progress: bool = True) -> list[dict]:
    rows = []
    for corpus in corpora:
        manifest = gt.load_manifest(corpus)
        for entry in manifest["files"]:
            path = corpus / entry["file"]
            res = run_scan(path, validate)
            index = None
            try:
                index = gt.Index(onnx.load(str(path), load_external_data=False))
            except Exception:  # noqa: BLE001
                pass
            m = match(entry["expected"], res["norms"], regions_of(index, entry["expected"]))
            exp, fnd = entry["expected"], res["norms"]
            rows.append({
                "file": entry["file"], "producer": entry["producer"], "class": entry["class"], "opset": entry["opset"],
                "expected": len(exp), "found": len(fnd), "matched": len(m["matched"]),
                "exit": res["exit"], "refused": res["refused"], "seconds": round(res["seconds"], 2),
                "validations": [res["validations"].get(i) for i in range(len(fnd))],
                "missed": [{k: exp[i].get(k) for k in ("kind", "eps", "groups", "normalized_axes", "channel_axis",
                                                      "stats_dtype", "input", "output", "op_chain", "param_ops")}
                           for i in m["missed"]],
                "mislabelled": [{"expected": exp[ie]["kind"], "found": f"{fnd[i].kind} {fnd[i].form} {fnd[i].op}",
                                 "op_chain": exp[ie]["op_chain"], "param_ops": exp[ie]["param_ops"],
                                 "found_chain": chain_of(index, fnd[i])} for ie, i in m["mislabelled"]],
                "unexpected": [{"found": f"{fnd[i].kind} {fnd[i].form} {fnd[i].op}", "input": fnd[i].input,
                                "output": fnd[i].output, "op_chain": chain_of(index, fnd[i]),
                                "file_has": [o.get("what", "") for o in entry.get("other", [])]
                                + [f"folded {o['kind']}" for o in entry.get("folded", [])]}
                               for i in m["unexpected"]],
                "spec_differences": [{"kind": exp[ie]["kind"], "found": f"{fnd[i].form} {fnd[i].op}",
                                      "diffs": spec_differences(exp[ie], fnd[i])}
                                     for ie, i in m["matched"] if spec_differences(exp[ie], fnd[i])],
            })
            if progress:
                r = rows[-1]
                print(f"  {r['file']}: expected {r['expected']}, found {r['found']}, matched {r['matched']}, "
                      f"exit {r['exit']}" + (f", REFUSED: {r['refused']}" if r["refused"] else ""),
                      file=sys.stderr, flush=True)
    return rows


# -- printing -------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f} %" if b else "-"


def summary(rows: list[dict]) -> str:
    by = defaultdict(list)
    for r in rows:
        by[r["producer"]].append(r)
    out = []
    for producer in sorted(by) + ["ALL"]:
        rs = rows if producer == "ALL" else by[producer]
        c = Counter(files=len(rs), expected=sum(r["expected"] for r in rs), found=sum(r["found"] for r in rs),
                    matched=sum(r["matched"] for r in rs), mislabelled=sum(len(r["mislabelled"]) for r in rs),
                    refused=sum(1 for r in rs if r["refused"]), spec=sum(len(r["spec_differences"]) for r in rs))
        exits = Counter(r["exit"] for r in rs)
        out.append([producer, c["files"], c["expected"], c["found"], c["matched"], c["mislabelled"],
                    pct(c["matched"], c["expected"]), pct(c["matched"], c["found"]), c["refused"], c["spec"],
                    " ".join(f"{k}:{v}" for k, v in sorted(exits.items(), key=lambda t: (t[0] is None, t[0] or 0)))])
    return table(["producer", "files", "expected", "found", "matched", "mislabelled", "recall", "precision",
                  "refused", "spec-diff", "exit codes"], out)


def _shapes(rows: list[dict]) -> dict:
    """(producer, what, op chain) -> [count, example file] of missed, mislabelled and unexpected norms."""
    shapes = defaultdict(lambda: [0, ""])
    for r in rows:
        keys = ([(r["producer"], "missed " + m["kind"], m["op_chain"] or "(not located)") for m in r["missed"]] +
                [(r["producer"], f"{m['expected']} reported as {m['found'].split()[0]}", m["op_chain"] or "")
                 for m in r["mislabelled"]] +
                [(r["producer"], f"unexpected {u['found'].split()[0]}", u["op_chain"]) for u in r["unexpected"]])
        for key in keys:
            shapes[key][0] += 1
            shapes[key][1] = shapes[key][1] or r["file"]
    return shapes


def details(rows: list[dict]) -> str:
    parts = []
    shapes = _shapes(rows)
    parts.append("distinct op-chain shapes of missed, mislabelled and unexpected norms (count, example file):")
    for (producer, what, chain), (n, example) in sorted(shapes.items()):
        parts.append(f"  {producer}: {what} x{n}: {chain}  [{example}]")
    parts.append("\nmissed expected norms:")
    for r in rows:
        for m in r["missed"]:
            parts.append(f"  {r['file']}: {m['kind']} eps={m['eps']:g}" + (f" groups={m['groups']}" if m["groups"] else "")
                         + f" axes={m['normalized_axes']} stats={m['stats_dtype']} {m['input']} -> {m['output']}\n"
                         f"      {m['op_chain']}" + (f"   params via {','.join(m['param_ops'])}" if m["param_ops"] else ""))
    parts.append("\nmislabelled (found at an expected norm's place, another kind):")
    for r in rows:
        for m in r["mislabelled"]:
            parts.append(f"  {r['file']}: expected {m['expected']}, found {m['found']}\n      {m['op_chain']}")
    parts.append("\nunexpected found norms:")
    for r in rows:
        for u in r["unexpected"]:
            note = f"   (file has: {'; '.join(u['file_has'])})" if u["file_has"] else ""
            parts.append(f"  {r['file']}: {u['found']} {u['input']} -> {u['output']}{note}\n      {u['op_chain']}")
    parts.append("\nspec differences of matched norms:")
    for r in rows:
        for s in r["spec_differences"]:
            parts.append(f"  {r['file']}: {s['kind']} ({s['found']}): {'; '.join(s['diffs'])}")
    parts.append("\nrefused (ORT runs these files):")
    for r in rows:
        if r["refused"]:
            parts.append(f"  {r['file']}: exit {r['exit']}: {r['refused']}")
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpora", nargs="+", type=Path, help="folders with manifest.json (build_foreign/build_local)")
    ap.add_argument("--no-validate", action="store_true", help="find only (no exit-code histogram)")
    ap.add_argument("--json", type=Path, help="write every file's result here")
    ap.add_argument("--quiet", action="store_true", help="no per-file progress on stderr")
    args = ap.parse_args(argv)
    import normonnx

    t0 = time.time()
    rows = evaluate(args.corpora, not args.no_validate, progress=not args.quiet)
    print(f"normonnx {normonnx.__version__} from {Path(normonnx.__file__).parent}; corpora: "
          f"{', '.join(map(str, args.corpora))}; scan{' --validate' if not args.no_validate else ''}; "
          f"{time.time() - t0:.0f} s")
    print(summary(rows))
    print()
    print(details(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
