"""Rewriting a norm in place: where a layer stands in the graph (`layer_region`: every node between its input
and output on onnx_ir, by irview.region -- the finder's and the cut-out's region -- and why it cannot be
replaced alone), which rule covers it (`plan_layers`: a Planned per layer, named by its start and output
values), and the replacement written with onnx_ir (the graph IR onnxscript uses): `apply` finds each layer's
nodes on that IR from the two values, puts the new nodes exactly between them and says which nodes it wrote;
then onnx.checker (`to_checked_proto`).
`normonnx fix` proves what it writes with these; `first_forms` writes unproven (scan --activations'
float16 what-if)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from ..core.errors import first_line
from .graph import Graph, opset_of, over_proto_limit
from .patterns import FoundNorm
from .rules import Plan, Rule, Site, Writer
from .shapes import infer_shapes


@dataclass(frozen=True)
class Coverage:
    """What the rules say of one found norm before any proof. status: unchanged (a rule covers it, or
    none does: reason) | refused (reason) | left (inside a subgraph or function)."""

    index: int
    norm: FoundNorm
    status: str
    rule: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Planned:
    """A rule's candidates for one layer and the value its new form reads (`start`: the norm's input, or
    past a shared Cast; see region). The layer is named by values, not node positions: ONNX names a value
    once per graph, so the same names hold in every copy of the model and in a cut-out layer."""

    rule: Rule
    plans: tuple[Plan, ...]
    start: str


def layer_region(view, f: FoundNorm) -> tuple[list, str, str | None]:
    """The nodes that compute f.output from the layer's input (irview.region: the one region algorithm, the
    finder's and the cut-out's), the value the replacement starts from, and why the layer cannot be replaced
    alone if an intermediate value is used outside it. A Cast/Identity at the input whose output is shared
    (LLaMA's RMSNorm casts the residual stream to float32 and the residual Add reads that cast too) stays:
    the layer starts after it."""
    from .irview import TRANSPARENT, is_op, leaks, region

    start, out = view.value(f.input), view.value(f.output)
    if start is None or out is None or out.producer() is None:
        return [], f.input, f"its output {f.output} is not computed by a node"
    for _ in range(4):
        nodes = region(view, start, out)
        shared = leaks(view, nodes, out)
        if shared is None:
            return nodes, start.name, None
        value, why = shared
        n = view.value(value).producer()
        if n is None or not is_op(n, *TRANSPARENT) or n.inputs[0] is not start:
            return nodes, start.name, why
        start = n.outputs[0]
    return nodes, start.name, why


def _site(g: Graph, f: FoundNorm, opset: int, start: str) -> Site:
    shape = g.shapes.get(start, g.shapes.get(f.input))
    dims = tuple(d if isinstance(d, int) and d > 0 else None for d in shape) if shape is not None else None
    return Site(f, g, opset, dims, g.dtype(start), g.dtype(f.output))


def plan_layers(model: onnx.ModelProto, rules: list[Rule], base: Path | None = None,
                norms: list[FoundNorm] | None = None) -> tuple[list[Coverage], dict]:
    """Every norm of the (shape-inferred) model -- `norms`, as normonnx.engine.probe.find_layers found and confirmed
    them (by default the finder's, unconfirmed) -- and for each a rule covers, its Planned (by the norm's
    index). Refused layers carry the reason. `base`: the model's folder, where a layer's externally stored
    parameters are read from when a rule needs them."""
    import onnx_ir as ir

    from .irview import View

    g = Graph(model.graph, base=base)
    view = View(ir.from_proto(model).graph)
    opset = opset_of(model)
    if norms is None:
        from .identify import find_all

        norms, _ = find_all(model, infer=False, base=base)
    layers, plans = [], {}
    for k, f in enumerate(norms):
        if f.scope:
            layers.append(Coverage(k, f, "left", reason=f"inside {f.scope}: fix rewrites main-graph layers only"))
            continue
        _, start, shared = layer_region(view, f)
        site = _site(g, f, opset, start)
        found = next(((r, ps) for r in rules if (ps := r.plan(site)) is not None), None)
        if found is None:
            layers.append(Coverage(k, f, "unchanged", reason="no selected rule covers this form"))
            continue
        rule, ps = found
        if ps and ps[0].refused:
            layers.append(Coverage(k, f, "refused", rule.name, ps[0].refused))
            continue
        if shared:
            layers.append(Coverage(k, f, "refused", rule.name, f"cannot be replaced alone: {shared}"))
            continue
        if not ps:
            layers.append(Coverage(k, f, "unchanged", rule.name, reason=f"rule {rule.name} has no form at opset "
                                                                       f"{opset}"))
            continue
        layers.append(Coverage(k, f, "unchanged", rule.name))
        plans[k] = Planned(rule, tuple(ps), start)
    return layers, plans


def prefix_of(k: int, rule: str) -> str:
    """The prefix of every name the rewrite of layer k writes: readable in the written graph."""
    return f"normonnx.fix/{k}.{rule}/"


def apply(model: onnx.ModelProto, todo: dict[int, tuple[Plan, str]], norms: dict[int, FoundNorm]):
    """The model as onnx_ir, each layer in `todo` ({index: (Plan, start value)}) replaced by the plan's form,
    whose new nodes stand exactly between the value `start` and the norm's output; and, per layer, the
    names of the nodes written (the written model's scan finds the layer among them). The region replaced
    is found on this IR itself, from those two values. `model` is the original proto (not shape-inferred):
    inferred value_info is not written into the user's graph."""
    import onnx_ir as ir

    from .irview import View, region

    irm = ir.from_proto(model)
    graph = irm.graph
    values = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    for n in graph:
        values.update((o.name, o) for o in n.outputs if o.name)
    opset = irm.opset_imports.get("", 0)
    taken = set(values) | {n.name for n in graph if n.name} | _subgraph_names(model.graph)
    written = {}
    for k, (plan, start) in todo.items():
        f = norms[k]
        out = values[f.output]
        old = region(View(graph), values[start], out)  # the graph as rewritten so far
        w = Writer(graph, values[start], prefix_of(k, plan.rule), opset, values, taken)
        assert plan.write is not None  # only a plan that is not refused is applied
        y = plan.write(w)
        feeders = {v for n in old for v in n.inputs if v is not None and v.producer() not in old}
        ir.convenience.replace_nodes_and_values(graph, old[-1], old, w.nodes, [out], [y])
        values[f.output] = y
        _drop_unused(graph, feeders)
        written[k] = tuple(n.name for n in w.nodes)
    return irm, written


def _subgraph_names(graph: onnx.GraphProto) -> set[str]:
    """Every value and node name inside the graph's If/Loop/Scan bodies, at any depth."""
    names: set[str] = set()
    stack = [graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            for a in n.attribute:
                for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    names.update(v for m in sg.node for v in (*m.input, *m.output, m.name) if v)
                    names.update(t.name for t in sg.initializer)
                    stack.append(sg)
    return names


def _drop_unused(graph, values: set) -> None:
    """Constants (initializers, Constant nodes, and nodes computing from constants alone, such as
    a weight's Reshape) that only the replaced nodes used; graph inputs and everything else stay."""
    inputs = set(graph.inputs)
    stack = list(values)
    while stack:
        v = stack.pop()
        if v in inputs or v.uses() or v in graph.outputs:
            continue
        if v.name in graph.initializers and graph.initializers[v.name] is v:
            del graph.initializers[v.name]
            continue
        n = v.producer()
        if n is None or any(o.uses() or o in graph.outputs for o in n.outputs):
            continue
        if all(i is None or i.const_value is not None or i.name in graph.initializers or
               (i.producer() is not None and i.producer().op_type == "Constant") for i in n.inputs) or \
                n.op_type == "Constant":
            graph.remove(n, safe=True)
            stack.extend(i for i in n.inputs if i is not None)


def to_checked_proto(irm, original: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The fixed model as a proto, checked by onnx.checker with full shape inference. If the check
    fails, it fails on the user's model too (a note says so) or the fault is normonnx's (raised)."""
    import onnx_ir as ir

    proto = ir.to_proto(irm)
    if over_proto_limit(proto):  # onnx.checker takes such a model only as a file: the proof judges it
        return proto, ("the fixed model's inline tensors pass protobuf's 2 GB limit: its tensors of 1 kB or more "
                       "are written to FIXED.onnx.data beside it (onnx.checker skipped; scan and the whole-model "
                       "comparison judge the written file)")
    try:
        onnx.checker.check_model(proto, full_check=True)
        return proto, None
    except Exception as e:
        mine = first_line(e, 200)
    try:
        onnx.checker.check_model(original, full_check=True)
    except Exception as e:
        return proto, f"onnx.checker rejects the input model too ({first_line(e, 200)}); the output keeps that as it is"
    raise RuntimeError(f"the fixed model fails onnx.checker ({mine}) where the input passes")


def first_forms(model: onnx.ModelProto, rules: list[Rule], base: Path | None = None) -> tuple[onnx.ModelProto | None, list[str], str | None]:
    """The model with every norm that has a risk its covering rule answers written in that rule's first
    form, unproven (what `normonnx fix --no-proof` writes): (the rewritten proto, the rules used, None),
    or (None, [], why nothing was rewritten)."""
    analysed = onnx.ModelProto()
    analysed.CopyFrom(model)
    covered, plans = plan_layers(infer_shapes(analysed), rules, base)
    norms = {c.index: c.norm for c in covered}
    todo = {k: (p.plans[0], p.start) for k, p in plans.items() if p.rule.wants(norms[k].risks, proven=False)}
    if not todo:
        return None, [], next((c.reason for c in covered if c.reason), "no rule covers this form")
    irm, _ = apply(model, todo, norms)
    proto, _ = to_checked_proto(irm, model)
    return proto, [plans[k].rule.name for k in todo], None
