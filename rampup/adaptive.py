"""A schedule decided online: the batch size follows the measured gradient noise scale.

`AdaptiveSchedule.propose(step, noise_scale)` is called once per training step,
after the step. It may fix a new size from step `step + lag` on, never earlier,
so every step below `decided_until = last proposal + 1 + lag` is fixed for good
and every batch a pipeline builds ahead (up to `lag - 1` steps past the
training step) has its final size. Asking for a step past `decided_until`
raises instead of guessing. The decisions are the schedule's checkpoint state;
a `Plan` over the schedule takes in new decisions as they are made.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import numbers
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from rampup.batching import VERSION_KEY, make_state
from rampup.plan import Plan
from rampup.schedules import Rules, Schedule, check_count, check_size

ADAPTIVE_STATE_VERSION = 1
FINGERPRINT_STRIDE = 64
CONFIG_KEY = "config"
DECISIONS_KEY = "decisions"
PROPOSED_UNTIL_KEY = "proposed_until"
STREAK_KEY = "streak"


@dataclass(frozen=True)
class GrowthPolicy:
    """When an `AdaptiveSchedule` changes the size: whole factors, after a streak.

    The size grows to the next legal size `current * factor` (or the largest
    legal size below it, at `max_size` or with `allowed_sizes`) once the noise
    scale has been at or above that next size for `patience` consecutive
    proposals. It shrinks only with `shrink=True`, by the same rule downwards
    (the noise scale below `current / factor` for `patience` proposals). A
    proposal in between resets the streak, so an estimate hovering around a
    threshold never flaps.

    Examples:
      >>> s = AdaptiveSchedule(32, lag=2, policy=GrowthPolicy(factor=2, patience=2))
      >>> s.propose(0, 80.0), s.propose(1, 40.0)  # 40 < 64 resets the streak
      (None, None)
      >>> s.propose(2, 80.0), s.propose(3, 80.0)
      (None, Decision(step=3, start=5, size=64, noise_scale=80.0))

    Attributes:
      factor: the growth factor, an int >= 2.
      patience: consecutive proposals past a threshold before a change, an int >= 1.
      shrink: also shrink when the noise scale falls.
    """

    factor: int = 2
    patience: int = 3
    shrink: bool = False

    def __post_init__(self) -> None:
        check_count(self.factor, "GrowthPolicy factor", 2)
        check_count(self.patience, "GrowthPolicy patience", 1)
        if not isinstance(self.shrink, bool):
            raise TypeError(f"GrowthPolicy shrink must be a bool, got {self.shrink!r}")

    def config(self) -> dict[str, Any]:
        """The policy as JSON-able config entries."""
        return {"factor": self.factor, "patience": self.patience, "shrink": self.shrink}


class Decision(NamedTuple):
    """A size change made by `AdaptiveSchedule.propose`.

    Attributes:
      step: the training step that proposed it.
      start: the first step with the new size (`step + lag`).
      size: the new global batch size.
      noise_scale: the estimate it was made on.
    """

    step: int
    start: int
    size: int
    noise_scale: float


class _Log:
    """The mutable part of an AdaptiveSchedule, behind its lock."""

    def __init__(self, initial_size: int) -> None:
        self.lock = threading.Lock()
        self.starts = [0]
        self.sizes = [initial_size]
        self.proposed_until = 0
        self.streak = 0
        self.revision = 0
        self.generation = 0  # counts restores: they may replace decisions, not only add
        # Hash states of the fingerprint text after every FINGERPRINT_STRIDE-th segment,
        # so a fingerprint feeds at most that many segments (filled lazily).
        self.marks: list[Any] = []


class AdaptiveSchedule(Schedule):
    """A `Schedule` whose future is decided online, usable wherever a schedule is.

    Examples:
      >>> s = AdaptiveSchedule(32, lag=2, max_size=128, policy=GrowthPolicy(patience=1))
      >>> s.propose(0, noise_scale=70.0)  # 70 >= 64: double, from step 0 + lag on
      Decision(step=0, start=2, size=64, noise_scale=70.0)
      >>> s(1), s(2), s.decided_until
      (32, 64, 3)
      >>> s(3)
      Traceback (most recent call last):
      ...
      ValueError: the batch size at step 3 is not decided yet: ...

      The decisions are the checkpoint state; a schedule built with the same
      arguments takes them in:

      >>> restored = AdaptiveSchedule(32, lag=2, max_size=128, policy=GrowthPolicy(patience=1))
      >>> restored.set_state(s.get_state())
      >>> restored.decisions, restored(2)
      ([(2, 64)], 64)

    Args:
      initial_size: the size until the first decision takes effect.
      multiple_of: every size is a multiple of it (data-parallel size x
        micro-batch size; the mesh's data axis).
      min_size: the smallest size a shrink may reach.
      max_size: the largest size a growth may reach.
      lag: a decision made at step `k` applies from step `k + lag` on. It must
        exceed how far the pipeline builds ahead of training (`check_lag`).
      policy: when to change the size; default `GrowthPolicy()`.
      allowed_sizes: if given, the only sizes a decision may pick (e.g. the
        batch shapes already compiled), besides `initial_size`.
    """

    initial_size: int
    lag: int
    policy: GrowthPolicy
    allowed_sizes: tuple[int, ...] | None
    _log: _Log

    def __init__(
        self,
        initial_size: int,
        *,
        multiple_of: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        lag: int = 16,
        policy: GrowthPolicy | None = None,
        allowed_sizes: Iterable[int] | None = None,
    ) -> None:
        rules = Rules(multiple_of or 1, min_size or 1, max_size)
        initial_size = rules.check(check_size(initial_size, "initial_size"), 0)
        lag = check_count(lag, "lag", 1)
        policy = GrowthPolicy() if policy is None else policy
        if not isinstance(policy, GrowthPolicy):
            raise TypeError(f"policy must be a rampup.GrowthPolicy, got {policy!r}")
        allowed = None
        if allowed_sizes is not None and (
            isinstance(allowed_sizes, (str, bytes)) or not isinstance(allowed_sizes, Iterable)
        ):
            raise TypeError(
                f"allowed_sizes={allowed_sizes!r} is not a collection of sizes; pass the sizes "
                f"a decision may pick as a list, e.g. allowed_sizes=[{allowed_sizes!r}] or "
                "[8, 16, 32]"
            )
        if allowed_sizes is not None:
            allowed = tuple(
                sorted({rules.check(check_size(s, "allowed_sizes"), 0) for s in allowed_sizes})
            )
        config = {
            "type": "adaptive",
            "initial_size": initial_size,
            "lag": lag,
            "policy": policy.config(),
            **rules.config(),
        }
        if allowed is not None:
            config["allowed_sizes"] = list(allowed)
        text = json.dumps(config, sort_keys=True, separators=(",", ":"))
        for name, value in (
            ("config", text),
            ("rules", rules),
            ("fn", None),
            ("name", None),
            ("max_step", None),
            ("initial_size", initial_size),
            ("lag", lag),
            ("policy", policy),
            ("allowed_sizes", allowed),
            ("_log", _Log(initial_size)),
        ):
            object.__setattr__(self, name, value)

    # The dataclass fields of Schedule, read from the decisions so far.
    @property  # type: ignore[override]
    def starts(self) -> tuple[int, ...]:
        """The first step of each decided segment."""
        with self._log.lock:
            return tuple(self._log.starts)

    @property  # type: ignore[override]
    def sizes(self) -> tuple[int, ...]:
        """The size of each decided segment; the last one holds until a new decision."""
        with self._log.lock:
            return tuple(self._log.sizes)

    def snapshot(self, since: int = 0) -> tuple[int, int, tuple[int, ...], tuple[int, ...], int]:
        """`(revision, generation, starts, sizes, decided_until)`, consistent with one another.

        `starts` and `sizes` hold the segments from index `since` on (a plan takes in
        the new ones only); `generation` counts the restores (`set_state`).
        """
        log = self._log
        with log.lock:
            return (
                log.revision,
                log.generation,
                tuple(log.starts[since:]),
                tuple(log.sizes[since:]),
                log.proposed_until + self.lag,
            )

    @property
    def decision_count(self) -> int:
        """How many decisions were made so far (`len(decisions)`, in O(1))."""
        return len(self._log.starts) - 1

    @property
    def revision(self) -> int:
        """Counts the proposals and restores; a `Plan` refreshes when it changes."""
        return self._log.revision

    @property
    def decided_until(self) -> int:
        """The first step whose size a later proposal may still change."""
        return self._log.proposed_until + self.lag

    def __hash__(self) -> int:
        return hash(self.config)

    def __call__(self, step: int) -> int:
        """The global batch size at `step`."""
        step = check_count(step, "step")
        log = self._log
        with log.lock:
            decided_until = log.proposed_until + self.lag
            if step < decided_until:
                return log.sizes[bisect.bisect_right(log.starts, step) - 1]
        raise self.undecided(step, decided_until)

    def undecided(self, step: int, decided_until: int) -> Exception:
        """The error for a size asked at `step` before it is decided."""
        last = decided_until - self.lag - 1
        proposals = f"proposals up to step {last}" if last >= 0 else "no proposal yet"
        return ValueError(
            f"the batch size at step {step} is not decided yet: the adaptive schedule has "
            f"{proposals} and lag={self.lag}, so only "
            f"steps < {decided_until} are fixed. The pipeline builds further ahead of training "
            f"than lag allows: make lag larger than its run-ahead (prefetch depth, "
            "num_workers * prefetch_factor), call propose() at every step, and restart loaders "
            "whose workers are other processes (they hold a copy of the decisions) with "
            "rampup.follow (rampup.adapters.torch.follow for a DataLoader)"
        )

    def to_config(self) -> dict[str, Any]:
        """Refused: a config describes a schedule known in advance; this one is written
        down by its constructor arguments and `get_state()`."""
        raise ValueError(
            "an AdaptiveSchedule has no config that from_config could rebuild: its sizes are "
            "decided online. Save get_state() (the decisions) and rebuild it with the same "
            "arguments, then set_state()"
        )

    def check_lag(self, run_ahead: int, what: str = "the pipeline") -> None:
        """Refuses a pipeline that builds `run_ahead` steps past training: lag must exceed it.

        Examples:
          >>> AdaptiveSchedule(32, lag=4).check_lag(3)  # builds up to 3 steps ahead: fine
          >>> AdaptiveSchedule(32, lag=4).check_lag(4, "the DataLoader")
          Traceback (most recent call last):
          ...
          ValueError: the DataLoader builds batches up to 4 steps ahead ... lag >= 5 ...

        Raises:
          ValueError: `lag <= run_ahead`, naming both and the fix.
        """
        run_ahead = check_count(run_ahead, "run_ahead")
        if self.lag <= run_ahead:
            raise ValueError(
                f"{what} builds batches up to {run_ahead} steps ahead of training, but the "
                f"adaptive schedule's lag={self.lag} fixes sizes only {self.lag - 1} steps "
                f"ahead; build it with lag >= {run_ahead + 1} or build fewer batches ahead"
            )

    # --- decisions ---

    def _legal(self, size: int) -> bool:
        rules = self.rules
        if size < rules.min_size or size % rules.multiple_of:
            return False
        if rules.max_size is not None and size > rules.max_size:
            return False
        return self.allowed_sizes is None or size in self.allowed_sizes

    def _grown(self, current: int) -> int | None:
        """The largest legal size in `(current, current * factor]`, None if there is none."""
        target = current * self.policy.factor
        if self.allowed_sizes is not None:
            fits = [s for s in self.allowed_sizes if current < s <= target and self._legal(s)]
            return fits[-1] if fits else None
        if self.rules.max_size is not None:
            target = min(target, self.rules.max_size)
        target -= target % self.rules.multiple_of
        return target if target > current and self._legal(target) else None

    def _shrunk(self, current: int) -> int | None:
        """The smallest legal size in `[current / factor, current)`, None if there is none."""
        floor = -(-current // self.policy.factor)
        if self.allowed_sizes is not None:
            fits = [s for s in self.allowed_sizes if floor <= s < current and self._legal(s)]
            return fits[0] if fits else None
        floor = max(floor, self.rules.min_size)
        floor += -floor % self.rules.multiple_of
        return floor if floor < current and self._legal(floor) else None

    def propose(self, step: int, noise_scale: float | None) -> Decision | None:
        """Offers the noise scale measured at training step `step`; call it at every step.

        Args:
          step: the training step just taken; proposals go forward (each `step`
            above the last one).
          noise_scale: the estimate (`NoiseScale.value`), or None when there is
            none yet: the step still counts, only the streak does not move.

        Returns:
          The `Decision` when the size changes from `step + lag` on, else None.
        """
        step = check_count(step, "propose step")
        estimate = _estimate(noise_scale, step)
        log = self._log
        with log.lock:
            if step < log.proposed_until:
                raise ValueError(
                    f"propose(step={step}): proposals go forward, and step "
                    f"{log.proposed_until - 1} was proposed already; the next proposal must be "
                    f"at step >= {log.proposed_until}"
                )
            current = log.sizes[-1]
            decision = None
            if estimate is not None:
                decision = self._decide(step, current, estimate)
            if decision is not None:
                log.starts.append(decision.start)
                log.sizes.append(decision.size)
            log.proposed_until = step + 1
            log.revision += 1
        return decision

    def _decide(self, step: int, current: int, estimate: float) -> Decision | None:
        log = self._log
        grown = self._grown(current)
        shrunk = self._shrunk(current) if self.policy.shrink else None
        if grown is not None and estimate >= grown:
            log.streak = max(log.streak, 0) + 1
            new = grown
        elif shrunk is not None and estimate < shrunk:
            log.streak = min(log.streak, 0) - 1
            new = shrunk
        else:
            log.streak = 0
            return None
        if abs(log.streak) < self.policy.patience:
            return None
        log.streak = 0
        return Decision(step, step + self.lag, new, estimate)

    @property
    def decisions(self) -> list[tuple[int, int]]:
        """`(start, size)` of every decision so far, in order."""
        with self._log.lock:
            return list(zip(self._log.starts[1:], self._log.sizes[1:], strict=True))

    # --- identity and state ---

    @property
    def fingerprint(self) -> str:
        """Identifies the configuration and every decision made so far."""
        with self._log.lock:
            return self._fingerprint(len(self._log.starts))

    def fingerprint_at(self, step: int) -> str:
        """Identifies the configuration and the sizes of the steps before `step`.

        A data state written at `step` records this: a resume of the same run
        matches it whatever was decided since, a run with other sizes before
        `step` does not.

        Raises:
          ValueError: steps before `step` are not all decided yet.
        """
        step = check_count(step, "step")
        log = self._log
        with log.lock:
            decided_until = log.proposed_until + self.lag
            if step <= decided_until:
                return self._fingerprint(bisect.bisect_left(log.starts, step))
        raise ValueError(
            f"a state at step {step} needs the adaptive schedule's decisions up to step "
            f"{step}, but they are known only for steps < {decided_until}: restore the "
            "schedule state saved with the data state first"
        )

    def _fingerprint(self, count: int) -> str:
        """The hash of `[config, first count segments]` as compact JSON; under the lock.

        The text is fed segment by segment from the nearest saved hash state, so
        the cost does not grow with the number of decisions.
        """
        log = self._log
        stride = FINGERPRINT_STRIDE
        if not log.marks:
            log.marks.append(hashlib.sha256(f"[{json.dumps(self.config)},[".encode()))
        while len(log.marks) <= count // stride:
            mark = log.marks[-1].copy()
            first = (len(log.marks) - 1) * stride
            mark.update(self._segments_text(first, first + stride))
            log.marks.append(mark)
        first = count // stride * stride
        digest = log.marks[count // stride].copy()
        digest.update(self._segments_text(first, count) + b"]]")
        return "sha256:" + digest.hexdigest()[:16]

    def _segments_text(self, first: int, stop: int) -> bytes:
        """Segments `[first, stop)` as they appear in the fingerprint's JSON list."""
        if first >= stop:
            return b""
        log = self._log
        parts = (f"[{log.starts[i]},{log.sizes[i]}]" for i in range(first, stop))
        return ("," if first else "").encode() + ",".join(parts).encode()

    def get_state(self) -> dict[str, Any]:
        """The decisions and the policy's progress; JSON-able ints and strings."""
        log = self._log
        with log.lock:
            return {
                VERSION_KEY: ADAPTIVE_STATE_VERSION,
                CONFIG_KEY: self.config,
                DECISIONS_KEY: [
                    [start, size] for start, size in zip(log.starts[1:], log.sizes[1:], strict=True)
                ],
                PROPOSED_UNTIL_KEY: log.proposed_until,
                STREAK_KEY: log.streak,
            }

    def set_state(self, state: dict[str, Any]) -> None:
        """Replaces the decisions with those of a state written by `get_state`.

        Raises:
          ValueError: the state is malformed, or of another configuration.
        """
        keys = (VERSION_KEY, CONFIG_KEY, DECISIONS_KEY, PROPOSED_UNTIL_KEY, STREAK_KEY)
        if not isinstance(state, dict) or any(k not in state for k in keys):
            raise ValueError(f"not an adaptive schedule state: expected keys {keys}, got {state!r}")
        if state[VERSION_KEY] != ADAPTIVE_STATE_VERSION:
            raise ValueError(
                f"adaptive schedule state version {state[VERSION_KEY]!r} is not "
                f"supported; this rampup reads version {ADAPTIVE_STATE_VERSION}"
            )
        if state[CONFIG_KEY] != self.config:
            raise ValueError(
                f"the adaptive schedule state was written by {state[CONFIG_KEY]}, "
                f"this schedule is {self.config}; build it with the same arguments"
            )
        proposed_until = check_count(state[PROPOSED_UNTIL_KEY], "state proposed_until")
        streak = state[STREAK_KEY]
        if isinstance(streak, bool) or not isinstance(streak, int):
            raise ValueError(f"adaptive schedule state: streak must be an int, got {streak!r}")
        starts, sizes = [0], [self.initial_size]
        for item in state[DECISIONS_KEY]:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ValueError(
                    f"adaptive schedule state: a decision is [start, size], got {item!r}"
                )
            start = check_count(item[0], "decision start")
            if start <= starts[-1] or start > proposed_until - 1 + self.lag:
                raise ValueError(
                    f"adaptive schedule state: decision {item!r} is out of order "
                    f"or past the proposals (proposed_until={proposed_until})"
                )
            size = self.rules.check(item[1], start)
            if not self._legal(size):
                raise ValueError(
                    f"adaptive schedule state: decision {item!r} picks size {size}, which is "
                    f"not one of allowed_sizes={list(self.allowed_sizes or ())}; a state this "
                    "schedule wrote picks allowed sizes only"
                )
            starts.append(start)
            sizes.append(size)
        log = self._log
        with log.lock:
            log.starts, log.sizes = starts, sizes
            log.proposed_until, log.streak = proposed_until, streak
            log.revision += 1
            log.generation += 1
            log.marks = []

    def __getstate__(self) -> dict[str, Any]:
        return {"args": json.loads(self.config), "state": self.get_state()}

    def __setstate__(self, pickled: dict[str, Any]) -> None:
        args = dict(pickled["args"])
        args.pop("type")
        policy = GrowthPolicy(**args.pop("policy"))
        AdaptiveSchedule.__init__(self, args.pop("initial_size"), policy=policy, **args)
        self.set_state(pickled["state"])

    def __reduce__(self) -> Any:
        return (_unpickle, (self.__getstate__(),))

    def __str__(self) -> str:
        parts = ", ".join(f"{s}: {b}" for s, b in zip(self.starts, self.sizes, strict=True))
        return (
            f"AdaptiveSchedule(step -> size {{{parts}}}, decided until step "
            f"{self.decided_until}, lag={self.lag})"
        )

    __repr__ = __str__


def _unpickle(pickled: dict[str, Any]) -> AdaptiveSchedule:
    schedule = AdaptiveSchedule.__new__(AdaptiveSchedule)
    schedule.__setstate__(pickled)
    return schedule


def _estimate(noise_scale: Any, step: int) -> float | None:
    if noise_scale is None:
        return None
    if isinstance(noise_scale, bool) or not isinstance(noise_scale, numbers.Real):
        raise TypeError(
            f"propose(step={step}): noise_scale must be a number or None (no "
            f"estimate yet), got {noise_scale!r}"
        )
    value = float(noise_scale)
    if math.isnan(value):
        raise ValueError(
            f"propose(step={step}): noise_scale is NaN; pass None when there is no estimate"
        )
    return value


class Follower(Iterator[Any]):
    """Iterates a pipeline whose workers hold copies of an adaptive schedule; see `follow`."""

    def __init__(
        self,
        start: Callable[[int], Iterator[Any]],
        plan: Plan,
        *,
        step: int = 0,
        run_ahead: int = 0,
        shares_decisions: bool = False,
        state: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        schedule = plan.schedule
        if not isinstance(schedule, AdaptiveSchedule):
            raise TypeError(f"follow needs a plan over an AdaptiveSchedule, got {schedule}")
        self.schedule = schedule
        self.run_ahead = check_count(run_ahead, "run_ahead")
        schedule.check_lag(self.run_ahead)
        self.start = start
        self.plan = plan
        self.shares_decisions = bool(shares_decisions)
        self._state = state or (lambda step: make_state(plan, step))
        self.restarts = 0
        self._step = check_count(step, "step")
        self._iterator: Iterator[Any] | None = None
        self._known = (0, 0)

    @property
    def step(self) -> int:
        """The step the next batch belongs to."""
        return self._step

    def _stale(self) -> bool:
        """True when the running copy misses a decision or will soon run past what it knows."""
        if self._iterator is None:
            return True
        if self.shares_decisions:
            return False
        decisions, decided_until = self._known
        schedule = self.schedule
        return schedule.decision_count != decisions or self._step + self.run_ahead >= decided_until

    def __next__(self) -> Any:
        iterator = self._iterator
        if iterator is None or self._stale():
            schedule = self.schedule
            self._known = (schedule.decision_count, schedule.decided_until)
            if iterator is not None:
                self.restarts += 1
            iterator = self._iterator = self.start(self._step)
        batch = next(iterator)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """The data state of the next step, JSON-able; restore with `follow(..., step=...)`."""
        return self._state(self._step)


def follow(
    start: Callable[[int], Iterator[Any]],
    plan: Plan | AdaptiveSchedule,
    *,
    step: int = 0,
    run_ahead: int = 0,
    shares_decisions: bool = False,
    state: Callable[[int], dict[str, Any]] | None = None,
) -> Follower:
    """Restarts a pipeline at the training step whenever its copy of the decisions is stale.

    Workers in other processes (DataLoader workers, grain `mp_prefetch`) hold
    the decisions made before they started. The follower starts the pipeline
    anew, with `start(step)` (an O(1) restore at the training step), when a
    decision was made since, and before the training step comes within
    `run_ahead` of the first step the copy cannot know. The batches already
    built ahead are dropped and built again: identical, as no decision changes
    a step before `step + lag`.

    Examples:
      >>> import itertools
      >>> s = AdaptiveSchedule(32, lag=4, policy=GrowthPolicy(patience=1))
      >>> batches = follow(lambda step: itertools.count(step), s, run_ahead=1)
      >>> next(batches), next(batches)
      (0, 1)
      >>> s.propose(1, noise_scale=100.0)
      Decision(step=1, start=5, size=64, noise_scale=100.0)
      >>> next(batches), batches.restarts  # restarted at step 2 with the new decision
      (2, 1)

    Args:
      start: builds the pipeline's iterator from a step (seek, then iterate).
      plan: the plan (or the schedule) the pipeline batches by.
      step: the first step to yield.
      run_ahead: how many steps the pipeline builds past the one it yields
        (DataLoader: `num_workers * prefetch_factor`); the lag must exceed it.
      shares_decisions: the pipeline reads this very schedule (no worker
        processes), so it never needs a restart.
      state: writes the pipeline's state at a step (`RampupBatches.state`), which
        `get_state()` returns; default a state of the plan alone, without data
        fields (a pipeline restores it with `on_data_change="continue"` only).

    Returns:
      An iterator over the batches from `step` on, with `step` and `get_state()`.
    """
    plan = plan if isinstance(plan, Plan) else Plan(plan)
    return Follower(
        start,
        plan,
        step=step,
        run_ahead=run_ahead,
        shares_decisions=shares_decisions,
        state=state,
    )
