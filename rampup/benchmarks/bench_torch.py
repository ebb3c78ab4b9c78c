"""PyTorch adapter: DataLoader workers 2 vs 0, and the ramp-up vs `DataLoader(batch_size=n)`.

The ramp-up rows time both sides in the main process (`num_workers=0`): what
they compare is the per-batch cost of the ramp-up, which workers would spread
over other cores and the machine's load would move. The Hugging Face `datasets`
row is left out, saying so on stderr, when `datasets` is not installed.

Run: python -m rampup.benchmarks.bench_torch [--quick] [--json PATH]
(from a checkout, `python -m` imports the checkout's `rampup`; a script path
would import whichever `rampup` is installed)
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from rampup import constant, piecewise
from rampup.adapters.torch import RampupBatchSampler, RampupIterableDataset
from rampup.benchmarks.harness import at_least, at_most, main, ratio

# DataLoader workers of the sampler and datasets rows, the same on both sides.
WORKERS = 0


class HeavyItems(Dataset):
    """Items that cost about a millisecond of single-threaded NumPy each."""

    def __len__(self) -> int:
        return 100_000

    def __getitem__(self, i: int) -> np.ndarray:
        x = np.full(2048, float(i))
        for _ in range(12):
            x = np.sin(x) + np.cos(x)
        return x.astype(np.float32)


class CheapItems(Dataset):
    """Rows of an array, one `__getitem__` per element as a torch map-style dataset reads."""

    def __init__(self, rows: int, width: int) -> None:
        self.data = np.random.default_rng(0).random((rows, width), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[i]


class Columnar(Dataset):
    """A Hugging Face-style table: columns of arrays, `__getitems__` reads rows in one take.

    `datasets.Dataset.__getitems__` does the same: one columnar read of the
    indices, then one dict per row.
    """

    def __init__(self, rows: int, width: int) -> None:
        rng = np.random.default_rng(0)
        self.columns: dict[str, np.ndarray] = {
            "input_ids": rng.integers(0, 50_000, (rows, width), dtype=np.int32),
            "label": rng.integers(0, 2, rows),
        }
        self.batched_calls = 0

    def __len__(self) -> int:
        return len(self.columns["label"])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.columns.items()}

    def __getitems__(self, indices: list[int]) -> list[dict[str, np.ndarray]]:
        self.batched_calls += 1
        batch = {k: v[indices] for k, v in self.columns.items()}
        return [{k: v[j] for k, v in batch.items()} for j in range(len(indices))]


def steady_seconds(num_workers: int, batches: int, rampup: bool = True) -> float:
    """Time for `batches` batches once every worker has delivered its first one.

    `rampup=False` times torch's own `DataLoader(batch_size=32)` over the same
    items: the machine's scaling with workers, for reference.
    """
    if rampup:
        loader = DataLoader(
            RampupIterableDataset(HeavyItems(), piecewise({0: 16, 4: 32})),
            batch_size=None,
            num_workers=num_workers,
            prefetch_factor=4 if num_workers else None,
        )
    else:
        loader = DataLoader(
            HeavyItems(),
            batch_size=32,
            num_workers=num_workers,
            prefetch_factor=4 if num_workers else None,
        )
    it = iter(loader)
    for _ in range(max(num_workers, 1)):  # worker start-up is not throughput
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    del it
    return seconds


def workers_two_vs_zero(quick: bool) -> dict[str, Any]:
    """Throughput with 2 DataLoader workers / with 0, CPU-heavy items, runs interleaved."""
    batches, repeats = (12, 3) if quick else (40, 5)
    ours: list[float] = []
    reference: list[float] = []
    for i in range(repeats):
        for rampup, ratios in ((True, ours), (False, reference)):
            order = (0, 2) if i % 2 else (2, 0)
            t = {w: steady_seconds(w, batches, rampup) for w in order}
            ratios.append(t[0] / t[2])
    return at_least(
        "throughput, 2 DataLoader workers / 0, CPU-heavy items",
        statistics.median(ours),
        1.6,
        load_sensitive=True,
        torch_batch_size_32_same_items=round(statistics.median(reference), 3),
    )


def constant_vs_batch_size(quick: bool) -> dict[str, Any]:
    """A ramp-up at a constant schedule vs `DataLoader(dataset, batch_size=n)`, 0 workers."""
    source, n = CheapItems(4096 if quick else 16384, 64), 64
    return at_most(
        "time, ramp-up at constant(64) / DataLoader(batch_size=64), same dataset",
        _constant_vs_batch_size(source, n, 5 if quick else 11),
        1.10,
    )


def _constant_vs_batch_size(source: Any, n: int, repeats: int) -> float:
    """time(a ramp-up at constant(n) over `source`) / time(`DataLoader(source, batch_size=n)`),
    `WORKERS` workers on each side."""

    def ours():
        for _ in DataLoader(
            RampupIterableDataset(source, constant(n), num_epochs=1),
            batch_size=None,
            num_workers=WORKERS,
        ):
            pass

    def torch_batch():
        for _ in DataLoader(source, batch_size=n, num_workers=WORKERS):
            pass

    return ratio(ours, torch_batch, repeats)


def columnar_vs_batch_size(quick: bool) -> list[dict[str, Any]]:
    """Over a columnar source with `__getitems__`: calls per batch, and the time against
    `DataLoader(source, batch_size=n)`, which reads it the same way, 0 workers."""
    source, n = Columnar(4096 if quick else 16384, 128), 64
    loader = DataLoader(RampupIterableDataset(source, constant(n), num_epochs=1), batch_size=None)
    batches = sum(1 for _ in loader)
    calls_per_batch = source.batched_calls / batches
    return [
        at_most("__getitems__ calls per batch, columnar source", calls_per_batch, 1.0),
        at_most(
            "time, ramp-up at constant(64) / DataLoader(batch_size=64), columnar "
            "source with __getitems__",
            _constant_vs_batch_size(source, n, 5 if quick else 11),
            1.10,
        ),
    ]


def sampler_vs_batch_size(quick: bool) -> dict[str, Any]:
    """`RampupBatchSampler` at a constant schedule through `DataLoader` vs
    `DataLoader(dataset, batch_size=n)`: the same dataset, collate and workers."""
    source, n = CheapItems(4096 if quick else 16384, 64), 64

    def ours():
        sampler = RampupBatchSampler(len(source), constant(n), num_epochs=1)
        for _ in DataLoader(source, batch_sampler=sampler, num_workers=WORKERS):
            pass

    def torch_batch():
        for _ in DataLoader(source, batch_size=n, num_workers=WORKERS):
            pass

    return at_most(
        f"time, RampupBatchSampler at constant(64) through DataLoader / "
        f"DataLoader(batch_size=64), same dataset, {WORKERS} workers",
        ratio(ours, torch_batch, 5 if quick else 21),
        1.05,
    )


def hugging_face_rows(rows: int) -> Any:
    """A Hugging Face `datasets.Dataset` in torch format, made locally: 8 floats and a label
    per row. None, saying why on stderr, when `datasets` is not installed."""
    try:
        import datasets
    except ImportError:
        print(
            "skipped: the Hugging Face datasets row (datasets is not installed; "
            "pip install datasets)",
            file=sys.stderr,
        )
        return None
    rng = np.random.default_rng(0)
    columns = {
        "features": rng.random((rows, 8), dtype=np.float32),
        "label": rng.integers(0, 2, rows),
    }
    return datasets.Dataset.from_dict(columns).with_format("torch")


def hugging_face_vs_batch_size(quick: bool) -> list[dict[str, Any]]:
    """The ramp-up at a constant schedule over a `datasets` source in torch format (tensor
    elements, stacked as tensors) vs `DataLoader(source, batch_size=n)`, which reads it
    the same way (`__getitems__`); no row without `datasets`."""
    source, n = hugging_face_rows(2_000 if quick else 50_000), 64
    if source is None:
        return []
    return [
        at_most(
            f"time, ramp-up at constant(64) / DataLoader(batch_size=64), Hugging Face "
            f"datasets source in torch format, {WORKERS} workers",
            _constant_vs_batch_size(source, n, 3 if quick else 7),
            1.10,
        )
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """All PyTorch adapter benchmarks."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        return [
            workers_two_vs_zero(quick),
            constant_vs_batch_size(quick),
            *columnar_vs_batch_size(quick),
            sampler_vs_batch_size(quick),
            *hugging_face_vs_batch_size(quick),
        ]


if __name__ == "__main__":
    main(run)
