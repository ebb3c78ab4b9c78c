"""`rampup demo --cbs`: measure the critical batch size by branching, then ramp by it.

Least squares with noisy targets, `y = x @ w* + noise` with `x ~ N(0, I)`: the
gradient noise scale of the weights `w` is known in closed form,
`B_simple = (d + 1) + d * sigma**2 / |w - w*|**2`, and grows as the fit improves.
Training runs with batch size 4; at each checkpoint, `rampup.branches` gives
every batch size a pipeline that reads exactly the next `WINDOW` samples, each
branch trains from the checkpoint with its best learning rate of a grid, and
`rampup.critical_batch_size` reads their losses. A power law fitted to the
measurements becomes a legal schedule with `rampup.from_curve`.

One run's branch losses are noisy, so the demo trains `RUNS` runs that differ
in their data order (one shuffle seed each) and averages their losses; a
synthetic problem can afford that. NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rampup.batching import RampupBatches
from rampup.branching import branches, critical_batch_size
from rampup.plan import Plan
from rampup.schedules import Schedule, constant, from_curve

FEATURES = 16
NOISE = 1.0  # the targets' noise, sigma
NUM_SAMPLES = 1 << 14
RUNS = 128
BASE_SIZE = 4
BASE_LEARNING_RATE = 0.05
CHECKPOINTS = (12, 20, 28, 36)  # steps of the base run
WINDOW = 128  # samples every branch reads
SIZES = (2, 4, 8, 16, 32, 64, 128)
LEARNING_RATES = tuple(2.0 ** (-j / 4) for j in range(32))  # 1 down to 0.0045
TOLERANCE = 0.07
RAMP_SIZES = (4, 8, 12, 16, 24, 32, 48, 64)  # e.g. multiples of 4 devices


@dataclass(frozen=True)
class Problem:
    """The data and the optimum: rows of `x` then `y`, and `w*`."""

    source: np.ndarray
    optimum: np.ndarray


def make_problem(seed: int = 0) -> Problem:
    """`NUM_SAMPLES` rows of `FEATURES` standard normal features and a noisy target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM_SAMPLES, FEATURES))
    optimum = rng.normal(size=FEATURES)
    y = x @ optimum + NOISE * rng.normal(size=NUM_SAMPLES)
    return Problem(np.concatenate([x, y[:, None]], axis=1), optimum)


def noise_scale(weights: np.ndarray, optimum: np.ndarray) -> float:
    """The closed-form simple noise scale `tr(Sigma) / |G|^2`, averaged over the runs' `|w - w*|^2`.

    With `x ~ N(0, I)` the mean gradient is `G = w - w*` and the per-sample
    gradient covariance is `(|G|^2 + sigma^2) I + G G^T`.
    """
    sq = float(np.mean(np.sum((weights - optimum) ** 2, axis=-1)))
    return (FEATURES + 1) + FEATURES * NOISE**2 / sq


def excess_loss(weights: np.ndarray, optimum: np.ndarray) -> np.ndarray:
    """The expected loss above its floor `sigma^2 / 2`, in closed form: `|w - w*|^2 / 2`."""
    return 0.5 * np.sum((weights - optimum) ** 2, axis=-1)


def sgd_step(weights: np.ndarray, batch: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """One SGD step of the loss `(x @ w - y)^2 / 2` per run and learning rate.

    Args:
      weights: `(runs, rates, features)`.
      batch: `(runs, size, features + 1)`, the runs' batches.
      rates: `(rates,)` learning rates.
    """
    x, y = batch[..., :FEATURES], batch[..., FEATURES]
    residual = np.einsum("rbf,rlf->rlb", x, weights) - y[:, None, :]
    grad = np.einsum("rbf,rlb->rlf", x, residual) / batch.shape[1]
    return weights - rates[None, :, None] * grad


def pipelines(problem: Problem, schedule: Schedule) -> list[RampupBatches]:
    """One pipeline per run, each with its own shuffle."""
    return [
        RampupBatches(problem.source, schedule, shuffle_seed=run, on_schedule_change="continue")
        for run in range(RUNS)
    ]


@dataclass(frozen=True)
class Measurement:
    """One checkpoint: where it is, what theory says, what branching measured."""

    step: int
    samples: int
    weights: np.ndarray  # (runs, features)
    loss: float
    noise_scale: float
    losses: dict[int, float]
    critical: int


def measure(problem: Problem, weights: np.ndarray, states: list[dict]) -> dict[int, float]:
    """Each size's branch loss: the runs' mean excess loss at the best learning rate."""
    rates = np.array(LEARNING_RATES)
    losses = {}
    window: np.ndarray | None = None
    per_run = [branches(state, SIZES, samples=WINDOW) for state in states]
    for i, size in enumerate(SIZES):
        iterators = [
            RampupBatches(
                problem.source, run[i].schedule, shuffle_seed=r, on_schedule_change="continue"
            ).iter_from(run[i].state)
            for r, run in enumerate(per_run)
        ]
        w = np.repeat(weights[:, None, :], len(rates), axis=1)
        read = []
        with np.errstate(all="ignore"):  # the largest rates diverge; they are not the best
            for _ in range(per_run[0][i].steps):
                batch = np.stack([next(it) for it in iterators])
                read.append(batch)
                w = sgd_step(w, batch, rates)
            mean = np.mean(excess_loss(w, problem.optimum), axis=0)
        seen = np.concatenate(read, axis=1)
        if window is None:
            window = seen
        elif not np.array_equal(seen, window):
            raise AssertionError(f"the branch of size {size} read other samples than the others")
        losses[size] = float(np.min(np.where(np.isfinite(mean), mean, math.inf)))
    return losses


def run(seed: int = 0) -> list[Measurement]:
    """Trains the base runs and measures the critical batch size at each checkpoint."""
    problem = make_problem(seed)
    base = constant(BASE_SIZE)
    iterators = [p.iter_from(0) for p in pipelines(problem, base)]
    weights = np.zeros((RUNS, 1, FEATURES))
    rate = np.array([BASE_LEARNING_RATE])
    out = []
    step = 0
    for checkpoint in CHECKPOINTS:
        while step < checkpoint:
            weights = sgd_step(weights, np.stack([next(it) for it in iterators]), rate)
            step += 1
        w = weights[:, 0, :]
        losses = measure(problem, w, [it.get_state() for it in iterators])
        out.append(
            Measurement(
                step,
                Plan(base).offset(step),
                w,
                float(np.mean(excess_loss(w, problem.optimum))),
                noise_scale(w, problem.optimum),
                losses,
                critical_batch_size(losses, tolerance=TOLERANCE),
            )
        )
    return out


def fit(measurements: list[Measurement]) -> tuple[float, float]:
    """`(a, b)` of the power law `B(t) = a * t ** b` through the measurements (log-log)."""
    t = np.log([m.samples for m in measurements])
    b = np.log([m.critical for m in measurements])
    slope, intercept = np.polyfit(t, b, 1)
    return float(math.exp(intercept)), float(slope)


def main(seed: int = 0) -> int:
    """Runs the demo; prints the measurements, the fit and the schedule."""
    print(
        f"cbs demo: least squares, {FEATURES} features, target noise {NOISE}; {RUNS} runs "
        f"(one shuffle each) at batch size {BASE_SIZE}, learning rate {BASE_LEARNING_RATE}"
    )
    print(
        f"at each checkpoint, branches of sizes {', '.join(map(str, SIZES))} read the same "
        f"{WINDOW} samples; each keeps its best of {len(LEARNING_RATES)} learning rates; "
        f"tolerance {TOLERANCE:.0%} of the loss above its floor"
    )
    print()
    measurements = run(seed)
    head = ("step", "samples", "loss - floor", "noise scale (closed form)", "critical (measured)")
    print("  ".join(head))
    for m in measurements:
        cells = (
            f"{m.step}",
            f"{m.samples}",
            f"{m.loss:.3f}",
            f"{m.noise_scale:.1f}",
            f"{m.critical}",
        )
        print("  ".join(c.rjust(len(h)) for c, h in zip(cells, head, strict=True)))
    a, b = fit(measurements)
    print()
    print(f"fit through the measurements: B(t) = {a:.3g} * t ** {b:.3g} (t in samples)")
    # Not past the last measurement: the size stays at its value there.
    until = measurements[-1].samples
    schedule = from_curve(lambda t: a * t**b, unit="samples", sizes=RAMP_SIZES, until=until)
    print(f"from_curve(sizes={list(RAMP_SIZES)}, until={until}): {schedule}")
    print()
    print(Plan(schedule).table(samples=2 * until))
    return 0
