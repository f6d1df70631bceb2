"""The report's first screen answers "what do I ship": the recommendation table (opset and exporter
included) sits in the first 1,400x900 viewport of a real headless browser, the page fits 1,400 px,
and a phone-width view still shows the table's top. Needs Chromium and chromedriver (Debian's
chromium, chromium-driver) and selenium; skipped without them unless NORMONNX_BROWSER_REQUIRED is
set (CI sets it after installing them, so there the check always runs)."""
from __future__ import annotations

import os
import shutil

import pytest

from normonnx.presentation.report import render_html
from normonnx.engine.inputs import CheckOptions
from normonnx.features.sweep import SweepOptions, Matrix, sweep

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _driver(width: int, height: int):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("NORMONNX_BROWSER_REQUIRED"):
            raise
        pytest.skip("selenium is not installed (pip install selenium)")
    if not (BROWSER and DRIVER):
        if os.environ.get("NORMONNX_BROWSER_REQUIRED"):
            pytest.fail("NORMONNX_BROWSER_REQUIRED is set but chromium/chromedriver are missing")
        pytest.skip("no chromium + chromedriver here (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = BROWSER
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_window_size(width, height)
    return d


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    """A real sweep of every norm's main forms (float32 and float16), as the first run makes it."""
    root = tmp_path_factory.mktemp("screen")
    m = Matrix.quick(variants=("native", "decomposed", "layernorm-trick"), providers=("cpu",))
    sweep(root / "out", m, how=SweepOptions(cache_dir=root / "cache", progress=False),
          check=CheckOptions(inputs=["normal", "offset", "constant"]))
    from normonnx.presentation.report import write_report

    return write_report(root / "out", root / "report.html")


def _viewport_facts(path, width, height) -> dict:
    d = _driver(width, height)
    try:
        d.get(path.as_uri())
        return d.execute_script("""
            const t = document.getElementById('ship'), r = t.getBoundingClientRect();
            const firstRow = t.rows[1].getBoundingClientRect();
            return {top: r.top, firstRowBottom: firstRow.bottom, bottom: r.bottom, right: r.right,
                    innerHeight: window.innerHeight,
                    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
                    headers: Array.from(t.rows[0].cells).map(c => c.textContent)};""")
    finally:
        d.quit()


def test_recommendation_is_on_the_first_screen_at_1400x900(report_file, tmp_path):
    f = _viewport_facts(report_file, 1400, 900)
    assert f["headers"] == ["norm", "dtype", "ship", "needs", "cpu"], f
    assert 0 <= f["top"] and f["firstRowBottom"] <= f["innerHeight"], f  # its header and first answer in view
    assert f["scrollWidth"] <= 1400, f  # nothing wider than the window: no sideways scrolling


def test_recommendation_starts_on_a_phone_screen(report_file):
    f = _viewport_facts(report_file, 390, 844)
    assert 0 <= f["top"] < f["innerHeight"], f


def test_the_screenshot_check_fails_when_the_answer_is_pushed_down(report_file, tmp_path):
    """The check can fail: the same report with a screenful of text before the table is caught."""
    html = report_file.read_text().replace("<h2>What to ship</h2>", "<div style='height:1200px'></div><h2>What to ship</h2>")
    pushed = tmp_path / "pushed.html"
    pushed.write_text(html)
    f = _viewport_facts(pushed, 1400, 900)
    assert f["firstRowBottom"] > f["innerHeight"], f


def test_render_html_puts_what_to_ship_before_the_matrix():
    recs = [{"type": "case", "case_id": "c", "norm": "ln", "provider": "cpu", "dtype": "float32", "variant": "native",
             "opset": 18, "exporter": "dynamo", "status": "pass"}]
    html = render_html(recs, {})
    assert html.index("What to ship") < html.index("Failures, by finding") < html.index("Compatibility matrix")


SEVEN = ("cpu", "reference", "openvino", "iree", "tvm", "mnn", "ncnn")


def _seven_runtimes(extra_rows: int = 0) -> list[dict]:
    """Every norm x dtype on seven runtimes, as a plugin-heavy sweep makes it: a form passing on all, and per
    runtime exceptions (a form failing there, nothing checked there); `extra_rows` more norms to push it down."""
    recs = []
    norms = ["bn", "ln", "in", "gn", "rms"] + [f"x{i}" for i in range(extra_rows)]
    for k, norm in enumerate(norms):
        for dtype in ("float32", "float16"):
            for j, rt in enumerate(SEVEN):
                for v in ("native", "decomposed", "layernorm-trick", "shifted"):
                    if rt == "ncnn" and norm == "gn":
                        st = "not checked"
                    elif (j + k) % 5 == 2:  # nothing passes there
                        st = "fail"
                    elif (j + k) % 4 == 1:  # only another form passes there
                        st = "pass" if v == "decomposed" else "fail"
                    else:
                        st = "fail" if (v != "shifted" and (j + k) % 3 == 0) else "pass"
                    recs.append({"type": "case", "case_id": f"{norm}-{dtype}-{rt}-{v}", "norm": norm, "provider": rt,
                                 "dtype": dtype, "variant": v, "opset": 18, "exporter": "dynamo", "status": st,
                                 "inputs": {"constant-large": {"status": "fail", "max_abs_err": 0.02}} if st == "fail" else {},
                                 "runtime_facts": {"version": "1.0", "precision": "f32 (a long precision statement "
                                                   "as a converter makes it; fp16 arithmetic off)"}})
    return recs


def test_the_answer_for_seven_runtimes_fits_one_screen(tmp_path):
    """Five norms x two dtypes on seven runtimes: the whole answer table, a column per runtime, lies inside the
    first 1,400x900 screen, and the page is no wider."""
    page = tmp_path / "seven.html"
    page.write_text(render_html(_seven_runtimes(), {}))
    f = _viewport_facts(page, 1400, 900)
    assert f["headers"] == ["norm", "dtype", "ship", "needs", *SEVEN], f
    assert f["bottom"] <= f["innerHeight"] and f["scrollWidth"] <= 1400, f


def test_the_one_screen_check_fails_when_the_table_is_longer(tmp_path):
    """The check can fail: twenty more rows run past the screen."""
    page = tmp_path / "long.html"
    page.write_text(render_html(_seven_runtimes(extra_rows=10), {}))
    f = _viewport_facts(page, 1400, 900)
    assert f["bottom"] > f["innerHeight"], f


def test_the_whole_matrix_fits_1400_px(tmp_path):
    """--full's 400 cases (20 columns on one runtime), every status present: the page is no wider than
    the window. Records made here (this checks layout, not verdicts)."""
    import random

    rnd = random.Random(0)
    recs = []
    for c in Matrix(providers=("cpu",)).cases():
        st = rnd.choice(["pass", "fail", "unsupported", "mismatch", "not checked"])
        recs.append({"type": "case", "case_id": c.id, "norm": c.norm, "provider": c.provider, "dtype": c.dtype,
                     "variant": c.variant, "opset": c.opset, "exporter": c.exporter, "status": st,
                     "worst_input": "offset-1e4-large", "reason": f"asked for opset {c.opset}, the exporter wrote 18",
                     "inputs": {"offset-1e4-large": {"status": "fail", "max_abs_err": 0.3, "nonfinite_mismatch": 0}}})
    page = tmp_path / "full.html"
    page.write_text(render_html(recs, {}))
    f = _viewport_facts(page, 1400, 900)
    assert f["scrollWidth"] <= 1400 and f["top"] < f["innerHeight"], f
