"""The JAX adapter on 8 simulated CPU devices (tests/conftest.py asks for them)."""

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")

import model  # noqa: E402
import numpy as np  # noqa: E402
from jax import monitoring  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import rampup  # noqa: E402
from rampup.adapters.jax import (  # noqa: E402
    UncheckedSourceWarning,
    batch_sharding,
    check_schedule,
    device_batches,
    precompile,
    process_layout,
)

ROOT = Path(__file__).resolve().parents[1]
RAMP = {0: 16, 10: 32, 20: 64}
RAMP_SIZES = model.sizes(RAMP, 30)  # by the model: 10 steps of 16, 10 of 32, 10 of 64
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def elements(n: int = 1000) -> list[dict[str, np.ndarray]]:
    return [
        {"x": np.arange(3 * i, 3 * i + 3, dtype=np.float32), "y": np.int32(i)} for i in range(n)
    ]


@pytest.fixture(scope="module")
def sharding() -> NamedSharding:
    assert jax.device_count() == 8, "tests/conftest.py must ask for 8 CPU devices"
    return batch_sharding(jax.make_mesh((8,), ("data",)))


@contextlib.contextmanager
def backend_compiles(fun_name: str):
    """Counts XLA backend compilations of functions named `fun_name`, as jax reports them."""
    seen: list[str] = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE and fun_name in str(kwargs.get("fun_name", "")):
            seen.append(kwargs["fun_name"])

    monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        monitoring.unregister_event_duration_listener(listen)


def test_arrays_have_the_global_shape_sharding_and_content(sharding):
    source = rampup.RampupBatches(elements(), rampup.piecewise(RAMP), shuffle_seed=1)
    with device_batches(source, sharding) as batches:
        for step, batch in zip(range(22), batches, strict=False):
            expected = source[step]
            for name in ("x", "y"):
                assert batch[name].shape == expected[name].shape
                assert batch[name].dtype == expected[name].dtype
                assert batch[name].sharding == sharding
                np.testing.assert_array_equal(np.asarray(batch[name]), expected[name])
                for shard in batch[name].addressable_shards:
                    np.testing.assert_array_equal(
                        np.asarray(shard.data), expected[name][shard.index]
                    )


def test_a_mesh_plus_axis_name_shards_the_batch_over_that_axis():
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    source = rampup.RampupBatches(np.arange(100.0).reshape(50, 2), rampup.constant(8))
    with device_batches(source, mesh, axis="data") as batches:
        batch = next(batches)
    assert batch.sharding == NamedSharding(mesh, PartitionSpec("data"))
    # Two devices (the "model" axis) hold each quarter of the batch.
    assert {shard.data.shape for shard in batch.addressable_shards} == {(2, 2)}
    np.testing.assert_array_equal(np.asarray(batch), source[0])


def test_a_batch_split_over_two_mesh_axes_counts_both():
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    sharding = NamedSharding(mesh, PartitionSpec(("data", "model")))
    with pytest.raises(ValueError, match=r"size 12 at steps 0 on .*\('data', 'model'\) of size 8"):
        check_schedule(rampup.constant(12), sharding)
    source = rampup.RampupBatches(np.arange(64.0), rampup.constant(16))
    with device_batches(source, sharding) as batches:
        batch = next(batches)
    assert {shard.data.shape for shard in batch.addressable_shards} == {(2,)}
    np.testing.assert_array_equal(np.asarray(batch), source[0])


def test_a_mesh_with_several_axes_needs_the_axis_name():
    with pytest.raises(ValueError, match="pass axis="):
        batch_sharding(jax.make_mesh((4, 2), ("data", "model")))


def test_exact_shapes_compile_once_per_distinct_size(sharding):

    @jax.jit
    def exact_step(batch):
        return (batch["x"] * 2.0).sum() + batch["y"].sum()

    source = rampup.RampupBatches(elements(), rampup.piecewise(RAMP))
    with backend_compiles("exact_step") as compiled, device_batches(source, sharding) as batches:
        for step, batch in zip(range(30), batches, strict=False):
            expected = source[step]
            assert float(exact_step(batch)) == pytest.approx(
                float(expected["x"].sum() * 2.0 + expected["y"].sum())
            )
    assert len(compiled) == len(set(RAMP_SIZES)) == 3
    assert exact_step._cache_size() == 3


def test_microbatches_compile_once_and_hold_the_batch_in_order(sharding):

    @jax.jit
    def micro_step(batch):
        return batch["x"].sum(axis=1)

    source = rampup.RampupBatches(elements(), rampup.piecewise(RAMP))
    with (
        backend_compiles("micro_step") as compiled,
        device_batches(source, sharding, microbatch_size=16) as batches,
    ):
        for step, micro in zip(range(30), batches, strict=False):
            expected = source[step]
            assert len(micro) == RAMP_SIZES[step] // 16
            assert all(m["x"].shape == (16, 3) and m["x"].sharding == sharding for m in micro)
            np.testing.assert_array_equal(
                np.concatenate([np.asarray(m["y"]) for m in micro]), expected["y"]
            )
            sums = np.concatenate([np.asarray(micro_step(m)) for m in micro])
            np.testing.assert_allclose(sums, expected["x"].sum(axis=1))
    assert len(compiled) == 1
    assert micro_step._cache_size() == 1


def test_a_size_the_data_axis_cannot_divide_raises_before_any_transfer(sharding):
    source = rampup.RampupBatches(np.arange(200.0), rampup.piecewise({0: 16, 2: 20}))
    with pytest.raises(ValueError, match="size 20") as error:
        device_batches(source, sharding, prefetch=1)
    message = str(error.value)
    for part in ("steps 2 on", "size 20", "'data': 8", "16, 24", "multiple_of=8"):
        assert part in message


def test_a_foreign_source_is_checked_batch_by_batch(sharding):
    batches = [np.zeros((16, 2)), np.zeros((16, 2)), np.zeros((20, 2))]
    with pytest.warns(UncheckedSourceWarning, match="not a rampup batch iterator"):
        arrays = device_batches(iter(batches), sharding)
    with arrays:
        next(arrays), next(arrays)
        with pytest.raises(ValueError, match="20 at batch 2 of this iterator .*16, 24"):
            next(arrays)


def test_a_size_the_microbatch_cannot_divide_names_the_step(sharding):
    source = rampup.RampupBatches(np.arange(200.0), rampup.piecewise({0: 16, 3: 24}))
    with pytest.raises(ValueError, match=r"24 at steps 3 on .*microbatch_size=16.*16, 32"):
        device_batches(source, sharding, microbatch_size=16)


def test_a_microbatch_size_the_data_axis_cannot_divide_is_refused(sharding):
    source = rampup.RampupBatches(np.arange(200.0), rampup.constant(16))
    with pytest.raises(ValueError, match=r"12 \(microbatch_size\) .*data axis.*8, 16"):
        device_batches(source, sharding, microbatch_size=12)


def test_check_schedule_returns_the_compiled_sizes(sharding):
    plan = rampup.Plan(rampup.piecewise(RAMP))
    assert check_schedule(plan, sharding, until_step=30) == tuple(sorted(set(RAMP_SIZES)))
    assert check_schedule(plan, sharding, until_step=15) == (16, 32)
    assert check_schedule(plan.schedule, sharding) == (16, 32, 64)
    assert check_schedule(plan, sharding, microbatch_size=16) == (16,)


def test_check_schedule_names_the_first_bad_segment(sharding):
    plan = rampup.Plan(rampup.linear(8, 4, 400, 32))
    sizes = model.linear_sizes(8, 4, 400, 32, 100)
    first = next(k for k, size in enumerate(sizes) if size % 8)
    last = next(k for k in range(first, 100) if sizes[k + 1] != sizes[first])
    with pytest.raises(ValueError, match=f"size {sizes[first]} at steps") as error:
        check_schedule(plan, sharding, until_step=100)
    assert f"size {sizes[first]} at steps {first} to {last}" in str(error.value)
    assert "'data': 8" in str(error.value)
    with pytest.raises(ValueError, match="not divisible by microbatch_size=16"):
        check_schedule(rampup.Plan(rampup.piecewise({0: 16, 5: 24})), sharding, microbatch_size=16)


def test_a_producer_exception_surfaces_in_the_consumer(sharding):
    def source():
        for step in range(5):
            if step == 3:
                raise RuntimeError("disk went away at step 3")
            yield np.full((8, 2), step, dtype=np.float32)

    batches = device_batches(source(), sharding, prefetch=2)
    got = [float(np.asarray(next(batches))[0, 0]) for _ in range(3)]
    assert got == [0.0, 1.0, 2.0]
    producer = batches._thread
    assert producer is not None and producer.name == "rampup-device-batches"
    with pytest.raises(RuntimeError, match="disk went away at step 3"):
        next(batches)
    assert not producer.is_alive()  # stopped and joined before the error reaches the consumer
    with pytest.raises(StopIteration):
        next(batches)


class RecordingSource:
    """Yields batch `k` of `inner` (default: `k` repeated).

    It records, when asked for it, how many batches the test has consumed.
    """

    def __init__(self, rows: int, inner=None) -> None:
        self.rows = rows
        self.inner = inner
        self.requested: list[int] = []
        self.consumed = 0
        self.ahead: list[int] = []
        self.changed = threading.Condition()

    def __iter__(self):
        return self

    def __next__(self):
        batch = None if self.inner is None else next(self.inner)
        with self.changed:
            step = len(self.requested)
            self.requested.append(step)
            self.ahead.append(step - self.consumed)
            self.changed.notify_all()
        return np.full((self.rows,), step, dtype=np.int32) if batch is None else batch

    def wait_until_requested(self, step: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.requested) > step, timeout=30), (
                f"the producer never asked for step {step}: {self.requested}"
            )


class StatefulRecordingSource(RecordingSource):
    """A `RecordingSource` that passes `get_state`/`set_state` on to `inner`."""

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state) -> None:
        self.inner.set_state(state)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_prefetch_runs_ahead_by_exactly_prefetch_steps(sharding, prefetch):
    source = RecordingSource(8)
    with device_batches(source, sharding, prefetch=prefetch) as batches:
        for k in range(8):
            batch = next(batches)
            with source.changed:
                source.consumed = k + 1
            assert int(np.asarray(batch)[0]) == k
            # While the consumer holds step k, the producer builds up to k + prefetch...
            source.wait_until_requested(k + prefetch)
            # ...and never further: each request came at most `prefetch` steps ahead
            # of the steps handed out so far (the step held included).
            assert max(source.ahead) <= prefetch
            assert max(source.requested) == k + prefetch


def test_prefetch_zero_builds_each_batch_on_demand(sharding):
    source = RecordingSource(8)
    with device_batches(source, sharding, prefetch=0) as batches:
        next(batches), next(batches)
        assert source.requested == [0, 1]
        assert batches._thread is None


def test_state_is_the_next_step_to_consume_not_the_run_ahead(sharding):
    schedule = rampup.piecewise(RAMP)
    source = rampup.RampupBatches(elements(), schedule, shuffle_seed=7)
    recording = StatefulRecordingSource(0, source.iter_from(0))
    with device_batches(recording, sharding, prefetch=4) as batches:
        assert batches.get_state() == source.iter_from(0).get_state()
        for _ in range(12):
            next(batches)
        recording.wait_until_requested(11 + 4)  # the source itself is at step 16 now
        assert recording.get_state() == source.iter_from(16).get_state()
        state = batches.get_state()
        assert batches.step == 12
    assert state == source.iter_from(12).get_state()
    resumed_iterator = source.iter_from(0)
    resumed_iterator.set_state(state)
    with device_batches(resumed_iterator, sharding) as resumed:
        np.testing.assert_array_equal(np.asarray(next(resumed)["y"]), source[12]["y"])


def test_set_state_drops_the_batches_built_ahead(sharding):
    source = rampup.RampupBatches(elements(), rampup.piecewise(RAMP))
    with device_batches(source.iter_from(0), sharding, prefetch=3) as batches:
        for _ in range(5):
            next(batches)
        batches.set_state(source.iter_from(2).get_state())
        assert batches.step == 2
        np.testing.assert_array_equal(np.asarray(next(batches)["y"]), source[2]["y"])
        assert batches.get_state() == source.iter_from(3).get_state()


def test_close_and_the_context_manager_stop_the_thread(sharding):
    source = rampup.RampupBatches(np.arange(100.0), rampup.constant(8))
    batches = device_batches(source, sharding)
    next(batches)
    thread = batches._thread
    assert thread.is_alive()
    batches.close()
    assert not thread.is_alive()
    with pytest.raises(StopIteration):
        next(batches)
    with device_batches(source, sharding) as batches:
        next(batches)
        thread = batches._thread
    assert not thread.is_alive()


class BlockedSource:
    """Batches of 8 rows: the first at once, then next() blocks until `release` is set."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.calls += 1
        if self.calls > 1:
            self.release.wait()
            raise StopIteration
        return np.zeros((8, 2), np.float32)

    def __repr__(self):
        return "BlockedSource()"


def test_close_returns_and_warns_when_the_producer_is_blocked_in_its_source(sharding):
    source = BlockedSource()
    with pytest.warns(UncheckedSourceWarning):
        batches = device_batches(source, sharding, prefetch=2)
    next(batches)
    while source.calls < 2:  # the producer has gone into the source for the next batch
        time.sleep(0.01)
    try:
        with pytest.warns(RuntimeWarning, match=r"still inside the batch source BlockedSource\(\)"):
            batches.close(timeout=0.1)
        with pytest.raises(StopIteration):
            next(batches)
    finally:
        source.release.set()
    batches._thread.join(10)
    assert not batches._thread.is_alive()


def test_a_consumer_that_stops_early_does_not_hang_the_interpreter_exit():
    # A producer still transferring while the interpreter exits aborted it ("terminate
    # called ...") in 2 of 5 runs before the exit hook; three runs catch that most times.
    script = (
        "import jax, numpy as np, rampup\n"
        "from rampup.adapters.jax import device_batches\n"
        "mesh = jax.make_mesh((8,), ('data',))\n"
        "data = np.arange(2**20, dtype=np.float32).reshape(-1, 256)\n"
        "src = rampup.RampupBatches(data, rampup.constant(512))\n"
        "batches = device_batches(src, mesh, prefetch=10_000)\n"
        "print(float(next(batches).sum()))\n"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    expected = float(np.arange(2**20, dtype=np.float32).reshape(-1, 256)[:512].sum())
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=ROOT / "tests",
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert float(done.stdout.split()[-1]) == expected


def test_batches_built_for_another_process_layout_are_refused(sharding):
    source = rampup.RampupBatches(
        np.arange(100.0), rampup.constant(8), process_index=0, process_count=2
    )
    assert tuple(process_layout(sharding)) == (0, 1)
    with pytest.raises(ValueError, match="process_count=2.*process_count=1"):
        device_batches(source, sharding)


def test_precompile_compiles_every_size_ahead_of_the_loop(sharding):
    plan = rampup.Plan(rampup.piecewise(RAMP))
    source = rampup.RampupBatches(elements(), plan)

    @jax.jit
    def early_step(scale, batch):
        return (batch["x"] * scale).sum()

    with backend_compiles("early_step") as compiled:
        executables = precompile(
            early_step, plan, source[0], sharding, until_step=30, args=(np.float32(2.0),)
        )
    assert sorted(executables) == sorted(set(RAMP_SIZES)) and len(compiled) == 3
    with backend_compiles("early_step") as compiled, device_batches(source, sharding) as batches:
        for _, batch in zip(range(30), batches, strict=False):
            early_step(np.float32(2.0), batch)
    assert compiled == []
    micro = precompile(
        early_step, plan, source[0], sharding, microbatch_size=16, args=(np.float32(2.0),)
    )
    assert list(micro) == [16]


@pytest.mark.slow
def test_two_processes_build_the_same_global_batches_as_one(run_on_free_port):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    worker = ROOT / "tests" / "jax_multihost_worker.py"

    def launch(port):  # JAX's coordinator needs its port before it starts: no port 0
        return [
            subprocess.Popen(
                [sys.executable, str(worker), str(port), str(i), "2"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=worker.parent,
            )
            for i in range(2)
        ]

    processes, outputs = run_on_free_port(launch, timeout=120)
    assert len(outputs) == len(processes), outputs
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
        assert "ok" in output.split()
