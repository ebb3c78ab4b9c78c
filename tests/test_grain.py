"""The grain adapter against real grain: sizes, epochs, workers, processes, restore."""

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

grain = pytest.importorskip("grain")

import model  # noqa: E402

import rampup  # noqa: E402
from rampup.adapters.grain import (  # noqa: E402
    RampupIterDataset,
    RampupMapDataset,
    RampupMapIterDataset,
    process_slice,
)

LENGTH = 23
SEED = 7

SCHEDULES = {
    "stepwise": rampup.stepwise(8, {0: 0.25, 3: 0.5, 5: 1.0}),
    "piecewise": rampup.piecewise({0: 3, 2: 5, 6: 7}),
    "linear": rampup.linear(2, 2, 30, 8),
}


def tag(x: int) -> dict:
    """A pytree element, so that collation of dicts is exercised too."""
    return {"x": np.int64(x), "y": np.full((2,), x, np.float32)}


def source() -> grain.MapDataset:
    return grain.MapDataset.range(LENGTH).shuffle(SEED).map(tag)


def xs(batches) -> list[int]:
    return [int(v) for b in batches for v in np.asarray(b["x"])]


# The schedules' sizes by the model (tests/model.py), for more steps than any test runs.
SIZES = {
    "stepwise": model.sizes({0: 2, 3: 4, 5: 8}, 100),
    "piecewise": model.sizes({0: 3, 2: 5, 6: 7}, 100),
    "linear": model.linear_sizes(2, 2, 30, 8, 100),
}


def expected_sizes(name: str, positions: int, drop_remainder: bool) -> list[int]:
    """Sizes of a finite stream by the model: full steps, then the remainder."""
    return [stop - start for start, stop in model.windows(SIZES[name], positions, drop_remainder)]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_map_dataset_sizes_follow_schedule_across_epochs(name, drop_remainder):
    schedule = SCHEDULES[name]
    ds = RampupMapDataset(
        source(),
        schedule,
        num_epochs=3,
        drop_remainder=drop_remainder,
        process_index=0,
        process_count=1,
    )
    batches = [ds[k] for k in range(len(ds))]
    sizes = expected_sizes(name, 3 * LENGTH, drop_remainder)
    assert [len(b["x"]) for b in batches] == sizes
    stream = [int(source()[p]["x"]) for p in range(3 * LENGTH)]
    assert xs(batches) == stream[: sum(sizes)]
    for epoch in range(3):  # grain reshuffles every epoch; each element once per epoch
        assert sorted(stream[epoch * LENGTH : (epoch + 1) * LENGTH]) == list(range(LENGTH))
    assert stream[:LENGTH] != stream[LENGTH : 2 * LENGTH]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_iter_dataset_sizes_follow_schedule_across_epochs(name, drop_remainder, read_options):
    schedule = SCHEDULES[name]
    parent = source().repeat(2).to_iter_dataset(read_options)
    ds = RampupIterDataset(
        parent, schedule, drop_remainder=drop_remainder, process_index=0, process_count=1
    )
    batches = list(ds)
    sizes = expected_sizes(name, 2 * LENGTH, drop_remainder)
    assert [len(b["x"]) for b in batches] == sizes
    assert xs(batches) == [int(e["x"]) for e in source().repeat(2)][: sum(sizes)]


def test_endless_map_dataset_has_grain_endless_length_and_keeps_ramping():
    ds = RampupMapDataset(source(), SCHEDULES["piecewise"], process_index=0, process_count=1)
    assert len(ds) == len(source().repeat())
    step = 40  # far past the first epoch
    start, stop = model.windows(SIZES["piecewise"])[step]
    assert xs([ds[step]]) == [int(source()[p]["x"]) for p in range(start, stop)]


@pytest.mark.parametrize("count", [2, 4])
def test_process_slices_concatenate_to_one_process_batch(count):
    schedule = rampup.piecewise({0: 4, 3: 8, 5: 12}, multiple_of=4)
    whole = RampupMapDataset(
        source(), schedule, num_epochs=2, drop_remainder=True, process_index=0, process_count=1
    )
    parts = [
        RampupMapDataset(
            source(),
            schedule,
            num_epochs=2,
            drop_remainder=True,
            process_index=i,
            process_count=count,
        )
        for i in range(count)
    ]
    assert all(len(p) == len(whole) for p in parts)
    for step in range(len(whole)):
        assert xs([p[step] for p in parts]) == xs([whole[step]])


@settings(max_examples=25, deadline=None)
@given(
    length=st.integers(1, 30),
    epochs=st.integers(1, 3),
    count=st.sampled_from([1, 2, 4]),
    sizes=st.dictionaries(st.integers(1, 12), st.integers(1, 5), max_size=3),
    first=st.integers(1, 5),
    drop_remainder=st.booleans(),
)
def test_any_ramp_over_any_grain_source_gives_each_element_once_per_epoch(
    length, epochs, count, sizes, first, drop_remainder
):
    table = {0: first * count, **{k: v * count for k, v in sizes.items()}}
    schedule = rampup.piecewise(table)
    parent = grain.MapDataset.range(length).shuffle(SEED)
    total = epochs * length
    windows = model.windows(model.sizes(table, total), total, drop_remainder)
    last = model.windows(model.sizes(table, total), total)[-1]
    if not drop_remainder and (last[1] - last[0]) % count:
        # Processes hold equal slices; a partial last batch that does not split raises.
        with pytest.raises(ValueError, match="last batch .* not divisible"):
            RampupMapDataset(
                parent, schedule, num_epochs=epochs, process_index=0, process_count=count
            )
        return
    parts = [
        RampupMapDataset(
            parent,
            schedule,
            num_epochs=epochs,
            drop_remainder=drop_remainder,
            process_index=i,
            process_count=count,
        )
        for i in range(count)
    ]
    flat = [int(v) for k in range(len(parts[0])) for p in parts for v in p[k]]
    assert [sum(len(p[k]) for p in parts) for k in range(len(parts[0]))] == [
        stop - start for start, stop in windows
    ]
    assert flat == [int(parent[p]) for p in range(len(flat))]
    for epoch in range(epochs):
        chunk = flat[epoch * length : (epoch + 1) * length]
        assert len(set(chunk)) == len(chunk)


def test_iter_dataset_pulls_this_process_share(read_options):
    schedule = rampup.piecewise({0: 4, 3: 8})
    ds = RampupIterDataset(
        source().to_iter_dataset(read_options),
        schedule,
        drop_remainder=True,
        process_index=1,
        process_count=2,
    )
    assert [len(b["x"]) for b in ds] == [2, 2, 2, 4, 4, 4, 4]


def test_process_defaults_follow_jax():
    jax = pytest.importorskip("jax")
    assert process_slice(None, None) == (jax.process_index(), jax.process_count())
    ds = RampupMapDataset(source(), SCHEDULES["stepwise"])
    assert (ds.batches.process_index, ds.batches.process_count) == process_slice(None, None)


def test_process_index_without_count_is_an_error():
    with pytest.raises(ValueError, match="both process_index and process_count"):
        RampupMapDataset(source(), SCHEDULES["stepwise"], process_index=1)


def test_collate_receives_the_list_of_elements(read_options):
    seen = []

    def collate(elements):
        seen.append(type(elements))
        return len(elements)

    schedule = rampup.piecewise({0: 2, 1: 3})
    ds = RampupMapDataset(
        source(), schedule, num_epochs=1, collate=collate, process_index=0, process_count=1
    )
    it_ds = RampupIterDataset(
        source().to_iter_dataset(read_options),
        schedule,
        collate=collate,
        process_index=0,
        process_count=1,
    )
    assert [ds[0], ds[1]] == [2, 3]
    assert list(it_ds)[:2] == [2, 3]
    assert set(seen) == {list}


def test_filtered_parent_names_the_fix_when_built():
    parent = grain.MapDataset.range(10).filter(lambda x: x % 2 == 0)
    with pytest.raises(ValueError, match="RampupIterDataset"):
        RampupMapDataset(parent, rampup.constant(4), process_index=0, process_count=1)


class CountedReads(grain.MapDataset):
    """A grain source that counts its batched and single reads."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length, self.batched, self.single = length, 0, 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        self.single += 1
        return np.int64(index % self.length)

    def _getitems(self, indices):
        self.batched += 1
        return [np.int64(i % self.length) for i in indices]


def test_map_dataset_reads_its_parent_once_per_batch():
    parent = CountedReads(LENGTH)
    ds = RampupMapDataset(
        parent.map(lambda x: x * 10),
        SCHEDULES["piecewise"],
        num_epochs=2,
        process_index=0,
        process_count=1,
    )
    batches = [ds[k] for k in range(len(ds))]
    assert parent.batched == len(batches) and parent.single == 0
    assert np.concatenate(batches).tolist() == [10 * (i % LENGTH) for i in range(2 * LENGTH)]


def test_wrong_parent_kinds_are_type_errors():
    with pytest.raises(TypeError, match="RampupMapDataset"):
        RampupIterDataset(source(), rampup.constant(2), process_index=0, process_count=1)
    with pytest.raises(TypeError, match="RampupIterDataset"):
        RampupMapDataset(source().to_iter_dataset(), rampup.constant(2))


def test_map_dataset_pickles_to_equal_batches():
    import pickle

    ds = RampupMapDataset(
        source(), SCHEDULES["linear"], num_epochs=2, process_index=0, process_count=1
    )
    copy = pickle.loads(pickle.dumps(ds))
    assert len(copy) == len(ds)
    assert xs(copy[k] for k in range(len(ds))) == xs(ds[k] for k in range(len(ds)))


def test_str_names_the_class_and_schedule():
    ds = RampupMapDataset(source(), SCHEDULES["piecewise"], process_index=0, process_count=1)
    it_ds = RampupIterDataset(
        source().to_iter_dataset(), SCHEDULES["piecewise"], process_index=0, process_count=1
    )
    assert str(ds).startswith("RampupMapDataset(") and "piecewise" in str(ds)
    assert str(it_ds).startswith("RampupIterDataset(")
    assert str(iter(it_ds)).startswith("RampupIterDatasetIterator(")


# Restore: state through JSON, equal continuation.


def map_pipeline(read_options, prefetch: bool = False):
    ds = RampupMapDataset(
        source(), SCHEDULES["piecewise"], num_epochs=3, process_index=0, process_count=1
    ).to_iter_dataset(read_options)
    return (
        grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=3)
        if (prefetch)
        else ds
    )


def iter_pipeline(read_options, prefetch: bool = False):
    ds = RampupIterDataset(
        source().repeat(3).to_iter_dataset(read_options),
        SCHEDULES["piecewise"],
        process_index=0,
        process_count=1,
    )
    return (
        grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=3)
        if (prefetch)
        else ds
    )


PIPELINES = {"map": map_pipeline, "iter": iter_pipeline}


@pytest.mark.parametrize("kind", sorted(PIPELINES))
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_restore_at_random_step_through_json_continues_identically(
    kind, prefetch, seed, read_options
):
    # Every iterator is closed here, in this thread: an abandoned ThreadPrefetch iterator
    # is closed by grain's __del__, which joins its prefetch thread, and raises "cannot
    # join current thread" when the garbage collector happens to run on that thread.
    make = PIPELINES[kind]
    with contextlib.closing(iter(make(read_options, prefetch))) as it:
        whole = [xs([b]) for b in it]
    step = int(np.random.default_rng(seed).integers(1, len(whole)))
    with contextlib.closing(iter(make(read_options, prefetch))) as it:
        for _ in range(step):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
    with contextlib.closing(iter(make(read_options, prefetch))) as restored:
        restored.set_state(state)
        assert [xs([b]) for b in restored] == whole[step:]


def test_iter_state_is_the_core_stream_state(read_options):
    it = iter(iter_pipeline(read_options))
    for _ in range(4):
        next(it)
    state = it.get_state()
    assert {k: state[k] for k in ("step", "position", "schedule")} == {
        "step": 4,
        "position": sum(SIZES["piecewise"][:4]),
        "schedule": SCHEDULES["piecewise"].fingerprint,
    }
    assert "parent" in state


def test_restore_under_another_schedule_raises(read_options):
    it = iter(iter_pipeline(read_options))
    next(it)
    state = it.get_state()
    other = RampupIterDataset(
        source().to_iter_dataset(read_options), rampup.constant(3), process_index=0, process_count=1
    )
    with pytest.raises(ValueError, match="on_schedule_change"):
        iter(other).set_state(state)


def test_restore_under_another_schedule_continues_from_the_saved_position(read_options):
    it = iter(iter_pipeline(read_options))
    for _ in range(4):
        next(it)
    state = it.get_state()
    continued = iter(
        RampupIterDataset(
            source().repeat(3).to_iter_dataset(read_options),
            rampup.constant(3),
            process_index=0,
            process_count=1,
            on_schedule_change="continue",
        )
    )
    continued.set_state(state)
    stream = [int(e["x"]) for e in source().repeat(3)]
    start = state["position"]
    assert [xs([next(continued)]) for _ in range(2)] == [
        stream[start : start + 3],
        stream[start + 3 : start + 6],
    ]


def test_a_continue_restore_of_the_map_iterator_runs_to_the_moved_streams_end(read_options):
    with contextlib.closing(iter(map_pipeline(read_options))) as it:
        for _ in range(4):
            next(it)
        state = json.loads(json.dumps(it.get_state()))  # position 3 + 3 + 5 + 5 = 16
    kept = RampupMapDataset(
        source(),
        rampup.constant(5),
        num_epochs=3,
        process_index=0,
        process_count=1,
        on_schedule_change="continue",
    )
    # 53 positions left: steps 4..14, the last one of 3; the unmoved stream ends at step 13.
    windows = model.windows(SIZES["piecewise"][:4] + [5] * 20, 3 * LENGTH)[4:]
    stream = [int(source()[p]["x"]) for p in range(3 * LENGTH)]
    with contextlib.closing(iter(kept.to_iter_dataset(read_options))) as resumed:
        resumed.set_state(state)
        assert [xs([b]) for b in resumed] == [stream[start:stop] for start, stop in windows]


@pytest.mark.parametrize(("start", "index"), [(0, 1), (3, 0), (3, 2), (3, None)])
def test_a_workers_copy_builds_its_steps_and_restores_its_own_state(start, index, read_options):
    # What mp_prefetch does in worker `index` of 3 of an iteration that starts at `start`:
    # grain calls set_slice on the worker's copy of the dataset, then iterates it. With no
    # workers (index None) the copy is iterated as it is, from `start`.
    ramp = RampupMapDataset(
        source(), SCHEDULES["piecewise"], num_epochs=3, process_index=0, process_count=1
    )
    windows = model.windows(SIZES["piecewise"], 3 * LENGTH)
    count = 1 if index is None else 3
    steps = model.worker_steps(start, index or 0, count, len(windows))
    stream = [int(source()[p]["x"]) for p in range(3 * LENGTH)]

    def worker():
        ds = RampupMapIterDataset(ramp, read_options, False, (start, 0))
        if index is not None:
            ds.set_slice(slice(index, None, 3))
        return contextlib.closing(iter(ds))

    with worker() as it:
        assert it.step == steps[0]
        next(it), next(it)
        state = json.loads(json.dumps(it.get_state()))
        assert state["step"] == steps[2]
        rest = [xs([b]) for b in it]
    assert rest == [stream[slice(*windows[k])] for k in steps[2:]]
    with worker() as it:
        it.set_state(state)
        assert it.step == steps[2]
        assert [xs([b]) for b in it] == rest
    if index is None:
        return
    with worker() as it:
        for step in (steps[0] - 3, steps[1] - 1):  # before its first step; another worker's
            if step >= 0:
                other = RampupMapDataset(
                    source(), SCHEDULES["piecewise"], num_epochs=3, process_index=0, process_count=1
                )
                with contextlib.closing(iter(other.to_iter_dataset(read_options))) as theirs:
                    for _ in range(step):
                        next(theirs)
                    foreign = theirs.get_state()
                with pytest.raises(ValueError, match=f"step {step} is not built by worker {index}"):
                    it.set_state(foreign)


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_assert_equal_output_after_checkpoint(kind, read_options):
    grain.experimental.assert_equal_output_after_checkpoint(PIPELINES[kind](read_options))


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_checkpoint_handler_round_trip(kind, tmp_path, read_options):
    from etils import epath

    def make():
        return PIPELINES[kind](read_options)

    whole = [xs([b]) for b in make()]
    it = iter(make())
    for _ in range(5):
        next(it)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), item=it)
    restored = handler.restore(epath.Path(tmp_path), item=iter(make()))
    assert [xs([b]) for b in restored] == whole[5:]


def test_a_size_the_processes_cannot_split_fails_when_the_dataset_is_built(read_options):
    schedule = rampup.piecewise({0: 4, 3: 6})
    with pytest.raises(
        ValueError, match="batch size 6 at step 3 is not divisible by process_count=4"
    ):
        RampupIterDataset(
            source().to_iter_dataset(read_options), schedule, process_index=0, process_count=4
        )
    with pytest.raises(ValueError, match="batch size 6 at step 3"):
        RampupMapDataset(source(), schedule, process_index=0, process_count=4)


@pytest.mark.parametrize(("index", "error"), [("5", TypeError), (5.0, TypeError), (-1, ValueError)])
def test_a_parent_next_index_that_is_not_an_int_names_the_field(read_options, index, error):
    it = iter(iter_pipeline(read_options))
    next(it)
    state = it.get_state()
    state["parent"] = dict(state["parent"], next_index=index)
    with pytest.raises(error, match=rf"state\['parent'\]\['next_index'\] is {index!r}.*int >= 0"):
        iter(iter_pipeline(read_options)).set_state(state)
