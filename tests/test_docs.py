"""Code in the docs runs as written: docs/python-api.md's CI example is a test file people copy, so it is run
here, with pytest in a fresh process outside the checkout, and must pass (its xfails included)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _block_after(doc: Path, heading: str) -> str:
    """The first ```python block after `heading` in `doc`."""
    text = doc.read_text()
    rest = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", rest, re.S).group(1)


def test_the_ci_example_in_the_python_api_doc_passes_as_written(tmp_path):
    code = _block_after(DOCS / "python-api.md", "## In your own CI")
    assert "assert_export_matches" in code
    (tmp_path / "test_norms_export.py").write_text(code)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_norms_export.py"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    # the layernorm-trick passes; native and the instance-trick fail as their xfail reasons say
    assert re.search(r"\b1 passed, 2 xfailed\b", p.stdout), p.stdout[-1000:]
