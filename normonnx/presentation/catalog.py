"""The catalog `normonnx list` prints: every registry (norms, variants, exporters, runtimes, suites), and
with `probe=True` (`normonnx list --precision`) the version and precision each runtime here runs a norm in,
asked of a session it opens."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..core.errors import first_line
from ..core.spec import KIND_NAMES
from ..core.tables import ALL_KINDS as KINDS
from ..engine.inputs import REGISTRY as SUITES
from ..engine.runtimes import REGISTRY as RUNTIMES
from ..engine.runtimes import SessionConfig
from ..exporting.exporters import REGISTRY as EXPORTERS
from ..exporting.variants import REGISTRY as VARIANTS
from .render import short_version, table

TEST_OPSETS = (13, 15, 17, 18, 21, 23)
PROBE_DTYPES = ("float32", "float16")
PROBE_FEATURES = 64


def probe_model(dtype: str, path: Path) -> Path:
    """A LayerNormalization over 64 features (1x64, opset 17) in `dtype`, written at `path`: the model
    `list --precision` opens on each runtime (small: a runtime that compiles it does so in seconds)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    g = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1, epsilon=1e-5)], "probe",
        [helper.make_tensor_value_info("x", elem, [1, PROBE_FEATURES])],
        [helper.make_tensor_value_info("y", elem, [1, PROBE_FEATURES])],
        # raw_data, as torch writes it (IREE's importer refuses float16 in int32_data; MNN's converter crashed on it)
        [numpy_helper.from_array(np.ones(PROBE_FEATURES, dtype), "scale"),
         numpy_helper.from_array(np.zeros(PROBE_FEATURES, dtype), "bias")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="normonnx list --precision")
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def runtime_precisions(names=None, dtypes=PROBE_DTYPES) -> dict[str, dict]:
    """What each runtime available here (or each of `names`) says when it runs probe_model: {runtime:
    {"version": ..., "precision": {dtype: what it said}, "ran_as": {dtype: ...}, "error": {dtype: why not}}}.
    Opens and runs one session per runtime and dtype; a runtime that refuses a dtype says why (never raises)."""
    import numpy as np

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="normonnx-list-") as tmp:
        models = {d: probe_model(d, Path(tmp) / f"probe-{d}.onnx") for d in dtypes}
        for name, r in RUNTIMES.items():
            if (names is not None and name not in names) or r.unavailable() is not None:
                continue
            d_out: dict = {"version": None, "precision": {}, "ran_as": {}, "error": {}}
            for dtype, path in models.items():
                if dtype in r.unsupported_dtypes:
                    d_out["error"][dtype] = r.unsupported_dtypes[dtype]
                    continue
                try:
                    module = _torch_probe(dtype) if r.kind == "torch" else None
                    s = r.open(path, SessionConfig(), module)
                    s.run(np.linspace(-1, 1, PROBE_FEATURES, dtype=dtype).reshape(1, -1))
                except Exception as e:  # a runtime's refusal, said in one line
                    d_out["error"][dtype] = first_line(e, 200)
                    continue
                d_out["version"] = d_out["version"] or s.facts.get("version")
                d_out["precision"][dtype] = s.facts.get("precision") or "not said"
                if isinstance(s.facts.get("ran_as"), dict):
                    d_out["ran_as"][dtype] = s.facts["ran_as"]
            out[name] = d_out
    return out


def _torch_probe(dtype: str):
    import torch

    return torch.nn.LayerNorm(PROBE_FEATURES).to(getattr(torch, dtype)).eval()


def precision_rows(probed: dict[str, dict]) -> list[list[str]]:
    """list --precision's rows: runtime, version, the precision per dtype (one text where every dtype ran in
    the same), what the LayerNormalization ran as (where the runtime says)."""
    rows = []
    for name, d in probed.items():
        precs: dict[str, list[str]] = {}
        for dtype, p in d["precision"].items():
            precs.setdefault(p, []).append(dtype)
        one = len(precs) == 1 and not d["error"]  # every dtype ran in the same: said once
        text = "; ".join(p if one else f"{', '.join(ds)}: {p}" for p, ds in precs.items())
        text += "".join(f"{'; ' if text else ''}{dtype}: not run ({why})" for dtype, why in d["error"].items())
        ran = {dtype: ", ".join(sorted(ra)) for dtype, ra in d["ran_as"].items()}
        ran_text = next(iter(ran.values())) if len(set(ran.values())) == 1 else \
            "; ".join(f"{dtype}: {r}" for dtype, r in ran.items())
        rows.append([name, short_version(d["version"]) if d["version"] else "-", text or "-", ran_text or "-"])
    return rows


def describe(probe: bool = False) -> str:
    """The catalog as text; probe: also open a small LayerNorm on every runtime here and say the version and
    precision each one runs it in (runtime_precisions: seconds; a compiling runtime takes the most)."""
    parts = ["norms:", table(["norm", "name"], [[k, KIND_NAMES[k]] for k in KINDS]), ""]
    rows = []
    for v in VARIANTS.values():
        for k in KINDS:
            if k in v.min_opset:
                rows.append([v.name, k, f">= {v.min_opset[k]}", v.emits(k, 21), v.emits(k, 18) if k == "gn" else ""])
    parts += ["variants:", table(["variant", "norm", "opsets", "emits (opset 21)", "emits (opset 18..20)"], rows), ""]
    parts += ["exporters:", table(["exporter", "opsets", "native from", "description"],
                                  [[e.name, f"{e.opsets.start}..{e.opsets.stop - 1}", e.native_from, e.description]
                                   for e in EXPORTERS.values()]), ""]
    parts += ["runtimes:", table(["runtime", "available", "description"],
                                 [[r.name, "yes" if r.unavailable() is None else f"no: {r.unavailable()}",
                                   r.description] for r in RUNTIMES.values()]), ""]
    if probe:
        parts += [f"precision: a LayerNormalization over {PROBE_FEATURES} features ({', '.join(PROBE_DTYPES)}) opened "
                  "and run on each runtime here; what each session says it ran in:",
                  table(["runtime", "version", "precision", "ran as"], precision_rows(runtime_precisions())), ""]
    else:
        parts += ["precision: normonnx list --precision opens a small LayerNorm on each runtime here and shows the "
                  "version and precision it runs in (validate, scan --validate, fix and report show the precision of "
                  "every run)", ""]
    parts += ["input suites:", table(["suite", "description"], [[s.name, s.description] for s in SUITES.values()]), ""]
    from .render import rules_text

    parts += ["fix rules:", rules_text()]
    return "\n".join(parts)
