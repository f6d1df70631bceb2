"""normonnx: export BatchNorm/LayerNorm/InstanceNorm/GroupNorm from PyTorch to ONNX and check them."""
from pathlib import Path as _Path

# Running from a source checkout: `models/` and `cli.py` live beside this package (the installed
# wheel maps them to normonnx.models and normonnx.cli). Let the same names resolve here too.
_src = _Path(__file__).resolve().parent.parent
if (_src / "cli.py").is_file() and (_src / "models" / "__init__.py").is_file() and (_src / "pyproject.toml").is_file():
    __path__.append(str(_src))

__version__ = "0.1.0"

from .errors import BadInput, CheckFailed, ExportMismatch, NormonnxError, RuntimeUnavailable  # noqa: E402
from .bench import benchmark  # noqa: E402
from .export import case_id, export, export_report  # noqa: E402
from .params import make_params  # noqa: E402
from .spec import NormSpec  # noqa: E402

__all__ = ["NormSpec", "export", "export_report", "case_id", "benchmark", "make_params", "BadInput",
           "CheckFailed", "ExportMismatch", "NormonnxError", "RuntimeUnavailable", "__version__"]
