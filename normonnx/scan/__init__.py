"""Find every normalization layer inside a user's ONNX model, say what it is and how risky it is,
and (optionally) validate each one in isolation against the float64 oracle.

`patterns` recognizes norms (main graph, If/Loop/Scan bodies, model-local functions), `extract`
cuts them out and asks ORT what it fuses, `derive` reads the spec and parameters a layer claims,
and `scan()` here runs them in order. The model is only read: external data is checked (never read
outside the model's folder) and loaded only for the tensors of the layers being validated.
"""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..errors import BadInput, ExitCode
from ..graph import Graph, load_model, opset_of, tensor_nbytes
from ..judge import over_layers
from .derive import concrete_shape, derive_spec, params_from_model
from .extract import DRAWN, LayerExtractor, ort_fusion, ort_optimized
from .patterns import FoundNorm, LeftOut, find_all, find_norms

__all__ = ["scan", "ScanReport", "FoundNorm", "LeftOut", "find_all", "find_norms", "derive_spec", "concrete_shape", "params_from_model",
           "validate_layer", "run_layer"]


@dataclass
class ScanReport:
    model: str
    opset: int
    producer: str
    norms: list[FoundNorm]
    fused: dict[int, object] = field(default_factory=dict)  # True, False or "partly: <ops>" (extract.ort_fusion)
    fusion_note: str | None = None  # why fusion is unknown, when it is
    validations: dict[int, dict] = field(default_factory=dict)  # index -> summary of a ValidationReport
    left_out: list[LeftOut] = field(default_factory=list)  # norm-shaped, not activation norms (and why)

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
        return over_layers(v.get("passed") for v in self.validations.values()).exit_code

    def to_dict(self) -> dict:
        norms = []
        for i, f in enumerate(self.norms):
            d = f.to_dict()
            d["ort_fused"] = self.fused.get(i)
            if i in self.validations:
                d.update(self.validations[i])
            norms.append(d)
        out = {"model": self.model, "opset": self.opset, "producer": self.producer, "count": len(self.norms),
               "norms": norms, "fusion_note": self.fusion_note, "left_out": [x.to_dict() for x in self.left_out]}
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


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """['input_ids=2x16', 'x=1x3x32x32'] -> {name: dims}; BadInput saying the form otherwise."""
    from ..spec import parse_shape

    out = {}
    for text in specs or []:
        name, sep, dims = text.partition("=")
        if not sep or not name:
            raise BadInput(f"--input-shape {text!r}: write NAME=DIMS, e.g. input_ids=2x16")
        out[name] = parse_shape(dims)
    return out


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Set the dims of the named graph inputs (symbolic dims the user knows), checking rank and names."""
    inputs = {i.name: i for i in model.graph.input}
    for name, dims in shapes.items():
        if name not in inputs:
            raise BadInput(f"--input-shape {name}: the model has no input {name!r}; its inputs are "
                           f"{', '.join(inputs) or 'none'}")
        tt = inputs[name].type.tensor_type
        if tt.HasField("shape") and len(tt.shape.dim) != len(dims):
            raise BadInput(f"--input-shape {name}: the input has rank {len(tt.shape.dim)}, not {len(dims)}")
        del tt.shape.dim[:]
        for d in dims:
            tt.shape.dim.add().dim_value = d


def _infer_without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference without handing it the weights, and without copying them: it runs on a copy
    of the graph whose large initializers are marked external (shape inference reads their dims, never
    their data), and what it infers (value_info, output types, subgraphs' value_info) is put on `model`
    itself, which is returned. A 2 GB inline model is then neither serialized for the C++ side nor copied."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    g.name = src.name
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, part).extend(getattr(src, part))
    for t in src.initializer:
        if (tensor_nbytes(t) or 0) <= 4096 or t.data_location == onnx.TensorProto.EXTERNAL:
            g.initializer.append(t)
            continue
        stub = g.initializer.add()
        stub.name, stub.data_type, stub.data_location = t.name, t.data_type, onnx.TensorProto.EXTERNAL
        stub.dims.extend(t.dims)
        e = stub.external_data.add()
        e.key, e.value = "location", "normonnx-weights-held-aside"
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except Exception:
        return model
    for part in ("value_info", "output"):
        del getattr(src, part)[:]
        getattr(src, part).extend(getattr(inferred.graph, part))
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in src.node for a in n.attribute):
        del src.node[:]  # If/Loop/Scan bodies carry their own inferred value_info
        src.node.extend(inferred.graph.node)
    return model


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's shape inference, then, for models with com.microsoft ops (which onnx does not know),
    onnxruntime's symbolic shape inference, which does. Either may fail on a given model: what they
    could not infer stays unknown (scan then propagates through shape-preserving ops, or says why)."""
    model = _infer_without_weights(model)
    # ORT's own ops: com.microsoft, and SimplifiedLayerNormalization, which ORT's fusion writes in the
    # default domain (onnx knows neither, so its inference leaves everything after them untyped)
    if any(n.domain == "com.microsoft" or n.op_type == "SimplifiedLayerNormalization" for n in model.graph.node):
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            model = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
        except Exception:
            pass
    return model


def scan(path: str | Path, *, validate: bool = False, runtimes: list[str] | None = None,
         inputs: list[str] | None = None, check_fusion: bool = True, progress=None,
         input_shapes: dict[str, tuple[int, ...]] | None = None, jobs: int = 1, memo: dict | None = None) -> ScanReport:
    """Find the norms of the model at `path`; with validate=True check each one in isolation.
    input_shapes: dims for graph inputs whose dims are symbolic (the CLI's --input-shape);
    jobs: processes validating layers in parallel; memo: validations already made of identical
    cut-out layers (normonnx fix passes its own, so a layer it did not change is not validated twice)."""
    if jobs < 1:
        raise BadInput(f"--jobs must be >= 1, got {jobs}")
    if validate:
        runtimes = check_runtime_request(runtimes, inputs)
    p = Path(path)
    model = load_model(p, load_external_data=False)  # checks every external-data entry, reads none
    if input_shapes:
        fix_input_shapes(model, input_shapes)
    model = infer_shapes(model)  # value_info for the extractor and for dtypes
    main = Graph(model.graph)  # one index of the main graph for the search, the fusion map and the extractor
    norms, left_out = find_all(model, infer=False, main=main)
    report = ScanReport(str(p), opset_of(model), f"{model.producer_name} {model.producer_version}".strip(),
                        norms, left_out=left_out)
    # one ORT session over the whole model (a thread beside the search was measured slower on 2 cores)
    if check_fusion and any(f.form == "decomposed" and not f.scope for f in norms):
        opt, report.fusion_note = ort_optimized(p)
        report.fused = ort_fusion(opt, main, norms)
    if not norms or not validate:
        return report
    extractor = LayerExtractor(model, p.parent, norms, main)
    with tempfile.TemporaryDirectory(prefix="normonnx-scan-") as tmp:
        layers = {}
        for i, f in enumerate(norms):
            try:
                layers[i] = extractor.extract(f, Path(tmp) / f"layer{i}.onnx")
            except BadInput as e:
                report.validations[i] = {"passed": None, "validation": f"not validated: {e}"}
        if jobs == 1 or memo is not None:
            memo = {} if memo is None else memo
            for n, (i, layer) in enumerate(layers.items()):
                if progress:
                    progress(n, len(layers), norms[i])
                report.validations[i] = validate_cached(norms[i], layer, runtimes, inputs, memo)
        else:
            report.validations.update(_validate_in_parallel(norms, layers, runtimes, inputs, jobs, progress))
    report.validations = dict(sorted(report.validations.items()))
    return report


def _validate_in_parallel(norms, layers: dict, runtimes, inputs, jobs: int, progress) -> dict[int, dict]:
    """validate_layer over worker processes (spawned: torch and fork do not mix), ORT and torch on
    one thread each. A worker that dies makes its layers "not validated", never a verdict."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from ..sweep import _worker_init

    out: dict[int, dict] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
        futures = {pool.submit(validate_layer, norms[i], layer, runtimes, inputs, 1): i for i, layer in layers.items()}
        for n, fut in enumerate(as_completed(futures)):
            i = futures[fut]
            if progress:
                progress(n, len(futures), norms[i])
            try:
                out[i] = fut.result()
            except Exception as e:
                out[i] = {"passed": None, "validation": f"not validated: the worker process failed "
                                                        f"({type(e).__name__}); please report it"}
    return out


def layer_key(path: Path, runtimes, inputs) -> str:
    """What a layer's validation depends on: the cut-out layer's bytes, the runtimes and the suites."""
    return hashlib.sha256(path.read_bytes()).hexdigest() + repr((tuple(runtimes), tuple(inputs or ())))


def validate_cached(f: FoundNorm, path: Path, runtimes, inputs, memo: dict) -> dict:
    """validate_layer, memoized on layer_key (an unchanged layer of a fixed model is not validated twice)."""
    key = layer_key(path, runtimes, inputs)
    if key not in memo:
        memo[key] = validate_layer(f, path, list(runtimes), inputs)
    return memo[key]


def run_layer(f: FoundNorm, layer_path: Path, runtimes: list[str] | None, inputs: list[str] | None,
              threads: int | None = None):
    """The validate engine on one extracted layer: its ValidationReport. BadInput when the layer
    cannot be read as the norm it claims to be."""
    from ..runtimes import SessionConfig
    from ..validate import validate

    m = onnx.load(str(layer_path))
    spec, params = derive_spec(f, m)
    # the shape may hold stand-ins for symbolic dims: fix them in the layer so shapes line up
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, spec.shape):
        if not d.HasField("dim_value"):
            d.dim_value = v
    onnx.save(m, str(layer_path))
    return validate(spec, model=layer_path, params=params, runtimes=runtimes or ["cpu"], inputs=inputs,
                    config=SessionConfig(threads=threads))


def validate_layer(f: FoundNorm, layer_path: Path, runtimes: list[str] | None, inputs: list[str] | None,
                   threads: int | None = None) -> dict:
    """Run the validate engine on one extracted layer; a summary dict, never an exception. Only a
    finished comparison can say FAIL: a layer normonnx could not check is "not validated", why given."""
    try:
        rep = run_layer(f, layer_path, runtimes, inputs, threads)
    except BadInput as e:
        return {"passed": None, "validation": f"not validated: {e}"}
    except Exception as e:  # normonnx's own failure: never a verdict on the user's model
        return {"passed": None, "validation": f"not validated: internal error ({type(e).__name__}: "
                                              f"{str(e).strip()[:160]}); please report it"}
    out = summarize(f, rep)
    drawn = {p.key: p.value for p in onnx.load(str(layer_path), load_external_data=False).metadata_props}.get(DRAWN)
    if drawn:
        out["validation"] += f" (parameters drawn: {drawn.replace(',', ', ')} fed as graph input)"
        out["parameters_drawn"] = drawn.split(",")
    return out


def summarize(f: FoundNorm, rep) -> dict:
    """A layer's ValidationReport as scan's row: the judge's verdict and its first reason."""
    spec, v = rep.spec, rep.verdict
    c = v.counts()
    bad = rep.failures()
    if v.status == "fail":
        first = next(r for r in bad if r.status == "fail")
        return {"passed": False, "spec_id": spec.id, "counts": c, "validation": f"{first.inputs}: {first.reason}"}
    if v.status != "pass":
        why = bad[0].error if bad else "every runtime or input suite was skipped"
        return {"passed": None, "spec_id": spec.id, "counts": c, "validation": f"not validated: {why}"}
    how = " (zero residual and bias: the norm of x alone)" if f.pre_bias else \
        " (zero residual: the norm of x alone)" if f.extra_inputs else ""
    return {"passed": True, "spec_id": spec.id, "counts": c, "validation": "pass" + how}
