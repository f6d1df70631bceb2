"""Shared helpers for the test suite (real exports, real ORT sessions; no mocks)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd=None) -> Run:
    """The command line in-process (click's CliRunner): the same parsing, exit-code mapping and
    stderr as the installed script, without a new interpreter and torch import per call."""
    from click.testing import CliRunner

    from normonnx.cli import cli

    with contextlib.chdir(cwd) if cwd else contextlib.nullcontext():
        r = CliRunner().invoke(cli, list(args), prog_name="normonnx", catch_exceptions=False)
    return Run(r.exit_code, r.stdout, r.stderr)


def run_cli_process(*args: str, cwd=None, env=None) -> Run:
    """The installed `normonnx` command in a subprocess, as a user runs it (for end-to-end tests)."""
    p = subprocess.run([sys.executable, "-m", "normonnx.cli", *args], capture_output=True, text=True, cwd=cwd,
                       timeout=600, env={**os.environ, **(env or {})})
    return Run(p.returncode, p.stdout, p.stderr)


def has_cuda_ep() -> bool:
    from normonnx.runtimes import get_runtime

    return get_runtime("cuda").unavailable() is None


requires_cuda = pytest.mark.skipif(not has_cuda_ep(), reason="onnxruntime has no CUDAExecutionProvider here")


def one_line_error(proc: Run, code: int, *needles: str) -> None:
    """Exit `code`, exactly one line on stderr starting 'error: ' and holding every needle, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-500:], proc.stderr[-1500:])
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for n in needles:
        assert n in err, (n, err)
