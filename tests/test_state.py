"""What a state identifies and what a restore checks (issue 20, items 1, 2, 7 and 8).

A state says what its position means (the data order) and where it stands under its
schedule; a restore into another data order, or a position that is not its step's, is
refused by default. A restore that keeps its position under a changed schedule runs the
steps that are left, on any process count that splits them, and nothing past the end.
Expected batches come from a plain model: position `p` of an unshuffled source of
length `N` is item `p mod N`.
"""

import json

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from model import Counter

import rampup
from rampup import RampupBatches, StreamBatcher, constant, piecewise

SEEDED = dict(shuffle_seed=1, num_epochs=2)


def state_after(batches, steps):
    it = batches.iter_from(0)
    for _ in range(steps):
        next(it)
    return json.loads(json.dumps(it.get_state()))


def chunks(start, stop, size):
    """The model: positions `[start, stop)` of an unshuffled source in batches of `size`."""
    return [list(range(p, min(p + size, stop))) for p in range(start, stop, size)]


# --- item 1: a state identifies its data order -----------------------------------------------


def test_a_state_records_its_data_order_in_plain_ints_and_strings():
    state = state_after(RampupBatches(np.arange(100), constant(4), **SEEDED), 2)
    assert {k: state[k] for k in ("length", "seed", "num_epochs", "drop_remainder")} == {
        "length": 100,
        "seed": 1,
        "num_epochs": 2,
        "drop_remainder": 0,
    }
    assert state["shuffle"] == rampup.permutation.ALGORITHM
    assert all(type(v) in (int, str) for v in state.values())
    plain = state_after(RampupBatches(np.arange(100), constant(4)), 2)
    assert (plain["shuffle"], plain["seed"], plain["num_epochs"]) == ("off", "none", "none")


@pytest.mark.parametrize(
    ("change", "field", "saved", "here"),
    [
        ({"shuffle_seed": 2}, "seed", "1", "2"),
        ({"shuffle_seed": None}, "shuffle", "'[a-z0-9-]+'", "'off'"),
        ({"num_epochs": 3}, "num_epochs", "2", "3"),
        ({"num_epochs": None}, "num_epochs", "2", "'none'"),
        ({"drop_remainder": True}, "drop_remainder", "0", "1"),
        ({"length": 120}, "length", "100", "120"),
    ],
)
def test_a_restore_into_another_data_order_is_refused_naming_what_differs(
    change, field, saved, here
):
    state = state_after(RampupBatches(np.arange(100), constant(4), **SEEDED), 3)
    options = {**SEEDED, **change}
    length = options.pop("length", 100)
    other = RampupBatches(np.arange(length), constant(4), **options)
    with pytest.raises(ValueError, match=rf"{field} {saved}.* in the state, {here} here") as e:
        other.iter_from(state)
    assert "on_data_change='continue'" in str(e.value)


def test_every_field_that_differs_is_named():
    state = state_after(RampupBatches(np.arange(100), constant(4), **SEEDED), 3)
    other = RampupBatches(np.arange(50), constant(4), shuffle_seed=7, num_epochs=2)
    with pytest.raises(ValueError, match=r"length 100 in the state, 50 here; seed 1 .*, 7 here"):
        other.iter_from(state)


def test_a_grown_dataset_continues_at_the_position_on_purpose():
    state = state_after(RampupBatches(np.arange(10), constant(4)), 3)  # position 12
    grown = RampupBatches(np.arange(15), constant(4), on_data_change="continue")
    it = grown.iter_from(state)
    # Positions 12.. of a source of 15: items 12, 13, 14, then the next epoch's 0, 1, ...
    assert [next(it).tolist() for _ in range(2)] == [[12, 13, 14, 0], [1, 2, 3, 4]]
    later = it.get_state()
    assert (later["length"], later["position"]) == (15, 20)
    RampupBatches(np.arange(15), constant(4)).iter_from(later)  # its own order now


def test_a_state_without_data_fields_is_refused_unless_continued():
    state = state_after(RampupBatches(np.arange(100), constant(4)), 3)
    version_3 = {k: state[k] for k in ("step", "position", "schedule")} | {"version": 3}
    with pytest.raises(ValueError, match="does not record its data order.*on_data_change"):
        RampupBatches(np.arange(100), constant(4)).iter_from(version_3)
    it = RampupBatches(np.arange(100), constant(4), on_data_change="continue").iter_from(version_3)
    assert next(it).tolist() == [12, 13, 14, 15]


def test_on_data_change_is_checked():
    with pytest.raises(ValueError, match="on_data_change='keep' is not valid"):
        RampupBatches(np.arange(10), constant(2), on_data_change="keep")


class OtherCounter(Counter):
    """Another parent, with a state of the same shape."""


def test_a_stream_state_names_its_parent_and_refuses_another():
    stream = StreamBatcher(Counter(50), constant(4))
    next(stream), next(stream)
    state = json.loads(json.dumps(stream.get_state()))
    assert (state["stream"], state["drop_remainder"]) == ("Counter", 0)
    with pytest.raises(ValueError, match="stream 'Counter' in the state, 'OtherCounter' here"):
        StreamBatcher(OtherCounter(50), constant(4)).set_state(state)
    with pytest.raises(ValueError, match="drop_remainder 0 in the state, 1 here"):
        StreamBatcher(Counter(50), constant(4), drop_remainder=True).set_state(state)
    moved = StreamBatcher(OtherCounter(50), constant(4), on_data_change="continue")
    moved.set_state(state)
    assert next(moved).tolist() == [8, 9, 10, 11]


def test_a_random_access_pipeline_refuses_a_stream_state():
    stream = StreamBatcher(Counter(50), constant(4))
    next(stream)
    state = stream.get_state()
    with pytest.raises(ValueError, match="length 'absent' in the state, 50 here"):
        RampupBatches(np.arange(50), constant(4)).iter_from(state)


# --- item 2: a position is checked against its step ------------------------------------------


@pytest.mark.parametrize("tamper", [lambda p: p + 5, lambda p: 0, lambda p: 10**18])
def test_a_position_that_is_not_its_steps_is_refused(tamper):
    schedule = piecewise({0: 2, 3: 4})
    state = state_after(RampupBatches(np.arange(100), schedule), 5)  # 2+2+2+4+4 = 14
    bad = {**state, "position": tamper(14)}
    with pytest.raises(
        ValueError,
        match=rf"step 5 holds position {bad['position']}, .* consumed 14 samples before step 5",
    ):
        RampupBatches(np.arange(100), schedule).iter_from(bad)
    moved = RampupBatches(np.arange(100), schedule, on_schedule_change="continue")
    if bad["position"] < 100:  # continue takes the position as it is, on purpose
        assert next(moved.iter_from(bad)).tolist() == chunks(bad["position"], 100, 4)[0]


def test_a_state_saved_after_a_continue_restore_restores_under_its_own_schedule():
    state = state_after(RampupBatches(np.arange(100), constant(3)), 3)  # position 9
    moved = RampupBatches(np.arange(100), constant(4), on_schedule_change="continue")
    it = moved.iter_from(state)
    next(it)
    chained = it.get_state()
    assert (chained["step"], chained["position"], chained["shift"]) == (4, 13, 13 - 16)
    again = RampupBatches(np.arange(100), constant(4)).iter_from(chained)
    assert next(again).tolist() == [13, 14, 15, 16]
    with pytest.raises(ValueError, match=r"holds position 14, .* plus the state's shift -3"):
        RampupBatches(np.arange(100), constant(4)).iter_from({**chained, "position": 14})


# --- item 7: a continue restore at or past the end yields nothing ----------------------------


def test_a_continue_restore_past_the_end_yields_nothing():
    state = state_after(RampupBatches(np.arange(3), constant(8), num_epochs=1), 1)  # position 8
    same = RampupBatches(np.arange(3), constant(8), num_epochs=1)
    assert list(same.iter_from(state)) == []
    moved = RampupBatches(np.arange(3), constant(1), num_epochs=1, on_schedule_change="continue")
    assert list(moved.iter_from(state)) == []


@given(
    length=st.integers(1, 30),
    epochs=st.integers(1, 2),
    old=st.integers(1, 9),
    new=st.integers(1, 6),
    processes=st.sampled_from([1, 2, 3]),
    drop=st.booleans(),
)
def test_a_continue_restore_at_the_end_of_finite_data_yields_nothing(
    length, epochs, old, new, processes, drop
):
    source = np.arange(length)
    finished = RampupBatches(source, constant(old), num_epochs=epochs, drop_remainder=drop)
    state = state_after(finished, len(finished))
    assume(state["position"] >= epochs * length)  # at or past the end (a dropped rest is not)
    for index in range(processes):
        moved = RampupBatches(
            source,
            constant(new * processes),
            num_epochs=epochs,
            drop_remainder=drop,
            process_index=index,
            process_count=processes,
            on_schedule_change="continue",
        )
        assert list(moved.iter_from(state)) == []


# --- item 8: the checks look at the steps that will run ---------------------------------------


def test_a_continue_restore_runs_on_processes_that_split_the_rows_left():
    state = state_after(RampupBatches(np.arange(7), constant(3), num_epochs=1), 1)  # position 3
    parts = [
        RampupBatches(
            np.arange(7),
            constant(2),
            num_epochs=1,
            process_index=index,
            process_count=2,
            on_schedule_change="continue",
        ).iter_from(state)
        for index in range(2)
    ]
    joined = [np.concatenate(step).tolist() for step in zip(*parts, strict=True)]
    assert joined == [[3, 4], [5, 6]]


@given(
    length=st.integers(1, 40),
    old=st.integers(1, 7),
    steps=st.integers(0, 6),
    share=st.integers(1, 4),
    processes=st.sampled_from([2, 3]),
)
def test_a_continue_restore_splits_the_steps_left_or_names_the_last_batch(
    length, old, steps, share, processes
):
    source = np.arange(length)
    before = RampupBatches(source, constant(old), num_epochs=1)
    state = state_after(before, min(steps, len(before)))
    size = share * processes
    expected = chunks(state["position"], length, size)

    def run(index):
        return RampupBatches(
            source,
            constant(size),
            num_epochs=1,
            process_index=index,
            process_count=processes,
            on_schedule_change="continue",
        ).iter_from(state)

    if expected and len(expected[-1]) % processes:
        with pytest.raises(ValueError, match="last batch .* not divisible by process_count"):
            run(0)
        return
    parts = [list(run(index)) for index in range(processes)]
    joined = [np.concatenate(step).tolist() for step in zip(*parts, strict=True)]
    assert joined == expected
