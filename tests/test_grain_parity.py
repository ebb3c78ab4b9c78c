"""grain element specs, next index and shared-memory output on the adapters, beside .batch.

Each behaviour is checked against grain's own `MapDataset.batch` / `IterDataset.batch`
on the same elements, with real grain (0.2.18).
"""

import collections

import numpy as np
import pytest

grain = pytest.importorskip("grain")

import rampup  # noqa: E402
from rampup.adapters.grain import (  # noqa: E402
    BatchRampUpIterDataset,
    RampupIterDataset,
    RampupMapDataset,
    SharedMemoryArray,
)

spec_of = grain.experimental.get_element_spec
Struct = grain.experimental.ShapeDtypeStruct
Pair = collections.namedtuple("Pair", "tokens label")
RAMP = rampup.piecewise({0: 2, 3: 4, 6: 6})
ONE = {"process_index": 0, "process_count": 1}


class Element(grain.transforms.Map):
    """A dict element whose spec grain can infer (its output_spec)."""

    def map(self, i):
        return {"tokens": np.full((3,), i, np.int32), "pair": Pair(np.float32(i), np.int64(-i))}

    def output_spec(self, input_spec):
        return {
            "tokens": Struct((3,), np.int32),
            "pair": Pair(Struct((), np.float32), Struct((), np.int64)),
        }


def elements(n=30):
    return grain.MapDataset.range(n).map(Element())


def shapes(spec):
    return [(leaf.shape, np.dtype(leaf.dtype)) for leaf in _leaves(spec)]


def _leaves(spec):
    if isinstance(spec, dict):
        return [leaf for _, v in sorted(spec.items()) for leaf in _leaves(v)]
    if isinstance(spec, tuple):
        return [leaf for v in spec for leaf in _leaves(v)]
    return [spec]


def values(batch):
    return batch["tokens"][:, 0].tolist()


# --- element specs ------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_map_dataset_spec_equals_grain_batch_at_a_constant_size(drop_remainder):
    ours = RampupMapDataset(
        elements(), rampup.constant(4), num_epochs=1, drop_remainder=drop_remainder, **ONE
    )
    theirs = elements().batch(4, drop_remainder=drop_remainder)
    assert shapes(spec_of(ours)) == shapes(spec_of(theirs))
    assert type(spec_of(ours)["pair"]) is Pair
    batch = ours[0]
    assert [(leaf.shape, leaf.dtype) for leaf in _leaves(batch)] == [
        ((4, *s[1:]), d) for s, d in shapes(spec_of(ours))
    ]


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_a_ramp_has_no_fixed_batch_axis(drop_remainder):
    ours = RampupMapDataset(elements(), RAMP, num_epochs=1, drop_remainder=drop_remainder, **ONE)
    assert shapes(spec_of(ours)) == [
        ((None,), np.float32),
        ((None,), np.int64),
        ((None, 3), np.int32),
    ]


def test_the_batch_axis_is_this_process_slice():
    ours = RampupMapDataset(
        elements(),
        rampup.constant(4),
        num_epochs=1,
        drop_remainder=True,
        process_index=1,
        process_count=2,
    )
    assert shapes(spec_of(ours))[-1] == ((2, 3), np.int32)
    assert ours[0]["tokens"].shape == (2, 3)


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_iter_dataset_spec_equals_grain_batch(drop_remainder):
    parent = elements().to_iter_dataset()
    ours = RampupIterDataset(parent, rampup.constant(5), drop_remainder=drop_remainder, **ONE)
    theirs = parent.batch(5, drop_remainder=drop_remainder)
    assert shapes(spec_of(ours)) == shapes(spec_of(theirs))


def double_every_step(step):
    return 2 * (step + 1)


def test_the_dropin_has_grain_spec():
    parent = elements().to_iter_dataset()
    ours = BatchRampUpIterDataset(parent, double_every_step)
    assert shapes(spec_of(ours)) == shapes(spec_of(parent.batch(3)))


def test_spec_passes_through_to_iter_dataset_and_mp_prefetch():
    ours = RampupMapDataset(
        elements(), rampup.constant(4), num_epochs=1, drop_remainder=True, **ONE
    )
    pipeline = ours.to_iter_dataset()
    assert shapes(spec_of(pipeline)) == shapes(spec_of(ours))
    options = grain.MultiprocessingOptions(num_workers=2)
    assert shapes(spec_of(pipeline.mp_prefetch(options))) == shapes(spec_of(ours))


def test_a_custom_collate_without_output_spec_is_refused_as_grain_refuses_it():
    collate = lambda xs: xs  # noqa: E731
    with pytest.raises(NotImplementedError):
        spec_of(elements().batch(4, batch_fn=collate))
    with pytest.raises(NotImplementedError, match="output_spec"):
        spec_of(RampupMapDataset(elements(), RAMP, collate=collate, **ONE))


def test_a_custom_collate_with_output_spec_describes_the_batch():
    class Tokens:
        def __call__(self, xs):
            return np.stack([x["tokens"] for x in xs])

        def output_spec(self, input_spec, batch_size, drop_remainder):
            return Struct((batch_size, 3), np.int32)

    ours = RampupMapDataset(
        elements(), rampup.constant(4), num_epochs=1, drop_remainder=True, collate=Tokens(), **ONE
    )
    theirs = elements().batch(4, drop_remainder=True, batch_fn=Tokens())
    assert shapes(spec_of(ours)) == shapes(spec_of(theirs)) == [((4, 3), np.int32)]


def test_a_parent_without_a_spec_raises_as_grain_does():
    parent = grain.MapDataset.source(np.zeros((8, 2)))
    with pytest.raises(NotImplementedError):
        spec_of(parent.batch(2))
    with pytest.raises(NotImplementedError):
        spec_of(RampupMapDataset(parent, RAMP, **ONE))


# --- next index --------------------------------------------------------------------------------


def test_map_iterator_next_index_equals_grain_batch_at_a_constant_size():
    ours = iter(
        RampupMapDataset(elements(), rampup.constant(4), num_epochs=1, **ONE).to_iter_dataset()
    )
    theirs = iter(elements().batch(4).to_iter_dataset())
    for _ in range(2):
        next(ours), next(theirs)
    assert grain.experimental.get_next_index(ours) == grain.experimental.get_next_index(theirs) == 2
    grain.experimental.set_next_index(ours, 5)
    grain.experimental.set_next_index(theirs, 5)
    assert values(next(ours)) == values(next(theirs)) == [20, 21, 22, 23]
    assert grain.experimental.get_next_index(ours) == grain.experimental.get_next_index(theirs) == 6


@pytest.mark.parametrize("index", [0, 1, 4, 6])
def test_map_iterator_set_next_index_continues_at_that_step_of_a_ramp(index):
    ramp = RampupMapDataset(elements(), RAMP, num_epochs=1, **ONE)
    it = iter(ramp.to_iter_dataset())
    next(it)
    grain.experimental.set_next_index(it, index)
    assert [values(next(it)) for _ in range(2)] == [values(ramp[index]), values(ramp[index + 1])]
    assert grain.experimental.get_next_index(it) == index + 2


@pytest.mark.parametrize("process_index", [0, 1])
def test_stream_iterator_next_index_continues_at_that_step(process_index):
    # Stream mode: the parent is this process's share of the stream.
    share = elements(60).slice(slice(process_index, None, 2)).to_iter_dataset()
    ds = RampupIterDataset(share, RAMP, process_index=process_index, process_count=2)
    fresh = list(iter(ds))
    it = iter(ds)
    next(it)
    assert grain.experimental.get_next_index(it) == 1
    grain.experimental.set_next_index(it, 5)
    assert values(next(it)) == values(fresh[5])
    assert grain.experimental.get_next_index(it) == 6


def test_stream_next_index_equals_grain_batch_at_a_constant_size():
    parent = elements().to_iter_dataset()
    ours = iter(RampupIterDataset(parent, rampup.constant(3), **ONE))
    theirs = iter(parent.batch(3))
    grain.experimental.set_next_index(ours, 4)
    grain.experimental.set_next_index(theirs, 4)
    assert values(next(ours)) == values(next(theirs)) == [12, 13, 14]
    assert grain.experimental.get_next_index(ours) == grain.experimental.get_next_index(theirs) == 5


# --- shared-memory output ----------------------------------------------------------------------


def test_shared_memory_output_stacks_into_shared_memory_like_grain_batch():
    ours = RampupMapDataset(elements(), RAMP, num_epochs=1, **ONE)
    plain = [ours[k] for k in range(4)]
    theirs = elements().batch(4)
    theirs.enable_shared_memory_output()
    ours.enable_shared_memory_output()
    assert isinstance(theirs[0]["tokens"], SharedMemoryArray)
    for k in range(4):
        batch = ours[k]
        for got, want in zip(_leaves(batch), _leaves(plain[k]), strict=True):
            assert isinstance(got, SharedMemoryArray)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        assert type(batch["pair"]) is Pair


def test_shared_memory_output_keeps_the_collate_errors():
    bad = grain.MapDataset.range(6).map(lambda i: np.zeros(i % 2 + 1))
    ours = RampupMapDataset(bad, rampup.constant(2), **ONE)
    ours.enable_shared_memory_output()
    with pytest.raises(ValueError, match="element 1 of the batch does not match"):
        ours[0]


def test_shared_memory_output_is_forwarded_to_a_custom_collate_that_supports_it():
    class Collate:
        shared = False

        def __call__(self, xs):
            return np.stack([x["tokens"] for x in xs])

        def enable_shared_memory_output(self):
            self.shared = True

    collate = Collate()
    ours = RampupIterDataset(elements().to_iter_dataset(), RAMP, collate=collate, **ONE)
    ours.enable_shared_memory_output()
    assert collate.shared


@pytest.mark.slow
def test_mp_prefetch_workers_ship_shared_memory_batches_equal_to_one_process():
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    ramp = RampupMapDataset(elements(), RAMP, num_epochs=1, **ONE)
    single = [values(ramp[k]) for k in range(len(ramp))]
    options = grain.MultiprocessingOptions(num_workers=2, per_worker_buffer_size=2)
    it = iter(ramp.to_iter_dataset(grain.ReadOptions(num_threads=0)).mp_prefetch(options))
    try:
        first = next(it)
        assert isinstance(first["tokens"], SharedMemoryArray)
        parallel = [values(first)] + [values(b) for b in it]
        assert parallel == single
        grain.experimental.set_next_index(it, 3)
        assert values(next(it)) == single[3]
        assert grain.experimental.get_next_index(it) == 4
    finally:
        it.close()
