"""The registry of runtimes a model can run on, and the one small interface every runtime implements.

A runtime is one `Runtime` entry: whether it is available here (and why not), `open` (a model file, any
conversion included, to a `Session` whose run(x) -> y) and the facts a session reports (version,
precision in effect, what the nodes ran as where the runtime says). The built-in runtimes live one
module each beside this file (ort, reference, torch_eager, openvino, iree, tvm, mnn, ncnn, tensorrt);
third-party ones register through the Python entry-point group `normonnx.runtimes`, loaded the first
time the registry is read. A converter that refuses a model raises SessionError with its reason in one
line: the checks on that runtime are "not checked", never a failure.
"""
from __future__ import annotations

# the order of the imports below is the registration order `normonnx list` and every error message show: keep it

from .base import (  # noqa: F401  (the interface, re-exported: callers import it from normonnx.engine.runtimes)
    OPT_LEVELS,
    ALL,
    ENTRY_POINT_GROUP,
    SessionConfig,
    RunOptions,
    Session,
    ModelSession,
    Runtime,
    SessionError,
    RuntimeRegistry,
    REGISTRY,
    get_runtime,
    register,
    available_runtimes,
    require,
    resolve_names,
    _entry_points,
    load_plugins,
    _with_plugin,
    _broken_plugin,
    package_version,
    module_found,
    missing_module,
    ModelInput,
    model_input,
    converter_reason,
    captured_fds,
    quiet_import,
    ShapeCompiled,
    shape_text,
)

# -- the built-in runtimes, one module each (each registers itself through base.register) ------
from . import ort as _ort_module  # noqa: F401
from . import reference as _reference_module  # noqa: F401
from . import torch_eager as _torch_module  # noqa: F401
from . import openvino as _openvino_module  # noqa: F401
from . import iree as _iree_module  # noqa: F401
from . import tvm as _tvm_module  # noqa: F401
from . import mnn as _mnn_module  # noqa: F401
from . import ncnn as _ncnn_module  # noqa: F401
from . import tensorrt as _tensorrt_module  # noqa: F401

# the names callers import from normonnx.engine.runtimes, as before the package split
from .ort import (  # noqa: F401
    _open_ort,
    _ort,
    _ort_providers,
    _ort_run_bfloat16,
    _ort_unavailable,
    _placement,
    ort_session,
    placement,
    session_options,
)
from .reference import _open_reference, _stash_honouring_ops  # noqa: F401
from .torch_eager import _open_torch, _torch_cuda_unavailable  # noqa: F401
from .openvino import (  # noqa: F401
    OPENVINO_INSTALL,
    _bind_openvino,
    _open_openvino,
    _openvino_unavailable,
    _ov_compile,
    _ov_ran_as,
)
