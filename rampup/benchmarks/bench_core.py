"""Core costs: collate vs np.stack, Plan queries, restore far vs near, and scale.

The scale rows run in a fresh interpreter each and report the time and the
peak memory above an idle interpreter with the same imports: a shuffled first
batch over 10^9 and 10^12 elements, a batch much larger than the data, a
from_fn schedule far out, a ramp with a billion sizes.

Run: python -m rampup.benchmarks.bench_core [--quick] [--json PATH]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rampup import (
    AdaptiveSchedule,
    GrowthPolicy,
    Plan,
    RampupBatches,
    constant,
    default_collate,
    follow,
    linear,
    piecewise,
)
from rampup.benchmarks.harness import at_most, main, median_seconds, probe, ratio, reported

# The imports of every scale probe; the idle interpreter runs these alone.
SETUP = """
import numpy as np
from rampup import Plan, RampupBatches, constant, from_fn, linear, piecewise

class Positions:
    # A source of any length whose item i is i: nothing of its size exists.
    def __init__(self, length):
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return np.int64(index)

def steps(k):
    # A from_fn ramp 32 -> 256 over 7,000 steps that takes arrays.
    return 32 * (1 + np.minimum(k // 1000, 7))

def steps_scalar(k):
    # The same ramp, one step at a time.
    return 32 * (1 + min(k // 1000, 7))
"""

RESTORE_PAST_MAX_STEP = """
it = RampupBatches(np.arange(10), from_fn(steps)).iter_from(0)
try:
    it.set_state(dict(it.get_state(), step=10**9, position=10**11))
except ValueError:
    pass
else:
    raise SystemExit("a restore at step 10^9 was not refused")
"""

LINEAR_BILLION_SIZES = """
try:
    linear(1, 1, 10**15, 10**9)
except ValueError as e:
    assert "1,000,000,000 distinct sizes" in str(e), e
else:
    raise SystemExit("linear with 10^9 sizes was built")
"""


def collate_vs_stack(width: int, quick: bool) -> dict[str, Any]:
    """Default collate over a batch of float32 vectors vs `np.stack` of the same list."""
    elements = [np.random.rand(width).astype(np.float32) for _ in range(256)]
    loops = 50 if quick else 400

    def ours():
        for _ in range(loops):
            default_collate(elements)

    def bare():
        for _ in range(loops):
            np.stack(elements)

    return at_most(
        f"default collate / np.stack, 256 x {width} float32",
        ratio(ours, bare, 5 if quick else 15),
        1.10,
    )


def offset_queries(quick: bool) -> dict[str, Any]:
    """Plan.offset queries per second on a 16-segment linear ramp."""
    plan = Plan(linear(64, 64, 1_000_000, 1024))
    steps = np.random.randint(0, 10**9, size=20_000 if quick else 200_000).tolist()
    start = time.perf_counter()
    for k in steps:
        plan.offset(k)
    rate = len(steps) / (time.perf_counter() - start)
    return reported("Plan.offset queries per second", rate)


def restore_far_vs_near(quick: bool) -> dict[str, Any]:
    """Restore + first batch at steps 10**6.. vs at steps 10.., same batch size (O(1) restore).

    Each side restores at 20 consecutive steps: a shuffled batch's cost varies a
    little with its indices (the cycle-walk), not with the step.
    """
    data = np.random.rand(100_000, 16).astype(np.float32)
    schedule = piecewise({0: 256})
    batches = RampupBatches(data, schedule, shuffle_seed=0)
    states = {k: [batches.iter_from(k + i).get_state() for i in range(20)] for k in (10, 10**6)}

    def restore(k):
        def go():
            for _ in range(1 if quick else 5):
                for state in states[k]:
                    it = RampupBatches(data, schedule, shuffle_seed=0).iter_from(0)
                    it.set_state(state)
                    next(it)

        return go

    return at_most(
        "restore at step 10^6 / at step 10",
        ratio(restore(10**6), restore(10), 5 if quick else 15),
        1.10,
    )


def adaptive_steps(quick: bool) -> list[dict[str, Any]]:
    """A decision at every step: a followed step at 10^5 decisions vs at 10^3 (O(log n): ~1)."""
    steps = 200 if quick else 1_000

    def per_step(decisions: int) -> float:
        schedule = AdaptiveSchedule(8, lag=2, max_size=16, policy=GrowthPolicy(2, 1, shrink=True))
        for k in range(decisions):
            schedule.propose(k, 100.0 if k % 2 == 0 else 1.0)
        batches = RampupBatches(np.arange(2 * 10**6), schedule)
        it = follow(batches.iter_from, batches.plan, step=decisions)
        it.get_state()  # the first fingerprint reads every decision once, later ones do not
        start = time.perf_counter()
        for k in range(decisions, decisions + steps):
            next(it)
            schedule.propose(k, 100.0 if k % 2 == 0 else 1.0)
            it.get_state()
        return (time.perf_counter() - start) / steps

    few, many = per_step(1_000), per_step(100_000)
    return [
        reported("adaptive, a decision every step: microseconds a step at 10^5", many * 1e6),
        at_most(
            "adaptive, a decision every step: time per step at 10^5 / at 10^3", many / few, 2.0
        ),
    ]


def _peaks(got: dict[str, float]) -> dict[str, float]:
    """Both peaks behind a "MB above idle" figure, for the JSON rows."""
    return {"busy_peak_mb": got["busy_peak_mb"], "idle_peak_mb": got["idle_peak_mb"]}


def shuffled_first_batch(exponent: int) -> list[dict[str, Any]]:
    """Build a shuffled RampupBatches over 10^e elements and take its first batch of 1,024."""
    got = probe(
        SETUP,
        f"RampupBatches(Positions(10**{exponent}), "
        "piecewise({0: 1024, 100: 2048}), shuffle_seed=1)[0]",
    )
    name = f"shuffled RampupBatches over 10^{exponent} elements, first batch"
    return [
        at_most(f"{name}: seconds", got["seconds"], 1.0),
        at_most(f"{name}: MB above an idle interpreter", got["peak_mb"], 100, **_peaks(got)),
    ]


def batch_larger_than_data(quick: bool) -> list[dict[str, Any]]:
    """A shuffled batch of B over 3 elements: time per sample at 10 B vs at B (linear: 1)."""
    small, large = 100_000, 1_000_000
    source = np.arange(3)
    times = {
        b: median_seconds(
            lambda b=b: RampupBatches(  # type: ignore[misc]
                source, constant(b), shuffle_seed=1
            )[0],
            3 if quick else 7,
        )
        for b in (small, large)
    }
    return [
        reported("shuffled batch of 100,000 over 3 elements: seconds", times[small]),
        at_most(
            "shuffled batch over 3 elements, time per sample at B = 10^6 / at 10^5",
            (times[large] / large) / (times[small] / small),
            1.5,
        ),
    ]


def from_fn_far(quick: bool) -> list[dict[str, Any]]:
    """from_fn: the offset of a far step (array and scalar functions), a restore past max_step."""
    far = probe(SETUP, "Plan(from_fn(steps)).offset(10**8 - 1)")
    scalar_step, exp = (10**6, "10^6") if quick else (10**7, "10^7")
    scalar = probe(SETUP, f"Plan(from_fn(steps_scalar)).offset({scalar_step})")
    refused = probe(SETUP, RESTORE_PAST_MAX_STEP)
    return [
        reported("from_fn taking arrays, offset at step 10^8 - 1: seconds", far["seconds"]),
        at_most(
            "from_fn taking arrays, offset at step 10^8 - 1: MB above idle",
            far["peak_mb"],
            100,
            **_peaks(far),
        ),
        reported(f"from_fn per step, offset at step {exp}: seconds", scalar["seconds"]),
        at_most(
            f"from_fn per step, offset at step {exp}: MB above idle",
            scalar["peak_mb"],
            100,
            **_peaks(scalar),
        ),
        at_most(
            "from_fn, restore at step 10^9 (past max_step) refused: seconds",
            refused["seconds"],
            1.0,
        ),
    ]


def linear_billion_sizes() -> list[dict[str, Any]]:
    """linear(1, 1, 10^15, 10^9): refused when built, naming the count of sizes."""
    got = probe(SETUP, LINEAR_BILLION_SIZES)
    return [
        at_most("linear(1, 1, 10^15, 10^9) refused when built: seconds", got["seconds"], 1.0),
        at_most(
            "linear(1, 1, 10^15, 10^9) refused when built: MB above idle",
            got["peak_mb"],
            100,
            **_peaks(got),
        ),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """All core benchmarks."""
    return [
        collate_vs_stack(128, quick),
        collate_vs_stack(4096, quick),
        offset_queries(quick),
        restore_far_vs_near(quick),
        *adaptive_steps(quick),
        *shuffled_first_batch(9),
        *shuffled_first_batch(12),
        *batch_larger_than_data(quick),
        *from_fn_far(quick),
        *linear_billion_sizes(),
    ]


if __name__ == "__main__":
    main(run)
