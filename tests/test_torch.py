"""PyTorch adapter: DataLoader workers, ranks, tensors, resume, errors (real torch, CPU)."""

import json
import os
import subprocess
import sys
import textwrap
from collections import namedtuple

import pytest

torch = pytest.importorskip("torch")

import model  # noqa: E402
import numpy as np  # noqa: E402
from torch.utils.data import DataLoader, Dataset, IterableDataset  # noqa: E402

from rampup import RampupBatches, StreamBatcher, constant, piecewise  # noqa: E402
from rampup.adapters.torch import (  # noqa: E402
    RampupBatchSampler,
    RampupIterableDataset,
    as_tensors,
)

# Sizes 2 (steps 0-4), 5 (steps 5-6), 3 (from step 7): boundaries 5 and 7 are
# multiples of none of W = 2, 3. With 13 items and 3 epochs (39 positions) the
# batches cross the epoch borders at positions 13 and 26, and the last is partial.
SCHEDULE = piecewise({0: 2, 5: 5, 7: 3})
N = 13
SIZES = [2] * 5 + [5] * 2 + [3] * 6 + [1]  # 39 positions, by hand
ARRAY = np.arange(N * 2, dtype=np.int64).reshape(N, 2)
Pair = namedtuple("Pair", ["a", "b"])

pytestmark = [
    pytest.mark.filterwarnings("ignore:This DataLoader will create"),
    pytest.mark.filterwarnings("ignore:'set_vital' is deprecated"),
]


class DictDataset(Dataset):
    """A torch map-style dataset of dicts with a nested tuple."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"x": ARRAY[i], "meta": (np.int64(i), np.float32(i) / 2)}


class Stream(IterableDataset):
    """An iterable-only source."""

    def __iter__(self):
        return iter(ARRAY)


def assert_same_tree(got, expected, where):
    """`got`, a batch of torch tensors, holds the structure and values of `expected` (NumPy)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            assert_same_tree(got[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        if hasattr(expected, "_fields"):  # a namedtuple keeps its type
            assert type(got) is type(expected), (where, type(got))
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same_tree(g, e, f"{where}[{i}]")
    else:
        assert isinstance(got, torch.Tensor), (where, type(got))
        assert got.numpy().dtype == np.asarray(expected).dtype, where
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=where)


def assert_same_batches(got, expected):
    """The adapter's batches (tensors) equal the core's NumPy batches, step by step."""
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert_same_tree(g, e, f"step {k}")


SCENARIOS = {
    "plain": dict(source=ARRAY, shuffle=False, drop_remainder=False, start=0),
    "shuffle-dicts-drop": dict(source=DictDataset(), shuffle=True, drop_remainder=True, start=0),
    "shuffle-set_step-5": dict(source=ARRAY, shuffle=True, drop_remainder=False, start=5),
}


@pytest.fixture
def loader(multiprocessing_context):
    """Makes `DataLoader(ds, batch_size=None, num_workers=W)`, workers started the safe way."""

    def make(ds, num_workers, cls=DataLoader):
        context = multiprocessing_context if num_workers else None
        return cls(ds, batch_size=None, num_workers=num_workers, multiprocessing_context=context)

    return make


def make(scenario, set_step=True):
    s = SCENARIOS[scenario]
    ds = RampupIterableDataset(
        s["source"],
        SCHEDULE,
        shuffle=s["shuffle"],
        seed=7,
        num_epochs=3,
        drop_remainder=s["drop_remainder"],
    )
    if set_step:
        ds.set_step(s["start"])
    core = RampupBatches(
        s["source"],
        SCHEDULE,
        shuffle_seed=7 if s["shuffle"] else None,
        num_epochs=3,
        drop_remainder=s["drop_remainder"],
    )
    return ds, list(core.iter_from(s["start"]))


@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_any_number_of_workers_yields_the_core_sequence(scenario, num_workers, loader):
    ds, expected = make(scenario)
    got = list(loader(ds, num_workers))
    assert_same_batches(got, expected)


def test_sizes_follow_the_schedule_across_epoch_borders():
    ds = RampupIterableDataset(ARRAY, SCHEDULE, num_epochs=3)
    batches = list(ds)
    assert [len(b) for b in batches] == SIZES
    samples = torch.cat(batches)[:, 0].numpy() // 2
    assert samples.tolist() == list(range(N)) * 3


def test_drop_remainder_leaves_out_the_partial_last_batch():
    kept = list(RampupIterableDataset(ARRAY, SCHEDULE, num_epochs=3))
    dropped = list(RampupIterableDataset(ARRAY, SCHEDULE, num_epochs=3, drop_remainder=True))
    assert [len(b) for b in dropped] == SIZES[:-1]
    assert len(kept[-1]) == 1
    assert_same_batches(dropped, kept[:-1])


def test_shuffle_covers_each_epoch_once_and_reshuffles():
    ds = RampupIterableDataset(ARRAY, SCHEDULE, shuffle=True, seed=1, num_epochs=3)
    samples = (torch.cat(list(ds))[:, 0].numpy() // 2).reshape(3, N)
    for epoch in samples:
        assert sorted(epoch.tolist()) == list(range(N))
    assert samples[0].tolist() != list(range(N))
    assert samples[0].tolist() != samples[1].tolist()


def test_len_counts_the_batches_from_the_start_step():
    ds = RampupIterableDataset(ARRAY, SCHEDULE, num_epochs=3)
    assert len(ds) == len(SIZES)
    ds.set_step(5)
    assert len(ds) == len(list(ds)) == len(SIZES) - 5


def test_endless_data_has_no_len():
    with pytest.raises(TypeError, match=r"endless data \(num_epochs=None\) has no len"):
        len(RampupIterableDataset(ARRAY, SCHEDULE))


def test_batches_are_tensors_that_share_the_numpy_memory():
    array = np.zeros((4, 3), dtype=np.float32)
    tree = as_tensors({"x": array, "pair": Pair(array[:2], [array])})
    assert isinstance(tree["pair"], Pair) and isinstance(tree["pair"].b, list)
    tree["x"][0, 0] = 5.0
    tree["pair"].b[0][1, 1] = 6.0
    assert array[0, 0] == 5.0 and array[1, 1] == 6.0


def test_nested_structure_is_kept_through_a_worker(loader):
    source = [Pair(np.int64(i), {"v": ARRAY[i]}) for i in range(N)]
    ds = RampupIterableDataset(source, SCHEDULE, num_epochs=1)
    expected = list(RampupBatches(source, SCHEDULE, num_epochs=1))
    got = list(loader(ds, 1))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert isinstance(g, Pair) and isinstance(g.b, dict)
        assert isinstance(g.a, torch.Tensor) and isinstance(g.b["v"], torch.Tensor)
        np.testing.assert_array_equal(g.a.numpy(), e.a)
        np.testing.assert_array_equal(g.b["v"].numpy(), e.b["v"])


def test_strings_stay_numpy_arrays():
    batch = as_tensors({"name": np.array(["a", "b"]), "x": np.arange(2)})
    assert isinstance(batch["name"], np.ndarray) and isinstance(batch["x"], torch.Tensor)


def test_custom_collate_output_is_passed_through_untouched():
    ds = RampupIterableDataset(ARRAY, SCHEDULE, num_epochs=1, collate=lambda items: items)
    first = next(iter(ds))
    assert isinstance(first, list) and all(isinstance(x, np.ndarray) for x in first)
    assert [x.tolist() for x in first] == ARRAY[:2].tolist()


def test_state_dict_is_the_core_state_and_restores_the_start_step():
    ds = RampupIterableDataset(ARRAY, SCHEDULE, shuffle=True, num_epochs=3)
    ds.set_step(6)
    state = json.loads(json.dumps(ds.state_dict()))
    core = RampupBatches(ARRAY, SCHEDULE, shuffle_seed=0, num_epochs=3).iter_from(6)
    assert state == core.get_state()
    fresh = RampupIterableDataset(ARRAY, SCHEDULE, shuffle=True, num_epochs=3)
    fresh.load_state_dict(state)
    assert fresh.step == 6
    assert_same_batches(list(fresh), list(core))


def test_iterator_state_dict_resumes_mid_iteration():
    ds = RampupIterableDataset(ARRAY, SCHEDULE, shuffle=True, num_epochs=3)
    it = iter(ds)
    for _ in range(4):
        next(it)
    state = it.state_dict()
    rest = list(it)
    again = iter(RampupIterableDataset(ARRAY, SCHEDULE, shuffle=True, num_epochs=3))
    again.load_state_dict(state)
    assert state["step"] == 4
    assert_same_batches(list(again), rest)


def continued(new_sizes, at):
    """The model's positions from step `at` of a run that took SIZES' schedule before `at`
    and `new_sizes` from it on, over the 3 epochs: a `continue` restore keeps the position."""
    old = model.sizes({0: 2, 5: 5, 7: 3}, at)
    return [list(range(*w)) for w in model.windows(old + new_sizes[at:], N * 3)[at:]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_continue_restore_keeps_the_data_position_in_every_worker_setup(num_workers, loader):
    state = RampupBatches(ARRAY, SCHEDULE, num_epochs=3).iter_from(6).get_state()  # position 15
    new = constant(4)
    ds = RampupIterableDataset(ARRAY, new, num_epochs=3, on_schedule_change="continue")
    ds.load_state_dict(json.loads(json.dumps(state)))
    want = continued([4] * 20, 6)  # 24 positions left: 6 batches, the unmoved stream has 4
    assert len(ds) == len(want)
    got = [(b[:, 0] // 2).tolist() for b in loader(ds, num_workers)]
    assert got == [[p % N for p in positions] for positions in want]


def test_a_continue_restore_moves_the_batch_samplers_lists():
    state = RampupBatches(ARRAY, SCHEDULE, num_epochs=3).iter_from(6).get_state()
    sampler = RampupBatchSampler(N, constant(4), num_epochs=3, on_schedule_change="continue")
    sampler.load_state_dict(json.loads(json.dumps(state)))
    want = continued([4] * 20, 6)
    assert len(sampler) == len(want)
    assert list(sampler) == [[p % N for p in positions] for positions in want]


def test_a_state_from_another_schedule_raises():
    state = RampupIterableDataset(ARRAY, constant(4)).state_dict()
    with pytest.raises(ValueError, match="schedule"):
        RampupIterableDataset(ARRAY, SCHEDULE).load_state_dict(state)


def test_rank_slices_concatenate_to_the_one_process_batch():
    schedule = piecewise({0: 2, 5: 6, 7: 4})
    whole = list(RampupIterableDataset(ARRAY, schedule, shuffle=True, num_epochs=2))
    ranks = [
        list(
            RampupIterableDataset(ARRAY, schedule, shuffle=True, num_epochs=2, rank=r, world_size=2)
        )
        for r in (0, 1)
    ]
    assert_same_batches([torch.cat(pair) for pair in zip(*ranks, strict=True)], whole)


def test_a_size_not_divisible_by_the_world_size_raises_with_step_and_size():
    # The dataset refuses it when built, not when a worker reaches the step. A map-style
    # source may be restored at a later step: refused because no step (size 3 from step 7
    # on) splits; a stream starts at step 0, where the first size 5 is.
    with pytest.raises(ValueError, match="batch size 3 at step 7 is not divisible.*no step"):
        RampupIterableDataset(ARRAY, SCHEDULE, rank=1, world_size=2)
    with pytest.raises(ValueError, match="batch size 5 at step 5 is not divisible"):
        RampupIterableDataset(iter(ARRAY.tolist()), SCHEDULE, rank=1, world_size=2)


def test_rank_out_of_range_raises():
    with pytest.raises(
        ValueError, match=r"rank=2 is not valid for world_size=2; valid ranks: 0..1"
    ):
        RampupIterableDataset(ARRAY, SCHEDULE, rank=2, world_size=2)


def test_a_rank_without_world_size_is_named_in_torch_words_with_the_fix():
    # torch.distributed is not initialized in this process: world_size defaults to 1.
    with pytest.raises(
        ValueError, match=r"rank=1 is not valid for world_size=1 \(the default"
    ) as e:
        RampupIterableDataset(ARRAY, SCHEDULE, rank=1)
    assert "pass world_size= with rank=1" in str(e.value)
    assert "process_index" not in str(e.value)


def test_iterable_source_with_one_worker_matches_the_stream(loader):
    ds = RampupIterableDataset(Stream(), SCHEDULE)
    expected = list(StreamBatcher(iter(ARRAY), SCHEDULE))
    assert_same_batches(list(loader(ds, 1)), expected)
    assert_same_batches(list(ds), expected)


def raise_from_workers(ds, loader, num_workers=2):
    """Iterates a DataLoader over `ds` that must raise, shutting its workers down right away.

    torch re-raises a worker's error from inside a reference cycle; when the gc
    frees that iterator later, each worker waits out a 5 s join timeout.
    """
    it = iter(loader(ds, num_workers))
    try:
        for _ in it:
            pass
    finally:
        it._shutdown_workers()


def test_iterable_source_with_two_workers_raises_with_the_fix(loader):
    ds = RampupIterableDataset(Stream(), SCHEDULE)
    with pytest.raises(ValueError, match="cannot run in 2 DataLoader workers.*map-style source"):
        raise_from_workers(ds, loader)


def test_iterable_source_cannot_seek_or_shuffle():
    ds = RampupIterableDataset(Stream(), SCHEDULE)
    with pytest.raises(TypeError, match="cannot start at step 3.*cannot seek"):
        ds.set_step(3)
    with pytest.raises(ValueError, match="shuffle=True needs a map-style source"):
        RampupIterableDataset(Stream(), SCHEDULE, shuffle=True)


def failing_collate(items):
    if len(items) == 5:
        raise ValueError(f"cannot pack {len(items)} items: the packer is full")
    return np.stack(items)


def test_a_collate_error_in_a_worker_keeps_its_original_message(loader):
    ds = RampupIterableDataset(ARRAY, SCHEDULE, collate=failing_collate)
    with pytest.raises(ValueError, match="cannot pack 5 items: the packer is full"):
        raise_from_workers(ds, loader)


@pytest.mark.parametrize(
    ("num_workers", "draw", "scenario"),
    [(2, 0, "shuffle-dicts-drop"), (2, 1, "shuffle-set_step-5"), (0, 2, "shuffle-dicts-drop")],
)
def test_stateful_dataloader_resumes_mid_epoch_identically(num_workers, draw, scenario, loader):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    # With 2 workers, one checkpoint after an odd and one after an even number
    # of batches, so that either worker may be the one that yielded last.
    checkpoint = int(np.random.default_rng(draw).integers(1, 6)) * 2 + draw % 2
    ds, expected = make(scenario)
    data = loader(ds, num_workers, stateful.StatefulDataLoader)
    it = iter(data)
    head = [next(it) for _ in range(checkpoint)]
    state = data.state_dict()
    del it
    saved = [s for s in json_leaves(state) if isinstance(s, dict) and "schedule" in s]
    keys = {"version", "step", "position", "schedule", "shift"}
    keys |= {"length", "shuffle", "seed", "num_epochs", "drop_remainder"}  # the data fields
    assert saved and all(set(s) == keys for s in saved)

    resumed_ds, _ = make(scenario, set_step=False)  # the checkpoint holds the start step
    resumed = loader(resumed_ds, num_workers, stateful.StatefulDataLoader)
    resumed.load_state_dict(state)
    assert_same_batches(head + list(resumed), expected)


def json_leaves(tree):
    yield tree
    if isinstance(tree, dict):
        for v in tree.values():
            yield from json_leaves(v)


RANK_SCRIPT = textwrap.dedent("""
    import datetime, sys
    import numpy as np
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from rampup import piecewise
    from rampup.adapters.torch import RampupIterableDataset

    rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=store, rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=30))
    ds = RampupIterableDataset(np.arange(26).reshape(13, 2), piecewise({0: 2, 5: 6, 7: 4}),
                               shuffle=True, seed=3, num_epochs=2)
    assert (ds.rank, ds.world_size) == (rank, 2), (ds.rank, ds.world_size)
    batches = [b.numpy() for b in DataLoader(ds, batch_size=None, num_workers=2)]
    np.savez(out, *batches)
    dist.barrier()
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_two_gloo_ranks_concatenate_to_the_one_process_batch(tmp_path):
    # The ranks meet in a file store, not on a TCP port picked ahead (another process could
    # take it in between); gloo's own connections bind to ports the system assigns.
    store = (tmp_path / "store").as_uri()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT, str(r), store, str(tmp_path / f"rank{r}.npz")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert [p.returncode for p in procs] == [0, 0], outputs
    ranks = []
    for r in (0, 1):
        with np.load(tmp_path / f"rank{r}.npz") as f:
            ranks.append([f[f"arr_{i}"] for i in range(len(f.files))])
    whole = list(
        RampupBatches(
            np.arange(26).reshape(13, 2),
            piecewise({0: 2, 5: 6, 7: 4}),
            shuffle_seed=3,
            num_epochs=2,
        )
    )
    assert_same_batches(
        [torch.from_numpy(np.concatenate(pair)) for pair in zip(*ranks, strict=True)], whole
    )


def test_load_state_dict_refuses_a_state_of_the_old_shuffle():
    ds = RampupIterableDataset(ARRAY, SCHEDULE, shuffle=True, seed=0)
    state = dict(ds.state_dict(), version=1)
    with pytest.raises(ValueError, match="version 1.*another order|version 1.*materialized"):
        ds.load_state_dict(state)


def test_defaultdict_and_dataclass_elements_keep_their_type_as_tensors():
    import collections
    import dataclasses

    import torch

    @dataclasses.dataclass
    class Item:
        x: np.ndarray
        y: np.ndarray

    counts = [collections.defaultdict(int, n=np.int64(i)) for i in range(6)]
    batch = next(iter(DataLoader(RampupIterableDataset(counts, constant(3)), batch_size=None)))
    assert type(batch) is collections.defaultdict and batch.default_factory is int
    assert torch.equal(batch["n"], torch.tensor([0, 1, 2]))
    items = [Item(np.full(2, i, np.float32), np.int64(i)) for i in range(6)]
    it = iter(RampupIterableDataset(items, constant(2)))
    next(it)
    second = next(it)
    assert type(second) is Item and isinstance(second.x, torch.Tensor)
    assert second.x.tolist() == [[2, 2], [3, 3]] and second.y.tolist() == [2, 3]


def test_batch_sampler_lists_follow_the_schedule_across_epoch_borders():
    # The oracle: positions 0..38 cut by the hand-written sizes, position p is item p % 13.
    positions = iter(range(3 * N))
    expected = [[next(positions) % N for _ in range(size)] for size in SIZES]
    sampler = RampupBatchSampler(N, SCHEDULE, num_epochs=3)
    assert list(sampler) == expected
    assert len(sampler) == len(SIZES)
    assert all(type(i) is int for i in expected[0])


@pytest.mark.parametrize("process_index", [0, 1])
def test_batch_sampler_lists_are_the_core_batches_of_the_indices(process_index):
    even = piecewise({0: 2, 5: 6, 7: 4})
    options = dict(num_epochs=3, drop_remainder=True, process_index=process_index, process_count=2)
    sampler = RampupBatchSampler(N, even, shuffle=True, seed=7, **options)
    core = RampupBatches(np.arange(N), even, shuffle_seed=7, **options)
    assert list(sampler) == [batch.tolist() for batch in core]


def test_batch_sampler_state_dict_resumes_mid_iteration_and_set_step_seeks():
    sampler = RampupBatchSampler(N, SCHEDULE, shuffle=True, seed=7, num_epochs=3)
    it = iter(sampler)
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(sampler.state_dict()))
    rest = list(it)
    again = RampupBatchSampler(N, SCHEDULE, shuffle=True, seed=7, num_epochs=3)
    again.load_state_dict(state)
    assert state["step"] == 4 and again.step == 4 and list(again) == rest
    seeked = RampupBatchSampler(N, SCHEDULE, shuffle=True, seed=7, num_epochs=3)
    seeked.set_step(4)
    assert list(seeked) == rest and len(seeked) == len(rest)


def test_batch_sampler_through_a_dataloader_gives_the_iterable_datasets_batches():
    sampler = RampupBatchSampler(N, SCHEDULE, shuffle=True, seed=7, num_epochs=3)
    got = list(DataLoader(DictDataset(), batch_sampler=sampler))
    ds = RampupIterableDataset(DictDataset(), SCHEDULE, shuffle=True, seed=7, num_epochs=3)
    expected = list(ds)
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert torch.equal(g["x"], e["x"]), k
        assert all(torch.equal(a, b) for a, b in zip(g["meta"], e["meta"], strict=True)), k
