"""RampupMapDataset at a constant size against grain's own `MapDataset.batch`, on the
same data: indices past the end and negative, `.repeat()`, sparse parents refused when
built, and the element types grain's `make_batch` keeps."""

import collections
import dataclasses

import numpy as np
import pytest

grain = pytest.importorskip("grain")

import rampup  # noqa: E402
from rampup.adapters.grain import RampupMapDataset  # noqa: E402

LENGTH = 10


def shuffled() -> grain.MapDataset:
    # A shuffled parent reshuffles per epoch: later (and earlier) passes differ.
    return grain.MapDataset.range(LENGTH).shuffle(seed=1)


def ramp(parent, schedule=None, **kwargs) -> RampupMapDataset:
    return RampupMapDataset(
        parent, schedule or rampup.constant(3), process_index=0, process_count=1, **kwargs
    )


def assert_same_batch(ours, theirs):
    """Equal values, and equal types all the way down (containers, dtypes, shapes)."""
    assert type(ours) is type(theirs), (ours, theirs)
    if isinstance(theirs, collections.defaultdict):
        assert ours.default_factory is theirs.default_factory
    if isinstance(theirs, dict):
        # Same keys; rampup keeps the elements' key order, jax.tree_util sorts the keys.
        assert sorted(ours) == sorted(theirs)
        for k in theirs:
            assert_same_batch(ours[k], theirs[k])
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert_same_batch(a, b)
    elif isinstance(theirs, np.ndarray):
        assert (ours.dtype, ours.shape) == (theirs.dtype, theirs.shape)
        np.testing.assert_array_equal(ours, theirs)
    else:
        assert ours == theirs


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_indices_past_the_end_and_negative_wrap_as_grain_batch_does(drop_remainder):
    ours = ramp(shuffled(), num_epochs=1, drop_remainder=drop_remainder)
    theirs = shuffled().batch(3, drop_remainder=drop_remainder)
    assert len(ours) == len(theirs)
    for k in range(-2 * len(theirs) - 1, 3 * len(theirs) + 1):
        assert_same_batch(ours[k], theirs[k])


def test_several_epochs_wrap_by_the_whole_stream_as_grain_repeat_then_batch():
    # num_epochs=2 batches across the epoch border, as parent.repeat(2).batch(3) does.
    ours = ramp(shuffled(), num_epochs=2)
    theirs = shuffled().repeat(2).batch(3)
    assert len(ours) == len(theirs)
    for k in range(-len(theirs), 2 * len(theirs)):
        assert_same_batch(ours[k], theirs[k])


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_batch_then_repeat_matches_grain(drop_remainder):
    ours = ramp(shuffled(), num_epochs=1, drop_remainder=drop_remainder).repeat(3)
    theirs = shuffled().batch(3, drop_remainder=drop_remainder).repeat(3)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert_same_batch(a, b)


def test_repeat_restarts_the_ramp_on_the_next_pass_of_the_data():
    schedule = rampup.piecewise({0: 2, 2: 3})
    ours = ramp(shuffled(), schedule, num_epochs=1).repeat(2)
    # Naive oracle: walk the sizes of one pass, twice; pass e reads parent[e * LENGTH + p].
    parent, expected = shuffled(), []
    for epoch in range(2):
        position, step = 0, 0
        while position < LENGTH:
            size = min(schedule(step), LENGTH - position)
            expected.append([parent[epoch * LENGTH + p] for p in range(position, position + size)])
            position, step = position + size, step + 1
    assert [b.tolist() for b in ours] == expected


def test_negative_index_of_an_endless_ramp_is_an_index_error():
    ds = ramp(shuffled())
    with pytest.raises(IndexError, match="index -1 is negative.*endless"):
        ds[-1]
    assert ds[5].tolist() == [shuffled()[p] for p in range(15, 18)]


def keep_odd(x):
    return x % 2 == 1


class Twice(grain.experimental.FlatMapTransform):
    max_fan_out = 2

    def flat_map(self, element):
        return [element, element]


SPARSE_PARENTS = {
    "filter": lambda: grain.MapDataset.range(LENGTH).filter(keep_odd),
    "filter_then_map": lambda: grain.MapDataset.range(LENGTH).filter(keep_odd).map(int),
    "filter_in_a_mix": lambda: grain.MapDataset.mix(
        [grain.MapDataset.range(LENGTH), grain.MapDataset.range(LENGTH).filter(keep_odd)]
    ),
    "flat_map": lambda: grain.experimental.FlatMapMapDataset(
        grain.MapDataset.range(LENGTH), Twice()
    ),
}


@pytest.mark.parametrize("kind", sorted(SPARSE_PARENTS))
def test_a_sparse_parent_is_refused_when_built_as_grain_batch_refuses_it(kind):
    parent = SPARSE_PARENTS[kind]()
    with pytest.raises(ValueError, match="can not follow"):
        parent.batch(3)
    with pytest.raises(ValueError, match="RampupMapDataset cannot follow .*to_iter_dataset"):
        ramp(parent, num_epochs=1)


@dataclasses.dataclass
class Pair:
    x: np.ndarray
    y: np.ndarray


def element_cases():
    return {
        "defaultdict": [collections.defaultdict(list, a=np.arange(i, i + 2)) for i in range(5)],
        "string_widths": [np.str_("a" * (i + 1)) for i in range(5)],
        "bytes_widths": [np.bytes_(b"b" * (5 - i)) for i in range(5)],
        "string_arrays": [{"s": np.array(["x" * (i + 1), "y"])} for i in range(5)],
    }


@pytest.mark.parametrize("kind", sorted(element_cases()))
def test_default_collate_keeps_what_grain_batch_keeps(kind):
    elements = element_cases()[kind]
    source = grain.MapDataset.source(elements)
    ours = list(ramp(source, rampup.constant(2), num_epochs=1))
    theirs = list(source.batch(2))
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs, strict=True):
        assert_same_batch(a, b)


def test_none_leaves_stay_none_as_grain_batch_keeps_them_with_jax():
    # grain's make_batch maps over jax.tree_util when jax is installed, where None is an
    # empty subtree; without jax it stacks the Nones into an object array.
    pytest.importorskip("jax")
    elements = [{"x": np.int32(i), "mask": None} for i in range(4)]
    source = grain.MapDataset.source(elements)
    for a, b in zip(ramp(source, rampup.constant(2), num_epochs=1), source.batch(2), strict=True):
        assert_same_batch(a, b)
        assert a["mask"] is None


def test_dataclass_elements_stack_field_by_field_as_grain_does_for_a_pytree_dataclass():
    # A plain dataclass is a leaf to grain (an object array of instances); registered as a
    # jax pytree, grain stacks it field by field. rampup stacks every dataclass that way.
    jax = pytest.importorskip("jax")
    registered = jax.tree_util.register_dataclass(
        dataclasses.make_dataclass("RegisteredPair", [("x", np.ndarray), ("y", np.ndarray)]),
        data_fields=["x", "y"],
        meta_fields=[],
    )
    plain = [Pair(np.arange(i, i + 2), np.float32(i)) for i in range(4)]
    pytree = [registered(p.x, p.y) for p in plain]
    theirs = list(grain.MapDataset.source(pytree).batch(2))
    ours = list(ramp(grain.MapDataset.source(plain), rampup.constant(2), num_epochs=1))
    for a, b in zip(ours, theirs, strict=True):
        assert type(a) is Pair
        assert_same_batch(a.x, b.x)
        assert_same_batch(a.y, b.y)
