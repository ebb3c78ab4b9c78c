"""NoiseScale: the two-batch-size estimator of tr(Sigma) / |G|^2."""

import json

import numpy as np
import pytest

import rampup


def feed(noise: rampup.NoiseScale, seed: int, steps: int, true_ratio: float) -> None:
    """Per-sample gradients G + e with Cov(e) = Sigma, |G|^2 = 1 and tr(Sigma) = true_ratio.

    As in data-parallel training: the small gradient is one device's mean over
    8 samples, the big one the mean over all 8 devices' 64 samples.
    """
    rng = np.random.default_rng(seed)
    dim, per_device, devices = 64, 8, 8
    signal = rng.normal(size=dim)
    signal /= np.linalg.norm(signal)
    scales = rng.uniform(0.5, 1.5, size=dim)
    scales *= np.sqrt(true_ratio / np.sum(scales**2))
    for _ in range(steps):
        per_sample = signal + rng.normal(size=(per_device * devices, dim)) * scales
        small = per_sample[:per_device].mean(axis=0)
        big = per_sample.mean(axis=0)
        noise.update(float(small @ small), float(big @ big), per_device, per_device * devices)


@pytest.mark.parametrize(("seed", "true_ratio"), [(0, 16.0), (1, 100.0), (2, 4.0)])
def test_recovers_a_known_noise_scale_within_a_few_percent(seed, true_ratio):
    noise = rampup.NoiseScale(beta=0.998)
    feed(noise, seed, 4000, true_ratio)
    assert noise.value == pytest.approx(true_ratio, rel=0.05)
    assert noise.sq_norm == pytest.approx(1.0, rel=0.05)
    assert noise.trace == pytest.approx(true_ratio, rel=0.05)


def test_value_is_none_until_the_first_update():
    noise = rampup.NoiseScale()
    assert noise.value is None and noise.sq_norm is None and noise.trace is None


def test_one_update_is_the_unbiased_formula_of_appendix_a():
    noise = rampup.NoiseScale(beta=0.9)
    noise.update(small_sq_norm=3.0, big_sq_norm=1.5, small_size=4, big_size=32)
    sq_norm = (32 * 1.5 - 4 * 3.0) / (32 - 4)
    trace = (3.0 - 1.5) / (1 / 4 - 1 / 32)
    assert noise.sq_norm == pytest.approx(sq_norm)  # bias correction: no pull towards 0
    assert noise.trace == pytest.approx(trace)
    assert noise.value == pytest.approx(trace / sq_norm)


def test_a_non_positive_gradient_estimate_gives_no_value():
    noise = rampup.NoiseScale(beta=0.0)
    # The big batch's norm is far below the small one's: |G|^2 estimates negative.
    noise.update(small_sq_norm=10.0, big_sq_norm=0.1, small_size=2, big_size=4)
    assert noise.sq_norm < 0
    assert noise.value is None


def test_state_round_trips_through_json_bit_for_bit():
    noise = rampup.NoiseScale(beta=0.95)
    feed(noise, 3, 50, 10.0)
    state = json.loads(json.dumps(noise.get_state()))
    assert all(isinstance(v, (int, str)) for v in state.values())
    restored = rampup.NoiseScale(beta=0.95)
    restored.set_state(state)
    assert restored.value == noise.value
    feed(noise, 4, 20, 10.0)
    feed(restored, 4, 20, 10.0)
    assert restored.value == noise.value and restored.count == noise.count == 70


def test_state_of_another_beta_is_refused():
    state = rampup.NoiseScale(beta=0.9).get_state()
    with pytest.raises(ValueError, match="beta=0.9"):
        rampup.NoiseScale(beta=0.99).set_state(state)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((1.0, 1.0, 8, 8), ValueError, "big_size=8 must be larger than small_size=8"),
        ((1.0, 1.0, 0, 8), ValueError, "small_size"),
        ((1.0, 1.0, 2.0, 8), TypeError, "small_size"),
        ((float("nan"), 1.0, 2, 8), ValueError, "small_sq_norm must be finite"),
        ((-1.0, 1.0, 2, 8), ValueError, "squared norms are >= 0"),
        (("1", 1.0, 2, 8), TypeError, "small_sq_norm must be a real number"),
    ],
)
def test_update_refuses_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        rampup.NoiseScale().update(*args)


@pytest.mark.parametrize("beta", [1.0, -0.1, float("inf")])
def test_beta_outside_zero_one_is_refused(beta):
    with pytest.raises(ValueError, match="beta"):
        rampup.NoiseScale(beta=beta)


def test_a_measurement_that_overflows_is_refused_and_leaves_the_estimator_as_it_was():
    noise = rampup.NoiseScale(beta=0.5)
    noise.update(2.0, 1.0, 1, 4)
    before = noise.get_state()
    with pytest.raises(ValueError, match="overflows a float"):
        noise.update(1e308, 1e307, 1, 10**6)
    assert noise.get_state() == before
    assert noise.value is not None and noise.value > 0


@pytest.mark.parametrize("field", ["sq_norm", "trace"])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_a_state_with_a_non_finite_number_is_refused(field, text):
    noise = rampup.NoiseScale(beta=0.5)
    noise.update(2.0, 1.0, 1, 4)
    state = dict(noise.get_state(), **{field: text})
    with pytest.raises(ValueError, match=f"{field}='{text}' is not finite"):
        rampup.NoiseScale(beta=0.5).set_state(state)
