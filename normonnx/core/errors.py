"""The exit-code contract, decided once for every command, and the exceptions that carry it.

    0  PASSED          every check that ran passed (and at least one ran, where checks were asked for)
    1  CHECK_FAILED    a numerical check ran and failed, or an export is not what was asked for
    2  BAD_INPUT       the request or a file is invalid; one line says what is wrong and what is valid
    3  UNAVAILABLE     a requested runtime is not installed here (e.g. ORT's CUDA provider)
    4  NOT_CHECKED     nothing could be checked (e.g. scan found norms but could validate none)
    5  INTERNAL        normonnx itself failed: a bug to report (traceback with --debug)

A verdict never comes from the tool's own failure: anything that is not a finished numerical
comparison maps to 2..5, never to 1.
"""
from __future__ import annotations

import signal
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    PASSED = 0
    CHECK_FAILED = 1
    BAD_INPUT = 2
    UNAVAILABLE = 3
    NOT_CHECKED = 4
    INTERNAL = 5


class NormonnxError(Exception):
    """Base class: a one-line, user-facing message and an exit code."""

    exit_code = ExitCode.INTERNAL


class BadInput(NormonnxError, ValueError):
    """The request itself is invalid (bad spec, unsupported opset, unreadable model): exit 2."""

    exit_code = ExitCode.BAD_INPUT


class CheckFailed(NormonnxError):
    """A check ran and failed (numerics, or an export that is not what was asked for): exit 1."""

    exit_code = ExitCode.CHECK_FAILED


class ExportMismatch(CheckFailed):
    """The exporter wrote a model whose opset or op set differs from the request."""


class RuntimeUnavailable(NormonnxError):
    """A requested runtime (e.g. ORT's CUDA provider) is not installed here: exit 3."""

    exit_code = ExitCode.UNAVAILABLE


class NotChecked(NormonnxError):
    """Nothing could be checked, for reasons the message gives: exit 4."""

    exit_code = ExitCode.NOT_CHECKED


# torch is an extra (`pip install normonnx` checks ONNX files alone): what to type when a command needs it. The extra
# brings torch and onnxscript (what torch's dynamo exporter writes with) beside the normonnx installed; the pin
# matters: on PyPI a bare "torch" for Linux is the multi-GB CUDA build, while this project's machines (and an index
# set up like theirs) serve 2.13.0 as the CPU build
TORCH_INSTALL = ('pip install "normonnx[torch]" "torch==2.13.0" (the pin is the CPU build on this project\'s index; '
                 'a bare "torch" can be a multi-GB CUDA download)')


def module_missing(name: str) -> bool:
    """Whether `name` cannot be imported here, asked without importing it (torch takes seconds to import); a module
    hidden as None in sys.modules, the way Python marks one missing, is missing."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name] is None
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):  # a finder that refuses it, or a half-imported module without a spec
        return True


def torch_missing() -> str | None:
    """Why torch cannot be used here (not installed), or None; without importing it."""
    return f"torch is not installed here: {TORCH_INSTALL}" if module_missing("torch") else None


def need_torch(what: str):
    """torch itself, for `what` (e.g. "export"), or RuntimeUnavailable (exit 3) in one line saying how to install
    it: every path that needs PyTorch comes through here, and every other path never imports it."""
    try:
        import torch
    except ImportError as e:
        if module_missing("torch"):
            raise RuntimeUnavailable(f"{what} needs torch, which is not installed here: {TORCH_INSTALL}") from None
        raise RuntimeUnavailable(f"{what} needs torch, which is installed but cannot be imported: "
                                 f"{first_line(e)}") from None
    return torch


def first_line(e: BaseException | str, limit: int = 300) -> str:
    """An exception in one line for a message: its first non-blank line (cut at `limit`), or its type's
    name when it says nothing. Every "why" that quotes a library's exception goes through here."""
    for line in str(e).strip().splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(e).__name__


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM: the command stops, cleaning up on the way out, and exits 128 + the
    signal's number (130, 143). A KeyboardInterrupt, so every `finally` and `except KeyboardInterrupt`
    that cleans up after Ctrl-C does the same for SIGTERM. `hint` is what the last line adds (e.g. how to
    resume)."""

    def __init__(self, signum: int = signal.SIGINT, hint: str | None = None):
        super().__init__(signum)
        self.signum = int(signum)
        self.hint = hint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def source_roots() -> list[Path]:
    """normonnx's folder and that of normonnx.models (in a checkout's editable install, models/ lies
    beside the package, not inside it)."""
    import importlib.util

    roots = [Path(__file__).resolve().parents[1]]  # this file is normonnx/core/errors.py
    spec = importlib.util.find_spec("normonnx.models")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc).resolve()
        if not any(p.is_relative_to(r) for r in roots):
            roots.append(p)
    return roots


def raised_by_normonnx(e: BaseException) -> bool:
    """Whether the innermost frame of the exception (following its causes) is normonnx's own code: a
    runtime's or an exporter's own refusal is a finding or "not checked"; an exception raised in
    normonnx's code (a KeyError in a wrapper, a translation table that broke) is normonnx's bug (exit 5).
    A NormonnxError says what it is itself and is never counted here."""
    if isinstance(e, NormonnxError):
        return False
    roots = source_roots()
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        tb, last = cur.__traceback__, None
        while tb is not None:
            last = tb.tb_frame.f_code.co_filename
            tb = tb.tb_next
        if last and any(Path(last).resolve().is_relative_to(r) for r in roots):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
