"""Branches at a checkpoint read the same samples; the critical batch size reads their losses."""

import json
import math

import numpy as np
import pytest

import rampup
from rampup.permutation import permute

LENGTH = 37  # small and odd: the branches run across an epoch border
SEED = 5
RAMP = rampup.piecewise({0: 4, 3: 6})  # the checkpointed run: 4, 4, 4, 6, 6, ...
STEPS_BEFORE = 5  # the checkpoint: step 5, position 4 * 3 + 6 * 2 = 24
SIZES = [2, 4, 8, 16, 48]
SAMPLES = 48


def stream(first: int, count: int, shuffle_seed: int | None) -> list[int]:
    """Source items at stream positions `[first, first + count)`, by the definition.

    Position `p` is item `perm_e(p mod N)` of epoch `e = p // N`; the source is
    `np.arange(N)`, so items are source indices.
    """
    out = []
    for p in range(first, first + count):
        epoch, index = divmod(p, LENGTH)
        if shuffle_seed is not None:
            index = int(permute(np.array([index]), LENGTH, shuffle_seed, epoch)[0])
        out.append(index)
    return out


def checkpoint(shuffle_seed: int | None) -> dict:
    """The state of the ramp's pipeline after `STEPS_BEFORE` steps, through JSON."""
    it = iter(rampup.RampupBatches(np.arange(LENGTH), RAMP, shuffle_seed=shuffle_seed))
    for _ in range(STEPS_BEFORE):
        next(it)
    return json.loads(json.dumps(it.get_state()))


def read_branch(branch: rampup.Branch, shuffle_seed: int | None, process_count: int) -> list:
    """The branch's global batches: each process's slices concatenated, step by step."""
    iterators = [
        rampup.RampupBatches(
            np.arange(LENGTH),
            branch.schedule,
            shuffle_seed=shuffle_seed,
            process_index=i,
            process_count=process_count,
            on_schedule_change="continue",
        ).iter_from(branch.state)
        for i in range(process_count)
    ]
    return [[int(v) for it in iterators for v in next(it)] for _ in range(branch.steps)]


@pytest.mark.parametrize("shuffle_seed", [None, SEED])
@pytest.mark.parametrize("process_count", [1, 2])
def test_every_branch_reads_the_samples_after_the_checkpoint_in_stream_order(
    shuffle_seed, process_count
):
    state = checkpoint(shuffle_seed)
    position = 24
    assert state["position"] == position  # the oracle's premise: 3 steps of 4, 2 of 6
    expected = stream(position, SAMPLES, shuffle_seed)
    branches = rampup.branches(state, SIZES, samples=SAMPLES)
    assert [b.size for b in branches] == SIZES
    for branch in branches:
        batches = read_branch(branch, shuffle_seed, process_count)
        assert [len(b) for b in batches] == [branch.size] * (SAMPLES // branch.size)
        assert [v for b in batches for v in b] == expected, branch.size


def test_a_branch_starts_at_the_checkpoint_step_and_its_batches_follow_on():
    state = checkpoint(None)
    (branch,) = rampup.branches(state, [8], samples=16)
    assert (branch.state["step"], branch.state["position"]) == (STEPS_BEFORE, 24)
    batches = rampup.RampupBatches(np.arange(LENGTH), branch.schedule).iter_from(branch.state)
    for _ in range(branch.steps):
        next(batches)
    after = batches.get_state()
    assert (after["step"], after["position"]) == (STEPS_BEFORE + 2, 24 + 16)
    assert next(batches).tolist() == stream(24 + 16, 8, None)


def test_a_pipeline_of_another_size_refuses_a_branch_state_unless_told_to_continue():
    (branch,) = rampup.branches(checkpoint(None), [8], samples=16)
    other = rampup.RampupBatches(np.arange(LENGTH), rampup.constant(4))
    with pytest.raises(ValueError, match="on_schedule_change='continue'"):
        other.iter_from(branch.state)


def test_branches_of_a_stream_carry_the_parent_state():
    grain = pytest.importorskip("grain")
    parent = grain.MapDataset.range(LENGTH).to_iter_dataset()
    ramp = rampup.StreamBatcher(iter(parent), RAMP)
    for _ in range(STEPS_BEFORE):
        next(ramp)
    state = ramp.get_state()
    for branch in rampup.branches(state, [3, 12], samples=12):
        assert branch.state["parent"] == state["parent"]
        it = rampup.StreamBatcher(iter(parent), branch.schedule, on_schedule_change="continue")
        it.set_state(branch.state)
        batches = [next(it).tolist() for _ in range(branch.steps)]
        assert [v for b in batches for v in b] == list(range(24, 36))


@pytest.mark.parametrize("process_count", [1, 2])
def test_branches_through_the_grain_map_dataset(process_count, read_options):
    grain = pytest.importorskip("grain")
    from rampup.adapters.grain import RampupMapDataset

    parent = grain.MapDataset.range(LENGTH).shuffle(SEED)
    ramp = RampupMapDataset(parent, RAMP, process_index=0, process_count=1)
    it = ramp.to_iter_dataset(read_options).__iter__()
    for _ in range(STEPS_BEFORE):
        next(it)
    state = it.get_state()
    # grain's own indexing past len(parent) is the stream: parent[p] for position p.
    expected = [int(parent[p]) for p in range(24, 24 + SAMPLES)]
    for branch in rampup.branches(state, [2, 8, 24], samples=SAMPLES):
        iterators = []
        for i in range(process_count):
            ds = RampupMapDataset(
                parent,
                branch.schedule,
                process_index=i,
                process_count=process_count,
                on_schedule_change="continue",
            )
            branch_it = ds.to_iter_dataset(read_options).__iter__()
            branch_it.set_state(branch.state)
            iterators.append(branch_it)
        got = [int(v) for _ in range(branch.steps) for bi in iterators for v in next(bi)]
        assert got == expected, branch.size


def test_branches_through_the_torch_iterable_dataset():
    torch = pytest.importorskip("torch")
    from rampup.adapters.torch import RampupIterableDataset

    ramp = RampupIterableDataset(np.arange(LENGTH), RAMP, shuffle=True, seed=SEED)
    it = iter(ramp)  # what a DataLoader iterates in its main process or a worker
    for _ in range(STEPS_BEFORE):
        next(it)
    state = it.state_dict()
    expected = stream(24, SAMPLES, SEED)
    for branch in rampup.branches(state, [4, 16], samples=SAMPLES):
        ds = RampupIterableDataset(
            np.arange(LENGTH),
            branch.schedule,
            shuffle=True,
            seed=SEED,
            on_schedule_change="continue",
        )
        ds.load_state_dict(branch.state)
        batches = iter(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0))
        got = [int(v) for _ in range(branch.steps) for v in next(batches)]
        assert got == expected, branch.size


def test_a_size_that_does_not_divide_the_samples_is_refused():
    with pytest.raises(ValueError, match=r"size 12 does not divide samples=32.*multiple of 48"):
        rampup.branches(checkpoint(None), [8, 12, 16], samples=32)


@pytest.mark.parametrize(
    ("sizes", "samples", "error", "match"),
    [
        ([], 8, ValueError, "sizes is empty"),
        ([4, 4], 8, ValueError, "size 4 is given twice"),
        ([0], 8, ValueError, "batch size 0"),
        ([2.0], 8, TypeError, "not an int"),
        ([True], 8, TypeError, "not an int"),
        (8, 8, TypeError, "sizes must be a list"),
        ([2], 0, ValueError, "samples must be an int >= 1"),
    ],
)
def test_bad_sizes_and_samples_are_refused(sizes, samples, error, match):
    with pytest.raises(error, match=match):
        rampup.branches(checkpoint(None), sizes, samples=samples)


def test_a_state_that_is_not_a_rampup_state_is_refused():
    with pytest.raises(ValueError, match="not a rampup state"):
        rampup.branches({"step": 3}, [2], samples=4)
    with pytest.raises(TypeError, match="rampup state dict"):
        rampup.branches([("step", 3)], [2], samples=4)


@pytest.mark.parametrize(
    ("losses", "tolerance", "expected"),
    [
        ({16: 1.0, 32: 1.005, 64: 1.009, 128: 1.2}, 0.01, 64),
        ({8: 3.0}, 0.0, 8),
        ({64: 2.0, 8: 1.0, 32: 1.02, 16: 1.01}, 0.05, 32),  # any key order
        ({8: 1.0, 16: 1.5, 32: 1.01}, 0.02, 32),  # a failing size does not end the search
        ({8: 1.0, 16: 0.5, 32: 0.52, 64: 0.9}, 0.05, 32),  # the minimum moves down
        ({1: 2.0, 2: 3.0}, 0.5, 2),  # exactly at the tolerance counts
        ({1: 2.0, 2: 3.0}, 0.25, 1),
        ({4: 0.0, 8: 0.0, 16: 1e-9}, 0.1, 8),  # a loss of 0 leaves no slack
    ],
)
def test_critical_batch_size_on_hand_made_tables(losses, tolerance, expected):
    assert rampup.critical_batch_size(losses, tolerance=tolerance) == expected


@pytest.mark.parametrize(
    ("losses", "tolerance", "error", "match"),
    [
        ({}, 0.01, ValueError, "losses is empty"),
        ([(8, 1.0)], 0.01, TypeError, "dict of size -> loss"),
        ({0: 1.0}, 0.01, ValueError, "batch size 0"),
        ({"64": 1.0}, 0.01, TypeError, "not an int"),
        ({8: math.nan}, 0.01, ValueError, "loss at size 8 is nan"),
        ({8: math.inf}, 0.01, ValueError, "loss at size 8 is inf"),
        ({8: -0.5}, 0.01, ValueError, "loss at size 8 is -0.5"),
        ({8: "1.0"}, 0.01, TypeError, "loss at size 8"),
        ({8: True}, 0.01, TypeError, "loss at size 8"),
        ({8: 1.0}, -0.01, ValueError, "tolerance=-0.01"),
        ({8: 1.0}, math.nan, ValueError, "tolerance=nan"),
        ({8: 1.0}, True, TypeError, "tolerance"),
        ({8: 1.0}, "0.01", TypeError, "tolerance"),
    ],
)
def test_critical_batch_size_refuses_bad_input(losses, tolerance, error, match):
    with pytest.raises(error, match=match):
        rampup.critical_batch_size(losses, tolerance=tolerance)


def test_critical_batch_size_takes_numpy_numbers():
    losses = {np.int64(8): np.float32(1.0), np.int64(16): np.float64(1.001)}
    assert rampup.critical_batch_size(losses, tolerance=np.float64(0.01)) == 16
