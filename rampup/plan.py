"""Plan: the exact arithmetic between steps and stream positions.

Batch `k` holds stream positions `[O(k), O(k) + B(k))` with `O(k) = sum_{j<k} B(j)`.
For a segmented schedule every answer is a closed form over the segment that
holds the step (or position), found by binary search. Offsets are Python ints,
so they stay exact at any scale.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, cast

import numpy as np

from rampup.schedules import Schedule, check_count, not_divisible, piecewise

FN_CHUNK = 65536  # steps of a from_fn schedule evaluated per vectorized call
# A from_fn plan keeps at most about twice this many segments: past it, pairs of them
# merge into anchors whose steps are evaluated again when asked (memory does not grow
# with the step; the time of a query far out does).
FN_SEGMENTS = 4096


class Segment(NamedTuple):
    """A run of steps with one size.

    Attributes:
      first_step: the first step of the run.
      last_step: its last step, None when it never ends.
      size: the global batch size of every step in it.
      offset: samples consumed before `first_step`.
    """

    first_step: int
    last_step: int | None
    size: int
    offset: int

    @property
    def samples(self) -> int | None:
        """Samples the run consumes, None when it never ends."""
        if self.last_step is None:
            return None
        return (self.last_step - self.first_step + 1) * self.size


class Plan:
    """Step <-> position arithmetic over a schedule.

    Examples:
      >>> from rampup import piecewise
      >>> plan = Plan(piecewise({0: 16, 100: 32}))
      >>> plan.size(100), plan.offset(100)  # 100 steps of 16 come before step 100
      (32, 1600)
      >>> plan.bounds(100)
      (1600, 1632)
      >>> plan.step_at(1631), plan.step_at(1632)
      (100, 101)

    Args:
      schedule: the global batch size per step.
    """

    def __init__(self, schedule: Schedule) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"Plan needs a rampup Schedule (from constant, stepwise, piecewise, linear, "
                f"from_fn or from_config), got {schedule!r}"
            )
        self.schedule = schedule
        # Segments: the first step, size and offset of each run of equal size. A from_fn
        # schedule's grow on demand up to the frontier `_known` (steps evaluated so far),
        # append-only, a segment complete in all three lists before `_known` passes it, so
        # readers of steps below `_known` need no lock. An online schedule (AdaptiveSchedule)
        # appends segments too: `_sync` takes them in.
        self._revision, self._generation, starts, sizes, self._decided_until = schedule.snapshot()
        # divisor -> (segments scanned, indices of the segments it does not divide): an
        # online schedule's layout checks look at the new segments only.
        self._not_dividing: dict[int, tuple[int, list[int]]] = {}
        self._starts = list(starts)
        self._sizes = list(sizes)
        self._offsets = [0]
        self._lock = threading.Lock()
        self._known = 0
        self._known_offset = 0
        self._vectorized: bool | None = None  # from_fn: does fn take arrays? None: not tried
        # from_fn: False where pairs of segments merged into one anchor, whose steps may have
        # several sizes; `_cursor` is the last (step, offset) a walk through one reached.
        self._exact: list[bool] = []
        self._cursor = (0, 0)
        if schedule.segmented:
            for i in range(1, len(self._starts)):
                steps = self._starts[i] - self._starts[i - 1]
                self._offsets.append(self._offsets[-1] + steps * self._sizes[i - 1])
        else:
            self._starts = []
            self._offsets = []

    def __repr__(self) -> str:
        return f"Plan({self.schedule})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and other.schedule == self.schedule

    def __hash__(self) -> int:
        return hash(self.schedule)

    def __getstate__(self) -> dict:
        return {"schedule": self.schedule}

    def __setstate__(self, state: dict) -> None:
        Plan.__init__(self, state["schedule"])

    def _sync(self, step: int | None = None) -> None:
        """Takes in the segments an online schedule added; refuses a step not decided yet.

        New segments start at or after the old `decided_until`, so appending
        them never changes an answer another thread may be reading.
        """
        if self.schedule.revision != self._revision:
            with self._lock:
                snapshot = self.schedule.snapshot(len(self._starts))
                revision, generation, starts, sizes, decided_until = snapshot
                if generation != self._generation:  # restored: start over
                    Plan.__init__(self, self.schedule)
                    return self._sync(step)
                for start, size in zip(starts, sizes, strict=True):
                    steps = start - self._starts[-1]
                    self._offsets.append(self._offsets[-1] + steps * self._sizes[-1])
                    self._sizes.append(size)
                    self._starts.append(start)
                self._decided_until, self._revision = decided_until, revision
        if step is not None and self._decided_until is not None and step >= self._decided_until:
            raise self.schedule.undecided(step, self._decided_until)

    def _grow_to_step(self, step: int) -> None:
        """Evaluates a from_fn schedule up to `step`, keeping runs of equal size."""
        if step < self._known:
            return
        fn, max_step = self.schedule.fn, self.schedule.max_step
        assert fn is not None and max_step is not None  # a from_fn schedule has both
        if step >= max_step:
            raise ValueError(
                f"step {step:,} is at or past max_step={max_step:,} of the from_fn schedule "
                f"{getattr(fn, '__qualname__', fn)!r}: a from_fn schedule has no closed form, "
                f"so reaching step {step:,} (a query or a restored state) means evaluating the "
                f"function at every step before it. Build it with from_fn(fn, max_step=...) "
                f"above {step:,} to allow that, or use piecewise() or linear(), which answer "
                "any step at once"
            )
        with self._lock:  # grain and torch may build batches from several threads
            while self._known <= step:
                if self._vectorized is not False and self._grow_vectorized(
                    min(max_step, self._known + FN_CHUNK)
                ):
                    continue
                self._grow_scalar(step if self._vectorized is False else self._known)

    def _grow_scalar(self, step: int) -> None:
        """Calls fn once per step up to `step`, with the rules' check inlined."""
        fn, rules = self.schedule.fn, self.schedule.rules
        assert fn is not None
        low, multiple = rules.min_size, rules.multiple_of
        high = rules.max_size if rules.max_size is not None else float("inf")
        starts, sizes, offsets = self._starts, self._sizes, self._offsets
        last = sizes[-1] if sizes else None
        known, offset = self._known, self._known_offset
        try:
            while known <= step:
                size = fn(known)
                if type(size) is not int or not low <= size <= high or size % multiple:
                    size = rules.check(size, known)
                if size != last:
                    starts.append(known)
                    sizes.append(size)
                    offsets.append(offset)
                    self._exact.append(True)
                    last = size
                    if len(starts) > 2 * FN_SEGMENTS:
                        self._compact()
                offset += size
                known += 1
        finally:
            self._known, self._known_offset = known, offset

    def _grow_vectorized(self, stop: int) -> bool:
        """Evaluates fn on the steps `[_known, stop)` at once; False if it cannot.

        Only a result of one integer per step that agrees with scalar calls at
        both ends counts; steps from the first size the rules refuse on are
        left to the scalar path, which raises the error of that step.
        """
        fn, rules, start = self.schedule.fn, self.schedule.rules, self._known
        assert fn is not None
        steps = np.arange(start, stop, dtype=np.int64)
        try:
            with np.errstate(all="ignore"):
                sizes: Any = fn(steps)  # type: ignore[arg-type]  # tried with an array
            ok = (
                isinstance(sizes, np.ndarray)
                and sizes.shape == steps.shape
                and sizes.dtype.kind in "iu"
                and fn(start) == sizes[0]
                and fn(stop - 1) == sizes[-1]
            )
        except Exception:  # noqa: BLE001 -- any failure means: call it per step
            ok = False
        if not ok:
            self._vectorized = False
            return False
        self._vectorized = True
        valid = (sizes >= max(1, rules.min_size)) & (sizes % rules.multiple_of == 0)
        if rules.max_size is not None:
            valid &= sizes <= rules.max_size
        bad = np.flatnonzero(~valid)
        if bad.size:
            sizes = sizes[: bad[0]]
        self._append_runs(sizes)
        return bool(sizes.size)

    def _append_runs(self, sizes: np.ndarray) -> None:
        """Appends the sizes of the steps from `_known` on, one segment per change."""
        if not sizes.size:
            return
        changes = np.flatnonzero(sizes[1:] != sizes[:-1]) + 1
        firsts = [0, *changes.tolist()]
        lasts = [*changes.tolist(), len(sizes)]
        offset = self._known_offset
        for first, stop in zip(firsts, lasts, strict=True):
            size = int(sizes[first])
            if not self._sizes or self._sizes[-1] != size:
                self._starts.append(self._known + first)
                self._sizes.append(size)
                self._offsets.append(offset)
                self._exact.append(True)
            offset += (stop - first) * size
        self._known_offset = offset
        self._known += len(sizes)
        while len(self._starts) > 2 * FN_SEGMENTS:
            self._compact()

    def _compact(self) -> None:
        """Merges pairs of from_fn segments (all but the last) into anchors; under the lock.

        An anchor keeps its first step and offset; the sizes of its steps are
        evaluated again by `_walk`. The lists change in place: `_grow_scalar`
        holds them.
        """
        last = len(self._starts) - 1
        keep = list(range(0, last, 2)) + [last]
        merged = [i + 1 < last for i in range(0, last, 2)] + [False]
        self._exact[:] = [self._exact[i] and not m for i, m in zip(keep, merged, strict=True)]
        self._starts[:] = [self._starts[i] for i in keep]
        self._sizes[:] = [self._sizes[i] for i in keep]
        self._offsets[:] = [self._offsets[i] for i in keep]

    def _fn_size(self, step: int) -> int:
        """A from_fn schedule's size at `step`, checked against its rules."""
        fn, rules = self.schedule.fn, self.schedule.rules
        assert fn is not None
        size = fn(step)
        high = rules.max_size if rules.max_size is not None else float("inf")
        if type(size) is not int or not rules.min_size <= size <= high or size % rules.multiple_of:
            size = rules.check(size, step)
        return size

    def _walk(
        self, i: int, step: int | None = None, position: int | None = None
    ) -> tuple[int, int, int]:
        """`(k, B(k), O(k))` for `k = step`, or the step holding `position`, in anchor `i`.

        Evaluates the function from the anchor's first step, or from the last
        step a walk reached when that lies between them.
        """
        k, offset = self._starts[i], self._offsets[i]
        cursor_step, cursor_offset = self._cursor
        if k <= cursor_step and (
            (step is not None and cursor_step <= step)
            or (position is not None and cursor_offset <= position)
        ):
            k, offset = cursor_step, cursor_offset
        while True:
            size = self._fn_size(k)
            if k == step or (position is not None and offset + size > position):
                self._cursor = (k, offset)
                return k, size, offset
            offset += size
            k += 1

    def _locate(self, step: int) -> tuple[int, int, int]:
        """`(first step, size, offset)` of a run of equal sizes that holds `step`."""
        if self.schedule.segmented:
            i = bisect.bisect_right(self._starts, step) - 1
            return self._starts[i], self._sizes[i], self._offsets[i]
        self._grow_to_step(step)
        with self._lock:
            i = bisect.bisect_right(self._starts, step) - 1
            if self._exact[i]:
                return self._starts[i], self._sizes[i], self._offsets[i]
            return self._walk(i, step=step)

    def _grow_to_position(self, position: int) -> None:
        while self._known_offset <= position:
            self._grow_to_step(self._known)

    def size(self, step: int) -> int:
        """The global batch size `B(step)`."""
        step = check_count(step, "step")
        self._sync(step)
        return self._locate(step)[1]

    def offset(self, step: int) -> int:
        """`O(step)`: the samples consumed by all steps before `step`."""
        step = check_count(step, "step")
        self._sync(step - 1 if step else None)
        first, size, offset = self._locate(step)
        return offset + (step - first) * size

    def bounds(self, step: int) -> tuple[int, int]:
        """The stream positions `[start, stop)` of the global batch at `step`."""
        step = check_count(step, "step")
        self._sync(step)
        first, size, offset = self._locate(step)
        start = offset + (step - first) * size
        return start, start + size

    def step_at(self, position: int) -> int:
        """The step whose global batch holds stream position `position`."""
        position = check_count(position, "position")
        if not self.schedule.segmented:
            self._grow_to_position(position)
            with self._lock:
                i = bisect.bisect_right(self._offsets, position) - 1
                if not self._exact[i]:
                    return self._walk(i, position=position)[0]
                return self._starts[i] + (position - self._offsets[i]) // self._sizes[i]
        self._sync()
        i = bisect.bisect_right(self._offsets, position) - 1
        step = self._starts[i] + (position - self._offsets[i]) // self._sizes[i]
        self._sync(step)
        return step

    def local_bounds(self, step: int, process_index: int, process_count: int) -> tuple[int, int]:
        """The positions `[start, stop)` of process `process_index`'s slice of batch `step`.

        Examples:
          >>> from rampup import piecewise
          >>> plan = Plan(piecewise({0: 16, 100: 32}))
          >>> [plan.local_bounds(100, i, 4) for i in range(4)]  # batch 100 is [1600, 1632)
          [(1600, 1608), (1608, 1616), (1616, 1624), (1624, 1632)]
        """
        process_index, process_count = _process(process_index, process_count)
        start, stop = self.bounds(step)
        share = _share(stop - start, step, process_count)
        return start + process_index * share, start + (process_index + 1) * share

    def local_offset(self, step: int, process_count: int, shift: int = 0) -> int:
        """The samples one of `process_count` processes consumed before `step`.

        Every size splits evenly (`check_processes`), so it is the process's share
        of `O(step) + shift`.
        """
        return (self.offset(step) + shift) // check_count(process_count, "process_count", 1)

    def local_window(
        self,
        step: int,
        process_index: int = 0,
        process_count: int = 1,
        *,
        end: int | None = None,
        drop_remainder: bool = False,
        shift: int = 0,
    ) -> tuple[int, int] | None:
        """This process's positions `[start, stop)` of batch `step` in a stream that may end.

        Args:
          step: the step.
          process_index: this process's index among `process_count`.
          process_count: how many processes split every global batch.
          end: the position where the data ends; None for an endless stream.
          drop_remainder: a batch cut short by `end` is left out.
          shift: moves the whole stream: a restore under a changed schedule keeps
            its data position, so batch `step` holds `[O(step) + shift, ...)`.

        Returns:
          The positions, or None when the batch lies past the end (or is cut
          short and dropped). Every process holds an equal share of a last
          partial batch, so a remainder `process_count` does not divide raises.
        """
        process_index, process_count = _process(process_index, process_count)
        global_start, global_stop = self.bounds(step)
        global_start, global_stop = global_start + shift, global_stop + shift
        if end is not None:
            if global_start >= end or (drop_remainder and global_stop > end):
                return None
            if global_stop > end:
                remainder = end - global_start
                if remainder % process_count:
                    raise cut_short(
                        remainder, process_count, step, end, f"process_count={process_count}"
                    )
                share = remainder // process_count
                return (
                    global_start + process_index * share,
                    global_start + (process_index + 1) * share,
                )
        share = _share(global_stop - global_start, step, process_count)
        start = global_start + process_index * share
        return start, start + share

    def last_batch(
        self, end: int, drop_remainder: bool = False, shift: int = 0
    ) -> tuple[int, int] | None:
        """The `(step, global size)` of the last batch of a stream that ends at `end`.

        `shift` is as in `local_window`. None when the stream holds no batch: a
        shift at or past `end` (a restore that kept a position at the end of the
        data) leaves none.
        """
        end = check_count(end, "end")
        if end - shift <= 0:
            return None
        steps = self.num_batches(end - shift, drop_remainder)
        if not steps:
            return None
        step = steps - 1
        begin = self.offset(step) + shift
        return step, min(self.size(step), end - begin)

    def check_last_batch(
        self,
        end: int,
        divisor: int,
        what: str,
        *,
        drop_remainder: bool = False,
        shift: int = 0,
        start: int | None = None,
    ) -> int:
        """Checks that a last batch cut short by `end` splits `divisor` ways.

        The one check of a partial last batch: a layout (processes, micro-batches,
        a data axis) holds equal shares of it too, so its size must be a multiple
        of `divisor`. The whole batches before it are the caller's layout check.

        Args:
          end: the stream position where the data ends.
          divisor: what the size of a cut-short last batch must be a multiple of.
          what: the divisor in words, e.g. "process_count=2".
          drop_remainder: a cut-short last batch is left out (nothing to check).
          shift: as in `local_window`.
          start: the step the pipeline starts or resumes at: a last batch before it
            does not run (a restore at or past the end yields nothing), so it is not
            checked. None: not known yet, checked.

        Returns:
          How many steps hold a whole batch: the `until_step` of the caller's check.

        Raises:
          ValueError: the cut-short last batch does not split, naming its step and size.
        """
        last = self.last_batch(end, drop_remainder, shift)
        if last is None:
            return 0
        step, size = last
        if size == self.size(step):
            return step + 1
        if size % divisor and (start is None or step >= start):
            raise cut_short(size, divisor, step, end, what)
        return step

    def from_step(self, step: int) -> Plan:
        """The plan of the steps from `step` on, renumbered from 0 (a segmented schedule's).

        Examples:
          >>> from rampup import piecewise
          >>> [Plan(piecewise({0: 2, 3: 8})).from_step(2).size(k) for k in range(3)]
          [2, 8, 8]
        """
        step = check_count(step, "step")
        sizes = {
            max(0, s.first_step - step): s.size
            for s in self.segments()
            if s.last_step is None or s.last_step >= step
        }
        return Plan(piecewise(sizes))

    def offsets(self, steps: Any) -> np.ndarray:
        """`O(k)` of many steps at once, as an int64 array of the shape of `steps`.

        Examples:
          >>> from rampup import piecewise
          >>> Plan(piecewise({0: 4, 2: 8})).offsets([0, 1, 2, 3, 5]).tolist()
          [0, 4, 8, 16, 32]
        """
        steps = np.asarray(steps, dtype=np.int64)
        if not steps.size:
            return steps.copy()
        check_count(int(steps.min()), "step")
        self.offset(int(steps.max()))  # grows a from_fn schedule; refuses an undecided step
        with self._lock:  # a from_fn plan compacts its lists in place
            starts, sizes, offsets = (
                np.asarray(x, np.int64) for x in (self._starts, self._sizes, self._offsets)
            )
            exact = np.asarray(self._exact, bool)
        i = np.searchsorted(starts, steps, side="right") - 1
        out = offsets[i] + (steps - starts[i]) * sizes[i]
        if not self.schedule.segmented:
            merged = ~exact[i]  # anchors of a from_fn plan: evaluated again, step by step
            out[merged] = [self.offset(int(k)) for k in steps[merged]]
        return out

    def check_processes(
        self,
        process_index: int,
        process_count: int,
        until_step: int | None = None,
        *,
        start: int | None = 0,
        end: int | None = None,
        drop_remainder: bool = False,
        shift: int = 0,
    ) -> tuple[int, int]:
        """Checks a process slice up front: valid index and count, every size it runs divisible.

        Raises the `check_layout` error for the sizes in steps `[start,
        until_step)` (every step from `start` on if None) that `process_count`
        processes cannot split, so a bad configuration fails at start-up. A
        `from_fn` schedule without `until_step` has no known end: its sizes are
        checked as each step is built.

        Args:
          process_index: this process's index among `process_count`.
          process_count: how many processes split every global batch.
          until_step: check the steps before it only (data that ends); None: all.
          start: the step the pipeline starts or resumes at; None when it is not
            known yet (a pipeline built before a state is restored into it).
          end: the position where the data ends, instead of `until_step`: the
            whole batches before it are checked, and a last one cut short by it
            (`check_last_batch`, with `drop_remainder` and `shift`).
          drop_remainder: with `end`, a cut-short last batch is left out.
          shift: with `end`, as in `local_window`.

        Returns:
          `ProcessLayout(process_index, process_count)` of ints.
        """
        process_index, process_count = _process(process_index, process_count)
        what = f"process_count={process_count}"
        if end is not None:
            until_step = self.check_last_batch(
                end, process_count, what, drop_remainder=drop_remainder, shift=shift, start=start
            )
        self.check_layout(process_count, what, start=start, until_step=until_step)
        return ProcessLayout(process_index, process_count)

    def microbatches(
        self, step: int, microbatch_size: int, process_count: int = 1, *, rows: int | None = None
    ) -> int:
        """How many micro-batches of `microbatch_size` rows each process gets at `step`.

        Examples:
          >>> from rampup import piecewise
          >>> plan = Plan(piecewise({0: 16, 100: 32}))
          >>> plan.microbatches(0, 8), plan.microbatches(100, 8), plan.microbatches(100, 8, 2)
          (2, 4, 2)

        Args:
          step: the step.
          microbatch_size: rows in one micro-batch of one process.
          process_count: how many processes split the batch.
          rows: this process's rows at `step` when they are not its share of
            `B(step)` (a last batch cut short by the end of a stream).

        Returns:
          `B(step) / (microbatch_size * process_count)`, or `rows / microbatch_size`.

        Raises:
          ValueError: the size is not a multiple of `microbatch_size * process_count`,
            naming the step and the nearest valid sizes.
        """
        size = self.size(step) if rows is None else rows * process_count
        return microbatch_count(size, f"at step {step}", microbatch_size, process_count)

    def check_microbatches(
        self,
        microbatch_size: int,
        process_count: int = 1,
        until_step: int | None = None,
        *,
        start: int | None = 0,
        end: int | None = None,
        drop_remainder: bool = False,
        shift: int = 0,
    ) -> int:
        """Checks up front that every size run from `start` splits into micro-batches.

        Every size in `[start, until_step)` must be a multiple of `microbatch_size *
        process_count` (each process takes `B / process_count` rows, in micro-batches
        of `microbatch_size`). `start`, `until_step`, `end`, `drop_remainder` and
        `shift` are as in `check_processes`; a `from_fn` schedule without
        `until_step` (or `end`) is checked as each step is built.

        Returns:
          `microbatch_size` as an int.
        """
        microbatch_size = check_count(microbatch_size, "microbatch_size", 1)
        process_count = check_count(process_count, "process_count", 1)
        unit, what = _microbatch_unit(microbatch_size, process_count)
        if end is not None:
            until_step = self.check_last_batch(
                end, unit, what, drop_remainder=drop_remainder, shift=shift, start=start
            )
        self.check_layout(unit, what, start=start, until_step=until_step)
        return microbatch_size

    def divisible_from(self, divisor: int, *, until_step: int | None = None) -> int | None:
        """The first step from which every size is a multiple of `divisor`; None if never.

        A layout that splits every batch `divisor` ways (processes, a data axis,
        micro-batches) can start or resume at this step or later: earlier sizes
        may be smaller than a topology the run grew into.

        Examples:
          >>> from rampup import piecewise
          >>> plan = Plan(piecewise({0: 4, 10: 16, 20: 32}))
          >>> plan.divisible_from(4), plan.divisible_from(8), plan.divisible_from(32)
          (0, 10, 20)
          >>> print(plan.divisible_from(64))
          None

        Args:
          divisor: what every size must be a multiple of, an int >= 1.
          until_step: look at the steps before it only, e.g. where the data ends
            (then the answer is at most `until_step`). Default: every step; a
            `from_fn` schedule's steps before its `max_step` (the function is
            evaluated at each of them once: pass `until_step` to bound that).

        Returns:
          The step, or None when the sizes never stay multiples of `divisor`.

        Raises:
          ValueError: the schedule is decided online (`AdaptiveSchedule`) and its
            `multiple_of` does not settle it: sizes not decided yet may not divide.
        """
        divisor = check_count(divisor, "divisor", 1)
        if self.schedule.rules.multiple_of % divisor == 0:
            return 0
        if until_step is None and self.schedule.decided_until is not None:
            raise ValueError(
                f"divisible_from({divisor}): {self.schedule} is decided online, so the sizes "
                f"after step {self.schedule.decided_until - 1} are not known yet and may not be "
                f"multiples of {divisor}. Build it with multiple_of={divisor} (then every size "
                "is), or pass until_step=... to look at the decided steps only"
            )
        if until_step is None and not self.schedule.segmented:
            max_step = cast(int, self.schedule.max_step)  # a from_fn schedule has one
            first = self._first_divisible(divisor, max_step)
            return None if first == max_step else first
        return self._first_divisible(divisor, until_step)

    def _first_divisible(self, divisor: int, until_step: int | None) -> int | None:
        """`divisible_from` over `segments(until_step)` (an online schedule's decided ones).

        Segments are append-only, so the ones `divisor` does not divide are
        remembered: a query costs O(log segments) plus the segments new since.
        """
        if self.schedule.rules.multiple_of % divisor == 0:
            return 0
        if not self.schedule.segmented:  # anchors merge: scan the runs, keeping none
            first: int | None = 0
            for segment in self._runs(until_step):
                if segment.size % divisor:
                    first = None if segment.last_step is None else segment.last_step + 1
            return first
        if until_step is not None:
            until_step = check_count(until_step, "until_step")
        self._sync(None if not until_step else until_step - 1)
        with self._lock:
            scanned, bad = self._not_dividing.get(divisor, (0, []))
            sizes = self._sizes
            bad.extend(i for i in range(scanned, len(sizes)) if sizes[i] % divisor)
            self._not_dividing[divisor] = (len(sizes), bad)
            count = len(sizes)
            if until_step is not None:
                count = bisect.bisect_left(self._starts, until_step, 0, count)
            last_bad = bisect.bisect_left(bad, count) - 1
            if last_bad < 0:
                return 0
            if bad[last_bad] == count - 1:  # the last segment in range
                return until_step
            return self._starts[bad[last_bad] + 1]

    def check_layout(
        self,
        divisor: int,
        what: str,
        *,
        start: int | None = 0,
        until_step: int | None = None,
    ) -> None:
        """Checks that a layout splits every size it will run, from the step it starts at.

        Args:
          divisor: what every size must be a multiple of.
          what: the divisor in words, e.g. "process_count=8".
          start: the step the pipeline starts or resumes at; None when it is not
            known yet: then some step must be legal (the last segment's size, or the
            last step's before `until_step`, must divide).
          until_step: check the steps before it only; None: every step (a `from_fn`
            schedule's are then checked as each step is built).

        Raises:
          ValueError: the `not_divisible` error of the first size from `start` on
            that does not divide, naming the first step from which the layout is legal.
        """
        if until_step is None and not self.schedule.segmented:
            return
        if start is not None and until_step is not None and start >= until_step:
            return
        first = self._first_divisible(divisor, until_step)
        if first is not None and (start is None or start >= first):
            return
        if start is None:  # no step is legal: the last segment cannot split
            bad = self.segments(until_step)[-1]
            raise not_divisible(
                bad.size,
                divisor,
                f"at step {bad.first_step}",
                what,
                f"no step from {bad.first_step} on is legal for this layout; build the schedule "
                f"with multiple_of={divisor}, or use a layout that divides {bad.size}",
            )
        bad = next(
            s
            for s in self.segments(until_step)
            if s.size % divisor and (s.last_step is None or s.last_step >= start)
        )
        step = max(start, bad.first_step)
        if first is None:
            fix = (
                f"no step from {step} on is legal for this layout; build the schedule with "
                f"multiple_of={divisor}, or use a layout that divides every size"
            )
        else:
            fix = (
                f"the pipeline starts at step {start}, but this layout is legal from step "
                f"{first} on (Plan.divisible_from({divisor})): start or resume at step {first} "
                "or later, or use a layout that divides the earlier sizes"
            )
        raise not_divisible(bad.size, divisor, f"at step {step}", what, fix)

    def num_batches(self, positions: int, drop_remainder: bool = False) -> int:
        """How many batches a finite stream of `positions` samples gives.

        The last one is partial unless `drop_remainder`, which leaves it out.

        Examples:
          >>> from rampup import piecewise
          >>> plan = Plan(piecewise({0: 16, 100: 32}))
          >>> plan.num_batches(1650)  # 100 of 16, one of 32 and 18 samples left over
          102
          >>> plan.num_batches(1650, drop_remainder=True)
          101
        """
        positions = check_count(positions, "positions")
        if positions == 0:
            return 0
        step = self.step_at(positions - 1)
        if drop_remainder and self.offset(step) + self.size(step) > positions:
            return step
        return step + 1

    def steps_for(
        self,
        samples: int | None = None,
        tokens: int | None = None,
        tokens_per_sample: int | None = None,
    ) -> int:
        """The number of steps that consume at least the given budget.

        Examples:
          >>> from rampup import piecewise
          >>> plan = Plan(piecewise({0: 16, 100: 32}))
          >>> plan.steps_for(samples=10_000)  # 1,600 samples, then 263 steps of 32
          363
          >>> plan.steps_for(tokens=2**20, tokens_per_sample=1024)  # 1,024 samples
          64

        Args:
          samples: a budget in samples; or
          tokens: a budget in tokens, with `tokens_per_sample`.
          tokens_per_sample: tokens in one sample.

        Returns:
          The smallest `n` with `O(n) >= budget` (the last step may go past it).
        """
        samples = budget_samples(samples, tokens, tokens_per_sample)
        return 0 if samples == 0 else self.step_at(samples - 1) + 1

    def segments(self, until_step: int | None = None) -> list[Segment]:
        """The runs of equal size over steps `[0, until_step)`; all of them if None.

        Examples:
          >>> from rampup import piecewise
          >>> for segment in Plan(piecewise({0: 16, 100: 32})).segments(150):
          ...     print(segment)
          Segment(first_step=0, last_step=99, size=16, offset=0)
          Segment(first_step=100, last_step=149, size=32, offset=1600)
        """
        return list(self._runs(until_step))

    def _runs(self, until_step: int | None) -> Iterator[Segment]:
        """The segments of `segments(until_step)`, one at a time (a from_fn plan's anchors
        are evaluated again, step by step, and kept nowhere)."""
        if until_step is None:
            if not self.schedule.segmented:
                raise ValueError("a from_fn schedule has no known end: pass until_step")
        else:
            until_step = check_count(until_step, "until_step")
        if not self.schedule.segmented and until_step:
            self._grow_to_step(until_step - 1)
        self._sync(None if not until_step else until_step - 1)
        starts, sizes, offsets = self._starts, self._sizes, self._offsets
        if not self.schedule.segmented:
            with self._lock:  # a snapshot: a compaction changes the lists in place
                starts, sizes, offsets = list(starts), list(sizes), list(offsets)
                exact = list(self._exact)
        stop = until_step
        for i, (start, size) in enumerate(zip(starts, sizes, strict=True)):
            if stop is not None and start >= stop:
                break
            end = starts[i + 1] if i + 1 < len(starts) else None
            if stop is not None and (end is None or end > stop):
                end = stop
            if self.schedule.segmented or exact[i]:
                yield Segment(start, None if end is None else end - 1, size, offsets[i])
                continue
            assert end is not None  # the last anchor is never merged
            yield from self._evaluated_runs(start, end, offsets[i])

    def _evaluated_runs(self, start: int, end: int, offset: int) -> Iterator[Segment]:
        """The runs of equal size over steps `[start, end)` of a from_fn schedule."""
        first, current = start, self._fn_size(start)
        for k in range(start + 1, end):
            size = self._fn_size(k)
            if size != current:
                yield Segment(first, k - 1, current, offset)
                offset += (k - first) * current
                first, current = k, size
        yield Segment(first, end - 1, current, offset)

    def distinct_sizes(self, until_step: int | None = None) -> tuple[int, ...]:
        """The sorted distinct sizes over `[0, until_step)`.

        Its length is how many batch shapes a jitted step compiles for.
        """
        return tuple(sorted({s.size for s in self.segments(until_step)}))

    def table(
        self,
        steps: int | None = None,
        samples: int | None = None,
        tokens: int | None = None,
        tokens_per_sample: int | None = None,
        lr: Callable[[int], float] | None = None,
        max_rows: int | None = None,
    ) -> str:
        """A preview: one row per segment up to a budget, then the totals.

        Examples:
          >>> from rampup import piecewise
          >>> print(Plan(piecewise({0: 16, 100: 32})).table(samples=8000))
          first step  last step  size  samples   share
          ----------  ---------  ----  -------  ------
                   0         99    16    1,600  20.00%
                 100        299    32    6,400  80.00%
          <BLANKLINE>
          300 steps, 8,000 samples, 2 distinct sizes

        Args:
          steps: the budget in steps; or `samples`; or `tokens` with `tokens_per_sample`.
          samples: the budget in samples.
          tokens: the budget in tokens.
          tokens_per_sample: tokens in one sample; adds a tokens column.
          lr: a function of the step (as `rampup.scaled` returns); adds a column
            with its value at each segment's first step.
          max_rows: show at most this many segments (the first and the last ones, a `...`
            row between them and a line that says what was left out); None shows all.

        Returns:
          The table as text.
        """
        if tokens_per_sample is not None:
            tokens_per_sample = check_count(tokens_per_sample, "tokens_per_sample", 1)
        if max_rows is not None:
            max_rows = check_count(max_rows, "max_rows", 2)
        if steps is None:
            if samples is None and tokens is None:
                raise ValueError("table: give a budget: steps, samples or tokens")
            steps = self.steps_for(samples, tokens, tokens_per_sample)
        steps = check_count(steps, "steps")
        total = self.offset(steps)
        head = ["first step", "last step", "size", "samples"]
        if tokens_per_sample:
            head.append("tokens")
        head.append("share")
        if lr is not None:
            head.append("lr")
        segments = self.segments(steps)
        hidden: list[Segment] = []
        tail = 0
        if max_rows is not None and len(segments) > max_rows:
            tail = max_rows // 4 or 1
            hidden = segments[max_rows - tail : -tail]
            segments = segments[: max_rows - tail] + segments[-tail:]
        rows = [head]
        for seg in segments:
            samples = cast(int, seg.samples)  # every segment up to a step ends
            row = [f"{seg.first_step:,}", f"{seg.last_step:,}", f"{seg.size:,}", f"{samples:,}"]
            if tokens_per_sample:
                row.append(f"{samples * tokens_per_sample:,}")
            row.append(f"{100 * samples / total:.2f}%" if total else "-")
            if lr is not None:
                row.append(f"{lr(seg.first_step):.4g}")
            rows.append(row)
        if hidden:
            rows.insert(len(rows) - tail, ["..."] * len(head))
        widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
        lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        distinct = len(self.distinct_sizes(steps))
        summary = f"{steps:,} step{'s' * (steps != 1)}, {total:,} sample{'s' * (total != 1)}"
        if tokens_per_sample:
            tokens = total * tokens_per_sample
            summary += f", {tokens:,} token{'s' * (tokens != 1)}"
        summary += f", {distinct} distinct size{'s' * (distinct != 1)}"
        if hidden:
            summary += (
                f"\n{len(hidden):,} segment{'s' * (len(hidden) != 1)} not shown "
                f"(steps {hidden[0].first_step:,} to {hidden[-1].last_step:,})"
            )
        return "\n".join([*lines, "", summary])


def _process(process_index: int, process_count: int) -> tuple[int, int]:
    process_count = check_count(process_count, "process_count", 1)
    process_index = check_count(process_index, "process_index")
    if process_index >= process_count:
        raise ValueError(
            f"process_index={process_index} is not valid for process_count={process_count}; "
            f"valid: 0..{process_count - 1}"
        )
    return process_index, process_count


def _share(size: int, step: int, process_count: int) -> int:
    """One process's rows of a batch of `size` at `step`; raises if they cannot be equal."""
    if size % process_count:
        raise not_divisible(
            size,
            process_count,
            f"at step {step}",
            f"process_count={process_count}",
            f"build the schedule with multiple_of={process_count} to catch this up front",
        )
    return size // process_count


class WorkerStride(NamedTuple):
    """The steps one worker builds.

    An iteration that starts at step `start` with `count` workers has worker `index`
    build the steps `k >= start` with `(k - start) % count == index`. The loaders'
    round-robin, which starts at worker 0, puts them back in order.
    """

    start: int
    # The fields shadow tuple.index and tuple.count, which nothing here calls.
    index: int = 0  # type: ignore[assignment]
    count: int = 1  # type: ignore[assignment]

    @classmethod
    def checked(cls, start: int, index: int, count: int) -> WorkerStride:
        """The stride, with `start >= 0` and `0 <= index < count` checked."""
        start = check_count(start, "step")
        count = check_count(count, "worker_count", 1)
        index = check_count(index, "worker_index")
        if index >= count:
            raise ValueError(
                f"worker_index={index} is not valid for worker_count={count}; valid: 0..{count - 1}"
            )
        return cls(start, index, count)

    def step(self, n: int) -> int:
        """The step of this worker's `n`-th batch."""
        return self.start + self.index + n * self.count

    def batches_before(self, step: int) -> int:
        """How many of this worker's batches come before `step`, which must be one of its steps."""
        first = self.step(0)
        if step < first or (step - first) % self.count:
            raise ValueError(
                f"step {step} is not built by worker {self.index} of {self.count} in an "
                f"iteration that started at step {self.start} (its steps: {first}, "
                f"{first + self.count}, ...); restore a state this worker wrote"
            )
        return (step - first) // self.count


def microbatch_count(
    size: int,
    where: str,
    microbatch_size: int,
    process_count: int = 1,
    fix: str | None = None,
) -> int:
    """`size / (microbatch_size * process_count)`: the micro-batches per process of a batch.

    Args:
      size: the global batch size.
      where: where it occurs, for the message, e.g. "at step 40".
      microbatch_size: rows in one micro-batch of one process.
      process_count: how many processes split the batch.
      fix: what to change, one clause; default: build the schedule with `multiple_of`.

    Raises:
      ValueError: the division is not exact (the `not_divisible` error).
    """
    unit, what = _microbatch_unit(microbatch_size, process_count)
    if size % unit:
        raise not_divisible(
            size,
            unit,
            where,
            what,
            fix or (f"build the schedule with multiple_of={unit} to catch this up front"),
        )
    return size // unit


def _microbatch_unit(microbatch_size: int, process_count: int) -> tuple[int, str]:
    """What every size must be a multiple of for micro-batches, and that divisor in words."""
    what = f"microbatch_size={microbatch_size}"
    if process_count > 1:
        what += f" x process_count={process_count}"
    return microbatch_size * process_count, what


def cut_short(size: int, divisor: int, step: int, end: int, what: str) -> ValueError:
    """The error of a last batch that the end of the data cut short to a size `divisor`
    does not split (the `not_divisible` error, with the fix for finite data)."""
    return not_divisible(
        size,
        divisor,
        f"in the last batch (step {step}, cut short by the end of the data at position {end})",
        what,
        "pass drop_remainder=True, or a source length that leaves a divisible remainder",
    )


class ProcessLayout(NamedTuple):
    """Where this process's rows sit in every global batch.

    Process `process_index` of `process_count` holds rows `[i * B / n, (i + 1) * B / n)`
    of a batch of `B` (`Plan.local_bounds`). The core's one name for a process's
    identity; torch's `rank` / `world_size` are the same two numbers.
    """

    process_index: int
    process_count: int

    @classmethod
    def given(
        cls,
        process_index: int | None,
        process_count: int | None,
        default: Callable[[], tuple[int, int]],
        default_name: str = "the framework's default",
    ) -> ProcessLayout:
        """Both numbers as given, or `default()` when neither is; one without the other raises.

        `default_name` names the default in that error.
        """
        if process_index is None and process_count is None:
            return cls(*default())
        if process_index is None or process_count is None:
            raise ValueError(
                f"give both process_index and process_count or neither (got process_index="
                f"{process_index}, process_count={process_count}); with neither, they come "
                f"from {default_name}"
            )
        return cls(process_index, process_count)

    @classmethod
    def of_shards(cls, shards: Iterable[int], shard_count: int) -> ProcessLayout:
        """The layout of a process that holds the batch shards `shards` of `shard_count`.

        The batch axis is cut into `shard_count` equal shards; a process that holds
        `m` of them holds `1 / (shard_count / m)` of every batch, at its place among
        the others: its shards must be `m` consecutive ones starting at a multiple of
        `m`, or its rows are not one slice of the batch.

        Examples:
          >>> ProcessLayout.of_shards([4, 5], 8)
          ProcessLayout(process_index=2, process_count=4)

        Raises:
          ValueError: the shards are not such a run.
        """
        held = sorted(set(shards))
        local = len(held)
        if (
            not local
            or shard_count % local
            or held[0] % local
            or held != list(range(held[0], held[0] + local))
        ):
            raise ValueError(
                f"this process holds batch shards {held} of {shard_count}: not one run of "
                "consecutive shards starting at a multiple of their number, so its rows are "
                "not one slice of every global batch. Order the mesh's devices so that each "
                "process's devices are consecutive along the batch axis"
            )
        return cls(held[0] // local, shard_count // local)


def budget_samples(samples: int | None, tokens: int | None, tokens_per_sample: int | None) -> int:
    """A budget in samples, from samples or from tokens and tokens per sample."""
    if (samples is None) == (tokens is None):
        raise ValueError("give exactly one budget: samples=... or tokens=...")
    if samples is not None:
        return check_count(samples, "samples")
    tokens = check_count(tokens, "tokens")
    if tokens_per_sample is None:
        raise ValueError("a budget in tokens needs tokens_per_sample")
    tokens_per_sample = check_count(tokens_per_sample, "tokens_per_sample", 1)
    return -(-tokens // tokens_per_sample)
