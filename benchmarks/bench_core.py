"""Core costs: default collate vs a bare np.stack, Plan queries, restore far vs near.

Run: python benchmarks/bench_core.py [--quick] [--json PATH]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rampup import Plan, RampupBatches, default_collate, linear, piecewise
from rampup.benchmarks.harness import at_most, main, ratio, reported


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

    return at_most(f"default collate / np.stack, 256 x {width} float32",
                   ratio(ours, bare, 5 if quick else 15), 1.10)


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
    """Restore + first batch at step 10**6 vs at step 10, same batch size (O(1) restore)."""
    data = np.random.rand(100_000, 16).astype(np.float32)
    schedule = piecewise({0: 256})
    batches = RampupBatches(data, schedule, shuffle_seed=0)
    states = {}
    for k in (10, 10**6):
        it = batches.iter_from(k)
        states[k] = it.get_state()

    def restore(k):
        def go():
            for _ in range(20 if quick else 100):
                it = RampupBatches(data, schedule, shuffle_seed=0).iter_from(0)
                it.set_state(states[k])
                next(it)
        return go

    return at_most("restore at step 10^6 / at step 10", ratio(restore(10**6), restore(10),
                                                              5 if quick else 15), 1.10)


def run(quick: bool) -> list[dict[str, Any]]:
    """All core benchmarks."""
    return [collate_vs_stack(128, quick), collate_vs_stack(4096, quick),
            offset_queries(quick), restore_far_vs_near(quick)]


if __name__ == "__main__":
    main(run)
