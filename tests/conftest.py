"""Shared helpers for the test suite (real exports, real ORT sessions; no mocks)."""
from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run the installed `normonnx` command as a user would, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "normonnx.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def has_cuda_ep() -> bool:
    from normonnx.runtimes import get_runtime

    return get_runtime("cuda").unavailable() is None


requires_cuda = pytest.mark.skipif(not has_cuda_ep(), reason="onnxruntime has no CUDAExecutionProvider here")
