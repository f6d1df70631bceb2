"""Export a spec to one self-contained, checked ONNX file, and refuse files that are not as asked."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import ExportMismatch, first_line, need_torch, raised_by_normonnx, source_roots
from ..core.params import make_params
from ..core.safeio import check_output_path, publish, staging
from ..core.spec import NormSpec
from ..core.tables import DTYPES
from ..core.version import __version__
from .exporters import get_exporter, quiet_export
from .variants import get_variant

if TYPE_CHECKING:
    import onnx
# torch, onnx and normonnx.graph.graph (which imports onnx) load inside the functions that use them, so
# that `import normonnx` (which imports this module) stays light

DEFAULT_OPSET = 18
DEFAULT_EXPORTER = "dynamo"
DEFAULT_VARIANT = "native"


@dataclass(frozen=True)
class ExportOptions:
    """What to export a spec as: the graph form (variant), the opset asked for, the exporter, symbolic
    batch/spatial dims, and whether an export that came out other than asked is kept (said) or refused."""

    variant: str = DEFAULT_VARIANT
    opset: int = DEFAULT_OPSET
    exporter: str = DEFAULT_EXPORTER
    dynamic: bool = False
    allow_mismatch: bool = False


def case_id(spec: NormSpec, variant: str, opset: int, exporter: str, dynamic: bool = False) -> str:
    """Stable, readable id of one export, e.g. gn-g4-c8-2x8x16x16-fp32-native-op18-dynamo."""
    return f"{spec.id}-{variant}-op{opset}-{exporter}" + ("-dyn" if dynamic else "")


def tool_versions() -> dict[str, str]:
    """The versions an export depends on (what a cached export and a sweep's results are keyed by)."""
    import onnx

    torch = need_torch("export")
    try:
        import onnxscript  # the dynamo exporter's; the torchscript one runs without it

        script = getattr(onnxscript, "__version__", "not installed")
    except ImportError:
        script = "not installed"
    return {"normonnx": __version__, "torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": script}


@dataclass(frozen=True)
class ExportResult:
    """What was written and what it holds; `mismatch` says how it differs from the request, if it does."""

    path: Path
    spec: NormSpec
    variant: str
    exporter: str
    opset_requested: int
    opset: int
    ops: dict
    size_bytes: int
    dynamic: bool
    mismatch: str | None
    log: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"path": str(self.path), "spec_id": self.spec.id, "spec": self.spec.to_dict(), "variant": self.variant,
                "exporter": self.exporter, "opset_requested": self.opset_requested, "opset": self.opset,
                "ops": self.ops, "size_bytes": self.size_bytes, "dynamic": self.dynamic, "mismatch": self.mismatch}


# the name before issue 35 ("report" is now only the HTML/Markdown report), kept for code that imports it
ExportReport = ExportResult


def check_request(spec: NormSpec, variant: str, opset: int, exporter: str) -> None:
    """Raise BadInput if the combination cannot be exported at all (before doing any work); RuntimeUnavailable
    if the exporter cannot run here (torch, or onnxscript for dynamo, not installed)."""
    get_variant(variant).check(spec, opset)
    get_exporter(exporter).check(opset)
    get_exporter(exporter).require("export")


def verify_export(model: onnx.ModelProto, spec: NormSpec, variant: str, opset: int) -> str | None:
    """Why the written model is not what was asked for, or None. Opset first, then op set."""
    problems = []
    from ..graph.graph import op_histogram, opset_of

    actual = opset_of(model)
    if actual != opset:
        problems.append(f"requested opset {opset} but the model declares opset {actual}")
    reason = get_variant(variant).expect(spec, opset, set(op_histogram(model)))
    if reason:
        problems.append(reason)
    return "; ".join(problems) or None


def check_model(model: onnx.ModelProto, allow_deprecated_gn18: bool = False) -> str:
    """onnx.checker with full (strict) shape inference; raise ExportMismatch if it fails.

    GroupNormalization-18 is deprecated (its per-group scale was a spec bug, onnx/onnx#5466) and the
    checker refuses every deprecated op, while ORT and onnx.reference still run it. For the native
    GN variant at opset 18..20 we accept exactly that refusal and check the graph with strict shape
    and type inference instead. Returns how the model was checked."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        return "onnx.checker(full_check)"
    except Exception as e:
        msg = first_line(e)
        if not (allow_deprecated_gn18 and "GroupNormalization is deprecated" in msg):
            raise ExportMismatch(f"exported model fails onnx.checker: {msg[:300]}") from e
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:
        raise ExportMismatch(f"exported model fails strict shape inference: {first_line(e)}") from e
    return "strict shape inference (onnx.checker refuses the deprecated GroupNormalization-18)"


def source_digest() -> str:
    """A hash of the source that decides what an export holds: the package's own modules (variants,
    exporters, translations, export) and the reference modules (normonnx.models), so an edited module is
    never served from an old cache entry."""
    import hashlib

    h = hashlib.sha256()
    for root in source_roots():
        for f in sorted(root.rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def export_result(
    spec: NormSpec,
    variant: str = DEFAULT_VARIANT,
    opset: int = DEFAULT_OPSET,
    exporter: str = DEFAULT_EXPORTER,
    dynamic: bool = False,
    output: str | Path | None = None,
    allow_mismatch: bool = False,
) -> ExportResult:
    """Export `spec` as `variant` at `opset` with `exporter` into one .onnx file (no side file).

    The file passes onnx.checker with full shape inference and carries the spec, variant, exporter
    and tool versions in metadata_props. If the exporter wrote another opset or op set than asked,
    raise ExportMismatch, or with allow_mismatch=True keep the file and say so in the result."""
    check_request(spec, variant, opset, exporter)
    out = Path(output) if output is not None else Path(case_id(spec, variant, opset, exporter, dynamic) + ".onnx")
    check_output_path(out, "model")
    v = get_variant(variant)
    import onnx

    from ..graph.graph import model_facts, set_metadata

    torch = need_torch("export")

    module = v.build(spec, make_params(spec)).to(DTYPES[spec.dtype].torch)
    example = torch.randn(v.model_shape(spec.shape), generator=torch.Generator().manual_seed(0)) \
        .to(DTYPES[spec.dtype].torch)
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="normonnx-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            with quiet_export(log), torch.inference_mode(False), torch.no_grad():
                get_exporter(exporter).run(module, example, raw, opset, spec, variant, dynamic)
        except Exception as e:
            import re

            if raised_by_normonnx(e):
                # normonnx's own translation tables or reference modules failed: a bug to report (exit 5),
                # never an exporter finding, never cached
                raise
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
            first = text.splitlines()[0] if text else ""
            raise ExportMismatch(f"{exporter} exporter failed on {case_id(spec, variant, opset, exporter, dynamic)}: "
                                 f"{type(e).__name__}: {first[:300]}") from e
        model = onnx.load(str(raw))  # pulls any .onnx.data side file in, so we write one file
    checker_note = check_model(model, allow_deprecated_gn18=v.checker_exempt(spec))
    mismatch = verify_export(model, spec, variant, opset)
    if mismatch and not allow_mismatch:
        raise ExportMismatch(f"{exporter} export of {spec.id} as {variant}: {mismatch} "
                             f"(pass allow_mismatch / --allow-mismatch to keep it)")
    set_metadata(model, {
        "spec": spec.to_json(), "variant": variant, "exporter": exporter, "opset_requested": str(opset),
        "dynamic": json.dumps(dynamic), "versions": tool_versions(), "checker": checker_note, **({"mismatch": mismatch} if mismatch else {}),
    })
    with staging(out) as folder:  # atomic and link-proof: a reader never sees half a model
        onnx.save_model(model, str(folder / out.name), save_as_external_data=False)
        publish(folder / out.name, out, "model")
    facts = model_facts(model, out)
    return ExportResult(out, spec, variant, exporter, opset, facts["opset"], facts["ops"], facts["size_bytes"],
                        dynamic, mismatch, tuple(log))


# the name before issue 35 ("report" is now only the HTML/Markdown report), kept for code that imports it
export_report = export_result


def export(
    spec: NormSpec,
    variant: str = DEFAULT_VARIANT,
    opset: int = DEFAULT_OPSET,
    exporter: str = DEFAULT_EXPORTER,
    dynamic: bool = False,
    output: str | Path | None = None,
    allow_mismatch: bool = False,
) -> Path:
    """Export and return the written path (see export_result for what it checks)."""
    return export_result(spec, variant, opset, exporter, dynamic, output, allow_mismatch).path
