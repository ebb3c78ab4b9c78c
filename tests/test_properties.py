"""Properties over random schedules, lengths, epochs, seeds and process counts."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rampup import Plan, RampupBatches, linear, piecewise, stepwise

PROCESS_COUNTS = (1, 2, 4, 8)


@st.composite
def piecewise_schedules(draw):
    n = draw(st.integers(1, 4))
    steps = sorted(draw(st.sets(st.integers(1, 30), min_size=n - 1, max_size=n - 1)))
    sizes = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    unit = draw(st.sampled_from(["steps", "samples"]))
    scale = 1 if unit == "steps" else 8
    return piecewise({scale * s: 8 * b for s, b in zip([0, *steps], sizes, strict=True)},
                     unit=unit)


@st.composite
def stepwise_schedules(draw):
    boundaries = draw(st.sets(st.integers(0, 30), min_size=1, max_size=4))
    scales = {b: draw(st.sampled_from([1, 2, 3, 4])) for b in boundaries}
    return stepwise(8 * draw(st.integers(1, 3)), scales, cumulative=draw(st.booleans()))


@st.composite
def linear_schedules(draw):
    start = 8 * draw(st.integers(1, 3))
    increment = 8 * draw(st.integers(1, 2))
    final = start + increment * draw(st.integers(0, 5))
    return linear(start, increment, draw(st.integers(0, 300)), final)


def schedules():
    """Schedules whose sizes are multiples of 8, so that every process count divides them."""
    return st.one_of(piecewise_schedules(), stepwise_schedules(), linear_schedules())


@given(schedules(), st.integers(1, 90), st.integers(1, 3), st.booleans(),
       st.one_of(st.none(), st.integers(0, 2**32)))
def test_every_sample_once_per_epoch_and_sizes_follow_schedule(schedule, n, epochs, drop, seed):
    b = RampupBatches(np.arange(n), schedule, num_epochs=epochs, drop_remainder=drop,
                      shuffle_seed=seed)
    batches = list(b)
    plan = Plan(schedule)
    assert len(batches) == len(b)
    for k, batch in enumerate(batches[:-1]):
        assert len(batch) == plan.size(k)
    last = len(batches) - 1
    if batches:
        assert len(batches[-1]) == (plan.size(last) if drop else min(
            plan.size(last), n * epochs - plan.offset(last)))
    flat = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    total = n * epochs
    assert len(flat) == (total if not drop else plan.offset(len(batches)))
    for e in range(len(flat) // n):
        assert sorted(flat[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert len(set(flat[(len(flat) // n) * n:].tolist())) == len(flat) % n  # no repeats


@given(schedules(), st.integers(8, 60), st.sampled_from(PROCESS_COUNTS), st.integers(0, 40))
def test_process_slices_concatenate_to_one_process_batch(schedule, n, p, step):
    whole = RampupBatches(np.arange(n), schedule, shuffle_seed=5)
    parts = [RampupBatches(np.arange(n), schedule, shuffle_seed=5, process_index=i,
                           process_count=p)[step] for i in range(p)]
    np.testing.assert_array_equal(np.concatenate(parts), whole[step])
    assert len({len(x) for x in parts}) == 1


@given(schedules(), st.integers(1, 90), st.integers(1, 3), st.booleans(),
       st.sampled_from(PROCESS_COUNTS))
def test_finite_data_splits_evenly_between_processes_or_raises(schedule, n, epochs, drop, p):
    whole = RampupBatches(np.arange(n), schedule, num_epochs=epochs, drop_remainder=drop)
    plan = Plan(schedule)
    remainder = n * epochs - plan.offset(len(whole) - 1) if len(whole) else 0
    make = [lambda i=i: RampupBatches(np.arange(n), schedule, num_epochs=epochs,
                                      drop_remainder=drop, process_index=i, process_count=p)
            for i in range(p)]
    if not drop and remainder % p:
        with pytest.raises(ValueError, match=f"last batch \\(step {len(whole) - 1}.*not divisible"):
            make[0]()
        return
    parts = [f() for f in make]
    for step in range(len(whole)):
        slices = [part[step] for part in parts]
        assert len({len(x) for x in slices}) == 1
        np.testing.assert_array_equal(np.concatenate(slices), whole[step])


@given(schedules(), st.integers(1, 50), st.integers(0, 60),
       st.one_of(st.none(), st.integers(0, 100)))
def test_restore_at_random_step_continues_identically(schedule, n, step, seed):
    b = RampupBatches(np.arange(n), schedule, shuffle_seed=seed, num_epochs=3)
    steps = len(b)
    step = min(step, steps)
    it = b.iter_from(0)
    for _ in range(step):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = list(it)
    fresh = RampupBatches(np.arange(n), schedule, shuffle_seed=seed, num_epochs=3).iter_from(0)
    fresh.set_state(state)
    got = list(fresh)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


@given(schedules(), st.integers(1, 50), st.integers(0, 40), st.integers(1, 4))
def test_any_worker_count_gives_the_one_worker_sequence(schedule, n, start, workers):
    b = RampupBatches(np.arange(n), schedule, num_epochs=2)
    start = min(start, len(b))
    per_worker = [list(b.iter_from(start, worker_index=w, worker_count=workers))
                  for w in range(workers)]
    merged = [per_worker[i % workers][i // workers]
              for i in range(sum(map(len, per_worker)))]
    expected = list(b.iter_from(start))
    assert [x.tolist() for x in merged] == [x.tolist() for x in expected]


@given(schedules(), st.integers(0, 10**6))
def test_step_at_inverts_offset(schedule, k):
    plan = Plan(schedule)
    assert plan.step_at(plan.offset(k)) == k
    assert plan.step_at(plan.offset(k) + plan.size(k) - 1) == k
    assert plan.offset(k + 1) - plan.offset(k) == plan.size(k) == schedule(k)
