"""The registry of torch exporters: the default dynamo-based one and the legacy TorchScript one.

Each entry exports a module to a file at an opset and declares the opsets it accepts. Neither is
trusted: normonnx.export checks the opset and op set of every file either one writes.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, cast

from ..core.errors import TORCH_INSTALL, BadInput, RuntimeUnavailable, module_missing
from ..core.registry import Registry
from ..core.spec import NormSpec
from ..core.tables import per_feature


@lru_cache(maxsize=None)
def _max_opset(name: str, default: int) -> int:
    """torch's own limit, read from torch/onnx/_constants.py without importing torch (2 s, and most
    commands never need it); importing it is the fallback."""
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec("torch")
        for root in (spec.submodule_search_locations or []) if spec else []:
            text = Path(root, "onnx", "_constants.py").read_text()
            m = re.search(rf"^{name}\s*=\s*(\d+)", text, re.M)
            if m:
                return int(m.group(1))
    except Exception:
        pass
    try:
        from torch.onnx import _constants

        return int(getattr(_constants, name))
    except Exception:  # pragma: no cover - private module moved
        return default


@dataclass(frozen=True)
class Exporter:
    name: str
    description: str
    first_opset: int
    max_opset: Callable[[], int] = field(repr=False, compare=False)  # torch's limit, looked up when asked
    native_from: int = 7  # below this the exporter converts (and may silently fail to)
    # every registered exporter passes one: the None default only lets it follow the defaulted fields
    run: Callable[..., None] = field(default=cast("Callable[..., None]", None), repr=False, compare=False)
    # the modules it imports to run, each an install away where missing (torch is normonnx's `torch` extra)
    needs: tuple[str, ...] = ("torch",)

    def missing(self) -> str | None:
        """The first module this exporter needs that is not installed here, or None; found without importing it."""
        return next((m for m in self.needs if module_missing(m)), None)

    def unavailable(self) -> str | None:
        """Why it cannot run here (what to install), or None: what `normonnx list` shows."""
        m = self.missing()
        return None if m is None else f"{m} is not installed here: {_install(m)}"

    def require(self, what: str = "export", hint: str = "") -> None:
        """RuntimeUnavailable (exit 3) in one line when `what` cannot run this exporter here, saying what to install
        (and `hint`, what works without it)."""
        m = self.missing()
        if m is None:
            return
        need = f"{what} needs torch" if m == "torch" else f"{what} with the {self.name} exporter needs {m}"
        raise RuntimeUnavailable(f"{need}, which is not installed here: {_install(m)}" + (f"; {hint}" if hint else ""))

    @property
    def opsets(self) -> range:
        """What torch accepts as opset_version."""
        return range(self.first_opset, self.max_opset() + 1)

    def check(self, opset: int) -> None:
        if opset not in self.opsets:
            raise BadInput(
                f"exporter {self.name!r} writes opsets {self.opsets.start}..{self.opsets.stop - 1}, not {opset}"
                + ("; use --exporter dynamo for newer opsets" if opset >= self.opsets.stop and self.name != "dynamo" else "")
            )


def _install(module: str) -> str:
    if module == "torch":
        return TORCH_INSTALL
    return f"pip install {module}" + (" (or --exporter torchscript)" if module == "onnxscript" else "")


@contextlib.contextmanager
def quiet_export(log: list[str]):
    """Silence the exporters' prints, warnings and log lines (torch's logging writes to fd 2 through
    handlers of its own), keeping their text in `log` so a report can show it."""
    import os
    import sys
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    # torch's log handlers hold the stderr *object* they were made with (a test runner's, in-process),
    # which an fd redirect does not reach: point them at a buffer too
    logged = io.StringIO()
    handlers = {h: h.setStream(logged) for h in _torch_stream_handlers()}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()) as out:
                warnings.simplefilter("always")
                yield
            log.extend(str(w.message) for w in caught)
            log.extend(out.getvalue().splitlines())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            for h, stream in handlers.items():
                h.setStream(stream)
            log.extend(line for line in logged.getvalue().splitlines() if line.strip())
            sink.seek(0)
            log.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def _torch_stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n == "torch" or n.startswith("torch.")]
    return [h for lg in loggers for h in lg.handlers if type(h) is logging.StreamHandler]


def _dynamic_dims(spec: NormSpec, variant: str = "native") -> list[int]:
    """Dims that may vary at run time: batch and spatial for bn/in/gn; the leading dims for ln (of the
    model's input: an NHWC variant's spatial dims are 1..rank-2)."""
    from .variants import get_variant

    if per_feature(spec.kind):
        return list(range(len(spec.shape) - spec.normalized_ndim))
    if get_variant(variant).layout == "nhwc":
        return list(range(len(spec.shape) - 1))
    return [0] + list(range(2, len(spec.shape)))


def _reuse_torchlib_table() -> None:
    """Build onnxscript's table of torchlib functions once per process. Each dynamo export rebuilds it,
    reading and parsing ~3,700 functions' source just to learn their domain: 1.9 s of a ~4 s export
    here. The table depends only on the installed onnxscript, and each export still builds its own
    registry from it. Where torch or onnxscript lay this out otherwise, exports go on as they are."""
    import sys

    try:
        from torch.onnx._internal._lazy_import import onnxscript_apis

        build = onnxscript_apis.get_torchlib_ops  # loads the version module torch chose
    except (ImportError, AttributeError):
        return
    if getattr(build, "_normonnx_reused", False):
        return
    table: list = []

    def reused():
        if not table:
            table.extend(build())
        return list(table)

    marked: Any = reused  # a function takes attributes, which its Callable type does not declare
    marked._normonnx_reused = True
    marked.original = build
    # the name is re-exported down a chain of version modules (torch_2_11 from torch_2_9 ...): set it in each
    mod: Any  # a module takes new attributes, which ModuleType's stub does not declare
    for name, mod in list(sys.modules.items()):
        if name.startswith("onnxscript._framework_apis.") and getattr(mod, "get_torchlib_ops", None) is build:
            mod.get_torchlib_ops = reused


def _reuse_op_signatures() -> None:
    """Infer each torchlib function's signature once per process. Each dynamo export builds a registry
    whose ~1,600 entries infer their signature from the function's type annotations again: about a fifth of
    a small export's time (benchmarks/export_speed.py times it with _reuse_cia_materialization). A signature
    depends only on the function (torch's own graph builder keeps it on the function the same way, as
    `_pt_onnx_signature`). Where torch lays this out otherwise, exports go on as they are."""
    try:
        from torch.onnx._internal.exporter import _schemas
    except ImportError:
        return
    infer = getattr(_schemas, "op_signature_from_function", None)
    if infer is None or getattr(infer, "_normonnx_reused", False):
        return
    # keyed by the function's id, the function kept beside its signature: alive, its id is never reused
    seen: dict[tuple, tuple[Any, Any]] = {}

    def reused(func, domain, name=None, overload="", *, since_version=1):
        key = (id(func), domain, name, overload, since_version)
        if key not in seen:
            seen[key] = (func, infer(func, domain, name, overload, since_version=since_version))
        return seen[key][1]

    marked: Any = reused
    marked._normonnx_reused = True
    marked.original = infer
    _schemas.op_signature_from_function = marked


def _reuse_cia_materialization() -> None:
    """Materialize torch's CompositeImplicitAutograd ops only when the dispatcher's list of them changed. Each
    dynamo export's decomposition collects them once per op namespace (twice an export), and each collection
    first walks the dispatcher's whole list (~800 ops) to create the op objects in torch.ops: ~30 ms of a ~190 ms
    export on a 2-core Xeon, for objects that already exist. The walk has no other effect, so it is skipped exactly when the list is the one walked
    last (a newly registered op changes the list and is walked). Where torch lays this out otherwise, exports
    go on as they are."""
    try:
        import torch
        from torch._export import utils
    except ImportError:
        return
    walk = getattr(utils, "_materialize_cpp_cia_ops", None)
    registrations = getattr(torch._C, "_dispatch_get_registrations_for_dispatch_key", None)
    if walk is None or registrations is None or getattr(walk, "_normonnx_reused", False):
        return
    walked: list = [None]

    def reused() -> None:
        now = registrations("CompositeImplicitAutograd")
        if now != walked[0]:
            walk()
            walked[0] = now

    marked: Any = reused
    marked._normonnx_reused = True
    marked.original = walk
    utils._materialize_cpp_cia_ops = marked


def _run_dynamo(module, example, path: Path, opset: int, spec: NormSpec, variant: str, dynamic: bool) -> None:
    import torch

    _reuse_torchlib_table()
    _reuse_op_signatures()
    _reuse_cia_materialization()

    from .variants import get_variant

    kwargs: dict[str, Any] = {}
    if dynamic:
        kwargs["dynamic_shapes"] = ({d: torch.export.Dim.DYNAMIC for d in _dynamic_dims(spec, variant)},)
    t = get_variant(variant).translation("dynamo")
    kwargs.update(t.kwargs(spec, opset))
    with t.context(spec, opset):
        torch.onnx.export(module, (example,), str(path), opset_version=opset, dynamo=True, external_data=False,
                          input_names=["x"], output_names=["y"], verbose=False, **kwargs)


def _run_torchscript(module, example, path: Path, opset: int, spec: NormSpec, variant: str, dynamic: bool) -> None:
    import torch

    from .variants import get_variant

    kwargs: dict[str, Any] = {}
    if dynamic:
        dims = {d: f"d{d}" for d in _dynamic_dims(spec, variant)}
        kwargs["dynamic_axes"] = {"x": dims, "y": dims}
    t = get_variant(variant).translation("torchscript")
    kwargs.update(t.kwargs(spec, opset))
    with t.context(spec, opset):
        torch.onnx.export(module, (example,), str(path), opset_version=opset, dynamo=False,
                          input_names=["x"], output_names=["y"], do_constant_folding=True, **kwargs)


REGISTRY: Registry[Exporter] = Registry("exporter")
REGISTRY.register(Exporter(
    "dynamo", "torch.onnx.export(dynamo=True), torch's default; implements opset >= 18 and "
    "converts down with the ONNX version converter, which may silently keep 18",
    7, lambda: _max_opset("ONNX_MAX_OPSET", 23), 18, _run_dynamo, needs=("torch", "onnxscript")))
REGISTRY.register(Exporter(
    "torchscript", "torch.onnx.export(dynamo=False), the legacy TorchScript-based exporter",
    7, lambda: _max_opset("ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20), 7, _run_torchscript))
get_exporter = REGISTRY.lookup
