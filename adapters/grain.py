"""Batch-size ramp-up as grain datasets.

`RampupMapDataset` is a `grain.MapDataset` whose item `k` is batch `k`: place it
before `.to_iter_dataset()` and `.mp_prefetch(...)`, and the workers build whole
batches in parallel while the sizes follow the schedule by global step.
`RampupIterDataset` batches a `grain.IterDataset` (stream mode); it belongs after
`mp_prefetch`. The xLSTM module's names (`BatchRampUpIterDataset`,
`batch_dataset_with_rampup`, ...) are kept as a drop-in.

All arithmetic (sizes, offsets, process slices, state) is the core's: this module
converts types.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain

import rampup
from rampup.batching import (
    PARENT_KEY,
    STEP_KEY,
    RampupBatches,
    StreamBatcher,
    as_plan,
    make_state,
)
from rampup.collate import default_collate
from rampup.plan import Plan
from rampup.schedules import Schedule

LEGACY_STEP_KEY = "batch_step"

__all__ = [
    "BatchRampUpIterDataset",
    "RampupDatasetIterator",
    "RampupIterDataset",
    "RampupMapDataset",
    "batch_dataset_with_rampup",
    "constant_rampup_schedule",
    "create_batch_rampup_schedule",
    "process_slice",
    "stepwise_rampup_schedule",
]


def process_slice(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """This process's (index, count): given explicitly, else `grain.sharding.ShardByJaxProcess`.

    Without jax that is (0, 1); with jax, `jax.process_index()` and `jax.process_count()`.
    """
    if process_index is None and process_count is None:
        shard = grain.sharding.ShardByJaxProcess()
        return shard.shard_index, shard.shard_count
    if process_index is None or process_count is None:
        raise ValueError(
            f"give both process_index and process_count or neither (got process_index="
            f"{process_index}, process_count={process_count}); with neither, they come from "
            "grain.sharding.ShardByJaxProcess"
        )
    return process_index, process_count


class _CheckedCollate:
    """Collates a list of elements; a None element (a filtered parent) is an error."""

    def __init__(self, collate: Callable[[list[Any]], Any] | None) -> None:
        self.collate = collate or default_collate

    def __call__(self, elements: list[Any]) -> Any:
        for i, element in enumerate(elements):
            if element is None:
                raise ValueError(
                    f"element {i} of the batch is None: the parent MapDataset has a filter (or "
                    "another transformation that drops elements), so positions do not map to "
                    "elements. Use parent.to_iter_dataset() and RampupIterDataset instead."
                )
        return self.collate(elements)


class RampupMapDataset(grain.MapDataset):
    """A `grain.MapDataset` whose item `k` is this process's slice of batch `k`.

    Stream position `p` is `parent[p]`: grain's own indexing past `len(parent)`
    decides what later epochs hold (a shuffled parent reshuffles per epoch).

    Args:
      parent: the elements; no filter in it (use `RampupIterDataset` after one).
      schedule: the global batch size per step, a `rampup.Schedule` or `rampup.Plan`.
      drop_remainder: leave out a last partial batch (with `num_epochs`).
      num_epochs: bound the stream to `num_epochs * len(parent)` positions; None is endless.
      collate: turns the list of a batch's elements into a batch, as grain's
        `batch_fn`; default `rampup.default_collate`.
      process_index: this process's index; default from `grain.sharding.ShardByJaxProcess`.
      process_count: how many processes split every global batch; same default.
    """

    def __init__(
        self,
        parent: grain.MapDataset,
        schedule: Schedule | Plan,
        *,
        drop_remainder: bool = False,
        num_epochs: int | None = None,
        collate: Callable[[list[Any]], Any] | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> None:
        if not isinstance(parent, grain.MapDataset):
            raise TypeError(
                f"RampupMapDataset needs a grain.MapDataset parent, got {type(parent).__name__}; "
                "for a grain.IterDataset use RampupIterDataset"
            )
        super().__init__(parent)
        index, count = process_slice(process_index, process_count)
        self._batches = RampupBatches(
            parent,
            schedule,
            num_epochs=num_epochs,
            drop_remainder=drop_remainder,
            collate=_CheckedCollate(collate),
            process_index=index,
            process_count=count,
            wrap=False,
        )

    @property
    def batches(self) -> RampupBatches:
        """The core's random-access batches this dataset exposes."""
        return self._batches

    @property
    def plan(self) -> Plan:
        """The step <-> position arithmetic of the schedule."""
        return self._batches.plan

    def __len__(self) -> int:
        # An endless dataset has grain's length of an endless repeat().
        return sys.maxsize if self._batches.end is None else len(self._batches)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        try:
            return self._batches[index]
        except ValueError as e:
            e.add_note(f"while building batch {index} of {self}")
            raise

    def __str__(self) -> str:
        b = self._batches
        return (
            f"RampupMapDataset(schedule={b.schedule}, drop_remainder={b.drop_remainder}, "
            f"num_epochs={b.num_epochs}, process={b.process_index}/{b.process_count})"
        )


class RampupDatasetIterator(grain.DatasetIterator):
    """Pulls each step's elements from the parent iterator (the core's `StreamBatcher`).

    Its state is `{"version", "step", "position", "schedule", "parent"}`; `set_state`
    also reads the xLSTM module's `{"batch_step", "parent"}`.
    """

    def __init__(
        self,
        parent: grain.DatasetIterator,
        plan: Plan,
        *,
        drop_remainder: bool,
        collate: Callable[[list[Any]], Any] | None,
        process_index: int,
        process_count: int,
        on_schedule_change: str,
        name: str,
    ) -> None:
        super().__init__(parent)
        self._batcher = StreamBatcher(
            parent,
            plan,
            drop_remainder=drop_remainder,
            collate=collate,
            process_index=process_index,
            process_count=process_count,
            on_schedule_change=on_schedule_change,
        )
        self._name = name
        self._checked_worker = False

    def _check_not_in_workers(self) -> None:
        # grain sets the worker context after __iter__, so it is read at the first step.
        mp = self._ctx.mp_context
        if mp.process_count > 1:
            raise ValueError(
                f"{self._name} runs inside mp_prefetch worker {mp.process_index} of "
                f"{mp.process_count}: each worker would pull its own B(k) elements, so global "
                f"step k would hold {mp.process_count}x the scheduled size. Place it after "
                "mp_prefetch (ds.mp_prefetch(...) then the ramp-up), or batch a MapDataset "
                "with RampupMapDataset before to_iter_dataset().mp_prefetch(...)."
            )
        self._checked_worker = True

    def __next__(self) -> Any:
        if not self._checked_worker:
            self._check_not_in_workers()
        return next(self._batcher)

    @property
    def step(self) -> int:
        """The step the next batch belongs to."""
        return self._batcher.step

    def get_state(self) -> dict[str, Any]:
        """The core's stream state, JSON-serializable when the parent's is."""
        return self._batcher.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a state from `get_state`, or one the xLSTM module wrote."""
        if isinstance(state, Mapping) and LEGACY_STEP_KEY in state and STEP_KEY not in state:
            plan = self._batcher.plan
            step = state[LEGACY_STEP_KEY]
            state = make_state(plan, step, plan.offset(step), **{PARENT_KEY: state[PARENT_KEY]})
        self._batcher.set_state(state)

    def __str__(self) -> str:
        batcher = self._batcher
        return f"{self._name}Iterator(step={batcher.step}, schedule={batcher.plan.schedule})"


class RampupIterDataset(grain.IterDataset):
    """Batches a `grain.IterDataset` by a schedule (stream mode).

    Place it after `mp_prefetch`: inside a worker (several workers) it raises
    rather than scale every step by the worker count.

    Args:
      parent: the elements, this process's share of the stream.
      schedule: the global batch size per step, a `rampup.Schedule` or `rampup.Plan`.
      drop_remainder: leave out a last partial batch.
      collate: turns the list of a batch's elements into a batch, as grain's
        `batch_fn`; default `rampup.default_collate`.
      process_index: this process's index; default from `grain.sharding.ShardByJaxProcess`.
      process_count: how many processes split every global batch; same default.
      on_schedule_change: "raise" or "continue" when a restored state's schedule differs.
    """

    def __init__(
        self,
        parent: grain.IterDataset,
        schedule: Schedule | Plan,
        *,
        drop_remainder: bool = False,
        collate: Callable[[list[Any]], Any] | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        on_schedule_change: str = "raise",
    ) -> None:
        if not isinstance(parent, grain.IterDataset):
            raise TypeError(
                f"{type(self).__name__} needs a grain.IterDataset parent, got "
                f"{type(parent).__name__}; for a grain.MapDataset use RampupMapDataset, or "
                "parent.to_iter_dataset()"
            )
        super().__init__(parent)
        self._plan = as_plan(schedule)
        self._process_index, self._process_count = process_slice(process_index, process_count)
        self._plan.check_processes(self._process_index, self._process_count)
        self._drop_remainder = bool(drop_remainder)
        self._collate = collate
        self._on_schedule_change = on_schedule_change

    @property
    def plan(self) -> Plan:
        """The step <-> position arithmetic of the schedule."""
        return self._plan

    def __iter__(self) -> RampupDatasetIterator:
        return RampupDatasetIterator(
            self._parent.__iter__(),
            self._plan,
            drop_remainder=self._drop_remainder,
            collate=self._collate,
            process_index=self._process_index,
            process_count=self._process_count,
            on_schedule_change=self._on_schedule_change,
            name=type(self).__name__,
        )

    def __str__(self) -> str:
        return (
            f"{type(self).__name__}(schedule={self._plan.schedule}, "
            f"drop_remainder={self._drop_remainder}, "
            f"process={self._process_index}/{self._process_count})"
        )


# The xLSTM module's API, as a drop-in.


def _as_schedule(batch_rampup_schedule: Schedule | Callable[[int], int]) -> Schedule:
    if isinstance(batch_rampup_schedule, Schedule):
        return batch_rampup_schedule
    if not callable(batch_rampup_schedule):
        raise TypeError(
            f"batch_rampup_schedule must be a callable step -> batch size (or a rampup "
            f"Schedule), got {batch_rampup_schedule!r}"
        )
    return rampup.from_fn(batch_rampup_schedule)


class BatchRampUpIterDataset(RampupIterDataset):
    """The xLSTM module's ramp-up batching of an `IterDataset`, on the core.

    Each pipeline pulls `batch_rampup_schedule(k)` elements at step `k` (no
    process split), as that module does; its `{"batch_step", "parent"}` states restore.

    Args:
      parent: the IterDataset whose elements are batched.
      batch_rampup_schedule: a callable step -> batch size, or a `rampup.Schedule`.
      drop_remainder: leave out a last partial batch.
      batch_fn: turns a list of elements into a batch; default stacks them.
    """

    def __init__(
        self,
        parent: grain.IterDataset,
        batch_rampup_schedule: Callable[[int], int],
        drop_remainder: bool = False,
        batch_fn: Callable[[Sequence[Any]], Any] | None = None,
    ) -> None:
        super().__init__(
            parent,
            _as_schedule(batch_rampup_schedule),
            drop_remainder=drop_remainder,
            collate=batch_fn,
            process_index=0,
            process_count=1,
        )


def batch_dataset_with_rampup(
    parent: grain.IterDataset,
    batch_size: int,
    drop_remainder: bool = False,
    batch_fn: Callable[[Sequence[Any]], Any] | None = None,
    schedule_type: str = "stepwise",
    boundaries_and_scales: dict[str, float] | None = None,
) -> BatchRampUpIterDataset | grain.IterDataset:
    """Batches `parent` with a ramp-up; a constant schedule is grain's `parent.batch(...)`.

    Args:
      parent: the IterDataset whose elements are batched.
      batch_size: the base batch size.
      drop_remainder: leave out a last partial batch.
      batch_fn: turns a list of elements into a batch; default stacks them.
      schedule_type: "constant" or "stepwise".
      boundaries_and_scales: for "stepwise": boundary -> scale, keys ints or int-like
        strings; the latest boundary `b <= step` applies, `batch_size` before the first.

    Returns:
      A `BatchRampUpIterDataset`, or `parent.batch(...)` for "constant" or a
      "stepwise" schedule without boundaries.
    """
    if schedule_type == "constant" or (
        schedule_type == "stepwise" and boundaries_and_scales is None
    ):
        return parent.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)
    schedule = create_batch_rampup_schedule(batch_size, schedule_type, boundaries_and_scales)
    return BatchRampUpIterDataset(parent, schedule, drop_remainder, batch_fn)


def create_batch_rampup_schedule(
    batch_size: int, schedule_type: str, boundaries_and_scales: dict[str, float] | None = None
) -> Callable[[int], int]:
    """A ramp-up schedule by type.

    Args:
      batch_size: the base batch size.
      schedule_type: "constant" or "stepwise".
      boundaries_and_scales: boundary -> scale, required for "stepwise".

    Returns:
      A `rampup.Schedule`: callable step -> batch size.
    """
    if schedule_type == "constant":
        return constant_rampup_schedule(batch_size)
    if schedule_type == "stepwise":
        if boundaries_and_scales is None:
            raise ValueError(
                "boundaries_and_scales must be provided for the 'stepwise' schedule, e.g. "
                "{0: 0.25, 1000: 0.5, 2000: 1.0}"
            )
        return stepwise_rampup_schedule(batch_size, boundaries_and_scales)
    raise ValueError(
        f"Unsupported schedule type: {schedule_type!r}; valid types: 'constant', 'stepwise'"
    )


def constant_rampup_schedule(batch_size: int) -> Callable[[int], int]:
    """A constant schedule.

    Args:
      batch_size: the batch size at every step.

    Returns:
      `rampup.constant(batch_size)`: callable step -> batch size.
    """
    return rampup.constant(batch_size)


def stepwise_rampup_schedule(
    batch_size: int, boundaries_and_scales: dict[int, float]
) -> Callable[[int], int]:
    """The xLSTM stepwise rule: `int(batch_size * f_b)` for the largest boundary `b <= step`.

    Args:
      batch_size: the size before the first boundary, on which the scales apply.
      boundaries_and_scales: boundary -> scale; keys ints or int-like strings.

    Returns:
      `rampup.stepwise(batch_size, boundaries_and_scales)`: callable step -> batch size.
      A scale that makes a size round to 0 fails here, not at the step.
    """
    return rampup.stepwise(batch_size, boundaries_and_scales)
