"""A small regression model trained with a batch-size ramp-up through a PyTorch DataLoader.

Run: python examples/torch_train.py --steps 20 --workers 2 --checkpoint ckpt.pt
The batches come from 2 worker processes and are still exactly the schedule's, in
order, as micro-batches of 8 rows (one compiled shape; the gradients accumulate over
a step's micro-batches), and the learning rate follows the batch size through
`LambdaLR`. At the end it saves the model, the optimizer and the data state with
`torch.save`; run it again with a larger --steps (and any --workers) and it resumes
from that file, so the losses go on as if the run had not stopped.
"""

import argparse
import os

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset

import rampup
from rampup.adapters.torch import RampupIterableDataset, lr_lambda

W_TRUE = np.linspace(-1.0, 1.0, 8, dtype=np.float32)


class Regression(Dataset):
    """Sample i: 8 features and their noiseless linear target."""

    def __len__(self) -> int:
        return 4096

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        x = np.random.default_rng(i).normal(size=8).astype(np.float32)
        return {"x": x, "y": np.float32(x @ W_TRUE)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--checkpoint", default="ckpt.pt")
    args = parser.parse_args()
    schedule = rampup.piecewise({0: 16, 4: 32, 8: 64})
    dataset = RampupIterableDataset(Regression(), schedule, shuffle=True, seed=0, microbatch_size=8)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    if os.path.exists(args.checkpoint):  # the model, the optimizer and the data, of one step
        checkpoint = torch.load(args.checkpoint)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        dataset.load_state_dict(checkpoint["data"])  # O(1) at any step, any worker count
    start = dataset.step
    # lr = 1e-2 * sqrt(B(k) / 64), tuned at the largest size: a pure function of the step,
    # so the scheduler starts at the restored step with nothing of its own to restore.
    optimizer.param_groups[0]["initial_lr"] = 1e-2
    scheduler = LambdaLR(optimizer, lr_lambda(schedule), last_epoch=start - 1)
    seen = dataset.plan.offset(start)  # samples trained on before this run
    loader = DataLoader(dataset, batch_size=None, num_workers=args.workers)
    for step, micro in zip(range(start, args.steps), loader, strict=False):
        optimizer.zero_grad()
        loss = 0.0
        for part in micro:  # B(k) / 8 micro-batches of 8 rows: the mean over the whole batch
            part_loss = torch.nn.functional.mse_loss(model(part["x"]).squeeze(-1), part["y"])
            (part_loss / len(micro)).backward()
            loss += part_loss.item() / len(micro)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        rows = sum(len(part["x"]) for part in micro)
        seen += rows
        print(
            f"step {step} batch {rows} samples {seen} micro {len(micro)} lr {lr:.6g} "
            f"loss {loss:.6f}"
        )
    if args.steps > start:
        dataset.set_step(args.steps)  # the data state of the next step to train
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "data": dataset.state_dict(),
            },
            args.checkpoint,
        )


if __name__ == "__main__":
    main()
