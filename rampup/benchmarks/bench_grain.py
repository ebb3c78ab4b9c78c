"""grain adapter costs, measured side by side in one run.

- `RampupIterDataset` at a constant schedule / grain's `IterDataset.batch(n)`.
- `RampupMapDataset` at a constant schedule / grain's `MapDataset.batch(n)`.
- `RampupMapDataset(...).to_iter_dataset()` / `IterDataset.batch(n)` (what the xLSTM
  module costs) on the same elements.
- `RampupMapDataset` + `mp_prefetch` throughput, 2 workers / 1 worker, CPU-heavy map.

Every pipeline reads with `grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)`:
grain's default (16 threads, a 500-element buffer) costs more than cheap elements do,
and would hide what the batching costs.

Run: python -m rampup.benchmarks.bench_grain [--quick] [--json PATH]
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import grain
import numpy as np
from absl import flags

import rampup
from rampup.adapters.grain import RampupIterDataset, RampupMapDataset
from rampup.benchmarks.harness import at_least, at_most, main, ratio, reported

READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
BATCH = 64


def element(i: int) -> dict[str, np.ndarray]:
    """A cheap element: a token row and a label."""
    return {"tokens": np.full((128,), i, np.int32), "label": np.array(i, np.int64)}


def cpu_heavy(i: int) -> np.ndarray:
    """About a few milliseconds of single-threaded NumPy per element."""
    x = np.linspace(0.0, 1.0, 4096) + i
    for _ in range(60):
        x = np.sin(x) * 1.0001 + np.cos(x)
    return x.astype(np.float32)


def drain(ds) -> None:
    """Iterates `ds` to its end."""
    for _ in ds:
        pass


def batching_rows(quick: bool) -> list[dict[str, Any]]:
    """The ramp-up at a constant schedule vs grain's own batch, same elements."""
    n = 3_200 if quick else 32_000
    repeats = 3 if quick else 9
    source = grain.MapDataset.range(n).map(element)
    schedule = rampup.constant(BATCH)
    ramp_map = RampupMapDataset(source, schedule, num_epochs=1, process_index=0, process_count=1)
    ramp_iter = RampupIterDataset(
        source.to_iter_dataset(READ), schedule, process_index=0, process_count=1
    )
    grain_map = source.batch(BATCH)
    grain_iter = source.to_iter_dataset(READ).batch(BATCH)
    return [
        at_most(
            "RampupIterDataset / IterDataset.batch, constant 64",
            ratio(lambda: drain(ramp_iter), lambda: drain(grain_iter), repeats),
            1.05,
        ),
        at_most(
            "RampupMapDataset / MapDataset.batch, constant 64",
            ratio(
                lambda: drain(ramp_map.to_iter_dataset(READ)),
                lambda: drain(grain_map.to_iter_dataset(READ)),
                repeats,
            ),
            1.05,
        ),
        reported(
            "RampupMapDataset.to_iter_dataset / IterDataset.batch, constant 64",
            ratio(
                lambda: drain(ramp_map.to_iter_dataset(READ)), lambda: drain(grain_iter), repeats
            ),
        ),
    ]


def steady_seconds(ds) -> float:
    """Seconds from the first batch to the last: the workers' start-up is left out."""
    it = iter(ds)
    try:
        next(it)
        start = time.perf_counter()
        for _ in it:
            pass
        return time.perf_counter() - start
    finally:
        it.close()


def workers_rows(quick: bool) -> list[dict[str, Any]]:
    """mp_prefetch throughput, 2 workers vs 1, CPU-heavy map: ours, and grain's batch beside it.

    grain's own `MapDataset.batch` under the same workers is the reference: it shows
    what the machine gives (a loaded 2-core box gives far less than 2x).
    """
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's mp_prefetch reads absl flags; jax leaves them
    # Imported by its package name, so that spawned workers can unpickle it however
    # this script was started.
    from rampup.benchmarks.bench_grain import cpu_heavy as heavy

    n = 192 if quick else 1_920
    repeats = 1 if quick else 3
    source = grain.MapDataset.range(n).map(heavy)
    ramp = RampupMapDataset(
        source,
        rampup.piecewise({0: 8, 5: 16, 11: 32}),
        num_epochs=1,
        process_index=0,
        process_count=1,
    ).to_iter_dataset(READ)
    reference = source.batch(32).to_iter_dataset(READ)

    def seconds_with(ds, workers: int) -> float:
        options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2)
        return steady_seconds(ds.mp_prefetch(options))

    ours: list[float] = []
    theirs: list[float] = []
    versus: list[float] = []
    for i in range(repeats):
        order = (1, 2) if i % 2 == 0 else (2, 1)
        two = {}
        for ds, out in ((ramp, ours), (reference, theirs)):
            times = {w: seconds_with(ds, w) for w in order}
            out.append(times[1] / times[2])
            two[id(ds)] = times[2]
        versus.append(two[id(ramp)] / two[id(reference)])
    return [
        at_least(
            "RampupMapDataset + mp_prefetch throughput, 2 workers / 1, CPU-heavy",
            statistics.median(ours),
            1.6,
            load_sensitive=True,
        ),
        reported(
            "reference: MapDataset.batch(32) + mp_prefetch, 2 workers / 1, same map",
            statistics.median(theirs),
        ),
        at_most(
            "RampupMapDataset + mp_prefetch 2 workers / MapDataset.batch(32) + mp_prefetch "
            "2 workers, time, same elements",
            statistics.median(versus),
            1.05,
            # Two 3-process pipelines timed one after the other: on a loaded machine each gets
            # the cores of its own moment (1.265 in a --quick run beside a CI run, 1.032 idle).
            load_sensitive=True,
        ),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """All grain ratios: name, ratio, target, holds."""
    return [*batching_rows(quick), *workers_rows(quick)]


if __name__ == "__main__":
    main(run)
