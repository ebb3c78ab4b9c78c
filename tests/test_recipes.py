"""The recipes of docs/recipes/, each run with its real client: accelerate, Lightning,
torchdata's StatefulDataLoader, orbax with grain's checkpoint handlers."""

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest

import rampup

SCHEDULE = rampup.piecewise({0: 2, 3: 4, 6: 8})
LENGTH = 60
ROOT = pathlib.Path(__file__).resolve().parents[1]


def elements() -> np.ndarray:
    return np.arange(2 * LENGTH, dtype=np.float32).reshape(LENGTH, 2)


def whole_batches(num_epochs=1, shuffle_seed=1) -> list[list[float]]:
    """The one-process global batches, the oracle of every recipe."""
    batches = rampup.RampupBatches(
        elements(), SCHEDULE, shuffle_seed=shuffle_seed, num_epochs=num_epochs
    )
    return [b[:, 0].tolist() for b in batches]


# accelerate: the recipe page's script, run by the page's own `accelerate launch` command.

RECIPES = ROOT / "docs" / "recipes"


def recipe_page(name: str) -> str:
    """The text of docs/recipes/NAME.md."""
    return (RECIPES / f"{name}.md").read_text()


def fenced(section: str, lang: str) -> list[str]:
    """The text of the section's fenced blocks opened with ```lang, in order."""
    blocks: list[tuple[str, list[str]]] = []
    inside = False
    for line in section.splitlines():
        if not inside and line.startswith("```"):
            blocks.append((line[3:].strip(), []))
            inside = True
        elif inside and line == "```":
            inside = False
        elif inside:
            blocks[-1][1].append(line)
    return ["\n".join(lines) + "\n" for kind, lines in blocks if kind == lang]


def launch_in(tmp_path, section: str, check: str, run_on_free_port, timeout: int):
    """Runs the section's `accelerate launch` line with check.py for its train.py.

    The page's script is saved as train.py next to check.py, which runs it as
    written and then again through its functions with what the test reads recorded.
    The line runs as it is: its `--main_process_port 0` has accelerate pick a free port,
    and the fixture runs it again if another process takes that port in between.
    Returns each rank's JSON report and the launcher's output.
    """
    (tmp_path / "train.py").write_text(fenced(section, "python")[0])
    (tmp_path / "check.py").write_text(check)
    [line] = [line for line in fenced(section, "bash")[0].splitlines() if "accelerate" in line]
    argv = shlex.split(line)
    assert argv[:2] == ["accelerate", "launch"] and argv[-1] == "train.py", line
    assert argv[argv.index("--num_processes") + 1] == "2", line
    # The venv's accelerate; the processes import the rampup these tests import.
    paths = [str(pathlib.Path(rampup.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}

    started = []

    def launch(port):  # the page's port 0, not the fixture's port
        command = [str(pathlib.Path(sys.executable).with_name("accelerate")), *argv[1:]]
        command[-1] = "check.py"
        started.append(
            subprocess.Popen(
                command,
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its process group holds the ranks, killed below
            )
        )
        return started[-1:]

    try:
        procs, logs = run_on_free_port(launch, timeout=timeout)
    finally:
        for proc in started:
            try:  # ranks left behind by a launcher that failed or timed out
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert procs[0].returncode == 0, logs[0][-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    return reports, logs[0]


ACCELERATE_CHECK = """
import json, runpy
import numpy as np
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
import rampup
from rampup.adapters.torch import RampupBatchSampler, RampupIterableDataset

if __name__ == "__main__":
    runpy.run_path("train.py", run_name="__main__")  # the page's script as written
    recipe = runpy.run_path("train.py")  # its functions, with the rows recorded
    accelerator = Accelerator(cpu=True)
    model, optimizer, loader = recipe["build"](accelerator)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    steps = recipe["train"](accelerator, model, optimizer, loader)
    index = {tuple(row): i for i, row in enumerate(loader.dataset.tensors[0].tolist())}
    rows = [[index[tuple(row)] for row in x.tolist()] for x in seen]

    small = rampup.piecewise({0: 2, 3: 4, 6: 8})
    refused = {}
    try:
        accelerator.prepare(DataLoader(np.arange(60), batch_sampler=RampupBatchSampler(
            60, small, num_epochs=1)))
        refused["sampler"] = None
    except TypeError as error:
        refused["sampler"] = str(error)
    for method in ("fork", "spawn", "forkserver"):
        dataset = RampupIterableDataset(np.arange(60), small, num_epochs=1)
        prepared = accelerator.prepare(
            DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context=method))
        try:
            refused[method] = [b.tolist() for b in prepared]  # what it yields unrefused
        except ValueError as error:
            refused[method] = str(error)
    # The one path that is not refused (the recipe page says so): dispatch_batches=True.
    dispatched = prepare_data_loader(
        DataLoader(np.arange(60), batch_sampler=RampupBatchSampler(60, small, num_epochs=1)),
        dispatch_batches=True, put_on_device=True)
    with open(f"rank{accelerator.process_index}.json", "w") as f:
        json.dump({"rank": accelerator.process_index, "world": accelerator.num_processes,
                   "steps": steps, "rows": rows, "refused": refused,
                   "dispatched": [b.tolist() for b in dispatched]}, f)
"""


def rank_lines(log: str) -> list[str]:
    """The ranks' "rank R: N steps" lines, sorted.

    The ranks share the launcher's stdout, and `print` writes a line and its newline in two
    writes, so one rank's line may land before the other's newline: read them by pattern.
    """
    return sorted(re.findall(r"rank \d+: \d+ steps", log))


def in_rank_order(reports: list[dict], rows=lambda report: report["rows"]) -> list[list[int]]:
    """Each step's rows of the 2 ranks, concatenated in rank order."""
    assert [(r["rank"], r["world"]) for r in reports] == [(0, 2), (1, 2)]
    return [a + b for a, b in zip(rows(reports[0]), rows(reports[1]), strict=True)]


@pytest.mark.slow
def test_accelerate_recipe_with_its_launch_command_is_exact_and_prepare_is_refused(
    tmp_path, run_on_free_port
):
    pytest.importorskip("accelerate")
    section = recipe_page("accelerate")
    recipe = fenced(section, "python")[0]
    # The oracle's parameters are the recipe's: it must still say them.
    assert "rampup.piecewise({0: 16, 4: 32}, multiple_of=accelerator.num_processes)" in recipe
    assert "RampupBatchSampler(len(dataset), schedule, shuffle=True, seed=0, num_epochs=1)" in (
        recipe
    )
    assert "torch.randn(1_000, 8," in recipe
    reports, log = launch_in(tmp_path, section, ACCELERATE_CHECK, run_on_free_port, timeout=150)
    # Two processes really ran, and printed what the page says.
    assert rank_lines(log) == sorted(fenced(section, "")[-1].strip().splitlines())
    schedule = rampup.piecewise({0: 16, 4: 32}, multiple_of=2)
    whole = [
        b.tolist()
        for b in rampup.RampupBatches(np.arange(1000), schedule, shuffle_seed=0, num_epochs=1)
    ]
    assert in_rank_order(reports) == whole
    assert [len(b) for b in whole[:-1]] == [schedule(k) for k in range(len(whole) - 1)]
    assert [r["steps"] for r in reports] == [len(whole)] * 2
    for r in reports:
        assert "has no batch_size" in r["refused"]["sampler"]
        assert "send_to_device" in r["refused"]["sampler"]
        for method in ("fork", "spawn", "forkserver"):
            message = r["refused"][method]
            assert isinstance(message, str), f"{method}: not refused, yielded {message}"
            assert "Do not pass this DataLoader to accelerator.prepare()" in message
    # dispatch_batches=True loses data, as the recipe page warns.
    small = [
        b.tolist()
        for b in rampup.RampupBatches(
            np.arange(60), rampup.piecewise({0: 2, 3: 4, 6: 8}), num_epochs=1
        )
    ]
    dispatched = in_rank_order(reports, lambda r: r["dispatched"])
    assert sorted(sum(dispatched, [])) != list(range(60))
    assert dispatched != small


# transformers.Trainer: the recipe page's script under the same launch command.

TRAINER_CHECK = """
import json, runpy, types
from transformers import Trainer

if __name__ == "__main__":
    runpy.run_path("train.py", run_name="__main__")  # the page's script as written
    recipe = runpy.run_path("train.py")  # its functions, with rows and losses recorded

    def run(output_dir, resume=None, trainer_skips=False, **arguments):
        trainer = recipe["make_trainer"](output_dir, **arguments)
        if trainer_skips:  # without the recipe's override: Trainer's own skip
            trainer.get_resumed_dataloader = types.MethodType(
                Trainer.get_resumed_dataloader, trainer)
        index = {tuple(e["x"].tolist()): i for i, e in enumerate(trainer.train_dataset)}
        seen = []

        def record(module, args, kwargs, output):
            rows = [index[tuple(row)] for row in kwargs["x"].tolist()]
            seen.append((rows, output["loss"].item()))

        trainer.model.register_forward_hook(record, with_kwargs=True)
        trainer.train(resume_from_checkpoint=resume)
        return {"steps": trainer.state.global_step, "seed": trainer.args.seed,
                "rows": [rows for rows, _ in seen], "losses": [loss for _, loss in seen]}

    report = {"whole": run("run", save_strategy="steps", save_steps=4)}
    report["resumed"] = run("set_step", resume="run/checkpoint-4")
    report["skipped"] = run("skip", resume="run/checkpoint-4", trainer_skips=True)
    from accelerate import PartialState
    state = PartialState()
    report.update(rank=state.process_index, world=state.num_processes)
    with open(f"rank{state.process_index}.json", "w") as f:
        json.dump(report, f)
"""


@pytest.mark.slow
def test_trainer_recipe_trains_on_the_global_batches_and_resumes_exactly(
    tmp_path, run_on_free_port
):
    pytest.importorskip("transformers")
    section = recipe_page("transformers-trainer")
    recipe = fenced(section, "python")[0]
    assert "rampup.piecewise({0: 8, 3: 16, 6: 32}, multiple_of=args.world_size)" in recipe
    assert "torch.randn(1_000, 8," in recipe and "shuffle=True" in recipe
    reports, log = launch_in(tmp_path, section, TRAINER_CHECK, run_on_free_port, timeout=200)
    assert rank_lines(log) == sorted(fenced(section, "")[-1].strip().splitlines())
    schedule = rampup.piecewise({0: 8, 3: 16, 6: 32}, multiple_of=2)
    [seed] = {r["whole"]["seed"] for r in reports}
    oracle = iter(rampup.RampupBatches(np.arange(1000), schedule, shuffle_seed=seed))
    whole = [next(oracle).tolist() for _ in range(10)]
    assert [r["whole"]["steps"] for r in reports] == [10, 10]
    assert in_rank_order(reports, lambda r: r["whole"]["rows"]) == whole
    assert [len(b) for b in whole] == [schedule(k) for k in range(10)]
    for run in ("resumed", "skipped"):
        assert in_rank_order(reports, lambda r, run=run: r[run]["rows"]) == whole[4:], run
        for r in reports:  # the model and optimizer came back too
            assert r[run]["losses"] == r["whole"]["losses"][4:], run


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


def test_accelerate_one_process_prepare_keeps_the_sampler_lists():
    # With one process accelerate wraps no batch sampler: the lists pass through.
    accelerate = pytest.importorskip("accelerate")
    torch = pytest.importorskip("torch")
    from rampup.adapters.torch import RampupBatchSampler

    accelerator = accelerate.Accelerator(cpu=True)
    assert accelerator.num_processes == 1
    sampler = RampupBatchSampler(LENGTH, SCHEDULE, shuffle=True, seed=1, num_epochs=1)
    loader = accelerator.prepare(torch.utils.data.DataLoader(elements(), batch_sampler=sampler))
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
