"""`normonnx diff`, the regression gate: a folder against itself passes; one case flipped, one error grown,
one case gone, one form slower each fail naming the case; unusable input is exit 2."""
from __future__ import annotations

import json
import shutil

import onnx
import pytest

from conftest import run_cli
from normonnx.features.diff import diff
from normonnx.engine.inputs import CheckOptions
from normonnx.features.sweep import BenchOptions, Matrix, sweep

CASE = "ln-n64-2x16x64-fp32-native-op18-dynamo-cpu"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("diff") / "base"
    sweep(out, Matrix(norms=("ln",), variants=("native", "decomposed"), opsets=(18,), exporters=("dynamo",),
                      dtypes=("float32",), providers=("cpu",)),
          check=CheckOptions(inputs=["normal", "offset"]), bench=BenchOptions(opset=18, min_time=0.05))
    return out


def _edited(base, tmp_path, edit):
    new = tmp_path / "new"
    shutil.copytree(base, new)
    recs = [json.loads(line) for line in (new / "results.jsonl").read_text().splitlines()]
    recs = [r for r in (edit(r) for r in recs) if r is not None]
    (new / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return new


def test_a_folder_against_itself_has_no_regression(base):
    r = run_cli("diff", str(base), str(base))
    assert r.returncode == 0 and "PASSED: no regression" in r.stdout, r.stdout
    assert "timings not compared" in r.stdout  # the bench record is there, and not compared unasked
    assert run_cli("diff", str(base), str(base), "--timing").returncode == 0


def test_a_case_flipped_to_fail_is_a_regression_named(base, tmp_path):
    def flip(r):
        if r["case_id"] == CASE:
            r["status"] = "fail"
            r["inputs"]["offset-1e4"].update(status="fail", max_abs_err=0.5)
        return r

    new = _edited(base, tmp_path, flip)
    r = run_cli("diff", str(base), str(new))
    assert r.returncode == 1 and CASE in r.stdout and "pass -> fail" in r.stdout and "offset-1e4" in r.stdout, r.stdout
    md = run_cli("diff", str(base), str(new), "--markdown").stdout
    assert md.startswith("### normonnx diff: FAILED: 1 regressions") and f"| **regression** | `{CASE}` |" in md
    doc = json.loads(run_cli("diff", str(base), str(new), "--json").stdout)
    assert doc["regressions"] == 1 and doc["exit_code"] == 1 and doc["changes"][0]["case"] == CASE
    back = run_cli("diff", str(new), str(base))  # the other way round it is an improvement
    assert back.returncode == 0 and "improvement" in back.stdout


def test_an_error_grown_past_the_factor_is_a_regression_within_tolerance_too(base, tmp_path):
    def grow(r):
        if r["case_id"] == CASE:
            r["inputs"]["offset-1e3"]["max_abs_err"] = max(r["inputs"]["offset-1e3"]["max_abs_err"] * 10, 2e-5)
        return r

    new = _edited(base, tmp_path, grow)
    rep = diff(base, new)
    assert [c.case for c in rep.regressions] == [CASE] and "offset-1e3: error" in rep.regressions[0].what
    assert diff(base, new, factor=1000).exit_code == 0  # below the factor asked for: not a regression


def test_a_case_that_disappeared_is_a_regression(base, tmp_path):
    new = _edited(base, tmp_path, lambda r: None if r["case_id"] == CASE else r)
    rep = diff(base, new)
    assert [(c.case, c.what.split(":")[0]) for c in rep.regressions] == [(CASE, "disappeared")]


def test_a_slower_form_is_a_regression_only_when_timings_are_asked_for(base, tmp_path):
    def slow(r):
        if r.get("type") == "bench":
            for row in r["records"]:
                if row["form"] == "native" and row.get("x_copy") is not None:
                    for k in ("x_copy", "ci_low", "ci_high"):
                        row[k] = row[k] * 10 + 10  # far slower: the intervals cannot overlap
        return r

    new = _edited(base, tmp_path, slow)
    assert diff(base, new).exit_code == 0
    rep = diff(base, new, timing=True)
    assert len(rep.regressions) == 1 and rep.regressions[0].what.startswith("native: slower"), rep.changes


def test_two_scans_of_one_model_are_compared_layer_by_layer(tmp_path):
    import corpus

    model = corpus.ln_chain(naive=True, opset=17)
    onnx.save(model, str(tmp_path / "m.onnx"))
    (tmp_path / "a.json").write_text(run_cli("scan", str(tmp_path / "m.onnx"), "--validate", "--json").stdout)
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["passed"] is False  # the naive chain fails at an offset: flip it the other way round
    assert run_cli("diff", str(tmp_path / "a.json"), str(tmp_path / "a.json")).returncode == 0
    doc["norms"][0].update(status="pass", passed=True, validation="pass")
    (tmp_path / "b.json").write_text(json.dumps(doc))
    r = run_cli("diff", str(tmp_path / "b.json"), str(tmp_path / "a.json"))
    assert r.returncode == 1 and doc["norms"][0]["nodes"][0] in r.stdout and "pass -> FAIL" in r.stdout, r.stdout


@pytest.mark.parametrize("make, why", [
    (lambda p: p.mkdir(), "holds no results.jsonl"),
    (lambda p: (p.mkdir(), (p / "results.jsonl").write_text("{not json\n")), "line 1"),
    (lambda p: p.write_text("[1, 2]"), "not a `scan --validate --json` document"),
    (lambda p: p.write_text("\x00\x01"), "not a JSON document"),
    (lambda p: None, "does not exist"),
])
def test_unusable_input_is_exit_2_saying_why(base, tmp_path, make, why):
    bad = tmp_path / "bad"
    make(bad)
    r = run_cli("diff", str(base), str(bad))
    assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_sweep_and_a_scan_are_not_compared(base, tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"norms": [], "counts": {}}))
    r = run_cli("diff", str(base), str(tmp_path / "s.json"))
    assert r.returncode == 2 and "compare two sweep folders or two scan documents" in r.stderr


def test_the_example_ci_workflow_calls_real_commands_with_real_options():
    """Every `normonnx ...` line of examples/github-actions.yml parses with the CLI as it is (matrix values
    and $SWEEP filled in): a renamed option breaks this test, not a user's CI."""
    import re
    import shlex
    from pathlib import Path

    import click
    import yaml

    from normonnx.presentation.cli import cli

    wf = yaml.safe_load((Path(__file__).parents[1] / "examples" / "github-actions.yml").read_text())
    sweep_args = wf["env"]["SWEEP"]
    lines = [line for job in wf["jobs"].values() for step in job["steps"] for line in str(step.get("run", "")).splitlines()]
    calls = []
    for line in lines:  # one command a line (YAML folds the sweep's two lines into one)
        line = line.replace("$SWEEP", sweep_args).replace("${{ matrix.runtime }}", "cpu").replace("${{ matrix.shard }}", "1")
        calls += [shlex.split(c) for c in re.findall(r"normonnx (?:sweep|merge|report|diff)[^;|>&]*", line)]
    assert {c[1] for c in calls} == {"sweep", "merge", "report", "diff"}, calls
    for c in calls:
        sub = cli.commands[c[1]]
        with sub.make_context(c[1], c[2:]) as ctx:  # parses every option; runs nothing
            assert ctx.params
    with pytest.raises(click.UsageError):
        cli.commands["sweep"].make_context("sweep", ["--no-such-option"])
