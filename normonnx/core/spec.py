"""The norm specification: one small immutable value that says exactly what to normalize."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np

from .errors import BadInput
from .tables import ALL_KINDS, DTYPES, KINDS_TABLE, per_feature

KIND_NAMES = {k: KINDS_TABLE[k].title for k in ALL_KINDS}

DEFAULT_SHAPES = {"bn": (2, 8, 16, 16), "ln": (2, 16, 64), "in": (2, 8, 16, 16), "gn": (2, 8, 16, 16),
                  "rms": (2, 16, 64)}
DEFAULT_GROUPS = 4


# Every buffer the checks hold is a few copies of x in float64 (input, oracle, outputs, statistics):
# refuse up front a shape that could not fit, instead of failing deep inside numpy or ORT.
MAX_ELEMENTS = 2 ** 28  # 268M elements: ~2 GiB per float64 copy


def numpy_dtype(dtype: str) -> np.dtype:
    return DTYPES[dtype].numpy


def parse_shape(text: str) -> tuple[int, ...]:
    """'2x8x16x16' -> (2, 8, 16, 16)."""
    try:
        dims = tuple(int(d) for d in str(text).lower().replace(",", "x").split("x"))
    except ValueError:
        raise BadInput(f"bad shape {text!r}: write positive integers joined by 'x', e.g. 2x8x16x16") from None
    if not dims or any(d <= 0 for d in dims):
        raise BadInput(f"bad shape {text!r}: every dimension must be a positive integer, e.g. 2x8x16x16")
    check_size(dims)
    return dims


def check_size(shape: tuple[int, ...]) -> None:
    n = math.prod(shape)  # Python ints: no int64 overflow on absurd shapes
    if n > MAX_ELEMENTS:
        raise BadInput(f"shape {format_shape(shape)} has {n:.3g} elements; normonnx checks shapes of at most "
                       f"{MAX_ELEMENTS:,} elements (each check holds several float64 copies in memory)")


def format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _fmt_float(v: float) -> str:
    return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")


@dataclass(frozen=True)
class NormSpec:
    """What to normalize.

    kind: bn, ln, in, gn. shape: the input shape (N, C, *spatial) for bn/in/gn, (*, *normalized)
    for ln. normalized_ndim: ln only, how many trailing dims are normalized. groups: gn only.
    affine: learnable scale/shift. bias: ln only (torch's LayerNorm(bias=False)).
    track_running_stats: bn (always) and in: normalize with stored running mean/var.
    """

    kind: str
    shape: tuple[int, ...]
    groups: int = 1
    normalized_ndim: int = 1
    eps: float = 1e-5
    affine: bool = True
    bias: bool = True
    track_running_stats: bool = False
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        self._validate()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def make(
        cls,
        kind: str,
        *,
        shape: tuple[int, ...] | str | None = None,
        channels: int | None = None,
        normalized_shape: tuple[int, ...] | str | None = None,
        groups: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
        bias: bool = True,
        track_running_stats: bool | None = None,
        dtype: str = "float32",
    ) -> "NormSpec":
        """Build a spec from the loose options the CLI takes, filling sensible defaults."""
        if kind not in ALL_KINDS:
            raise BadInput(f"unknown norm {kind!r}: valid norms are {', '.join(ALL_KINDS)}")
        for what, v in (("channels", channels), ("groups", groups)):
            if v is not None and v <= 0:
                raise BadInput(f"--{what} {v}: must be a positive integer")
        if kind == "rms":
            bias = False  # RMSNorm has a scale and no shift
        if isinstance(shape, str):
            shape = parse_shape(shape)
        if isinstance(normalized_shape, str):
            normalized_shape = parse_shape(normalized_shape)
        if per_feature(kind):
            shape, nd = _per_feature_shape(kind, shape, channels, normalized_shape)
        else:
            shape, nd = _per_channel_shape(kind, shape, channels, normalized_shape), 1
        if groups is not None and kind != "gn":
            raise BadInput(f"--groups applies to gn only, not {kind}")
        if kind == "gn" and groups is None:
            groups = _default_groups(shape)
        if track_running_stats is None:
            track_running_stats = kind == "bn"
        return cls(
            kind=kind,
            shape=tuple(shape),
            groups=groups if groups is not None else 1,
            normalized_ndim=nd,
            eps=float(eps),
            affine=affine,
            bias=bias,
            track_running_stats=track_running_stats,
            dtype=dtype,
        )

    def _validate(self) -> None:
        k, s = self.kind, self.shape
        if k not in ALL_KINDS:
            raise BadInput(f"unknown norm {k!r}: valid norms are {', '.join(ALL_KINDS)}")
        if self.dtype not in DTYPES:
            raise BadInput(f"unknown dtype {self.dtype!r}: valid dtypes are {', '.join(DTYPES)}")
        if any(d <= 0 for d in s):
            raise BadInput(f"bad shape {format_shape(s)}: every dimension must be positive")
        check_size(s)
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise BadInput(f"bad eps {self.eps}: eps must be a positive finite number, e.g. 1e-5")
        ranks = KINDS_TABLE[k].ranks
        if not ranks[0] <= len(s) <= ranks[1]:
            hint = "N, C, *spatial" if not per_feature(k) else "*, *normalized"
            raise BadInput(
                f"{k} takes a rank {ranks[0]}..{ranks[1]} input ({hint}); got shape {format_shape(s)}"
            )
        if per_feature(k) and not 1 <= self.normalized_ndim <= len(s):
            raise BadInput(f"ln normalizes 1..{len(s)} trailing dims of {format_shape(s)}")
        if k == "gn":
            c = s[1]
            valid = [g for g in range(1, c + 1) if c % g == 0]
            if self.groups not in valid:
                raise BadInput(
                    f"groups={self.groups} does not divide channels={c}: valid group counts are "
                    f"{', '.join(map(str, valid))}"
                )
        elif self.groups != 1:
            raise BadInput(f"groups applies to gn only, not {k}")
        if k == "bn" and not self.track_running_stats:
            raise BadInput("bn is exported for inference and needs running statistics (track_running_stats)")
        if k in ("ln", "gn", "rms") and self.track_running_stats:
            raise BadInput(f"track_running_stats applies to bn and in only, not {k}")
        if not self.bias and not per_feature(k):
            raise BadInput(f"bias=False applies to ln only; use affine=False for {k}")

    # -- derived ------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        """C for bn/in/gn; the size of the last normalized dim for ln."""
        return self.shape[-1] if per_feature(self.kind) else self.shape[1]

    @property
    def normalized_shape(self) -> tuple[int, ...]:
        return self.shape[len(self.shape) - self.normalized_ndim:] if per_feature(self.kind) else ()

    @property
    def param_shape(self) -> tuple[int, ...]:
        return self.normalized_shape if per_feature(self.kind) else (self.channels,)

    @property
    def spatial_rank(self) -> int:
        return 0 if per_feature(self.kind) else len(self.shape) - 2

    @property
    def id(self) -> str:
        k = self.kind
        parts = [k]
        if k == "gn":
            parts.append(f"g{self.groups}")
        if per_feature(k):
            parts.append("n" + format_shape(self.normalized_shape))
        else:
            parts.append(f"c{self.channels}")
        parts.append(format_shape(self.shape))
        if self.eps != 1e-5:
            parts.append("e" + _fmt_float(self.eps))
        if not self.affine:
            parts.append("noaffine")
        elif not self.bias and k != "rms":
            parts.append("nobias")
        if k == "in" and self.track_running_stats:
            parts.append("rs")
        parts.append(DTYPES[self.dtype].tag)
        return "-".join(parts)

    def replace(self, **changes) -> "NormSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "NormSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise BadInput(f"unknown spec fields {sorted(unknown)}: valid fields are {sorted(fields)}")
        try:
            return cls(**{**d, "shape": tuple(int(v) for v in d["shape"])})
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, BadInput):
                raise
            raise BadInput(f"malformed spec {json.dumps(d)[:120]}: {e}") from None


def _per_feature_shape(kind: str, shape, channels, normalized_shape) -> tuple[tuple[int, ...], int]:
    """LN and RMS: the input shape (defaults filled) and how many trailing dims are normalized."""
    if normalized_shape is None and channels is not None:
        normalized_shape = (channels,)
    if shape is None:
        lead = DEFAULT_SHAPES[kind][:-1]
        shape = lead + tuple(normalized_shape or DEFAULT_SHAPES[kind][-1:])
    normalized_shape = tuple(normalized_shape or shape[-1:])
    if tuple(shape[len(shape) - len(normalized_shape):]) != normalized_shape:
        raise BadInput(
            f"normalized shape {format_shape(normalized_shape)} must be the trailing dims of "
            f"shape {format_shape(shape)}, e.g. --normalized-shape {format_shape(shape[-1:])}"
        )
    return shape, len(normalized_shape)


def _per_channel_shape(kind: str, shape, channels, normalized_shape) -> tuple[int, ...]:
    """BN, IN and GN: the input shape (defaults filled), its dim 1 the channels."""
    if normalized_shape is not None:
        raise BadInput(f"--normalized-shape applies to ln and rms only, not {kind}; use --channels")
    if shape is None:
        default = DEFAULT_SHAPES[kind]
        return (default[0], channels if channels is not None else default[1], *default[2:])
    if channels is not None and len(shape) > 1 and shape[1] != channels:
        raise BadInput(f"--channels {channels} disagrees with shape {format_shape(shape)} (dim 1 is {shape[1]})")
    return shape


def _default_groups(shape) -> int:
    """GroupNorm's default groups, or why it does not divide the channels (and which would)."""
    c = shape[1] if len(shape) > 1 else 0
    if c % DEFAULT_GROUPS:
        valid = [g for g in range(1, c + 1) if c % g == 0]
        raise BadInput(f"--groups defaults to {DEFAULT_GROUPS}, which does not divide channels={c}: "
                       f"pass --groups with one of {', '.join(map(str, valid))}")
    return DEFAULT_GROUPS
