"""One rank of the 2-rank DDP test in tests/test_torch_adaptive.py (not a test module itself).

Run as: python torch_ddp_worker.py PORT RANK WORLD_SIZE. It joins a gloo group on
127.0.0.1, takes two DDP steps with `GradNoiseNorms` as the comm hook and
checks the norms against gradients computed one rank's rows at a time without
DDP; it prints "ok <small> <big>" per step.
"""

import copy
import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rampup.adapters.torch import GradNoiseNorms

port, rank, world = (int(v) for v in sys.argv[1:4])
dist.init_process_group(
    "gloo",
    init_method=f"tcp://127.0.0.1:{port}",
    rank=rank,
    world_size=world,
    timeout=datetime.timedelta(seconds=60),
)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
reference = copy.deepcopy(model)
# A tiny bucket cap: the gradients go through the hook in several buckets.
ddp = DistributedDataParallel(model, bucket_cap_mb=0.0002)
norms = GradNoiseNorms(ddp)
per_rank = 8


def loss_of(net, x, y):
    return torch.nn.functional.mse_loss(net(x).squeeze(-1), y)


def sq_norm(net):
    return sum(float(p.grad.double().square().sum()) for p in net.parameters())


for step in range(2):
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(per_rank * world, 5, generator=generator)
    y = torch.randn(per_rank * world, generator=generator)
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    ddp.zero_grad()
    loss_of(ddp, x[rows], y[rows]).backward()
    small, big = norms.read()

    reference.load_state_dict(model.state_dict())  # the same parameters, no DDP
    local = []
    for r in range(world):
        reference.zero_grad()
        loss_of(
            reference, x[r * per_rank : (r + 1) * per_rank], y[r * per_rank : (r + 1) * per_rank]
        ).backward()
        local.append(sq_norm(reference))
    reference.zero_grad()
    loss_of(reference, x, y).backward()
    expected_small, expected_big = sum(local) / world, sq_norm(reference)
    assert abs(small - expected_small) <= 1e-5 * expected_small, (small, expected_small)
    assert abs(big - expected_big) <= 1e-5 * expected_big, (big, expected_big)
    print(f"ok {small!r} {big!r}", flush=True)
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
# Both ranks are done before either tears down: a rank that exits while its peer's gloo
# threads still talk to it can abort the peer ("terminate called without an active exception").
dist.barrier()
sys.stdout.flush()
os._exit(0)
