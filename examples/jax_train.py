"""A small regression model trained with a batch-size ramp-up, sharded over all devices.

Run: python examples/jax_train.py --steps 20 --checkpoint ckpt
(CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8 simulates 8 devices.)
Run it again with a larger --steps: it resumes from the last orbax checkpoint in
the folder, which holds the parameters, the optimizer state and the data state of
the same step, so the losses go on as if the run had not stopped.
"""

import argparse
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import rampup
from rampup.adapters.grain import RampupMapDataset
from rampup.adapters.jax import check_schedule, device_batches, optax_schedule, process_layout

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
    parser.add_argument("--checkpoint", default="ckpt", help="an orbax checkpoint folder")
    args = parser.parse_args()
    schedule = rampup.piecewise({0: 16, 4: 32, 8: 64})
    mesh = jax.sharding.Mesh(jax.devices(), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    check_schedule(schedule, sharding, until_step=args.steps)  # fails now, not at step 40,000
    index, count = process_layout(sharding)
    elements = grain.MapDataset.range(4096).shuffle(seed=0).map(element)
    dataset = RampupMapDataset(elements, schedule, process_index=index, process_count=count)
    iterator = iter(dataset.to_iter_dataset())

    lr = optax_schedule(1e-2, schedule)  # tuned at 64, x sqrt(B(k) / 64), in-graph
    optimizer = optax.adam(lr)
    params = {"w1": jax.random.normal(jax.random.key(0), (8, 32)) / 3, "w2": jnp.zeros(32)}
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    train_state = jax.device_put(
        {"params": params, "opt_state": optimizer.init(params)}, replicated
    )

    @jax.jit
    def train_step(train_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(train_state["params"], batch)
        updates, opt_state = optimizer.update(grads, train_state["opt_state"])
        params = optax.apply_updates(train_state["params"], updates)
        return {"params": params, "opt_state": opt_state}, loss

    with ocp.CheckpointManager(os.path.abspath(args.checkpoint)) as manager:
        start = manager.latest_step() or 0
        if start:  # the model, the optimizer and the data, all of the same step
            restored = manager.restore(
                start,
                args=ocp.args.Composite(
                    train_state=ocp.args.StandardRestore(train_state), data=ocp.args.JsonRestore()
                ),
            )
            train_state = restored["train_state"]
            iterator.set_state(restored["data"])  # O(1): the data position follows the step
        seen = dataset.plan.offset(start)  # samples trained on before this run
        with device_batches(iterator, sharding, prefetch=2) as batches:
            for step, batch in zip(range(start, args.steps), batches, strict=False):
                train_state, loss = train_step(train_state, batch)
                seen += batch["x"].shape[0]  # the global batch: every process's rows
                print(
                    f"step {step} batch {batch['x'].shape[0]} samples {seen} "
                    f"compiles {train_step._cache_size()} lr {float(lr(step)):.6g} "
                    f"loss {float(loss):.6f}"
                )
            if args.steps > start:
                # The state of the next step to consume, not of the batches built ahead.
                manager.save(
                    args.steps,
                    args=ocp.args.Composite(
                        train_state=ocp.args.StandardSave(train_state),
                        data=ocp.args.JsonSave(batches.get_state()),
                    ),
                )


if __name__ == "__main__":
    main()
