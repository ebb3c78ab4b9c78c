"""JAX placement: prefetch overlap, and device_batches' transfer throughput vs jax.device_put.

Run: python -m rampup.benchmarks.bench_jax [--quick] [--json PATH]
(XLA_FLAGS=--xla_force_host_platform_device_count=8 simulates 8 CPU devices;
the rows name the device count they ran on). The targets are for one device;
on several the same rows are reported (`rampup bench` runs both).
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import rampup
from rampup.adapters.jax import device_batches
from rampup.benchmarks.harness import at_least, at_most, main, ratio, reported, seconds


def _sharding() -> NamedSharding:
    return NamedSharding(Mesh(jax.devices(), ("data",)), PartitionSpec("data"))


class SlowSource:
    """Batches of a `RampupBatches` that each take `load_seconds` more to load (I/O)."""

    def __init__(self, batches: rampup.RampupBatches, load_seconds: float) -> None:
        self.iterator = iter(batches)
        self.load_seconds = load_seconds

    def __iter__(self) -> SlowSource:
        return self

    def __next__(self) -> Any:
        time.sleep(self.load_seconds)
        return next(self.iterator)


def _compute_step(width: int, target_seconds: float, batch: jax.Array) -> Callable[..., Any]:
    """A jitted step that takes about `target_seconds` on `batch` (repeats calibrated)."""
    weights = jnp.eye(width, dtype=jnp.float32) * 0.5

    def make(repeats: int) -> Callable[..., Any]:
        @jax.jit
        def step(x: jax.Array) -> jax.Array:
            for _ in range(repeats):
                x = jnp.tanh(x @ weights)
            return x.sum()

        return step

    probe = make(4)
    probe(batch).block_until_ready()
    once = (
        statistics.median(seconds(lambda: probe(batch).block_until_ready()) for _ in range(5)) / 4
    )
    step = make(max(1, round(target_seconds / once)))
    step(batch).block_until_ready()
    return step


def _goal(
    row: Callable[..., dict[str, Any]], name: str, value: float, limit: float
) -> dict[str, Any]:
    """A load-sensitive row with its target on one device, reported on several."""
    if jax.device_count() == 1:
        return row(name, value, limit, load_sensitive=True)
    return reported(name, value, load_sensitive=True)


def prefetch_overlap(quick: bool) -> dict[str, Any]:
    """Step time with prefetch vs max(load time, compute time), load and compute equal."""
    steps, width, load = (20, 256, 0.02) if quick else (40, 256, 0.03)
    sharding = _sharding()
    data = np.random.rand(4096, width).astype(np.float32)
    batches = rampup.RampupBatches(data, rampup.constant(128))
    compute = _compute_step(width, load, jax.device_put(batches[0], sharding))
    on_device = jax.device_put(batches[0], sharding)

    def load_only() -> None:
        for _, batch in zip(range(steps), SlowSource(batches, load), strict=False):
            jax.device_put(batch, sharding).block_until_ready()

    def compute_only() -> None:
        for _ in range(steps):
            compute(on_device).block_until_ready()

    def pipelined() -> None:
        with device_batches(SlowSource(batches, load), sharding, prefetch=2) as it:
            for _, batch in zip(range(steps), it, strict=False):
                compute(batch).block_until_ready()

    pipelined()
    ratios = []
    for i in range(5 if quick else 9):
        order = [load_only, compute_only, pipelined]
        times = {}
        for fn in order[i % 3 :] + order[: i % 3]:
            times[fn] = seconds(fn)
        ratios.append(times[pipelined] / max(times[load_only], times[compute_only]))
    return _goal(
        at_most,
        f"prefetch step time / max(load, compute), {jax.device_count()} devices",
        statistics.median(ratios),
        1.15,
    )


def transfer_throughput(quick: bool) -> list[dict[str, Any]]:
    """device_batches vs a plain jax.device_put loop, and vs a bare producer thread.

    On a CPU-only machine "device" memory is host memory: a producer thread that
    overlaps transfers competes with the consumer for the same cores and memory
    bandwidth, so the bare thread row shows what any background transfer costs here.
    """
    count, rows, width = (30, 1024, 512) if quick else (60, 2048, 1024)
    # A pass here moves 480 MB through one memory bus that both threads share: single passes
    # vary by +-30%, so the median takes many pairs (each under 0.25 s).
    repeats = 7 if quick else 41
    sharding = _sharding()
    data = np.random.rand(rows * 4, width).astype(np.float32)
    source = rampup.RampupBatches(data, rampup.constant(rows))
    host = [batch for _, batch in zip(range(count), source, strict=False)]

    def plain() -> None:
        for batch in host:
            jax.device_put(batch, sharding).block_until_ready()

    def bare_thread() -> None:
        ready: queue.Queue = queue.Queue(2)

        def produce() -> None:
            for batch in host:
                ready.put(jax.device_put(batch, sharding))
            ready.put(None)

        threading.Thread(target=produce, daemon=True).start()
        while (array := ready.get()) is not None:
            array.block_until_ready()

    def ours(prefetch: int) -> Callable[[], None]:
        def loop() -> None:
            with device_batches(host, sharding, prefetch=prefetch) as it:
                for batch in it:
                    batch.block_until_ready()

        return loop

    what = f"{rows}x{width} float32, {jax.device_count()} devices"
    # Load-sensitive: a background thread against the consumer's, on shared CPUs.
    # time(theirs) / time(ours) is ours' throughput over theirs.
    return [
        _goal(
            at_least,
            f"device_batches(prefetch=2) / jax.device_put loop throughput, {what}",
            ratio(plain, ours(2), repeats),
            0.95,
        ),
        _goal(
            at_least,
            f"device_batches(prefetch=2) / bare thread + queue throughput, {what}",
            ratio(bare_thread, ours(2), repeats),
            0.95,
        ),
        _goal(
            at_least,
            f"device_batches(prefetch=0) / jax.device_put loop throughput, {what}",
            ratio(plain, ours(0), repeats),
            0.95,
        ),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """The JAX benchmark rows: name, ratio, target, holds."""
    return [prefetch_overlap(quick), *transfer_throughput(quick)]


if __name__ == "__main__":
    main(run)
