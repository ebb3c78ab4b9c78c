"""The PyTorch and Keras examples run and train on the scheduled batch sizes.

(`examples/jax_train.py` is run by tests/test_jax.py.)
"""

import os
import pathlib
import subprocess
import sys

import pytest

import rampup

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLAN = rampup.Plan(rampup.piecewise({0: 16, 4: 32, 8: 64}))


def rows(*args):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=240,
                         cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    return [line.split() for line in out.stdout.splitlines() if line.startswith("step ")]


def test_torch_example_with_workers_and_resume():
    pytest.importorskip("torch")
    script = str(ROOT / "examples" / "torch_train.py")
    first = rows(script, "--steps", "10", "--workers", "2")
    assert [int(r[1]) for r in first] == list(range(10))
    assert [int(r[3]) for r in first] == [PLAN.size(k) for k in range(10)]
    assert [int(r[5]) for r in first] == [PLAN.offset(k + 1) for k in range(10)]
    resumed = rows(script, "--steps", "10", "--workers", "3", "--resume-at", "7")
    assert [(int(r[1]), int(r[3])) for r in resumed] == [(k, PLAN.size(k)) for k in (7, 8, 9)]


def test_keras_example_trains_on_the_scheduled_sizes():
    pytest.importorskip("tensorflow")
    out = rows(str(ROOT / "examples" / "keras_fit.py"), "--steps", "10")
    assert [(int(r[1]), int(r[3])) for r in out] == [(k, PLAN.size(k)) for k in range(10)]
