"""`rampup demo --cbs`: the measured critical batch size against the noise scale."""

import re
import subprocess
import sys

import numpy as np
import pytest

from rampup import demo_cbs


def monte_carlo_noise_scale(weights, optimum, samples=40_000):
    """`tr(Sigma) / |G|^2` from per-sample gradients of fresh data, averaged over the runs."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(samples, demo_cbs.FEATURES))
    y = x @ optimum + demo_cbs.NOISE * rng.normal(size=samples)
    traces, sq_norms = [], []
    for w in weights:
        grads = x * (x @ w - y)[:, None]  # the gradient of (x @ w - y)^2 / 2, per sample
        mean = grads.mean(axis=0)
        traces.append(grads.var(axis=0).sum())
        sq_norms.append(mean @ mean)
    return float(np.mean(traces) / np.mean(sq_norms))


@pytest.fixture(scope="module")
def measurements():
    return demo_cbs.run()


def test_the_closed_form_noise_scale_matches_per_sample_gradients(measurements):
    optimum = demo_cbs.make_problem().optimum
    for m in measurements:
        estimate = monte_carlo_noise_scale(m.weights[:16], optimum)
        closed = demo_cbs.noise_scale(m.weights[:16], optimum)
        assert estimate == pytest.approx(closed, rel=0.05), m.step


def test_the_measured_critical_batch_size_is_within_2x_of_the_noise_scale(measurements):
    optimum = demo_cbs.make_problem().optimum
    for m in measurements:
        expected = monte_carlo_noise_scale(m.weights, optimum)
        assert expected / 2 <= m.critical <= 2 * expected, (m.step, m.critical, expected)
    assert [m.critical for m in measurements] == sorted(m.critical for m in measurements)
    assert measurements[-1].critical > measurements[0].critical  # it grows as the fit improves


def test_the_command_prints_the_table_the_fit_and_a_legal_schedule():
    out = subprocess.run(
        [sys.executable, "-m", "rampup", "demo", "--cbs"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    rows = re.findall(r"^ +(\d+) +(\d+) +([\d.]+) +([\d.]+) +(\d+)$", out.stdout, re.M)
    assert [int(r[0]) for r in rows] == list(demo_cbs.CHECKPOINTS)
    assert all(float(r[3]) / 2 <= int(r[4]) <= 2 * float(r[3]) for r in rows), out.stdout
    assert re.search(r"B\(t\) = [\d.]+ \* t \*\* [\d.]+", out.stdout)
    sizes = re.search(r"step -> size \{(.+)\}\)", out.stdout).group(1)
    ramp = [int(v.split(": ")[1]) for v in sizes.split(", ")]
    assert ramp == sorted(ramp) and set(ramp) <= set(demo_cbs.RAMP_SIZES)


def test_cbs_takes_no_other_demo_options():
    out = subprocess.run(
        [sys.executable, "-m", "rampup", "demo", "--cbs", "--adaptive"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--cbs" in out.stderr and "takes no --adaptive" in out.stderr
