"""normonnx: export BatchNorm/LayerNorm/InstanceNorm/GroupNorm from PyTorch to ONNX and check them.

`import normonnx` imports neither torch, onnx nor onnxruntime (each module loads them where it uses
them), so `normonnx --help`, `list`, `report` and `merge` start without torch."""
from .core.errors import BadInput, CheckFailed, ExitCode, ExportMismatch, NormonnxError, NotChecked, RuntimeUnavailable
from .core.params import make_params
from .core.spec import NormSpec
from .core.version import __version__
from .exporting.export import ExportOptions, case_id, export, export_report, export_result

__all__ = ["NormSpec", "export", "export_result", "export_report", "case_id", "benchmark", "fix", "make_params",
           "BadInput",
           "ExportOptions", "RunOptions", "CheckOptions", "FixOptions", "ProofOptions",
           "CheckFailed", "ExitCode", "ExportMismatch", "NormonnxError", "NotChecked", "RuntimeUnavailable", "__version__"]


def __getattr__(name: str):
    # benchmark and fix need onnx/onnxruntime/torch: load them on first use (PEP 562)
    if name == "benchmark":
        from .engine.bench import benchmark

        return benchmark
    if name in ("fix", "FixOptions", "ProofOptions"):
        from . import repair

        return getattr(repair, name)
    if name == "RunOptions":  # the option types of validate, sweep and fix, beside them
        from .engine.runtimes import RunOptions

        return RunOptions
    if name == "CheckOptions":
        from .engine.inputs import CheckOptions

        return CheckOptions
    raise AttributeError(f"module 'normonnx' has no attribute {name!r}")


# -- where modules lived before the floors (issue 35) -------------------------------------------------------
import importlib as _importlib  # noqa: E402  (standard library only: `import normonnx` stays light)
import importlib.util as _util  # noqa: E402
import sys as _sys  # noqa: E402

# `from normonnx.validate import validate` and the other paths docs/python-api.md gave keep working: each old
# name is the module at its new place (the same object, so a class or registry is never loaded twice).
# `normonnx.export` is left out: importing it would put a module where the export() function is.
_MOVED = {
    **{m: f"core.{m}" for m in ("errors", "version", "tables", "registry", "spec", "params", "reference",
                                "compare", "judge", "timing", "safeio", "results", "outputs")},
    **{m: f"graph.{m}" for m in ("shapes", "irview", "patterns", "identify", "cutout", "derive", "rules",
                                 "rewrite")},
    **{m: f"exporting.{m}" for m in ("translations", "variants", "exporters", "cache")},
    **{m: f"engine.{m}" for m in ("inputs", "runtimes", "fusion", "probe", "validate", "layers", "bench", "pool")},
    **{m: f"features.{m}" for m in ("scan", "sweep", "diff")},
    **{m: f"presentation.{m}" for m in ("render", "findings", "report", "catalog", "testing", "cli")},
}


class _OldPaths:
    """A meta path finder ahead of the file finders (so `normonnx.runtimes.ort` is never found a second time
    under the old package name) that answers only the old names, with the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        # asked for every module imported after normonnx: decide from the name alone, importing nothing (an
        # import here, of a module not loaded yet, would ask this finder again, without end)
        head, _, rest = fullname.partition(".")
        if head != "normonnx" or rest.split(".")[0] not in _MOVED:
            return None
        return _util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        first, _, tail = spec.name[len("normonnx."):].partition(".")
        module = _importlib.import_module(f"normonnx.{_MOVED[first]}" + (f".{tail}" if tail else ""))
        spec.loader_state = module.__spec__  # the import system writes the alias's spec on it: put back below
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


def _install_old_paths() -> None:
    if not any(isinstance(f, _OldPaths) for f in _sys.meta_path):
        _sys.meta_path.insert(0, _OldPaths())


_install_old_paths()
