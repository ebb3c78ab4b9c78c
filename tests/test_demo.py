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
    assert "argument --steps: must be an int >= 2, got 1" in out.stderr
    assert out.stdout == "" and len(out.stderr.splitlines()) == 1


def without(module, *argv):
    """The demo in a child where `module` cannot be imported, as in a venv without it."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; from rampup.cli import main; "
        f"sys.exit(main({['demo', *argv]!r}))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)


@pytest.mark.skipif(not installed(("jax",)), reason="jax not installed")
def test_missing_grain_with_jax_installed_points_at_the_demo_extra():
    out = without("grain", "--backend", "jax", "--steps", "4")
    assert out.returncode == 2 and out.stdout == ""
    assert (
        "backend 'jax' needs grain, which is not installed: "
        'pip install -e ".[demo]" in the rampup checkout'
    ) in out.stderr
    out = without("grain", "--steps", "4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (
        "grain not installed, running on the NumPy core instead; for the JAX demo: "
        'pip install -e ".[demo]"'
    ) in out.stderr


def test_schedule_table_comes_before_the_progress_and_no_api_names():
    out = run("--backend", "numpy", "--steps", "20")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    head = lines.index(next(line for line in lines if line.split()[:2] == ["first", "step"]))
    total = sum(16 if k < 8 else 32 if k < 16 else 48 for k in range(20))  # DEFAULT_SCHEDULE
    assert lines[head + 2].split() == ["0", "7", "16", "128", f"{100 * 128 / total:.2f}%"]
    assert lines[head + 5] == ""
    assert lines[head + 6] == f"20 steps, {total} samples, 3 distinct sizes"
    assert lines[head - 1] == "rampup demo [numpy]: the batch-size schedule over 20 steps"
    # the tqdm bar, or without tqdm the first progress line
    progress = next(i for i, line in enumerate(lines) if "%|" in line or "step=0 " in line)
    assert progress > head + 6
    assert "Plan." not in out.stdout + out.stderr
    assert "3 distinct batch sizes, 0 compilations" in out.stdout
