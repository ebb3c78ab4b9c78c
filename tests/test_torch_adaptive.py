"""An adaptive schedule through torch DataLoaders: exact with workers, resumable through JSON."""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from rampup import AdaptiveSchedule, GrowthPolicy, RampupBatches  # noqa: E402
from rampup.adapters.torch import RampupIterableDataset, follow  # noqa: E402

SOURCE = np.arange(4000)
STEPS = 30


def make_schedule():
    return AdaptiveSchedule(4, lag=6, multiple_of=2, max_size=64, policy=GrowthPolicy(patience=2))


def estimate(step, batch):
    """A noise scale that grows and depends on the data seen, as a measured one does."""
    return 3.0 * 1.2**step * (1 + int(batch.sum()) % 3)


def train(schedule, batches, first, last):
    record = []
    for step in range(first, last):
        batch = np.asarray(next(batches))
        record.append(batch.tolist())
        schedule.propose(step, estimate(step, batch))
    return record


def core_run():
    """The oracle: the core's in-process iterator over a live schedule, no loader."""
    schedule = make_schedule()
    return train(schedule, iter(RampupBatches(SOURCE, schedule, shuffle_seed=3)), 0, STEPS)


def loader_for(schedule, num_workers, rank=0, world_size=1):
    dataset = RampupIterableDataset(
        SOURCE, schedule, shuffle=True, seed=3, rank=rank, world_size=world_size
    )
    options = {"prefetch_factor": 1} if num_workers else {}
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, **options)


@settings(max_examples=3, deadline=None)
@given(stop=st.integers(1, STEPS - 1), num_workers=st.sampled_from([0, 2]))
def test_resume_through_json_at_a_random_step_replays_identically(stop, num_workers):
    expected = core_run()
    schedule = make_schedule()
    batches = follow(loader_for(schedule, num_workers))
    first = train(schedule, batches, 0, stop)
    saved = json.loads(json.dumps({"data": batches.get_state(), "schedule": schedule.get_state()}))

    restored = make_schedule()
    restored.set_state(saved["schedule"])
    loader = loader_for(restored, num_workers)
    loader.dataset.load_state_dict(saved["data"])
    second = train(restored, follow(loader), stop, STEPS)
    assert first + second == expected
    assert len(restored.decisions) >= 3


def test_two_ranks_together_give_the_one_process_batches():
    expected = core_run()
    schedules = [make_schedule() for _ in range(2)]
    loaders = [follow(loader_for(s, 2, rank, 2)) for rank, s in enumerate(schedules)]
    record = []
    for step in range(STEPS):
        batch = np.concatenate([np.asarray(next(loader)) for loader in loaders])
        record.append(batch.tolist())
        for schedule in schedules:  # every rank proposes the same all-reduced estimate
            schedule.propose(step, estimate(step, batch))
    assert record == expected


def test_workers_restart_only_at_decisions_and_before_their_copy_runs_out():
    schedule = make_schedule()
    batches = follow(loader_for(schedule, 2))
    train(schedule, batches, 0, STEPS)
    # lag 6, run-ahead 2 workers x prefetch 1: a copy covers 4 steps past its start.
    assert len(schedule.decisions) <= batches.restarts <= STEPS // 4 + len(schedule.decisions)


def test_workers_without_follow_refuse_a_step_their_copy_has_not_decided():
    schedule = make_schedule()
    loader = iter(loader_for(schedule, 2))
    with pytest.raises(ValueError, match="not decided yet"):
        train(schedule, loader, 0, STEPS)


def test_follow_refuses_a_lag_below_the_run_ahead():
    schedule = AdaptiveSchedule(4, lag=4)
    loader = DataLoader(
        RampupIterableDataset(SOURCE, schedule), batch_size=None, num_workers=2, prefetch_factor=2
    )
    with pytest.raises(ValueError, match="up to 4 steps ahead.*lag >= 5"):
        follow(loader)


def test_follow_refuses_persistent_workers():
    loader = DataLoader(
        RampupIterableDataset(SOURCE, make_schedule()),
        batch_size=None,
        num_workers=1,
        prefetch_factor=1,
        persistent_workers=True,
    )
    with pytest.raises(ValueError, match="persistent_workers=False"):
        follow(loader)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_hook_gives_the_local_and_the_all_reduced_norms_on_two_gloo_ranks():
    worker = pathlib.Path(__file__).with_name("torch_ddp_worker.py")
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, str(worker), str(port), str(rank), "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err[-3000:]
            outputs.append(out.split())
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    # Both steps checked on both ranks, and the ranks read the very same numbers.
    assert outputs[0] == outputs[1] and outputs[0].count("ok") == 2


def test_lr_lambda_follows_the_decisions():
    from rampup.adapters.torch import lr_lambda

    schedule = AdaptiveSchedule(8, lag=2, policy=GrowthPolicy(patience=1))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(schedule, rule="linear", reference_size=32)
    )
    seen = []
    for step in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.propose(step, 100.0 if step == 0 else None)
        lambda_lr.step()
    assert seen == [0.25, 0.25, 0.5, 0.5]
