"""`rampup demo --adaptive`, run as a user runs it."""

import importlib.util
import re
import subprocess
import sys

import pytest

from rampup import demo_adaptive


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "rampup.cli", "demo", "--adaptive", *args],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize("backend", ["jax", "numpy"])
def test_the_batch_size_grows_and_the_resumed_half_replays_identically(backend):
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    out = run("--backend", backend)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    decisions = re.findall(
        r"step +(\d+) +noise scale +([\d.]+) +-> size (\d+) from step (\d+)", out.stdout
    )
    sizes = [int(d[2]) for d in decisions]
    assert sizes[:2] == [32, 64], out.stdout  # whole factors, growing
    assert all(int(d[3]) == int(d[0]) + 4 for d in decisions)  # applied lag steps later
    assert all(float(d[1]) >= int(d[2]) for d in decisions)  # the estimate passed the size
    assert "resume check passed: steps 20..39 replayed identically" in out.stdout


def test_the_resume_check_sees_a_state_that_does_not_replay():
    source = demo_adaptive.make_source()
    backend = demo_adaptive.Backend(demo_adaptive.numpy_step)
    records, saved = demo_adaptive.train(backend, source, 0, 40, None, 20)
    replayed, _ = demo_adaptive.train(backend, source, 20, 40, saved, None)
    assert replayed == records[20:]
    saved["noise"]["trace"] = (0.0).hex()  # another estimator history: other estimates
    changed, _ = demo_adaptive.train(backend, source, 20, 40, saved, None)
    assert changed != records[20:]
