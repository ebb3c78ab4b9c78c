"""Exact or refused: every path yields the scheduled batches or raises.

One test (or a few) per defect of the "exact or refused" issue; each failed before
the fix. Framework tests skip where their framework is not installed.
"""

import functools
import json
import subprocess
import sys
import threading
import time

import model
import numpy as np
import pytest

import rampup
from rampup import RampupBatches, Schedule, StreamBatcher
from rampup.protocol import ScheduledIterator

RAMP = rampup.piecewise({0: 8, 3: 16, 6: 24})
RAMP_WINDOWS = model.windows(model.sizes({0: 8, 3: 16, 6: 24}, 20))  # its batches, by the model


def module_level_size(step: int) -> int:
    return 8 if step < 4 else 16


def positions(batch) -> list[int]:
    return np.asarray(batch).reshape(-1).tolist()


# --- the protocol ------------------------------------------------------------------------------


def test_core_iterators_implement_the_protocol():
    batches = RampupBatches(np.arange(100), RAMP, process_index=1, process_count=2)
    for it in (
        batches.iter_from(4),
        StreamBatcher(iter(range(100)), RAMP, process_count=2, process_index=1),
    ):
        assert isinstance(it, ScheduledIterator)
        assert it.plan == rampup.Plan(RAMP)
        assert it.layout == (1, 2)
    assert batches.iter_from(4).step == 4


# --- 4: from_fn identity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda k: 8,
        functools.partial(module_level_size),
        type("Sizes", (), {"__call__": lambda self, k: 8})(),
    ],
    ids=["lambda", "partial", "callable-object"],
)
def test_a_function_without_a_stable_identity_needs_a_name(fn):
    with pytest.raises(ValueError, match="name="):
        rampup.from_fn(fn)
    assert (
        rampup.from_fn(fn, name="mine").fingerprint
        == rampup.from_fn(module_level_size, name="mine").fingerprint
    )


def test_two_different_lambdas_never_share_a_fingerprint_by_accident():
    a = rampup.from_fn(lambda k: 8, name="eight")
    b = rampup.from_fn(lambda k: 16, name="sixteen")
    assert a.fingerprint != b.fingerprint
    state = RampupBatches(np.arange(64), a).iter_from(2).get_state()
    with pytest.raises(ValueError, match="schedule"):
        RampupBatches(np.arange(64), b).iter_from(state)


def test_a_module_level_function_has_the_same_fingerprint_in_another_process():
    here = rampup.from_fn(module_level_size).fingerprint
    code = (
        "import sys; sys.path.insert(0, 'tests'); import rampup, test_exact_or_refused as t; "
        "print(rampup.from_fn(t.module_level_size).fingerprint)"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert other == here


# --- 7: flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["false", "no", None, 0, 1])
def test_a_non_bool_flag_is_a_type_error(flag):
    with pytest.raises(TypeError, match="bool"):
        rampup.stepwise(8, {0: 1, 4: 2}, cumulative=flag)
    with pytest.raises(TypeError, match="drop_remainder"):
        RampupBatches(np.arange(10), RAMP, num_epochs=1, drop_remainder=flag)
    with pytest.raises(TypeError, match="drop_remainder"):
        StreamBatcher(iter(range(10)), RAMP, drop_remainder=flag)


def test_a_string_flag_in_a_json_or_yaml_config_is_a_type_error():
    config = json.loads(
        '{"type": "stepwise", "batch_size": 8, '
        '"boundaries_and_scales": {"0": 1, "4": 2}, "cumulative": "false"}'
    )
    with pytest.raises(TypeError, match="cumulative"):
        rampup.from_config(config)
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(
        "type: stepwise\nbatch_size: 8\nboundaries_and_scales: {0: 1}\ncumulative: 'no'\n"
    )
    with pytest.raises(TypeError, match="cumulative"):
        rampup.from_config(config)


# --- 8: the raw Schedule constructor -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (((0,), (0,), "{}"), ValueError, "batch size 0"),
        (((5,), (8,), "{}"), ValueError, "start at step 0"),
        (((0,), (8.5,), "{}"), TypeError, "8.5"),
        (((0, 4, 2), (8, 16, 32), "{}"), ValueError, "increase"),
        (((0, 4), (8,), "{}"), ValueError, "one size per segment"),
    ],
)
def test_the_schedule_constructor_validates(args, error, message):
    with pytest.raises(error, match=message):
        Schedule(*args)


# --- 9: a stream whose parent raises mid-batch ---------------------------------------------------


class Flaky:
    """An iterator with grain-style state that raises once, at element `fail_at`."""

    def __init__(self, n: int, fail_at: int) -> None:
        self.n, self.fail_at, self.next_index, self.failed = n, fail_at, 0, False

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.next_index == self.fail_at and not self.failed:
            self.failed = True
            raise OSError("transient read error")
        if self.next_index >= self.n:
            raise StopIteration
        self.next_index += 1
        return self.next_index - 1

    def get_state(self) -> dict:
        return {"next_index": self.next_index}

    def set_state(self, state: dict) -> None:
        self.next_index = state["next_index"]


def test_a_stream_keeps_the_elements_it_pulled_before_the_parent_raised():
    stream = StreamBatcher(Flaky(40, fail_at=12), RAMP)  # step 1 holds elements 8..15
    assert positions(next(stream)) == list(range(8))
    with pytest.raises(OSError, match="transient"):
        next(stream)
    with pytest.raises(RuntimeError, match="half built"):
        stream.get_state()  # the parent's state points past elements 8..11
    assert positions(next(stream)) == list(range(8, 16))
    state = stream.get_state()
    assert state["step"] == 2 and state["parent"] == {"next_index": 16}
    resumed = StreamBatcher(Flaky(40, fail_at=-1), RAMP)
    resumed.set_state(state)
    assert positions(next(resumed)) == list(range(16, 24))


# --- 12: late errors become early ones -----------------------------------------------------------


def test_a_non_callable_collate_and_a_bad_policy_fail_when_built():
    with pytest.raises(TypeError, match="collate"):
        RampupBatches(np.arange(10), RAMP, collate="stack")
    with pytest.raises(TypeError, match="collate"):
        StreamBatcher(iter(range(10)), RAMP, collate=3)
    with pytest.raises(ValueError, match="on_schedule_change"):
        RampupBatches(np.arange(10), RAMP, on_schedule_change="keep")


def test_a_continue_restore_with_another_process_count_fails_at_the_restore():
    old = RampupBatches(np.arange(20), rampup.constant(3), num_epochs=1)
    state = old.iter_from(1).get_state()  # position 3: 17 samples left
    new = RampupBatches(
        np.arange(20),
        rampup.constant(4),
        num_epochs=1,
        process_count=2,
        on_schedule_change="continue",
    )
    # Steps 1.. hold positions 3..6, 7..10, ..., 15..18, then 19 alone: 1 row for 2 processes.
    with pytest.raises(ValueError, match="last batch .* not divisible by process_count=2"):
        new.iter_from(state)


def test_a_continue_restore_keeps_the_data_position():
    old = RampupBatches(np.arange(40), rampup.constant(3), num_epochs=1)
    state = old.iter_from(2).get_state()
    new = RampupBatches(
        np.arange(40), rampup.constant(4), num_epochs=1, on_schedule_change="continue"
    )
    got = [x for batch in new.iter_from(state) for x in positions(batch)]
    assert got == list(range(6, 40))


# --- torch: 5 persistent workers, 7 flags, 12 early errors ---------------------------------------


def test_torch_set_step_after_persistent_workers_started_is_refused_not_raced():
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from rampup.adapters.torch import RampupIterableDataset

    ds = RampupIterableDataset(np.arange(64), RAMP, num_epochs=1)
    loader = DataLoader(
        ds, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context="spawn"
    )
    first = [b.tolist() for b in loader]
    again = [b.tolist() for b in loader]  # the workers' copy, unmoved: the same start
    ds.set_step(3)
    with pytest.raises(RuntimeError, match="persistent_workers=False"):
        next(iter(loader))
    assert again == first
    assert first[0] == list(range(8))


def test_torch_flags_seeds_sources_and_collates_are_checked_when_built():
    pytest.importorskip("torch")
    from rampup.adapters.torch import RampupIterableDataset

    with pytest.raises(TypeError, match="shuffle"):
        RampupIterableDataset(np.arange(10), RAMP, shuffle="False")
    with pytest.raises(TypeError, match="seed"):
        RampupIterableDataset(np.arange(10), RAMP, shuffle=True, seed=None)
    with pytest.raises(TypeError, match="None"):
        RampupIterableDataset(None, RAMP)
    with pytest.raises(TypeError, match="collate"):
        RampupIterableDataset(np.arange(10), RAMP, collate="stack")
    with pytest.raises(ValueError, match="on_schedule_change"):
        RampupIterableDataset(np.arange(10), RAMP, on_schedule_change="skip")


# --- tf: 6 a generator starts where its iterator stands ------------------------------------------


def test_tf_dataset_starts_where_the_iterator_stands():
    pytest.importorskip("tensorflow")
    from rampup.adapters.tf import to_tf_dataset

    batches = RampupBatches(np.arange(60), RAMP, num_epochs=1)
    want = [positions(b) for b in batches.iter_from(5)]
    assert [positions(b) for b in to_tf_dataset(batches.iter_from(5))] == want
    restored = batches.iter_from(0)
    restored.set_state(batches.iter_from(5).get_state())
    assert [positions(b) for b in to_tf_dataset(restored)] == want


# --- grain: 1, 2 layout and step through device_batches, 3 state of the map pipeline -------------


def grain_ramp(**kwargs):
    grain = pytest.importorskip("grain")
    from rampup.adapters.grain import RampupMapDataset

    return grain, RampupMapDataset(grain.MapDataset.range(10_000), RAMP, **kwargs)


@pytest.fixture
def sharding():
    jax = pytest.importorskip("jax")
    from rampup.adapters.jax import batch_sharding

    return batch_sharding(jax.make_mesh((jax.device_count(),), ("data",)))


def test_device_batches_refuses_a_grain_iterator_built_for_another_layout(sharding):
    from rampup.adapters.jax import device_batches

    _, ramp = grain_ramp(process_index=1, process_count=2)
    for source in (iter(ramp), ramp.to_iter_dataset().__iter__(), ramp):
        with pytest.raises(ValueError, match="process_index=1, process_count=2"):
            device_batches(source, sharding)


def test_device_batches_reports_the_step_of_a_restored_grain_iterator(sharding):
    from rampup.adapters.jax import device_batches

    _, ramp = grain_ramp()
    it = ramp.to_iter_dataset().__iter__()
    state_5 = ramp.to_iter_dataset().__iter__().get_state() | {
        "step": 5,
        "position": RAMP_WINDOWS[5][0],
    }
    it.set_state(state_5)
    with device_batches(it, sharding) as arrays:
        assert arrays.step == 5
        assert np.asarray(next(arrays)).tolist() == list(range(*RAMP_WINDOWS[5]))
        assert arrays.step == 6
        arrays.set_state(state_5)
        assert arrays.step == 5


def test_device_batches_checks_a_finite_last_batch_up_front(sharding):
    from rampup.adapters.jax import device_batches

    ways = sharding.mesh.size
    batches = RampupBatches(np.arange(8 * ways + 3), rampup.constant(2 * ways), num_epochs=1)
    with pytest.raises(ValueError, match="last batch .*drop_remainder=True"):
        device_batches(batches, sharding)
    fine = RampupBatches(
        np.arange(8 * ways + 3), rampup.constant(2 * ways), num_epochs=1, drop_remainder=True
    )
    with device_batches(fine, sharding) as arrays:
        assert [a.shape[0] for a in arrays] == [2 * ways] * 4


def test_device_batches_says_what_it_cannot_check_for_a_foreign_iterable(sharding):
    from rampup.adapters.jax import UncheckedSourceWarning, device_batches

    with pytest.warns(UncheckedSourceWarning, match="cannot check"):
        arrays = device_batches(iter([np.zeros((16, 2))]), sharding)
    with arrays:
        assert next(arrays).shape == (16, 2)


class SlowSource(ScheduledIterator):
    """A rampup iterator whose next batch waits until `release` is set."""

    def __init__(self, batches: RampupBatches) -> None:
        self.inner = batches.iter_from(0)
        self.plan, self.process_index, self.process_count = batches.plan, 0, 1
        self.entered, self.release = threading.Event(), threading.Event()

    @property
    def step(self) -> int:
        return self.inner.step

    def __next__(self):
        if self.inner.step == 2:
            self.entered.set()
            self.release.wait()
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def test_device_batches_restore_waits_for_a_slow_source(sharding):
    from rampup.adapters.jax import device_batches

    ways = sharding.mesh.size
    batches = RampupBatches(np.arange(1000), rampup.constant(ways))
    source = SlowSource(batches)
    arrays = device_batches(source, sharding, prefetch=4)
    first = next(arrays)
    state_1 = arrays.get_state()
    assert source.entered.wait(30)  # the producer is inside the source at step 2
    restore = threading.Thread(target=arrays.set_state, args=(state_1,))
    restore.start()
    time.sleep(11)  # longer than the old 10 s join timeout
    assert restore.is_alive()  # still waiting for the producer to leave the source
    source.release.set()
    restore.join(30)
    assert not restore.is_alive()
    with arrays:
        got = [np.asarray(next(arrays)).tolist() for _ in range(3)]
    assert np.asarray(first).tolist() == list(range(ways))
    assert got == [list(range(k * ways, (k + 1) * ways)) for k in (1, 2, 3)]


def test_grain_map_pipeline_state_carries_the_schedule_under_mp_prefetch(tmp_path):
    grain, ramp = grain_ramp()
    from absl import flags
    from etils import epath

    from rampup.adapters.grain import RampupMapDataset

    flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(num_workers=2)
    read = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    it = ramp.to_iter_dataset(read).mp_prefetch(options).__iter__()
    want = [positions(next(it)) for _ in range(7)]
    handler = grain.checkpoint.CheckpointHandler()
    ckpt = epath.Path(tmp_path / "ckpt")
    ckpt.mkdir()
    it = ramp.to_iter_dataset(read).mp_prefetch(options).__iter__()
    for _ in range(4):
        next(it)
    handler.save(ckpt, item=it)
    it.close()
    saved = json.loads(next(ckpt.glob("*.json")).read_text())
    assert saved["schedule"] == RAMP.fingerprint and saved["step"] == 4

    for workers in (2, 3):  # the state is the step's: any worker count restores it
        same = (
            ramp.to_iter_dataset(read)
            .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
            .__iter__()
        )
        handler.restore(ckpt, item=same)
        assert [positions(next(same)) for _ in range(3)] == want[4:]
        same.close()

    other = rampup.piecewise({0: 8, 3: 12})
    changed = RampupMapDataset(grain.MapDataset.range(10_000), other)
    refused = changed.to_iter_dataset(read).mp_prefetch(options).__iter__()
    with pytest.raises(ValueError, match="schedule"):
        handler.restore(ckpt, item=refused)
    refused.close()

    kept = RampupMapDataset(grain.MapDataset.range(10_000), other, on_schedule_change="continue")
    resumed = kept.to_iter_dataset(read).mp_prefetch(options).__iter__()
    handler.restore(ckpt, item=resumed)
    start = RAMP_WINDOWS[4][0]
    got = [positions(next(resumed)) for _ in range(2)]
    resumed.close()
    assert got == [list(range(start, start + 12)), list(range(start + 12, start + 24))]


def test_grain_map_iterator_restores_across_a_schedule_change_without_workers():
    grain, ramp = grain_ramp()
    from rampup.adapters.grain import RampupMapDataset

    it = iter(ramp)
    for _ in range(3):
        next(it)
    state = it.get_state()
    assert state["schedule"] == RAMP.fingerprint
    changed = RampupMapDataset(grain.MapDataset.range(10_000), rampup.constant(5))
    with pytest.raises(ValueError, match="schedule"):
        iter(changed).set_state(state)
    kept = iter(
        RampupMapDataset(
            grain.MapDataset.range(10_000), rampup.constant(5), on_schedule_change="continue"
        )
    )
    kept.set_state(state)
    assert kept.step == 3 and positions(next(kept)) == list(range(24, 29))
