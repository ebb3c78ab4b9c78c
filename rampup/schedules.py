"""Schedules: the global batch size as a function of the step.

A `Schedule` is immutable and compares and hashes by value. Every builder but
`from_fn` reduces to segments: the steps at which the size changes, so that a
`Plan` answers any question with a binary search over them.
"""

from __future__ import annotations

import bisect
import decimal
import hashlib
import itertools
import json
import math
import numbers
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNITS = ("steps", "samples", "tokens")
TYPES = ("constant", "stepwise", "piecewise", "linear", "megatron")

_INT_LIKE = re.compile(r"^\s*\d+\s*$")

LINEAR_MAX_SIZES = 100_000
"""The most distinct sizes `linear` builds: it keeps one segment per size."""

FN_MAX_STEP = 10**8
"""`from_fn`'s default `max_step`: plans evaluate the function at every step up to it."""


def check_size(value: Any, what: str) -> int:
    """Returns `value` as an int batch size >= 1, or raises naming `what`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral)):
        raise TypeError(
            f"{what}: batch size {value!r} of type {type(value).__name__} is not an int; "
            "batch sizes are whole numbers of samples >= 1"
        )
    if value < 1:
        raise ValueError(f"{what}: batch size {value} is not valid; batch sizes must be >= 1")
    return int(value)


def nearest_multiples(size: int, multiple: int) -> tuple[int, ...]:
    """The multiples of `multiple` next to `size` (one below, one above), each >= 1.

    Every "not divisible" error names these as the valid sizes to use instead.
    """
    lower = size - size % multiple
    return tuple(v for v in (lower, lower + multiple) if v >= 1)


def not_divisible(size: int, divisor: int, where: str, what: str, fix: str) -> ValueError:
    """The one "not divisible" error: the size, where it occurs, the divisor and the valid sizes.

    Args:
      size: the size that does not divide.
      divisor: what it must be a multiple of.
      where: where the size occurs, e.g. "at step 40" or "in the last batch (step 9)".
      what: the divisor's description, e.g. "process_count=2".
      fix: what to change, one clause.

    Returns:
      The `ValueError` to raise.
    """
    valid = ", ".join(map(str, nearest_multiples(size, divisor)))
    return ValueError(
        f"batch size {size} {where} is not divisible by {what}; every size must be a multiple "
        f"of {divisor} (nearest valid sizes: {valid}); {fix}"
    )


def check_count(value: Any, what: str, minimum: int = 0) -> int:
    """Returns `value` as an int >= `minimum` (a step, a sample count, a seed)."""
    if type(value) is int and value >= minimum:  # the common case, on every batch
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value}")
    return int(value)


def check_flag(value: Any, what: str) -> bool:
    """Returns `value` if it is a bool; a string, None or a number is a TypeError.

    `"false"` is truthy in Python: reading it as a flag would silently do the opposite.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{what} must be a bool (True or False), got {value!r} of type {type(value).__name__}"
        )
    return bool(value)


def _boundary(key: Any, builder: str) -> int:
    if isinstance(key, str):
        if not _INT_LIKE.match(key):
            raise ValueError(
                f"{builder}: boundary {key!r} is not an int-like string; "
                "boundaries are integers >= 0 such as 1000 or '1000'"
            )
        return int(key)
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, numbers.Integral):
        raise ValueError(
            f"{builder}: boundary {key!r} ({type(key).__name__}) is not an integer; "
            "boundaries are integers >= 0 such as 1000 or '1000'"
        )
    if key < 0:
        raise ValueError(f"{builder}: boundary {key} is negative; boundaries must be >= 0")
    return int(key)


# Boundaries are ints or int-like strings (YAML/JSON configs). A Mapping's key type is
# invariant, so each spelling is listed: a dict[int, float] is no Mapping[int | str, float].
_Scales = Mapping[int, float] | Mapping[str, float] | Mapping[int | str, float]
_Sizes = Mapping[int, int] | Mapping[str, int] | Mapping[int | str, int]


def _sorted_boundaries(mapping: Mapping[Any, Any], builder: str) -> list[tuple[int, Any]]:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{builder}: expected a dict of boundary -> value, got {mapping!r}")
    items: dict[int, Any] = {}
    for key, value in mapping.items():
        b = _boundary(key, builder)
        if b in items:
            raise ValueError(f"{builder}: boundary {b} is given twice ({key!r})")
        items[b] = value
    return sorted(items.items())


def _check_scale(scale: Any, boundary: int) -> float:
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(
            f"stepwise: scale {scale!r} at boundary {boundary} is not a number; "
            "scales are finite numbers >= 0"
        )
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(
            f"stepwise: scale {scale} at boundary {boundary} is not valid; "
            "scales are finite numbers >= 0"
        )
    return float(scale)


@dataclass(frozen=True)
class Rules:
    """Constraints every size must meet: a multiple of `multiple_of`, within bounds."""

    multiple_of: int = 1
    min_size: int = 1
    max_size: int | None = None

    def __post_init__(self) -> None:
        check_size(self.multiple_of, "multiple_of")
        check_size(self.min_size, "min_size")
        if self.max_size is not None:
            check_size(self.max_size, "max_size")
            if self.max_size < self.min_size:
                raise ValueError(f"max_size={self.max_size} is below min_size={self.min_size}")

    def check(self, size: Any, step: int) -> int:
        """Returns `size` if it meets the rules at `step`; raises ValueError otherwise."""
        size = check_size(size, f"step {step}")
        if size % self.multiple_of:
            raise not_divisible(
                size,
                self.multiple_of,
                f"at step {step}",
                f"multiple_of={self.multiple_of}",
                "change the schedule to one of them",
            )
        if size < self.min_size:
            raise ValueError(f"batch size {size} at step {step} is below min_size={self.min_size}")
        if self.max_size is not None and size > self.max_size:
            raise ValueError(f"batch size {size} at step {step} is above max_size={self.max_size}")
        return size

    def config(self) -> dict[str, int]:
        """The non-default rules as config entries."""
        out = {}
        if self.multiple_of != 1:
            out["multiple_of"] = self.multiple_of
        if self.min_size != 1:
            out["min_size"] = self.min_size
        if self.max_size is not None:
            out["max_size"] = self.max_size
        return out


@dataclass(frozen=True)
class Schedule:
    """The global batch size per step, `B(k)`; call it with a step.

    Examples:
      >>> from rampup import piecewise
      >>> s = piecewise({0: 16, 100: 32})
      >>> s(99), s(100)
      (16, 32)
      >>> s.starts, s.sizes
      ((0, 100), (16, 32))

    Attributes:
      starts: the first step of each segment (segmented schedules), `starts[0] == 0`.
      sizes: the size of each segment; the last segment never ends.
      config: the canonical JSON text of the description it was built from.
      fn: the callable of a `from_fn` schedule, else None.
      max_step: a `from_fn` schedule's first step a plan refuses to reach, else None.
    """

    starts: tuple[int, ...]
    sizes: tuple[int, ...]
    config: str
    rules: Rules = field(default_factory=Rules)
    fn: Callable[[int], int] | None = None
    name: str | None = None
    max_step: int | None = None

    def __post_init__(self) -> None:
        # The builders are the way in; a hand-made Schedule is checked all the same,
        # since a size 0, a missing step 0 or a float size would give wrong offsets.
        if not isinstance(self.rules, Rules):
            raise TypeError(f"Schedule rules must be a Rules, got {self.rules!r}")
        if not isinstance(self.config, str):
            raise TypeError(
                f"Schedule config must be the JSON text of its description, got {self.config!r}"
            )
        if self.fn is not None:
            if not callable(self.fn):
                raise TypeError(f"Schedule fn {self.fn!r} is not callable")
            if self.starts != (0,) or self.sizes != ():
                raise ValueError(
                    "a Schedule with fn has no segments: starts=(0,), sizes=(); "
                    "build it with rampup.from_fn"
                )
            if not isinstance(self.name, str) or not self.name:
                raise ValueError("a Schedule with fn needs a name; build it with rampup.from_fn")
            check_count(self.max_step, "Schedule max_step", 1)
            return
        if not isinstance(self.starts, tuple) or not isinstance(self.sizes, tuple):
            raise TypeError(
                "Schedule starts and sizes are tuples of ints; build a schedule "
                "with constant, stepwise, piecewise, linear or from_config"
            )
        if not self.starts or len(self.starts) != len(self.sizes):
            raise ValueError(
                f"Schedule needs one size per segment start, got starts="
                f"{self.starts} and sizes={self.sizes}"
            )
        previous = -1
        for start, size in zip(self.starts, self.sizes, strict=True):
            start = check_count(start, "Schedule segment start")
            if previous < 0 and start != 0:
                raise ValueError(
                    f"Schedule segments must start at step 0, got starts={self.starts}"
                )
            if start <= previous:
                raise ValueError(f"Schedule segment starts must increase, got {self.starts}")
            self.rules.check(size, start)
            previous = start

    @property
    def segmented(self) -> bool:
        """True when the size is known in closed form from segments."""
        return self.fn is None

    def __call__(self, step: int) -> int:
        """The global batch size `B(step)`."""
        step = check_count(step, "step")
        if self.fn is not None:
            return self.rules.check(self.fn(step), step)
        return self.sizes[bisect.bisect_right(self.starts, step) - 1]

    def to_config(self) -> dict[str, Any]:
        """A dict that `from_config` turns back into an equal schedule (JSON-able).

        Examples:
          >>> from rampup import from_config, stepwise
          >>> s = stepwise(256, {1000: 0.5}, unit="samples")
          >>> s.to_config()["boundaries_and_scales"]
          {'1000': 0.5}
          >>> from_config(s.to_config()) == s
          True
        """
        if self.fn is not None:
            raise ValueError(
                "a from_fn schedule has no config; use piecewise() or another builder "
                "to write a schedule down"
            )
        return json.loads(self.config)

    @property
    def fingerprint(self) -> str:
        """A short stable string that identifies the schedule in checkpoint states."""
        if self.fn is not None:
            text = json.dumps(
                {"type": "fn", "name": self.name, **self.rules.config()}, sort_keys=True
            )
        else:
            text = self.config
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def fingerprint_at(self, step: int) -> str:
        """The fingerprint a checkpoint state at `step` records: the whole schedule's here.

        An online schedule (`AdaptiveSchedule`) answers for the sizes of the
        steps before `step` only, the part of it a state at `step` depends on.
        """
        return self.fingerprint

    @property
    def revision(self) -> int:
        """How many times the schedule changed; 0 forever unless decided online."""
        return 0

    @property
    def decided_until(self) -> int | None:
        """The first step whose size may still change; None when every step is fixed."""
        return None

    def snapshot(
        self, since: int = 0
    ) -> tuple[int, int, tuple[int, ...], tuple[int, ...], int | None]:
        """`(revision, generation, starts, sizes, decided_until)`, consistent with one another.

        `starts` and `sizes` hold the segments from index `since` on; `generation`
        counts the restores of an online schedule, which may replace earlier segments.
        """
        return self.revision, 0, self.starts[since:], self.sizes[since:], self.decided_until

    def undecided(self, step: int, decided_until: int) -> Exception:
        """The error for a size asked at `step`, which is not decided yet."""
        return ValueError(
            f"the batch size at step {step} is not decided yet (steps < {decided_until} are)"
        )

    def __str__(self) -> str:
        if self.fn is not None:
            return f"Schedule(from_fn, name={self.name!r})"
        parts = ", ".join(f"{s}: {b}" for s, b in zip(self.starts, self.sizes, strict=True))
        return f"Schedule({json.loads(self.config)['type']}, step -> size {{{parts}}})"


def _thresholds_to_steps(
    thresholds: list[tuple[int, int]], unit: str, tokens_per_sample: int | None
) -> tuple[list[int], list[int]]:
    """Turns (threshold, size) pairs into (step, size) segment starts.

    A sample or token threshold takes effect at the first step whose offset
    reaches it, so a segment may end up empty and is then dropped.
    """
    if unit == "steps":
        return [t for t, _ in thresholds], [b for _, b in thresholds]
    if unit == "tokens":
        if tokens_per_sample is None:
            raise ValueError("unit='tokens' needs tokens_per_sample, the tokens in one sample")
        thresholds = [(-(-t // tokens_per_sample), b) for t, b in thresholds]
    starts, sizes = [0], [thresholds[0][1]]
    step = offset = 0
    for threshold, size in thresholds[1:]:
        if threshold > offset:
            n = -(-(threshold - offset) // sizes[-1])
            step, offset = step + n, offset + n * sizes[-1]
            starts.append(step)
            sizes.append(size)
        else:
            sizes[-1] = size
    return starts, sizes


def _build(
    kind: str,
    thresholds: list[tuple[int, int]],
    params: dict[str, Any],
    *,
    unit: str = "steps",
    tokens_per_sample: int | None = None,
    multiple_of: int = 1,
    min_size: int = 1,
    max_size: int | None = None,
) -> Schedule:
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r} is not valid; valid units: {', '.join(UNITS)}")
    if tokens_per_sample is not None:
        tokens_per_sample = check_size(tokens_per_sample, "tokens_per_sample")
    rules = Rules(multiple_of, min_size, max_size)
    raw_starts, raw_sizes = _thresholds_to_steps(thresholds, unit, tokens_per_sample)
    starts: list[int] = []
    sizes: list[int] = []
    for start, size in zip(raw_starts, raw_sizes, strict=True):
        rules.check(size, start)
        if sizes and sizes[-1] == size:
            continue
        starts.append(start)
        sizes.append(size)
    config = {"type": kind, **params}
    if unit != "steps":
        config["unit"] = unit
    if tokens_per_sample is not None:
        config["tokens_per_sample"] = tokens_per_sample
    config.update(rules.config())
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return Schedule(tuple(starts), tuple(sizes), text, rules)


def constant(size: int, **options: Any) -> Schedule:
    """The same size at every step.

    Examples:
      >>> s = constant(32)
      >>> s(0), s(10_000)
      (32, 32)

    Args:
      size: the global batch size, an int >= 1.
      **options: `multiple_of`, `min_size`, `max_size`.

    Returns:
      The schedule `B(k) = size`.
    """
    size = check_size(size, "constant")
    return _build("constant", [(0, size)], {"size": size}, **options)


def stepwise(
    batch_size: int,
    boundaries_and_scales: _Scales,
    cumulative: bool = False,
    **options: Any,
) -> Schedule:
    """The xLSTM grain module's rule: the latest boundary's scale applies.

    Examples:
      >>> s = stepwise(256, {0: 0.25, 1000: 0.5, 2000: 1.0})
      >>> [s(k) for k in (0, 999, 1000, 2000)]
      [64, 64, 128, 256]

      With `cumulative=True` the scales multiply, as in optax's
      `piecewise_constant_schedule`:

      >>> s = stepwise(256, {1000: 2.0, 2000: 2.0}, cumulative=True)
      >>> [s(k) for k in (0, 1000, 2000)]
      [256, 512, 1024]

    Args:
      batch_size: the base size, used before the first boundary.
      boundaries_and_scales: boundary -> scale; keys are ints or int-like strings.
      cumulative: multiply the scales of all boundaries reached (optax style)
        instead of applying the latest one alone.
      **options: `unit`, `tokens_per_sample`, `multiple_of`, `min_size`, `max_size`.

    Returns:
      The schedule with `B(k) = int(batch_size * f_b)` for the largest `b <= k`.
    """
    batch_size = check_size(batch_size, "stepwise batch_size")
    cumulative = check_flag(cumulative, "stepwise cumulative")
    items = _sorted_boundaries(boundaries_and_scales, "stepwise")
    thresholds = [] if items and items[0][0] == 0 else [(0, batch_size)]
    product = 1.0
    for boundary, scale in items:
        scale = _check_scale(scale, boundary)
        product = product * scale if cumulative else scale
        size = int(batch_size * product)
        if size < 1:
            raise ValueError(
                f"stepwise: scale {scale} at boundary {boundary} gives batch size "
                f"int({batch_size} * {product:g}) = {size}; sizes must be >= 1, so the "
                f"scale must be >= {1 / batch_size:g}"
            )
        thresholds.append((boundary, size))
    params = {
        "batch_size": batch_size,
        "boundaries_and_scales": {str(b): float(s) for b, s in items},
        "cumulative": cumulative,
    }
    return _build("stepwise", thresholds, params, **options)


def piecewise(sizes: _Sizes, **options: Any) -> Schedule:
    """Absolute sizes, each from its threshold on.

    Examples:
      >>> print(piecewise({0: 16, 100: 32, 200: 64}))
      Schedule(piecewise, step -> size {0: 16, 100: 32, 200: 64})

      Thresholds in samples take effect at the first step whose offset
      reaches them: 100 samples are consumed after 7 steps of 16.

      >>> print(piecewise({0: 16, 100: 32}, unit="samples"))
      Schedule(piecewise, step -> size {0: 16, 7: 32})

    Args:
      sizes: threshold -> size; threshold 0 must be present.
      **options: `unit`, `tokens_per_sample`, `multiple_of`, `min_size`, `max_size`.

    Returns:
      The schedule with the size of the largest threshold reached.
    """
    items = _sorted_boundaries(sizes, "piecewise")
    if not items or items[0][0] != 0:
        raise ValueError(
            f"piecewise: threshold 0 is missing in {dict(sizes)!r}; the size at step 0 "
            "must be given, e.g. {0: 32, 1000: 64}"
        )
    thresholds = [(b, check_size(s, f"piecewise at threshold {b}")) for b, s in items]
    params = {"sizes": {str(b): s for b, s in thresholds}}
    return _build("piecewise", thresholds, params, **options)


def linear(start: int, increment: int, rampup_samples: int, final: int, **options: Any) -> Schedule:
    """Megatron-LM's `--rampup-batch-size start increment rampup_samples`.

    Examples:
      >>> s = linear(start=32, increment=32, rampup_samples=1000, final=128)
      >>> print(s)  # 64 from the step that reaches 334 samples (11 * 32 = 352), 96 from 667
      Schedule(linear, step -> size {0: 32, 11: 64, 16: 96, 20: 128})

    Args:
      start: the size at step 0.
      increment: the size grows by this much at a time.
      rampup_samples: samples consumed over the ramp.
      final: the size once more than `rampup_samples` samples are consumed.
      **options: `multiple_of`, `min_size`, `max_size`.

    Returns:
      The schedule `start + increment * floor(O(k) * n / rampup_samples)` while
      `O(k) <= rampup_samples`, `final` after, with `n = (final - start) // increment`,
      in exact integer arithmetic.
    """
    start = check_size(start, "linear start")
    final = check_size(final, "linear final")
    increment = check_size(increment, "linear increment")
    rampup_samples = check_count(rampup_samples, "linear rampup_samples")
    if final < start:
        raise ValueError(f"linear: final={final} is below start={start}; a ramp-up grows")
    if (final - start) % increment:
        raise ValueError(
            f"linear: final - start = {final - start} is not divisible by increment={increment}"
        )
    n = (final - start) // increment
    if n + 1 > LINEAR_MAX_SIZES and rampup_samples:
        raise ValueError(
            f"linear: start={start} to final={final} by increment={increment} is {n + 1:,} "
            f"distinct sizes; linear builds one segment per size and allows at most "
            f"{LINEAR_MAX_SIZES:,} (a jitted step also compiles once per size). Use an increment "
            f"of at least {-(-(final - start) // (LINEAR_MAX_SIZES - 1)):,} that divides "
            f"final - start = {final - start:,}"
        )
    params = {
        "start": start,
        "increment": increment,
        "rampup_samples": rampup_samples,
        "final": final,
    }
    if n == 0 or rampup_samples == 0:
        thresholds = [(0, final)]
    else:
        # Size start + i*increment from the first offset O with O * n // R == i.
        thresholds = [(-(-i * rampup_samples // n), start + i * increment) for i in range(n)]
        thresholds.append((rampup_samples, final))
    unit = options.pop("unit", "samples")
    if unit != "samples" or "tokens_per_sample" in options:
        raise ValueError(
            f"linear: the ramp counts samples; unit={unit!r} and "
            "tokens_per_sample are not options of linear"
        )
    return _build("linear", thresholds, params, unit="samples", **options)


MEGATRON_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
"""The suffixes of Megatron-LM's schedule numbers, upper or lower case."""

MEGATRON_MAX_DIGITS = 30
"""A number in a Megatron-LM schedule is below 10^(MEGATRON_MAX_DIGITS + 1)."""


def _megatron_number(text: str, what: str, entry: str) -> int:
    """A Megatron-LM schedule number (`250B`, `2.4B`, `768`) as an exact int >= 0."""
    body, scale = text, 1
    if body[-1:].upper() in MEGATRON_SUFFIXES:
        body, scale = body[:-1], MEGATRON_SUFFIXES[body[-1].upper()]
    try:
        value = decimal.Decimal(body)
    except decimal.InvalidOperation:
        value = decimal.Decimal("NaN")
    if value.is_finite() and value.adjusted() <= MEGATRON_MAX_DIGITS:
        with decimal.localcontext(prec=2 * MEGATRON_MAX_DIGITS):  # exact, unlike a float
            value *= scale
    if (
        not value.is_finite()
        or value < 0
        or value.adjusted() > MEGATRON_MAX_DIGITS
        or value != value.to_integral_value()
    ):
        raise ValueError(
            f"from_megatron: {what} {text!r} in entry {entry!r} is not a whole number >= 0; "
            "numbers are integers or decimals with an optional K, M, B or T suffix "
            f"(10^3, 10^6, 10^9, 10^12) that make a whole number below "
            f"10^{MEGATRON_MAX_DIGITS + 1}, e.g. 768, 250B, 2.4B"
        )
    return int(value)


def _megatron_text(value: int) -> str:
    """`value` with the largest suffix that keeps it whole: 250000000000 -> '250B'."""
    for suffix, scale in reversed(MEGATRON_SUFFIXES.items()):
        if value >= scale and value % scale == 0:
            return f"{value // scale}{suffix}"
    return str(value)


def from_megatron(schedule: str, *, seq_length: int | None = None, **options: Any) -> Schedule:
    """Megatron-LM's `--step-batch-size-schedule`, as its users write it.

    Examples:
      >>> s = from_megatron("0:16 100:32, 1K:64")
      >>> [s(k) for k in (0, 6, 7, 34, 35)]
      [16, 16, 32, 32, 64]

    Args:
      schedule: `"THRESHOLD:BATCH_SIZE"` pairs separated by spaces or commas,
        e.g. `"0:768 250B:1536 500B:3072"`. A number may carry a K, M, B or T
        suffix (upper or lower case: 10^3, 10^6, 10^9, 10^12) and decimals
        (`2.4B`), and must come out whole. The batch size at step `k` is the size
        of the last entry whose threshold is at most the samples consumed before
        step `k`. Entries are sorted by threshold, as Megatron-LM sorts them;
        the first threshold must be 0, no two equal, every size >= 1.
      seq_length: the thresholds are tokens, converted to samples as
        Megatron-LM does: `threshold // seq_length`. None: they are samples.
      **options: `multiple_of`, `min_size`, `max_size`.

    Returns:
      The schedule, with sample thresholds.
    """
    if not isinstance(schedule, str):
        raise TypeError(
            f"from_megatron: the schedule is Megatron-LM's --step-batch-size-schedule "
            f"string, e.g. '0:768 250B:1536', got {schedule!r}"
        )
    if seq_length is not None:
        seq_length = check_count(seq_length, "from_megatron seq_length", 1)
    entries = schedule.replace(",", " ").split()
    if not entries:
        raise ValueError(
            "from_megatron: the schedule is empty; give THRESHOLD:BATCH_SIZE pairs, "
            "e.g. '0:768 250B:1536'"
        )
    given = []
    for entry in entries:
        threshold, colon, size = entry.partition(":")
        if not colon or not threshold or not size:
            raise ValueError(
                f"from_megatron: entry {entry!r} is not THRESHOLD:BATCH_SIZE, e.g. '250B:1536'"
            )
        batch = _megatron_number(size, "batch size", entry)
        if batch < 1:
            raise ValueError(
                f"from_megatron: batch size {size!r} in entry {entry!r} is not valid; "
                "batch sizes must be >= 1"
            )
        given.append((_megatron_number(threshold, "threshold", entry), batch))
    given.sort(key=lambda pair: pair[0])
    div = seq_length or 1

    def samples(threshold: int) -> str:
        if seq_length is None:
            return f"{threshold:,} samples"
        return f"{threshold:,} tokens // seq_length={seq_length} = {threshold // div:,} samples"

    if given[0][0] // div != 0:
        raise ValueError(
            f"from_megatron: the first threshold is {samples(given[0][0])}; it must be 0 "
            "(the size from the start), e.g. '0:768 250B:1536'"
        )
    for (low, _), (high, _) in itertools.pairwise(given):
        if low // div == high // div:
            raise ValueError(
                f"from_megatron: two thresholds are the same: {samples(low)} and "
                f"{samples(high)}; thresholds must be strictly increasing"
            )
    unit_option = options.pop("unit", "samples")
    if unit_option != "samples" or "tokens_per_sample" in options:
        raise ValueError(
            f"from_megatron: the thresholds are samples, or tokens with seq_length; "
            f"unit={unit_option!r} and tokens_per_sample are not options of from_megatron"
        )
    params: dict[str, Any] = {
        "schedule": " ".join(f"{_megatron_text(t)}:{b}" for t, b in given),
    }
    if seq_length is not None:
        params["seq_length"] = seq_length
    thresholds = [(t // div, b) for t, b in given]
    return _build("megatron", thresholds, params, unit="samples", **options)


def from_fn(
    fn: Callable[[int], int],
    *,
    name: str | None = None,
    max_step: int = FN_MAX_STEP,
    **options: Any,
) -> Schedule:
    """Any callable `step -> size`, checked at each step it is asked for.

    A plan finds the offset of step `k` by evaluating `fn` at every step
    before it and keeps the runs of equal size (memory grows with the number
    of size changes). A function that takes an int64 array of steps and
    returns an int array of sizes is evaluated in vectorized chunks; any
    other is called once per step.

    Examples:
      >>> def ramp(step):
      ...     return 16 if step < 100 else 32
      >>> s = from_fn(ramp, name="ramp-v1")
      >>> s(99), s(100)
      (16, 32)
      >>> s.segmented  # a Plan evaluates it step by step
      False

    Args:
      fn: returns the global batch size at a step; a pure function of the
        step. It must pickle to reach spawned workers (a module-level
        function, not a lambda).
      name: the schedule's identity in checkpoint states: a state restores
        only into a schedule of the same name (and rules). Default: the
        function's `module.qualname`, for a function defined at module level;
        required for a lambda, a closure, a `functools.partial` or a callable
        object, which have no stable name of their own.
      max_step: a plan refuses, at once, any step (or position) at or past
        this step, so that no state or query makes it scan without bound.
        Raise it for longer runs; the scan to step `k` costs `k` calls of
        `fn` (or `k / 65536` vectorized calls).
      **options: `multiple_of`, `min_size`, `max_size`.

    Returns:
      A schedule without closed-form segments.
    """
    if not callable(fn):
        raise TypeError(f"from_fn: {fn!r} is not callable")
    if name is None:
        name = _stable_name(fn)
    elif not isinstance(name, str) or not name.strip():
        raise TypeError(f"from_fn: name must be a non-empty str, got {name!r}")
    max_step = check_count(max_step, "from_fn max_step", 1)
    rules = Rules(**options)
    return Schedule((0,), (), "", rules, fn, name, max_step)


def _stable_name(fn: Callable[[int], int]) -> str:
    """`module.qualname` of a module-level function; anything else must be named."""
    qualname = getattr(fn, "__qualname__", None)
    module = getattr(fn, "__module__", None)
    if not isinstance(fn, types.FunctionType) or not qualname or not module or "<" in qualname:
        raise ValueError(
            f"from_fn: {fn!r} has no stable identity (a lambda, closure, functools.partial or "
            "callable object), so a checkpoint state could restore into another function or be "
            "refused by the next process. Pass name='...' naming this schedule, e.g. "
            "from_fn(fn, name='my-ramp-v1'); change the name when the function changes"
        )
    return f"{module}.{qualname}"


CURVE_MAX_STEPS = 10**7
"""The most steps `from_curve` reads its curve at before `until`: it calls it once per step."""


def from_curve(
    curve: Callable[[int], float],
    *,
    unit: str = "tokens",
    tokens_per_sample: int | None = None,
    sizes: Sequence[int],
    until: int,
) -> Schedule:
    """A legal ramp from a fitted curve of the critical batch size, e.g. `a * t ** b`.

    The curve is read at every step `k` whose `t(k)` is at most `until`, where
    `t(k)` is what was consumed before step `k`: `k` steps, `O(k)` samples or
    `O(k) * tokens_per_sample` tokens. The size at such a step is the largest
    entry of `sizes` at most `curve(t(k))` (the smallest entry where none is),
    or the size of the step before when that is larger: the size never shrinks,
    even where the curve dips. Later steps keep the size of the last step read.

    The result is the `piecewise` schedule of those sizes by step, an ordinary
    schedule: its config (so its fingerprint, and `to_config` / `from_config`)
    holds the steps where the size changes, not the curve, which need not be
    nameable.

    Examples:
      >>> import rampup
      >>> s = rampup.from_curve(lambda t: t / 4, unit="samples", sizes=[8, 16, 32], until=500)
      >>> print(s)  # t / 4 reaches 16 after 64 samples (step 8), 32 after 128 (step 12)
      Schedule(piecewise, step -> size {0: 8, 8: 16, 12: 32})
      >>> rampup.from_config(s.to_config()) == s
      True

    Args:
      curve: the batch size wanted after `t` units, a function of an int that
        returns a finite number.
      unit: what `t` and `until` count: "tokens" (default), "samples" or "steps".
      tokens_per_sample: tokens in one sample, for unit="tokens".
      sizes: the legal global batch sizes (for example multiples of the
        data-parallel size), ints >= 1 in ascending order.
      until: the last `t` the curve is read at, an int >= 0.

    Returns:
      The schedule.

    Raises:
      ValueError: bad sizes, unit or until; a curve value that is not finite
        (naming the step and `t`); `until` not reached within `CURVE_MAX_STEPS` steps.
    """
    if not callable(curve):
        raise TypeError(f"from_curve: curve must be a function of t, got {curve!r}")
    if unit not in UNITS:
        raise ValueError(f"from_curve: unit={unit!r} is not valid; valid units: {', '.join(UNITS)}")
    scale = 1  # t per sample consumed
    if unit == "tokens":
        if tokens_per_sample is None:
            raise ValueError(
                "from_curve: unit='tokens' needs tokens_per_sample, the tokens in one sample"
            )
        scale = check_size(tokens_per_sample, "from_curve tokens_per_sample")
    elif tokens_per_sample is not None:
        raise ValueError(
            f"from_curve: tokens_per_sample={tokens_per_sample!r} is for unit='tokens'; "
            f"with unit={unit!r} leave it out"
        )
    legal = _ascending_sizes(sizes)
    until = check_count(until, "from_curve until")
    starts: dict[int, int] = {}
    size = 0
    step = offset = 0
    while True:
        t = step if unit == "steps" else offset * scale
        if t > until:
            break
        wanted = _curve_value(curve, t, step)
        snapped = legal[max(bisect.bisect_right(legal, wanted) - 1, 0)]
        if snapped > size:
            starts[step] = size = snapped
            if size == legal[-1]:  # nothing larger to grow to
                break
        offset += size
        step += 1
        if step >= CURVE_MAX_STEPS:
            raise ValueError(
                f"from_curve: t reaches only {t:,} of until={until:,} {unit} in "
                f"{CURVE_MAX_STEPS:,} steps (at size {size}); from_curve reads the curve once "
                "per step, so give a smaller until (the size stays constant after it) or "
                "larger sizes"
            )
    return piecewise(starts)


def _ascending_sizes(sizes: Any) -> list[int]:
    if isinstance(sizes, (str, bytes, Mapping)) or not isinstance(sizes, Iterable):
        raise TypeError(f"from_curve: sizes must be a list of batch sizes, got {sizes!r}")
    legal = [check_size(v, "from_curve sizes") for v in sizes]
    if not legal:
        raise ValueError(
            "from_curve: sizes is empty; give the legal batch sizes, e.g. [32, 64, 128]"
        )
    for a, b in itertools.pairwise(legal):
        if b <= a:
            raise ValueError(
                f"from_curve: sizes must ascend strictly, but {b} follows {a} in {legal}; "
                f"e.g. {sorted(set(legal))}"
            )
    return legal


def _curve_value(curve: Callable[[int], float], t: int, step: int) -> float:
    value = curve(t)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"from_curve: curve({t}) at step {step} returned {value!r} "
            f"({type(value).__name__}); it must return a finite number"
        )
    if not math.isfinite(value):
        raise ValueError(
            f"from_curve: curve({t}) at step {step} is {value}; it must return a finite number"
        )
    return float(value)


_OPTIONS = ("unit", "tokens_per_sample", "multiple_of", "min_size", "max_size")
_PARAMS = {
    "constant": ("size",),
    "stepwise": ("batch_size", "boundaries_and_scales", "cumulative"),
    "piecewise": ("sizes",),
    "linear": ("start", "increment", "rampup_samples", "final"),
    "megatron": ("schedule", "seq_length"),
}
_OPTIONAL_PARAMS = ("cumulative", "seq_length")
_EXAMPLES = {
    "constant": '{"type": "constant", "size": 32}',
    "stepwise": '{"type": "stepwise", "batch_size": 256, '
    '"boundaries_and_scales": {"0": 0.25, "1000": 1.0}}',
    "piecewise": '{"type": "piecewise", "sizes": {"0": 16, "1000": 32}}',
    "linear": '{"type": "linear", "start": 32, "increment": 32, "rampup_samples": 100000, '
    '"final": 256}',
    "megatron": '{"type": "megatron", "schedule": "0:768 250B:1536", "seq_length": 4096}',
}
_BUILDERS: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "stepwise": stepwise,
    "piecewise": piecewise,
    "linear": linear,
    "megatron": from_megatron,
}


def from_config(config: Mapping[str, Any]) -> Schedule:
    """Builds a schedule from `{"type": ..., ...}`, as written by `Schedule.to_config`.

    Examples:
      >>> s = from_config({"type": "piecewise", "sizes": {"0": 16, "1000": 32}})
      >>> print(s)
      Schedule(piecewise, step -> size {0: 16, 1000: 32})
      >>> s = from_config({"type": "linear", "start": 16, "increment": 16,
      ...                  "rampup_samples": 64, "final": 32})
      >>> s(3), s(4)  # 64 samples are consumed after 4 steps of 16
      (16, 32)

    Args:
      config: a dict with "type" one of constant, stepwise, piecewise, linear,
        megatron (`from_megatron`), that builder's arguments by name, and any of
        its options.

    Returns:
      The schedule.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"a schedule config is a dict with a 'type', got {config!r}")
    if "type" not in config:
        raise ValueError(
            f"a schedule config needs a 'type' key, one of {', '.join(TYPES)}; got the keys "
            f"{sorted(map(str, config))}, e.g. {_EXAMPLES['constant']}"
        )
    kind = config["type"]
    if not isinstance(kind, str) or kind not in _BUILDERS:
        raise ValueError(f"schedule type {kind!r} is not known; valid types: {', '.join(TYPES)}")
    allowed = set(_PARAMS[kind]) | set(_OPTIONS) | {"type"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(
            f"{kind} schedule: unknown keys {unknown}; valid keys: {sorted(allowed - {'type'})}"
        )
    missing = [k for k in _PARAMS[kind] if k not in config and k not in _OPTIONAL_PARAMS]
    if missing:
        raise ValueError(
            f"{kind} schedule: missing key{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(repr, missing))}; e.g. {_EXAMPLES[kind]}"
        )
    kwargs = {k: v for k, v in config.items() if k != "type"}
    return _BUILDERS[kind](**kwargs)
