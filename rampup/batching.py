"""Batching any source by a schedule, resumable from a small state dict.

`RampupBatches` builds batch `k` from indices alone (random access), so any
worker or host builds any step on its own and a restore costs O(1).
`StreamBatcher` pulls from an iterator, which cannot seek: it resumes from its
own state plus the parent iterator's.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from rampup.collate import default_collate
from rampup.plan import Plan
from rampup.schedules import Schedule, check_count, nearest_multiples

STATE_VERSION = 1
VERSION_KEY = "version"
STEP_KEY = "step"
POSITION_KEY = "position"
SCHEDULE_KEY = "schedule"
PARENT_KEY = "parent"
SCHEDULE_CHANGE_POLICIES = ("raise", "continue")


def as_plan(schedule: Schedule | Plan) -> Plan:
    """The plan of a schedule (a plan is returned as it is)."""
    return schedule if isinstance(schedule, Plan) else Plan(schedule)


def check_policy(on_schedule_change: str) -> str:
    """Validates the `on_schedule_change` argument."""
    if on_schedule_change not in SCHEDULE_CHANGE_POLICIES:
        raise ValueError(
            f"on_schedule_change={on_schedule_change!r} is not valid; valid: "
            f"{', '.join(map(repr, SCHEDULE_CHANGE_POLICIES))}"
        )
    return on_schedule_change


def make_state(plan: Plan, step: int, position: int, **extra: Any) -> dict[str, Any]:
    """The checkpoint state of an iterator whose next step is `step`."""
    return {
        VERSION_KEY: STATE_VERSION,
        STEP_KEY: step,
        POSITION_KEY: position,
        SCHEDULE_KEY: plan.schedule.fingerprint,
        **extra,
    }


def read_state(
    state: Any, plan: Plan, on_schedule_change: str, keys: Sequence[str] = ()
) -> tuple[int, int]:
    """Checks a state against `plan`; returns its (step, position).

    Raises:
      ValueError: the state is malformed, of another version, or from another
        schedule while `on_schedule_change="raise"`.
    """
    required = (VERSION_KEY, STEP_KEY, POSITION_KEY, SCHEDULE_KEY, *keys)
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise ValueError(f"not a rampup state: expected a dict with keys {required}, got {state!r}")
    if state[VERSION_KEY] != STATE_VERSION:
        raise ValueError(
            f"state version {state[VERSION_KEY]!r} is not supported; this rampup reads "
            f"version {STATE_VERSION}"
        )
    step = check_count(state[STEP_KEY], "state step")
    position = check_count(state[POSITION_KEY], "state position")
    fingerprint = plan.schedule.fingerprint
    if state[SCHEDULE_KEY] != fingerprint and on_schedule_change == "raise":
        raise ValueError(
            f"the state at step {step} was written under schedule {state[SCHEDULE_KEY]}, "
            f"but the current schedule is {fingerprint} ({plan.schedule}). Restore with "
            "on_schedule_change='continue' to keep the data position (sample "
            f"{position}) and apply the new schedule from step {step} on."
        )
    return step, position


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, length: int) -> np.ndarray:
    """The shuffle of one epoch: a permutation of `range(length)` from (seed, epoch)."""
    perm = np.random.default_rng([seed, epoch]).permutation(length)
    perm.flags.writeable = False
    return perm


class RampupBatches:
    """Random-access batches of a source with `__len__` and `__getitem__`.

    `batches[k]` is this process's slice of global batch `k`. Stream position
    `p` is item `perm_e(p mod N)` of epoch `e = p // N`.

    Args:
      source: a list, NumPy array, grain `MapDataset`, torch map-style `Dataset`...
      schedule: a `Schedule` or `Plan`.
      shuffle_seed: shuffle each epoch from this seed; None keeps the source order.
      num_epochs: end after this many passes over the source; None is endless.
      drop_remainder: leave out a last partial batch.
      collate: turns a list of elements into a batch; default `default_collate`.
      process_index: this process's index among `process_count`.
      process_count: how many processes split every global batch.
      on_schedule_change: "raise" or "continue" when a state's schedule differs.
      wrap: map positions into `[0, N)`; False passes positions to the source
        as they are (a grain `MapDataset` indexes past its length by itself).
    """

    def __init__(
        self,
        source: Any,
        schedule: Schedule | Plan,
        *,
        shuffle_seed: int | None = None,
        num_epochs: int | None = None,
        drop_remainder: bool = False,
        collate: Callable[[list[Any]], Any] | None = None,
        process_index: int = 0,
        process_count: int = 1,
        on_schedule_change: str = "raise",
        wrap: bool = True,
    ) -> None:
        self.source = source
        self.plan = as_plan(schedule)
        self.length = len(source)
        if self.length < 1:
            raise ValueError(f"the source is empty (len {self.length}); nothing to batch")
        if shuffle_seed is not None:
            shuffle_seed = check_count(shuffle_seed, "shuffle_seed")
            if not wrap:
                raise ValueError("shuffle_seed needs wrap=True; with wrap=False the source "
                                 "decides the order of every epoch itself")
        self.shuffle_seed = shuffle_seed
        self.end = None if num_epochs is None else check_count(num_epochs, "num_epochs", 1) * (
            self.length)
        self.num_epochs = num_epochs
        self.drop_remainder = bool(drop_remainder)
        self.collate = collate
        self.process_index, self.process_count = self.plan.check_processes(
            process_index, process_count, until_step=0)
        self.on_schedule_change = check_policy(on_schedule_change)
        self.wrap = bool(wrap)
        # Fail at start-up, not when training reaches a size the processes cannot split.
        full_steps = None if self.end is None else len(self)
        if full_steps and not self.drop_remainder:
            start, stop = self.plan.bounds(full_steps - 1)
            if stop > self.end:
                self._partial_share(full_steps - 1, start)
                full_steps -= 1
        self.plan.check_processes(self.process_index, self.process_count, full_steps)

    @property
    def schedule(self) -> Schedule:
        """The schedule of the plan."""
        return self.plan.schedule

    def __len__(self) -> int:
        if self.end is None:
            raise TypeError("endless RampupBatches (num_epochs=None) has no len()")
        return self.plan.num_batches(self.end, self.drop_remainder)

    def window(self, step: int, shift: int = 0) -> tuple[int, int] | None:
        """This process's stream positions `[start, stop)` at `step`, None past the end.

        `shift` moves the whole stream: a restore under a changed schedule keeps
        its data position, so its positions are `offset + shift`.
        """
        if self.end is not None:
            global_start, global_stop = self.plan.bounds(step)
            global_start, global_stop = global_start + shift, global_stop + shift
            if global_start >= self.end or (self.drop_remainder and global_stop > self.end):
                return None
            if global_stop > self.end:
                share = self._partial_share(step, global_start)
                return (global_start + self.process_index * share,
                        global_start + (self.process_index + 1) * share)
        start, stop = self.plan.local_bounds(step, self.process_index, self.process_count)
        return start + shift, stop + shift

    def _partial_share(self, step: int, global_start: int) -> int:
        """Each process's even share of a batch cut short by the end of the data.

        Every process must hold the same number of rows (a global array is
        assembled from equal slices), so a remainder that does not split raises.
        """
        remainder = self.end - global_start
        if remainder % self.process_count:
            valid = ", ".join(map(str, nearest_multiples(remainder, self.process_count)))
            raise ValueError(
                f"the last batch (step {step}) holds {remainder} samples, which "
                f"process_count={self.process_count} processes cannot split evenly "
                f"(a multiple of {self.process_count} would: {valid}); pass "
                f"drop_remainder=True, or a source length that leaves a divisible remainder")
        return remainder // self.process_count

    def indices(self, start: int, stop: int) -> np.ndarray:
        """The source indices of stream positions `[start, stop)`."""
        positions = np.arange(start, stop, dtype=np.int64)
        if not self.wrap:
            return positions
        within = positions % self.length
        if self.shuffle_seed is None:
            return within
        epochs = positions // self.length
        out = np.empty_like(within)
        for epoch in range(int(epochs[0]), int(epochs[-1]) + 1) if len(positions) else ():
            mask = epochs == epoch
            out[mask] = epoch_permutation(self.shuffle_seed, epoch, self.length)[within[mask]]
        return out

    def fetch(self, start: int, stop: int) -> Any:
        """The batch of stream positions `[start, stop)`."""
        idx = self.indices(start, stop)
        if self.collate is None and isinstance(self.source, np.ndarray):
            return self.source[idx]
        elements = [self.source[i] for i in idx.tolist()]
        return (self.collate or default_collate)(elements)

    def __getitem__(self, step: int) -> Any:
        window = self.window(step)
        if window is None:
            raise IndexError(f"step {step} is past the end: there are {len(self)} batches")
        return self.fetch(*window)

    def iter_from(
        self,
        step: int = 0,
        *,
        position: int | None = None,
        worker_index: int = 0,
        worker_count: int = 1,
    ) -> BatchIterator:
        """An iterator from `step` on, in O(1) whatever the step.

        Args:
          step: the first step to build.
          position: the stream position of `step`'s batch; default `O(step)`.
            A restore under a changed schedule passes the saved position.
          worker_index: this worker's index; it builds the steps `k >= step`
            with `(k - step) % worker_count == worker_index`.
          worker_count: how many workers share the iteration.

        Returns:
          A `BatchIterator` with `get_state()` and `set_state()`.
        """
        return BatchIterator(self, step, position=position, worker_index=worker_index,
                             worker_count=worker_count)

    def __iter__(self) -> BatchIterator:
        return self.iter_from(0)

    def __repr__(self) -> str:
        return (f"RampupBatches(len(source)={self.length}, schedule={self.schedule}, "
                f"num_epochs={self.num_epochs}, process {self.process_index}/"
                f"{self.process_count})")


class BatchIterator(Iterator[Any]):
    """Iterates a `RampupBatches` from a step; its state restores in O(1)."""

    def __init__(
        self,
        batches: RampupBatches,
        step: int = 0,
        *,
        position: int | None = None,
        worker_index: int = 0,
        worker_count: int = 1,
    ) -> None:
        self.batches = batches
        self.worker_count = check_count(worker_count, "worker_count", 1)
        self.worker_index = check_count(worker_index, "worker_index")
        if self.worker_index >= self.worker_count:
            raise ValueError(f"worker_index={worker_index} is not valid for worker_count="
                             f"{worker_count}")
        step = check_count(step, "step")
        self._reset(step, position)
        self._step += self.worker_index

    def _reset(self, step: int, position: int | None) -> None:
        offset = self.batches.plan.offset(step)
        self._shift = 0 if position is None else check_count(position, "position") - offset
        self._step = step

    @property
    def step(self) -> int:
        """The step the next batch belongs to."""
        return self._step

    def __next__(self) -> Any:
        window = self.batches.window(self._step, self._shift)
        if window is None:
            raise StopIteration
        batch = self.batches.fetch(*window)
        self._step += self.worker_count
        return batch

    def get_state(self) -> dict[str, Any]:
        """`{"version", "step", "position", "schedule"}` of the next step; JSON-able."""
        plan = self.batches.plan
        return make_state(plan, self._step, plan.offset(self._step) + self._shift)

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a state written by `get_state`, in O(1), keeping the stride."""
        step, position = read_state(state, self.batches.plan, self.batches.on_schedule_change)
        self._reset(step, position)


class StreamBatcher(Iterator[Any]):
    """Batches an iterator by a schedule, pulling `B(k) / process_count` items per step.

    The iterator is this process's share of the stream (already sharded).

    Args:
      iterator: any iterable; its iterator's `get_state`/`set_state`, when it
        has them, make the batcher resumable.
      schedule: a `Schedule` or `Plan`.
      drop_remainder: leave out a last partial batch.
      collate: turns a list of elements into a batch; default `default_collate`.
      process_index: this process's index among `process_count`.
      process_count: how many processes split every global batch.
      on_schedule_change: "raise" or "continue" when a state's schedule differs.
    """

    def __init__(
        self,
        iterator: Any,
        schedule: Schedule | Plan,
        *,
        drop_remainder: bool = False,
        collate: Callable[[list[Any]], Any] | None = None,
        process_index: int = 0,
        process_count: int = 1,
        on_schedule_change: str = "raise",
    ) -> None:
        self.parent = iter(iterator)
        self.plan = as_plan(schedule)
        self.drop_remainder = bool(drop_remainder)
        self.collate = collate or default_collate
        self.process_index, self.process_count = self.plan.check_processes(
            process_index, process_count)
        self.on_schedule_change = check_policy(on_schedule_change)
        self._step = 0
        self._shift = 0

    @property
    def step(self) -> int:
        """The step the next batch belongs to."""
        return self._step

    def __next__(self) -> Any:
        start, stop = self.plan.local_bounds(self._step, self.process_index, self.process_count)
        wanted = stop - start
        elements = list(itertools.islice(self.parent, wanted))
        if not elements or (self.drop_remainder and len(elements) < wanted):
            raise StopIteration
        batch = self.collate(elements)
        self._step += 1
        return batch

    def _parent_method(self, name: str) -> Callable[..., Any]:
        method = getattr(self.parent, name, None)
        if method is None:
            raise TypeError(
                f"the parent iterator ({type(self.parent).__name__}) has no {name}(), so a "
                "StreamBatcher over it cannot be checkpointed: a stream cannot seek. Give it an "
                "iterator with get_state()/set_state() (a grain DatasetIterator), or use "
                "RampupBatches over a random-access source, which restores from the step alone."
            )
        return method

    def get_state(self) -> dict[str, Any]:
        """`{"version", "step", "position", "schedule", "parent"}`; JSON-able if the parent's is."""
        parent_state = self._parent_method("get_state")()
        position = self.plan.offset(self._step) + self._shift
        return make_state(self.plan, self._step, position, **{PARENT_KEY: parent_state})

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores the step, the position and the parent iterator's state."""
        step, position = read_state(state, self.plan, self.on_schedule_change, (PARENT_KEY,))
        self._parent_method("set_state")(state[PARENT_KEY])
        self._step = step
        self._shift = position - self.plan.offset(step)
