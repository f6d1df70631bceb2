"""The registry of input suites: seeded, reproducible stress inputs aimed at how norms really break.

A suite says whether it applies to a spec (and why not), may ask for its own export shape (a
65536-wide LayerNorm row, a 1x1 spatial map), and makes one or more named samples.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..core.errors import BadInput
from ..core.registry import Registry, freeze_names
from ..core.spec import NormSpec, numpy_dtype
from ..core.tables import BATCH_STAND_IN, DIM_STAND_IN, per_feature

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class Sample:
    """One input tensor, already rounded to the model's dtype; `name` is e.g. 'offset-1e4'."""

    name: str
    x: np.ndarray


@dataclass(frozen=True)
class Context:
    spec: NormSpec
    dynamic: bool  # the model has symbolic batch/spatial dims
    can_reexport: bool  # the source is a spec (not a user's file), so a suite may export its own shape


@dataclass(frozen=True)
class InputSuite:
    name: str
    description: str
    applies: Callable[[Context], str | None] = field(repr=False)  # None, or why it does not apply
    make: Callable[[NormSpec, np.random.Generator], list[tuple[str, np.ndarray]]] = field(repr=False)
    derive_spec: Callable[[NormSpec], NormSpec] | None = field(default=None, repr=False)
    large: bool = False  # also run at a realistic normalization-set size (large_spec), samples named '<name>-large'


@dataclass(frozen=True)
class CheckOptions:
    """What a model is judged on: the input suites (None: every one that applies), the tolerance (None:
    the dtype's own), the seed of every sample, and a folder each sample is saved to (None: not saved);
    allow_not_checked: PASS when checks that could not run stand beside ones that passed (normonnx.core.judge;
    default: such partial coverage is "not checked", exit 4)."""

    inputs: tuple[str, ...] | None = None
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    save_inputs: str | Path | None = None
    allow_not_checked: bool = False

    def __post_init__(self):
        freeze_names(self, "inputs")


REGISTRY: Registry[InputSuite] = Registry("input suite")
register = REGISTRY.register


def get_suites(names: Sequence[str] | None) -> list[InputSuite]:
    """The named suites (all of them for None), failing on an unknown name with the valid ones."""
    return [REGISTRY.lookup(n) for n in names] if names else list(REGISTRY.values())


def samples(suite: InputSuite, spec: NormSpec, seed: int = 0) -> list[Sample]:
    """The suite's samples for `spec`, deterministic in (suite, spec shape, seed)."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{suite.name}:{spec.id}".encode())])
    dt = numpy_dtype(spec.dtype)
    out = [Sample(name, np.asarray(x, dtype=np.float64).astype(dt)) for name, x in suite.make(spec, rng)]
    # the report orders samples by their suite through this naming rule: keep it true for new suites
    assert all(s.name == suite.name or s.name.startswith(suite.name + "-") for s in out), \
        f"suite {suite.name!r} made samples {[s.name for s in out]}: a sample's name must start with its suite's"
    return out


# A realistic normalization set: errors that grow with the set's size (a float32 mean's error,
# amplified by 1/sqrt(eps) on a zero-variance set: ORT CPU's InstanceNormalization errs 3.7e-4 at
# 256 elements and 1e-2 at 8192) never show at the default 2x8x16x16. IN/GN: 64x64 spatial (a GN
# set then holds C/G * 4096 elements); LN/RMS: 4096 features.
LARGE_SPATIAL, LARGE_FEATURES = 64, 4096


def large_spec(spec: NormSpec) -> NormSpec | None:
    """The spec at a realistic normalization-set size, or None where the size does not matter (bn,
    in with running statistics: no per-input statistics) or the spec is already that large."""
    if _uses_running_stats(spec):
        return None
    if per_feature(spec.kind):
        lead = spec.shape[: len(spec.shape) - spec.normalized_ndim]
        big = spec.replace(shape=tuple(lead) + (LARGE_FEATURES,), normalized_ndim=1)
        return big if np.prod(spec.shape[len(lead):]) < LARGE_FEATURES else None
    rank = len(spec.shape)
    side = {3: LARGE_SPATIAL * LARGE_SPATIAL, 4: LARGE_SPATIAL, 5: 16}.get(rank)
    if side is None:
        return None
    big = spec.replace(shape=spec.shape[:2] + (side,) * (rank - 2))
    return big if np.prod(spec.shape[2:]) < np.prod(big.shape[2:]) else None


def _uses_running_stats(spec: NormSpec) -> bool:
    return spec.kind == "bn" or (spec.kind == "in" and spec.track_running_stats)


def _always(ctx: Context) -> None:
    return None


# -- the suites ----------------------------------------------------------------------------------
register(InputSuite(
    "normal", "standard normal",
    _always, lambda spec, rng: [("normal", rng.standard_normal(spec.shape))],
))

# ORT runs GroupNormalization-18/21 by inlining the op's function body, whose variance is
# E[x^2] - E[x]^2: at offset 1e4 in float32 that cancels to garbage or NaN. A centered variance
# loses only ~eps*|offset|/std, which compare.py allows for.
OFFSETS = (1e2, 1e3, 1e4)
register(InputSuite(
    "offset", "standard normal plus a large common offset (1e2, 1e3, 1e4): variance cancellation",
    _always,
    lambda spec, rng: [(f"offset-{o:.0e}".replace("e+0", "e"), o + rng.standard_normal(spec.shape)) for o in OFFSETS],
    large=True,
))


def _const_applies(ctx: Context) -> str | None:
    if _uses_running_stats(ctx.spec):
        return f"{ctx.spec.kind} normalizes with running statistics: no per-input variance to make zero"
    return None


def _constant(spec: NormSpec, rng) -> list:
    # one random constant per normalization set: every set has zero variance, output must be the bias
    shape = spec.shape
    if per_feature(spec.kind):
        lead = shape[: len(shape) - spec.normalized_ndim]
        x = np.broadcast_to(rng.normal(0, 3, lead + (1,) * spec.normalized_ndim), shape)
    elif spec.kind == "in":
        x = np.broadcast_to(rng.normal(0, 3, shape[:2] + (1,) * (len(shape) - 2)), shape)
    else:  # gn: constant per (n, group)
        n, c = shape[:2]
        per_group = rng.normal(0, 3, (n, spec.groups, 1))
        x = np.broadcast_to(per_group, (n, spec.groups, int(np.prod(shape[1:])) // spec.groups)).reshape(shape)
    return [("constant", x)]


register(InputSuite("constant", "zero-variance rows/groups: eps decides everything, output = bias (rms: sign*scale); "
                    "one constant per set", _const_applies, _constant, large=True))
register(InputSuite("tiny-scale", "values ~1e-4: variance far below eps",
                    _always, lambda spec, rng: [("tiny-scale", 1e-4 * rng.standard_normal(spec.shape))]))
register(InputSuite("wide", "|x| up to 300: x*x overflows float16",
                    _always, lambda spec, rng: [("wide", rng.uniform(-300, 300, spec.shape))], large=True))


def _big_row_spec(spec: NormSpec) -> NormSpec:
    return spec.replace(shape=(2, 65536), normalized_ndim=1)


def _needs_reexport(kinds: tuple[str, ...]):
    def applies(ctx: Context) -> str | None:
        if ctx.spec.kind not in kinds:
            return f"applies to {', '.join(kinds)} only"
        if not ctx.can_reexport:
            return "needs its own export shape; not available for a given model file"
        return None

    return applies


register(InputSuite(
    "big-row", "LayerNorm over 65536 features (exported at 2x65536)",
    _needs_reexport(("ln", "rms")), lambda spec, rng: [("big-row", 3 + rng.standard_normal(spec.shape))],
    derive_spec=_big_row_spec,
))


def _spatial1_spec(spec: NormSpec) -> NormSpec:
    return spec.replace(shape=spec.shape[:2] + (1,) * max(len(spec.shape) - 2, 1))


register(InputSuite(
    "spatial-1", "InstanceNorm/GroupNorm on a 1x1 spatial map: a single element per channel",
    _needs_reexport(("in", "gn")), lambda spec, rng: [("spatial-1", rng.standard_normal(spec.shape))],
    derive_spec=_spatial1_spec,
))


def _nonfinite(spec: NormSpec, rng) -> list:
    x = rng.standard_normal(spec.shape)
    flat = x.reshape(-1)
    pos = rng.choice(flat.size, size=min(3, flat.size), replace=False)
    for p, v in zip(pos, (np.nan, np.inf, -np.inf), strict=False):
        flat[p] = v
    return [("nonfinite", x)]


register(InputSuite("nonfinite", "NaN and +/-Inf in a few positions: non-finite exactly where the oracle's are",
                    _always, _nonfinite))


def _dynamic_applies(ctx: Context) -> str | None:
    return None if ctx.dynamic else "the model has static shapes (export with --dynamic)"


def _dynamic(spec: NormSpec, rng) -> list:
    s = list(spec.shape)
    if per_feature(spec.kind):
        lead = len(s) - spec.normalized_ndim
        for i in range(lead):
            s[i] = s[i] + 1 + i
    else:
        s[0] += 1
        for i in range(2, len(s)):
            s[i] = s[i] + 3
    return [(f"dynamic-{'x'.join(map(str, s))}", rng.standard_normal(tuple(s)))]


register(InputSuite("dynamic", "for --dynamic models: a shape different from the export shape",
                    _dynamic_applies, _dynamic))


# -- a whole model's inputs ---------------------------------------------------------------------------
def _dims(vi, given: dict | None) -> tuple[int, ...]:
    """A graph input's dims: given (--input-shape), else its own, a stand-in where symbolic."""
    if given and vi.name in given:
        return tuple(given[vi.name])
    dims = vi.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                 (BATCH_STAND_IN if i == 0 else DIM_STAND_IN) for i, d in enumerate(dims))


def seeded_feeds(model: onnx.ModelProto, input_shapes: dict | None, seed: int = 0) -> dict[str, np.ndarray]:
    """One seeded array per graph input: standard normal floats, small non-negative ints (ids valid for
    any vocabulary), random bools. Symbolic dims: --input-shape, else batch 2 and 8 elsewhere."""
    import onnx

    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = _dims(vi, input_shapes)
        elem = vi.type.tensor_type.elem_type
        dt = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if np.issubdtype(dt, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            feeds[vi.name] = np.asarray(rng.random(shape) < 0.5)
        elif np.issubdtype(dt, np.integer):
            feeds[vi.name] = rng.integers(0, 2, shape).astype(dt)
        else:
            raise BadInput(f"graph input {vi.name} has element type {elem}: no seeded input is made for it")
    return feeds
