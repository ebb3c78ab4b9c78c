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

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

import rampup
from rampup import AdaptiveSchedule, Plan, RampupBatches, Schedule, StreamBatcher, default_collate
from rampup.protocol import (
    PARENT_KEY,
    STEP_KEY,
    Allocate,
    ProcessLayout,
    ScheduledIterator,
    WorkerStride,
    as_plan,
    check_collate,
    check_flag,
    check_policy,
    make_state,
    mapping_like,
)

LEGACY_STEP_KEY = "batch_step"
# The name the drop-in gives a schedule function without a stable identity (a lambda, as
# the xLSTM module accepted): its restores are checked by position, not by identity.
UNNAMED_FUNCTION = "xlstm-dropin:unnamed "

__all__ = [
    "BatchRampUpIterDataset",
    "RampupDatasetIterator",
    "RampupMapDatasetIterator",
    "RampupMapIterDataset",
    "RampupPrefetchDatasetIterator",
    "RampupPrefetchIterDataset",
    "RampupIterDataset",
    "RampupMapDataset",
    "batch_dataset_with_rampup",
    "constant_rampup_schedule",
    "create_batch_rampup_schedule",
    "process_slice",
    "stepwise_rampup_schedule",
]


# --- grain's internals: this section is the one place that names them ------------------------
#
# grain 0.2.18 exports no API for these; each use below says what it stands for, so that a
# grain release that moves one changes this section only. (The iterators' `_get_next_index`
# and `_set_next_index` methods are grain's hooks for `grain.experimental.set_next_index`.)

try:  # where grain's own batch stacks into shared memory for mp_prefetch (grain 0.2.x)
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
except ImportError:  # another layout: workers' batches are copied to shared memory by grain
    SharedMemoryArray = None

_NEXT_INDEX = "next_index"  # the key of a grain MapDataset iterator's state


def _read_items(parent: grain.MapDataset, indices: Sequence[int]) -> list[Any]:
    """`parent`'s elements at `indices` in one batched read, as grain's `MapDataset.batch`."""
    return list(parent._getitems(indices))  # noqa: SLF001


def _next_index(iterator: grain.DatasetIterator) -> int:
    """The index of the item a grain `MapDataset` iterator yields next."""
    return iterator.get_state()[_NEXT_INDEX]


def _seek(iterator: grain.DatasetIterator, index: int) -> None:
    """Makes a grain `MapDataset` iterator yield item `index` next."""
    iterator.set_state({_NEXT_INDEX: index})


def _worker(iterator: grain.DatasetIterator) -> Any:
    """The `mp_prefetch` worker context of an iterator (`process_index`, `process_count`)."""
    return iterator._ctx.mp_context  # noqa: SLF001


def _start_stats(iterator: grain.DatasetIterator) -> None:
    """Builds an iterator's stats node, as grain's own transformations do on first use: it
    marks the parents as inner nodes (until then a parent records per-element metrics)."""
    iterator._stats  # noqa: B018, SLF001


# grain refuses to batch a MapDataset after these, which can drop elements; its
# filter class is not exported, so its type is taken from a filter.
_SPARSE_MAP_DATASETS = (
    type(grain.MapDataset.range(1).filter(bool)),
    grain.experimental.FlatMapMapDataset,
)


def _jax_process() -> ProcessLayout:
    """`grain.sharding.ShardByJaxProcess`'s place: (0, 1) without jax."""
    shard = grain.sharding.ShardByJaxProcess()
    return ProcessLayout(shard.shard_index, shard.shard_count)


# ----------------------------------------------------------------------------------------------


def _process_layout(process_index: int | None, process_count: int | None) -> ProcessLayout:
    """This process's layout: as given, else grain's `ShardByJaxProcess` (jax's process)."""
    return ProcessLayout.given(
        process_index, process_count, _jax_process, "grain.sharding.ShardByJaxProcess"
    )


def process_slice(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """Deprecated alias, kept for code that imported it: this process's `(process_index,
    process_count)`, as given or from `grain.sharding.ShardByJaxProcess`.

    The datasets take `process_index=None, process_count=None` for that default;
    `rampup.adapters.jax.process_layout(sharding)` gives a sharding's layout.
    """
    return _process_layout(process_index, process_count)


def _check_dense(parent: grain.MapDataset) -> None:
    """Refuses a parent with a filter or flat-map anywhere above it, as grain's `.batch` does."""
    to_check = [parent]
    while to_check:
        ds = to_check.pop()
        if isinstance(ds, _SPARSE_MAP_DATASETS):
            raise ValueError(
                f"RampupMapDataset cannot follow {type(ds).__name__} ({ds}): it can discard "
                "elements, so stream positions would not map to elements. Convert to an "
                "IterDataset with parent.to_iter_dataset() and batch it with RampupIterDataset."
            )
        to_check.extend(ds.parents)


def _shared_memory(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array in shared memory (an empty one is a plain array: shared memory needs a size)."""
    if math.prod(shape) == 0 or dtype.itemsize == 0:
        return np.empty(shape, dtype)
    return SharedMemoryArray(shape, dtype=dtype)


class _Collate:
    """A batch's collate, which `mp_prefetch` can switch to stacking into shared memory.

    As grain's `.batch`: the default collate then stacks every NumPy leaf into
    a `SharedMemoryArray` (a worker hands it to the main process without a
    copy); a user's collate is told if it has `enable_shared_memory_output`.
    """

    def __init__(self, collate: Callable[[list[Any]], Any] | None) -> None:
        self.user = check_collate(collate)
        self.allocate: Allocate | None = None

    def enable_shared_memory_output(self) -> None:
        """Stack into shared memory from now on (grain's `mp_prefetch` calls it in workers)."""
        if self.user is not None:
            enable = getattr(self.user, "enable_shared_memory_output", None)
            if enable is not None:
                enable()
        elif SharedMemoryArray is not None:
            self.allocate = _shared_memory

    def __call__(self, elements: list[Any]) -> Any:
        if self.user is not None:
            return self.user(elements)
        return default_collate(elements, allocate=self.allocate)


class _CheckedCollate(_Collate):
    """Collates a list of elements; a None element (a filtered parent) is an error."""

    def __call__(self, elements: list[Any]) -> Any:
        for i, element in enumerate(elements):
            if element is None:
                raise ValueError(
                    f"element {i} of the batch is None: the parent MapDataset has a filter (or "
                    "another transformation that drops elements), so positions do not map to "
                    "elements. Use parent.to_iter_dataset() and RampupIterDataset instead."
                )
        return super().__call__(elements)


def _batched_spec(spec: Any, size: int | None) -> Any:
    """A batch's element spec from its elements' spec: a leading axis of `size` on every leaf."""
    if isinstance(spec, Mapping):
        return mapping_like(spec, {k: _batched_spec(v, size) for k, v in spec.items()})
    if isinstance(spec, tuple) and hasattr(spec, "_fields"):
        return type(spec)(*(_batched_spec(v, size) for v in spec))
    if isinstance(spec, (list, tuple)):
        return type(spec)(_batched_spec(v, size) for v in spec)
    return grain.experimental.ShapeDtypeStruct(shape=(size, *spec.shape), dtype=spec.dtype)


def _element_spec(
    parent_spec: Any,
    plan: Plan,
    process_index: int,
    process_count: int,
    drop_remainder: bool,
    collate: _Collate,
) -> Any:
    """The spec of a ramp's batches, as grain's `.batch` gives it.

    The batch axis is the size where every batch has it (one size, no partial
    last batch), else None. A user's collate must describe its own output, as
    grain's `BatchFn.output_spec(input_spec, batch_size, drop_remainder)` does.
    """
    size = None
    if drop_remainder and plan.schedule.segmented and len(plan.segments()) == 1:
        lo, hi = plan.local_bounds(0, process_index, process_count)
        size = hi - lo
    if collate.user is None:
        return _batched_spec(parent_spec, size)
    output_spec = getattr(collate.user, "output_spec", None)
    if output_spec is None:
        raise NotImplementedError(
            "element spec inference with a custom collate needs its output_spec(input_spec, "
            "batch_size, drop_remainder) method, as grain's BatchFn has"
        )
    return output_spec(parent_spec, size, drop_remainder)


class _BatchedReads:
    """A `MapDataset` as a batch source: one grain `_getitems` call per batch.

    grain's own `MapDataset.batch` reads its parent this way, so a source with
    batched reads (ArrayRecord, a map over one) is read once per batch.
    """

    def __init__(self, parent: grain.MapDataset) -> None:
        self.parent = parent

    def __len__(self) -> int:
        return len(self.parent)

    def __getitem__(self, index: int) -> Any:
        return self.parent[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        return _read_items(self.parent, indices)


class RampupMapDataset(grain.MapDataset):
    """A `grain.MapDataset` whose item `k` is this process's slice of batch `k`.

    Stream position `p` is `parent[p]`: grain's own indexing past `len(parent)`
    decides what later epochs hold (a shuffled parent reshuffles per epoch). With
    `num_epochs`, indices past the end (and negative ones) wrap into later (earlier)
    passes as grain's `MapDataset.batch` does, so `.repeat()` works; each pass
    restarts the ramp.

    Args:
      parent: the elements; no filter in it (use `RampupIterDataset` after one).
      schedule: the global batch size per step, a `rampup.Schedule` or `rampup.Plan`.
      drop_remainder: leave out a last partial batch (with `num_epochs`).
      num_epochs: bound the stream to `num_epochs * len(parent)` positions; None is endless.
      collate: turns the list of a batch's elements into a batch, as grain's
        `batch_fn`; default `rampup.default_collate`.
      process_index: this process's index; default from `grain.sharding.ShardByJaxProcess`.
      process_count: how many processes split every global batch; same default.
      on_schedule_change: "raise" or "continue" when a restored state's schedule differs
        (the iterators of `to_iter_dataset()` and `mp_prefetch` read it).
      on_data_change: "raise" or "continue" when a restored state's data fields
        (the parent's length, `num_epochs`, `drop_remainder`) differ.
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
        on_schedule_change: str = "raise",
        on_data_change: str = "raise",
    ) -> None:
        if not isinstance(parent, grain.MapDataset):
            raise TypeError(
                f"RampupMapDataset needs a grain.MapDataset parent, got {type(parent).__name__}; "
                "for a grain.IterDataset use RampupIterDataset"
            )
        _check_dense(parent)
        super().__init__(parent)
        index, count = _process_layout(process_index, process_count)
        self._collate = _CheckedCollate(collate)
        self._batches = RampupBatches(
            _BatchedReads(parent),
            schedule,
            num_epochs=num_epochs,
            drop_remainder=drop_remainder,
            collate=self._collate,
            process_index=index,
            process_count=count,
            on_schedule_change=on_schedule_change,
            on_data_change=on_data_change,
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
        count = self._batches.steps_left()
        return sys.maxsize if count is None else count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        try:
            return self._batches.fetch(*self._batches.item_window(index))
        except ValueError as e:
            e.add_note(f"while building batch {index} of {self}")
            raise

    def to_iter_dataset(
        self, read_options: grain.ReadOptions | None = None, *, allow_nones: bool = False
    ) -> RampupMapIterDataset:
        """grain's thread-prefetched iteration over the batches, with the core's state.

        Its iterators' state is the core's (`RampupBatches.state`): a restore
        under another schedule or data order raises (or keeps the data position
        with `on_schedule_change="continue"`, `on_data_change="continue"`),
        behind `mp_prefetch` too.
        """
        return RampupMapIterDataset(self, read_options, check_flag(allow_nones, "allow_nones"))

    @property
    def _element_spec(self) -> Any:
        b = self._batches
        return _element_spec(
            grain.experimental.get_element_spec(self._parent),
            b.plan,
            b.process_index,
            b.process_count,
            b.drop_remainder,
            self._collate,
        )

    def enable_shared_memory_output(self) -> None:
        """Batches are stacked into shared memory (grain's `mp_prefetch` calls it in workers)."""
        self._collate.enable_shared_memory_output()

    def __str__(self) -> str:
        b = self._batches
        return (
            f"RampupMapDataset(schedule={b.schedule}, drop_remainder={b.drop_remainder}, "
            f"num_epochs={b.num_epochs}, process={b.process_index}/{b.process_count})"
        )


class _ShiftedBatches(grain.MapDataset):
    """Item `k` is batch `k` of a stream moved by `shift` positions (a `continue` restore)."""

    def __init__(self, parent: RampupMapDataset, shift: int) -> None:
        super().__init__(parent)
        self._batches = parent.batches
        self._shift = shift

    def __len__(self) -> int:
        count = self._batches.steps_left(0, self._shift)
        return sys.maxsize if count is None else count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._batches.batch(index, self._shift)


class RampupMapIterDataset(grain.IterDataset):
    """What `RampupMapDataset.to_iter_dataset()` returns.

    Batches prefetched by grain's threads, iterated with the core's state (which
    carries the schedule fingerprint).

    Under `mp_prefetch`, worker `w` of `W` builds the steps `s + w, s + w + W, ...`
    of an iteration that starts at step `s` (grain hands it that slice) and
    grain's round-robin puts them back in order.

    Args:
      parent: the batches.
      read_options: grain's thread prefetch options.
      allow_nones: as grain's `to_iter_dataset`.
      start: `(step, shift)` where iterations start; a restore of `mp_prefetch`
        builds its workers with it.
    """

    def __init__(
        self,
        parent: RampupMapDataset,
        read_options: grain.ReadOptions | None,
        allow_nones: bool,
        start: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__(parent)
        self._ramp = parent
        self._read_options = read_options or grain.ReadOptions()
        self._allow_nones = allow_nones
        self._start = start
        self._stride = WorkerStride(start[0])

    @property
    def plan(self) -> Plan:
        """The step <-> position arithmetic of the schedule."""
        return self._ramp.plan

    @property
    def ramp(self) -> RampupMapDataset:
        """The batches this dataset iterates."""
        return self._ramp

    def starting_at(self, step: int, shift: int) -> RampupMapIterDataset:
        """This dataset with iterations that start at `step` (positions moved by `shift`)."""
        return RampupMapIterDataset(
            self._ramp, self._read_options, self._allow_nones, (step, shift)
        )

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Makes this copy build one `mp_prefetch` worker's steps (grain calls it)."""
        if sequential_slice or sl.stop is not None:
            raise ValueError(
                "RampupMapDataset batches are steps in order: mp_prefetch(sequential_slice=True) "
                "would give each worker a block of consecutive steps and grain's round-robin "
                "would reorder them. Use mp_prefetch with sequential_slice=False"
            )
        self._stride = WorkerStride.checked(self._start[0], sl.start or 0, sl.step or 1)

    def mp_prefetch(
        self,
        options: grain.MultiprocessingOptions | None = None,
        worker_init_fn: Callable[[int, int], None] | None = None,
        sequential_slice: bool = False,
    ) -> grain.IterDataset:
        """grain's `mp_prefetch`, whose iterators carry the core's state.

        A restore rebuilds the workers at the restored step, so it costs O(1),
        checks the schedule before any worker starts, and works with any
        `num_workers`.
        """
        if check_flag(sequential_slice, "sequential_slice"):
            self.set_slice(slice(0, None, 1), True)
        return RampupPrefetchIterDataset(self, options, worker_init_fn)

    def __iter__(self) -> RampupMapDatasetIterator:
        return RampupMapDatasetIterator(
            self._ramp, self._read_options, self._allow_nones, self._stride, self._start[1]
        )

    @property
    def _element_spec(self) -> Any:
        return grain.experimental.get_element_spec(self._ramp)

    def enable_shared_memory_output(self) -> None:
        """Batches are stacked into shared memory (grain's `mp_prefetch` calls it in workers)."""
        self._ramp.enable_shared_memory_output()

    def __str__(self) -> str:
        return f"RampupMapIterDataset(read_options={self._read_options}, {self._stride})"


class RampupMapDatasetIterator(grain.DatasetIterator, ScheduledIterator):
    """Iterates a `RampupMapDataset` with grain's thread prefetch; the core's state.

    `set_state` restores in O(1) at any step this iterator builds.
    """

    def __init__(
        self,
        ramp: RampupMapDataset,
        read_options: grain.ReadOptions,
        allow_nones: bool,
        stride: WorkerStride,
        shift: int = 0,
    ) -> None:
        super().__init__()
        self._ramp, self._read_options, self._allow_nones = ramp, read_options, allow_nones
        self._stride = stride
        batches = ramp.batches
        schedule = batches.plan.schedule
        if isinstance(schedule, AdaptiveSchedule):  # grain's threads build this far ahead
            schedule.check_lag(
                read_options.prefetch_buffer_size if read_options.num_threads else 0,
                f"grain {read_options}",
            )
        self.describe(batches)
        self._shift = shift
        self._started = False  # grain builds an iterator, then may restore a state into it
        self._inner = self._iterate(shift)

    def _iterate(self, shift: int) -> grain.DatasetIterator:
        view = self._ramp if shift == 0 else _ShiftedBatches(self._ramp, shift)
        # A slice is a plain grain MapDataset, so this is grain's own to_iter_dataset.
        view = view.slice(slice(self._stride.step(0), None, self._stride.count))
        inner = view.to_iter_dataset(self._read_options, allow_nones=self._allow_nones)
        return inner.__iter__()

    @property
    def step(self) -> int:
        """The step of the next batch this iterator yields."""
        return self._stride.step(_next_index(self._inner))

    def __next__(self) -> Any:
        if not self._started:
            self._ramp.batches.check_start(self.step, self._shift)
            self._started = True
        return next(self._inner)

    def get_state(self) -> dict[str, Any]:
        """The core's state of the next step (`RampupBatches.state`); JSON-able."""
        return self._ramp.batches.state(self.step, self._shift)

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a state written by `get_state`, in O(1)."""
        step, shift = self._ramp.batches.read_state(state)
        self._started = True
        index = self._stride.batches_before(step)
        if shift != self._shift:
            self._inner.close()
            self._inner, self._shift = self._iterate(shift), shift
        _seek(self._inner, index)

    def _get_next_index(self) -> int:
        return self.step

    def _set_next_index(self, index: int) -> None:
        self.set_state(self._ramp.batches.state(index, self._shift))

    def close(self) -> None:
        """Stops grain's prefetch threads."""
        inner = vars(self).get("_inner")  # grain's __del__ closes even after a failed __init__
        if inner is not None:
            inner.close()

    def __str__(self) -> str:
        return f"RampupMapDatasetIterator(step={self.step}, schedule={self.plan.schedule})"


class RampupPrefetchIterDataset(grain.IterDataset):
    """`mp_prefetch` of a `RampupMapIterDataset`: grain's worker processes, the core's state.

    Args:
      parent: the batches, as `to_iter_dataset()` gave them.
      options: grain's multiprocessing options.
      worker_init_fn: as grain's `mp_prefetch`.
    """

    def __init__(
        self,
        parent: RampupMapIterDataset,
        options: grain.MultiprocessingOptions | None,
        worker_init_fn: Callable[[int, int], None] | None,
    ) -> None:
        super().__init__(parent)
        self._options = options
        self._worker_init_fn = worker_init_fn

    @property
    def plan(self) -> Plan:
        """The step <-> position arithmetic of the schedule."""
        return self._parent.plan

    def workers_from(self, step: int, shift: int) -> grain.DatasetIterator:
        """grain's `mp_prefetch` iterator whose workers start at `step` (positions + `shift`)."""
        start = self._parent.starting_at(step, shift)
        # grain's own mp_prefetch of that dataset (ours would wrap it once more).
        return grain.IterDataset.mp_prefetch(start, self._options, self._worker_init_fn).__iter__()

    def __iter__(self) -> RampupPrefetchDatasetIterator:
        return RampupPrefetchDatasetIterator(self, self._parent.ramp)

    @property
    def _element_spec(self) -> Any:
        return grain.experimental.get_element_spec(self._parent)

    def __str__(self) -> str:
        return f"RampupPrefetchIterDataset(options={self._options})"


class RampupPrefetchDatasetIterator(grain.DatasetIterator, ScheduledIterator):
    """The iterator of `RampupPrefetchIterDataset`.

    Its state is the core's (`RampupBatches.state`): the
    workers build every step from its index alone, so a restore checks the
    schedule and starts fresh workers at the restored step, whatever their number.
    """

    def __init__(self, dataset: RampupPrefetchIterDataset, ramp: RampupMapDataset) -> None:
        super().__init__()
        self._dataset = dataset
        self._ramp = ramp
        batches = ramp.batches
        self.describe(batches)
        self._step = 0
        self._shift = 0
        self._workers: grain.DatasetIterator | None = None

    @property
    def step(self) -> int:
        """The step of the next batch this iterator yields."""
        return self._step

    def __next__(self) -> Any:
        if self._workers is None:
            self._ramp.batches.check_start(self._step, self._shift)  # before any worker starts
            self._workers = self._dataset.workers_from(self._step, self._shift)
        batch = next(self._workers)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """The core's state of the next step (`RampupBatches.state`); JSON-able."""
        return self._ramp.batches.state(self._step, self._shift)

    def set_state(self, state: dict[str, Any]) -> None:
        """Checks the schedule; the next batch comes from workers started at the state's step."""
        step, shift = self._ramp.batches.read_state(state)
        self.close()
        self._step, self._shift = step, shift

    def _get_next_index(self) -> int:
        return self._step

    def _set_next_index(self, index: int) -> None:
        self.set_state(self._ramp.batches.state(index, self._shift))

    def close(self) -> None:
        """Stops grain's worker processes."""
        workers, self._workers = self._workers, None
        close = getattr(workers, "close", None)
        if close is not None:
            close()

    def __str__(self) -> str:
        return f"RampupPrefetchDatasetIterator(step={self._step})"


class RampupDatasetIterator(grain.DatasetIterator, ScheduledIterator):
    """Pulls each step's elements from the parent iterator (the core's `StreamBatcher`).

    Its state is the core's stream state (`StreamBatcher.get_state`); `set_state`
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
        on_data_change: str,
        name: str,
        parent_name: str,
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
            on_data_change=on_data_change,
            parent_name=parent_name,
        )
        self._name = name
        self._checked_worker = False
        self.plan = plan
        self.process_index, self.process_count = process_index, process_count
        self.drop_remainder = self._batcher.drop_remainder

    @property
    def shift(self) -> int:
        """The data position's distance from the plan's offsets."""
        return self._batcher.shift

    def _check_not_in_workers(self) -> None:
        # grain sets the worker context after __iter__, so it is read at the first step.
        mp = _worker(self)
        if mp.process_count > 1:
            raise ValueError(
                f"{self._name} runs inside mp_prefetch worker {mp.process_index} of "
                f"{mp.process_count}: each worker would count its own steps, so the ramp would "
                f"be stretched {mp.process_count}x (global step k would get B(k // "
                f"{mp.process_count}) instead of B(k)). Place it after "
                "mp_prefetch (ds.mp_prefetch(...) then the ramp-up), or batch a MapDataset "
                "with RampupMapDataset before to_iter_dataset().mp_prefetch(...)."
            )
        _start_stats(self)
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
            # The xLSTM module's state names no data order: it is this pipeline's.
            parent = state[PARENT_KEY]
            state = self._batcher_state(state[LEGACY_STEP_KEY], 0, parent)
        parent = state.get(PARENT_KEY) if isinstance(state, Mapping) else None
        index = parent.get("next_index", 0) if isinstance(parent, Mapping) else 0
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(
                f"state['parent']['next_index'] is {index!r} ({type(index).__name__}); the "
                "parent's state is grain's own, whose next_index is an int >= 0: restore the "
                "state as get_state() wrote it (a config or a store that turned its numbers "
                f"into strings must turn them back, e.g. int({index!r}))"
            )
        if index < 0:
            raise ValueError(
                f"state['parent']['next_index'] is {index}; grain's next_index is an int >= 0: "
                "restore the state as get_state() wrote it"
            )
        # Two lambdas given to the drop-in share an identity: the core checks the state's
        # position against this schedule's offset at its step, which tells them apart.
        self._batcher.set_state(state)

    def _batcher_state(self, step: int, shift: int, parent: Any) -> dict[str, Any]:
        return make_state(
            self.plan, step, shift, **self._batcher.data_fields, **{PARENT_KEY: parent}
        )

    def _get_next_index(self) -> int:
        return self.step

    def _set_next_index(self, index: int) -> None:
        # The parent holds this process's share of the stream, as grain's batch multiplies.
        elements = self.plan.local_offset(index, self.process_count, self.shift)
        grain.experimental.set_next_index(self._parent, elements)
        self._batcher.set_state(self._batcher_state(index, self.shift, self._parent.get_state()))

    def __str__(self) -> str:
        batcher = self._batcher
        return f"{self._name}Iterator(step={batcher.step}, schedule={batcher.plan.schedule})"


class RampupIterDataset(grain.IterDataset):
    """Batches a `grain.IterDataset` by a schedule (stream mode).

    Place it after `mp_prefetch`: inside a worker (several workers) it raises
    rather than stretch the ramp by the worker count.

    Args:
      parent: the elements, this process's share of the stream.
      schedule: the global batch size per step, a `rampup.Schedule` or `rampup.Plan`.
      drop_remainder: leave out a last partial batch.
      collate: turns the list of a batch's elements into a batch, as grain's
        `batch_fn`; default `rampup.default_collate`.
      process_index: this process's index; default from `grain.sharding.ShardByJaxProcess`.
      process_count: how many processes split every global batch; same default.
      on_schedule_change: "raise" or "continue" when a restored state's schedule differs.
      on_data_change: "raise" or "continue" when a restored state's data fields (the
        parent's type name, `drop_remainder`) differ.
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
        on_data_change: str = "raise",
    ) -> None:
        if not isinstance(parent, grain.IterDataset):
            raise TypeError(
                f"{type(self).__name__} needs a grain.IterDataset parent, got "
                f"{type(parent).__name__}; for a grain.MapDataset use RampupMapDataset, or "
                "parent.to_iter_dataset()"
            )
        super().__init__(parent)
        self._plan = as_plan(schedule)
        self._process_index, self._process_count = _process_layout(process_index, process_count)
        # Some step must be legal; the iterator checks the steps it runs from where it starts.
        self._plan.check_processes(self._process_index, self._process_count, start=None)
        self._drop_remainder = check_flag(drop_remainder, "drop_remainder")
        self._collate = _Collate(collate)
        self._on_schedule_change = check_policy(on_schedule_change)
        self._on_data_change = check_policy(on_data_change, "on_data_change")

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
            on_data_change=self._on_data_change,
            name=type(self).__name__,
            parent_name=type(self._parent).__name__,
        )

    @property
    def _element_spec(self) -> Any:
        return _element_spec(
            grain.experimental.get_element_spec(self._parent),
            self._plan,
            self._process_index,
            self._process_count,
            self._drop_remainder,
            self._collate,
        )

    def enable_shared_memory_output(self) -> None:
        """Batches are stacked into shared memory (grain's `mp_prefetch` calls it in workers)."""
        self._collate.enable_shared_memory_output()

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
    try:
        return rampup.from_fn(batch_rampup_schedule)
    except ValueError:  # no stable identity: the xLSTM module took lambdas all the same
        name = getattr(batch_rampup_schedule, "__qualname__", type(batch_rampup_schedule).__name__)
        return rampup.from_fn(batch_rampup_schedule, name=UNNAMED_FUNCTION + name)


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
    batch_size: int, boundaries_and_scales: dict[int, float] | dict[str, float]
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
