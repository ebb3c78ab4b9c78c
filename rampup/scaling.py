"""Hyperparameters that follow the batch: a learning rate derived from the plan.

    value(k) = base(t(k)) * rule(B(k) / reference_size)

`t(k)` is the step `k`, the samples consumed before it `O(k)`, or
`O(k) * tokens_per_sample`, so a warmup or a decay written in samples or
tokens stays there whatever the ramp does. The value is a pure function of
the step: a run resumed at any step gets the same value with no state.

`resolve` checks the arguments once and returns a `Scaling`, which the
framework adapters turn into their own schedule types (they read the
segments' factors from it and never compute a factor themselves).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from rampup.plan import Plan
from rampup.schedules import UNITS, Schedule, check_count, check_size

RULES: dict[str, Callable[[float], float]] = {
    "sqrt": math.sqrt,  # Adam family: Malladi et al. 2022
    "linear": float,  # SGD: Goyal et al. 2017
    "none": lambda ratio: 1.0,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _as_real(value: Any) -> float | None:
    """A number, or a 0-d array of one (an optax schedule's value), as a float; else None."""
    if isinstance(value, (str, bytes, bool, np.bool_)) or value is None:
        return None
    if not _is_number(value) and getattr(value, "ndim", None) != 0:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class SegmentTable(NamedTuple):
    """`Scaling.segment_table()`: one entry per segment of the batch schedule.

    Attributes:
      first_steps: the first step of each segment (int64).
      t_offsets: `t` at each segment's first step (0 for `unit="steps"`).
      t_per_step: how much `t` grows per step inside the segment (0 for steps).
      factors: `rule(size / reference_size)` of each segment.
    """

    first_steps: np.ndarray
    t_offsets: np.ndarray
    t_per_step: np.ndarray
    factors: np.ndarray


@dataclass(frozen=True)
class Scaling:
    """Checked arguments of `scaled`, shared by the framework adapters.

    Attributes:
      base: the base value (a float) or a callable of `t`.
      plan: the plan of the batch schedule.
      rule: the rule's name, or the callable itself.
      reference_size: the batch size `base` was tuned for.
      unit: "steps", "samples" or "tokens": what `t` counts.
      tokens_per_sample: tokens in one sample (unit "tokens" only), else None.
    """

    base: float | Callable[[Any], Any]
    plan: Plan
    rule: str | Callable[[float], float]
    reference_size: int
    unit: str
    tokens_per_sample: int | None

    def factor(self, size: int, step: int) -> float:
        """`rule(size / reference_size)`, checked to be a finite number >= 0."""
        rule = RULES[self.rule] if isinstance(self.rule, str) else self.rule
        ratio = size / self.reference_size
        value = rule(ratio)
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(
                f"rule {self.rule!r} gives {value!r} for the ratio {ratio:g} (batch size {size} "
                f"at step {step}, reference_size={self.reference_size}); a rule must return a "
                "finite number >= 0"
            )
        return float(value)

    def segment_factors(self) -> list[tuple[int, int, int, float]]:
        """`(first_step, offset, size, factor)` per segment of a segmented schedule.

        Raises:
          ValueError: the schedule is a `from_fn` one, which has no segments.
        """
        if self.plan.schedule.decided_until is not None:
            raise ValueError(
                f"{self.plan.schedule} is decided online: a compiled graph would keep only the "
                "decisions made so far. Compute rampup.scaled(...)(step) on the host at each "
                "step and pass the value in (optax.inject_hyperparams, the optimizer's lr)"
            )
        if not self.plan.schedule.segmented:
            raise ValueError(
                "a from_fn schedule has no segments to look up in a compiled graph; write it "
                "down as segments first, e.g. rampup.piecewise({s.first_step: s.size for s in "
                "rampup.Plan(schedule).segments(until_step)}), or use rampup.scaled on the host"
            )
        return [
            (s.first_step, s.offset, s.size, self.factor(s.size, s.first_step))
            for s in self.plan.segments()
        ]

    def segment_table(self) -> SegmentTable:
        """The segments as arrays, for a compiled lookup (optax, Keras, tf).

        A step `k` finds its segment `i` by `searchsorted(first_steps, k, "right") - 1`;
        then `t(k) = t_offsets[i] + (k - first_steps[i]) * t_per_step[i]` (for
        `unit="steps"`, `t` is `k` itself) and the value is `base(t(k)) * factors[i]`.
        The float arrays are float64; an adapter casts them to its float type.

        Raises:
          ValueError: as `segment_factors`.
        """
        segments = self.segment_factors()
        # t per sample: 0 for steps (t is the step itself), 1 for samples, tokens per sample.
        per_t = 0 if self.unit == "steps" else self.tokens_per_sample or 1
        return SegmentTable(
            np.array([s[0] for s in segments], np.int64),
            np.array([float(s[1] * per_t) for s in segments]),
            np.array([float(s[2] * per_t) for s in segments]),
            np.array([s[3] for s in segments]),
        )

    def t(self, step: int) -> int:
        """What `base` is a function of at `step`: the step, `O(step)` or its tokens."""
        if self.unit == "steps":
            return step
        samples = self.plan.offset(step)
        return samples if self.tokens_per_sample is None else samples * self.tokens_per_sample

    def __call__(self, step: int) -> float:
        """The scaled value at `step`."""
        step = check_count(step, "step")
        factor = self.factor(self.plan.size(step), step)
        t = self.t(step)
        base = self.base(t) if callable(self.base) else self.base
        value = _as_real(base)
        if value is None:
            shape = getattr(base, "shape", None)
            what = f"an array of shape {shape}" if shape is not None else type(base).__name__
            raise TypeError(
                f"base returned {base!r:.80} ({what}) at step {step} (t={t}, "
                f"unit={self.unit!r}); base must be a number or a function of t that returns "
                "one number (a float, an int or a 0-d array), e.g. lambda t: 3e-4 * min(1, "
                "t / 1000)"
            )
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"base gives {base!r} at step {step} (t={t}, unit={self.unit!r}); a base "
                "must be a finite number >= 0 (a float, or a function of t returning one), "
                "or the scaled value would be NaN, infinite or negative"
            )
        return value * factor


def _check_one_argument(rule: Callable[..., Any]) -> None:
    """Refuses a rule that cannot be called with the ratio alone, naming its parameters."""
    try:
        signature = inspect.signature(rule)
    except (TypeError, ValueError):  # a builtin without a signature: its call will tell
        return
    try:
        signature.bind(1.0)
    except TypeError:
        name = getattr(rule, "__qualname__", type(rule).__name__)
        raise TypeError(
            f"rule={name}{signature} cannot be called with one argument: a rule is a function "
            "of the ratio B(k) / reference_size alone, e.g. rule=lambda ratio: ratio ** 0.5, "
            "or a name: " + ", ".join(RULES)
        ) from None


def resolve(
    base: float | Callable[[Any], Any],
    schedule: Schedule | Plan,
    *,
    rule: str | Callable[[float], float] = "sqrt",
    reference_size: int | None = None,
    unit: str = "steps",
    tokens_per_sample: int | None = None,
) -> Scaling:
    """Checks the arguments of `scaled` (see there) and returns them as a `Scaling`."""
    plan = schedule if isinstance(schedule, Plan) else Plan(schedule)
    if not callable(base):
        if not _is_number(base):
            raise TypeError(
                f"base={base!r} ({type(base).__name__}) is neither a number nor a "
                "function of t; pass e.g. 3e-4 or an optax/Keras schedule"
            )
        if not math.isfinite(base):
            raise ValueError(f"base={base!r} is not a finite number")
        base = float(base)
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(
                f"rule={rule!r} is not known; valid rules: {', '.join(RULES)}, "
                "or a callable of the ratio B(k) / reference_size"
            )
    elif not callable(rule):
        raise TypeError(
            f"rule={rule!r} ({type(rule).__name__}) is neither a rule name "
            f"({', '.join(RULES)}) nor a callable of the ratio"
        )
    else:
        _check_one_argument(rule)
    if not isinstance(unit, str):
        raise TypeError(f"unit={unit!r} is not a string; valid units: {', '.join(UNITS)}")
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r} is not valid; valid units: {', '.join(UNITS)}")
    if unit == "tokens":
        if tokens_per_sample is None:
            raise ValueError("unit='tokens' needs tokens_per_sample, the tokens in one sample")
        tokens_per_sample = check_size(tokens_per_sample, "tokens_per_sample")
    elif tokens_per_sample is not None:
        raise ValueError(
            f"tokens_per_sample={tokens_per_sample!r} is only used with "
            f"unit='tokens', not unit={unit!r}"
        )
    if reference_size is None:
        if plan.schedule.decided_until is not None:
            raise ValueError(
                f"{plan.schedule} is decided online and has no largest size known in advance: "
                "pass reference_size, the batch size base was tuned for"
            )
        if not plan.schedule.segmented:
            raise ValueError(
                "a from_fn schedule has no known largest size: pass "
                "reference_size, the batch size base was tuned for"
            )
        reference_size = max(plan.schedule.sizes)
    reference_size = check_size(reference_size, "reference_size")
    scaling = Scaling(base, plan, rule, reference_size, unit, tokens_per_sample)
    if plan.schedule.segmented and plan.schedule.decided_until is None:
        scaling.segment_factors()  # a rule that fails on some segment fails now
    return scaling


def scaled(
    base: float | Callable[[Any], Any],
    schedule: Schedule | Plan,
    *,
    rule: str | Callable[[float], float] = "sqrt",
    reference_size: int | None = None,
    unit: str = "steps",
    tokens_per_sample: int | None = None,
) -> Scaling:
    """A hyperparameter that follows the batch size: `base(t(k)) * rule(B(k) / reference_size)`.

    Examples:
      >>> from rampup import piecewise
      >>> schedule = piecewise({0: 64, 100: 256})
      >>> lr = scaled(1e-3, schedule)  # tuned at the largest size, 256; sqrt(64 / 256) = 0.5
      >>> lr(0), lr(100)
      (0.0005, 0.001)
      >>> scaled(0.1, schedule, rule="linear")(0)
      0.025

      A warmup written in samples stays in samples whatever the ramp does:

      >>> warmup = scaled(lambda t: 1e-3 * min(1.0, t / 6400), schedule, unit="samples")
      >>> [warmup(k) for k in (0, 50, 100, 150)]  # t = 0, 3200, 6400, 19200 samples
      [0.0, 0.00025, 0.001, 0.001]

    Args:
      base: the value tuned at `reference_size`: a number, or a function of
        `t` (a warmup or decay, e.g. an optax schedule).
      schedule: the batch schedule (a `Schedule` or its `Plan`).
      rule: "sqrt" (Adam family, Malladi et al. 2022), "linear" (SGD, Goyal et
        al. 2017), "none", or a callable of the ratio `B(k) / reference_size`.
      reference_size: the batch size `base` was tuned for; default the
        schedule's largest size. Required for a `from_fn` schedule.
      unit: what `t` counts: "steps" (`t = k`), "samples" (`t = O(k)`, the
        samples before step `k`) or "tokens" (`O(k) * tokens_per_sample`).
      tokens_per_sample: tokens in one sample, with `unit="tokens"`.

    Returns:
      A function of the step `k` (an int >= 0) that returns a float: a
      `Scaling`, which pickles when `base` and `rule` do.
    """
    return resolve(
        base,
        schedule,
        rule=rule,
        reference_size=reference_size,
        unit=unit,
        tokens_per_sample=tokens_per_sample,
    )
