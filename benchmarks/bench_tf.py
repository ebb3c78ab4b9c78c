"""tf.data: the native ramp vs `ds.batch(n)`, and the generator path vs the native one.

Run: python benchmarks/bench_tf.py [--quick] [--json PATH]

Each ratio times full passes over the same in-memory samples (float32
vectors from `from_tensor_slices`), the two sides interleaved, the median kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from rampup import RampupBatches, constant, linear, piecewise
from rampup.adapters.tf import rampup_batch, to_tf_dataset
from rampup.benchmarks.harness import at_most, main, ratio, reported

WIDTH = 128  # float32 features per sample


def consume(ds: tf.data.Dataset) -> Callable[[], None]:
    """A full pass over `ds`."""

    def go() -> None:
        for _ in ds:
            pass

    return go


def native_constant_vs_batch(data: np.ndarray, size: int, repeats: int) -> dict[str, Any]:
    """`rampup_batch` at a constant schedule vs `ds.batch(size)`, same samples."""
    ds = tf.data.Dataset.from_tensor_slices(data)
    value = ratio(consume(rampup_batch(ds, constant(size))), consume(ds.batch(size)), repeats)
    # A one-segment schedule is one `batch` (see rampup_batch); the next row costs the windows.
    return at_most(f"native rampup_batch constant({size}) / ds.batch({size}), "
                   f"{len(data)} x {WIDTH} float32", value, 1.2)


def native_windows_vs_batch(data: np.ndarray, size: int, repeats: int) -> dict[str, Any]:
    """The general (windowed) path at one size after step 0 vs `ds.batch(size)` (reported).

    `piecewise({0: size, 1: 2 * size, 2: size})` has three segments, so it takes
    the group_by_window path, with one chunk per step from step 2 on.
    """
    schedule = piecewise({0: size, 1: 2 * size, 2: size})
    ds = tf.data.Dataset.from_tensor_slices(data)
    value = ratio(consume(rampup_batch(ds, schedule)), consume(ds.batch(size)), repeats)
    return reported(f"native rampup_batch windowed path, size {size} after step 1 / "
                    f"ds.batch({size})", value)


def native_ramp_vs_batch(data: np.ndarray, final: int, repeats: int) -> dict[str, Any]:
    """`rampup_batch` on a linear ramp to `final` vs `ds.batch(final)` (reported)."""
    schedule = linear(final // 8, final // 8, len(data) // 2, final)
    ds = tf.data.Dataset.from_tensor_slices(data)
    value = ratio(consume(rampup_batch(ds, schedule)), consume(ds.batch(final)), repeats)
    return reported(f"native rampup_batch linear ramp to {final} over half the data / "
                    f"ds.batch({final})", value)


def generator_vs_native(data: np.ndarray, final: int, repeats: int) -> dict[str, Any]:
    """`to_tf_dataset(RampupBatches)` vs `rampup_batch`, same ramp, same samples (reported)."""
    schedule = linear(final // 8, final // 8, len(data) // 2, final)
    ds = tf.data.Dataset.from_tensor_slices(data)
    generator = to_tf_dataset(RampupBatches(data, schedule, num_epochs=1))
    value = ratio(consume(generator), consume(rampup_batch(ds, schedule)), repeats)
    return reported(
        f"to_tf_dataset(RampupBatches) / native rampup_batch, linear ramp to {final}", value)


def run(quick: bool) -> list[dict[str, Any]]:
    """All tf.data ratios; `quick` for a smoke run on less data."""
    samples, repeats = (20_000, 3) if quick else (200_000, 9)
    data = np.random.default_rng(0).random((samples, WIDTH), dtype=np.float32)
    return [
        native_constant_vs_batch(data, 256, repeats),
        native_windows_vs_batch(data, 256, repeats),
        native_ramp_vs_batch(data, 256, repeats),
        generator_vs_native(data, 256, repeats),
    ]


if __name__ == "__main__":
    main(run)
