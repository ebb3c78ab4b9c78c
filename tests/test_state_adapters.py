"""Every adapter's restore checks the data order and the position (issue 20, items 1, 2, 8).

grain's map and stream pipelines, torch's dataset and batch sampler, a tf.data dataset
and JAX's device batches refuse a state of another data order, naming the field and
both values, and refuse a position that is not the state's step's; the way out,
`on_data_change="continue"`, is taken where a user asks for it.
"""

import itertools
import json

import numpy as np
import pytest

from rampup import RampupBatches, constant, piecewise

SCHEDULE = piecewise({0: 2, 3: 4})
OFFSET_5 = 2 + 2 + 2 + 4 + 4


def through_json(state):
    return json.loads(json.dumps(state))


# --- grain ---------------------------------------------------------------------------------


def grain_iterator(length, prefetch=False, **options):
    grain = pytest.importorskip("grain")
    from rampup.adapters.grain import RampupMapDataset

    read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    ds = RampupMapDataset(grain.MapDataset.range(length), SCHEDULE, **options)
    ds = ds.to_iter_dataset(read)
    if prefetch:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=1))
    return ds.__iter__()


def test_grain_map_iterators_refuse_another_data_order():
    it = grain_iterator(100, num_epochs=2)
    for _ in range(5):
        next(it)
    state = through_json(it.get_state())
    for prefetch in (False, True):
        with pytest.raises(ValueError, match="length 100 in the state, 120 here"):
            grain_iterator(120, prefetch, num_epochs=2).set_state(state)
        with pytest.raises(ValueError, match="num_epochs 2 in the state, 'none' here"):
            grain_iterator(100, prefetch).set_state(state)
    grown = grain_iterator(120, num_epochs=2, on_data_change="continue")
    grown.set_state(state)
    assert np.asarray(next(grown)).tolist() == list(range(OFFSET_5, OFFSET_5 + 4))


def test_grain_map_iterators_refuse_a_position_that_is_not_the_steps():
    it = grain_iterator(100)
    for _ in range(5):
        next(it)
    bad = {**it.get_state(), "position": OFFSET_5 + 5}
    for prefetch in (False, True):
        with pytest.raises(ValueError, match=f"holds position {OFFSET_5 + 5}, .* consumed 14"):
            grain_iterator(100, prefetch).set_state(bad)


def grain_stream(parent, **options):
    pytest.importorskip("grain")
    from rampup.adapters.grain import RampupIterDataset

    return RampupIterDataset(parent, SCHEDULE, process_index=0, process_count=1, **options)


def test_grain_stream_refuses_another_parent_or_drop_policy():
    grain = pytest.importorskip("grain")
    plain = grain.MapDataset.range(100).to_iter_dataset()
    it = iter(grain_stream(plain))
    for _ in range(5):
        next(it)
    state = through_json(it.get_state())
    assert state["stream"] == type(plain).__name__
    filtered = plain.filter(lambda x: x % 2 == 0)
    with pytest.raises(ValueError, match=rf"stream '{type(plain).__name__}' in the state, "):
        iter(grain_stream(filtered)).set_state(state)
    with pytest.raises(ValueError, match="drop_remainder 0 in the state, 1 here"):
        iter(grain_stream(plain, drop_remainder=True)).set_state(state)
    with pytest.raises(ValueError, match=f"holds position {OFFSET_5 + 5}, .* consumed 14"):
        iter(grain_stream(plain)).set_state({**state, "position": OFFSET_5 + 5})
    again = iter(grain_stream(plain))
    again.set_state(state)
    assert np.asarray(next(again)).tolist() == list(range(OFFSET_5, OFFSET_5 + 4))


# --- torch ---------------------------------------------------------------------------------


def torch_dataset(length=100, **options):
    pytest.importorskip("torch")
    from rampup.adapters.torch import RampupIterableDataset

    return RampupIterableDataset(np.arange(length), SCHEDULE, **options)


def torch_sampler(length=100, **options):
    pytest.importorskip("torch")
    from rampup.adapters.torch import RampupBatchSampler

    return RampupBatchSampler(length, SCHEDULE, process_index=0, process_count=1, **options)


def test_torch_dataset_refuses_another_shuffle():
    ds = torch_dataset(shuffle=True, seed=1)
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = through_json(ds.state_dict())
    with pytest.raises(ValueError, match="seed 1 in the state, 2 here"):
        torch_dataset(shuffle=True, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="shuffle '[a-z0-9-]+' in the state, 'off' here"):
        torch_dataset().load_state_dict(state)
    with pytest.raises(ValueError, match=f"holds position {OFFSET_5 + 5}, .* consumed 14"):
        torch_dataset(shuffle=True, seed=1).load_state_dict({**state, "position": OFFSET_5 + 5})
    same = torch_dataset(shuffle=True, seed=1)
    same.load_state_dict(state)
    assert next(iter(same)).tolist() == next(it).tolist()


def test_torch_batch_sampler_refuses_another_length_and_takes_the_datasets_state():
    sampler = torch_sampler(shuffle=True, seed=1, num_epochs=2)
    it = iter(sampler)
    for _ in range(5):
        next(it)
    state = through_json(sampler.state_dict())
    with pytest.raises(ValueError, match="length 100 in the state, 120 here"):
        torch_sampler(120, shuffle=True, seed=1, num_epochs=2).load_state_dict(state)
    with pytest.raises(ValueError, match=f"holds position {OFFSET_5 + 5}, .* consumed 14"):
        torch_sampler(shuffle=True, seed=1, num_epochs=2).load_state_dict(
            {**state, "position": OFFSET_5 + 5}
        )
    grown = torch_sampler(120, shuffle=True, seed=1, num_epochs=2, on_data_change="continue")
    grown.load_state_dict(state)
    assert grown.state_dict()["position"] == OFFSET_5
    # The same data order is the same state, whichever torch pipeline wrote it.
    ds = torch_dataset(shuffle=True, seed=1, num_epochs=2)
    ds.load_state_dict(state)
    assert next(iter(ds)).tolist() == next(it)


def test_torch_set_step_keeps_the_shift_of_a_continue_restore():
    before = RampupBatches(np.arange(100), constant(3))
    it = before.iter_from(0)
    for _ in range(3):
        next(it)
    state = through_json(it.get_state())  # position 9
    ds = torch_dataset(on_schedule_change="continue")
    ds.load_state_dict(state)
    ds.set_step(4)  # shift 9 - O(3) = 3 is kept: step 4 starts at O(4) + 3 = 10 + 3
    assert next(iter(ds)).tolist() == [13, 14, 15, 16]


def test_torch_microbatches_split_the_rows_left_after_a_continue_restore():
    torch = pytest.importorskip("torch")
    from rampup.adapters.torch import RampupIterableDataset

    it = RampupBatches(np.arange(7), constant(3), num_epochs=1).iter_from(0)
    next(it)
    state = it.get_state()  # position 3: rows 3..6 left, in batches of 2
    ranks = []
    for rank in range(2):
        ds = RampupIterableDataset(
            np.arange(7),
            constant(2),
            num_epochs=1,
            rank=rank,
            world_size=2,
            microbatch_size=1,
            on_schedule_change="continue",
        )
        ds.load_state_dict(state)
        ranks.append([torch.cat(step).tolist() for step in ds])
    assert ranks == [[[3], [5]], [[4], [6]]]


# --- tf and jax ----------------------------------------------------------------------------


def test_tf_dataset_over_a_restored_iterator_refuses_another_order():
    pytest.importorskip("tensorflow")
    from rampup.adapters.tf import to_tf_dataset

    it = RampupBatches(np.arange(100), SCHEDULE, shuffle_seed=1).iter_from(0)
    for _ in range(5):
        next(it)
    state = through_json(it.get_state())
    with pytest.raises(ValueError, match="seed 1 in the state, 2 here"):
        to_tf_dataset(RampupBatches(np.arange(100), SCHEDULE, shuffle_seed=2).iter_from(state))
    restored = RampupBatches(np.arange(100), SCHEDULE, shuffle_seed=1).iter_from(state)
    ds = to_tf_dataset(restored)
    assert [b.numpy().tolist() for b in itertools.islice(ds, 1)] == [next(it).tolist()]


def test_jax_device_batches_refuse_another_order():
    jax = pytest.importorskip("jax")
    from rampup.adapters.jax import batch_sharding, device_batches

    sharding = batch_sharding(jax.make_mesh((1,), ("data",), devices=jax.devices()[:1]))
    it = RampupBatches(np.arange(100), SCHEDULE, shuffle_seed=1).iter_from(0)
    for _ in range(5):
        next(it)
    state = through_json(it.get_state())
    other = RampupBatches(np.arange(100), SCHEDULE, shuffle_seed=2).iter_from(0)
    with device_batches(other, sharding) as arrays:
        with pytest.raises(ValueError, match="seed 1 in the state, 2 here"):
            arrays.set_state(state)
        with pytest.raises(ValueError, match=f"holds position {OFFSET_5 + 5}, .* consumed 14"):
            arrays.set_state({**state, "position": OFFSET_5 + 5, "seed": 2})


def past_the_end():
    """A state past the end under the new schedule `constant(2)`, whose last batch is 1 row.

    `np.arange(5)` in batches of 4: after 2 steps, position 8. Under `constant(2)` the
    position is kept (shift 8 - 4 = 4): only step 0, at positions 4..5, would hold data.
    """
    it = RampupBatches(np.arange(5), constant(4), num_epochs=1).iter_from(0)
    next(it), next(it)
    return it.get_state()


def test_torch_microbatches_of_a_continue_restore_past_the_end_yield_nothing():
    pytest.importorskip("torch")
    from rampup.adapters.torch import RampupIterableDataset

    ds = RampupIterableDataset(
        np.arange(5), constant(2), num_epochs=1, microbatch_size=2, on_schedule_change="continue"
    )
    ds.load_state_dict(past_the_end())
    assert list(ds) == [] and len(ds) == 0


def test_jax_device_batches_of_a_continue_restore_past_the_end_yield_nothing():
    jax = pytest.importorskip("jax")
    from rampup.adapters.jax import batch_sharding, device_batches

    sharding = batch_sharding(jax.make_mesh((2,), ("data",), devices=jax.devices()[:2]))
    moved = RampupBatches(np.arange(5), constant(2), num_epochs=1, on_schedule_change="continue")
    with device_batches(moved.iter_from(past_the_end()), sharding) as arrays:
        assert list(arrays) == []
