"""Scaling out mid-run in every adapter that builds process slices.

A state saved on 2 processes (ranks, replicas, devices of the data axis) restores
on 8 after the last size 8 cannot split, and the 8 slices of each later step
concatenate to the one-process batch; an earlier start is refused, naming the
first legal step.
"""

import itertools

import numpy as np
import pytest

from rampup import RampupBatches, piecewise

SCHEDULE = piecewise({0: 4, 10: 16, 14: 32})  # 8 processes: legal from step 10
DATA = np.arange(600, dtype=np.int64)
LEGAL = r"legal from step 10 on"


def whole(start: int, steps: int) -> list[list[int]]:
    """The one-process batches of steps `[start, start + steps)`."""
    batches = RampupBatches(DATA, SCHEDULE, shuffle_seed=5)
    return [batches[k].tolist() for k in range(start, start + steps)]


def saved_on_two(step: int) -> dict:
    """The state after `step` steps on 2 processes (both processes write the same one)."""
    states = []
    for index in range(2):
        batches = RampupBatches(
            DATA, SCHEDULE, shuffle_seed=5, process_index=index, process_count=2
        )
        it = batches.iter_from(0)
        for _ in range(step):
            next(it)
        states.append(it.get_state())
    assert states[0] == states[1]
    return states[0]


def saved_on_two_grain(parent, step: int) -> dict:
    """`saved_on_two` of a grain RampupMapDataset over `parent` (its own data order)."""
    from rampup.adapters.grain import RampupMapDataset

    states = []
    for index in range(2):
        ds = RampupMapDataset(parent, SCHEDULE, process_index=index, process_count=2)
        it = ds.to_iter_dataset().__iter__()
        for _ in range(step):
            next(it)
        states.append(it.get_state())
    assert states[0] == states[1]
    return states[0]


def joined(per_process: list[list], steps: int) -> list[list[int]]:
    return [np.concatenate([np.asarray(p[k]) for p in per_process]).tolist() for k in range(steps)]


def test_grain_map_dataset_restores_on_8_processes():
    grain = pytest.importorskip("grain")
    from rampup.adapters.grain import RampupMapDataset

    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    parent = grain.MapDataset.source(DATA).shuffle(seed=5)
    one = RampupMapDataset(parent, SCHEDULE)
    expected = [one[k].tolist() for k in range(12, 18)]
    state = saved_on_two_grain(parent, 12)

    def eight(index: int):
        return RampupMapDataset(parent, SCHEDULE, process_index=index, process_count=8)

    iterators = []
    for index in range(8):
        it = eight(index).to_iter_dataset(options).__iter__()
        it.set_state(state)
        iterators.append(list(itertools.islice(it, 6)))
    assert joined(iterators, 6) == expected
    early = {**state, "step": 9, "position": 36}
    with pytest.raises(ValueError, match=r"batch size 4 at step 9 .*process_count=8.*" + LEGAL):
        eight(0).to_iter_dataset(options).__iter__().set_state(early)
    with pytest.raises(ValueError, match=r"batch size 4 at step 0 .*" + LEGAL):
        next(eight(0).to_iter_dataset(options).__iter__())


def test_grain_mp_prefetch_refuses_an_early_start_before_its_workers_start():
    grain = pytest.importorskip("grain")
    from rampup.adapters.grain import RampupMapDataset

    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    ds = RampupMapDataset(grain.MapDataset.source(DATA), SCHEDULE, process_index=0, process_count=8)
    prefetched = ds.to_iter_dataset(options).mp_prefetch(grain.MultiprocessingOptions(1))
    with pytest.raises(ValueError, match=r"batch size 4 at step 0 .*" + LEGAL):
        next(iter(prefetched))
    state = saved_on_two_grain(grain.MapDataset.source(DATA), 12)
    with pytest.raises(ValueError, match=r"batch size 4 at step 9 .*" + LEGAL):
        iter(prefetched).set_state({**state, "step": 9, "position": 36})


def test_torch_dataset_restores_on_8_ranks():
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from rampup.adapters.torch import RampupIterableDataset

    state = saved_on_two(12)
    ranks = []
    for rank in range(8):
        ds = RampupIterableDataset(DATA, SCHEDULE, shuffle=True, seed=5, rank=rank, world_size=8)
        ds.load_state_dict(state)
        ranks.append(list(itertools.islice(DataLoader(ds, batch_size=None), 6)))
    assert joined(ranks, 6) == whole(12, 6)
    ds = RampupIterableDataset(DATA, SCHEDULE, shuffle=True, seed=5, rank=0, world_size=8)
    with pytest.raises(ValueError, match=r"batch size 4 at step 9 .*process_count=8.*" + LEGAL):
        ds.set_step(9)
    with pytest.raises(ValueError, match=r"batch size 4 at step 0 .*" + LEGAL):
        iter(ds)


def test_torch_micro_batches_restore_on_8_ranks():
    pytest.importorskip("torch")
    from rampup.adapters.torch import RampupIterableDataset

    state = saved_on_two(12)
    ranks = []
    for rank in range(8):
        ds = RampupIterableDataset(
            DATA, SCHEDULE, shuffle=True, seed=5, rank=rank, world_size=8, microbatch_size=2
        )
        ds.load_state_dict(state)
        steps = list(itertools.islice(iter(ds), 3))
        assert [len(micro) for micro in steps] == [1, 1, 2]
        ranks.append([np.concatenate([m.numpy() for m in micro]) for micro in steps])
    assert joined(ranks, 3) == whole(12, 3)
    ds = RampupIterableDataset(DATA, SCHEDULE, rank=0, world_size=8, microbatch_size=4)
    with pytest.raises(
        ValueError, match=r"microbatch_size=4 x process_count=8.*legal from step 14"
    ):
        ds.set_step(12)
    with pytest.raises(ValueError, match=r"batch size 4 at step 0 .*microbatch_size=16.*" + LEGAL):
        iter(RampupIterableDataset(DATA, SCHEDULE, microbatch_size=16))


def test_tf_dataset_of_process_slices_restores_on_8_processes():
    tf = pytest.importorskip("tensorflow")
    from rampup.adapters.tf import to_tf_dataset

    state = saved_on_two(12)
    slices = []
    for index in range(8):
        batches = RampupBatches(
            DATA, SCHEDULE, shuffle_seed=5, process_index=index, process_count=8
        )
        ds = to_tf_dataset(batches.iter_from(state))
        slices.append([b.numpy() for b in ds.take(6)])
    assert joined(slices, 6) == whole(12, 6)
    eight = RampupBatches(DATA, SCHEDULE, process_index=0, process_count=8)
    with pytest.raises(ValueError, match=r"batch size 4 at step 9 .*" + LEGAL):
        to_tf_dataset(eight, start_step=9)
    assert tf.executing_eagerly()


def test_tf_native_ramp_resumes_on_8_replicas():
    tf = pytest.importorskip("tensorflow")
    from rampup.adapters.tf import rampup_batch

    ordered = RampupBatches(DATA, SCHEDULE)
    context = tf.distribute.InputContext(1, 0, 8)
    source = tf.data.Dataset.from_tensor_slices(DATA).repeat()
    ds = rampup_batch(source, SCHEDULE, input_context=context, start_step=12)
    replicas = [b.numpy() for b in ds.take(8 * 6)]
    steps = [np.concatenate(replicas[8 * k : 8 * k + 8]).tolist() for k in range(6)]
    assert steps == [ordered[k].tolist() for k in range(12, 18)]
    with pytest.raises(ValueError, match=r"batch size 4 at step 9 .*process_count=8.*" + LEGAL):
        rampup_batch(source, SCHEDULE, input_context=context, start_step=9)
    two = tf.distribute.InputContext(1, 0, 2)
    assert len(list(rampup_batch(source, SCHEDULE, input_context=two).take(2))) == 2


def test_jax_device_batches_restore_from_2_devices_onto_8():
    jax = pytest.importorskip("jax")
    from jax.sharding import Mesh

    from rampup.adapters.jax import batch_sharding, device_batches

    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py must ask for 8 CPU devices"
    two = batch_sharding(Mesh(np.array(devices[:2]), ("data",)))
    eight = batch_sharding(Mesh(np.array(devices), ("data",)))
    batches = RampupBatches(DATA, SCHEDULE, shuffle_seed=5)
    with device_batches(batches.iter_from(0), two) as run:
        for _ in range(12):
            next(run)
        state = run.get_state()
    with device_batches(batches.iter_from(state), eight) as run:
        got = [next(run) for _ in range(6)]
    assert [np.asarray(a).tolist() for a in got] == whole(12, 6)
    assert all(len(a.addressable_shards) == 8 for a in got)
    with device_batches(batches.iter_from(10), eight) as run:
        assert np.asarray(next(run)).tolist() == whole(10, 1)[0]
    with pytest.raises(ValueError, match=r"size 4 at steps 9 to 9 .*'data'.*" + LEGAL):
        device_batches(batches.iter_from(9), eight)
    with device_batches(batches.iter_from(state), eight, prefetch=0) as run:
        with pytest.raises(ValueError, match=r"size 4 at steps 9 to 9 .*" + LEGAL):
            run.set_state({**state, "step": 9, "position": 36})
    with pytest.raises(ValueError, match=r"microbatch_size=16.*legal from step 10"):
        device_batches(batches.iter_from(9), eight, microbatch_size=16)
