"""Plans at scale: from_fn keeps runs of equal size and bounds its scan; huge linear ramps."""

import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rampup import Plan, RampupBatches, Segment, from_fn, linear
from rampup.schedules import LINEAR_MAX_SIZES


class Table:
    """A step -> size function from run lengths; `vectorized` also takes int64 arrays."""

    def __init__(self, runs: list[tuple[int, int]], vectorized: bool) -> None:
        self.ends = np.cumsum([n for n, _ in runs])
        self.sizes = np.array([s for _, s in runs])
        self.vectorized = vectorized
        self.array_calls = 0

    def __call__(self, step):
        if isinstance(step, np.ndarray):
            if not self.vectorized:
                raise TypeError("one step at a time")
            self.array_calls += 1
        i = np.minimum(np.searchsorted(self.ends, step, side="right"), len(self.sizes) - 1)
        return self.sizes[i] if isinstance(step, np.ndarray) else int(self.sizes[i])


def naive(fn, steps: int) -> tuple[list[int], list[int]]:
    """Sizes and offsets one step at a time, the definition O(k) = sum_{j<k} B(j)."""
    sizes, offsets, offset = [], [], 0
    for k in range(steps):
        sizes.append(int(fn(k)))
        offsets.append(offset)
        offset += sizes[-1]
    return sizes, offsets


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 70_000), st.integers(1, 5)), min_size=1, max_size=6),
    st.booleans(),
    st.integers(0, 2000),
)
def test_from_fn_segments_equal_a_naive_evaluation(runs, vectorized, probe):
    fn = Table(runs, vectorized)
    plan = Plan(from_fn(fn, name="table"))
    steps = min(sum(n for n, _ in runs) + 5, 1500)
    sizes, offsets = naive(fn, steps)
    step = min(probe, steps - 1)
    assert plan.offset(step) == offsets[step] and plan.size(step) == sizes[step]
    assert [plan.size(k) for k in range(steps)] == sizes
    assert [plan.offset(k) for k in range(steps)] == offsets
    probes = range(0, offsets[-1], 7)  # the step of p: the last k with O(k) <= p
    assert [plan.step_at(p) for p in probes] == (
        np.searchsorted(offsets, probes, side="right") - 1
    ).tolist()
    segments = plan.segments(steps)
    assert [s.size for s in segments] == [
        s for k, s in enumerate(sizes) if k == 0 or sizes[k - 1] != s
    ]
    assert all(
        segments[i].first_step == segments[i - 1].last_step + 1 for i in range(1, len(segments))
    )


def test_array_functions_are_evaluated_in_chunks():
    fn = Table([(1000, 32), (10**6, 64), (1, 128)], vectorized=True)
    plan = Plan(from_fn(fn, name="table"))
    assert plan.offset(2_000_000) == 1000 * 32 + 10**6 * 64 + 128 + (2_000_000 - 1_001_001) * 128
    assert 0 < fn.array_calls <= 2_000_001 // 65536 + 2


def test_memory_grows_with_size_changes_not_steps():
    fn = Table([(1000, 32), (10**6, 64), (1, 128)], vectorized=True)
    plan = Plan(from_fn(fn, name="table"))
    tracemalloc.start()
    plan.offset(5_000_000)
    kept, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert kept < 50_000  # three segments, not five million steps
    assert plan.segments(5_000_000) == [
        Segment(0, 999, 32, 0),
        Segment(1000, 1_000_999, 64, 32_000),
        Segment(1_001_000, 4_999_999, 128, 64_032_000),
    ]


def test_restore_past_max_step_is_refused_at_once():
    batches = RampupBatches(np.arange(10), from_fn(Table([(5, 2)], vectorized=False), name="twos"))
    it = batches.iter_from(0)
    state = dict(it.get_state(), step=10**9, position=2 * 10**9)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"step 1,000,000,000 .*max_step=100,000,000"):
        it.set_state(state)
    assert time.perf_counter() - start < 5  # refused, not scanned


def test_max_step_bounds_queries_and_positions():
    plan = Plan(from_fn(Table([(5, 2)], vectorized=False), name="twos", max_step=1000))
    assert plan.offset(999) == 1998
    with pytest.raises(ValueError, match="from_fn\\(fn, max_step=...\\)"):
        plan.size(1000)
    with pytest.raises(ValueError, match="max_step=1,000"):
        plan.step_at(10**6)


def test_a_bad_size_ahead_raises_only_at_its_step():
    def fn(step):
        return (
            np.where(step == 5000, 0, 8)
            if isinstance(step, np.ndarray)
            else (0 if step == 5000 else 8)
        )

    plan = Plan(from_fn(fn, name="table"))
    assert plan.offset(4999) == 4999 * 8
    with pytest.raises(ValueError, match="step 5000: batch size 0 is not valid"):
        plan.offset(5001)


def test_array_results_that_disagree_with_scalar_calls_are_not_used():
    def fn(step):
        return step * 0 + 16 if isinstance(step, np.ndarray) else 8

    plan = Plan(from_fn(fn, name="table"))
    assert plan.offset(100) == 800


def test_threads_see_one_consistent_plan():
    fn = Table([(7, 1), (11, 2), (13, 3)] * 20, vectorized=False)
    plan = Plan(from_fn(fn, name="table"))
    _, offsets = naive(fn, 700)
    errors = []

    def query(seed):
        for k in np.random.default_rng(seed).integers(0, 700, 300).tolist():
            if plan.offset(k) != offsets[k]:
                errors.append(k)

    threads = [threading.Thread(target=query, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_linear_with_too_many_sizes_is_refused_with_the_count():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"1,000,000,000 distinct sizes.*at least 10,001"):
        linear(1, 1, 10**15, 10**9)
    assert time.perf_counter() - start < 5


def test_linear_at_the_limit_is_built_and_previewed():
    plan = Plan(linear(1, 1, 10**12, LINEAR_MAX_SIZES))
    assert plan.segments(10) == [Segment(0, 9, 1, 0)]
    assert plan.table(steps=10).splitlines()[-1] == "10 steps, 10 samples, 1 distinct size"
    with pytest.raises(ValueError, match=f"{LINEAR_MAX_SIZES + 1:,} distinct sizes"):
        linear(1, 1, 10**12, LINEAR_MAX_SIZES + 1)


def flip(step: int) -> int:
    """A size that changes at every step."""
    return 8 if step % 2 == 0 else 16


def flip_arrays(step):
    """The same sizes, for a step or an array of steps (the plan evaluates chunks)."""
    return 8 + 8 * (step % 2)


@pytest.mark.parametrize("fn", [flip, flip_arrays])
def test_a_from_fn_plan_keeps_a_bounded_number_of_segments(monkeypatch, fn):
    # Issue 20, item 12: a size that changes every step kept one segment per step.
    import rampup.plan

    monkeypatch.setattr(rampup.plan, "FN_SEGMENTS", 32, raising=False)
    sizes = np.array([flip(k) for k in range(20_001)])
    offsets = np.concatenate([[0], np.cumsum(sizes)])  # the independent model
    plan = Plan(from_fn(fn, max_step=10**9))
    assert plan.offset(20_000) == offsets[20_000]
    assert len(plan._starts) <= 2 * 32 + 1  # noqa: SLF001 -- the structure is the point
    steps = [0, 1, 2, 777, 778, 9_999, 15_000, 19_999, 20_000, 123, 5]  # out of order too
    assert [plan.offset(k) for k in steps] == [offsets[k] for k in steps]
    assert [plan.size(k) for k in steps] == [sizes[k] for k in steps]
    assert [plan.bounds(k) for k in steps] == [(offsets[k], offsets[k + 1]) for k in steps]
    assert plan.offsets(np.array(steps)).tolist() == [offsets[k] for k in steps]
    positions = [0, 7, 8, 23, 24, 100_001, 239_999, 120_000, 55]
    assert [plan.step_at(p) for p in positions] == [
        int(np.searchsorted(offsets, p, side="right")) - 1 for p in positions
    ]
    segments = plan.segments(1_000)
    assert [(s.first_step, s.last_step, s.size, s.offset) for s in segments] == [
        (k, k, sizes[k], offsets[k]) for k in range(1_000)
    ]
    assert plan.divisible_from(16, until_step=1_000) == 999  # step 998 has size 8
    assert len(plan._starts) <= 2 * 32 + 1  # noqa: SLF001
