"""The catalog `normonnx list` prints: every registry (norms, variants, exporters, runtimes, suites)."""
from __future__ import annotations

from .exporters import REGISTRY as EXPORTERS
from .inputs import REGISTRY as SUITES
from .render import table
from .runtimes import REGISTRY as RUNTIMES
from .spec import KIND_NAMES
from .tables import ALL_KINDS as KINDS
from .variants import REGISTRY as VARIANTS

TEST_OPSETS = (13, 15, 17, 18, 21, 23)


def describe() -> str:
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
    parts += ["input suites:", table(["suite", "description"], [[s.name, s.description] for s in SUITES.values()]), ""]
    from .render import rules_text

    parts += ["fix rules:", rules_text()]
    return "\n".join(parts)
