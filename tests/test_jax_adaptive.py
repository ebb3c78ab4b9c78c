"""An adaptive schedule on JAX: device_batches' run-ahead and the noise norms in a jitted step."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

from rampup import AdaptiveSchedule, GrowthPolicy, RampupBatches  # noqa: E402
from rampup.adapters.jax import (  # noqa: E402
    batch_sharding,
    device_batches,
    grad_with_noise_norms,
)


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "tests/conftest.py must ask for 8 CPU devices"
    return jax.make_mesh((8,), ("data",))


def loss_fn(params, batch):
    prediction = batch["x"] @ params["w"] + params["b"]
    return jnp.mean((prediction - batch["y"]) ** 2)


def problem(size):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(5,)), jnp.float32), "b": jnp.float32(0.3)}
    batch = {
        "x": rng.normal(size=(size, 5)).astype(np.float32),
        "y": rng.normal(size=(size,)).astype(np.float32),
    }
    return params, batch


def sq_norm(tree):
    return sum(float(np.sum(np.square(leaf))) for leaf in jax.tree_util.tree_leaves(tree))


def test_the_norms_are_those_of_the_per_device_and_the_averaged_gradients(mesh):
    params, batch = problem(64)
    step = jax.jit(grad_with_noise_norms(loss_fn, mesh))
    placed = jax.device_put(batch, batch_sharding(mesh))
    loss, grads, small, big = step(params, placed)
    # The oracle: each device's gradient on its 8 rows, one at a time, without shard_map.
    shards = [
        jax.grad(loss_fn)(params, {k: v[8 * d : 8 * d + 8] for k, v in batch.items()})
        for d in range(8)
    ]
    full = jax.grad(loss_fn)(params, batch)
    assert float(small) == pytest.approx(np.mean([sq_norm(g) for g in shards]), rel=1e-5)
    assert float(big) == pytest.approx(sq_norm(full), rel=1e-5)
    assert float(loss) == pytest.approx(float(loss_fn(params, batch)), rel=1e-5)
    for got, want in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(full), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_an_unknown_axis_is_refused(mesh):
    with pytest.raises(ValueError, match="axis='batch' is not an axis of the mesh"):
        grad_with_noise_norms(loss_fn, mesh, axis="batch")


def test_device_batches_refuses_a_prefetch_the_lag_does_not_cover(mesh):
    schedule = AdaptiveSchedule(8, multiple_of=8, lag=2)
    source = RampupBatches(np.arange(1000, dtype=np.float32), schedule)
    with pytest.raises(ValueError, match=r"device_batches\(prefetch=2\).*lag >= 3"):
        device_batches(source.iter_from(0), batch_sharding(mesh), prefetch=2)


def test_device_batches_follow_decisions_made_while_prefetching(mesh):
    def run(prefetch):
        schedule = AdaptiveSchedule(
            8, multiple_of=8, lag=3, max_size=128, policy=GrowthPolicy(patience=1)
        )
        source = RampupBatches(np.arange(5000, dtype=np.float32), schedule).iter_from(0)
        record = []
        with device_batches(source, batch_sharding(mesh), prefetch=prefetch) as batches:
            for step in range(20):
                batch = np.asarray(next(batches))
                record.append(batch.tolist())
                schedule.propose(step, 2.0 * 1.3**step)
        assert len(schedule.decisions) >= 3
        return record

    assert run(prefetch=2) == run(prefetch=0)


def test_optax_schedule_refuses_a_schedule_decided_online():
    from rampup.adapters.jax import optax_schedule

    with pytest.raises(ValueError, match="decided online: a compiled graph"):
        optax_schedule(1e-3, AdaptiveSchedule(8, lag=2), reference_size=64)
