"""normonnx: export BatchNorm/LayerNorm/InstanceNorm/GroupNorm from PyTorch to ONNX and check them.

`import normonnx` imports neither torch, onnx nor onnxruntime (each module loads them where it uses
them), so `normonnx --help`, `list`, `report` and `merge` start without torch."""
from .errors import BadInput, CheckFailed, ExitCode, ExportMismatch, NormonnxError, NotChecked, RuntimeUnavailable  # noqa: E402
from .export import ExportOptions, case_id, export, export_report  # noqa: E402
from .params import make_params  # noqa: E402
from .spec import NormSpec  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["NormSpec", "export", "export_report", "case_id", "benchmark", "fix", "make_params", "BadInput",
           "ExportOptions", "RunOptions", "CheckOptions", "FixOptions", "ProofOptions",
           "CheckFailed", "ExitCode", "ExportMismatch", "NormonnxError", "NotChecked", "RuntimeUnavailable", "__version__"]


def __getattr__(name: str):
    # benchmark and fix need onnx/onnxruntime/torch: load them on first use (PEP 562)
    if name == "benchmark":
        from .bench import benchmark

        return benchmark
    if name in ("fix", "FixOptions", "ProofOptions"):
        from . import repair

        return getattr(repair, name)
    if name == "RunOptions":  # the option types of validate, sweep and fix, beside them
        from .runtimes import RunOptions

        return RunOptions
    if name == "CheckOptions":
        from .inputs import CheckOptions

        return CheckOptions
    raise AttributeError(f"module 'normonnx' has no attribute {name!r}")
