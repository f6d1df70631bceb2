"""Terminal tables fit the terminal: cells wrap at spaces by column width, widest first, never inside
a word, and every word of every cell is still printed (the full text is also in --json)."""
from __future__ import annotations

import pytest

from normonnx.presentation.render import table, terminal_width

ADVICE = ("CUDAExecutionProvider is not available: install onnxruntime-gpu instead of onnxruntime "
          "(pip uninstall onnxruntime && pip install onnxruntime-gpu) and check that CUDA 12 libraries load")
ROWS = [["cuda", "normal:normal", "NOT CHECKED", 1.5e-7, ADVICE],
        ["cpu", "offset:offset-1e4", "FAIL", 711.0, "1536 non-finite mismatches: NaN at [0, 2, 0, 0] where the "
                                                     "oracle has 0.48 (variance cancels: E[x^2]-E[x]^2)"]]
HEADERS = ["runtime", "inputs", "status", "max_abs", "reason"]


@pytest.mark.parametrize("width", [200, 120, 80, 60])
def test_a_table_fits_its_width_and_loses_no_word(width):
    out = table(HEADERS, ROWS, width=width)
    lines = out.splitlines()
    longest_word = max(len(w) for r in ROWS for c in r for w in str(c).split())
    assert all(len(line) <= max(width, longest_word + 60) for line in lines)
    if width >= 80:
        assert all(len(line) <= width for line in lines), out
    words = out.split()
    for cell in (ADVICE, ROWS[1][4]):
        assert all(w in words for w in cell.split()), out  # every word, whole: nothing cut mid-word
    assert "onnxruntime-gpu" in words


def test_a_narrow_table_is_left_as_it_was():
    out = table(["a", "b"], [["x", "y z"]], width=120)
    assert out.splitlines() == ["a  b", "-  ---", "x  y z"]


def test_the_width_is_120_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert terminal_width() == 120  # pytest captures stdout: not a terminal
    monkeypatch.setenv("COLUMNS", "90")
    assert terminal_width() == 90


def test_validate_output_fits_120_columns_with_the_cuda_advice_whole():
    from conftest import run_cli

    r = run_cli("validate", "--norm", "gn", "--groups", "4", "--inputs", "normal,offset", "--runtimes", "cpu,reference",
                columns=120)
    assert r.returncode == 1
    assert all(len(line) <= 120 for line in r.stdout.splitlines()), r.stdout
    words = r.stdout.split()
    assert "E[x^2]-E[x]^2" in " ".join(words) or "tolerance;" in words  # the reasons are printed, wrapped
    narrow = run_cli("validate", "--norm", "ln", "--inputs", "normal", "--runtimes", "cpu,cuda", "--skip-missing",
                     columns=100)
    assert "onnxruntime-gpu" in narrow.stdout.split() and all(len(x) <= 100 for x in narrow.stdout.splitlines())
