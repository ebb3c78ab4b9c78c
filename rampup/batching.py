"""Batching any source by a schedule, resumable from a small state dict.

`RampupBatches` builds batch `k` from indices alone (random access), so any
worker or host builds any step on its own and a restore costs O(1).
`StreamBatcher` pulls from an iterator, which cannot seek: it resumes from its
own state plus the parent iterator's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import numpy as np

from rampup.collate import default_collate
from rampup.iterator import ScheduledIterator
from rampup.permutation import ALGORITHM as SHUFFLE_ALGORITHM
from rampup.permutation import permute
from rampup.plan import Plan, WorkerStride
from rampup.schedules import Schedule, check_count, check_flag

# The version names the shuffle too: 3 and 4 are `rampup.permutation.ALGORITHM`. A change of
# the shuffle's order must bump it and say here what the older version shuffled with. 4 also
# records what a position means (the data fields) and its shift; a version 3 state has
# neither and is read with shift 0.
STATE_VERSION = 4
"""The `"version"` of the checkpoint states this rampup writes; it also reads version 3."""
OLD_SHUFFLES = {
    1: "a materialized NumPy permutation",
    2: "a keyed bijection (modfeistel6-blake2b-splitmix64) whose orders of small sets "
    "were not uniform",
}
READ_VERSIONS = (3, STATE_VERSION)
# The keys of checkpoint states, defined once: every state (a pipeline's, an adaptive
# schedule's, a noise scale's) names its format's version under VERSION_KEY.
VERSION_KEY = "version"
# A pipeline's state: the next step, its data position, the schedule's fingerprint, and the
# position's distance from the schedule's offset (a restore that kept its position under a
# changed schedule).
STEP_KEY = "step"
POSITION_KEY = "position"
SCHEDULE_KEY = "schedule"
SHIFT_KEY = "shift"
# What the position means: a random-access source's length, shuffle, seed and epochs, or a
# stream's parent; the drop policy of both. A restore compares them (`on_data_change`).
LENGTH_KEY = "length"
SHUFFLE_KEY = "shuffle"
SEED_KEY = "seed"
EPOCHS_KEY = "num_epochs"
DROP_REMAINDER_KEY = "drop_remainder"
STREAM_KEY = "stream"
DATA_KEYS = (LENGTH_KEY, SHUFFLE_KEY, SEED_KEY, EPOCHS_KEY, DROP_REMAINDER_KEY, STREAM_KEY)
# A stream's state holds its parent iterator's own state under this key.
PARENT_KEY = "parent"
POLICIES = ("raise", "continue")
# The shuffle field of a source that orders positions past its length itself (wrap=False).
SOURCE_ORDER = "source"
# Stream positions are indexed as NumPy int64.
MAX_POSITION = 2**63 - 1
_ABSENT = "absent"


def check_position(position: int, step: int) -> int:
    """Refuses a stream position past `MAX_POSITION`, naming the step and the limit."""
    if position > MAX_POSITION:
        raise ValueError(
            f"stream position {position:,} (step {step:,}) is past the largest position "
            f"rampup indexes, 2**63 - 1 = {MAX_POSITION:,} (NumPy int64): restore or start "
            "at an earlier step"
        )
    return position


def as_plan(schedule: Schedule | Plan) -> Plan:
    """The plan of a schedule (a plan is returned as it is)."""
    return schedule if isinstance(schedule, Plan) else Plan(schedule)


def check_policy(policy: str, name: str = "on_schedule_change") -> str:
    """Validates an `on_schedule_change` (or `on_data_change`, by `name`) argument."""
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"{name}={policy!r} is not valid; valid: {', '.join(map(repr, POLICIES))}")
    return policy


def check_collate(collate: Any) -> Callable[[list[Any]], Any] | None:
    """Validates a `collate=` argument when a dataset is built, not at its first batch."""
    if collate is not None and not callable(collate):
        raise TypeError(
            f"collate must be a callable that turns a list of elements into a "
            f"batch (or None for rampup.default_collate), got {collate!r}"
        )
    return collate


def make_state(plan: Plan, step: int, shift: int = 0, **extra: Any) -> dict[str, Any]:
    """The checkpoint state of an iterator whose next step is `step`.

    Its data position is `O(step) + shift`: `shift` moves the stream after a
    restore that kept its position under a changed schedule. `extra` holds the
    data fields (`RampupBatches.data_fields`) and a stream's parent state.
    """
    return {
        VERSION_KEY: STATE_VERSION,
        STEP_KEY: step,
        POSITION_KEY: plan.offset(step) + shift,
        SCHEDULE_KEY: plan.schedule.fingerprint_at(step),
        SHIFT_KEY: shift,
        **extra,
    }


def read_state(
    state: Any,
    plan: Plan,
    on_schedule_change: str,
    keys: Sequence[str] = (),
    *,
    data_fields: dict[str, Any] | None = None,
    on_data_change: str = "raise",
) -> tuple[int, int]:
    """Checks a state against `plan`; returns its (step, shift), the shift as in `make_state`.

    Args:
      state: a state from `make_state` (version 4), or of version 3 (no data
        fields, no shift: read with shift 0).
      plan: the plan of the pipeline that restores it.
      on_schedule_change: "raise": a state of another schedule is refused, and under
        the same schedule its position must be the offset at its step plus its shift;
        "continue": its position is kept and the plan applies from its step on.
      keys: further keys the state must have (a stream's parent).
      data_fields: what a position means in the restoring pipeline
        (`RampupBatches.data_fields`); None checks no data fields.
      on_data_change: "raise": a state whose data fields differ is refused;
        "continue": its position is kept in this pipeline's data order.

    Raises:
      ValueError: the state is malformed, of another version (versions 1 and 2
        shuffled in other orders), of another data order or schedule under the "raise"
        policies, or its position is not its step's under the same schedule.
    """
    required = (VERSION_KEY, STEP_KEY, POSITION_KEY, SCHEDULE_KEY, *keys)
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise ValueError(f"not a rampup state: expected a dict with keys {required}, got {state!r}")
    version = state[VERSION_KEY]
    if isinstance(version, int) and version in OLD_SHUFFLES:
        raise ValueError(
            f"this state (step {state[STEP_KEY]!r}) is of version {version}, written by an "
            f"earlier rampup that shuffled each epoch with {OLD_SHUFFLES[version]}; this rampup "
            f"shuffles with a keyed bijection ({SHUFFLE_ALGORITHM}), so restoring it would "
            "feed other samples than the run it continues. Restart from step 0, or resume "
            f"with the rampup that wrote it; this rampup reads versions 3 and {STATE_VERSION}"
        )
    if type(version) is not int or version not in READ_VERSIONS:
        raise ValueError(
            f"state version {version!r} is not supported; this rampup reads versions "
            f"3 and {STATE_VERSION}"
        )
    step = check_count(state[STEP_KEY], "state step")
    position = check_position(check_count(state[POSITION_KEY], "state position"), step)
    saved_shift = 0
    if version == STATE_VERSION:
        if SHIFT_KEY not in state:
            raise ValueError(
                f"not a rampup state of version {STATE_VERSION}: it has no {SHIFT_KEY!r} key, "
                f"got {state!r}"
            )
        saved_shift = state[SHIFT_KEY]
        if type(saved_shift) is not int:
            raise ValueError(
                f"state shift must be an int (the position's distance from the schedule's "
                f"offset at step {step}), got {saved_shift!r}"
            )
    if data_fields is not None and check_policy(on_data_change, "on_data_change") == "raise":
        check_data_fields(state, data_fields)
    fingerprint = plan.schedule.fingerprint_at(step)
    if check_policy(on_schedule_change) == "raise":
        if state[SCHEDULE_KEY] != fingerprint:
            raise ValueError(
                f"the state at step {step} was written under schedule {state[SCHEDULE_KEY]}, "
                f"but the current schedule is {fingerprint} ({plan.schedule}). Restore with "
                "on_schedule_change='continue' to keep the data position (sample "
                f"{position}) and apply the new schedule from step {step} on."
            )
        check_offset(plan, step, position, saved_shift)
    return step, position - plan.offset(step)


def source_length(source: Any) -> int:
    """`len(source)`, refused with the source's type when its `__len__` is not an int.

    Python's own error ("'float' object cannot be interpreted as an integer")
    names neither the source nor its `__len__`.
    """
    length = type(source).__len__(source) if hasattr(type(source), "__len__") else len(source)
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(
            f"the source's __len__ ({type(source).__name__}.__len__) returned {length!r} "
            f"({type(length).__name__}); it must return the number of items as an int, e.g. "
            "return int(n)"
        )
    return length


def check_offset(plan: Plan, step: int, position: int, shift: int = 0) -> None:
    """Refuses a state whose position is not `plan.offset(step) + shift`.

    Under the schedule that wrote it, a state's position is the offset at its step
    (moved by its shift, after a restore that kept its position under a changed
    schedule). Anything else was edited, or written by another function that a
    schedule's identity cannot tell apart (two lambdas given to the xLSTM drop-in).

    Raises:
      ValueError: naming the state's position and the plan's.
    """
    offset = plan.offset(step)
    if position != offset + shift:
        moved = f" plus the state's shift {shift}, so position {offset + shift}" if shift else ""
        raise ValueError(
            f"the state at step {step} holds position {position}, but this schedule "
            f"({plan.schedule}) has consumed {offset} samples before step {step}{moved}: the "
            "state was edited, or written by another schedule under the same identity (a "
            "from_fn schedule is identified by its name; a lambda given to the xLSTM drop-in "
            "has none of its own, so only this check tells two apart). Restore a state this "
            "pipeline's schedule wrote, or pass on_schedule_change='continue' to take the "
            "state's position as it is"
        )


def check_data_fields(state: dict[str, Any], data_fields: dict[str, Any]) -> None:
    """Refuses a state whose data fields differ from `data_fields`, naming each difference.

    Raises:
      ValueError: naming each field, the state's value and this pipeline's, and the way out.
    """
    differ = [
        (key, state.get(key, _ABSENT), data_fields.get(key, _ABSENT))
        for key in DATA_KEYS
        if state.get(key, _ABSENT) != data_fields.get(key, _ABSENT)
    ]
    if not differ:
        return
    where = f"the state at step {state[STEP_KEY]} (position {state[POSITION_KEY]})"
    way_out = (
        "pass on_data_change='continue' to keep its position "
        f"(sample {state[POSITION_KEY]}) in this pipeline's data order"
    )
    if all(saved == _ABSENT for _, saved, _ in differ):
        written = (
            f"a state of version {state[VERSION_KEY]}"
            if state[VERSION_KEY] != STATE_VERSION
            else "a state made without its data fields: make_state without them, or by hand"
        )
        raise ValueError(
            f"{where} does not record its data order ({written}; state version {STATE_VERSION} "
            f"records {', '.join(DATA_KEYS[:-1])} or the stream's parent), so a restore into "
            "another order cannot be told apart. If this pipeline reads the data in the order "
            f"of the run that wrote it, {way_out}"
        )
    fields = "; ".join(
        f"{key} {saved!r} in the state, {here!r} here" for key, saved, here in differ
    )
    raise ValueError(
        f"{where} was written for another data order than this pipeline's: {fields}. Its "
        "position would read other samples than the run it continues. Build the pipeline "
        "with the state's values, or, where the data changed on purpose (a grown dataset), "
        f"{way_out} (later positions then follow this order: samples of the old order may "
        "be read again or not at all)"
    )


def stream_fields(parent_name: str, drop_remainder: bool) -> dict[str, int | str]:
    """The data fields of a stream's state: its parent's name and its drop policy."""
    return {STREAM_KEY: parent_name, DROP_REMAINDER_KEY: int(drop_remainder)}


class RandomAccessSource(Protocol):
    """What `RampupBatches` reads: a length and items by index.

    A list, a NumPy array, a grain `MapDataset` or a torch map-style `Dataset`. A source
    that also has `__getitems__(indices)` is asked for a whole batch in one call.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


class RampupBatches:
    """Random-access batches of a source with `__len__` and `__getitem__`.

    `batches[k]` is this process's slice of global batch `k`. Stream position
    `p` is item `perm_e(p mod N)` of epoch `e = p // N`.

    Examples:
      >>> import numpy as np
      >>> from rampup import piecewise
      >>> batches = RampupBatches(np.arange(10), piecewise({0: 2, 2: 4}), num_epochs=1)
      >>> len(batches), batches[2].tolist()
      (4, [4, 5, 6, 7])
      >>> [b.tolist() for b in batches]  # the last batch is cut short by the end of the data
      [[0, 1], [2, 3], [4, 5, 6, 7], [8, 9]]

      Each of `process_count` processes gets its slice of every global batch:

      >>> second = RampupBatches(
      ...     np.arange(10), piecewise({0: 2, 2: 4}), num_epochs=1, process_index=1, process_count=2
      ... )
      >>> [b.tolist() for b in second]
      [[1], [3], [6, 7], [9]]

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
      on_data_change: "raise" or "continue" when a state's data fields
        (`data_fields`: length, shuffle, seed, epochs, drop policy) differ.
      wrap: map positions into `[0, N)`; False passes positions to the source
        as they are (a grain `MapDataset` indexes past its length by itself).
    """

    def __init__(
        self,
        source: RandomAccessSource,
        schedule: Schedule | Plan,
        *,
        shuffle_seed: int | None = None,
        num_epochs: int | None = None,
        drop_remainder: bool = False,
        collate: Callable[[list[Any]], Any] | None = None,
        process_index: int = 0,
        process_count: int = 1,
        on_schedule_change: str = "raise",
        on_data_change: str = "raise",
        wrap: bool = True,
    ) -> None:
        self.source = source
        self.plan = as_plan(schedule)
        self.length = source_length(source)
        if self.length < 1:
            raise ValueError(f"the source is empty (len {self.length}); nothing to batch")
        self.wrap = check_flag(wrap, "wrap")
        if shuffle_seed is not None:
            shuffle_seed = check_count(shuffle_seed, "shuffle_seed")
            if not self.wrap:
                raise ValueError(
                    "shuffle_seed needs wrap=True; with wrap=False the source "
                    "decides the order of every epoch itself"
                )
        self.shuffle_seed = shuffle_seed
        self.end = (
            None if num_epochs is None else check_count(num_epochs, "num_epochs", 1) * (self.length)
        )
        if self.end is not None and self.plan.schedule.decided_until is not None:
            raise ValueError(
                f"num_epochs={num_epochs} with a schedule decided online ({self.plan.schedule}): "
                "the step where the data ends depends on decisions not made yet, so the "
                "batches cannot be counted or checked up front. Pass num_epochs=None and stop "
                "training at a step or sample budget"
            )
        self.num_epochs = num_epochs
        self.drop_remainder = check_flag(drop_remainder, "drop_remainder")
        self.collate = check_collate(collate)
        self.process_index, self.process_count = self.plan.check_processes(
            process_index, process_count, until_step=0
        )
        self.on_schedule_change = check_policy(on_schedule_change)
        self.on_data_change = check_policy(on_data_change, "on_data_change")
        if self.on_schedule_change == "continue":
            # A restore may move the positions: the end is checked where the iteration
            # starts, by the steps that will run.
            self.plan.check_processes(self.process_index, self.process_count, start=None)
        else:
            # Fail at start-up, not when training reaches a size the processes cannot split.
            self.check_end()

    @property
    def data_fields(self) -> dict[str, int | str]:
        """What a stream position means here, as a state records it (plain ints and strings).

        `length` of the source; `shuffle`: "off", the shuffle algorithm's name, or
        "source" (positions past the length go to the source as they are, which
        orders them itself); `seed`: the shuffle seed or "none"; `num_epochs`: an
        int or "none" (endless); `drop_remainder`: 0 or 1.
        """
        if not self.wrap:
            shuffle = SOURCE_ORDER
        else:
            shuffle = "off" if self.shuffle_seed is None else SHUFFLE_ALGORITHM
        return {
            LENGTH_KEY: self.length,
            SHUFFLE_KEY: shuffle,
            SEED_KEY: "none" if self.shuffle_seed is None else self.shuffle_seed,
            EPOCHS_KEY: "none" if self.num_epochs is None else self.num_epochs,
            DROP_REMAINDER_KEY: int(self.drop_remainder),
        }

    def state(self, step: int, shift: int = 0) -> dict[str, Any]:
        """The checkpoint state of an iteration whose next step is `step` (moved by `shift`)."""
        return make_state(self.plan, step, shift, **self.data_fields)

    @property
    def schedule(self) -> Schedule:
        """The schedule of the plan."""
        return self.plan.schedule

    def __len__(self) -> int:
        count = self.steps_left()
        if count is None:
            raise TypeError("endless RampupBatches (num_epochs=None) has no len()")
        return count

    def steps_left(self, step: int = 0, shift: int = 0) -> int | None:
        """How many batches an iteration from `step` yields (positions moved by `shift`).

        The one batch count of finite data: `len()` here, and the length of the
        adapters' datasets and samplers. None when the data is endless.
        """
        if self.end is None:
            return None
        return max(0, self.plan.num_batches(self.end - shift, self.drop_remainder) - step)

    def check_end(self, shift: int = 0, start: int | None = None) -> None:
        """Checks, up front, that every batch this process will build splits evenly.

        Every full batch from `start` up to the end of the data, and the last
        partial one, whose size depends on `shift` (a restore that kept its data
        position). With `start=None` (a pipeline built before its start is known)
        some step must be legal: the last batch must split. An iteration from
        past the last batch runs nothing, so nothing is checked.
        """
        self.plan.check_processes(
            self.process_index,
            self.process_count,
            start=start,
            end=self.end,
            drop_remainder=self.drop_remainder,
            shift=shift,
        )

    def check_start(self, step: int, shift: int = 0) -> None:
        """Checks that an iteration from `step` builds only sizes this process layout splits.

        Earlier sizes do not matter: a run that grew onto more processes resumes
        after its last size they cannot split.

        Raises:
          ValueError: a size from `step` on does not split, naming the first step
            from which this layout is legal.
        """
        step = check_count(step, "step")
        check_position(self.plan.offset(step) + shift, step)
        self.check_end(shift, step)

    def window(self, step: int, shift: int = 0) -> tuple[int, int] | None:
        """This process's stream positions `[start, stop)` at `step`, None past the end.

        `shift` moves the whole stream (see `Plan.local_window`).
        """
        return self.plan.local_window(
            step,
            self.process_index,
            self.process_count,
            end=self.end,
            drop_remainder=self.drop_remainder,
            shift=shift,
        )

    def indices(self, start: int, stop: int) -> np.ndarray:
        """The source indices of stream positions `[start, stop)`."""
        positions = np.arange(start, stop, dtype=np.int64)
        if not self.wrap:
            return positions
        within = positions % self.length
        if self.shuffle_seed is None:
            return within
        return permute(within, self.length, self.shuffle_seed, positions // self.length)

    def index_list(self, start: int, stop: int) -> list[int]:
        """The source indices of stream positions `[start, stop)` as a list (a batch sampler's).

        Without a shuffle, positions inside one epoch are a run of consecutive indices.
        """
        if self.shuffle_seed is None:
            epoch = start // self.length if self.wrap else 0
            if not self.wrap or (stop - 1) // self.length == epoch:
                first = start - epoch * self.length
                return list(range(first, first + stop - start))
        return self.indices(start, stop).tolist()

    def fetch(self, start: int, stop: int) -> Any:
        """The batch of stream positions `[start, stop)`.

        A source with `__getitems__` (torch's batched-fetch protocol: a list of
        indices in, a list of elements out) is read with one call per batch;
        any other source with one `__getitem__` per element.
        """
        idx = self.indices(start, stop)
        if self.collate is None and isinstance(self.source, np.ndarray):
            return self.source[idx]
        getitems = getattr(self.source, "__getitems__", None)
        if getitems is not None:
            elements = getitems(idx.tolist())
            if not isinstance(elements, Sequence) or len(elements) != len(idx):
                raise TypeError(
                    f"{type(self.source).__name__}.__getitems__ returned "
                    f"{type(elements).__name__} for {len(idx)} indices (positions {start} to "
                    f"{stop}); the batched-fetch protocol returns a list with one element per "
                    "index, in order"
                )
            elements = list(elements)
        else:
            elements = [self.source[i] for i in idx.tolist()]
        return (self.collate or default_collate)(elements)

    def item_window(self, index: int) -> tuple[int, int]:
        """The stream positions of item `index` when the batches are read as a grain
        `MapDataset` reads its items: past the end it wraps into later passes.

        With `num_epochs`, item `index` is step `index mod len(self)` of pass
        `index // len(self)` (negative indices: earlier passes), its positions shifted by
        whole passes of `num_epochs * len(source)`, as grain's `MapDataset.batch` shifts
        by the parent's length. The sizes restart at every pass. Endless batches have
        no pass to wrap into: item `index` is step `index`.

        Raises:
          IndexError: a negative index of endless batches, or no batch at all.
        """
        if self.end is None:
            if index < 0:
                raise IndexError(
                    f"index {index} is negative, but the batches are endless (num_epochs=None):"
                    " there is no last batch to count from; valid indices are 0, 1, 2, ..."
                )
            return cast(tuple[int, int], self.window(index))  # endless: never past the end
        count = len(self)
        if count == 0:
            raise IndexError(
                f"index {index}: there are no batches (drop_remainder=True and "
                f"fewer than {self.plan.size(0)} samples)"
            )
        repeat, step = divmod(index, count)
        start, stop = cast(tuple[int, int], self.window(step))  # 0 <= step < len(self)
        return start + repeat * self.end, stop + repeat * self.end

    def batch(self, step: int, shift: int = 0) -> Any:
        """This process's slice of batch `step` (positions moved by `shift`).

        Raises:
          IndexError: the step lies past the end of the data.
        """
        window = self.window(step, shift)
        if window is None:
            raise IndexError(f"step {step} is past the end: there are {len(self)} batches")
        return self.fetch(*window)

    def __getitem__(self, step: int) -> Any:
        return self.batch(step)

    def iter_from(
        self,
        start: int | dict[str, Any] = 0,
        *,
        worker_index: int = 0,
        worker_count: int = 1,
    ) -> BatchIterator:
        """An iterator from a step, or from a state, in O(1) whatever the step.

        Examples:
          >>> import numpy as np
          >>> from rampup import piecewise
          >>> batches = RampupBatches(np.arange(10), piecewise({0: 2, 2: 4}), num_epochs=1)
          >>> it = batches.iter_from(1)
          >>> next(it).tolist()
          [2, 3]
          >>> state = it.get_state()
          >>> state["step"], state["position"]
          (2, 4)
          >>> next(batches.iter_from(state)).tolist()
          [4, 5, 6, 7]

        Args:
          start: the first step; or a state from `get_state()`, whose step and
            data position the iteration starts at (a restore under a changed
            schedule keeps the position, as `on_schedule_change` allows).
          worker_index: this worker's index; it builds the steps `k >= step`
            with `(k - step) % worker_count == worker_index`.
          worker_count: how many workers share the iteration.

        Returns:
          A `BatchIterator` with `get_state()` and `set_state()`.
        """
        shift = 0
        if isinstance(start, dict):
            start, shift = self.read_state(start)
        else:
            self.check_start(start)
        stride = WorkerStride.checked(start, worker_index, worker_count)
        return BatchIterator(self, stride, shift)

    def read_state(self, state: dict[str, Any]) -> tuple[int, int]:
        """The `(step, shift)` of a state, checked against this data order, this schedule,
        this process layout from the state's step on, and the data's end."""
        step, shift = read_state(
            state,
            self.plan,
            self.on_schedule_change,
            data_fields=self.data_fields,
            on_data_change=self.on_data_change,
        )
        self.check_start(step, shift)
        return step, shift

    def __iter__(self) -> BatchIterator:
        return self.iter_from(0)

    def __repr__(self) -> str:
        return (
            f"RampupBatches(len(source)={self.length}, schedule={self.schedule}, "
            f"num_epochs={self.num_epochs}, process {self.process_index}/"
            f"{self.process_count})"
        )


class BatchIterator(ScheduledIterator):
    """Iterates a `RampupBatches` from a step; its state restores in O(1).

    Args:
      batches: the random-access batches.
      stride: the steps this iterator builds (all of them, or one worker's).
      shift: the data position's distance from the plan's offsets.
    """

    def __init__(self, batches: RampupBatches, stride: WorkerStride, shift: int = 0) -> None:
        self.batches = batches
        self.describe(batches)
        self.worker_count = stride.count
        self._step = stride.step(0)
        self._shift = shift

    @property
    def step(self) -> int:
        """The step the next batch belongs to."""
        return self._step

    def __next__(self) -> Any:
        window = self.batches.window(self._step, self._shift)
        if window is None:
            raise StopIteration
        batch = self.fetch(*window)
        self._step += self.worker_count
        return batch

    def fetch(self, start: int, stop: int) -> Any:
        """What the iterator yields for this process's positions `[start, stop)` of a step:
        the batch (`RampupBatches.fetch`). A subclass that yields something else of the
        same steps (a batch sampler's index lists) overrides it."""
        return self.batches.fetch(start, stop)

    def get_state(self) -> dict[str, Any]:
        """The state of the next step (`RampupBatches.state`); JSON-able."""
        return self.batches.state(self._step, self._shift)

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a state written by `get_state`, in O(1), keeping the stride."""
        self._step, self._shift = self.batches.read_state(state)


class StreamBatcher(ScheduledIterator):
    """Batches an iterator by a schedule, pulling `B(k) / process_count` items per step.

    The iterator is this process's share of the stream (already sharded). If the
    parent raises in the middle of a batch, the elements already pulled are kept
    and the next call goes on from them; `get_state()` refuses until that batch
    is complete, so no checkpoint loses or skips an element.

    Examples:
      >>> from rampup import piecewise
      >>> batcher = StreamBatcher(iter(range(10)), piecewise({0: 2, 2: 4}))
      >>> [b.tolist() for b in batcher]
      [[0, 1], [2, 3], [4, 5, 6, 7], [8, 9]]
      >>> batcher.step
      4

    Args:
      iterator: any iterable; its iterator's `get_state`/`set_state`, when it
        has them, make the batcher resumable.
      schedule: a `Schedule` or `Plan`.
      drop_remainder: leave out a last partial batch.
      collate: turns a list of elements into a batch; default `default_collate`.
      process_index: this process's index among `process_count`.
      process_count: how many processes split every global batch.
      on_schedule_change: "raise" or "continue" when a state's schedule differs.
      on_data_change: "raise" or "continue" when a state's data fields
        (`data_fields`: the parent's name, the drop policy) differ.
      parent_name: the parent's name in states; default the type name of the
        iterable (a `grain.IterDataset`, a torch `IterableDataset`...).
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
        on_data_change: str = "raise",
        parent_name: str | None = None,
    ) -> None:
        if iterator is None:
            raise TypeError(
                "StreamBatcher(iterator=None): iterator must be an iterable of elements (a "
                "generator, a list, a framework's iterator), got None"
            )
        if parent_name is not None and not isinstance(parent_name, str):
            raise TypeError(f"parent_name must be a str or None, got {parent_name!r}")
        self.parent_name = parent_name or type(iterator).__name__
        self.parent = iter(iterator)
        self.plan = as_plan(schedule)
        self.drop_remainder = check_flag(drop_remainder, "drop_remainder")
        self.collate = check_collate(collate) or default_collate
        # Some step must be legal now; the steps it runs are checked where it starts.
        self.process_index, self.process_count = self.plan.check_processes(
            process_index, process_count, start=None
        )
        self.on_schedule_change = check_policy(on_schedule_change)
        self.on_data_change = check_policy(on_data_change, "on_data_change")
        self._step = 0
        self._shift = 0
        self._pending: list[Any] = []
        self._started = False

    @property
    def step(self) -> int:
        """The step the next batch belongs to."""
        return self._step

    @property
    def data_fields(self) -> dict[str, int | str]:
        """What a position means here, as a state records it: `stream`, the parent's
        name (its elements come from it, restored through its own state), and
        `drop_remainder`, 0 or 1."""
        return stream_fields(self.parent_name, self.drop_remainder)

    def __next__(self) -> Any:
        if not self._started:
            self.plan.check_processes(self.process_index, self.process_count, start=self._step)
            self._started = True
        start, stop = self.plan.local_bounds(self._step, self.process_index, self.process_count)
        wanted = stop - start
        self._pending.extend(itertools.islice(self.parent, wanted - len(self._pending)))
        elements, self._pending = self._pending, []
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
        """The core's state (`make_state`), its data fields and its parent's state under
        "parent"; JSON-able if the parent's is."""
        self._parent_method("set_state")  # a state that cannot be restored is refused now
        parent_state = self._parent_method("get_state")()
        if self._pending:
            # The parent's state already points past these elements: a checkpoint now would
            # lose them. Refusing costs nothing per batch, where a snapshot would.
            raise RuntimeError(
                f"the batch of step {self._step} is half built: the parent raised after "
                f"{len(self._pending)} of its elements, and its state points past them. Call "
                "next() again to finish the batch (the elements already pulled are kept), "
                "then save the state"
            )
        return make_state(
            self.plan, self._step, self._shift, **self.data_fields, **{PARENT_KEY: parent_state}
        )

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores the step, the position and the parent iterator's state."""
        step, shift = read_state(
            state,
            self.plan,
            self.on_schedule_change,
            (PARENT_KEY,),
            data_fields=self.data_fields,
            on_data_change=self.on_data_change,
        )
        self.plan.check_processes(self.process_index, self.process_count, start=step)
        self._parent_method("set_state")(state[PARENT_KEY])
        self._step, self._shift = step, shift
        self._pending = []
        self._started = True
