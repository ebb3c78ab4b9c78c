"""An adaptive ramp-up under PyTorch DDP: 2 gloo ranks on 127.0.0.1, DataLoader workers.

Run: python examples/torch_ddp_adaptive.py --steps 40 --workers 2
`GradNoiseNorms` reads this rank's gradient norm before DDP's all-reduce and
the global one after it; every rank feeds the same numbers to its
`NoiseScale`, so every rank's `AdaptiveSchedule` makes the same decisions.
`follow` restarts the DataLoader workers (other processes, holding a copy of
the decisions) at the training step whenever they would miss a decision.
"""

import argparse
import datetime
import socket
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import rampup
from rampup.adapters.torch import GradNoiseNorms, RampupIterableDataset, follow

FEATURES = 16


def make_source(n: int = 1 << 15) -> np.ndarray:
    """Rows of features and a noisy linear target: the noise scale grows as the fit improves."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = x @ rng.normal(size=FEATURES).astype(np.float32) + rng.normal(size=n).astype(np.float32)
    return np.concatenate([x, y[:, None]], axis=1)


def say(line: str) -> None:
    """Prints a whole line in one write: the ranks share stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def train(rank: int, world_size: int, port: int, steps: int, workers: int) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    # lag 12 > the loader's run-ahead, workers * prefetch_factor = 2 * 2. A copy of the
    # decisions covers lag - run-ahead steps: the larger the lag, the rarer the restarts.
    schedule = rampup.AdaptiveSchedule(
        16,
        multiple_of=world_size,
        max_size=1024,
        lag=12,
        policy=rampup.GrowthPolicy(factor=2, patience=4),
    )
    dataset = RampupIterableDataset(make_source(), schedule, shuffle=True, seed=0)
    # Forked workers start in milliseconds; spawned ones import torch anew at every restart.
    context = "fork" if workers else None
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, multiprocessing_context=context
    )
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(FEATURES, 1, bias=False))
    torch.nn.init.zeros_(model.module.weight)
    norms = GradNoiseNorms(model)
    noise = rampup.NoiseScale(beta=0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    batches = follow(loader)
    for step in range(steps):
        batch = next(batches)
        x, y = batch[:, :FEATURES], batch[:, FEATURES]
        loss = 0.5 * torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
        optimizer.zero_grad()
        loss.backward()
        small, big = norms.read()
        local, size = len(batch), len(batch) * world_size
        estimate = noise.update(small, big, local, size)
        decision = schedule.propose(step, estimate)
        if rank == 0:
            note = f" -> size {decision.size} from step {decision.start}" if decision else ""
            say(
                f"step {step} size {size} noise_scale {estimate or 0:.1f} "
                f"loss {loss.item():.4f}{note}"
            )
        optimizer.step()
    say(f"rank {rank} decisions {schedule.decisions} restarts {batches.restarts}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(
        train, args=(2, port, args.steps, args.workers), nprocs=2, start_method="fork"
    )


if __name__ == "__main__":
    main()
