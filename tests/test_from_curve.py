"""`from_curve`: a fitted curve of the critical batch size, snapped to legal sizes."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rampup
from rampup import schedules


def simulate(curve, unit, tokens_per_sample, sizes, until, steps):
    """The sizes of steps `[0, steps)`, by the rule, one step at a time."""
    out, consumed, size = [], 0, None
    for k in range(steps):
        t = {"steps": k, "samples": consumed, "tokens": consumed * (tokens_per_sample or 0)}[unit]
        if t <= until:
            fitting = [s for s in sizes if s <= curve(t)]
            snapped = max(fitting) if fitting else min(sizes)
            size = snapped if size is None else max(size, snapped)
        out.append(size)
        consumed += size
    return out


def power_law(t):
    return 0.05 * t**0.6


def dipping(t):
    """Grows to 100, falls back to 20, grows again past 256 (from t = 10,240)."""
    return t / 8 if t < 800 else 20.0 if t < 4000 else t / 40


@pytest.mark.parametrize(
    ("curve", "unit", "tokens_per_sample", "until"),
    [
        (power_law, "tokens", 128, 2_000_000),
        (power_law, "samples", None, 50_000),
        (dipping, "samples", None, 20_000),
        (dipping, "steps", None, 6_000),
        (lambda t: math.sqrt(t), "steps", None, 5_000),
    ],
)
def test_sizes_follow_a_step_by_step_simulation(curve, unit, tokens_per_sample, until):
    sizes = [8, 16, 24, 32, 64, 96, 128, 256]
    schedule = rampup.from_curve(
        curve, unit=unit, tokens_per_sample=tokens_per_sample, sizes=sizes, until=until
    )
    steps = 3_000
    assert [schedule(k) for k in range(steps)] == simulate(
        curve, unit, tokens_per_sample, sizes, until, steps
    )


def test_a_curve_that_dips_never_shrinks_the_size():
    schedule = rampup.from_curve(dipping, unit="samples", sizes=[8, 16, 32, 64, 128], until=3_000)
    sizes = [schedule(k) for k in range(200)]
    assert sizes == sorted(sizes)
    assert sizes[-1] == 64  # t / 8 passed 64 before the dip to 20, and the size stays there


def test_the_curve_is_read_up_to_until_and_the_size_stays_after():
    schedule = rampup.from_curve(lambda t: t, unit="steps", sizes=list(range(1, 20)), until=5)
    assert [schedule(k) for k in range(9)] == [1, 1, 2, 3, 4, 5, 5, 5, 5]


def test_a_value_below_every_size_gets_the_smallest():
    schedule = rampup.from_curve(lambda t: -3.0, unit="samples", sizes=[16, 32], until=100)
    assert schedule.to_config() == {"type": "piecewise", "sizes": {"0": 16}}


def test_tokens_count_what_was_consumed_before_the_step():
    # 4 samples of 100 tokens per step: t(k) = 400 k; the curve wants 8 from 800 tokens on.
    schedule = rampup.from_curve(
        lambda t: 8 if t >= 800 else 4, tokens_per_sample=100, sizes=[4, 8], until=10**6
    )
    assert [schedule(k) for k in range(4)] == [4, 4, 8, 8]


@given(
    values=st.lists(st.floats(-10, 300, allow_nan=False), min_size=1, max_size=12),
    width=st.integers(1, 400),
    sizes=st.lists(st.integers(1, 256), min_size=1, max_size=8, unique=True).map(sorted),
    unit=st.sampled_from(["steps", "samples", "tokens"]),
    until=st.integers(0, 5_000),
)
def test_any_step_function_of_t_follows_the_simulation(values, width, sizes, unit, until):
    def curve(t):
        return values[min(t // width, len(values) - 1)]

    tps = 3 if unit == "tokens" else None
    schedule = rampup.from_curve(curve, unit=unit, tokens_per_sample=tps, sizes=sizes, until=until)
    assert [schedule(k) for k in range(300)] == simulate(curve, unit, tps, sizes, until, 300)


def test_it_is_an_ordinary_schedule_config_fingerprint_state_and_preview():
    schedule = rampup.from_curve(power_law, tokens_per_sample=64, sizes=[8, 16, 32], until=10**6)
    config = json.loads(json.dumps(schedule.to_config()))
    assert rampup.from_config(config) == schedule
    assert rampup.from_config(config).fingerprint == schedule.fingerprint
    # The fingerprint is the same in a fresh interpreter: it goes into checkpoint states.
    # (the curve defined there as here: the tests folder is not importable from a wheel's run)
    code = (
        "import rampup\n"
        "def power_law(t):\n"
        "    return 0.05 * t**0.6\n"
        "print(rampup.from_curve(power_law, tokens_per_sample=64, sizes=[8, 16, 32], "
        "until=10**6).fingerprint)"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert fresh.stdout.strip() == schedule.fingerprint
    other = rampup.from_curve(power_law, tokens_per_sample=32, sizes=[8, 16, 32], until=10**6)
    assert other.fingerprint != schedule.fingerprint
    it = iter(rampup.RampupBatches(np.arange(1000), schedule, shuffle_seed=1))
    for _ in range(30):
        next(it)
    resumed = rampup.RampupBatches(np.arange(1000), schedule, shuffle_seed=1).iter_from(
        it.get_state()
    )
    assert next(resumed).tolist() == next(it).tolist()
    assert "distinct size" in rampup.Plan(schedule).table(steps=100)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"unit": "epochs"}, ValueError, "unit='epochs' is not valid"),
        ({"unit": "tokens", "tokens_per_sample": None}, ValueError, "needs tokens_per_sample"),
        ({"unit": "samples", "tokens_per_sample": 4}, ValueError, "is for unit='tokens'"),
        ({"sizes": []}, ValueError, "sizes is empty"),
        ({"sizes": [16, 8]}, ValueError, "8 follows 16"),
        ({"sizes": [8, 8]}, ValueError, "8 follows 8"),
        ({"sizes": [0, 8]}, ValueError, "batch size 0"),
        ({"sizes": [8.0]}, TypeError, "not an int"),
        ({"sizes": 8}, TypeError, "sizes must be a list"),
        ({"until": -1}, ValueError, "until must be an int >= 0"),
        ({"curve": 3}, TypeError, "curve must be a function"),
        ({"curve": lambda t: math.nan if t >= 16 else 8}, ValueError, r"curve\(16\) at step 2"),
        ({"curve": lambda t: math.inf}, ValueError, r"curve\(0\) at step 0 is inf"),
        ({"curve": lambda t: None}, TypeError, "returned None"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    arguments = {"curve": lambda t: t, "unit": "samples", "sizes": [8, 16], "until": 100}
    with pytest.raises(error, match=match):
        rampup.from_curve(**{**arguments, **kwargs})


def test_an_until_too_far_to_reach_is_refused(monkeypatch):
    monkeypatch.setattr(schedules, "CURVE_MAX_STEPS", 1_000)
    with pytest.raises(ValueError, match=r"reaches only 999 of until=5,000 samples in 1,000 steps"):
        rampup.from_curve(lambda t: 1, unit="samples", sizes=[1, 2], until=5_000)


def test_divisible_from_finds_the_first_step_a_topology_splits():
    schedule = rampup.from_curve(
        lambda t: 2 + t / 8, unit="samples", sizes=[2, 4, 8, 16], until=400
    )
    sizes = simulate(lambda t: 2 + t / 8, "samples", None, [2, 4, 8, 16], 400, 200)
    first = next(k for k in range(len(sizes)) if all(b % 8 == 0 for b in sizes[k:]))
    assert rampup.Plan(schedule).divisible_from(8) == first
