"""The interface every runtime implements and the registry they join (normonnx.engine.runtimes re-exports all of it;
the built-in runtimes import it from here, so the package and its modules never import each other in a cycle)."""
from __future__ import annotations

import contextlib
import os
import tempfile
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ...core.errors import BadInput, RuntimeUnavailable, first_line
from ...core.registry import Registry, freeze_names

OPT_LEVELS = ("all", "extended", "basic", "disabled")
ALL = "all"  # the runtime name that means every ONNX runtime available here (see resolve_names)
ENTRY_POINT_GROUP = "normonnx.runtimes"


@dataclass(frozen=True)
class SessionConfig:
    """Session options that change numerics or speed, recorded with every result."""

    opt_level: str = "all"
    threads: int | None = None  # None: the runtime's default (ORT: all cores)

    def __post_init__(self):
        if self.opt_level not in OPT_LEVELS:
            raise BadInput(f"unknown optimization level {self.opt_level!r}: valid levels are {', '.join(OPT_LEVELS)}")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class RunOptions:
    """Which runtimes run a model, and how. runtimes: names from normonnx.engine.runtimes (None: every default one
    available here; "all": every ONNX runtime available here, see resolve_names); a named runtime that is
    missing raises RuntimeUnavailable, or with skip_missing is recorded as skipped; config: the session
    options recorded with every result."""

    runtimes: tuple[str, ...] | None = None
    skip_missing: bool = False
    config: SessionConfig = SessionConfig()

    def __post_init__(self):
        freeze_names(self, "runtimes")

    @classmethod
    def on(cls, *runtimes: str, **kw) -> "RunOptions":
        return cls(runtimes, **kw)


@dataclass
class Session:
    """An open model on one runtime: run(x) -> y, plus facts about what actually ran. Every runtime's
    facts hold `version` and `precision` (the arithmetic in effect, e.g. "f32"); where the runtime says
    what each node ran as, `ran_as` (what -> count) or ORT's `optimized_ops`."""

    runtime: str
    run: Callable[[np.ndarray], np.ndarray]
    facts: dict = field(default_factory=dict)
    handle: Any = None  # the underlying ORT session / module, for the bench harness (each runtime's own type)
    model_path: str | None = None


@dataclass(frozen=True)
class ModelSession:
    """A whole model open on one runtime: run(feeds by input name) -> the outputs in the graph's order."""

    runtime: str
    run: Callable[[dict], list]
    outputs: list[str]
    facts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Runtime:
    """One runtime: `unavailable()` says why it cannot run here (None: it can); `open(model_path, config,
    torch_module)` prepares the model (converting it where the runtime needs its own format) and returns
    a Session, raising SessionError with the runtime's or converter's reason when it cannot."""

    name: str
    description: str
    unavailable: Callable[[], str | None] = field(repr=False)  # None when usable here
    open: Callable[..., Session] = field(repr=False)  # (model_path, SessionConfig, torch_module) -> Session
    kind: str = "onnx"  # "onnx" runs the exported file; "torch" runs the source module
    unsupported_dtypes: dict[str, str] = field(default_factory=dict, repr=False)  # dtype -> why not
    default: bool = True  # among "every runtime available here" when none is named (False: opt-in by name)
    # (model_path, SessionConfig, x) -> a call that runs the model on x bound once, nothing copied per call:
    # what bench times for a runtime other than ORT (whose IOBinding bench does itself, on torch's tensors)
    bind: Callable[..., Callable[[], object]] | None = field(default=None, repr=False)
    plugin: str | None = None  # the entry point that registered it (third-party runtimes)
    # (model_path, SessionConfig) -> ModelSession: the whole model, its many inputs and outputs (scan --activations
    # runs it on each named runtime beside the float32 run); None: this runtime runs cut-out layers only
    open_model: Callable[..., "ModelSession"] | None = field(default=None, repr=False)


class SessionError(Exception):
    """A runtime could not open or run a model (its converter refused it, its loader failed); the
    message is one line, and the checks on that runtime are "not checked"."""


class RuntimeRegistry(Registry):
    """The runtime registry: the built-in runtimes, and on first read the entry-point plugins."""

    def __init__(self, what: str):
        super().__init__(what)
        self._plugins_loaded = False

    def _load(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True  # first: a plugin that reads the registry while loading must not recurse
            load_plugins(self)

    def __getitem__(self, name):
        self._load()
        return super().__getitem__(name)

    def __contains__(self, name):
        self._load()
        return super().__contains__(name)

    def __iter__(self):
        self._load()
        return super().__iter__()

    def __len__(self):
        self._load()
        return super().__len__()

    def get(self, name, default=None):
        self._load()
        return super().get(name, default)

    def keys(self):
        self._load()
        return super().keys()

    def values(self):
        self._load()
        return super().values()

    def items(self):
        self._load()
        return super().items()


REGISTRY: RuntimeRegistry = RuntimeRegistry("runtime")
get_runtime = REGISTRY.lookup


def register(entry: Runtime, registry: RuntimeRegistry | None = None) -> Runtime:
    """Add a runtime (a built-in module's, or a plugin's); a name is registered once. Never loads the
    plugins itself: the built-ins register first, whatever reads the registry first."""
    registry = REGISTRY if registry is None else registry
    assert not dict.__contains__(registry, entry.name), f"runtime {entry.name!r} registered twice"
    dict.__setitem__(registry, entry.name, entry)
    return entry


def available_runtimes(defaults_only: bool = False) -> list[str]:
    return [n for n, r in REGISTRY.items() if (r.default or not defaults_only) and r.unavailable() is None]


def require(name: str) -> Runtime:
    r = get_runtime(name)
    why = r.unavailable()
    if why:
        raise RuntimeUnavailable(f"runtime {name!r} is unavailable: {why}")
    return r


def resolve_names(names: Sequence[str] | None, applies: Callable[[Runtime], bool] | None = None) -> tuple[str, ...] | None:
    """Runtime names as a command takes them, with "all" replaced by every runtime available here that runs
    the ONNX file (opt-in ones included; torch eager, which runs the source module, only when named) and,
    where given, that `applies` accepts (bench: the runtimes it can time). Order kept, duplicates dropped;
    other names are left for the command to check. The one place "all" is defined."""
    if names is None:
        return None
    out: list[str] = []
    for n in names:
        if n == ALL:
            out += [name for name, r in REGISTRY.items() if r.kind == "onnx" and (applies is None or applies(r))
                    and r.unavailable() is None]
        else:
            out.append(n)
    return tuple(dict.fromkeys(out))


# -- third-party runtimes -------------------------------------------------------------------------------
def _entry_points():
    from importlib.metadata import entry_points

    return entry_points(group=ENTRY_POINT_GROUP)


def load_plugins(registry: RuntimeRegistry | None = None) -> None:
    """Register the runtimes of the entry-point group `normonnx.runtimes`. An entry point's name is the
    runtime's name; its object is a Runtime, a list of them, a callable returning either, or a module that
    registers its runtimes itself on import. A plugin that fails to load, or gives no runtime of its name,
    is registered unavailable with why: it never stops normonnx (a name the built-ins hold stays theirs)."""
    registry = REGISTRY if registry is None else registry
    try:
        eps = list(_entry_points())
    except Exception as e:  # broken metadata in the environment: no plugins, said once
        warnings.warn(f"normonnx: cannot read the {ENTRY_POINT_GROUP} entry points: {first_line(e)}", stacklevel=2)
        return
    for ep in eps:
        if dict.__contains__(registry, ep.name):
            if dict.__getitem__(registry, ep.name).plugin is None:
                warnings.warn(f"normonnx: plugin {ep.value!r} is ignored: the runtime name {ep.name!r} is built in",
                              stacklevel=2)
            continue
        before = set(dict.keys(registry))
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, (Runtime, types.ModuleType)):
                obj = obj()
            if not isinstance(obj, (Runtime, list, tuple, types.ModuleType)):
                raise TypeError(f"gave {type(obj).__name__}, not a normonnx.engine.runtimes.Runtime")
            got = [obj] if isinstance(obj, Runtime) else list(obj) if isinstance(obj, (list, tuple)) else []
            for r in got:
                if not isinstance(r, Runtime):
                    raise TypeError(f"gave {type(r).__name__}, not a normonnx.engine.runtimes.Runtime")
                if not dict.__contains__(registry, r.name):
                    register(_with_plugin(r, ep.value), registry)
            for n in set(dict.keys(registry)) - before:  # registered by the module itself on import
                dict.__setitem__(registry, n, _with_plugin(dict.__getitem__(registry, n), ep.value))
            if not dict.__contains__(registry, ep.name):
                raise LookupError(f"registered no runtime named {ep.name!r}")
        except (Exception, SystemExit) as e:  # anything a plugin raises, import errors included: reported, never raised
            if not dict.__contains__(registry, ep.name):
                register(_broken_plugin(ep.name, ep.value, e), registry)


def _with_plugin(r: Runtime, where: str) -> Runtime:
    """A plugin's runtime, marked with its entry point, whose availability check cannot raise (`normonnx list`
    asks every runtime: a plugin that fails there is unavailable, with why)."""
    from dataclasses import replace

    if r.plugin:
        return r
    ask = r.unavailable

    def unavailable() -> str | None:
        try:
            why = ask()
        except Exception as e:
            return f"the plugin {where} failed to say whether it is available ({type(e).__name__}: {first_line(e)})"
        return None if why is None else first_line(str(why)) if str(why).strip() else "unavailable (no reason given)"

    return replace(r, plugin=where, unavailable=unavailable)


def _broken_plugin(name: str, where: str, e: BaseException) -> Runtime:
    why = f"the plugin {where} failed to load ({type(e).__name__}: {first_line(e)})"

    def open_(*args, **kw):
        raise SessionError(why)

    return Runtime(name, f"third-party runtime (plugin {where})", lambda: why, open_, default=False, plugin=where)


# -- what the converting runtimes share -----------------------------------------------------------------
def package_version(*dists: str) -> str:
    """The installed version of the first of `dists` that is installed ("unknown" if none)."""
    from importlib.metadata import PackageNotFoundError, version

    for d in dists:
        try:
            return version(d)
        except PackageNotFoundError:
            continue
    return "unknown"


def module_found(module: str) -> bool:
    """Whether a module could be imported, found without importing it (a module hidden as None in
    sys.modules, the way Python marks a module missing, is not found)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing or hidden
        return False


def missing_module(module: str, install: str) -> str | None:
    """Why `module` cannot be imported (with the install line), or None: what a plugin's unavailable() says."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        if e.name and module.split(".")[0] == e.name.split(".")[0]:
            return f"the {module.split('.')[0]} package is not installed ({install})"
        return f"{module} cannot be imported ({first_line(e)})"
    except Exception as e:  # a broken install raising something else at import
        return f"{module} cannot be imported ({type(e).__name__}: {first_line(e)})"
    return None


@dataclass(frozen=True)
class ModelInput:
    """The one graph input of a norm model: its name, dims (None where symbolic) and dtype."""

    name: str
    dims: tuple[int | None, ...]
    dtype: str  # numpy's name: float32, float16, ...
    output: str

    @property
    def static(self) -> tuple[int, ...] | None:
        return None if any(d is None for d in self.dims) else tuple(d for d in self.dims if d is not None)


def read_model(model_path, who: str):
    """(the onnx.ModelProto a converting runtime reads, its input): SessionError saying `who` could not read it."""
    import onnx

    try:
        model = onnx.load(str(model_path))
    except Exception as e:
        raise SessionError(f"cannot read the model for {who}: {first_line(e)}") from e
    return model, model_input(model)


def model_input(model) -> ModelInput:
    """The input (and first output) of an onnx.ModelProto, or SessionError if it has no single input."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise SessionError(f"normonnx runs models with one graph input; this one has {len(inputs)}")
    tt = inputs[0].type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    return ModelInput(inputs[0].name, dims, np.dtype(dtype).name, model.graph.output[0].name)


def converter_reason(tool: str, e: BaseException | str, *, marker: str = "error") -> str:
    """A converter's refusal in one line: its first line holding `marker` (diagnostics often start with
    a banner), else its first line; prefixed with the tool's name."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hit = next((ln for ln in lines if marker.lower() in ln.lower()), None)
    line = hit or (lines[0] if lines else type(e).__name__ if isinstance(e, BaseException) else "no reason given")
    return f"{tool}: {line[:300]}"


@contextlib.contextmanager
def captured_fds() -> Iterator[list[str]]:
    """Capture what native code writes to file descriptors 1 and 2 (converters print banners there, which
    would land in a --json document); yields a list that holds the text once the block ends."""
    import sys

    out: list[str] = []
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(tmp.fileno(), fd)
        except OSError:  # no such descriptors (an embedded interpreter): nothing to capture
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            yield out
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield out
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def quiet_import(module: str):
    """Import a module whose native part prints on import (MNN says which CPU features it found)."""
    import importlib
    import sys

    if module in sys.modules:
        return sys.modules[module]
    with captured_fds():
        return importlib.import_module(module)


class ShapeCompiled:
    """The run of a runtime that compiles for static shapes (IREE, TVM, pnnx): compiled at open for the
    model's declared shape when it has one, else per input shape on first use. `facts` (the session's)
    gains what the first compile reports."""

    def __init__(self, compile_for: Callable[[tuple[int, ...]], tuple[Callable, dict]],
                 static: tuple[int, ...] | None, facts: dict):
        self.compile_for, self.facts = compile_for, facts
        self.compiled: dict[tuple[int, ...], Callable] = {}
        if static is not None:
            self._get(static)

    def _get(self, shape: tuple[int, ...]) -> Callable:
        if shape not in self.compiled:
            run, facts = self.compile_for(shape)
            if not self.compiled:
                self.facts.update(facts)
            self.compiled[shape] = run
        return self.compiled[shape]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._get(tuple(x.shape))(x)


def shape_text(shape: Iterable[int | None]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)
