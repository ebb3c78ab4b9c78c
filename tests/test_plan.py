"""Plan: step <-> position arithmetic against hand-computed values."""

import pickle

import model
import pytest

from rampup import Plan, Segment, constant, from_fn, linear, piecewise, stepwise
from rampup.plan import WorkerStride


@pytest.fixture
def plan():
    return Plan(piecewise({0: 2, 3: 4, 5: 8}))


def test_size_and_offset(plan):
    # sizes 2,2,2,4,4,8,8...; offsets 0,2,4,6,10,14,22
    assert [plan.size(k) for k in range(7)] == [2, 2, 2, 4, 4, 8, 8]
    assert [plan.offset(k) for k in range(7)] == [0, 2, 4, 6, 10, 14, 22]


def test_bounds(plan):
    assert plan.bounds(4) == (10, 14)


def test_step_at(plan):
    assert [plan.step_at(p) for p in (0, 1, 2, 5, 6, 9, 10, 13, 14, 21, 22)] == [
        0,
        0,
        1,
        2,
        3,
        3,
        4,
        4,
        5,
        5,
        6,
    ]


def test_local_bounds_split_the_batch_in_order(plan):
    assert plan.local_bounds(5, 0, 4) == (14, 16)
    assert plan.local_bounds(5, 3, 4) == (20, 22)


def test_local_bounds_rejects_indivisible_size_naming_step(plan):
    with pytest.raises(ValueError, match="batch size 2 at step 0 .* process_count=4"):
        plan.local_bounds(0, 0, 4)


def test_local_bounds_rejects_bad_process_index(plan):
    with pytest.raises(ValueError, match="process_index=2 .* process_count=2"):
        plan.local_bounds(0, 2, 2)


def test_num_batches(plan):
    assert plan.num_batches(0) == 0
    assert plan.num_batches(12) == 5  # steps 0..3 full, step 4 [10,14) partial
    assert plan.num_batches(12, drop_remainder=True) == 4
    assert plan.num_batches(14, drop_remainder=True) == 5


def test_steps_for(plan):
    assert plan.steps_for(samples=0) == 0
    assert plan.steps_for(samples=6) == 3
    assert plan.steps_for(samples=7) == 4
    assert plan.steps_for(tokens=28, tokens_per_sample=4) == 4  # 7 samples


def test_steps_for_needs_exactly_one_budget(plan):
    with pytest.raises(ValueError, match="exactly one"):
        plan.steps_for()
    with pytest.raises(ValueError, match="tokens_per_sample"):
        plan.steps_for(tokens=10)


def test_segments(plan):
    assert plan.segments() == [Segment(0, 2, 2, 0), Segment(3, 4, 4, 6), Segment(5, None, 8, 14)]
    assert plan.segments(4) == [Segment(0, 2, 2, 0), Segment(3, 3, 4, 6)]


def test_distinct_sizes(plan):
    assert plan.distinct_sizes() == (2, 4, 8)
    assert plan.distinct_sizes(3) == (2,)


def test_xlstm_stepwise_offsets():
    p = Plan(stepwise(256, {0: 0.25, 1000: 0.5, 2000: 1.0}))
    assert p.offset(1000) == 64_000
    assert p.offset(2000) == 64_000 + 128_000
    assert p.step_at(64_000 + 128_000 + 256 * 5 + 3) == 2005


def test_exact_at_huge_offsets():
    p = Plan(stepwise(4096, {0: 0.25, 10: 1.0}))
    k = 10**12
    assert p.offset(k) == 10 * 1024 + (k - 10) * 4096
    assert p.step_at(p.offset(k)) == k
    assert p.step_at(p.offset(k) - 1) == k - 1


def test_from_fn_plan_memoizes_prefix_sums():
    p = Plan(from_fn(lambda k: 1 + k % 3, name="cycle"))
    assert [p.offset(k) for k in range(5)] == [0, 1, 3, 6, 7]
    assert p.step_at(6) == 3
    assert p.segments(4) == [
        Segment(0, 0, 1, 0),
        Segment(1, 1, 2, 1),
        Segment(2, 2, 3, 3),
        Segment(3, 3, 1, 6),
    ]


def test_from_fn_segments_need_an_end():
    with pytest.raises(ValueError, match="until_step"):
        Plan(from_fn(lambda k: 1, name="one")).segments()


def test_table_lists_segments_and_totals():
    text = Plan(linear(32, 32, 1000, 256)).table(samples=4000, tokens_per_sample=2)
    lines = text.splitlines()
    assert lines[0].split() == [
        "first",
        "step",
        "last",
        "step",
        "size",
        "samples",
        "tokens",
        "share",
    ]
    assert "distinct sizes" in lines[-1]
    assert lines[2].split()[:4] == ["0", "4", "32", "160"]


@pytest.mark.parametrize(
    ("bad", "error"), [(-1, ValueError), (0, ValueError), (2.5, TypeError), ("2", TypeError)]
)
def test_table_refuses_a_bad_tokens_per_sample(bad, error):
    with pytest.raises(error, match=f"tokens_per_sample must be an int >= 1, got {bad!r}"):
        Plan(constant(4)).table(steps=3, tokens_per_sample=bad)


def test_table_summary_says_one_size_and_one_step_in_the_singular():
    assert Plan(constant(4)).table(steps=1).endswith("\n1 step, 4 samples, 1 distinct size")
    assert Plan(constant(1)).table(steps=2).endswith("\n2 steps, 2 samples, 1 distinct size")


def test_plan_pickles_and_compares_by_schedule():
    p = Plan(constant(4))
    q = pickle.loads(pickle.dumps(p))
    assert q == p and q.offset(10) == 40


def test_plan_rejects_non_schedule():
    with pytest.raises(TypeError, match="Schedule"):
        Plan(lambda k: 4)


@pytest.mark.parametrize(
    ("start", "index", "count", "error"),
    [
        (-1, 0, 1, r"step must be .*>= 0.*got -1"),
        (0, 3, 3, r"worker_index=3 is not valid for worker_count=3; valid: 0\.\.2"),
        (0, 0, 0, r"worker_count must be .*>= 1.*got 0"),
    ],
)
def test_worker_stride_refuses_a_start_or_worker_outside_the_range(start, index, count, error):
    with pytest.raises(ValueError, match=error):
        WorkerStride.checked(start, index, count)


@pytest.mark.parametrize(("start", "index", "count"), [(0, 0, 1), (5, 0, 3), (5, 2, 3), (2, 1, 4)])
def test_worker_stride_steps_are_the_models_and_count_back(start, index, count):
    stride = WorkerStride.checked(start, index, count)
    steps = model.worker_steps(start, index, count, 40)
    assert [stride.step(n) for n in range(len(steps))] == steps
    assert [stride.batches_before(k) for k in steps] == list(range(len(steps)))
    for k in set(range(40)) - set(steps):
        with pytest.raises(ValueError, match=f"step {k} is not built by worker {index} of {count}"):
            stride.batches_before(k)
