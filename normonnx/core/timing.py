"""Timings that survive a shared machine: every form of one spec is timed in interleaved rounds
(each round runs a short batch of every form, in a shuffled order), ratios are taken per round from
the same round's batches, and summarised as a median with a bootstrap 95 % confidence interval. A
verdict on noise says whether a row can be trusted, and a form faster than a copy of the same tensor
is physically implausible (a norm reads x and writes y at least once) and flagged, never believed.

Pure functions over per-round numbers, so the arithmetic is tested on synthetic timings.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

CI_WIDTH_LIMIT = 0.10  # a ratio whose 95 % CI half-width exceeds 10 % of its median is "unstable"
COPY_CV_LIMIT = 0.15  # the copy's per-round time varying more than this (robust CV): a noisy machine
IMPLAUSIBLE_BELOW = 0.9  # x copy below this: faster than reading x and writing y once, i.e. not real
OTHERS_LIMIT = 0.25  # other processes using more than a quarter of a core during the timing: a shared machine
BOOTSTRAP = 2000
# a pause between one form's batch and the next: ORT's and OpenMP's pool threads keep spinning for a
# while after a run, and whatever ran next would pay for it (measured: a copy timed right after an
# ORT batch at 0.09x of itself); each form still spins between its own runs, as it does in service
GAP_S = 0.02


@dataclass(frozen=True)
class TimingOptions:
    """How forms are timed: `warmup` untimed runs first, then `rounds` interleaved rounds (each form
    about `min_time` seconds in all); `seed` shuffles the order within rounds and seeds the bootstrap."""

    warmup: int = 5
    min_time: float = 1.0
    rounds: int = 15
    seed: int = 0


@dataclass(frozen=True)
class Rounds:
    """Per-round median ms per call of every form, rounds aligned (round r of each form ran together)."""

    per_round: dict[str, np.ndarray]
    calls: dict[str, np.ndarray]  # every single call's ms, for percentiles
    batch: dict[str, int]
    order: list[list[str]]  # the order each round ran the forms in


def run_rounds(forms: dict[str, Callable[[], object]], sync: Callable[[], object], *, rounds: int, min_time: float,
               warmup: int, seed: int = 0, clock=time.perf_counter_ns, gap: float = GAP_S,
               enough: Callable[[dict[str, np.ndarray]], bool] | None = None, min_rounds: int = 3) -> Rounds:
    """Warm every form up (`warmup` untimed runs), size each form's batch so its rounds add up to about
    `min_time` seconds, then run `rounds` rounds; in each, every form runs its batch once, in a fresh shuffled
    order, after a `gap` of quiet (see GAP_S). enough: asked after each round from `min_rounds` on, with the
    per-round numbers so far; True ends the timing there (a long run's ratio, steady after three rounds, is not
    worth six more)."""
    rng = np.random.default_rng(seed)
    names = list(forms)
    single = {}
    for n in names:
        for _ in range(warmup):
            forms[n]()
            sync()
        t0 = clock()
        forms[n]()
        sync()
        single[n] = max(clock() - t0, 1) / 1e9
    batch = {n: max(1, int(round(min_time / rounds / single[n]))) for n in names}
    per_round = {n: np.empty(rounds) for n in names}
    calls: dict[str, list[float]] = {n: [] for n in names}
    order = []
    for r in range(rounds):
        seq = [names[i] for i in rng.permutation(len(names))]
        order.append(seq)
        for n in seq:
            if gap:
                time.sleep(gap)
            fn = forms[n]
            times = np.empty(batch[n])
            for k in range(batch[n]):
                t0 = clock()
                fn()
                sync()
                times[k] = (clock() - t0) / 1e6
            calls[n].extend(times.tolist())
            # the batch's median call: the first calls after another form ran meet caches that form
            # filled, which is interleaving's own cost, not this form's speed
            per_round[n][r] = float(np.median(times))
        if enough is not None and r + 1 >= min_rounds and r + 1 < rounds and enough({n: v[:r + 1] for n, v in per_round.items()}):
            per_round = {n: v[:r + 1] for n, v in per_round.items()}
            break
    return Rounds(per_round, {n: np.asarray(v) for n, v in calls.items()}, batch, order)


def paired_ratios(per_round: dict[str, np.ndarray], base: str) -> dict[str, np.ndarray]:
    """Per-round ratio of each form to `base`, both from the same round (load that comes and goes
    between rounds cancels instead of landing on one form)."""
    b = per_round[base]
    return {n: v / b for n, v in per_round.items()}


def median_ci(values: np.ndarray, seed: int = 0, n: int = BOOTSTRAP) -> tuple[float, float, float]:
    """(median, low, high): the median and a percentile-bootstrap 95 % interval over rounds."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    meds = np.median(v[rng.integers(0, v.size, size=(n, v.size))], axis=1)
    return float(np.median(v)), float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


@dataclass(frozen=True)
class Noise:
    """Whether a timing can be read (not a verdict on a model: that is normonnx.core.judge's word)."""

    stable: bool
    reason: str | None  # why not stable (or why implausible), as data

    @staticmethod
    def of(ratio: tuple[float, float, float], copy_cv: float, load: tuple[float, float] | None,
           cores: int, others: float | None = None) -> "Noise":
        med, lo, hi = ratio
        why = []
        if others is not None and others > OTHERS_LIMIT:
            # contention does not cancel in a ratio when the forms use different numbers of threads
            why.append(f"other processes used {others:.2f} cores while timing (the machine is shared right now)")
        if med > 0 and (hi - lo) / 2 > CI_WIDTH_LIMIT * med:
            why.append(f"95% CI {lo:.2f}..{hi:.2f} is wider than +/-{CI_WIDTH_LIMIT:.0%} of {med:.2f}")
        if copy_cv > COPY_CV_LIMIT:
            why.append(f"the copy's time varied {copy_cv:.0%} across rounds (memory bandwidth not steady)")
        if load is not None and max(load) > cores:
            why.append(f"load average {max(load):.1f} above the {cores} cores")
        return Noise(not why, "; ".join(why) or None)


def implausible(x_copy: float | None) -> str | None:
    """Why a ratio to the copy cannot be real, or None."""
    if x_copy is not None and x_copy < IMPLAUSIBLE_BELOW:
        return (f"implausible: {x_copy:.2f}x a copy of the same tensor, but a norm reads x and writes y at "
                "least once (a timing artefact, not a speed)")
    return None


def copy_cv(per_round: np.ndarray) -> float:
    """How much the copy's per-round time varies: a robust coefficient of variation (the
    interquartile range / 1.349 over the median, the normal-equivalent sigma), so one round hit by a
    hiccup does not condemn the run while sustained or alternating swings do."""
    v = np.asarray(per_round, dtype=np.float64)
    if v.size < 2:
        return 0.0
    med = float(np.median(v))
    q1, q3 = np.percentile(v, [25, 75])
    return float((q3 - q1) / 1.349 / med) if med > 0 else 0.0


class OtherCpu:
    """CPU time other processes took while a block ran, in cores: the machine's busy time from
    /proc/stat minus this process's own (all its threads), over the wall time. Linux only (None
    elsewhere). The load average cannot see a hog that started seconds ago; this can."""

    def __enter__(self) -> "OtherCpu":
        self.cores = None
        self._start = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        end = self._sample()
        if self._start is None or end is None:
            return
        (b0, o0, w0), (b1, o1, w1) = self._start, end
        if w1 > w0:
            self.cores = max(0.0, ((b1 - b0) - (o1 - o0)) / (w1 - w0))

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / tick  # all but idle, iowait
        t = os.times()
        return busy, t.user + t.system, time.monotonic()


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def separated(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """True when two (median, low, high) intervals do not overlap: a measurable difference."""
    return a[2] < b[1] or b[2] < a[1]
