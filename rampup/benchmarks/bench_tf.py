"""tf.data: the native ramp vs `ds.batch(n)`, and the generator path vs the native one.

Run: python -m rampup.benchmarks.bench_tf [--quick] [--json PATH]

Each ratio times full passes over the same in-memory samples (float32
vectors from `from_tensor_slices`), the two sides interleaved, the median kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from rampup import Plan, RampupBatches, constant, linear, piecewise
from rampup.adapters.tf import rampup_batch, to_tf_dataset
from rampup.benchmarks.harness import at_most, main, ratio, reported

WIDTH = 128  # float32 features per sample


def consume(ds: tf.data.Dataset) -> Callable[[], None]:
    """A full pass over `ds` in a Python loop."""

    def go() -> None:
        for _ in ds:
            pass

    return go


# The rows with a target are load-sensitive: tf.data runs a pipeline in its own threads
# (a prefetch after the last step), so on a machine with more runnable threads than
# CPUs the two sides of a pair get different shares of the CPUs. Measured on the
# 2-core machine at load average 8: the linear ramp's wall-time ratio 1.5-2.0 where
# its CPU-time ratio was 1.12-1.18.


def reduce(ds: tf.data.Dataset) -> Callable[[], None]:
    """A full pass over `ds` inside TensorFlow, as a `tf.function` training loop reads it.

    A Python loop adds tens of microseconds per batch whatever the pipeline; a
    ramp has more (smaller) batches than `batch(n)`, so that cost would be
    counted against the pipeline.
    """

    def go() -> None:
        ds.reduce(
            tf.constant(0, tf.int64), lambda n, b: n + tf.shape(b, out_type=tf.int64)[0]
        ).numpy()

    return go


def native_constant_vs_batch(data: np.ndarray, size: int, repeats: int) -> dict[str, Any]:
    """`rampup_batch` at a constant schedule vs `ds.batch(size)`, same samples."""
    ds = tf.data.Dataset.from_tensor_slices(data)
    value = ratio(consume(rampup_batch(ds, constant(size))), consume(ds.batch(size)), repeats)
    # A one-segment schedule is one `batch` (see rampup_batch).
    return at_most(
        f"native rampup_batch constant({size}) / ds.batch({size}), {len(data)} x {WIDTH} float32",
        value,
        1.2,
        load_sensitive=True,
    )


def ramp_schedules(samples: int, final: int) -> dict[str, Any]:
    """The two ramps measured: linear to `final` over half the data, and 3 sizes."""
    # The two smaller sizes each take a quarter of the samples.
    second = samples // 4 // (final // 4)
    third = second + samples // 4 // (final // 2)
    return {
        f"linear ramp to {final} over half the data": linear(
            final // 8, final // 8, samples // 2, final
        ),
        f"piecewise {final // 4}, {final // 2}, {final} (ramp over half the data)": piecewise(
            {0: final // 4, second: final // 2, third: final}
        ),
    }


def native_ramps_vs_batch(data: np.ndarray, final: int, repeats: int) -> list[dict[str, Any]]:
    """`rampup_batch` on each ramp vs `ds.batch(final)`, read inside TensorFlow."""
    ds = tf.data.Dataset.from_tensor_slices(data)
    return [
        at_most(
            f"native rampup_batch, {name} / ds.batch({final})",
            ratio(reduce(rampup_batch(ds, schedule)), reduce(ds.batch(final)), repeats),
            1.15,
            load_sensitive=True,
        )
        for name, schedule in ramp_schedules(len(data), final).items()
    ]


def native_ramp_endless(data: np.ndarray, final: int, repeats: int) -> dict[str, Any]:
    """The linear ramp over `ds.repeat()` vs `ds.repeat().batch(final)`, one epoch (reported).

    An endless dataset is cut by chunk pairs, not by one vector of step sizes
    (see `rampup.adapters.tf`); both sides read the same `len(data)` samples.
    """
    name, schedule = next(iter(ramp_schedules(len(data), final).items()))
    ds = tf.data.Dataset.from_tensor_slices(data).repeat()
    steps = Plan(schedule).num_batches(len(data))
    value = ratio(
        reduce(rampup_batch(ds, schedule).take(steps)),
        reduce(ds.batch(final).take(len(data) // final)),
        repeats,
    )
    return reported(
        f"native rampup_batch, {name}, endless ds.repeat() / ds.repeat().batch({final})",
        value,
        load_sensitive=True,
    )


def native_ramp_python_loop(data: np.ndarray, final: int, repeats: int) -> dict[str, Any]:
    """The linear ramp vs `ds.batch(final)`, both read by a Python loop (reported)."""
    name, schedule = next(iter(ramp_schedules(len(data), final).items()))
    ds = tf.data.Dataset.from_tensor_slices(data)
    value = ratio(consume(rampup_batch(ds, schedule)), consume(ds.batch(final)), repeats)
    return reported(f"native rampup_batch, {name} / ds.batch({final}), Python loop", value)


def generator_vs_native(data: np.ndarray, final: int, repeats: int) -> dict[str, Any]:
    """`to_tf_dataset(RampupBatches)` vs `rampup_batch`, same ramp, same samples (reported)."""
    schedule = linear(final // 8, final // 8, len(data) // 2, final)
    ds = tf.data.Dataset.from_tensor_slices(data)
    generator = to_tf_dataset(RampupBatches(data, schedule, num_epochs=1))
    value = ratio(consume(generator), consume(rampup_batch(ds, schedule)), repeats)
    return reported(
        f"to_tf_dataset(RampupBatches) / native rampup_batch, linear ramp to {final}", value
    )


def run(quick: bool) -> list[dict[str, Any]]:
    """All tf.data ratios; `quick` for a smoke run on less data."""
    samples, repeats = (20_000, 3) if quick else (200_000, 15)
    data = np.random.default_rng(0).random((samples, WIDTH), dtype=np.float32)
    return [
        native_constant_vs_batch(data, 256, repeats),
        *native_ramps_vs_batch(data, 256, repeats),
        native_ramp_endless(data, 256, repeats),
        native_ramp_python_loop(data, 256, repeats),
        generator_vs_native(data, 256, repeats),
    ]


if __name__ == "__main__":
    main(run)
