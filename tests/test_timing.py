"""The timing method on synthetic timings (a fake clock, no wall-clock assertion): interleaving
order, paired ratios, confidence intervals, the noise verdict, and implausible sub-copy rows."""
from __future__ import annotations

import os

import numpy as np
import pytest

from normonnx.core import timing
from normonnx.engine.bench import _fastest


class FakeMachine:
    """Forms that 'take' a cost in ns on a fake clock; `load(t)` multiplies the cost over time."""

    def __init__(self, costs: dict[str, float], load=lambda t: 1.0):
        self.now, self.costs, self.load, self.log = 0, costs, load, []

    def form(self, name):
        def run():
            self.log.append(name)
            self.now += int(self.costs[name] * self.load(self.now))
        return run

    def clock(self):
        return self.now


def _run(machine, rounds=12, seed=0):
    forms = {n: machine.form(n) for n in machine.costs}
    return timing.run_rounds(forms, lambda: None, rounds=rounds, min_time=0.001 * len(forms), warmup=1, seed=seed,
                             clock=machine.clock, gap=0)


def test_every_round_runs_every_form_once_in_a_shuffled_order():
    m = FakeMachine({"copy": 1e5, "torch": 3e5, "native": 4e5})
    r = _run(m)
    assert all(sorted(o) == ["copy", "native", "torch"] for o in r.order)
    assert len({tuple(o) for o in r.order}) > 1  # not one fixed order
    assert {n: len(v) for n, v in r.per_round.items()} == {"copy": 12, "torch": 12, "native": 12}
    assert all(len(r.calls[n]) == 12 * r.batch[n] for n in r.calls)


@pytest.mark.parametrize("load, rounds", [
    (lambda t: 1.0, 3),  # a steady machine: the first steady round from the third ends it
    (lambda t: 1.0 + (t // 10**6) % 3, 12),  # load that never settles: every round asked for
])
def test_timing_that_is_steady_stops_early_and_noisy_timing_runs_every_round(load, rounds):
    m = FakeMachine({"original": 4e5, "fixed": 4.4e5}, load=load)
    forms = {n: m.form(n) for n in m.costs}
    asked = []

    def enough(per_round):
        asked.append(len(per_round["fixed"]))
        med, lo, hi = timing.median_ci(timing.paired_ratios(per_round, "original")["fixed"])
        return (hi - lo) / 2 <= timing.CI_WIDTH_LIMIT * med

    r = timing.run_rounds(forms, lambda: None, rounds=12, min_time=0.002, warmup=0, clock=m.clock, gap=0,
                          enough=enough)
    assert {n: len(v) for n, v in r.per_round.items()} == {"original": rounds, "fixed": rounds}
    assert asked[0] == 3 and asked == list(range(3, min(rounds + 1, 12)))  # never before the third, never after the last


def test_paired_ratios_cancel_load_that_comes_and_goes_between_rounds():
    """Load doubling every other round makes block timing a coin toss; per-round pairs stay exact."""
    m = FakeMachine({"copy": 1e5, "native": 4e5}, load=lambda t: 2.0 if (t // 10**7) % 2 else 1.0)
    r = _run(m, rounds=20)
    ratios = timing.paired_ratios(r.per_round, "copy")["native"]
    assert np.median(ratios) == pytest.approx(4.0, rel=0.02)
    med, lo, hi = timing.median_ci(ratios)
    assert lo <= med <= hi and lo == pytest.approx(4.0, rel=0.05) and hi == pytest.approx(4.0, rel=0.05)


def test_a_clean_series_is_stable_and_a_noisy_one_is_not():
    rng = np.random.default_rng(0)
    clean = 3.0 * (1 + 0.01 * rng.standard_normal(15))
    noisy = 3.0 * (1 + 0.6 * rng.standard_normal(15)).clip(0.2)
    ok = timing.Noise.of(timing.median_ci(clean), copy_cv=0.02, load=(0.5, 0.7), cores=2)
    bad = timing.Noise.of(timing.median_ci(noisy), copy_cv=0.02, load=(0.5, 0.7), cores=2)
    assert ok.stable and ok.reason is None
    assert not bad.stable and "wider than +/-10%" in bad.reason
    assert "copy's time varied 40%" in timing.Noise.of(timing.median_ci(clean), 0.4, None, 2).reason
    assert "load average 5.0 above the 2 cores" in timing.Noise.of(timing.median_ci(clean), 0.0, (1.0, 5.0), 2).reason


def test_a_row_faster_than_a_copy_is_flagged_and_never_the_fastest():
    assert timing.implausible(0.43) and "implausible: 0.43x a copy" in timing.implausible(0.43)
    assert timing.implausible(1.2) is None
    rows = {"copy": dict(form="copy", x_copy=1.0, stable=True),
            "native": dict(form="native", x_copy=0.43, stable=True, check="pass", implausible=timing.implausible(0.43)),
            "decomposed": dict(form="decomposed", x_copy=5.0, stable=True, check="pass"),
            "instance-trick": dict(form="instance-trick", x_copy=2.0, stable=False, check="pass")}
    # the impossible one never; the unstable instance-trick is faster than decomposed, so no claim at all
    assert _fastest(rows) is None
    rows["instance-trick"]["stable"] = True
    assert _fastest(rows) == "instance-trick"
    rows["instance-trick"]["check"] = "fail"
    assert _fastest(rows) == "decomposed"


def test_separation_needs_non_overlapping_intervals():
    assert timing.separated((2.0, 1.9, 2.1), (3.0, 2.8, 3.2))
    assert not timing.separated((2.0, 1.5, 2.6), (2.4, 2.2, 2.7))


def test_one_hiccup_does_not_condemn_the_copy_but_sustained_swings_do():
    steady = np.full(15, 1.0)
    steady[4] = 9.0  # one round hit by a page fault or a context switch
    assert timing.copy_cv(steady) < 0.01
    swinging = np.tile([1.0, 1.6], 8)[:15]
    assert timing.copy_cv(swinging) > timing.COPY_CV_LIMIT


def test_other_processes_taking_cpu_make_a_run_unstable():
    v = timing.Noise.of((3.0, 2.95, 3.05), copy_cv=0.01, load=None, cores=2, others=0.9)
    assert not v.stable and "other processes used 0.90 cores" in v.reason
    assert timing.Noise.of((3.0, 2.95, 3.05), 0.01, None, 2, others=0.05).stable


def test_other_cpu_sees_a_busy_process_beside_it():
    """An invariant that holds on a busy machine too (an idle baseline does not: it failed 3 runs in 7
    under load): a child that spins inside the block is another process, so the CPU time OtherCpu
    attributes to others covers at least the child's own CPU time (the kernel's count of it, from
    os.times), less a clock tick or two."""
    import subprocess
    import sys
    import time as t

    before = os.times()
    start = t.monotonic()
    with timing.OtherCpu() as seen:
        subprocess.run([sys.executable, "-c", "import time\nend = time.monotonic() + 0.8\n"
                        "while time.monotonic() < end: pass"], check=True, timeout=60)
    wall = t.monotonic() - start
    after = os.times()
    if seen.cores is None:
        pytest.skip("no /proc/stat here")
    child = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    assert child > 0.2  # it spun
    tick = 2.0 / os.sysconf("SC_CLK_TCK")
    assert seen.cores * wall >= child - tick - 0.02, (seen.cores, wall, child)
