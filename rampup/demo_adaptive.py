"""`rampup demo --adaptive`: the batch size follows the measured gradient noise scale.

A linear regression with noisy targets: as the weights approach the optimum
the mean gradient shrinks while the per-sample noise stays, so the noise scale
`tr(Sigma) / |G|^2` grows and the adaptive schedule doubles the batch size.
The run saves its data, schedule, estimator and optimizer state halfway,
continues to the end, then rebuilds everything from the saved JSON and checks
that the second half replays identically: the same decisions and the same
batches (exit 1 if not). JAX (8 simulated CPU devices) by default, NumPy
without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rampup.adaptive import AdaptiveSchedule, GrowthPolicy
from rampup.batching import RampupBatches
from rampup.demo import digest
from rampup.noise import NoiseScale

FEATURES = 16
NUM_SAMPLES = 1 << 16
DEVICES = 8
STEPS = 80
LEARNING_RATE = 0.2
MOMENTUM = 0.5
BACKENDS = ("jax", "numpy")


def make_schedule() -> AdaptiveSchedule:
    """From 16 to at most 1024 samples, doubling after 4 proposals above the next size."""
    return AdaptiveSchedule(
        16, multiple_of=DEVICES, max_size=1024, lag=4, policy=GrowthPolicy(factor=2, patience=4)
    )


def make_source() -> np.ndarray:
    """Rows of 16 features and a target `x @ w* + noise`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_SAMPLES, FEATURES)).astype(np.float32)
    w_true = rng.normal(size=FEATURES).astype(np.float32)
    y = x @ w_true + rng.normal(size=NUM_SAMPLES).astype(np.float32)
    return np.concatenate([x, y[:, None]], axis=1)


# A step: (params, velocity, batch) -> (params, velocity, loss, small_sq_norm, big_sq_norm).
Step = Callable[[np.ndarray, np.ndarray, Any], tuple[Any, Any, float, float, float]]


def numpy_step(params: np.ndarray, velocity: np.ndarray, batch: np.ndarray) -> tuple:
    """SGD with momentum; the per-device gradients of 8 equal shards give the norms."""
    x, y = batch[:, :FEATURES], batch[:, FEATURES]
    residual = x @ params - y
    shards = [
        (xs.T @ rs) / len(rs)
        for xs, rs in zip(np.split(x, DEVICES), np.split(residual, DEVICES), strict=True)
    ]
    grad = np.mean(shards, axis=0)
    small = float(np.mean([s @ s for s in shards]))
    velocity = MOMENTUM * velocity + grad
    return (
        params - LEARNING_RATE * velocity,
        velocity,
        float(0.5 * np.mean(residual**2)),
        small,
        float(grad @ grad),
    )


@dataclass
class Backend:
    """How batches reach the step, and the step itself."""

    step: Step
    place: Callable[[Any], Any] = field(default=lambda iterator: iterator)
    to_numpy: Callable[[Any], np.ndarray] = field(default=np.asarray)


def jax_backend() -> Backend:
    """The step under `jax.jit`, the norms from `grad_with_noise_norms` over 8 devices."""
    import jax
    import jax.numpy as jnp

    from rampup.adapters.jax import batch_sharding, device_batches, grad_with_noise_norms

    mesh = jax.make_mesh((DEVICES,), ("data",))

    def loss_fn(params: jax.Array, batch: jax.Array) -> jax.Array:
        residual = batch[:, :FEATURES] @ params - batch[:, FEATURES]
        return 0.5 * jnp.mean(residual**2)

    grad_and_norms = grad_with_noise_norms(loss_fn, mesh)

    @jax.jit
    def step(params: jax.Array, velocity: jax.Array, batch: jax.Array) -> tuple:
        loss, grad, small, big = grad_and_norms(params, batch)
        velocity = MOMENTUM * velocity + grad
        return params - LEARNING_RATE * velocity, velocity, loss, small, big

    def run(params: np.ndarray, velocity: np.ndarray, batch: Any) -> tuple:
        params, velocity, loss, small, big = step(params, velocity, batch)
        return np.asarray(params), np.asarray(velocity), float(loss), float(small), float(big)

    sharding = batch_sharding(mesh)
    return Backend(run, lambda iterator: device_batches(iterator, sharding, prefetch=2), np.asarray)


def _floats(values: np.ndarray) -> list[str]:
    return [float(v).hex() for v in values]


def _array(texts: list[str]) -> np.ndarray:
    return np.array([float.fromhex(t) for t in texts], dtype=np.float32)


def train(
    backend: Backend,
    source: np.ndarray,
    first: int,
    last: int,
    state: dict[str, Any] | None,
    save_at: int | None,
) -> tuple[list, dict | None]:
    """Trains steps `[first, last)` from `state` (None: from scratch).

    Returns:
      One record per step (step, size, batch digest, decision) and the state
      saved before step `save_at`.
    """
    schedule, noise = make_schedule(), NoiseScale(beta=0.8)
    params = velocity = np.zeros(FEATURES, np.float32)
    if state is not None:  # the decisions first: the data state is checked against them
        schedule.set_state(state["schedule"])
        noise.set_state(state["noise"])
        params, velocity = _array(state["params"]), _array(state["velocity"])
    iterator = RampupBatches(source, schedule, shuffle_seed=0).iter_from(first)
    if state is not None:
        iterator.set_state(state["data"])
    records, saved = [], None
    batches = backend.place(iterator)
    try:
        for step in range(first, last):
            if step == save_at:
                saved = json.loads(
                    json.dumps(
                        {
                            "data": batches.get_state(),
                            "schedule": schedule.get_state(),
                            "noise": noise.get_state(),
                            "params": _floats(params),
                            "velocity": _floats(velocity),
                        }
                    )
                )
            batch = next(batches)
            host = backend.to_numpy(batch)
            params, velocity, loss, small, big = backend.step(params, velocity, batch)
            size = len(host)
            estimate = noise.update(small, big, size // DEVICES, size)
            decision = schedule.propose(step, estimate)
            records.append((step, size, digest(host), decision))
            if decision is not None:
                print(
                    f"  step {step:3d}  noise scale {decision.noise_scale:8.1f}  -> size "
                    f"{decision.size} from step {decision.start}  (loss {loss:.4f})"
                )
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return records, saved


def main(backend: str | None = None, steps: int = STEPS) -> int:
    """Runs the adaptive demo; returns 0 when the resumed half replays identically."""
    chosen = backend or ("jax" if importlib.util.find_spec("jax") else "numpy")
    if chosen not in BACKENDS:
        raise ValueError(f"--adaptive runs on {', '.join(BACKENDS)}, not {chosen!r}")
    if (
        chosen == "jax"
        and "jax" not in sys.modules
        and "device_count" not in os.environ.get("XLA_FLAGS", "")
    ):
        # A CPU-only machine has one device; simulate 8 so that the norms are per device.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
        ).strip()
    runner = jax_backend() if chosen == "jax" else Backend(numpy_step)
    source = make_source()
    half = steps // 2
    print(f"adaptive demo on {chosen}: {steps} steps, {make_schedule()}")
    print("decisions (made at a step, applied lag steps later):")
    records, saved = train(runner, source, 0, steps, None, half)
    assert saved is not None
    print(
        f"saved the data, schedule, estimator and optimizer state before step {half}; "
        "rebuilt everything from it; the second half again:"
    )
    replayed, _ = train(runner, source, half, steps, saved, None)
    sizes = sorted({size for _, size, _, _ in records})
    print(f"sizes used: {sizes}")
    if replayed != records[half:]:
        diverged = next(
            i for i, (a, b) in enumerate(zip(replayed, records[half:], strict=False)) if a != b
        )
        print(
            f"RESUME CHECK FAILED at step {half + diverged}: {replayed[diverged]} != "
            f"{records[half + diverged]}"
        )
        return 1
    decisions = sum(r[3] is not None for r in records[half:])
    print(
        f"resume check passed: steps {half}..{steps - 1} replayed identically "
        f"({decisions} decisions, {steps - half} batches)"
    )
    return 0
