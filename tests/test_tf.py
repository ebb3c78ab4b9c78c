"""The tf.data adapter against real TensorFlow: both paths equal the core's batches."""

import collections
import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import model  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rampup.adapters.tf as tf_adapter  # noqa: E402
from rampup import (  # noqa: E402
    AdaptiveSchedule,
    RampupBatches,
    StreamBatcher,
    constant,
    from_fn,
    linear,
    piecewise,
    stepwise,
)
from rampup.adapters.tf import rampup_batch, to_tf_dataset  # noqa: E402

# MirroredStrategy needs 2 CPU devices, which can only be set before TF initializes them.
try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )
    TWO_CPUS = True
except RuntimeError:
    TWO_CPUS = False

SCHEDULES = {
    "constant": constant(8),
    "stepwise": stepwise(16, {0: 0.25, 3: 0.5, 6: 1.0}),
    "piecewise": piecewise({0: 6, 2: 9, 5: 3, 7: 12}),
    "linear": linear(3, 3, 36, 24),
}
# Their sizes by the model (tests/model.py), for more steps than any test runs.
SIZES = {
    "constant": model.sizes({0: 8}, 100),
    "stepwise": model.sizes({0: 4, 3: 8, 6: 16}, 100),
    "piecewise": model.sizes({0: 6, 2: 9, 5: 3, 7: 12}, 100),
    "linear": model.linear_sizes(3, 3, 36, 24, 100),
}

Pair = collections.namedtuple("Pair", "x y")


def as_numpy(batch):
    return tf.nest.map_structure(lambda t: t.numpy(), batch)


def assert_batches_equal(got, want):
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        flat_a, flat_b = tf.nest.flatten(a), tf.nest.flatten(b)
        assert len(flat_a) == len(flat_b), f"step {k}"
        for x, y in zip(flat_a, flat_b, strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"step {k}")


def source_ds(data):
    return tf.data.Dataset.from_tensor_slices(data)


# rampup_batch cuts a finite dataset of known length by one vector of step sizes, any other
# by chunk pairs (see its module); a finite dataset takes the pair form when the vector is
# capped at 0 steps.
FORMS = ["vector", "pairs"]


@contextlib.contextmanager
def form(name):
    with pytest.MonkeyPatch.context() as patch:
        if name == "pairs":
            patch.setattr(tf_adapter, "_VECTOR_STEPS_MAX", 0)
        yield


# --- rampup_batch: the native path -------------------------------------------------------------


@pytest.mark.parametrize("how", FORMS)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_native_equals_core_over_epochs(name, drop_remainder, how):
    schedule = SCHEDULES[name]
    data = np.arange(23, dtype=np.int64)
    with form(how):
        ds = rampup_batch(source_ds(data).repeat(4), schedule, drop_remainder=drop_remainder)
    want = list(RampupBatches(data, schedule, num_epochs=4, drop_remainder=drop_remainder))
    got = [as_numpy(b) for b in ds]
    assert_batches_equal(got, want)
    windows = model.windows(SIZES[name], 4 * 23, drop_remainder)
    assert [len(b) for b in got] == [stop - start for start, stop in windows]


def test_native_endless_stream_equals_core():
    schedule = SCHEDULES["linear"]
    data = np.arange(17, dtype=np.int64)
    got = [as_numpy(b) for b in rampup_batch(source_ds(data).repeat(), schedule).take(15)]
    core = RampupBatches(data, schedule).iter_from(0)
    assert_batches_equal(got, [next(core) for _ in range(15)])


@settings(max_examples=12, deadline=None)
@given(
    sizes=st.dictionaries(st.integers(1, 8), st.integers(1, 12), max_size=3),
    first=st.integers(1, 12),
    length=st.integers(1, 30),
    epochs=st.integers(1, 3),
    drop_remainder=st.booleans(),
    how=st.sampled_from(FORMS),
)
def test_native_equals_core_for_random_schedules(sizes, first, length, epochs, drop_remainder, how):
    schedule = piecewise({0: first, **sizes})
    data = np.arange(length, dtype=np.int32)
    with form(how):
        ds = rampup_batch(source_ds(data).repeat(epochs), schedule, drop_remainder=drop_remainder)
    want = list(RampupBatches(data, schedule, num_epochs=epochs, drop_remainder=drop_remainder))
    assert_batches_equal([as_numpy(b) for b in ds], want)


@contextlib.contextmanager
def small_chunks(rows):
    """rampup_batch's chunks of about `rows` int64 samples, so that tests cross many of them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf_adapter, "_CHUNK_BYTES", 8 * rows)
        yield


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.dictionaries(st.integers(1, 12), st.integers(1, 9), max_size=4),
    first=st.integers(1, 9),
    rows=st.integers(1, 20),
    length=st.integers(1, 60),
    epochs=st.integers(1, 3),
    drop_remainder=st.booleans(),
    how=st.sampled_from(FORMS),
)
def test_native_equals_core_across_many_windows(
    sizes, first, rows, length, epochs, drop_remainder, how
):
    schedule = piecewise({0: first, **sizes})
    data = np.arange(length, dtype=np.int64)
    with small_chunks(rows), form(how):
        ds = rampup_batch(source_ds(data).repeat(epochs), schedule, drop_remainder=drop_remainder)
    want = list(RampupBatches(data, schedule, num_epochs=epochs, drop_remainder=drop_remainder))
    assert_batches_equal([as_numpy(b) for b in ds], want)


@pytest.mark.parametrize("rows", [1, 5, 24, 100])
def test_native_endless_stream_over_many_periods_equals_core(rows):
    schedule = linear(2, 2, 60, 10)
    data = np.arange(13, dtype=np.int64)
    with small_chunks(rows):
        ds = rampup_batch(source_ds(data).repeat(), schedule)
    got = [as_numpy(b) for b in ds.take(120)]
    core = RampupBatches(data, schedule).iter_from(0)
    assert_batches_equal(got, [next(core) for _ in range(120)])


@pytest.mark.parametrize("known_length", [False, True])
def test_native_reads_the_source_once_in_order(known_length):
    read = []

    def samples():
        for i in range(200):
            read.append(i)
            yield i

    ds = tf.data.Dataset.from_generator(samples, output_signature=tf.TensorSpec((), tf.int64))
    if known_length:  # the vector form; a generator's length is otherwise unknown (pairs)
        ds = ds.apply(tf.data.experimental.assert_cardinality(200))
    with small_chunks(7):
        got = [as_numpy(b) for b in rampup_batch(ds, SCHEDULES["linear"])]
    assert read == list(range(200))
    assert_batches_equal(
        got, list(RampupBatches(np.arange(200), SCHEDULES["linear"], num_epochs=1))
    )


def test_native_keeps_nested_structure_and_dtypes():
    data = {"image": np.ones((10, 2, 3), np.uint8), "meta": (np.arange(10.0), np.arange(10))}
    ds = rampup_batch(source_ds(data), SCHEDULES["piecewise"])
    spec = ds.element_spec
    assert spec["image"] == tf.TensorSpec((None, 2, 3), tf.uint8)
    assert spec["meta"] == (tf.TensorSpec((None,), tf.float64), tf.TensorSpec((None,), tf.int64))
    elements = [
        {"image": data["image"][i], "meta": (data["meta"][0][i], data["meta"][1][i])}
        for i in range(10)
    ]
    want = list(RampupBatches(elements, SCHEDULES["piecewise"], num_epochs=1))
    assert_batches_equal([as_numpy(b) for b in ds], want)


@pytest.mark.parametrize(
    ("seed", "prefetch", "rows", "epochs"),
    [(0, 0, None, None), (1, 0, 10, None), (2, 3, 4, None), (3, 0, 4, 9), (4, 3, None, 9)],
)
def test_native_iterator_restores_from_checkpoint(tmp_path, seed, prefetch, rows, epochs):
    # epochs=None: endless, the pair form; 9 epochs: a known length, the vector form.
    schedule = SCHEDULES["linear"]
    ramp_steps = SIZES["linear"].index(24)  # the first step at the final size
    at = int(np.random.default_rng(seed).integers(1, ramp_steps + 3))
    data = np.arange(29, dtype=np.int64)
    with small_chunks(rows or 1 << 16):  # small windows: a restore inside a window
        ds = rampup_batch(source_ds(data).shuffle(29, seed=seed).repeat(epochs), schedule)
    if prefetch:  # the iterator then holds windows read ahead
        ds = ds.prefetch(prefetch)
    it = iter(ds)
    for _ in range(at):
        next(it)
    path = tf.train.Checkpoint(iterator=it).save(str(tmp_path / "ckpt"))
    expected = [next(it).numpy() for _ in range(6)]
    restored = iter(ds)
    tf.train.Checkpoint(iterator=restored).restore(path)
    assert_batches_equal([next(restored).numpy() for _ in range(6)], expected)
    assert [len(b) for b in expected] == SIZES["linear"][at : at + 6]


def test_native_rejects_a_from_fn_schedule():
    with pytest.raises(ValueError, match="to_tf_dataset"):
        rampup_batch(source_ds(np.arange(4)), from_fn(lambda k: k + 1, name="k+1"))


def test_native_rejects_a_batch_source():
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        rampup_batch(np.arange(4), constant(2))


# --- to_tf_dataset: the generator path -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_generator_equals_core_over_shuffled_epochs(name, drop_remainder):
    data = np.arange(21, dtype=np.float32)
    batches = RampupBatches(
        data, SCHEDULES[name], shuffle_seed=3, num_epochs=3, drop_remainder=drop_remainder
    )
    got = [as_numpy(b) for b in to_tf_dataset(batches)]
    assert_batches_equal(got, list(batches))
    windows = model.windows(SIZES[name], 3 * 21, drop_remainder)
    assert [len(b) for b in got] == [stop - start for start, stop in windows]


def test_generator_over_an_iterable_starts_at_step_0_on_every_iteration():
    batches = RampupBatches(np.arange(50), SCHEDULES["stepwise"], num_epochs=2)
    ds = to_tf_dataset(batches)
    want = list(batches)
    assert_batches_equal([as_numpy(b) for b in ds], want)
    assert_batches_equal([as_numpy(b) for b in ds], want)


def test_generator_starts_a_rampup_batches_at_start_step_on_every_iteration():
    batches = RampupBatches(np.arange(50), SCHEDULES["stepwise"], num_epochs=2)
    ds = to_tf_dataset(batches, start_step=4)
    want = list(batches.iter_from(4))
    assert_batches_equal([as_numpy(b) for b in ds], want)
    assert_batches_equal([as_numpy(b) for b in ds], want)


def test_generator_cannot_seek_a_stream():
    with pytest.raises(ValueError, match="set_state"):
        to_tf_dataset(StreamBatcher(iter(range(10)), constant(2)), start_step=3)


def test_generator_over_an_iterator_goes_on_where_it_stands():
    batches = RampupBatches(np.arange(50), SCHEDULES["stepwise"], num_epochs=2)
    ds = to_tf_dataset(batches.iter_from(4))
    want = list(batches.iter_from(4))
    assert_batches_equal([as_numpy(b) for b in ds], want)
    assert list(ds) == []  # the iterator is spent: a stream is read once


def test_generator_over_a_stream_batcher():
    data = [(np.full(2, i, np.int16), str(i)) for i in range(30)]
    ds = to_tf_dataset(StreamBatcher(iter(data), SCHEDULES["piecewise"]))
    want = list(StreamBatcher(iter(data), SCHEDULES["piecewise"]))
    assert ds.element_spec == (
        tf.TensorSpec((None, 2), tf.int16),
        tf.TensorSpec((None,), tf.string),
    )
    got = [as_numpy(b) for b in ds]
    assert_batches_equal(got, [(x, y.astype(bytes)) for x, y in want])


def test_generator_keeps_dicts_tuples_namedtuples_and_turns_lists_into_tuples():
    elements = [
        {"pair": Pair(np.float16(i), np.arange(3) + i), "list": [np.int8(i), np.bool_(1)]}
        for i in range(12)
    ]
    ds = to_tf_dataset(RampupBatches(elements, SCHEDULES["piecewise"], num_epochs=1))
    spec = ds.element_spec
    assert spec["pair"] == Pair(
        tf.TensorSpec((None,), tf.float16), tf.TensorSpec((None, 3), tf.int64)
    )
    assert spec["list"] == (tf.TensorSpec((None,), tf.int8), tf.TensorSpec((None,), tf.bool))
    first = next(iter(ds))
    assert isinstance(first["pair"], Pair)
    np.testing.assert_array_equal(first["pair"].y, np.arange(3) + np.arange(6)[:, None])


def test_generator_takes_a_matching_signature():
    batches = RampupBatches(np.zeros((20, 4), np.float32), SCHEDULES["constant"], num_epochs=1)
    ds = to_tf_dataset(batches, output_signature=tf.TensorSpec((None, 4), tf.float32))
    assert [b.shape[0] for b in ds] == [8, 8, 4]


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (tf.TensorSpec((None, 4), tf.float64), r"float32\[8, 4\]"),
        (tf.TensorSpec((None, 5), tf.float32), r"step 0"),
        ((tf.TensorSpec((None, 4), tf.float32),) * 2, "structure"),
    ],
)
def test_generator_rejects_a_mismatching_signature_up_front(signature, message):
    batches = RampupBatches(np.zeros((20, 4), np.float32), SCHEDULES["constant"])
    with pytest.raises(ValueError, match=message):
        to_tf_dataset(batches, output_signature=signature)


def test_generator_composes_with_map_and_prefetch():
    batches = RampupBatches(np.arange(40, dtype=np.int32), SCHEDULES["linear"], num_epochs=1)
    ds = to_tf_dataset(batches).map(lambda b: b * 2).prefetch(tf.data.AUTOTUNE)
    assert_batches_equal([b.numpy() for b in ds], [b * 2 for b in batches])


# --- Keras -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["generator", "native"])
def test_keras_fit_sees_the_scheduled_sizes(path, batch_size_metric):
    keras = pytest.importorskip("keras")
    schedule = SCHEDULES["stepwise"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    if path == "generator":
        ds = to_tf_dataset(RampupBatches(list(zip(x, y, strict=True)), schedule))
    else:
        ds = rampup_batch(tf.data.Dataset.from_tensor_slices((x, y)).repeat(), schedule)

    class Sizes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append(int(logs["batch_size"]))

    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    net.compile(optimizer="sgd", loss="mse", metrics=[batch_size_metric()])
    sizes = Sizes()
    net.fit(ds, steps_per_epoch=8, epochs=1, verbose=0, callbacks=[sizes])
    assert sizes.seen == SIZES["stepwise"][:8]


# --- tf.distribute -----------------------------------------------------------------------------


def _in_fresh_interpreter(test_name):
    """Runs one test of this module where TF has not set up its devices yet."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::{test_name}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAMPUP_TF_CHILD": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_mirrored_strategy_gives_each_replica_its_slice():
    if not TWO_CPUS:
        assert not os.environ.get("RAMPUP_TF_CHILD"), "could not set 2 logical CPUs"
        _in_fresh_interpreter("test_mirrored_strategy_gives_each_replica_its_slice")
        return
    schedule = piecewise({0: 4, 2: 8, 4: 12})
    data = np.arange(31, dtype=np.int64)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2

    def dataset_fn(context):
        return rampup_batch(source_ds(data).repeat(), schedule, input_context=context)

    it = iter(strategy.distribute_datasets_from_function(dataset_fn))
    replicas = [
        RampupBatches(data, schedule, process_index=r, process_count=2).iter_from(0)
        for r in range(2)
    ]
    for k in range(9):
        local = strategy.experimental_local_results(next(it))
        assert len(local) == 2
        for r in range(2):
            np.testing.assert_array_equal(local[r].numpy(), next(replicas[r]), f"step {k}")
            assert local[r].device.endswith(f"CPU:{r}")


@pytest.mark.parametrize(("pipelines", "pipeline", "replicas"), [(1, 0, 2), (2, 1, 2), (2, 0, 4)])
@pytest.mark.parametrize("structure", ["tensor", "1-tuple", "dict"])
def test_input_context_gives_each_pipeline_its_replicas_slices(
    pipelines, pipeline, replicas, structure
):
    schedule = piecewise({0: 4, 3: 8, 7: 12})
    data = np.arange(150, dtype=np.int64)
    wrap, unwrap = {
        "tensor": (lambda x: x, lambda b: b),
        "1-tuple": (lambda x: (x,), lambda b: b[0]),
        "dict": (lambda x: {"x": x}, lambda b: b["x"]),
    }[structure]
    context = tf.distribute.InputContext(pipelines, pipeline, replicas)
    with small_chunks(10):
        ds = rampup_batch(
            source_ds(wrap(data)), schedule, drop_remainder=True, input_context=context
        )
    got = [unwrap(as_numpy(b)) for b in ds]
    slices = [
        list(
            RampupBatches(
                data,
                schedule,
                num_epochs=1,
                drop_remainder=True,
                process_index=r,
                process_count=replicas,
            )
        )
        for r in range(replicas)
    ]
    mine = range(pipeline * replicas // pipelines, (pipeline + 1) * replicas // pipelines)
    assert_batches_equal(got, [slices[r][k] for k in range(len(slices[0])) for r in mine])


def test_mirrored_strategy_rejects_a_size_that_does_not_divide():
    if not TWO_CPUS:
        assert not os.environ.get("RAMPUP_TF_CHILD"), "could not set 2 logical CPUs"
        _in_fresh_interpreter("test_mirrored_strategy_rejects_a_size_that_does_not_divide")
        return
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def dataset_fn(context):
        return rampup_batch(
            source_ds(np.arange(10)).repeat(), piecewise({0: 4, 3: 6, 5: 9}), input_context=context
        )

    with pytest.raises(ValueError, match=r"batch size 9 at step 5 .*process_count=2"):
        strategy.distribute_datasets_from_function(dataset_fn)


def test_native_ramp_refuses_a_schedule_decided_online():
    schedule = AdaptiveSchedule(8, lag=4)
    with pytest.raises(ValueError, match="decided online.*to_tf_dataset"):
        rampup_batch(tf.data.Dataset.range(100), schedule)


def test_input_context_over_a_dataset_that_may_end_needs_drop_remainder():
    context = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2
    )
    with pytest.raises(ValueError, match="drop_remainder=True"):
        rampup_batch(source_ds(np.arange(10)), piecewise({0: 4, 3: 6}), input_context=context)
    batches = rampup_batch(
        source_ds(np.arange(10)),
        piecewise({0: 4, 3: 6}),
        drop_remainder=True,
        input_context=context,
    )
    assert [b.numpy().tolist() for b in batches] == [[0, 1], [2, 3], [4, 5], [6, 7]]


@pytest.mark.parametrize(("start", "final"), [(1, 120), (30, 40)])
@pytest.mark.parametrize("how", FORMS)
def test_native_equals_core_for_many_distinct_sizes_and_few(start, final, how):
    # linear(1, 1, ...) gives 120 sizes, most of them one step long; 30..40 gives 11.
    schedule = linear(start, 1, 3000, final)
    data = np.arange(997, dtype=np.int64)
    with small_chunks(50), form(how):
        ds = rampup_batch(source_ds(data).repeat(5), schedule)
    want = list(RampupBatches(data, schedule, num_epochs=5))
    assert_batches_equal([as_numpy(b) for b in ds], want)
