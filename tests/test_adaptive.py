"""AdaptiveSchedule: a schedule decided online, exact on resume."""

import hashlib
import json
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rampup
from rampup import AdaptiveSchedule, GrowthPolicy, Plan, RampupBatches


def growing(step: int) -> float:
    """A noise scale that grows as training goes on."""
    return 4.0 * 1.15**step


def test_a_decision_applies_from_step_plus_lag_on():
    schedule = AdaptiveSchedule(8, lag=5, policy=GrowthPolicy(patience=1))
    assert schedule.propose(0, 3.0) is None
    decision = schedule.propose(1, 16.0)
    assert decision == rampup.Decision(step=1, start=6, size=16, noise_scale=16.0)
    assert [schedule(k) for k in range(7)] == [8, 8, 8, 8, 8, 8, 16]


def test_growth_needs_patience_consecutive_proposals_above_the_next_size():
    schedule = AdaptiveSchedule(8, lag=2, policy=GrowthPolicy(patience=3))
    estimates = [20, 20, 10, 20, 20, 10, 20, 20, 20]  # flaps around 16 until the last three
    decisions = [schedule.propose(k, float(v)) for k, v in enumerate(estimates)]
    assert [d for d in decisions if d] == [rampup.Decision(8, 10, 16, 20.0)]


def test_growth_is_by_whole_factors_and_bounded_by_max_size():
    schedule = AdaptiveSchedule(
        8, max_size=48, multiple_of=8, lag=1, policy=GrowthPolicy(factor=2, patience=1)
    )
    sizes = [d.size for k in range(6) if (d := schedule.propose(k, 1e9))]
    assert sizes == [16, 32, 48]


def test_allowed_sizes_are_the_only_sizes_picked():
    schedule = AdaptiveSchedule(
        8, lag=1, allowed_sizes=[8, 24, 64], policy=GrowthPolicy(factor=4, patience=1)
    )
    sizes = [d.size for k in range(5) if (d := schedule.propose(k, 1e9))]
    assert sizes == [24, 64]


def test_never_shrinks_unless_asked():
    keep = AdaptiveSchedule(32, lag=1, policy=GrowthPolicy(patience=1))
    assert all(keep.propose(k, 1.0) is None for k in range(5))
    shrink = AdaptiveSchedule(32, lag=1, min_size=8, policy=GrowthPolicy(patience=2, shrink=True))
    sizes = [d.size for k in range(8) if (d := shrink.propose(k, 1.0))]
    assert sizes == [16, 8]


def test_a_plan_built_before_a_decision_follows_it():
    schedule = AdaptiveSchedule(4, lag=2, policy=GrowthPolicy(patience=1))
    plan = Plan(schedule)
    assert plan.size(1) == 4
    schedule.propose(0, 100.0)
    assert [plan.size(k) for k in range(3)] == [4, 4, 8]
    assert plan.offset(3) == 4 + 4 + 8
    assert plan.step_at(15) == 2
    assert plan.segments() == [rampup.Segment(0, 1, 4, 0), rampup.Segment(2, None, 8, 8)]


def test_a_plan_follows_a_restore_that_replaces_the_decisions():
    ours, theirs = make(), make()
    for step in range(20):
        ours.propose(step, growing(step))
        theirs.propose(step, growing(step) / 4)
    assert ours.decisions != theirs.decisions
    plan = Plan(ours)
    assert plan.offset(20) == sum(ours(k) for k in range(20))
    ours.set_state(theirs.get_state())
    assert [plan.size(k) for k in range(23)] == [theirs(k) for k in range(23)]
    assert plan.offset(20) == sum(theirs(k) for k in range(20))


def test_a_step_not_decided_yet_is_refused():
    schedule = AdaptiveSchedule(4, lag=3)
    plan = Plan(schedule)
    schedule.propose(0, None)
    assert plan.size(3) == 4  # steps < 0 + 1 + 3 are fixed
    with pytest.raises(ValueError, match="step 4 is not decided yet.*lag=3"):
        plan.size(4)
    with pytest.raises(ValueError, match="step 4 is not decided yet"):
        schedule(4)
    with pytest.raises(ValueError, match="not decided yet"):
        plan.step_at(4 * 4)


def test_a_finite_source_is_refused_with_the_fix():
    with pytest.raises(
        ValueError, match="num_epochs=2 with a schedule decided online.*num_epochs=None"
    ):
        RampupBatches(np.arange(100), make(), num_epochs=2)


def test_proposals_go_forward():
    schedule = AdaptiveSchedule(4, lag=3)
    schedule.propose(5, 1.0)
    with pytest.raises(ValueError, match="proposals go forward.*step >= 6"):
        schedule.propose(5, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"initial_size": 6, "multiple_of": 4}, ValueError, "not divisible by multiple_of=4"),
        ({"initial_size": 8, "lag": 0}, ValueError, "lag must be an int >= 1"),
        (
            {"initial_size": 8, "policy": "double"},
            TypeError,
            "policy must be a rampup.GrowthPolicy",
        ),
        ({"initial_size": 8, "allowed_sizes": [8, 12], "multiple_of": 8}, ValueError, "12"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdaptiveSchedule(**kwargs)


def test_propose_refuses_a_nan_or_non_number_estimate():
    schedule = AdaptiveSchedule(8)
    with pytest.raises(ValueError, match="NaN"):
        schedule.propose(0, float("nan"))
    with pytest.raises(TypeError, match="noise_scale must be a number or None"):
        schedule.propose(0, "12")


def test_check_lag_refuses_a_run_ahead_the_lag_does_not_cover():
    schedule = AdaptiveSchedule(8, lag=4)
    schedule.check_lag(3)
    with pytest.raises(ValueError, match="up to 4 steps ahead.*lag >= 5"):
        schedule.check_lag(4, "device_batches(prefetch=4)")


def train(schedule, iterator, first_step, last_step, record):
    """A training loop: the estimate depends on the data it saw, as a real one does."""
    for step in range(first_step, last_step):
        batch = np.asarray(next(iterator))
        record.append((step, batch.tolist()))
        estimate = growing(step) * (1.0 + 0.01 * (int(batch.sum()) % 7))
        schedule.propose(step, estimate)


def make(lag=3, **kwargs):
    return AdaptiveSchedule(4, lag=lag, max_size=64, policy=GrowthPolicy(patience=2), **kwargs)


def test_resume_through_json_replays_the_run_exactly():
    source = np.arange(5000)
    schedule = make()
    batches = RampupBatches(source, schedule, shuffle_seed=1)
    full: list = []
    train(schedule, iter(batches), 0, 40, full)
    assert len(schedule.decisions) >= 3

    schedule = make()
    batches = RampupBatches(source, schedule, shuffle_seed=1)
    iterator = iter(batches)
    first: list = []
    train(schedule, iterator, 0, 17, first)
    saved = json.loads(json.dumps({"data": iterator.get_state(), "schedule": schedule.get_state()}))
    restored = make()
    restored.set_state(saved["schedule"])  # decisions first, then the data state
    iterator = RampupBatches(source, restored, shuffle_seed=1).iter_from(0)
    iterator.set_state(saved["data"])
    second: list = []
    train(restored, iterator, 17, 40, second)
    assert first + second == full
    assert restored.get_state() == schedule_after(40)


def schedule_after(steps):
    schedule = make()
    iterator = iter(RampupBatches(np.arange(5000), schedule, shuffle_seed=1))
    train(schedule, iterator, 0, steps, [])
    return schedule.get_state()


def test_a_data_state_of_another_run_is_refused():
    source = np.arange(5000)
    ours, theirs = make(), make()
    for step in range(20):
        ours.propose(step, growing(step))
        theirs.propose(step, 1.0)  # never grows
    data = RampupBatches(source, theirs).iter_from(20).get_state()
    with pytest.raises(ValueError, match="written under schedule"):
        RampupBatches(source, ours).iter_from(0).set_state(data)


def test_a_data_state_agrees_with_decisions_made_after_it():
    # Saved at step 10; the schedule state was saved later, with more decisions.
    schedule = make()
    for step in range(10):
        schedule.propose(step, growing(step))
    data = RampupBatches(np.arange(5000), schedule).iter_from(10).get_state()
    for step in range(10, 30):
        schedule.propose(step, growing(step))
    assert schedule.decisions[-1][0] > 10
    later = make()
    later.set_state(schedule.get_state())
    iterator = RampupBatches(np.arange(5000), later).iter_from(0)
    iterator.set_state(data)
    assert iterator.step == 10


def test_a_data_state_past_the_known_decisions_is_refused():
    schedule = make()
    for step in range(30):
        schedule.propose(step, growing(step))
    data = RampupBatches(np.arange(5000), schedule).iter_from(30).get_state()
    fresh = make()  # its schedule state was not restored
    with pytest.raises(ValueError, match="restore the schedule state saved with the data state"):
        RampupBatches(np.arange(5000), fresh).iter_from(0).set_state(data)


def test_pickled_copy_keeps_the_decisions_and_their_fingerprint():
    schedule = make()
    for step in range(12):
        schedule.propose(step, growing(step))
    copy = pickle.loads(pickle.dumps(schedule))
    assert copy == schedule and copy.get_state() == schedule.get_state()
    assert copy.fingerprint_at(14) == schedule.fingerprint_at(14)
    # The original moves on; the copy (a worker's) agrees on every step it knows.
    for step in range(12, 20):
        schedule.propose(step, growing(step))
    assert copy.fingerprint_at(copy.decided_until) == schedule.fingerprint_at(copy.decided_until)


def test_to_config_is_refused_with_the_way_to_save_it():
    with pytest.raises(ValueError, match="Save get_state"):
        make().to_config()


def test_allowed_sizes_hold_under_any_estimates():
    schedule = AdaptiveSchedule(
        8,
        lag=2,
        allowed_sizes=[8, 24, 40],
        max_size=64,
        policy=GrowthPolicy(factor=3, patience=1, shrink=True),
    )
    estimates = [1e9, 1e9, 1e9, 1.0, 1.0, 1e9, 5.0, 1e9]
    for step, estimate in enumerate(estimates):
        schedule.propose(step, estimate)
    assert {size for _, size in schedule.decisions} <= {8, 24, 40}
    assert len(schedule.decisions) >= 3


def test_state_of_another_configuration_is_refused():
    with pytest.raises(ValueError, match="build it with the same arguments"):
        make(lag=4).set_state(make(lag=3).get_state())


@st.composite
def runs(draw):
    lag = draw(st.integers(1, 6))
    multiple_of = draw(st.sampled_from([1, 2, 4]))
    factor = draw(st.integers(2, 3))
    patience = draw(st.integers(1, 3))
    shrink = draw(st.booleans())
    max_size = draw(st.sampled_from([None, 40, 100]))
    estimates = draw(st.lists(st.one_of(st.none(), st.floats(-10, 500)), min_size=1, max_size=40))
    allowed = draw(st.one_of(st.none(), st.sets(st.integers(1, 25), max_size=6)))
    if allowed is not None:
        allowed = {
            multiple_of * a for a in allowed if max_size is None or multiple_of * a <= max_size
        }
    return lag, multiple_of, factor, patience, shrink, max_size, estimates, allowed


@settings(max_examples=60, deadline=None)
@given(runs())
def test_decisions_never_change_a_step_before_step_plus_lag_and_sizes_are_legal(run):
    lag, multiple_of, factor, patience, shrink, max_size, estimates, allowed = run
    schedule = AdaptiveSchedule(
        4 * multiple_of,
        multiple_of=multiple_of,
        max_size=max_size,
        min_size=multiple_of,
        lag=lag,
        allowed_sizes=allowed,
        policy=GrowthPolicy(factor, patience, shrink),
    )
    plan = Plan(schedule)
    for step, estimate in enumerate(estimates):
        before = [schedule(k) for k in range(step + lag)]
        schedule.propose(step, estimate)
        assert [plan.size(k) for k in range(step + lag)] == before
        sizes = [plan.size(k) for k in range(schedule.decided_until)]
        assert all(s % multiple_of == 0 and s >= multiple_of for s in sizes)
        assert max_size is None or max(sizes) <= max_size
        assert allowed is None or set(sizes) <= allowed | {4 * multiple_of}
        # The oracle: offsets are the running sum of the sizes, step by step.
        assert [plan.offset(k) for k in range(len(sizes) + 1)] == list(
            np.concatenate([[0], np.cumsum(sizes)])
        )


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 39), st.sampled_from([1, 2]))
def test_resume_at_a_random_step_replays_identically(stop, process_count):
    """One or two processes (each builds its slice); joined they are the one-process run."""

    def run(schedule, start, end, states=None):
        iterators = [
            RampupBatches(
                np.arange(3000),
                schedule,
                shuffle_seed=5,
                process_index=i,
                process_count=process_count,
            ).iter_from(0)
            for i in range(process_count)
        ]
        if states:
            for iterator, state in zip(iterators, states, strict=True):
                iterator.set_state(state)
        record = []
        for step in range(start, end):
            batch = np.concatenate([next(it) for it in iterators])
            record.append(batch.tolist())
            schedule.propose(step, growing(step) * (1 + int(batch.sum()) % 3))
        return record, [it.get_state() for it in iterators]

    full, _ = run(make(multiple_of=2), 0, 40)
    schedule = make(multiple_of=2)
    first, states = run(schedule, 0, stop)
    saved = json.loads(json.dumps({"data": states, "schedule": schedule.get_state()}))
    restored = make(multiple_of=2)
    restored.set_state(saved["schedule"])
    second, _ = run(restored, stop, 40, saved["data"])
    assert first + second == full


def test_scaled_follows_the_decisions_with_an_explicit_reference_size():
    schedule = AdaptiveSchedule(8, lag=2, policy=GrowthPolicy(patience=1))
    lr = rampup.scaled(1.0, schedule, rule="linear", reference_size=32)
    assert lr(1) == 0.25
    schedule.propose(0, 100.0)
    assert [lr(k) for k in range(3)] == [0.25, 0.25, 0.5]


def test_scaled_needs_a_reference_size_and_no_compiled_graph():
    schedule = AdaptiveSchedule(8, lag=2)
    with pytest.raises(ValueError, match="pass reference_size"):
        rampup.scaled(1.0, schedule)
    with pytest.raises(ValueError, match="decided online: a compiled graph"):
        rampup.scaled(1.0, schedule, reference_size=32).segment_factors()


@pytest.mark.parametrize("size", [48, 8, 128])
def test_a_state_deciding_a_size_outside_the_allowed_or_the_bounds_is_refused(size):
    def build():
        return rampup.AdaptiveSchedule(16, min_size=16, max_size=64, allowed_sizes=[16, 32, 64])

    state = dict(build().get_state(), decisions=[[3, size]], proposed_until=5)
    with pytest.raises(ValueError, match=f"size {size}"):
        build().set_state(state)
    legal = dict(state, decisions=[[3, 32]])
    schedule = build()
    schedule.set_state(legal)
    assert schedule.starts == (0, 3) and schedule.sizes == (16, 32)


def flipping(decisions: int) -> AdaptiveSchedule:
    """A schedule with a decision at every one of its first `decisions` steps (8, 16, 8, ...)."""
    schedule = AdaptiveSchedule(8, lag=2, max_size=16, policy=GrowthPolicy(2, 1, shrink=True))
    for k in range(decisions):
        schedule.propose(k, 100.0 if k % 2 == 0 else 1.0)
    assert len(schedule.decisions) == decisions
    return schedule


def python_calls_per_step(decisions: int, steps: int = 50) -> int:
    """Python function calls (a count, not a time) of `steps` followed steps past `decisions`.

    Each step builds a batch through `follow` (a restart, since a decision came),
    proposes, and writes the data state, on one of four processes.
    """
    schedule = AdaptiveSchedule(
        12, lag=2, min_size=6, max_size=24, policy=GrowthPolicy(2, 1, shrink=True)
    )
    # A decision at every step: 6 and 12 in turn for the first half (4 processes cannot
    # split 6), then 24 and 12, which they can.
    sizes = [(6 if k < decisions // 2 else 24) if k % 2 == 0 else 12 for k in range(decisions)]
    state = dict(schedule.get_state(), proposed_until=decisions)
    state["decisions"] = [[k + 2, size] for k, size in enumerate(sizes)]
    schedule.set_state(state)
    batches = RampupBatches(np.arange(10**6), schedule, process_count=4, process_index=1)
    it = rampup.follow(batches.iter_from, batches.plan, step=decisions)

    def flip(k: int) -> None:  # 12 grows to 24, 24 shrinks to 12, from step k + 2 on
        schedule.propose(k, 100.0 if schedule(k + 1) == 12 else 1.0)

    next(it)
    flip(decisions)
    it.get_state()  # the first fingerprint reads every decision once; later ones do not
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        for k in range(decisions + 1, decisions + 1 + steps):
            next(it)
            flip(k)
            it.get_state()
    finally:
        sys.setprofile(None)
    return calls // steps


def test_a_step_costs_the_same_at_a_thousand_and_at_sixteen_thousand_decisions():
    # Linear lookups would make the second count sixteen times larger: every
    # decision a segment copied, compared or checked again at every step.
    few, many = python_calls_per_step(1_000), python_calls_per_step(16_000)
    assert many <= few * 1.2, (few, many)


@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 130])
def test_fingerprints_are_the_hash_of_the_decisions_before_the_step(count):
    schedule = flipping(count)
    for step in {0, 1, count, count + 1}:
        pairs = zip(schedule.starts, schedule.sizes, strict=True)
        before = [[s, z] for s, z in pairs if s < step]
        text = json.dumps([schedule.config, before], separators=(",", ":"))
        expected = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
        assert schedule.fingerprint_at(step) == expected


@pytest.mark.parametrize("value", [16, "16"])
def test_allowed_sizes_that_are_not_a_collection_are_named_with_the_fix(value):
    with pytest.raises(
        TypeError, match=rf"allowed_sizes={value!r} is not a collection.*\[{value!r}\]"
    ):
        AdaptiveSchedule(8, allowed_sizes=value)
