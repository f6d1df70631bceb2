"""What a found norm is, as every command reads it: FoundNorm (what the layer is, where, its risks and
parameter tensors), its risks as data, what was left out and why, and the schema checks the finder relies
on. normonnx.graph.identify finds them; normonnx.engine.probe confirms the written-out ones."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import onnx

from ..core.tables import KIND_OF_NATIVE_OP
from .graph import DEFAULT_DOMAINS, MS, Graph, check_initializers, check_node, opset_of

NATIVE = KIND_OF_NATIVE_OP
CONTRIB = {"LayerNormalization": "ln", "SimplifiedLayerNormalization": "rms", "SkipLayerNormalization": "ln",
           "SkipSimplifiedLayerNormalization": "rms", "GroupNorm": "gn", "SkipGroupNorm": "gn",
           "EmbedLayerNormalization": "ln"}
# Risks are data: a stable code (what fix's rules and tests match) and a message (what people read).
# Rewording a message changes nothing a rule does.
RISKS = {
    "gn-function-body": "ORT has no GroupNormalization kernel: it inlines the function body, whose variance is "
                        "E[x^2]-E[x]^2 (NaN at large offsets and on zero-variance groups)",
    "gn18-per-group-affine": "GroupNormalization-18: scale/bias per group, not per channel (onnx/onnx#5466)",
    # com.microsoft GroupNorm/SkipGroupNorm kernels compute the variance in one pass (CUDA only)
    "one-pass-variance": "com.microsoft GroupNorm computes E[x^2]-E[x]^2 in one pass: wrong at large offsets",
    "variance-e-x2": "variance as E[x^2]-E[x]^2: cancels catastrophically at large offsets",
    "fp16-statistics": "float16 statistics without float32 accumulation",
    "fp16-stash": "float16 statistics without float32 accumulation (stash_type != 1)",
    "eps-outside-sqrt": "eps added outside the sqrt: std + eps, not sqrt(var + eps)",
    "training-mode": "training_mode=1: normalizes with batch statistics",
    "trick-affine": "InstanceNormalization inside the GroupNorm trick has a non-identity scale/bias",
}


@dataclass(frozen=True)
class Risk:
    """A risk of one found layer: `code` is stable (rules match it), the message is for people."""

    code: str

    @property
    def message(self) -> str:
        return RISKS[self.code]

    def __str__(self) -> str:
        return self.message


def risk(code: str) -> Risk:
    if code not in RISKS:
        raise KeyError(f"unknown risk code {code!r}")
    return Risk(code)


@dataclass(frozen=True)
class FoundNorm:
    """One normalization layer found in a graph. `params` maps weight/bias/running_* to tensor names."""

    kind: str  # bn, ln, in, gn, rms
    form: str  # native, contrib, instance-trick, decomposed
    op: str  # the op (with version/domain) or the chain's shape, e.g. "ReduceMean/Sub/Pow/.../Div"
    nodes: tuple[str, ...]
    input: str
    output: str
    axes: tuple[int, ...] | None = None
    groups: int | None = None
    eps: float | None = None
    affine: bool = False
    dtype: str | None = None
    risks: tuple[Risk, ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    extra_inputs: tuple[str, ...] = ()  # inputs set to zero to check the norm of x alone: Skip*'s residual
    param_layout: str = "per-channel"  # or "per-group" (GroupNormalization-18)
    pre_bias: str | None = None  # a constant added before normalizing (Skip*'s bias): zeroed for the check
    unvalidatable: str | None = None  # why this layer cannot be checked as a norm of one input
    scope: str = ""  # "" for the main graph, else where: "If 'cond' then_branch", "function local.Block"
    stats_dtype: str | None = None  # the dtype its statistics are computed in (stash_type, Cast islands)
    notes: tuple[str, ...] = ()  # what a reader should know (it runs between Q/DQ pairs, ...)
    layout: tuple[int, ...] | None = None  # written out over another layout: the permutation to the standard one
    # a written-out norm before the probe confirms it (identify.Candidate), and what the probe measured
    # (probe.Measured: the spec's fields and the parameters' values); neither compares nor hashes. Typed Any:
    # both types live in modules that import this one (a cycle), or on a floor above (tests/test_floors.py)
    candidate: Any = dataclasses.field(default=None, compare=False, repr=False)
    derived: Any = dataclasses.field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "form": self.form, "op": self.op, "nodes": list(self.nodes), "input": self.input,
               "output": self.output, "axes": list(self.axes) if self.axes is not None else None,
               "groups": self.groups, "eps": self.eps, "affine": self.affine, "dtype": self.dtype,
               "stats_dtype": self.stats_dtype or self.dtype, "risks": [r.message for r in self.risks],
               "risk_codes": [r.code for r in self.risks], "params": dict(self.params),
               "scope": self.scope or "main graph", "notes": list(self.notes)}
        if self.layout is not None:
            out["layout"] = list(self.layout)
        if self.derived is not None:
            out["confirmed"] = self.derived.to_dict()
        return out


# the ops the patterns read: each such node is schema-checked first, so a malformed one is a
# one-line BadInput naming it, never an IndexError deep in a matcher
PATTERN_OPS = {"ReduceMean", "Sub", "Pow", "Mul", "Div", "Add", "Sqrt", "Reciprocal", "Reshape", "Cast",
               "Identity", *NATIVE, "SimplifiedLayerNormalization"}


def check_graph(model: onnx.ModelProto) -> None:
    """The checks a norm search relies on, for the main graph: every initializer's data fits its
    dims, every node the patterns read fits its op's schema. BadInput names the first offender."""
    check_initializers(model.graph)
    _check_nodes(Graph(model.graph), opset_of(model))


def _check_nodes(g: Graph, opset: int) -> None:
    for n in g.nodes:
        if (n.domain in DEFAULT_DOMAINS and n.op_type in PATTERN_OPS) or (n.domain == MS and n.op_type in CONTRIB):
            check_node(n, opset)


@dataclass(frozen=True)
class LeftOut:
    """Something shaped like a norm that is not an activation norm, and why it is not listed."""

    kind: str
    node: str
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


WEIGHT_STD = "weight standardisation: normalizes a value computed from constants (a weight), not an activation"
