"""`normonnx fix` (`normonnx.fix()`): give each norm of a user's model that fails on the runtimes it ships to a
form that passes there, and prove it.

`scan` finds the norms; each selected rule (`rules`) offers the candidate forms it can write for a layer,
or refuses with a reason; `proof` validates every layer as scan does and each candidate against the
layer's own norm, and picks one; the choices are applied with onnx_ir (the graph IR onnxscript uses),
each layer's replacement standing exactly between the norm's input and output values, so graph inputs,
outputs, names, metadata and every initializer a rule did not use stay as they were. The written model
is judged by `scan --validate` itself, and run beside the original on seeded inputs.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..core.errors import BadInput, ExitCode, first_line
from ..core.judge import FAIL, NOT_CHECKED, PASS, Verdict, judge
from ..core.registry import freeze_names
from ..core.safeio import check_output_path, publish, staging
from ..engine.layers import LayerVerdict, check_runtime_request
from ..features.scan import ScanResult, scan
from ..graph import rewrite
from ..graph.graph import (
    check_external_data,
    copy_external_data,
    inline_bytes,
    load_model,
    opset_of,
    over_proto_limit,
    sort_nodes,
)
from ..graph.patterns import FoundNorm
from ..graph.rewrite import apply, layer_region, to_checked_proto
from ..graph.rules import RULES, Rule, select
from ..graph.shapes import fix_input_shapes, infer_shapes
from . import proof as proving  # the module; `proof` is fix's ProofOptions

__all__ = ["fix", "FixResult", "LayerFix", "RULES", "Rule", "select", "layer_region"]

@dataclass
class LayerFix:
    """One found norm and what fix did with it. status: rewritten | would rewrite | passes (validated,
    nothing to do) | failing (fails on a target runtime and no form passes: kept as it was) | refused |
    unchanged (no selected rule covers it) | not checked | left (inside a subgraph or function)."""

    index: int
    norm: FoundNorm
    status: str
    rule: str | None = None
    after: str | None = None
    reason: str | None = None
    before: LayerVerdict | None = None  # the layer's validation as scan --validate reports it
    candidates: list = field(default_factory=list)  # proof.Candidate, in the rule's order of preference
    form: str | None = None  # the chosen form
    final: LayerVerdict | None = None  # the written model's validation of this layer (scan --validate)
    written: tuple[str, ...] = ()  # the names of the nodes the rewrite wrote (rewrite.apply says which)
    # where no form passes: the least bad candidate (fails fewer checks than the current form somewhere and
    # no more anywhere) and whether --least-bad kept it, or, where none is, the closest and where it is worse
    least_bad: dict | None = None

    def to_dict(self) -> dict:
        return {"layer": self.norm.nodes[0], "kind": self.norm.kind, "before": self.norm.op, "form": self.norm.form,
                "output": self.norm.output, "status": self.status, "rule": self.rule, "chosen": self.form,
                "after": self.after, "reason": self.reason, "risks": [r.message for r in self.norm.risks],
                "risk_codes": [r.code for r in self.norm.risks],
                "validation_before": self.before.to_dict() if self.before else None,
                "candidates": [c.to_dict() for c in self.candidates],
                "validation_after": self.final.to_dict() if self.final else None, "least_bad": self.least_bad}


@dataclass
class FixResult:
    model: str
    output: str | None
    opset: int
    layers: list[LayerFix]
    mode: str = "fix"  # fix | dry-run | check
    runtimes: tuple[str, ...] = ("cpu",)
    proven: bool = True
    written: bool = False
    whole_model: proving.WholeModel | None = None
    timing: proving.ModelTiming | None = None
    after: ScanResult | None = None  # the written model's (the judge of the exit code)
    notes: list[str] = field(default_factory=list)
    allow_not_checked: bool = False  # ProofOptions.allow_not_checked
    data_output: str | None = None  # the weights' file written beside `output` (external data), if any

    @property
    def changes(self) -> list[LayerFix]:
        return [lf for lf in self.layers if lf.status in ("rewritten", "would rewrite")]

    @property
    def failing(self) -> list[LayerFix]:
        return [lf for lf in self.layers if lf.status == "failing" or (lf.final and lf.final.status == FAIL)]

    def failing_on(self) -> list[str]:
        """The target runtimes on which a failing layer fails (as the written model's scan, or the layer's own
        validation, says), in the targets' order."""
        verdicts = [lf.final or lf.before for lf in self.failing]
        return [rt for rt in self.runtimes if any(rt in v.failing_on() for v in verdicts if v is not None)]

    @property
    def verdict(self) -> Verdict:
        """The one judge (normonnx.core.judge) over every layer: as it is (check, dry run; a layer that would
        change fails --check) or in the written model (fix), as scan --validate with the same runtimes and
        suites judges them, and over the whole model's comparison with the original (differs: FAIL; could
        not be compared: not checked). A rewritten layer the written model's scan cannot validate in place
        is not checked (not proven); without a proof (--no-proof) nothing is checked. No norm: nothing checked."""
        if self.mode != "fix":
            v = judge([lf.before.status if lf.before is not None else NOT_CHECKED for lf in self.layers],
                      self.allow_not_checked)
            if self.changes:
                return Verdict(FAIL, v.passed, v.failed + len(self.changes), v.not_checked, v.internal, v.skipped)
            return v
        if not self.proven or self.after is None:
            return Verdict(NOT_CHECKED)
        statuses = [c.status for c in self.after.validations.values()] or [NOT_CHECKED]
        statuses += [NOT_CHECKED for lf in self.unproven if lf.final is None]
        if self.whole_model is not None:
            statuses.append(self.whole_model.status)
        return judge(statuses, self.allow_not_checked)

    @property
    def unproven(self) -> list[LayerFix]:
        """Rewritten layers the written model's scan --validate did not pass (found, validated, passed)."""
        if self.mode != "fix" or not self.proven or self.after is None:
            return []
        return [lf for lf in self.changes if lf.final is None or lf.final.status != PASS]

    @property
    def exit_code(self) -> ExitCode:
        """--check: 1 if anything would change or a layer fails (0 implies scan --validate passes too).
        fix: the judge's verdict (see `verdict`): 0 only for a model that was written and proven; 4 without
        a proof (--no-proof)."""
        return ExitCode.PASSED if self.mode == "dry-run" else self.verdict.exit_code

    def to_dict(self) -> dict:
        v = self.verdict
        return {"model": self.model, "output": self.output, "opset": self.opset, "mode": self.mode,
                "runtimes": list(self.runtimes), "proven": self.proven, "written": self.written,
                "data_output": self.data_output, "changes": len(self.changes), "failing": len(self.failing),
                "verdict": v.status,
                "layers": [lf.to_dict() for lf in self.layers],
                "whole_model": self.whole_model.to_dict() if self.whole_model else None,
                "timing": self.timing.to_dict() if self.timing else None, "notes": self.notes,
                "exit_code": int(self.exit_code)}


# the name before issue 35 ("report" is now only the HTML/Markdown report), kept for code that imports it
FixReport = FixResult


# -- inputs ----------------------------------------------------------------------------------------
def _check_output(src: Path, out: Path | None, model: onnx.ModelProto) -> None:
    if out is None:
        raise BadInput("give the output path: normonnx fix MODEL.onnx -o FIXED.onnx")
    if out.exists() and out.is_dir():
        raise BadInput(f"-o {out} is a folder: give a file path such as {out / 'fixed.onnx'}")
    check_output_path(out, "fixed model")
    if _data_path(out).is_symlink() or (_data_path(out).exists() and not _data_path(out).is_file()):
        raise BadInput(f"-o {out}: {_data_path(out).name} beside it is a link or not a regular file: remove it")
    if out.resolve() == src.resolve():
        raise BadInput(f"-o {out} is the input model: fix never overwrites its input; give another path")
    folder = out.resolve().parent
    if not folder.is_dir():
        raise BadInput(f"-o {out}: the folder {folder} does not exist")
    _refuse_input_files(src, out, model)
    try:  # a real write (a fresh, exclusive folder), not os.access: read-only mounts and /proc answer yes
        with staging(out):
            pass
    except OSError as e:
        raise BadInput(f"-o {out}: cannot write in the folder {folder} ({e.strerror})") from None
    _check_room(src, out, model)


def _check_room(src: Path, out: Path, model: onnx.ModelProto) -> None:
    """Refuse before any work when -o's folder cannot hold a copy of the weights (the output's data file
    is the input's tensors streamed; ENOSPC half-way through a 14 GB copy helps nobody)."""
    import shutil

    need = sum(e.nbytes for e in check_external_data(model, src.parent, files=False)) + inline_bytes(model)
    free = shutil.disk_usage(out.resolve().parent).free
    if need > free:
        raise BadInput(f"-o {out}: the fixed model needs about {need / 1e9:.2f} GB free in {out.resolve().parent}, "
                       f"which has {free / 1e9:.2f} GB: free some space or write elsewhere")


def _refuse_input_files(src: Path, out: Path, model: onnx.ModelProto) -> None:
    used = {e.path.resolve() for e in check_external_data(model, src.parent, files=False)}
    for target in (out, _data_path(out)):
        if target.resolve() in used:
            raise BadInput(f"-o {out} would overwrite {target.name}, which holds the input model's weights: choose "
                           "another output name or folder")


def _data_path(out: Path) -> Path:
    """Where the output's external data goes (only when the input had some): beside it, in its folder."""
    return out.with_name(out.name + ".data")


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _convert_opset(model: onnx.ModelProto, opset: int | None) -> onnx.ModelProto:
    have = opset_of(model)
    if opset is None or opset == have:
        return model
    if opset < have:
        raise BadInput(f"--opset {opset} is below the model's opset {have}: fix only raises an opset")
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as e:
        raise BadInput(f"--opset {opset}: ONNX's version converter cannot convert this model from opset {have} "
                       f"({first_line(e, 200)}); leave --opset out to fix within opset {have}") from None


def plan_layers(model: onnx.ModelProto, rules: list[Rule], base: Path | None = None) -> tuple[list[LayerFix], dict]:
    """rewrite.plan_layers over the norms find_layers confirms, each layer as a LayerFix (the row the proof
    fills in)."""
    from ..engine.probe import find_layers

    covered, plans = rewrite.plan_layers(model, rules, base, find_layers(model, base or Path("."))[0])
    return [LayerFix(c.index, c.norm, c.status, c.rule, reason=c.reason) for c in covered], plans

# -- the command -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FixOptions:
    """What fix may change: rules/skip_rules (names from normonnx.repair.fixer.RULES; None: all), opset (raise
    the model's opset to this first; None: never), input_shapes (dims for symbolic graph inputs)."""

    rules: tuple[str, ...] | None = None
    skip_rules: tuple[str, ...] | None = None
    opset: int | None = None
    input_shapes: dict[str, tuple[int, ...]] | None = None

    def __post_init__(self):
        freeze_names(self, "rules", "skip_rules")


@dataclass(frozen=True)
class ProofOptions:
    """How fix proves what it writes: prove=False writes the rules' first form for every layer with a known
    risk, unproven (exit code 4); runtimes: the targets (default: ORT CPU); inputs: the suites (default: all);
    timing: time passing forms against each other and the whole models; least_bad: where no form passes,
    keep the one that fails fewest checks if it fails fewer than the original; allow_not_checked: layers that
    could not be checked do not keep the verdict from PASS (they are counted); write_unproven: write the
    output even where a layer still fails or something could not be checked (exit code unchanged, and the
    last line says so) -- never a model that differs from the original. Without it, fix writes only what it
    proved: exit 0 if and only if the output exists."""

    prove: bool = True
    runtimes: tuple[str, ...] | None = None
    inputs: tuple[str, ...] | None = None
    timing: bool = True
    least_bad: bool = False
    allow_not_checked: bool = False  # PASS beside layers (or a whole model) that could not be checked
    write_unproven: bool = False  # write the output even when it is not proven (never when it differs)

    def __post_init__(self):
        freeze_names(self, "runtimes", "inputs")


MODES = ("fix", "dry-run", "check")


def fix(path: str | Path, output: str | Path | None = None, *, mode: str = "fix", change: FixOptions = FixOptions(),
        proof: ProofOptions = ProofOptions(), progress=None) -> FixResult:
    """Rewrite the norms of the model at `path` that fail on the target runtimes (default: ORT CPU)
    into forms that pass there, into `output` (never the input), proving each rewrite (see normonnx.repair.proof).
    mode dry-run/check only says what would change (check: exit code 1 if anything would change or a
    layer fails); `change` says what may change, `proof` how it is proven."""
    if mode not in MODES:
        raise BadInput(f"unknown fix mode {mode!r}: valid modes are {', '.join(MODES)}")
    rules, skip_rules, opset, input_shapes = change.rules, change.skip_rules, change.opset, change.input_shapes
    prove, timing, least_bad = proof.prove, proof.timing, proof.least_bad
    inputs = list(proof.inputs) if proof.inputs else None
    check, dry_run = mode == "check", mode == "dry-run"
    chosen = select(rules, skip_rules)
    src = Path(path)
    # the weights stay in their files: rules read a layer's parameters on demand (Graph.base), the proof
    # reads each cut-out layer's, and the output's data file is streamed from the input's
    model = load_model(src, load_external_data=False)  # every check; which tensors live in which files
    check_external_data(model, src.parent)  # and every data file there, before any work: fix copies them all
    sorted_note = sort_nodes(model.graph)  # ORT runs a graph out of order; so does fix (and writes it sorted)
    out = Path(output) if output is not None else None
    if mode == "fix":
        _check_output(src, out, model)
    if (check or dry_run) and not prove:
        raise BadInput("--check and --dry-run judge layers by validating them: leave out --no-proof")
    runtimes = check_runtime_request(list(proof.runtimes or proving.DEFAULT_RUNTIMES), inputs)  # before any work
    converted = _convert_opset(model, opset)
    analysed = onnx.ModelProto()
    analysed.CopyFrom(converted)
    if input_shapes:
        fix_input_shapes(analysed, input_shapes)
    analysed = infer_shapes(analysed)
    layers, plans = plan_layers(analysed, chosen, base=src.parent)
    result = FixResult(str(src), str(out) if out and mode == "fix" else None, opset_of(converted), layers, mode,
                       tuple(runtimes), prove, allow_not_checked=proof.allow_not_checked)
    if sorted_note:
        result.notes.append(sorted_note)
    memo: dict = {}
    with tempfile.TemporaryDirectory(prefix="normonnx-fix-") as tmp:
        work = Path(tmp)
        if prove:
            proving.judge_layers(analysed, src.parent, layers, plans, work, runtimes, inputs, memo,
                                 timed=timing and mode == "fix", least_bad=least_bad, native=opset is not None,
                                 progress=progress)
        else:
            for lf in layers:
                if lf.index in plans and plans[lf.index].rule.wants(lf.norm.risks, proven=False):
                    first = plans[lf.index].plans[0]
                    lf.status, lf.form, lf.after = "would rewrite", first.form, first.after
    if mode != "fix":
        return result
    assert out is not None  # _check_output refused None in fix mode
    _write(result, model, converted, layers, plans, src, out, input_shapes, proof, memo)
    return result


def _write(result: FixResult, model: onnx.ModelProto, converted: onnx.ModelProto, layers: list, plans: dict,
           src: Path, out: Path, input_shapes: dict | None, proof: ProofOptions, memo: dict) -> None:
    """Rewrite the chosen layers, stage the output beside -o, prove it, and publish it only if proven."""
    norms = {lf.index: lf.norm for lf in layers}
    todo = {lf.index: (next(p for p in plans[lf.index].plans if p.form == lf.form), plans[lf.index].start)
            for lf in result.changes}
    irm, written = apply(converted, todo, norms)
    fixed, note = to_checked_proto(irm, converted)
    del irm
    if note:
        result.notes.append(note)
    for lf in result.changes:
        lf.status, lf.written = "rewritten", written[lf.index]
    inputs = list(proof.inputs) if proof.inputs else None
    # the candidate is the output itself, staged beside -o (its weights streamed there once), judged,
    # then published or thrown away
    external = _has_external_data(model)
    with staging(out) as folder:
        cand, cand_src = _save(fixed, folder / out.name, src.parent, external=external)
        del fixed  # written: an inline model's copy of its weights is not kept through the proof
        # compared with the input itself, also after --opset (a version converter that changed what the
        # model computes is caught too), its weights shared with the output's session
        own = _sources(onnx.load(str(cand), load_external_data=False), cand.parent) if external else None
        shared = (model, _sources(model, src.parent), cand_src, own) if external else None
        _prove_written(result, layers, src, cand, input_shapes, inputs, memo, proof.timing, shared)
        if _may_publish(result, proof.write_unproven):
            if cand.with_name(cand.name + ".data").exists():
                publish(cand.with_name(cand.name + ".data"), _data_path(out), "fixed model's weights")
                result.data_output = str(_data_path(out))
            publish(cand, out, "fixed model")
            result.written = True


def _may_publish(result: FixResult, write_unproven: bool) -> bool:
    """fix writes only what it proved: the judge's PASS, or an explicit flag (--no-proof: nothing proven;
    --write-unproven: not proven, but never a model that differs from the original). A note says why not."""
    if not result.proven or result.verdict.status == PASS:
        return True
    w = result.whole_model
    if w is not None and w.status == FAIL:
        result.notes.append("nothing written: the fixed model differs from the original on seeded inputs")
        return False
    if write_unproven:
        return True
    failing = ",".join(result.failing_on() or result.runtimes)
    why = ("a layer still fails on " + failing if result.verdict.status == FAIL else
           "normonnx failed on a check (an internal error)" if result.verdict.internal else
           "the whole model could not be compared with the original" if w is not None and w.status != PASS else
           "something could not be checked")
    result.notes.append(f"nothing written: the fixed model is not proven ({why}); --write-unproven writes it anyway")
    return False


def _prove_written(result: FixResult, layers: list[LayerFix], original: Path, cand: Path, input_shapes, inputs,
                   memo: dict, timing: bool, shared: tuple | None) -> None:
    """The written model judged by scan --validate itself (memo: unchanged layers are not re-run), and run
    beside the original on seeded inputs when anything changed (with nothing rewritten the output is the
    input re-serialized: nothing to compare), one ORT session per model for both the outputs and the timing.
    shared: (model, where the original's and the output's weights came from): the two sessions then read
    the weights both have from the input's files, once."""
    if not result.proven:
        return
    result.after = scan(cand, validate=True, runtimes=list(result.runtimes), inputs=inputs,
                        input_shapes=input_shapes, check_fusion=False, memo=memo,
                        allow_not_checked=result.allow_not_checked)
    _map_final(result, layers)
    if not result.changes:
        return
    dtypes = tuple(sorted({lf.norm.dtype for lf in result.changes if lf.norm.dtype}))
    weights = proving.shared_weights(*shared) if shared else {}
    result.whole_model, loaded = proving.compare_models(original, cand, input_shapes, layer_dtypes=dtypes,
                                                        shared=weights, provider=proving.ort_target(result.runtimes))
    if timing and result.whole_model.status == PASS:
        # up to 9 interleaved rounds (each a run of both); a long run's stop at the first steady round from the third
        assert loaded is not None  # compare_models gives the sessions with every comparison that passed
        result.timing = proving.time_models(loaded)


def _map_final(result: FixResult, layers: list[LayerFix]) -> None:
    """Each layer's verdict in the written model: the norm scan finds among the nodes the rewrite wrote
    for a rewritten layer, or at an unchanged layer's output."""
    after = result.after
    assert after is not None  # _write scanned the written model just before
    for lf in layers:
        if lf.status == "rewritten":
            idx = [i for i, f in enumerate(after.norms) if not f.scope and set(f.nodes) & set(lf.written)]
        else:
            idx = [i for i, f in enumerate(after.norms) if f.output == lf.norm.output and f.scope == lf.norm.scope]
        vals = [after.validations[i] for i in idx if i in after.validations]
        if len(vals) == 1:
            lf.final = vals[0]
        elif vals:  # a rewrite scan finds as several norms: the one judge over them
            lf.final = LayerVerdict(judge(x.status for x in vals).status, "; ".join(x.validation for x in vals),
                                    by_runtime=_joined(x.by_runtime for x in vals))


def _joined(per_layer) -> dict | None:
    """Several layers' by_runtime verdicts as one: per runtime, the judge over theirs, the failures added up,
    the first failing (or unchecked) one's words."""
    per_layer = [p for p in per_layer if p]
    if not per_layer:
        return None
    out = {}
    for rt in dict.fromkeys(rt for p in per_layer for rt in p):
        ds = [p[rt] for p in per_layer if rt in p]
        v = judge(d["status"] for d in ds)
        first = next((d for d in ds if d["status"] == v.status), ds[0])
        out[rt] = {**first, "status": v.status, "failed": sum(d["failed"] for d in ds)}
    return out


def _sources(model: onnx.ModelProto, base: Path) -> dict:
    """Where each main-graph initializer's bytes lie (graph.ExternalEntry by name)."""
    main = list(model.graph.initializer)  # referenced, so each keeps its id() (protobuf's Python objects)
    entries = {id(e.tensor): e for e in check_external_data(model, base)}
    return {t.name: entries[id(t)] for t in main if id(t) in entries}


def _save(proto: onnx.ModelProto, path: Path, base: Path, *, external: bool) -> tuple[Path, dict]:
    """Save like the input: one file, or (when the input had external data, or one file would pass
    protobuf's 2 GB limit) every tensor of 1 kB or more in PATH.data beside it, the input's weights
    streamed from `base` by the kernel, never held here. The data file is written by normonnx rather than
    onnx's saver, which refuses when a file of the data file's *name* exists in the current folder (run
    from the input's folder with -o fixed/SAME.onnx)."""
    external = external or over_proto_limit(proto)
    sources = copy_external_data(proto, base, path.with_name(path.name + ".data")) if external else {}
    try:
        onnx.save(proto, str(path))
    except ValueError as e:  # protobuf's 2 GB limit on one message
        raise BadInput(f"the fixed model's graph is over protobuf's 2 GB limit ({first_line(e, 200)}): store the "
                       "input's weights as external data first (onnx.save_model(..., save_as_external_data=True))") \
            from None
    return path, sources
