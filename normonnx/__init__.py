"""normonnx: export BatchNorm/LayerNorm/InstanceNorm/GroupNorm from PyTorch to ONNX and check them."""
__version__ = "0.2.0"

from .errors import BadInput, CheckFailed, ExitCode, ExportMismatch, NormonnxError, NotChecked, RuntimeUnavailable
from .bench import benchmark
from .export import case_id, export, export_report
from .params import make_params
from .spec import NormSpec

__all__ = ["NormSpec", "export", "export_report", "case_id", "benchmark", "make_params", "BadInput",
           "CheckFailed", "ExitCode", "ExportMismatch", "NormonnxError", "NotChecked", "RuntimeUnavailable", "__version__"]
