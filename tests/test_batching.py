"""RampupBatches and StreamBatcher: content, ends, state and restore."""

import json

import model
import numpy as np
import pytest

from rampup import RampupBatches, StreamBatcher, constant, from_fn, piecewise
from rampup.permutation import permute

SCHEDULE = piecewise({0: 2, 3: 4, 5: 8})  # offsets 0,2,4,6,10,14,22,30


def test_batches_hold_consecutive_positions():
    b = RampupBatches(np.arange(100), SCHEDULE)
    assert b[0].tolist() == [0, 1]
    assert b[3].tolist() == [6, 7, 8, 9]
    assert b[5].tolist() == list(range(14, 22))


def test_batches_run_across_epoch_borders():
    b = RampupBatches(np.arange(5), SCHEDULE)
    assert b[2].tolist() == [4, 0]
    assert b[3].tolist() == [1, 2, 3, 4]


def test_shuffle_is_a_permutation_per_epoch_from_the_seed():
    b = RampupBatches(np.arange(10), constant(5), shuffle_seed=3)
    epoch0 = np.concatenate([b[0], b[1]])
    epoch1 = np.concatenate([b[2], b[3]])
    assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
    assert epoch0.tolist() == permute(np.arange(10), 10, 3, 0).tolist()
    assert epoch1.tolist() == permute(np.arange(10), 10, 3, 1).tolist()
    assert epoch0.tolist() != epoch1.tolist()


def test_finite_stream_ends_with_partial_batch():
    b = RampupBatches(list(range(6)), SCHEDULE, num_epochs=2)  # 12 positions
    got = [x.tolist() for x in b]
    assert got == [[0, 1], [2, 3], [4, 5], [0, 1, 2, 3], [4, 5]]
    assert len(b) == 5


def test_drop_remainder_leaves_out_partial_batch():
    b = RampupBatches(list(range(6)), SCHEDULE, num_epochs=2, drop_remainder=True)
    assert len(b) == 4
    assert [x.tolist() for x in b][-1] == [0, 1, 2, 3]
    with pytest.raises(IndexError, match="step 4 is past the end"):
        b[4]


def test_endless_has_no_len():
    with pytest.raises(TypeError, match="num_epochs"):
        len(RampupBatches(list(range(6)), SCHEDULE))


def test_process_slices_concatenate_to_the_global_batch():
    data = np.arange(50)
    whole = RampupBatches(data, SCHEDULE)
    parts = [RampupBatches(data, SCHEDULE, process_index=i, process_count=2) for i in range(2)]
    for k in range(8):
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_process_count_that_does_not_divide_names_the_step():
    batches = RampupBatches(np.arange(50), SCHEDULE, process_index=0, process_count=4)
    with pytest.raises(
        ValueError, match=r"batch size 2 at step 0 .* process_count=4.*legal from step 3 on"
    ):
        iter(batches)
    # No known end: checked as steps are built.
    sizes = from_fn(lambda k: 4 if k < 3 else 6, name="4-then-6")
    b = RampupBatches(np.arange(50), sizes, process_index=0, process_count=4)
    assert len(b[2]) == 1
    with pytest.raises(ValueError, match="batch size 6 at step 3 .* process_count=4"):
        b[3]


def test_wrap_false_passes_positions_through():
    class Doubling:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return np.int64(2 * i)

    b = RampupBatches(Doubling(), constant(2), wrap=False)
    assert b[2].tolist() == [8, 10]


def test_default_collate_builds_dict_batches():
    source = [{"x": np.full(3, i, np.float32), "y": i} for i in range(10)]
    batch = RampupBatches(source, constant(4))[1]
    assert batch["x"].shape == (4, 3) and batch["x"].dtype == np.float32
    assert batch["y"].tolist() == [4, 5, 6, 7]


def test_custom_collate_receives_the_elements_list():
    b = RampupBatches(list("abcdef"), constant(3), collate="".join)
    assert b[1] == "def"


def test_iter_from_starts_at_any_step():
    b = RampupBatches(np.arange(100), SCHEDULE)
    it = b.iter_from(4)
    assert next(it).tolist() == list(range(10, 14))
    assert it.step == 5


def test_workers_stride_from_the_start_step():
    b = RampupBatches(np.arange(100), SCHEDULE, num_epochs=1)
    worker_lists = [list(b.iter_from(1, worker_index=w, worker_count=3)) for w in range(3)]
    merged = []
    for i in range(max(map(len, worker_lists))):
        merged += [w[i] for w in worker_lists if i < len(w)]
    expected = list(b.iter_from(1))
    assert len(merged) == len(expected)
    for got, want in zip(merged, expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("index", "count", "error"),
    [
        (2, 2, r"worker_index=2 is not valid for worker_count=2; valid: 0\.\.1"),
        (3, 2, r"worker_index=3 is not valid for worker_count=2; valid: 0\.\.1"),
        (0, 0, r"worker_count must be .*>= 1.*got 0"),
        (-1, 2, r"worker_index must be .*>= 0.*got -1"),
    ],
)
def test_a_worker_outside_the_worker_count_is_refused_naming_the_valid_ones(index, count, error):
    b = RampupBatches(np.arange(100), SCHEDULE)
    with pytest.raises(ValueError, match=error):
        b.iter_from(1, worker_index=index, worker_count=count)


def test_the_last_worker_builds_every_count_th_step_from_its_own():
    b = RampupBatches(np.arange(100), SCHEDULE, num_epochs=1)  # steps 0..14, the last of 4
    got = [x.tolist() for x in b.iter_from(1, worker_index=2, worker_count=3)]
    windows = model.windows(model.sizes({0: 2, 3: 4, 5: 8}, 20), 100)
    assert got == [list(range(*windows[k])) for k in model.worker_steps(1, 2, 3, len(windows))]


def test_state_is_json_of_plain_ints_and_strings():
    it = RampupBatches(np.arange(100), SCHEDULE).iter_from(0)
    next(it), next(it), next(it), next(it)
    state = it.get_state()
    assert json.loads(json.dumps(state)) == state
    assert state["version"] == 4 and state["step"] == 4 and state["position"] == 10
    assert all(isinstance(v, (int, str)) for v in state.values())


def test_restore_continues_identically():
    b = RampupBatches(np.arange(37), SCHEDULE, shuffle_seed=1)
    it = b.iter_from(0)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(6)]
    other = RampupBatches(np.arange(37), SCHEDULE, shuffle_seed=1).iter_from(0)
    other.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(other), want)


def test_restore_from_another_schedule_raises():
    it = RampupBatches(np.arange(100), SCHEDULE).iter_from(3)
    state = it.get_state()
    other = RampupBatches(np.arange(100), constant(4)).iter_from(0)
    with pytest.raises(ValueError, match="schedule .* on_schedule_change='continue'"):
        other.set_state(state)


def test_schedule_change_continue_keeps_the_data_position():
    it = RampupBatches(np.arange(100), SCHEDULE).iter_from(3)  # position 6
    state = it.get_state()
    new = RampupBatches(np.arange(100), constant(4), on_schedule_change="continue").iter_from(0)
    new.set_state(state)
    assert next(new).tolist() == [6, 7, 8, 9]
    assert next(new).tolist() == [10, 11, 12, 13]
    again = new.get_state()
    assert again["position"] == 14 and again["step"] == 5
    later = RampupBatches(np.arange(100), constant(4)).iter_from(0)
    later.set_state(again)  # same schedule now: the shifted position is kept
    assert next(later).tolist() == [14, 15, 16, 17]


def test_state_of_another_version_raises():
    it = RampupBatches(np.arange(100), SCHEDULE).iter_from(0)
    state = dict(it.get_state(), version=5)
    with pytest.raises(ValueError, match="version 5"):
        it.set_state(state)


def test_malformed_state_raises():
    it = RampupBatches(np.arange(100), SCHEDULE).iter_from(0)
    with pytest.raises(ValueError, match="not a rampup state"):
        it.set_state({"batch_step": 3})


def test_bad_policy_is_rejected():
    with pytest.raises(ValueError, match="on_schedule_change='skip'"):
        RampupBatches(np.arange(10), SCHEDULE, on_schedule_change="skip")


def test_stream_batcher_pulls_schedule_sizes():
    got = [b.tolist() for b in StreamBatcher(iter(range(20)), SCHEDULE)]
    assert got == [[0, 1], [2, 3], [4, 5], [6, 7, 8, 9], [10, 11, 12, 13], list(range(14, 20))]


def test_stream_batcher_drop_remainder():
    got = [b.tolist() for b in StreamBatcher(range(20), SCHEDULE, drop_remainder=True)]
    assert got[-1] == [10, 11, 12, 13]


def test_stream_batcher_pulls_the_process_share():
    got = [b.tolist() for b in StreamBatcher(range(7), SCHEDULE, process_index=1, process_count=2)]
    assert got == [[0], [1], [2], [3, 4], [5, 6]]


def test_stream_batcher_restores_from_state_with_parent():
    s = StreamBatcher(model.Counter(40), SCHEDULE)
    for _ in range(4):
        next(s)
    state = json.loads(json.dumps(s.get_state()))
    assert state["parent"] == {"i": 10} and state["step"] == 4 and state["position"] == 10
    rest = [b.tolist() for b in s]
    again = StreamBatcher(model.Counter(40), SCHEDULE)
    again.set_state(state)
    assert [b.tolist() for b in again] == rest


def test_stream_batcher_says_why_a_plain_iterator_cannot_be_checkpointed():
    s = StreamBatcher(iter(range(10)), SCHEDULE)
    with pytest.raises(TypeError, match="cannot be checkpointed.*RampupBatches"):
        s.get_state()


def test_a_size_the_processes_cannot_split_fails_where_the_pipeline_starts():
    schedule = piecewise({0: 8, 10: 12, 20: 16})
    batches = RampupBatches(np.arange(1000), schedule, process_index=0, process_count=8)
    stream = StreamBatcher(iter(range(1000)), schedule, process_index=0, process_count=8)
    for start in (lambda: batches.iter_from(0), lambda: next(stream)):
        with pytest.raises(
            ValueError,
            match=r"batch size 12 at step 10 is not divisible by "
            r"process_count=8.*nearest valid sizes: 8, 16.*legal from step 20 on",
        ):
            start()
    assert batches.iter_from(20).step == 20
    # No step is legal: refused when built.
    for build in (RampupBatches, StreamBatcher):
        with pytest.raises(ValueError, match="batch size 12 at step 10 .* no step from 10 on"):
            build(range(1000), piecewise({0: 8, 10: 12}), process_index=0, process_count=8)
    # Data that ends before step 10 never meets the size 12.
    short = RampupBatches(np.arange(80), schedule, num_epochs=1, process_index=1, process_count=8)
    assert [b.tolist() for b in short][:2] == [[1], [9]]


class BatchedRows:
    """A source with torch's batched-fetch protocol that counts its calls."""

    def __init__(self, rows: int) -> None:
        self.data = np.arange(rows * 2).reshape(rows, 2)
        self.batched_calls = 0
        self.single_calls = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> np.ndarray:
        self.single_calls += 1
        return self.data[index]

    def __getitems__(self, indices: list[int]) -> list[np.ndarray]:
        self.batched_calls += 1
        return list(self.data[indices])


def test_a_source_with_getitems_is_read_once_per_batch():
    source = BatchedRows(37)
    batches = list(RampupBatches(source, SCHEDULE, shuffle_seed=4, num_epochs=2))
    assert source.batched_calls == len(batches) and source.single_calls == 0
    expected = RampupBatches(source.data, SCHEDULE, shuffle_seed=4, num_epochs=2)
    for got, want in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_getitems_of_the_wrong_length_is_refused():
    class Short(BatchedRows):
        def __getitems__(self, indices):
            return super().__getitems__(indices)[:-1]

    with pytest.raises(TypeError, match="__getitems__ returned list for 2 indices"):
        RampupBatches(Short(10), SCHEDULE)[0]


def test_hugging_face_dataset_is_read_through_getitems():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"x": np.arange(20), "y": np.arange(20) * 10})
    ds = ds.with_format("numpy")
    batch = RampupBatches(ds, SCHEDULE, shuffle_seed=1)[5]
    rows = RampupBatches(np.arange(20), SCHEDULE, shuffle_seed=1)[5]
    np.testing.assert_array_equal(batch["x"], rows)
    np.testing.assert_array_equal(batch["y"], rows * 10)


@pytest.mark.parametrize(("shuffle_seed", "wrap"), [(None, True), (4, True), (None, False)])
def test_index_list_is_the_indices_as_a_list_across_epoch_borders(shuffle_seed, wrap):
    batches = RampupBatches(np.arange(7), constant(3), shuffle_seed=shuffle_seed, wrap=wrap)
    for start in range(0, 30):
        for stop in range(start + 1, start + 12):
            expected = [p % 7 for p in range(start, stop)] if wrap else list(range(start, stop))
            got = batches.index_list(start, stop)
            assert got == batches.indices(start, stop).tolist()
            if shuffle_seed is None:
                assert got == expected


@pytest.mark.parametrize("shuffle_seed", [None, 3])
def test_a_position_past_int64_is_refused_at_restore_naming_the_limit(shuffle_seed):
    batches = RampupBatches(np.arange(10), constant(64), shuffle_seed=shuffle_seed)
    last = (2**63 - 1) // 64  # the last step whose first position is an int64
    state = dict(batches.iter_from(0).get_state(), step=last + 1, position=64 * (last + 1))
    with pytest.raises(ValueError, match=r"past the largest position .* 2\*\*63 - 1"):
        batches.iter_from(state)
    with pytest.raises(ValueError, match=r"step 144,115,188,075,855,872\)"):
        batches.iter_from(last + 1)
    far = batches.iter_from(10**16)  # far, and still exact
    assert next(far).tolist() == [int(i) for i in batches.indices(64 * 10**16, 64 * 10**16 + 64)]


class FloatLength:
    """A source whose __len__ returns a float."""

    def __len__(self):
        return 5.0

    def __getitem__(self, index):
        return np.int64(index)


def test_a_len_that_is_not_an_int_names_the_source_and_the_fix():
    with pytest.raises(TypeError, match=r"FloatLength.__len__\) returned 5.0 \(float\).*an int"):
        RampupBatches(FloatLength(), SCHEDULE)


def test_a_none_stream_names_the_argument():
    with pytest.raises(TypeError, match=r"StreamBatcher\(iterator=None\): iterator must be"):
        StreamBatcher(None, SCHEDULE)
