"""optax_schedule: rampup.scaled in-graph, under jit and vmap, driving real optax optimizers."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402

import rampup  # noqa: E402
from rampup.adapters.jax import optax_schedule  # noqa: E402

# Megatron-style ramp 16 -> 128 by 16 over 6,000 samples: 8 sizes, steps 0..~100 cover it.
RAMP = rampup.linear(16, 16, 6000, 128)
PLAN = rampup.Plan(RAMP)
STEPS = PLAN.steps_for(samples=6000) + 20
TOKENS_PER_SAMPLE = 512


def warmup(t):
    """A warmup to 1e-2 over 4,000 of whatever t counts, in jnp (traceable) ops."""
    return 1e-2 * jnp.minimum(1.0, t / 4000)


@pytest.mark.parametrize(
    ("unit", "tokens_per_sample", "base"),
    [
        ("steps", None, 3e-4),
        ("steps", None, warmup),
        ("samples", None, warmup),
        ("tokens", TOKENS_PER_SAMPLE, lambda t: warmup(t / TOKENS_PER_SAMPLE)),
    ],
)
@pytest.mark.parametrize("rule", ["sqrt", "linear"])
def test_jit_and_vmap_equal_scaled_at_every_step_of_the_ramp(unit, tokens_per_sample, base, rule):
    kwargs = {"rule": rule, "unit": unit, "tokens_per_sample": tokens_per_sample}
    expected = np.array([rampup.scaled(base, RAMP, **kwargs)(k) for k in range(STEPS)])
    schedule = optax_schedule(base, RAMP, **kwargs)
    steps = jnp.arange(STEPS, dtype=jnp.int32)
    vmapped = jax.jit(jax.vmap(schedule))(steps)
    one_by_one = np.array([jax.jit(schedule)(jnp.int32(k)) for k in range(STEPS)])
    assert len(set(expected.tolist())) >= len(PLAN.distinct_sizes()) == 8  # it moves
    np.testing.assert_allclose(vmapped, expected, rtol=1e-6)
    np.testing.assert_allclose(one_by_one, expected, rtol=1e-6)


def test_an_optax_schedule_as_base():
    base = optax.cosine_decay_schedule(1e-2, decay_steps=50_000)
    kwargs = {"unit": "samples"}
    expected = [rampup.scaled(base, RAMP, **kwargs)(k) for k in range(STEPS)]
    got = jax.jit(jax.vmap(optax_schedule(base, RAMP, **kwargs)))(jnp.arange(STEPS))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_the_lookup_has_no_host_callback():
    jaxpr = str(jax.make_jaxpr(optax_schedule(warmup, RAMP, unit="samples"))(jnp.int32(7)))
    assert "callback" not in jaxpr


def test_sgd_applies_the_scaled_rate_at_each_step_in_a_jitted_update():
    # The gradient of sum(p) is 1, so each SGD update is exactly -lr(step).
    optimizer = optax.sgd(optax_schedule(0.1, RAMP, rule="linear"))
    params = jnp.zeros(())
    state = optimizer.init(params)

    @jax.jit
    def update(params, state):
        grads = jax.grad(lambda p: p.sum())(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, updates

    lr = rampup.scaled(0.1, RAMP, rule="linear")
    for step in range(STEPS):
        params, state, updates = update(params, state)
        np.testing.assert_allclose(updates, -lr(step), rtol=1e-6)


def test_inject_hyperparams_adamw_in_a_jitted_update():
    lr = rampup.scaled(warmup, RAMP, unit="samples")
    optimizer = optax.inject_hyperparams(optax.adamw)(
        learning_rate=optax_schedule(warmup, RAMP, unit="samples"), weight_decay=1e-4
    )
    # The same adamw with the rate set from the host, step by step: the oracle.
    reference = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=1e-4)
    params = ref_params = {"w": jnp.linspace(-1.0, 1.0, 4)}
    state, ref_state = optimizer.init(params), reference.init(params)

    def loss(p, x):
        return jnp.sum((p["w"] * x - 1.0) ** 2)

    @jax.jit
    def update(params, state, x):
        grads = jax.grad(loss)(params, x)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def ref_update(params, state, x):
        grads = jax.grad(loss)(params, x)
        updates, state = reference.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for step in range(STEPS):
        x = jnp.full(4, 1.0 + step / STEPS)
        params, state = update(params, state, x)
        assert float(state.hyperparams["learning_rate"]) == pytest.approx(lr(step), rel=1e-6)
        ref_state.hyperparams["learning_rate"] = jnp.asarray(lr(step), jnp.float32)
        ref_params, ref_state = ref_update(ref_params, ref_state, x)
        np.testing.assert_allclose(params["w"], ref_params["w"], rtol=1e-5, atol=1e-6)
    assert float(state.count) == STEPS


def test_a_from_fn_schedule_is_refused_with_the_way_out():
    schedule = rampup.from_fn(lambda k: 16 if k < 10 else 32, name="ten at 16")
    with pytest.raises(ValueError, match=r"from_fn schedule has no segments.*piecewise"):
        optax_schedule(1e-3, schedule, reference_size=32)


def test_bad_arguments_are_refused_like_scaled():
    with pytest.raises(ValueError, match="sqrt, linear, none"):
        optax_schedule(1e-3, RAMP, rule="adam")
    with pytest.raises(TypeError, match="base='1e-3'"):
        optax_schedule("1e-3", RAMP)


def test_token_counts_past_int32_reach_an_optax_base_as_floats():
    # 2048-token samples: the run passes 2**31 tokens before step 5,000.
    schedule = rampup.linear(256, 256, 2_000_000, 2048)
    base = optax.warmup_cosine_decay_schedule(
        0.0, 3e-4, warmup_steps=2_000_000_000, decay_steps=300_000_000_000
    )
    steps = [0, 10, 1000, 5000, 50_000, 200_000]
    kwargs = {"unit": "tokens", "tokens_per_sample": 2048}
    expected = [rampup.scaled(lambda t: base(float(t)), schedule, **kwargs)(k) for k in steps]
    assert rampup.Plan(schedule).offset(5000) * 2048 > 2**31
    got = jax.jit(jax.vmap(optax_schedule(base, schedule, **kwargs)))(jnp.array(steps))
    # optax's own float32 warmup rounds differently under jit and eagerly: 1e-4, not 1e-6.
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_a_step_before_0_is_step_0_as_optax_schedules_clamp():
    schedule = optax_schedule(0.1, RAMP, rule="linear")
    expected = rampup.scaled(0.1, RAMP, rule="linear")(0)  # 0.1 * 16 / 128
    assert float(schedule(-1)) == float(schedule(0)) == pytest.approx(expected, rel=1e-6)
    assert float(optax.linear_schedule(0.0, 1.0, 10)(-1)) == 0.0  # optax's own clamp
