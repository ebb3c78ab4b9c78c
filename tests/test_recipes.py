"""The README's recipes, each run with its real client: accelerate, Lightning,
torchdata's StatefulDataLoader, orbax with grain's checkpoint handlers."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import rampup

SCHEDULE = rampup.piecewise({0: 2, 3: 4, 6: 8})
LENGTH = 60


def elements() -> np.ndarray:
    return np.arange(2 * LENGTH, dtype=np.float32).reshape(LENGTH, 2)


def whole_batches(num_epochs=1, shuffle_seed=1) -> list[list[float]]:
    """The one-process global batches, the oracle of every recipe."""
    batches = rampup.RampupBatches(
        elements(), SCHEDULE, shuffle_seed=shuffle_seed, num_epochs=num_epochs
    )
    return [b[:, 0].tolist() for b in batches]


# accelerate: 2 processes on 127.0.0.1 (gloo), launched with the variables accelerate reads.

ACCELERATE_RANK = """
import json, sys
import numpy as np, torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader
import rampup
from rampup.adapters.torch import RampupIterableDataset

out = sys.argv[1]
schedule = rampup.piecewise({0: 2, 3: 4, 6: 8})
data = np.arange(120, dtype=np.float32).reshape(60, 2)
accelerator = Accelerator(cpu=True)

# The recipe: prepare the model and optimizer, not the DataLoader.
torch.manual_seed(0)
model = torch.nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
model, optimizer = accelerator.prepare(model, optimizer)
dataset = RampupIterableDataset(data, schedule, shuffle=True, seed=1, num_epochs=1)
rows = []
for batch in DataLoader(dataset, batch_size=None, num_workers=2):
    batch = send_to_device(batch, accelerator.device)
    loss = model(batch).pow(2).mean()
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
    rows.append(batch[:, 0].tolist())

# What the recipe avoids: accelerate shards the rank's slices once more.
refused = None
try:
    for _ in accelerator.prepare(DataLoader(dataset, batch_size=None)):
        pass
except ValueError as e:
    refused = str(e)
weights = [float(w) for w in model.module.weight.flatten()] if hasattr(model, "module") else None
with open(out, "w") as f:
    json.dump({"rank": accelerator.process_index, "world": accelerator.num_processes,
               "rows": rows, "refused": refused, "weights": weights}, f)
accelerator.wait_for_everyone()
accelerator.end_training()
"""


@pytest.mark.slow
def test_accelerate_two_processes_recipe_is_exact_and_prepare_is_refused(
    tmp_path, run_on_free_port
):
    pytest.importorskip("accelerate")

    def launch(port):  # torch's TCPStore on MASTER_PORT, as torchrun sets it up
        procs = []
        for rank in (0, 1):
            env = {
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": "2",
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", ACCELERATE_RANK, str(tmp_path / f"rank{rank}.json")],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        return procs

    procs, logs = run_on_free_port(launch, timeout=120)
    assert [p.returncode for p in procs] == [0, 0], [log[-3000:] for log in logs]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]
    union = [a + b for a, b in zip(ranks[0]["rows"], ranks[1]["rows"], strict=True)]
    assert union == whole_batches()
    plan = rampup.Plan(SCHEDULE)
    assert [len(a) + len(b) for a, b in zip(ranks[0]["rows"], ranks[1]["rows"], strict=True)][
        :-1
    ] == [plan.size(k) for k in range(len(union) - 1)]
    # DDP kept the replicas equal: the model was prepared, the data was not.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    for r in ranks:
        assert r["refused"] is not None, "accelerator.prepare(loader) was not refused"
        assert "accelerator.prepare()" in r["refused"]
        assert "prepare the model and optimizer only" in r["refused"]


def test_accelerate_one_process_prepare_keeps_the_batches():
    # With one process accelerate's dispatcher passes each batch through: nothing to refuse.
    accelerate = pytest.importorskip("accelerate")
    torch = pytest.importorskip("torch")
    from rampup.adapters.torch import RampupIterableDataset

    accelerator = accelerate.Accelerator(cpu=True)
    assert accelerator.num_processes == 1
    dataset = RampupIterableDataset(elements(), SCHEDULE, shuffle=True, seed=1, num_epochs=1)
    loader = accelerator.prepare(torch.utils.data.DataLoader(dataset, batch_size=None))
    assert [b[:, 0].tolist() for b in loader] == whole_batches()


# Lightning: Trainer(max_steps=...), set_step(global_step) in train_dataloader().


def lightning_module(num_epochs, num_workers, multiprocessing_context=None):
    lightning = pytest.importorskip("lightning")
    torch = pytest.importorskip("torch")
    from rampup.adapters.torch import RampupIterableDataset

    class Regression(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
            self.seen = []  # (global step, the batch's first column, loss)

        def train_dataloader(self):
            dataset = RampupIterableDataset(
                elements(), SCHEDULE, shuffle=True, seed=1, num_epochs=num_epochs
            )
            dataset.set_step(self.trainer.global_step)  # exact resume: O(1) at any step
            return torch.utils.data.DataLoader(
                dataset,
                batch_size=None,
                num_workers=num_workers,
                multiprocessing_context=multiprocessing_context if num_workers else None,
            )

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch / 100).pow(2).mean()
            self.seen.append((self.trainer.global_step, batch[:, 0].tolist(), loss.item()))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    return Regression()


def trainer(**kwargs):
    import lightning

    return lightning.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_lightning_resume_from_its_checkpoint_continues_exactly(tmp_path, multiprocessing_context):
    lightning = pytest.importorskip("lightning")
    run = lightning_module(
        num_epochs=None, num_workers=2, multiprocessing_context=multiprocessing_context
    )
    every_3 = lightning.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1
    )
    trainer(max_steps=8, callbacks=[every_3]).fit(run)
    assert [(step, len(rows)) for step, rows, _ in run.seen] == [(k, SCHEDULE(k)) for k in range(8)]
    resumed = lightning_module(
        num_epochs=None, num_workers=2, multiprocessing_context=multiprocessing_context
    )
    trainer(max_steps=8, enable_checkpointing=False).fit(
        resumed, ckpt_path=tmp_path / "epoch=0-step=3.ckpt"
    )
    # Same steps, same batches and, with the model restored, the same losses.
    assert resumed.seen == run.seen[3:]


def test_lightning_max_epochs_over_finite_data_restarts_the_ramp():
    pytest.importorskip("lightning")
    run = lightning_module(num_epochs=1, num_workers=0)
    trainer(max_epochs=2, enable_checkpointing=False).fit(run)
    one_pass = whole_batches()
    # Lightning iterates the DataLoader anew each epoch: the second epoch starts the
    # schedule (and the data) from step 0 again, while global_step goes on.
    assert [rows for _, rows, _ in run.seen] == one_pass + one_pass
    assert [step for step, _, _ in run.seen] == list(range(2 * len(one_pass)))


def test_lightning_one_ramp_over_several_passes_uses_num_epochs():
    pytest.importorskip("lightning")
    run = lightning_module(num_epochs=2, num_workers=0)
    trainer(max_epochs=1, enable_checkpointing=False).fit(run)
    assert [rows for _, rows, _ in run.seen] == whole_batches(num_epochs=2)


# torchdata's StatefulDataLoader.


def stateful_loader(num_workers, multiprocessing_context=None):
    torchdata = pytest.importorskip("torchdata.stateful_dataloader")
    from rampup.adapters.torch import RampupIterableDataset

    dataset = RampupIterableDataset(elements(), SCHEDULE, shuffle=True, seed=1, num_epochs=2)
    return torchdata.StatefulDataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        multiprocessing_context=multiprocessing_context if num_workers else None,
    )


def test_stateful_dataloader_restores_into_a_new_loader_exactly(multiprocessing_context):
    whole = [b[:, 0].tolist() for b in stateful_loader(2, multiprocessing_context)]
    assert whole == whole_batches(num_epochs=2)
    loader = stateful_loader(2, multiprocessing_context)
    it = iter(loader)
    head = [next(it)[:, 0].tolist() for _ in range(5)]
    state = json.loads(json.dumps(loader.state_dict()))  # survives JSON
    restored = stateful_loader(2, multiprocessing_context)
    restored.load_state_dict(state)
    assert head + [b[:, 0].tolist() for b in restored] == whole


@pytest.mark.parametrize("num_workers", [0, 3])
def test_stateful_dataloader_cannot_change_the_worker_count_but_set_step_can(
    num_workers, multiprocessing_context
):
    loader = stateful_loader(2, multiprocessing_context)
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    other = stateful_loader(num_workers, multiprocessing_context)
    other.load_state_dict(state)
    with pytest.raises(AssertionError):  # torchdata's own check, when iteration starts
        next(iter(other))
    # The training loop's step is the whole data state: any worker count resumes from it.
    fresh = stateful_loader(num_workers, multiprocessing_context)
    fresh.dataset.set_step(5)
    assert [b[:, 0].tolist() for b in fresh] == whole_batches(num_epochs=2)[5:]


# orbax's CheckpointManager with grain's checkpoint handler, next to the model state.


def as_int64(i: int) -> np.int64:
    return np.int64(i)


def grain_pipelines():
    grain = pytest.importorskip("grain")
    from rampup.adapters.grain import RampupIterDataset, RampupMapDataset

    def source():
        return grain.MapDataset.range(LENGTH).shuffle(seed=3).map(as_int64)

    def map_pipeline():
        return RampupMapDataset(
            source(), SCHEDULE, num_epochs=2, process_index=0, process_count=1
        ).to_iter_dataset()

    def map_pipeline_two_workers():
        options = grain.MultiprocessingOptions(num_workers=2, per_worker_buffer_size=2)
        return map_pipeline().mp_prefetch(options)

    def stream_pipeline():
        return RampupIterDataset(
            source().repeat(2).to_iter_dataset(), SCHEDULE, process_index=0, process_count=1
        )

    return {
        "map": map_pipeline,
        "map_mp_prefetch": map_pipeline_two_workers,
        "stream": stream_pipeline,
    }


def expire(signum, frame):
    raise TimeoutError("the mp_prefetch pipeline ran past 120 s")


@pytest.mark.parametrize(
    "kind", ["map", pytest.param("map_mp_prefetch", marks=pytest.mark.slow), "stream"]
)
def test_orbax_checkpoint_manager_with_grain_handler_continues_exactly(kind, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    grain = pytest.importorskip("grain")
    if kind == "map_mp_prefetch":
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's mp_prefetch reads absl flags
            flags.FLAGS.mark_as_parsed()
        previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(120)
    try:
        check_orbax_round_trip(kind, tmp_path, ocp, grain)
    finally:
        if kind == "map_mp_prefetch":
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)


def check_orbax_round_trip(kind, tmp_path, ocp, grain):
    make = grain_pipelines()[kind]
    whole = [b.tolist() for b in make()]
    assert [len(b) for b in whole][:8] == [SCHEDULE(k) for k in range(8)]
    params = {"w": np.arange(3.0, dtype=np.float32)}
    it = iter(make())
    for _ in range(5):
        next(it)
    with ocp.CheckpointManager(tmp_path) as manager:
        manager.save(
            5,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), data=grain.checkpoint.CheckpointSave(it)
            ),
        )
        manager.wait_until_finished()
    if hasattr(it, "close"):
        it.close()
    with ocp.CheckpointManager(tmp_path) as manager:
        step = manager.latest_step()
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(params),
                data=grain.checkpoint.CheckpointRestore(iter(make())),
            ),
        )
    assert step == 5
    np.testing.assert_array_equal(restored["params"]["w"], params["w"])
    assert [b.tolist() for b in restored["data"]] == whole[5:]
    if kind == "map_mp_prefetch":
        # The state is the step's: it restores without mp_prefetch's workers too.
        with ocp.CheckpointManager(tmp_path) as manager:
            alone = manager.restore(
                step,
                args=ocp.args.Composite(
                    data=grain.checkpoint.CheckpointRestore(iter(grain_pipelines()["map"]()))
                ),
            )
        assert [b.tolist() for b in alone["data"]] == whole[5:]
