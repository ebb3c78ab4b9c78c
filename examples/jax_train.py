"""A small regression model trained with a batch-size ramp-up, sharded over all devices.

Run: python examples/jax_train.py --steps 20 --checkpoint data_state.json
(CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8 simulates 8 devices.)
Run it again with a larger --steps: it resumes from the data state in the JSON
file, at the step after the last one trained (the data state only, for brevity).
"""

import argparse
import json
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

import rampup
from rampup.adapters.grain import RampupMapDataset
from rampup.adapters.jax import check_schedule, device_batches, process_layout

W_TRUE = np.linspace(-1.0, 1.0, 8, dtype=np.float32)


def element(i: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(i).normal(size=8).astype(np.float32)
    return {"x": x, "y": np.float32(x @ W_TRUE)}


def loss_fn(params, batch):
    hidden = jnp.tanh(batch["x"] @ params["w1"])
    return jnp.mean((hidden @ params["w2"] - batch["y"]) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpoint", default="data_state.json")
    args = parser.parse_args()
    schedule = rampup.piecewise({0: 16, 4: 32, 8: 64})
    mesh = jax.sharding.Mesh(jax.devices(), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    check_schedule(schedule, sharding, until_step=args.steps)  # fails now, not at step 40,000
    index, count = process_layout(sharding)
    elements = grain.MapDataset.range(4096).shuffle(seed=0).map(element)
    dataset = RampupMapDataset(elements, schedule, process_index=index, process_count=count)
    iterator = iter(dataset.to_iter_dataset())
    start = 0  # a real run restores the model with the same step, e.g. with orbax
    if os.path.exists(args.checkpoint):
        with open(args.checkpoint) as f:
            saved = json.load(f)
        iterator.set_state(saved["data"])  # O(1): the data position is a function of the step
        start = saved["step"]

    optimizer = optax.adam(1e-2)
    params = {"w1": jax.random.normal(jax.random.key(0), (8, 32)) / 3, "w2": jnp.zeros(32)}
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params, opt_state = jax.device_put((params, optimizer.init(params)), replicated)

    @jax.jit
    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    with device_batches(iterator, sharding, prefetch=2) as batches:
        for step, batch in zip(range(start, args.steps), batches, strict=False):
            params, opt_state, loss = train_step(params, opt_state, batch)
            seen = dataset.plan.offset(step + 1)
            print(f"step {step} batch {batch['x'].shape[0]} samples {seen} "
                  f"compiles {train_step._cache_size()} loss {float(loss):.4f}")  # jax's count
        state = {"step": max(start, args.steps), "data": batches.get_state()}
    with open(args.checkpoint, "w") as f:
        json.dump(state, f)


if __name__ == "__main__":
    main()
