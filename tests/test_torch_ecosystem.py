"""The torch ecosystem's loaders and trainers around rampup's torch adapter, each real:
torchdata's `StatefulDataLoader` and nodes, Hugging Face `datasets`, Lightning.

Every expected batch comes from the one-process batches: `consecutive_batches`, a
step-by-step model of the schedule over unshuffled data, or `rampup.RampupBatches` over
the source's indices where the data is shuffled.
"""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rampup

torch = pytest.importorskip("torch")

from rampup.adapters.torch import (  # noqa: E402
    RampupBatchSampler,
    RampupIterableDataset,
    RampupNode,
    tensor_collate,
)

SCHEDULE = rampup.piecewise({0: 2, 3: 4, 6: 8})
LENGTH = 60
HERE = Path(__file__).resolve().parent


def consecutive_positions(end: int) -> list[list[int]]:
    """Stream positions `[0, end)` step by step: `SCHEDULE(k)` of them from where step k-1
    ended, the last batch cut short by the end."""
    position, step, batches = 0, 0, []
    while position < end:
        stop = min(position + SCHEDULE(step), end)
        batches.append(list(range(position, stop)))
        position, step = stop, step + 1
    return batches


def consecutive_batches(num_epochs: int) -> list[list[int]]:
    """The one-process batches of unshuffled data: position `p` is item `p % LENGTH`."""
    return [[p % LENGTH for p in b] for b in consecutive_positions(LENGTH * num_epochs)]


def shuffled_batches(num_epochs: int | None, steps: int | None = None) -> list[list[int]]:
    """The one-process batches of the source's indices, shuffled with seed 1 (the first
    `steps` of them, or all)."""
    batches = rampup.RampupBatches(
        np.arange(LENGTH), SCHEDULE, shuffle_seed=1, num_epochs=num_epochs
    )
    return [b.tolist() for b in itertools.islice(batches, steps)]


def test_the_oracles_agree_on_sizes_and_each_pass_is_a_permutation():
    plain, shuffled = consecutive_batches(2), shuffled_batches(2)
    assert [len(b) for b in shuffled] == [len(b) for b in plain]
    flat = [i for b in shuffled for i in b]
    assert sorted(flat[:LENGTH]) == sorted(flat[LENGTH:]) == list(range(LENGTH))
    assert flat[:LENGTH] != list(range(LENGTH))


def rows(batches) -> list[list[int]]:
    return [b.tolist() for b in batches]


# --- torchdata's StatefulDataLoader over RampupBatchSampler ---------------------------------


def stateful_loader(num_workers, multiprocessing_context, num_epochs=2):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    sampler = RampupBatchSampler(LENGTH, SCHEDULE, shuffle=True, seed=1, num_epochs=num_epochs)
    return stateful.StatefulDataLoader(
        np.arange(LENGTH),
        batch_sampler=sampler,
        num_workers=num_workers,
        multiprocessing_context=multiprocessing_context if num_workers else None,
    )


def test_stateful_dataloader_over_the_sampler_yields_the_one_process_batches():
    assert rows(stateful_loader(0, None)) == shuffled_batches(2)
    sampler = RampupBatchSampler(LENGTH, SCHEDULE, num_epochs=2)
    assert rows(torch.utils.data.DataLoader(np.arange(LENGTH), batch_sampler=sampler)) == (
        consecutive_batches(2)
    )


@pytest.mark.slow
def test_stateful_dataloader_sampler_checkpoint_mid_epoch_with_two_workers_restores_exactly(
    multiprocessing_context,
):
    expected = shuffled_batches(2)
    loader = stateful_loader(2, multiprocessing_context)
    it = iter(loader)
    head = [next(it).tolist() for _ in range(13)]  # step 13 is mid-epoch (epoch 0 ends at 12)
    state = json.loads(json.dumps(loader.state_dict()))
    restored = stateful_loader(2, multiprocessing_context)
    restored.load_state_dict(state)
    assert head + rows(restored) == expected
    assert head + rows(it) == expected  # run to the end: no node thread outlives the test


@pytest.mark.slow
def test_stateful_dataloader_refuses_three_workers_and_set_step_continues_under_them(
    multiprocessing_context,
):
    expected = shuffled_batches(2)
    loader = stateful_loader(2, multiprocessing_context)
    it = iter(loader)
    for _ in range(13):
        next(it)
    state = loader.state_dict()
    other = stateful_loader(3, multiprocessing_context)
    other.load_state_dict(state)
    with pytest.raises(AssertionError):  # torchdata's own check of its worker count
        next(iter(other))
    fresh = stateful_loader(3, multiprocessing_context)
    fresh.batch_sampler.set_step(13)  # the training loop's step is the whole data state
    assert rows(fresh) == expected[13:]


# --- torchdata nodes ------------------------------------------------------------------------


def test_iterable_wrapper_over_the_dataset_restores_at_the_checkpointed_step():
    nodes = pytest.importorskip("torchdata.nodes")

    def loader():
        dataset = RampupIterableDataset(np.arange(LENGTH), SCHEDULE, num_epochs=2)
        return nodes.Loader(nodes.IterableWrapper(dataset))

    first = loader()
    it = iter(first)
    for _ in range(13):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))
    restored = loader()
    restored.load_state_dict(state)
    assert rows(itertools.islice(restored, 10)) == consecutive_batches(2)[13:23]


def doubled(batch):
    return batch * 2


def node_pipeline(source, mapper_workers=2, **options):
    nodes = pytest.importorskip("torchdata.nodes")
    node = RampupNode(source, SCHEDULE, **options)
    node = nodes.ParallelMapper(node, doubled, num_workers=mapper_workers, method="thread")
    if torch.cuda.is_available():
        node = nodes.PinMemory(node)
    node = nodes.Prefetcher(node, prefetch_factor=4)
    return nodes.Loader(node)


def test_rampup_node_through_loader_mapper_and_prefetcher_resumes_exactly():
    expected = [[2 * i for i in b] for b in shuffled_batches(2)]
    options = dict(shuffle=True, seed=1, num_epochs=2)
    assert rows(node_pipeline(np.arange(LENGTH), **options)) == expected
    loader = node_pipeline(np.arange(LENGTH), **options)
    it = iter(loader)
    head = [next(it).tolist() for _ in range(13)]
    state = json.loads(json.dumps(loader.state_dict()))
    restored = node_pipeline(np.arange(LENGTH), **options)
    restored.load_state_dict(state)
    assert head + rows(restored) == expected
    assert head + rows(it) == expected  # run to the end: no node thread outlives the test


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PinMemory needs CUDA")
def test_rampup_node_through_pin_memory_yields_pinned_batches():
    batches = list(node_pipeline(np.arange(LENGTH), num_epochs=1))
    assert all(b.is_pinned() for b in batches)
    assert rows(batches) == [[2 * i for i in b] for b in consecutive_batches(1)]


def test_rampup_node_over_a_node_of_elements_restores_through_the_source_state():
    nodes = pytest.importorskip("torchdata.nodes")

    def stream():
        return nodes.IterableWrapper([np.array([i, -i]) for i in range(2 * LENGTH)])

    expected = [[[2 * p, -2 * p] for p in b] for b in consecutive_positions(2 * LENGTH)]
    assert rows(node_pipeline(stream(), mapper_workers=1)) == expected
    loader = node_pipeline(stream(), mapper_workers=1)
    it = iter(loader)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    restored = node_pipeline(stream(), mapper_workers=1)
    restored.load_state_dict(state)
    assert rows(restored) == expected[7:]
    assert rows(it) == expected[7:]  # run to the end: no node thread outlives the test


# --- Hugging Face datasets as a source --------------------------------------------------------

FORMATS = ["numpy", "torch", "python"]


def hf_table(fmt):
    datasets = pytest.importorskip("datasets")
    x = np.arange(8 * LENGTH, dtype=np.float32).reshape(LENGTH, 8)
    columns = {"x": x, "y": np.arange(LENGTH)}
    return datasets.Dataset.from_dict(columns).with_format(None if fmt == "python" else fmt)


def check_one_tensor_per_column(batches, expected):
    x = np.arange(8 * LENGTH, dtype=np.float32).reshape(LENGTH, 8)
    batches = list(batches)
    assert len(batches) == len(expected)
    for batch, indices in zip(batches, expected, strict=True):
        assert isinstance(batch["x"], torch.Tensor) and isinstance(batch["y"], torch.Tensor)
        assert batch["x"].dtype == torch.float32 and batch["x"].shape == (len(indices), 8)
        np.testing.assert_array_equal(batch["x"].numpy(), x[indices])
        assert batch["y"].tolist() == indices


@pytest.mark.parametrize("fmt", FORMATS)
def test_datasets_format_through_the_dataset_gives_one_tensor_per_column(fmt):
    dataset = RampupIterableDataset(hf_table(fmt), SCHEDULE, shuffle=True, seed=1, num_epochs=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None)
    check_one_tensor_per_column(loader, shuffled_batches(1))


@pytest.mark.parametrize("fmt", FORMATS)
def test_datasets_format_through_the_sampler_gives_one_tensor_per_column(fmt):
    sampler = RampupBatchSampler(LENGTH, SCHEDULE, shuffle=True, seed=1, num_epochs=1)
    # numpy and torch rows stack with torch's default collate_fn; python rows of lists
    # need tensor_collate (torch's makes a column of 8-number lists a list of 8 tensors).
    collate = tensor_collate if fmt == "python" else None
    loader = torch.utils.data.DataLoader(hf_table(fmt), batch_sampler=sampler, collate_fn=collate)
    check_one_tensor_per_column(loader, shuffled_batches(1))


def test_tensor_collate_as_a_collate_fn_makes_every_number_leaf_a_tensor():
    elements = [{"x": [1.0, 2.0], "y": 3, "z": np.ones(2, np.int16), "s": "a"}] * 2
    batch = tensor_collate(elements)
    assert batch["x"].tolist() == [[1.0, 2.0]] * 2 and batch["x"].dtype == torch.float32
    assert batch["y"].tolist() == [3, 3] and batch["z"].dtype == torch.int16
    assert isinstance(batch["s"], np.ndarray)  # torch has no tensor of strings
    assert batch["s"].tolist() == ["a", "a"]


# --- Lightning --------------------------------------------------------------------------------


def lightning_module(multiprocessing_context):
    lightning = pytest.importorskip("lightning")

    class Regression(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen = []  # (global step, the batch's indices, loss)

        def train_dataloader(self):
            sampler = RampupBatchSampler(LENGTH, SCHEDULE, shuffle=True, seed=1)
            sampler.set_step(self.trainer.global_step)  # 0, or the checkpoint's step
            return torch.utils.data.DataLoader(
                np.arange(LENGTH, dtype=np.float32)[:, None],
                batch_sampler=sampler,
                num_workers=2,
                multiprocessing_context=multiprocessing_context,
            )

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch / LENGTH).pow(2).mean()
            indices = [int(i) for i in batch[:, 0]]
            self.seen.append((self.trainer.global_step, indices, loss.item()))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    return Regression()


def lightning_trainer(**kwargs):
    import lightning

    return lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=8,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@pytest.mark.slow
def test_lightning_fit_over_the_sampler_trains_on_the_global_batches_and_resumes(
    tmp_path, multiprocessing_context
):
    lightning = pytest.importorskip("lightning")
    run = lightning_module(multiprocessing_context)
    every_3 = lightning.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1
    )
    lightning_trainer(callbacks=[every_3]).fit(run)
    assert [(step, rows) for step, rows, _ in run.seen] == list(
        enumerate(shuffled_batches(None, steps=8))
    )
    resumed = lightning_module(multiprocessing_context)
    lightning_trainer(enable_checkpointing=False).fit(
        resumed, ckpt_path=tmp_path / "epoch=0-step=3.ckpt"
    )
    # The same steps, the same batches and, with the model restored, the same losses.
    assert resumed.seen == run.seen[3:]


LIGHTNING_DDP_RANK = """
import json, sys
import lightning as L, numpy as np, torch
import rampup
from rampup.adapters.torch import RampupBatchSampler

class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.rows = []

    def train_dataloader(self):
        sampler = RampupBatchSampler(60, rampup.piecewise({0: 2, 3: 4, 6: 8}), shuffle=True, seed=1)
        data = np.arange(60, dtype=np.float32)[:, None]
        return torch.utils.data.DataLoader(data, batch_sampler=sampler)

    def training_step(self, batch, batch_idx):
        self.rows.append([int(i) for i in batch[:, 0]])
        return self.layer(batch / 60).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

def trainer(use_distributed_sampler):
    return L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=8, logger=False,
                     use_distributed_sampler=use_distributed_sampler, enable_progress_bar=False,
                     enable_checkpointing=False, enable_model_summary=False)

refused = None
try:
    trainer(True).fit(Regression())
except TypeError as e:
    refused = str(e)
model = Regression()
trainer(False).fit(model)
with open(sys.argv[1], "w") as f:
    json.dump({"rank": model.global_rank, "rows": model.rows, "refused": refused}, f)
"""


@pytest.mark.slow
def test_lightning_ddp_refuses_its_distributed_sampler_and_runs_exact_without_it(
    tmp_path, run_on_free_port
):
    pytest.importorskip("lightning")

    def launch(port):  # as torchrun starts them: Lightning sees LOCAL_RANK and joins
        return [
            subprocess.Popen(
                [sys.executable, "-c", LIGHTNING_DDP_RANK, str(tmp_path / f"rank{rank}.json")],
                env={
                    **os.environ,
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port),
                    "NODE_RANK": "0",
                    "LOCAL_RANK": str(rank),
                    "RANK": str(rank),
                    "WORLD_SIZE": "2",
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for rank in (0, 1)
        ]

    procs, logs = run_on_free_port(launch, timeout=180)
    assert [p.returncode for p in procs] == [0, 0], [log[-3000:] for log in logs]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert "Trainer(use_distributed_sampler=False)" in r["refused"]
    # Concatenated in rank order, the ranks' rows at each step are the global batch.
    union = [a + b for a, b in zip(ranks[0]["rows"], ranks[1]["rows"], strict=True)]
    assert union == shuffled_batches(None, steps=8)
