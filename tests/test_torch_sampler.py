"""RampupBatchSampler, set_step's one meaning, and the wrapper refusals of the torch adapter."""

import itertools
import json
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import rampup  # noqa: E402
from rampup.adapters.torch import (  # noqa: E402
    RampupBatchSampler,
    RampupIterableDataset,
    tensor_collate,
)

SIZES = {0: 2, 3: 4, 6: 8}  # piecewise: 2 from step 0, 4 from 3, 8 from 6
SCHEDULE = rampup.piecewise(SIZES)


def size_at(step: int) -> int:
    return SIZES[max(k for k in SIZES if k <= step)]


def naive_batches(length: int, num_epochs: int, drop_remainder: bool = False) -> list[list[int]]:
    """The unshuffled global index lists, one step at a time: the independent oracle."""
    end, position, step, out = length * num_epochs, 0, 0, []
    while position < end:
        size = size_at(step)
        if drop_remainder and position + size > end:
            break
        out.append([p % length for p in range(position, min(position + size, end))])
        position, step = position + size, step + 1
    return out


def lists(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_sampler_lists_are_the_schedules_batches_across_epochs(drop_remainder):
    sampler = RampupBatchSampler(23, SCHEDULE, num_epochs=3, drop_remainder=drop_remainder)
    expected = naive_batches(23, 3, drop_remainder)
    assert lists(sampler) == expected
    assert len(sampler) == len(expected)


def test_sampler_equals_rampup_batches_over_arange_with_shuffle_and_processes():
    whole = rampup.RampupBatches(np.arange(50), SCHEDULE, shuffle_seed=7, num_epochs=2)
    ranks = [
        RampupBatchSampler(
            50, SCHEDULE, shuffle=True, seed=7, num_epochs=2, process_index=r, process_count=2
        )
        for r in range(2)
    ]
    got = [a + b for a, b in zip(lists(ranks[0]), lists(ranks[1]), strict=True)]
    assert got == [b.tolist() for b in whole]
    assert all(sorted(sum(got, [])[e * 50 : (e + 1) * 50]) == list(range(50)) for e in range(2))


def test_sampler_state_is_its_progress_and_restores_in_a_fresh_sampler():
    sampler = RampupBatchSampler(100, SCHEDULE, shuffle=True, seed=3)
    it = iter(sampler)
    seen = [next(it) for _ in range(5)]
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state["step"] == 5
    rest = [next(it) for _ in range(4)]
    fresh = RampupBatchSampler(100, SCHEDULE, shuffle=True, seed=3)
    fresh.load_state_dict(state)
    assert list(itertools.islice(fresh, 4)) == rest
    assert fresh.state_dict()["step"] == 9
    whole = rampup.RampupBatches(np.arange(100), SCHEDULE, shuffle_seed=3)
    assert seen + rest == [whole[k].tolist() for k in range(9)]


def test_sampler_set_step_applies_to_the_next_iteration_only():
    sampler = RampupBatchSampler(100, SCHEDULE, num_epochs=1)
    it = iter(sampler)
    next(it)
    sampler.set_step(4)
    assert sampler.state_dict()["step"] == 4  # the next iteration's start, not the live one's
    assert next(it) == naive_batches(100, 1)[1]  # the live iteration is not moved
    assert next(iter(sampler)) == naive_batches(100, 1)[4]
    assert len(sampler) == len(naive_batches(100, 1)) - 4


def test_sampler_refuses_bad_arguments_naming_them():
    with pytest.raises(TypeError, match="seed"):
        RampupBatchSampler(10, SCHEDULE, shuffle=True)
    with pytest.raises(ValueError, match="length"):
        RampupBatchSampler(0, SCHEDULE)
    with pytest.raises(ValueError, match="process_count=4.*from step 3"):
        iter(RampupBatchSampler(10, SCHEDULE, process_index=0, process_count=4))
    with pytest.raises(ValueError, match="process_count=16"):
        RampupBatchSampler(10, SCHEDULE, process_index=0, process_count=16)  # never legal
    with pytest.raises(ValueError, match="schedule"):
        RampupBatchSampler(10, rampup.constant(4)).load_state_dict(
            RampupBatchSampler(10, SCHEDULE).state_dict()
        )
    with pytest.raises(TypeError, match="endless"):
        len(RampupBatchSampler(10, SCHEDULE))


def test_sampler_has_no_batch_size_and_says_what_to_do():
    with pytest.raises(TypeError, match="send_to_device.*use_distributed_sampler=False"):
        _ = RampupBatchSampler(10, SCHEDULE).batch_size


class Rows(Dataset):
    """A map-style dataset that counts its batched reads."""

    def __init__(self, n: int) -> None:
        self.data = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        self.batched_reads = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.data[i]

    def __getitems__(self, indices: list[int]) -> list[np.ndarray]:
        self.batched_reads += 1
        return [self.data[i] for i in indices]


def test_sampler_through_a_dataloader_reads_each_batch_in_one_call_with_its_collate():
    data = Rows(40)
    sampler = RampupBatchSampler(40, SCHEDULE, num_epochs=1)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=lambda rows: np.stack(rows))
    batches = list(loader)
    assert [b[:, 0].tolist() for b in batches] == [
        [3.0 * i for i in ids] for ids in naive_batches(40, 1)
    ]
    assert data.batched_reads == len(batches)


# Every start method, fork included, in a fresh interpreter (this test process runs JAX's
# threads, which a fork must not copy).
START_METHODS = """
import json, sys
import numpy as np
import torch
from torch.utils.data import DataLoader
import rampup
from rampup.adapters.torch import RampupBatchSampler, RampupIterableDataset

data = np.arange(300, dtype=np.int64)
schedule = rampup.piecewise({0: 2, 3: 4, 6: 8})
out = {}
if __name__ == "__main__":
    for method in ("fork", "spawn", "forkserver"):
        sampler = RampupBatchSampler(300, schedule, shuffle=True, seed=5, num_epochs=1)
        loader = DataLoader(
            data, batch_sampler=sampler, num_workers=2, multiprocessing_context=method,
            pin_memory=True,
        )
        out[method + " sampler"] = [b.tolist() for b in loader]
        for persistent in (False, True):
            ds = RampupIterableDataset(data, schedule, num_epochs=1)
            loader = DataLoader(
                ds, batch_size=None, num_workers=2, multiprocessing_context=method,
                persistent_workers=persistent,
            )
            it = iter(loader)
            ds.set_step(5)  # after iter(loader): for the next iteration
            first = next(it).tolist()
            rest = [b.tolist() for b in it]
            try:
                moved = next(iter(loader)).tolist()
            except RuntimeError as e:
                moved = "refused" if "persistent_workers=False" in str(e) else repr(e)
            out[f"{method} persistent={persistent}"] = [first, len(rest), moved]
    print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_start_method_gives_the_same_lists_and_one_meaning_of_set_step(tmp_path):
    script = tmp_path / "start_methods.py"
    script.write_text(textwrap.dedent(START_METHODS))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=230
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    whole = rampup.RampupBatches(np.arange(300), SCHEDULE, shuffle_seed=5, num_epochs=1)
    expected = [b.tolist() for b in whole]
    unshuffled = naive_batches(300, 1)
    for method in ("fork", "spawn", "forkserver"):
        assert out[f"{method} sampler"] == expected, method
        # The iteration started before set_step runs from step 0 to the end.
        assert out[f"{method} persistent=False"] == [
            unshuffled[0],
            len(unshuffled) - 1,
            unshuffled[5],
        ], method
        assert out[f"{method} persistent=True"] == [
            unshuffled[0],
            len(unshuffled) - 1,
            "refused",
        ], method


def test_set_step_after_iter_does_not_move_the_live_iteration_without_workers():
    ds = RampupIterableDataset(np.arange(100), SCHEDULE, num_epochs=1)
    loader = DataLoader(ds, batch_size=None)
    it = iter(loader)
    ds.set_step(5)
    assert next(it).tolist() == naive_batches(100, 1)[0]
    assert next(iter(loader)).tolist() == naive_batches(100, 1)[5]


def test_iterable_dataset_state_is_its_live_progress_in_this_process():
    ds = RampupIterableDataset(np.arange(100), SCHEDULE, shuffle=True, seed=2)
    it = iter(ds)
    for _ in range(13):
        next(it)
    state = ds.state_dict()
    expected = [next(it).tolist() for _ in range(3)]
    fresh = RampupIterableDataset(np.arange(100), SCHEDULE, shuffle=True, seed=2)
    fresh.load_state_dict(state)
    assert state["step"] == 13
    assert [b.tolist() for b in itertools.islice(fresh, 3)] == expected


def test_set_epoch_refuses_a_second_process_and_passes_one():
    RampupIterableDataset(np.arange(10), SCHEDULE).set_epoch(3)
    ds = RampupIterableDataset(np.arange(10), SCHEDULE, rank=1, world_size=2)
    with pytest.raises(ValueError, match=r"set_epoch\(0\) with 2 processes.*accelerator.prepare"):
        ds.set_epoch(0)


class NoRestore:
    """An iterator with a state it cannot be restored from (like torchdata's LoaderIterator)."""

    def __init__(self) -> None:
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        self.i += 1
        return np.array(self.i)

    def get_state(self) -> dict:
        return {"i": self.i}


def test_stream_batcher_refuses_a_state_its_parent_cannot_restore():
    stream = rampup.StreamBatcher(NoRestore(), SCHEDULE)
    next(stream)
    with pytest.raises(TypeError, match="has no set_state"):
        stream.get_state()


def test_tensor_collate_stacks_tensors_and_number_rows():
    rows = [{"x": torch.full((8,), float(i)), "label": torch.tensor(i)} for i in range(5)]
    batch = tensor_collate(rows)
    assert batch["x"].shape == (5, 8) and batch["x"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert batch["label"].tolist() == [0, 1, 2, 3, 4]
    python_rows = [{"x": [float(i)] * 8, "n": i} for i in range(4)]
    batch = tensor_collate(python_rows)
    assert isinstance(batch["x"], torch.Tensor) and batch["x"].shape == (4, 8)
    assert batch["n"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="element 1"):
        tensor_collate([torch.zeros(3), torch.zeros(4)])
    # A list of mixed kinds stays a structure, as the core collates it.
    assert len(tensor_collate([[1, 2.0], [3, 4.0]])) == 2


def test_stream_batcher_over_a_torchdata_loader_refuses_its_state_when_written():
    nodes = pytest.importorskip("torchdata.nodes")
    loader = nodes.Loader(nodes.IterableWrapper([np.array(i) for i in range(40)]))
    stream = rampup.StreamBatcher(iter(loader), SCHEDULE)
    assert next(stream).tolist() == [0, 1]
    with pytest.raises(TypeError, match="LoaderIterator.*has no set_state"):
        stream.get_state()


def test_sampler_state_from_two_processes_continues_on_eight_after_the_small_sizes():
    grow = rampup.piecewise({0: 4, 10: 16})
    two = RampupBatchSampler(400, grow, shuffle=True, seed=1, process_index=0, process_count=2)
    it = iter(two)
    for _ in range(12):
        next(it)
    state = json.loads(json.dumps(two.state_dict()))
    eight = [
        RampupBatchSampler(400, grow, shuffle=True, seed=1, process_index=r, process_count=8)
        for r in range(8)
    ]
    for sampler in eight:
        sampler.load_state_dict(state)
    slices = [list(itertools.islice(sampler, 5)) for sampler in eight]
    whole = rampup.RampupBatches(np.arange(400), grow, shuffle_seed=1)
    assert [sum(parts, []) for parts in zip(*slices, strict=True)] == [
        whole[k].tolist() for k in range(12, 17)
    ]
    with pytest.raises(ValueError, match="from step 10"):
        eight[0].set_step(9)
