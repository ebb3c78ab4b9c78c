"""Branches at a checkpoint and the critical batch size they measure.

The critical batch size (CBS) can be measured directly (Merrill, Arora,
Groeneveld and Hajishirzi, "Critical Batch Size Revisited", 2025): from a
checkpoint, train short branches with several batch sizes over the same
samples, then take the largest size whose loss stays within a tolerance of
the smaller ones. `branches` gives each branch the schedule and state under
which every pipeline of this library reads exactly the same samples, in the
same order, whatever the size; `critical_batch_size` reads the losses.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from rampup.batching import (
    POSITION_KEY,
    SCHEDULE_KEY,
    SHIFT_KEY,
    STEP_KEY,
    VERSION_KEY,
    make_state,
    read_state,
)
from rampup.plan import Plan
from rampup.schedules import Schedule, check_count, check_size, constant

_CORE_KEYS = (VERSION_KEY, STEP_KEY, POSITION_KEY, SCHEDULE_KEY, SHIFT_KEY)


class Branch(NamedTuple):
    """One branch of `branches`: a size, and how a pipeline runs it.

    Attributes:
      size: the global batch size of every step of the branch.
      schedule: `constant(size)`, the schedule to build the branch's pipeline with.
      state: the state to restore that pipeline from; it starts at the checkpoint's
        step and data position.
      steps: how many batches the branch reads: `samples // size`.
    """

    size: int
    schedule: Schedule
    state: dict[str, Any]
    steps: int


def branches(state: Mapping[str, Any], sizes: Iterable[int], *, samples: int) -> list[Branch]:
    """Branches that read exactly the samples `[p, p + samples)` from a checkpoint.

    `p` is the data position of `state`. A pipeline (`RampupBatches`, or an
    adapter's dataset) over the same source with the same shuffle, built with
    `branch.schedule` (and `on_schedule_change="continue"`, which any pipeline
    restored at a position of another schedule needs) and restored from
    `branch.state`, yields `branch.steps` batches that hold those positions in
    stream order, on one process or split over several. Each branch's state
    keeps the checkpoint's step, so a learning-rate schedule or a step counter
    continues from it. Its schedule fingerprint is the branch's own: a pipeline
    built with another size refuses it under `on_schedule_change="raise"`.

    Examples:
      >>> import numpy as np, rampup
      >>> source = np.arange(100)
      >>> it = iter(rampup.RampupBatches(source, rampup.constant(3)))
      >>> next(it).tolist(), next(it).tolist()
      ([0, 1, 2], [3, 4, 5])
      >>> for b in rampup.branches(it.get_state(), [2, 4], samples=8):
      ...     branch = rampup.RampupBatches(source, b.schedule, on_schedule_change="continue")
      ...     batches = branch.iter_from(b.state)
      ...     print(b.size, b.steps, [next(batches).tolist() for _ in range(b.steps)])
      2 4 [[6, 7], [8, 9], [10, 11], [12, 13]]
      4 2 [[6, 7, 8, 9], [10, 11, 12, 13]]

    Args:
      state: a checkpoint state of a rampup pipeline (`get_state()`, `state_dict()`).
      sizes: the global batch sizes of the branches, distinct ints >= 1 that
        divide `samples`.
      samples: how many samples every branch reads, an int >= 1.

    Returns:
      One `Branch` per size, in the order of `sizes`.

    Raises:
      ValueError: a size that does not divide `samples`, a size given twice, no
        size at all, or a state that is not a rampup state.
    """
    samples = check_count(samples, "branches samples", 1)
    if isinstance(sizes, (str, bytes, Mapping)) or not isinstance(sizes, Iterable):
        raise TypeError(f"branches: sizes must be a list of batch sizes, got {sizes!r}")
    checked = [check_size(size, "branches size") for size in sizes]
    if not checked:
        raise ValueError("branches: sizes is empty; give the batch sizes to compare, e.g. [32, 64]")
    seen: set[int] = set()
    for size in checked:
        if size in seen:
            raise ValueError(f"branches: size {size} is given twice in {checked}")
        seen.add(size)
    for size in checked:
        if samples % size:
            common = math.lcm(*checked)
            raise ValueError(
                f"branches: size {size} does not divide samples={samples}, so its branch "
                f"would read {samples - samples % size} or {samples - samples % size + size} "
                f"samples, not the same samples as the others. Use samples that every size "
                f"divides, a multiple of {common} (e.g. {-(-samples // common) * common}), "
                "or leave the size out"
            )
    if not isinstance(state, Mapping):
        raise TypeError(f"branches: state must be a rampup state dict, got {state!r}")
    out = []
    for size in checked:
        schedule = constant(size)
        plan = Plan(schedule)
        step, shift = read_state(dict(state), plan, "continue")
        # Keys beyond the core's (the data fields, a stream's parent state) travel with
        # the branch.
        extra = {k: v for k, v in state.items() if k not in _CORE_KEYS}
        out.append(Branch(size, schedule, make_state(plan, step, shift, **extra), samples // size))
    return out


def _loss(value: Any, size: int) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"critical_batch_size: the loss at size {size} is {value!r} "
            f"({type(value).__name__}); losses are finite numbers >= 0"
        )
    loss = float(value)
    if not math.isfinite(loss) or loss < 0:
        raise ValueError(
            f"critical_batch_size: the loss at size {size} is {loss}; losses are finite "
            "numbers >= 0 (the tolerance is relative to the smallest loss, which a "
            "negative loss would turn around)"
        )
    return loss


def critical_batch_size(losses: Mapping[int, float], *, tolerance: float) -> int:
    """The largest size whose loss is within `tolerance` of every smaller size's best.

    That is the largest `B` with `losses[B] <= (1 + tolerance) * min(losses[b] for b <= B)`.
    The smallest size always qualifies.

    Examples:
      >>> import rampup
      >>> rampup.critical_batch_size({32: 2.00, 64: 2.01, 128: 2.02, 256: 2.30}, tolerance=0.01)
      128

    Args:
      losses: batch size -> the loss its branch reached (all branches over the
        same samples); sizes are ints >= 1, losses finite numbers >= 0.
      tolerance: the relative slack, a finite number >= 0 (0.01 is 1%).

    Returns:
      The critical batch size, one of the keys of `losses`.

    Raises:
      TypeError: a size that is not an int or a loss or tolerance that is not a number.
      ValueError: no losses, a size < 1, a negative or non-finite loss or tolerance.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
        raise TypeError(
            f"critical_batch_size: tolerance must be a number >= 0 such as 0.01, got {tolerance!r}"
        )
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(
            f"critical_batch_size: tolerance={tolerance} is not valid; it is a finite "
            "number >= 0 such as 0.01 (1%)"
        )
    if not isinstance(losses, Mapping):
        raise TypeError(
            f"critical_batch_size: losses must be a dict of size -> loss, got {losses!r}"
        )
    if not losses:
        raise ValueError("critical_batch_size: losses is empty; give at least one size -> loss")
    table = sorted(
        (check_size(size, "critical_batch_size size"), _loss(loss, size))
        for size, loss in losses.items()
    )
    best, critical = math.inf, table[0][0]
    for size, loss in table:
        best = min(best, loss)
        if loss <= (1 + tolerance) * best:
            critical = size
    return critical
