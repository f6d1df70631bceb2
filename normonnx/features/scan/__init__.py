"""Find every normalization layer inside a user's ONNX model, say what it is and how risky it is,
and (optionally) validate each one in isolation against the float64 oracle.

`normonnx.graph.identify` finds norms (main graph, If/Loop/Scan bodies, model-local functions; by their ops
and, written out, by what they compute, confirmed by `normonnx.engine.probe`), `normonnx.engine.fusion` asks ORT what
it fuses, `normonnx.graph.cutout` cuts layers out, `normonnx.engine.layers` validates each (reading the spec and
parameters it claims with `normonnx.graph.derive`), and `scan()` here runs them in order. What looks like a
norm and cannot be made one is named ("possible norm, not identified") and counts as not checked. The model is only read: external data is checked (never read outside the model's
folder) and loaded only for the tensors of the layers being validated.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from ...core.errors import BadInput, ExitCode
from ...core.judge import NOT_CHECKED, PASS, Verdict, judge
from ...engine.fusion import ort_fusion, ort_optimized
from ...engine.layers import (
    LayerVerdict,
    check_runtime_request,
    passed_where_checked,
    run_layer,
    validate_cached,
    validate_in_parallel,
    validate_layer,
)
from ...engine.probe import find_layers
from ...graph.cutout import Cutter
from ...graph.derive import concrete_shape, derive_spec, params_from_model
from ...graph.graph import Graph, load_model, opset_of, sort_nodes
from ...graph.patterns import FoundNorm, LeftOut
from ...graph.shapes import fix_input_shapes, infer_shapes

__all__ = ["scan", "ScanResult", "FoundNorm", "LeftOut", "find_layers", "find_norms", "derive_spec", "concrete_shape",
           "params_from_model", "validate_layer", "run_layer", "LayerVerdict"]


@dataclass
class ScanResult:
    model: str
    opset: int
    producer: str
    norms: list[FoundNorm]
    fused: dict[int, object] = field(default_factory=dict)  # True, False or "partly: <ops>" (extract.ort_fusion)
    fusion_note: str | None = None  # why fusion is unknown, when it is
    validations: dict[int, LayerVerdict] = field(default_factory=dict)  # norm index -> its verdict
    left_out: list[LeftOut] = field(default_factory=list)  # norm-shaped, not activation norms (and why)
    checked_on: str = ""  # what --validate ran each layer on: runtimes and input suites
    runtimes: list[str] = field(default_factory=list)  # the runtimes --validate ran each layer on, in order
    validated: bool = False  # --validate was asked for: the exit code is then the judge's over the layers
    allow_not_checked: bool = False  # PASS beside layers that could not be checked (--allow-not-checked)
    notes: list[str] = field(default_factory=list)  # what normonnx did to read the model (it sorted its nodes, ...)

    @property
    def unidentified(self) -> list[LeftOut]:
        """Possible norms: structure shaped like a norm that is not one of the found ones, with why."""
        return [x for x in self.left_out if x.kind == "?"]

    @property
    def verdict(self) -> Verdict:
        """The one judge over every found layer (a layer without a verdict is not checked) and every possible
        norm not identified (nothing checked there): FAIL if one failed, internal error if normonnx failed on
        one, NOT CHECKED if any could not be checked (or the model holds no norm: nothing was checked), else PASS."""
        statuses = [self.validations[i].status if i in self.validations else NOT_CHECKED
                    for i in range(len(self.norms))] + [NOT_CHECKED] * len(self.unidentified)
        v = judge(statuses, self.allow_not_checked)
        # a layer that passed on some runtime and failed on none was checked, if not everywhere: accepted as such
        # (by --allow-not-checked only), where no layer passed everywhere
        partly = [lv for lv in self.validations.values()
                  if lv.status == NOT_CHECKED and passed_where_checked(lv.by_runtime)]
        if v.status == NOT_CHECKED and self.allow_not_checked and not v.failed and not v.internal and partly:
            v = replace(v, status=PASS, allowed=True)
        return v

    @property
    def counts(self) -> dict[str, int]:
        v = self.verdict
        # "not_validated" is the same count under its name before 0.3 (JSON stays readable)
        return {"passed": v.passed, "failed": v.failed, "not_checked": v.not_checked, "internal_error": v.internal,
                "not_validated": v.not_checked}

    @property
    def exit_code(self) -> ExitCode:
        """Without --validate a scan only reports (0). With it, the judge's verdict over the layers."""
        return self.verdict.exit_code if self.validated else ExitCode.PASSED

    def to_dict(self) -> dict:
        norms = []
        for i, f in enumerate(self.norms):
            d = f.to_dict()
            d["ort_fused"] = self.fused.get(i)
            if i in self.validations:
                d.update(self.validations[i].to_dict())
            norms.append(d)
        out = {"model": self.model, "opset": self.opset, "producer": self.producer, "count": len(self.norms),
               "norms": norms, "fusion_note": self.fusion_note,
               "left_out": [x.to_dict() for x in self.left_out if x.kind != "?"],
               "possible_norms": [x.to_dict() for x in self.unidentified], "notes": self.notes}
        if self.validated:
            v = self.verdict
            out.update(verdict=v.status, passed=v.status == PASS, counts=self.counts, exit_code=int(self.exit_code),
                       checked_on=self.checked_on, runtimes=list(self.runtimes), runtime_facts=self.runtime_facts(),
                       failing_on=self.failing_on())
        return out

    def failing_on(self) -> dict[str, list[int]]:
        """runtime -> the layers (by index) that failed a check on it."""
        out: dict[str, list[int]] = {rt: [] for rt in self.runtimes}
        for i, v in self.validations.items():
            for rt in v.failing_on():
                out.setdefault(rt, []).append(i)
        return {rt: idx for rt, idx in out.items() if idx}

    def runtime_facts(self) -> dict[str, dict]:
        """runtime -> its version and the precision it ran each layer dtype in (dtype -> precision), from the
        sessions that validated the layers."""
        out: dict[str, dict] = {}
        for i, v in self.validations.items():
            for rt, f in (v.runtime_facts or {}).items():
                d = out.setdefault(rt, {"version": f.get("version"), "precision": {}})
                d["precision"].setdefault(self.norms[i].dtype or "unknown", f.get("precision"))
        return out


def scan(path: str | Path, *, validate: bool = False, runtimes: list[str] | None = None,
         inputs: list[str] | None = None, check_fusion: bool = True, progress=None,
         input_shapes: dict[str, tuple[int, ...]] | None = None, jobs: int = 1, memo: dict | None = None,
         allow_not_checked: bool = False, confirming=None) -> ScanResult:
    """Find the norms of the model at `path`; with validate=True check each one in isolation.
    input_shapes: dims for graph inputs whose dims are symbolic (the CLI's --input-shape);
    jobs: processes validating layers in parallel; memo: validations already made of identical
    cut-out layers (normonnx fix passes its own, so a layer it did not change is not validated twice);
    allow_not_checked: the verdict is PASS when layers that could not be checked stand beside ones that
    passed (they are still counted and listed); confirming: find_layers' (--activations' Capture.start)."""
    if jobs < 1:
        raise BadInput(f"--jobs must be >= 1, got {jobs}")
    if validate:
        runtimes = check_runtime_request(runtimes, inputs)
    p = Path(path)
    model = load_model(p, load_external_data=False)  # checks every external-data entry, reads none
    if input_shapes:
        fix_input_shapes(model, input_shapes)
    sorted_note = sort_nodes(model.graph)  # ORT runs a graph out of order: so does normonnx, on its copy
    model = infer_shapes(model)  # value_info for the cut-outs and for dtypes
    main = Graph(model.graph)  # one index of the main graph for the fusion map
    norms, left_out = find_layers(model, p.parent, confirming)
    result = ScanResult(str(p), opset_of(model), f"{model.producer_name} {model.producer_version}".strip(),
                        norms, left_out=left_out, validated=validate, allow_not_checked=allow_not_checked,
                        notes=[sorted_note] if sorted_note else [])
    # one ORT session over the whole model (a thread beside the search was measured slower on 2 cores)
    if check_fusion and any(f.form == "decomposed" and not f.scope for f in norms):
        opt, result.fusion_note = ort_optimized(p)
        result.fused = ort_fusion(opt, main, norms)
    if not norms or not validate:
        return result
    assert runtimes is not None  # validate: check_runtime_request named them above
    result.checked_on = (f"{', '.join(runtimes)}; input suites: {', '.join(inputs) if inputs else 'every one that applies'}")
    result.runtimes = list(runtimes)
    extractor = Cutter(model, p.parent)
    with tempfile.TemporaryDirectory(prefix="normonnx-scan-") as tmp:
        layers = {}
        for i, f in enumerate(norms):
            try:
                layers[i] = extractor.extract(f, Path(tmp) / f"layer{i}.onnx")
            except BadInput as e:
                result.validations[i] = LayerVerdict.not_checked(str(e))
            except Exception as e:  # normonnx's own failure on this layer: exit 5, the others still judged
                result.validations[i] = LayerVerdict.internal(e)
        if jobs == 1 or memo is not None:
            memo = {} if memo is None else memo
            for n, (i, layer) in enumerate(layers.items()):
                if progress:
                    progress(n, len(layers), norms[i])
                result.validations[i] = validate_cached(norms[i], layer, runtimes, inputs, memo)
        else:
            result.validations.update(validate_in_parallel(norms, layers, runtimes, inputs, jobs, progress))
    result.validations = dict(sorted(result.validations.items()))
    return result


def find_norms(path: str | Path) -> list[FoundNorm]:
    """Every norm of the model at `path`, written-out ones confirmed: scan's list, without the checks of its result."""
    p = Path(path)
    model = infer_shapes(load_model(p, load_external_data=False))
    return find_layers(model, p.parent)[0]
