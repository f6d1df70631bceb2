"""The report's answer across runtimes: one row per norm x dtype leading with the form that passes on every
runtime (one file: the same exporter and opset), a column per runtime that shows only where its answer
differs, and which runtimes were judged, in which precision. Records made to show one thing each, then a
real sweep over cpu, reference and openvino rendered as HTML and Markdown."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from normonnx.presentation.report import judged_runtimes, judged_sentence, render_html, render_markdown, ship_answer

FACTS = {"cpu": {"version": "1.32.0", "precision": "as the graph's types"},
         "openvino": {"version": "2026.4.1-22982-e213a147257-releases/2026/4", "precision": "f32"},
         "mnn": {"version": "3.6.1", "precision": "f32 (PrecisionMode.High)"}}


def case(runtime, variant="native", status="pass", opset=21, norm="gn", dtype="float32", fails=(), facts=True):
    inputs = {s: {"status": "fail", "max_abs_err": 0.02, "nonfinite_mismatch": 0} for s in fails}
    rec = {"type": "case", "case_id": f"{norm}-{variant}-op{opset}-{dtype}-{runtime}", "norm": norm,
           "provider": runtime, "dtype": dtype, "variant": variant, "opset": opset, "exporter": "dynamo",
           "status": status, "inputs": inputs, "reason": f"{fails[0]}: outside tolerance" if fails else None}
    if facts and runtime in FACTS:
        rec["runtime_facts"] = dict(FACTS[runtime], precision=FACTS[runtime]["precision"]
                                    + ("" if dtype == "float32" or runtime != "mnn" else "; written as float32"))
    return rec


ALL = ("cpu", "openvino", "mnn")


def everywhere(form="layernorm-trick"):
    """layernorm-trick passes on all three; native passes on cpu only."""
    return [case(rt, form) for rt in ALL] + [case("cpu", "native")] + \
        [case(rt, "native", "fail", fails=("constant",)) for rt in ("openvino", "mnn")]


# (records, lead, everywhere, the cells per runtime as text)
ANSWERS = {
    "one form passes on all: it leads, every cell a check": (
        everywhere(), "layernorm-trick", True, {"cpu": "✓", "openvino": "✓", "mnn": "✓"}),
    "nothing passes on one runtime: it is the exception, the lead says on how many": (
        [case(rt, "layernorm-trick") for rt in ("cpu", "openvino")]
        + [case("mnn", "layernorm-trick", "fail", fails=("constant-large",)),
           case("mnn", "native", "fail", fails=("constant", "offset-1e4"))],
        "layernorm-trick", False, {"cpu": "✓", "openvino": "✓", "mnn": "none (least bad: layernorm-trick)"}),
    "another form passes on one runtime: named there": (
        [case(rt, "layernorm-trick") for rt in ("cpu", "openvino")]
        + [case("mnn", "layernorm-trick", "fail", fails=("constant",)), case("mnn", "shifted")],
        "layernorm-trick", False, {"cpu": "✓", "openvino": "✓", "mnn": "shifted"}),
    "nothing checked on one runtime: said, and the lead still covers the others": (
        everywhere() + [case("ncnn", v, "not checked") for v in ("native", "layernorm-trick")],
        "layernorm-trick", True, {"cpu": "✓", "openvino": "✓", "mnn": "✓", "ncnn": "not checked"}),
    # the same form passes everywhere, but at opset 21 on cpu and at 18 elsewhere: no one file passes on all
    "passes at different opsets is not one file": (
        [case("cpu", "native", opset=21), case("cpu", "native", "fail", opset=18, fails=("constant",)),
         case("openvino", "native", opset=18), case("openvino", "native", "fail", opset=21, fails=("constant",))],
        "native", False, {"cpu": "✓", "openvino": "✓"}),
}


@pytest.mark.parametrize("name", ANSWERS)
def test_the_answer_leads_with_the_form_that_passes_everywhere(name):
    records, lead, every, cells = ANSWERS[name]
    (a,) = ship_answer(records)
    assert (a["lead"], a["everywhere"]) == (lead, every), a
    if name == "passes at different opsets is not one file":
        assert a["needs"] == "cpu: opset >= 21 (dynamo); openvino: opset 18 (dynamo)", a
    assert {rt: c["text"] for rt, c in a["cells"].items()} == cells, a["cells"]


def test_a_form_that_fails_on_one_runtime_never_leads_as_passing_everywhere():
    """The check can fail: native passes on cpu only, so it is not the form for all, whatever cpu prefers."""
    (a,) = ship_answer(everywhere())
    assert a["lead"] != "native" and "native" not in a["passes_on"]
    # native passing everywhere too: the simpler form leads
    (a,) = ship_answer([case(rt, v) for rt in ALL for v in ("native", "layernorm-trick")])
    assert a["lead"] == "native" and a["everywhere"]


def test_the_report_says_which_runtimes_it_judged_and_in_which_precision():
    runs = {r["runtime"]: r for r in judged_runtimes(everywhere() + [case("mnn", dtype="float16")])}
    assert list(runs) == ["cpu", "openvino", "mnn"]  # the registry's order
    assert runs["openvino"]["version"].startswith("2026.4.1") and runs["openvino"]["precision"] == {"float32": "f32"}
    assert runs["mnn"]["precision"]["float16"].endswith("written as float32")
    md = render_markdown(everywhere(), {})
    assert "Judged on 3 runtimes: cpu, openvino, mnn." in md
    assert "| openvino | 2026.4.1 | f32 |" in md and "| cpu | 1.32.0 | as the graph&#x27;s types |" in md
    # records without session facts (an older results file) say so instead of inventing a precision
    assert "| cpu | - | not recorded |" in render_markdown([case("cpu", facts=False)], {})


def test_one_runtime_says_so_and_how_to_judge_more():
    one = judged_sentence([case("cpu")])
    assert one.startswith("Judged on 1 runtime: cpu.") and "--runtimes all" in one
    assert "--runtimes all" not in judged_sentence(everywhere())
    # one runtime's answer is its own: why and what else fails are shown open, not behind a click
    assert "<details open><summary>Per runtime" in render_html([case("cpu")], {})
    assert "<details><summary>Per runtime" in render_html(everywhere(), {})


# -- a real sweep over three runtimes ----------------------------------------------------------------
class _Tables(HTMLParser):
    """Each table of a page by id: its rows as lists of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables, self._id, self._cell = {}, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._id = a.get("id")
            self.tables[self._id] = []
        elif tag == "tr" and self._id is not None:
            self.tables[self._id].append([])
        elif tag in ("td", "th") and self._id is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._id][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def three_runtimes(tmp_path_factory):
    """Native LayerNorm and RMSNorm at opset 23 on ORT CPU, onnx.reference and OpenVINO: ORT CPU's LayerNormalization
    is exact on a constant row of 4096 features, OpenVINO's is not (tests/test_openvino.py); RMSNorm passes
    on all three."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from normonnx.engine.inputs import CheckOptions
    from normonnx.presentation.report import load
    from normonnx.features.sweep import Matrix, SweepOptions, sweep

    root = tmp_path_factory.mktemp("three")
    sweep(root / "out", Matrix(norms=("ln", "rms"), variants=("native",), opsets=(23,),
                               exporters=("dynamo",), dtypes=("float32",), providers=("cpu", "reference", "openvino")),
          how=SweepOptions(cache_dir=root / "cache", progress=False), check=CheckOptions(inputs=["normal", "constant"]))
    records, meta = load(root / "out")
    return records, render_html(records, meta), render_markdown(records, meta)


@pytest.mark.slow  # a real sweep (about 30 s on 2 cores): the records above cover the layout in the quick tier
def test_a_sweep_over_three_runtimes_renders_a_column_per_runtime(three_runtimes):
    records, page, md = three_runtimes
    p = _Tables()
    p.feed(page)
    ship = p.tables["ship"]
    assert ship[0] == ["norm", "dtype", "ship", "needs", "cpu", "reference", "openvino"]
    rows = {r[0]: dict(zip(ship[0], r, strict=False)) for r in ship[1:]}
    assert list(rows) == ["ln", "rms"]  # one row per norm x dtype, not per runtime
    assert rows["rms"]["ship"] == "native" and rows["rms"]["needs"] == "opset >= 23 (dynamo)"
    assert [rows["rms"][rt] for rt in ("cpu", "reference", "openvino")] == ["✓"] * 3
    # LayerNorm: the exception is OpenVINO's, and only there
    assert rows["ln"]["ship"] == "native on 2 of 3" and rows["ln"]["cpu"] == "✓"
    assert rows["ln"]["openvino"] == "none (least bad: native)", rows["ln"]
    # which runtimes were judged, and in which precision
    text = re.sub(r"<[^>]+>", " ", page)
    assert "Judged on 3 runtimes: cpu, reference, openvino." in text
    judged = {r[0]: r for r in p.tables["judged"][1:]}
    assert judged["openvino"][2] == "f32" and judged["cpu"][2] == "as the graph's types"
    # the per-runtime detail is still there, behind a click
    assert [r[2] for r in p.tables["per-runtime"][1:]].count("openvino") == 2  # ln and rms
    # the Markdown says the same
    assert "| norm | dtype | ship | needs | cpu | reference | openvino |" in md
    assert re.search(r"^\| rms \| fp32 \| \*\*native\*\* \| opset &gt;= 23 \(dynamo\) \| ✓ \| ✓ \| ✓ \|$", md, re.M)
    assert re.search(r"^\| ln \| fp32 \| \*\*native on 2 of 3\*\* \|.*\| ✓ \| none \(least bad: native\) \|$", md, re.M), md
    assert "Judged on 3 runtimes: cpu, reference, openvino." in md and "| openvino | " in md and " | f32 | " in md
