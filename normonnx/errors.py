"""Exceptions that carry the CLI exit code they map to, so the CLI never has to guess."""
from __future__ import annotations


class NormonnxError(Exception):
    """Base class: a one-line, user-facing message and an exit code."""

    exit_code = 1


class BadInput(NormonnxError, ValueError):
    """The request itself is invalid (bad spec, unsupported opset, unreadable model): exit 2."""

    exit_code = 2


class CheckFailed(NormonnxError):
    """A check ran and failed (numerics, or an export that is not what was asked for): exit 1."""

    exit_code = 1


class ExportMismatch(CheckFailed):
    """The exporter wrote a model whose opset or op set differs from the request."""


class RuntimeUnavailable(NormonnxError):
    """A requested runtime (e.g. ORT's CUDA provider) is not installed here: exit 3."""

    exit_code = 3
