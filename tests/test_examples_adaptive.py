"""The adaptive examples run, and their batch sizes follow the decisions they print."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(script, *args):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def check_sizes_follow_decisions(stdout, steps, initial):
    rows = re.findall(
        r"^step (\d+) size (\d+) noise_scale \S+ loss \S+(?: -> size (\d+) from "
        r"step (\d+))?$",
        stdout,
        re.MULTILINE,
    )
    assert [int(r[0]) for r in rows] == list(range(steps)), stdout
    decisions = sorted((int(r[3]), int(r[2])) for r in rows if r[2])
    assert len(decisions) >= 2
    for step, size, *_ in rows:
        expected = initial
        for start, new in decisions:
            if start <= int(step):
                expected = new
        assert int(size) == expected, (step, size, decisions)
    return decisions


def test_jax_example_grows_the_batch_as_decided():
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    stdout = run("jax_adaptive.py", "--steps", "40")
    decisions = check_sizes_follow_decisions(stdout, 40, 16)
    assert [size for _, size in decisions][:2] == [32, 64]


def test_torch_ddp_example_two_ranks_make_the_same_decisions():
    pytest.importorskip("torch")
    stdout = run("torch_ddp_adaptive.py", "--steps", "40", "--workers", "2")
    check_sizes_follow_decisions(stdout, 40, 16)
    ranks = dict(re.findall(r"^rank (\d) decisions (.*) restarts", stdout, re.MULTILINE))
    assert ranks["0"] == ranks["1"] != "[]"


def test_keras_example_grows_the_batch_as_decided():
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    stdout = run("keras_adaptive.py", "--steps", "60")
    decisions = check_sizes_follow_decisions(stdout, 60, 16)
    assert [size for _, size in decisions][:2] == [32, 64]
