"""Scaling out mid-run in the core: validation from the start step, `Plan.divisible_from`."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from model import Counter

from rampup import (
    AdaptiveSchedule,
    Plan,
    RampupBatches,
    StreamBatcher,
    from_fn,
    linear,
    piecewise,
)

SCHEDULE = piecewise({0: 4, 10: 16})  # legal on 8 processes from step 10


def naive_divisible_from(sizes: list[int], divisor: int) -> int | None:
    """The first step of `sizes` (a prefix, whose last size holds forever) from which
    every size divides, tried step by step."""
    if sizes[-1] % divisor:
        return None
    return next(s for s in range(len(sizes)) if all(b % divisor == 0 for b in sizes[s:]))


@given(
    st.dictionaries(st.integers(1, 40), st.integers(1, 48), max_size=5),
    st.integers(1, 48),
    st.integers(1, 16),
)
def test_divisible_from_is_the_first_step_from_which_every_size_divides(later, first, divisor):
    sizes = {0: first, **later}
    plan = Plan(piecewise(sizes))
    horizon = max(sizes) + 1
    by_step = [sizes[max(b for b in sizes if b <= k)] for k in range(horizon)]
    assert plan.divisible_from(divisor) == naive_divisible_from(by_step, divisor)


@given(
    st.dictionaries(st.integers(1, 20), st.sampled_from([2, 4, 6, 8, 12, 16, 24]), max_size=4),
    st.sampled_from([1, 2]),
    st.sampled_from([2, 3, 4, 8]),
    st.integers(0, 10),
)
def test_a_restore_on_another_process_count_gives_the_one_process_batches(
    later, before, after, extra
):
    sizes = {0: 2, **later}
    schedule = piecewise(sizes)
    first = Plan(schedule).divisible_from(after)
    if first is None:
        with pytest.raises(ValueError, match=f"process_count={after}.*no step"):
            RampupBatches(np.arange(97), schedule, process_count=after)
        return
    step = first + extra
    data = np.arange(97)
    state = RampupBatches(data, schedule, shuffle_seed=1, process_count=before).iter_from(step)
    restored = [
        RampupBatches(
            data, schedule, shuffle_seed=1, process_index=i, process_count=after
        ).iter_from(state.get_state())
        for i in range(after)
    ]
    one = RampupBatches(data, schedule, shuffle_seed=1)
    for k in range(step, step + 3):
        np.testing.assert_array_equal(np.concatenate([next(it) for it in restored]), one[k])
    if first:
        with pytest.raises(ValueError, match=f"legal from step {first} on"):
            RampupBatches(data, schedule, process_count=after).iter_from(first - 1)


def test_divisible_from_a_function_schedule_looks_up_to_its_max_step():
    def size(k: int) -> int:
        return 4 if k < 7 else 16

    assert Plan(from_fn(size, name="4-then-16", max_step=100)).divisible_from(8) == 7
    assert Plan(from_fn(size, name="4-then-16", max_step=5)).divisible_from(8) is None
    assert Plan(from_fn(size, name="4-then-16", max_step=8)).divisible_from(16) == 7


def test_divisible_from_a_data_end_looks_before_it_only():
    plan = Plan(piecewise({0: 8, 5: 4, 9: 16}))
    assert plan.divisible_from(8) == 9
    assert plan.divisible_from(8, until_step=5) == 0
    assert plan.divisible_from(8, until_step=7) == 7


def test_divisible_from_an_adaptive_schedule_refuses_unless_its_multiple_of_settles_it():
    with pytest.raises(ValueError, match="decided online.*multiple_of=8"):
        Plan(AdaptiveSchedule(16)).divisible_from(8)
    assert Plan(AdaptiveSchedule(16, multiple_of=16)).divisible_from(8) == 0


def test_divisible_from_a_linear_ramp():
    plan = Plan(linear(8, 8, 400, 64))
    first = plan.divisible_from(64)
    assert plan.size(first) == 64 and plan.size(first - 1) < 64


def two_then_eight(batches_of, restore_at: int, steps: int):
    """The batches of `steps` steps: run on 2 processes to `restore_at`, then restored on 8."""
    two = [batches_of(i, 2).iter_from(0) for i in range(2)]
    out = []
    for _ in range(restore_at):
        out.append(np.concatenate([next(it) for it in two]))
    state = two[0].get_state()
    assert state == two[1].get_state()
    eight = [batches_of(i, 8).iter_from(state) for i in range(8)]
    for _ in range(steps - restore_at):
        out.append(np.concatenate([next(it) for it in eight]))
    return out


@pytest.mark.parametrize("restore_at", [10, 12])
def test_a_state_from_2_processes_restores_on_8_after_the_last_indivisible_size(restore_at):
    data = np.arange(200)
    whole = [
        b.tolist() for b in itertools.islice(RampupBatches(data, SCHEDULE, shuffle_seed=3), 16)
    ]

    def batches_of(index, count):
        return RampupBatches(
            data, SCHEDULE, shuffle_seed=3, process_index=index, process_count=count
        )

    assert [b.tolist() for b in two_then_eight(batches_of, restore_at, 16)] == whole


def test_restoring_on_8_before_the_first_legal_step_names_it():
    two = RampupBatches(np.arange(200), SCHEDULE, process_index=0, process_count=2)
    it = two.iter_from(0)
    for _ in range(9):
        next(it)
    state = it.get_state()
    eight = RampupBatches(np.arange(200), SCHEDULE, process_index=0, process_count=8)
    message = r"batch size 4 at step 9 is not divisible by process_count=8.*legal from step 10 on"
    with pytest.raises(ValueError, match=message):
        eight.iter_from(state)
    with pytest.raises(ValueError, match=message):
        eight.iter_from(10).set_state(state)
    with pytest.raises(ValueError, match=message):
        eight.iter_from(9)


def test_a_state_from_8_processes_restores_on_3():
    schedule = piecewise({0: 8, 4: 24})
    data = np.arange(300)
    whole = RampupBatches(data, schedule)
    eight = [RampupBatches(data, schedule, process_index=i, process_count=8) for i in range(8)]
    state = eight[0].iter_from(6).get_state()
    three = [
        RampupBatches(data, schedule, process_index=i, process_count=3).iter_from(state)
        for i in range(3)
    ]
    np.testing.assert_array_equal(np.concatenate([next(it) for it in three]), whole[6])
    with pytest.raises(ValueError, match="legal from step 4 on"):
        RampupBatches(data, schedule, process_index=0, process_count=3).iter_from(3)


def test_a_micro_batch_layout_is_checked_from_its_start():
    plan = Plan(piecewise({0: 4, 10: 32}))
    assert plan.check_microbatches(4, 2, start=10) == 4
    with pytest.raises(
        ValueError, match=r"microbatch_size=4 x process_count=2.*legal from step 10 on"
    ):
        plan.check_microbatches(4, 2, start=9)


def test_a_stream_checks_its_layout_from_the_step_it_resumes_at():
    one = StreamBatcher(Counter(500), SCHEDULE)
    for _ in range(12):
        next(one)
    state = one.get_state()
    eight = StreamBatcher(Counter(500), SCHEDULE, process_index=0, process_count=8)
    eight.set_state({**state, "parent": {"i": state["position"] // 8}})
    assert next(eight).tolist() == list(range(9, 11))
    early = {**StreamBatcher(Counter(500), SCHEDULE).get_state()}
    with pytest.raises(ValueError, match="legal from step 10 on"):
        StreamBatcher(Counter(500), SCHEDULE, process_index=0, process_count=8).set_state(early)
