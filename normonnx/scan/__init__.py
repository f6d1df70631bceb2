"""Find every normalization layer inside a user's ONNX model, say what it is and how risky it is,
and (optionally) validate each one in isolation against the float64 oracle.

`patterns` recognizes norms (main graph, If/Loop/Scan bodies, model-local functions), `extract`
cuts them out and asks ORT what it fuses, `derive` reads the spec and parameters a layer claims,
and `scan()` here runs them in order. The model is only read: external data is checked (never read
outside the model's folder) and loaded only for the tensors of the layers being validated.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..errors import BadInput, ExitCode, verdict_code
from ..graph import load_model, opset_of
from .derive import concrete_shape, derive_spec, params_from_model
from .extract import LayerExtractor, ort_fusion
from .patterns import FoundNorm, find_norms

__all__ = ["scan", "ScanReport", "FoundNorm", "find_norms", "derive_spec", "concrete_shape", "params_from_model",
           "validate_layer"]


@dataclass
class ScanReport:
    model: str
    opset: int
    producer: str
    norms: list[FoundNorm]
    fused: dict[int, bool | None] = field(default_factory=dict)
    fusion_note: str | None = None  # why fusion is unknown, when it is
    validations: dict[int, dict] = field(default_factory=dict)  # index -> summary of a ValidationReport

    @property
    def validated(self) -> bool:
        return bool(self.validations)

    @property
    def counts(self) -> dict[str, int]:
        vals = [v.get("passed") for v in self.validations.values()]
        return {"passed": vals.count(True), "failed": vals.count(False), "not_validated": vals.count(None)}

    @property
    def passed(self) -> bool:
        return self.exit_code == ExitCode.PASSED

    @property
    def exit_code(self) -> ExitCode:
        """Without --validate a scan only reports (0). With it: 1 if a layer failed its check, 4 if
        norms were found and none could be checked, else 0 (layers not validated are listed)."""
        if not self.validated:
            return ExitCode.PASSED
        c = self.counts
        return verdict_code(c["passed"], c["failed"], c["not_validated"])

    def to_dict(self) -> dict:
        norms = []
        for i, f in enumerate(self.norms):
            d = f.to_dict()
            d["ort_fused"] = self.fused.get(i)
            if i in self.validations:
                d.update(self.validations[i])
            norms.append(d)
        out = {"model": self.model, "opset": self.opset, "producer": self.producer, "count": len(self.norms),
               "norms": norms, "fusion_note": self.fusion_note}
        if self.validated:
            out.update(passed=self.passed, counts=self.counts, exit_code=int(self.exit_code))
        return out


def check_runtime_request(runtimes: list[str] | None, inputs: list[str] | None) -> list[str]:
    """Names checked before any work: an unknown name is BadInput (exit 2), a missing runtime
    RuntimeUnavailable (exit 3). Returns the runtimes to use (default: ORT CPU)."""
    from .. import inputs as suites
    from ..runtimes import require

    suites.get_suites(inputs)
    names = list(runtimes) if runtimes else ["cpu"]
    for n in names:
        require(n)
    return names


def scan(path: str | Path, *, validate: bool = False, runtimes: list[str] | None = None,
         inputs: list[str] | None = None, check_fusion: bool = True, progress=None) -> ScanReport:
    """Find the norms of the model at `path`; with validate=True check each one in isolation."""
    if validate:
        runtimes = check_runtime_request(runtimes, inputs)
    p = Path(path)
    model = load_model(p, load_external_data=False)  # checks every external-data entry, reads none
    try:
        model = onnx.shape_inference.infer_shapes(model)  # value_info for the extractor and for dtypes
    except Exception:
        pass
    norms = find_norms(model)
    report = ScanReport(str(p), opset_of(model), f"{model.producer_name} {model.producer_version}".strip(), norms)
    if not norms:
        return report
    if check_fusion:
        report.fused, report.fusion_note = ort_fusion(p, norms)
    if not validate:
        return report
    extractor = LayerExtractor(model, p.parent, norms)
    with tempfile.TemporaryDirectory(prefix="normonnx-scan-") as tmp:
        for i, f in enumerate(norms):
            if progress:
                progress(i, len(norms), f)
            try:
                layer = extractor.extract(f, Path(tmp) / f"layer{i}.onnx")
            except BadInput as e:
                report.validations[i] = {"passed": None, "validation": f"not validated: {e}"}
                continue
            report.validations[i] = validate_layer(f, layer, runtimes, inputs)
    return report


def validate_layer(f: FoundNorm, layer_path: Path, runtimes: list[str] | None, inputs: list[str] | None) -> dict:
    """Run the validate engine on one extracted layer; a summary dict, never an exception. Only a
    finished comparison can say FAIL: a layer normonnx could not check is "not validated", why given."""
    from ..validate import validate

    try:
        if any(e == "channels_last" for e in f.extra_inputs):
            raise BadInput("channels_last GroupNorm: the oracle takes NCHW")
        m = onnx.load(str(layer_path))
        spec, params = derive_spec(f, m)
        # the shape may hold stand-ins for symbolic dims: fix them in the layer so shapes line up
        for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, spec.shape):
            if not d.HasField("dim_value"):
                d.dim_value = v
        onnx.save(m, str(layer_path))
        rep = validate(spec, model=layer_path, params=params, runtimes=runtimes or ["cpu"], inputs=inputs)
    except BadInput as e:
        return {"passed": None, "validation": f"not validated: {e}"}
    except Exception as e:  # normonnx's own failure: never a verdict on the user's model
        return {"passed": None, "validation": f"not validated: internal error ({type(e).__name__}: "
                                              f"{str(e).strip()[:160]}); please report it"}
    c = rep.counts
    bad = rep.failures()
    if c["fail"]:
        first = next(r for r in bad if r.status == "fail")
        return {"passed": False, "spec_id": spec.id, "counts": c, "validation": f"{first.inputs}: {first.reason}"}
    if c["error"] or not c["pass"]:
        why = bad[0].error if bad else "every runtime or input suite was skipped"
        return {"passed": None, "spec_id": spec.id, "counts": c, "validation": f"not validated: {why}"}
    return {"passed": True, "spec_id": spec.id, "counts": c, "validation": "pass"}
