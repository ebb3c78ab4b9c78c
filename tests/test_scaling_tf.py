"""ScaledLearningRate: rampup.scaled as a Keras schedule, in graph mode, serializable."""

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import rampup  # noqa: E402
from rampup.adapters.tf import ScaledLearningRate  # noqa: E402

RAMP = rampup.linear(16, 16, 6000, 128)
STEPS = rampup.Plan(RAMP).steps_for(samples=6000) + 20
DECAY = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=4000, decay_rate=0.5)


def host_decay(t):
    return 1e-2 * 0.5 ** (t / 4000)


def warmup(t):
    """A warmup to 1e-2 over 4,000 of whatever t counts, in tf ops."""
    return 1e-2 * tf.minimum(1.0, tf.cast(t, tf.float32) / 4000)


def host_warmup(t):
    return 1e-2 * min(1.0, t / 4000)


@pytest.mark.parametrize(
    ("base", "host_base", "unit", "tokens_per_sample"),
    [
        (3e-4, 3e-4, "steps", None),
        (DECAY, host_decay, "steps", None),
        (DECAY, host_decay, "samples", None),
        (warmup, host_warmup, "samples", None),
        (lambda t: warmup(t / 256), lambda t: host_warmup(t / 256), "tokens", 256),
    ],
)
@pytest.mark.parametrize("rule", ["sqrt", "linear"])
def test_equals_scaled_at_every_step_eager_and_in_a_graph(
    base, host_base, unit, tokens_per_sample, rule
):
    kwargs = {"rule": rule, "unit": unit, "tokens_per_sample": tokens_per_sample}
    expected = np.array([rampup.scaled(host_base, RAMP, **kwargs)(k) for k in range(STEPS)])
    lr = ScaledLearningRate(base, RAMP, **kwargs)
    graph = tf.function(lr)
    steps = tf.range(STEPS, dtype=tf.int64)
    np.testing.assert_allclose(graph(steps).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(
        [float(graph(tf.constant(k, tf.int64))) for k in range(STEPS)], expected, rtol=1e-6
    )
    np.testing.assert_allclose([float(lr(k)) for k in range(0, STEPS, 7)], expected[::7], rtol=1e-6)


def test_sgd_steps_with_the_scaled_rate():
    # The gradient of the variable's sum is 1: each SGD step moves it by exactly -lr(step).
    lr = ScaledLearningRate(0.1, RAMP, rule="linear")
    optimizer = keras.optimizers.SGD(learning_rate=lr)
    variable = keras.Variable(0.0)
    expected = rampup.scaled(0.1, RAMP, rule="linear")

    @tf.function
    def train_step():
        optimizer.apply([tf.ones(())], [variable])

    for step in range(STEPS):
        before = float(variable.numpy())
        train_step()
        assert before - float(variable.numpy()) == pytest.approx(expected(step), rel=1e-5)


def test_config_round_trips_with_the_schedule_as_its_config_dict():
    lr = ScaledLearningRate(DECAY, RAMP, rule="linear", reference_size=64, unit="samples")
    config = json.loads(json.dumps(lr.get_config()))
    assert config["schedule"] == RAMP.to_config()
    again = ScaledLearningRate.from_config(config)
    steps = tf.range(STEPS, dtype=tf.int64)
    np.testing.assert_array_equal(again(steps).numpy(), lr(steps).numpy())
    assert again.get_config() == config


def test_an_optimizer_serializes_and_deserializes_with_it():
    optimizer = keras.optimizers.Adam(learning_rate=ScaledLearningRate(1e-3, RAMP))
    config = json.loads(json.dumps(keras.optimizers.serialize(optimizer)))
    restored = keras.optimizers.deserialize(config)
    schedule = restored._learning_rate
    assert isinstance(schedule, ScaledLearningRate)
    expected = rampup.scaled(1e-3, RAMP)
    np.testing.assert_allclose(
        [float(schedule(k)) for k in range(STEPS)], [expected(k) for k in range(STEPS)], rtol=1e-6
    )


def test_a_callable_rule_runs_but_has_no_config():
    lr = ScaledLearningRate(1.0, RAMP, rule=lambda ratio: ratio**2)
    assert float(lr(0)) == pytest.approx((16 / 128) ** 2, rel=1e-6)
    with pytest.raises(ValueError, match="named rule"):
        lr.get_config()


def test_bad_arguments_are_refused_like_scaled():
    with pytest.raises(ValueError, match="sqrt, linear, none"):
        ScaledLearningRate(1e-3, RAMP, rule="lamb")
    with pytest.raises(ValueError, match="from_fn schedule has no segments"):
        ScaledLearningRate(1e-3, rampup.from_fn(lambda k: 16, name="16"), reference_size=16)
    with pytest.raises(ValueError, match="tokens_per_sample"):
        ScaledLearningRate(1e-3, RAMP, unit="tokens")
