"""The examples run, train on the scheduled batch sizes, and resume exactly.

A resumed run restores the model, the optimizer and the data of one step, so its
losses after the resume point are those of the run that did not stop.
"""

import os
import pathlib
import subprocess
import sys

import pytest

import rampup

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLAN = rampup.Plan(rampup.piecewise({0: 16, 4: 32, 8: 64}))


def rows(*args, env=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=240, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [line.split() for line in out.stdout.splitlines() if line.startswith("step ")]


def losses(rows):
    return {int(r[1]): r[-1] for r in rows}  # step -> the printed loss, compared as text


def test_torch_example_resumes_model_optimizer_and_data(tmp_path):
    pytest.importorskip("torch")
    script = str(ROOT / "examples" / "torch_train.py")
    whole = rows(
        script, "--steps", "10", "--workers", "2", "--checkpoint", str(tmp_path / "whole.pt")
    )
    assert [int(r[1]) for r in whole] == list(range(10))
    assert [int(r[3]) for r in whole] == [PLAN.size(k) for k in range(10)]
    assert [int(r[5]) for r in whole] == [PLAN.offset(k + 1) for k in range(10)]
    checkpoint = str(tmp_path / "resumed.pt")
    head = rows(script, "--steps", "7", "--workers", "2", "--checkpoint", checkpoint)
    assert losses(head) == {k: v for k, v in losses(whole).items() if k < 7}
    # Resumed with another worker count: the data state is the step.
    tail = rows(script, "--steps", "10", "--workers", "3", "--checkpoint", checkpoint)
    assert [(int(r[1]), int(r[3])) for r in tail] == [(k, PLAN.size(k)) for k in (7, 8, 9)]
    assert losses(tail) == {k: v for k, v in losses(whole).items() if k >= 7}


@pytest.mark.slow
def test_jax_example_resumes_params_optimizer_and_data_from_orbax(tmp_path):
    for name in ("jax", "grain", "optax", "orbax.checkpoint"):
        pytest.importorskip(name)
    script = str(ROOT / "examples" / "jax_train.py")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    whole = rows(script, "--steps", "12", "--checkpoint", str(tmp_path / "whole"), env=env)
    assert [int(r[1]) for r in whole] == list(range(12))
    assert [int(r[3]) for r in whole] == [PLAN.size(k) for k in range(12)]
    assert [int(r[5]) for r in whole] == [PLAN.offset(k + 1) for k in range(12)]
    assert int(whole[-1][7]) == len(PLAN.distinct_sizes(12))  # jax's own compile count
    checkpoint = str(tmp_path / "resumed")
    head = rows(script, "--steps", "7", "--checkpoint", checkpoint, env=env)
    assert losses(head) == {k: v for k, v in losses(whole).items() if k < 7}
    tail = rows(script, "--steps", "12", "--checkpoint", checkpoint, env=env)
    assert [(int(r[1]), int(r[3])) for r in tail] == [(k, PLAN.size(k)) for k in range(7, 12)]
    assert losses(tail) == {k: v for k, v in losses(whole).items() if k >= 7}


def test_keras_example_trains_on_the_scheduled_sizes():
    pytest.importorskip("tensorflow")
    out = rows(str(ROOT / "examples" / "keras_fit.py"), "--steps", "10")
    assert [(int(r[1]), int(r[3])) for r in out] == [(k, PLAN.size(k)) for k in range(10)]


def test_torch_example_accumulates_microbatches_under_a_scaled_lr(tmp_path):
    pytest.importorskip("torch")
    lr = rampup.scaled(1e-2, PLAN.schedule)
    script = str(ROOT / "examples" / "torch_train.py")
    checkpoint = str(tmp_path / "ckpt.pt")
    head = rows(script, "--steps", "7", "--workers", "2", "--checkpoint", checkpoint)
    tail = rows(script, "--steps", "10", "--workers", "0", "--checkpoint", checkpoint)
    out = head + tail  # the resumed scheduler starts at the restored step
    assert [int(r[1]) for r in out] == list(range(10))
    assert [int(r[3]) for r in out] == [PLAN.size(k) for k in range(10)]
    assert [int(r[7]) for r in out] == [PLAN.size(k) // 8 for k in range(10)]
    assert [float(r[9]) for r in out] == pytest.approx([lr(k) for k in range(10)], rel=1e-5)


def test_jax_example_runs_adam_on_optax_schedule(tmp_path):
    for name in ("jax", "grain", "optax", "orbax.checkpoint"):
        pytest.importorskip(name)
    lr = rampup.scaled(1e-2, PLAN.schedule)
    out = rows(
        str(ROOT / "examples" / "jax_train.py"),
        "--steps",
        "10",
        "--checkpoint",
        str(tmp_path / "checkpoint"),
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    assert [int(r[3]) for r in out] == [PLAN.size(k) for k in range(10)]
    assert [float(r[9]) for r in out] == pytest.approx([lr(k) for k in range(10)], rel=1e-5)
