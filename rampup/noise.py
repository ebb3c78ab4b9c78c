"""The simple gradient noise scale `B_simple = tr(Sigma) / |G|^2`, measured online.

McCandlish et al., "An Empirical Model of Large-Batch Training" (2018),
Appendix A: the expected squared norm of a mean gradient over `B` samples is
`|G|^2 + tr(Sigma) / B`. Two batch sizes seen at the same step (in
data-parallel training: one device's gradient over `B_small` samples and the
all-reduced one over `B_big`) give unbiased estimates of both terms:

    |G|^2    ~= (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~= (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Each estimate is noisy (either can come out negative), so each is smoothed by
an exponential moving average before the ratio is taken.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from rampup.batching import VERSION_KEY
from rampup.schedules import check_count, check_size

NOISE_STATE_VERSION = 1
BETA_KEY = "beta"
COUNT_KEY = "count"
SQ_NORM_KEY = "sq_norm"
TRACE_KEY = "trace"


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


def _float_text(value: float) -> str:
    """A float as exact text (`float.hex`): checkpoint states hold ints and strings only."""
    return float(value).hex()


def _text_float(text: Any, what: str) -> float:
    if not isinstance(text, str):
        raise ValueError(f"noise scale state: {what} must be a float.hex() string, got {text!r}")
    try:
        value = float.fromhex(text)
    except ValueError:
        raise ValueError(
            f"noise scale state: {what}={text!r} is not a float.hex() string"
        ) from None
    if not math.isfinite(value):
        raise ValueError(
            f"noise scale state: {what}={text!r} is not finite; a state this estimator "
            "wrote holds finite numbers only"
        )
    return value


class NoiseScale:
    """The two-batch-size estimator of the simple gradient noise scale.

    Both `|G|^2` and `tr(Sigma)` are smoothed by an exponential moving average
    with bias correction (as Adam's moments): after `n` updates the average is
    divided by `1 - beta**n`, so the first estimates are not pulled towards 0.
    The ratio `.value` is the same with or without the correction (both terms
    carry the same factor); the correction matters for `.sq_norm` and `.trace`.

    Examples:
      With `|G|^2 = 1` and `tr(Sigma) = 32`, a mean gradient over `B` samples has
      an expected squared norm of `1 + 32 / B`: 5.0 over 8 samples, 1.5 over 64.

      >>> noise = NoiseScale(beta=0.5)
      >>> noise.update(small_sq_norm=5.0, big_sq_norm=1.5, small_size=8, big_size=64)
      32.0
      >>> noise.sq_norm, noise.trace  # bias-corrected: not pulled towards 0
      (1.0, 32.0)
      >>> round(noise.update(small_sq_norm=9.0, big_sq_norm=2.0, small_size=8, big_size=64), 2)
      53.33

      The state restores the estimator bit for bit:

      >>> restored = NoiseScale(beta=0.5)
      >>> restored.set_state(noise.get_state())
      >>> restored.value == noise.value
      True

    Args:
      beta: the EMA decay in `[0, 1)`; 0 keeps only the latest update. Larger
        is smoother and slower to follow a changing noise scale.
    """

    def __init__(self, beta: float = 0.99) -> None:
        beta = _finite(beta, "beta")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta={beta} is not valid; the EMA decay must be in [0, 1)")
        self.beta = beta
        self.count = 0
        self._sq_norm = 0.0
        self._trace = 0.0

    def update(
        self, small_sq_norm: float, big_sq_norm: float, small_size: int, big_size: int
    ) -> float | None:
        """Adds one step's measurement.

        Args:
          small_sq_norm: `|G_small|^2`, the squared norm of a mean gradient over
            `small_size` samples (one device's, before the all-reduce).
          big_sq_norm: `|G_big|^2`, over `big_size` samples (the all-reduced one).
          small_size: samples behind the small gradient, an int >= 1.
          big_size: samples behind the big gradient, an int > `small_size`.

        Returns:
          The updated `.value`.
        """
        small = _finite(small_sq_norm, "small_sq_norm")
        big = _finite(big_sq_norm, "big_sq_norm")
        if small < 0 or big < 0:
            raise ValueError(
                f"squared norms are >= 0, got small_sq_norm={small}, big_sq_norm={big}"
            )
        b_small = check_size(small_size, "small_size")
        b_big = check_size(big_size, "big_size")
        if b_big <= b_small:
            raise ValueError(
                f"big_size={b_big} must be larger than small_size={b_small}: the estimator "
                "compares a gradient over few samples with one over more (e.g. one device's "
                "and the all-reduced one)"
            )
        sq_norm = (b_big * big - b_small * small) / (b_big - b_small)
        trace = (small - big) / (1.0 / b_small - 1.0 / b_big)
        averages = (
            self.beta * self._sq_norm + (1.0 - self.beta) * sq_norm,
            self.beta * self._trace + (1.0 - self.beta) * trace,
        )
        if not all(map(math.isfinite, averages)):
            raise ValueError(
                f"the measurement small_sq_norm={small}, big_sq_norm={big} (sizes {b_small} and "
                f"{b_big}) overflows a float: |G|^2 estimate {sq_norm}, tr(Sigma) estimate "
                f"{trace}. Pass the squared norms in a smaller unit (e.g. divided by a constant "
                "factor: the noise scale is their ratio); the estimator is left unchanged"
            )
        self._sq_norm, self._trace = averages
        self.count += 1
        return self.value

    def _corrected(self, average: float) -> float | None:
        if self.count == 0:
            return None
        return average / (1.0 - self.beta**self.count)

    @property
    def sq_norm(self) -> float | None:
        """The smoothed estimate of `|G|^2`; None before the first update."""
        return self._corrected(self._sq_norm)

    @property
    def trace(self) -> float | None:
        """The smoothed estimate of `tr(Sigma)`; None before the first update."""
        return self._corrected(self._trace)

    @property
    def value(self) -> float | None:
        """`B_simple = tr(Sigma) / |G|^2`, in samples.

        None before the first update, and while the smoothed `|G|^2` is not
        positive: the gradient is then below what the two batch sizes resolve,
        so no noise scale is measured (rather than an infinite or negative one).
        """
        sq_norm, trace = self.sq_norm, self.trace
        if sq_norm is None or trace is None or sq_norm <= 0:
            return None
        return trace / sq_norm

    def get_state(self) -> dict[str, Any]:
        """The estimator's state, JSON-able: ints and exact float text (`float.hex`)."""
        return {
            VERSION_KEY: NOISE_STATE_VERSION,
            BETA_KEY: _float_text(self.beta),
            COUNT_KEY: self.count,
            SQ_NORM_KEY: _float_text(self._sq_norm),
            TRACE_KEY: _float_text(self._trace),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a state written by `get_state`, bit for bit.

        Raises:
          ValueError: the state is malformed, of another version or of another `beta`.
        """
        keys = (VERSION_KEY, BETA_KEY, COUNT_KEY, SQ_NORM_KEY, TRACE_KEY)
        if not isinstance(state, dict) or any(k not in state for k in keys):
            raise ValueError(f"not a noise scale state: expected keys {keys}, got {state!r}")
        if state[VERSION_KEY] != NOISE_STATE_VERSION:
            raise ValueError(
                f"noise scale state version {state[VERSION_KEY]!r} is not "
                f"supported; this rampup reads version {NOISE_STATE_VERSION}"
            )
        beta = _text_float(state[BETA_KEY], BETA_KEY)
        if beta != self.beta:
            raise ValueError(
                f"the noise scale state was written with beta={beta}, this "
                f"estimator has beta={self.beta}; build it with beta={beta}"
            )
        count = check_count(state[COUNT_KEY], "noise scale state count")
        sq_norm = _text_float(state[SQ_NORM_KEY], SQ_NORM_KEY)
        trace = _text_float(state[TRACE_KEY], TRACE_KEY)
        self.count, self._sq_norm, self._trace = count, sq_norm, trace

    def __repr__(self) -> str:
        return f"NoiseScale(beta={self.beta}, count={self.count}, value={self.value})"
