"""An adaptive ramp-up on JAX: the batch size follows the measured gradient noise scale.

Run: python examples/jax_adaptive.py --steps 40
On 8 simulated CPU devices (or your accelerators), each step computes the
per-device and the all-reduced gradient norms in the same jitted pass
(`grad_with_noise_norms`), feeds them to `rampup.NoiseScale`, and proposes the
estimate to the `AdaptiveSchedule`, which doubles the batch size `lag` steps
later once the estimate stays above the next size.
"""

import argparse
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import rampup  # noqa: E402
from rampup.adapters.jax import batch_sharding, device_batches, grad_with_noise_norms  # noqa: E402

FEATURES = 16


def make_source(n: int = 1 << 16) -> np.ndarray:
    """Rows of features and a noisy linear target: the noise scale grows as the fit improves."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = x @ rng.normal(size=FEATURES).astype(np.float32) + rng.normal(size=n).astype(np.float32)
    return np.concatenate([x, y[:, None]], axis=1)


def loss_fn(params: jax.Array, batch: jax.Array) -> jax.Array:
    return 0.5 * jnp.mean((batch[:, :FEATURES] @ params - batch[:, FEATURES]) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    devices = mesh.shape["data"]
    # lag 4 > prefetch 2: every batch built ahead already has its final size.
    schedule = rampup.AdaptiveSchedule(
        16,
        multiple_of=devices,
        max_size=1024,
        lag=4,
        policy=rampup.GrowthPolicy(factor=2, patience=4),
    )
    noise = rampup.NoiseScale(beta=0.8)
    optimizer = optax.sgd(0.2, momentum=0.5)
    grad_and_norms = grad_with_noise_norms(loss_fn, mesh)

    @jax.jit
    def train_step(params, opt_state, batch):
        loss, grads, small, big = grad_and_norms(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss, small, big

    params = jnp.zeros(FEATURES)
    opt_state = optimizer.init(params)
    source = rampup.RampupBatches(make_source(), schedule, shuffle_seed=0)
    with device_batches(source.iter_from(0), batch_sharding(mesh), prefetch=2) as batches:
        for step in range(args.steps):
            batch = next(batches)
            params, opt_state, loss, small, big = train_step(params, opt_state, batch)
            size = batch.shape[0]
            estimate = noise.update(float(small), float(big), size // devices, size)
            decision = schedule.propose(step, estimate)
            note = f" -> size {decision.size} from step {decision.start}" if decision else ""
            print(
                f"step {step} size {size} noise_scale {estimate or 0:.1f} "
                f"loss {float(loss):.4f}{note}"
            )


if __name__ == "__main__":
    main()
