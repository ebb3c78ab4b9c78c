"""`rampup demo` on every backend that is installed, run as a user runs it."""

import importlib.util
import re
import subprocess
import sys

import pytest

from rampup import Plan, from_config
from rampup.demo import DEFAULT_SCHEDULE

STEPS = 12
# backend, the modules it needs, whether its train step compiles once per distinct size
BACKENDS = [
    ("numpy", (), False),
    ("grain", ("grain",), False),
    ("jax", ("jax", "grain"), True),
    ("torch", ("torch",), False),
    ("tf", ("tensorflow",), True),
]


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "rampup.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


def installed(modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.parametrize(("backend", "needs", "compiles"), BACKENDS, ids=[b[0] for b in BACKENDS])
def test_demo_follows_the_schedule_and_resumes_identically(backend, needs, compiles):
    if not installed(needs):
        pytest.skip(f"{', '.join(needs)} not installed")
    out = run("--backend", backend, "--steps", str(STEPS))
    assert out.returncode == 0, out.stderr[-3000:]
    plan = Plan(from_config(DEFAULT_SCHEDULE))
    samples = plan.offset(STEPS)
    distinct = len(plan.distinct_sizes(STEPS))
    assert (
        f"{STEPS} steps, {samples:,} samples, {samples * 32:,} tokens; {distinct} distinct"
        in out.stdout
    )
    assert f"{distinct if compiles else 0} compilations" in out.stdout
    half = STEPS // 2
    assert f"state saved at step {half} as JSON" in out.stdout
    assert f"continues IDENTICALLY over steps {half}..{STEPS - 1}" in out.stdout


def test_default_backend_is_jax_or_the_numpy_core_with_a_message():
    out = run("--steps", "4")
    assert out.returncode == 0, out.stderr[-3000:]
    if installed(("jax", "grain")):
        assert re.search(r"backend jax on \d+ \w+ devices", out.stdout)
    else:
        assert "running on the NumPy core instead" in out.stderr
        assert "backend numpy on host" in out.stdout


def test_demo_with_a_schedule_spec():
    spec = '{"type": "piecewise", "sizes": {"0": 8, "2": 24}}'
    out = run("--backend", "numpy", "--steps", "4", "--schedule", spec)
    assert out.returncode == 0, out.stderr
    assert "4 steps, 64 samples" in out.stdout


def test_demo_rejects_bad_steps_and_names_the_valid_range():
    out = run("--backend", "numpy", "--steps", "1")
    assert out.returncode == 2
    assert "--steps must be an int >= 2, got 1" in out.stderr
