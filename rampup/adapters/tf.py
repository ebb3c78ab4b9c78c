"""tf.data: rampup batches as a `tf.data.Dataset`, and a native graph-mode ramp-up.

Two paths:

- `to_tf_dataset(batches)` wraps any rampup batch source (`RampupBatches`,
  `StreamBatcher`, the grain adapter's datasets, any iterable of NumPy batch
  pytrees) with `tf.data.Dataset.from_generator`. Any schedule, any source;
  batches are built in Python.
- `rampup_batch(ds, schedule)` batches a `tf.data.Dataset` of single samples
  inside tf.data: no Python per element, and the iterator checkpoints with
  `tf.train.Checkpoint(iterator=...)`. Segmented schedules only.

How `rampup_batch` works, reading `ds` once and running no function per sample
or per step. Over a finite `ds` whose length tf.data knows (`cardinality()`),
every step's size is known up front: `ds.batch(rows)` cuts the stream into chunks
of about `_CHUNK_BYTES` and one `rebatch` with the vector of all the steps' sizes
cuts them into the steps (a step inside one chunk is a view of it, not a copy).

`rebatch` cycles through its vector, so an endless or unknown-length `ds` (or one
of more than `_VECTOR_STEPS_MAX` steps) is cut differently: chunks of `rows`
samples, a multiple of the last segment's size and at least the largest size,
so a step that starts in a chunk ends in it or the next. `window(2, shift=1)`
pairs each chunk with the next, and `rebatch` cuts the pair into the steps that
start in the first chunk, after leaving out the rows before them. Which steps
those are is data zipped to the chunks, computed from the plan once: a row per
chunk of the ramp, then one row for every later chunk (they all hold the same
run of last-segment steps at the same place). With an `input_context`, each step
is cut once more into the rows before this pipeline's, one piece per replica,
and the rows after, and only the replicas' pieces are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from rampup import Plan, RampupBatches, Schedule, from_config
from rampup.protocol import ScheduledIterator, as_plan, check_count, check_flag, resolve, spec

__all__ = ["ScaledLearningRate", "rampup_batch", "to_tf_dataset"]

# A chunk of `rampup_batch` aims at this many bytes of samples: large enough that its
# fixed cost (a few datasets per chunk) vanishes, small enough that `rebatch` reads it back
# from cache (2 MiB: the chunk pairs at 1.05-1.21x `ds.batch(256)` on the linear and
# piecewise ramps where 8 MiB gave 1.14-1.27x, three side-by-side runs of both on the idle
# 2-core machine).
_CHUNK_BYTES = 2 << 20
_CHUNK_ROWS = 4096  # where the samples' size is not known from their spec
_CHUNK_ROWS_MAX = 1 << 16
# A finite `ds` of up to this many steps is cut by one `rebatch` over a vector of every
# step's size (8 bytes a step in the dataset's graph); a longer one by chunk pairs.
_VECTOR_STEPS_MAX = 1 << 18


# --- to_tf_dataset -----------------------------------------------------------------------------


def _as_nest(batch: Any) -> Any:
    """The batch with lists as tuples: tf.data's nest takes a list for one tensor."""
    if isinstance(batch, Mapping):
        return {k: _as_nest(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_as_nest(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return tuple(_as_nest(v) for v in batch)
    return np.asarray(batch)


def _tf_dtype(array: np.ndarray) -> tf.DType:
    if array.dtype.kind in "USO":
        return tf.string
    return tf.as_dtype(array.dtype)


def _leaf_spec(array: np.ndarray) -> tf.TensorSpec:
    if array.ndim == 0:
        raise ValueError(
            f"a batch leaf is a scalar ({array.dtype}); every leaf of a batch needs a leading "
            "batch axis, as the default collate makes"
        )
    return tf.TensorSpec((None, *array.shape[1:]), _tf_dtype(array))


def _paths(batch: Any, prefix: str = "") -> Any:
    """The batch's structure with each leaf's path (as `["key"][0]`) in its place."""
    if isinstance(batch, Mapping):
        return {k: _paths(v, f"{prefix}[{k!r}]") for k, v in batch.items()}
    if isinstance(batch, tuple):
        parts = [_paths(v, f"{prefix}[{i}]") for i, v in enumerate(batch)]
        return type(batch)(*parts) if hasattr(batch, "_fields") else tuple(parts)
    return prefix


def _check_signature(signature: Any, batch: Any, step: str) -> None:
    """Raises ValueError where `signature` does not describe `batch`, the batch at `step`."""
    inferred = tf.nest.map_structure(_leaf_spec, batch)
    try:
        tf.nest.assert_same_structure(signature, batch, check_types=False)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"output_signature does not match the structure of the batch at {step}: the "
            f"signature is {signature!r}, the batch is {spec(batch)}. Leave output_signature=None "
            f"to infer {inferred!r}"
        ) from e
    flat = zip(
        tf.nest.flatten(_paths(batch)),
        tf.nest.flatten(signature),
        tf.nest.flatten(batch),
        strict=True,
    )
    for path, want, leaf in flat:
        ok = (
            isinstance(want, tf.TensorSpec)
            and want.dtype == _tf_dtype(leaf)
            and want.shape.is_compatible_with(leaf.shape)
        )
        if not ok:
            where = path or "the batch itself"
            raise ValueError(
                f"output_signature does not match the batch at {step} at {where}: the "
                f"signature gives {want!r}, the batch has {leaf.dtype}{list(leaf.shape)}. Valid "
                f"here: {_leaf_spec(leaf)!r} (batch dimension None); leave output_signature=None "
                "to infer the whole signature"
            )


def _iterators(batches: Any, start_step: int | None) -> Callable[[], Iterator[Any]]:
    """A factory of the iterators that each iteration of the dataset reads."""
    if start_step is not None:
        start_step = check_count(start_step, "start_step")
        if isinstance(batches, RampupBatches):
            return lambda: batches.iter_from(start_step)
        if isinstance(batches, ScheduledIterator) and batches.step == start_step:
            return lambda: batches
        raise ValueError(
            f"start_step={start_step}: a {type(batches).__name__} cannot seek to a step. Pass a "
            "RampupBatches (it starts at any step in O(1)), or an iterator restored with "
            "set_state() (or batches.iter_from(step)) without start_step: the dataset starts "
            "where the iterator stands"
        )
    if isinstance(batches, Iterator):
        # A rampup iterator (restored with set_state, or from iter_from(k)) or any other
        # iterator: every iteration goes on where it stands.
        return lambda: batches
    if not isinstance(batches, Iterable):
        raise TypeError(
            f"to_tf_dataset needs a rampup batch source (RampupBatches, one of its iterators, a "
            f"StreamBatcher, a grain adapter dataset or its iterator) or any iterable of NumPy "
            f"batches, got {type(batches).__name__}"
        )
    # RampupBatches, a grain RampupMapDataset, any iterable: each iteration starts afresh.
    return lambda: iter(batches)


def _unchecked(iterator: Iterator[Any]) -> str:
    """What the dataset cannot promise about a foreign iterator, for its error messages."""
    if isinstance(iterator, ScheduledIterator):
        return f"step {iterator.step}"
    return (
        f"the first batch of {type(iterator).__name__} (not a rampup iterator: its step is unknown)"
    )


def to_tf_dataset(
    batches: Any,
    *,
    output_signature: Any = None,
    start_step: int | None = None,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` over a rampup batch source, from a generator.

    The first batch is built at once to infer (or check) the signature; it is
    handed to the first iteration, not built twice. An iterator (a rampup
    iterator from `iter_from(k)` or restored with `set_state`, a `StreamBatcher`,
    any iterator) is read from where it stands, and every iteration of the
    dataset goes on from there. An iterable (`RampupBatches`, a grain
    `RampupMapDataset`) starts afresh at step 0 on every iteration.

    Args:
      batches: a rampup batch source or any iterable of NumPy batch pytrees
        (dicts, tuples, lists, namedtuples; lists come out as tuples).
      output_signature: the `tf.TensorSpec` pytree of one batch; None infers it
        from the first batch, with `None` as the batch dimension.
      start_step: with a `RampupBatches`, every iteration starts at this step
        (`batches.iter_from(start_step)`); None starts at 0. An iterator starts
        where it stands, so it takes no start_step (or its own step).

    Returns:
      The dataset; its `element_spec` has `None` as the batch dimension unless
      `output_signature` says otherwise.

    Raises:
      ValueError: `output_signature` does not match the first batch; the source
        is empty and no signature is given; `start_step` on a source that cannot seek.
    """
    make = _iterators(batches, start_step)
    first_iterator = make()
    where = _unchecked(first_iterator)
    try:
        first = _as_nest(next(first_iterator))
    except StopIteration:
        if output_signature is None:
            raise ValueError(
                f"the batch source has no batch at {where}, so no signature can be "
                "inferred; pass output_signature=..."
            ) from None
        return tf.data.Dataset.from_generator(lambda: iter(()), output_signature=output_signature)
    if output_signature is None:
        output_signature = tf.nest.map_structure(_leaf_spec, first)
    else:
        _check_signature(output_signature, first, where)
    handoff = [(first, first_iterator)]

    def generate() -> Iterator[Any]:
        try:
            batch, rest = handoff.pop()
        except IndexError:
            rest = make()
        else:
            yield batch
        for batch in rest:
            yield _as_nest(batch)

    return tf.data.Dataset.from_generator(generate, output_signature=output_signature)


# --- rampup_batch --------------------------------------------------------------------------------


def _segmented_plan(schedule: Schedule | Plan) -> Plan:
    plan = as_plan(schedule)
    if plan.schedule.decided_until is not None:
        raise ValueError(
            f"rampup_batch fixes the ramp inside the tf.data graph when it is built, but "
            f"{plan.schedule} is decided online. Batch in Python with "
            "to_tf_dataset(RampupBatches(source, schedule)), which follows every decision"
        )
    if not plan.schedule.segmented:
        raise ValueError(
            f"rampup_batch builds the ramp inside tf.data from the schedule's segments, and "
            f"{plan.schedule} has none. Use a constant, stepwise, piecewise or linear schedule, "
            "or batch in Python with to_tf_dataset(RampupBatches(source, schedule)) or "
            "to_tf_dataset(StreamBatcher(ds.as_numpy_iterator(), schedule)), which take any "
            "schedule"
        )
    return plan


def _replica_split(
    plan: Plan, input_context: tf.distribute.InputContext | None
) -> tuple[list[tuple[int, int]], list[int]]:
    """Per segment: this pipeline's rows `[lo, hi)` of a step's batch, and one replica's size.

    The slices come from `Plan.local_bounds` at each segment's first step; the
    size is constant over a segment, so are they.
    """
    segments = plan.segments()
    if input_context is None:
        return [(0, s.size) for s in segments], [s.size for s in segments]
    pipelines = input_context.num_input_pipelines
    replicas = input_context.num_replicas_in_sync
    if replicas % pipelines:
        raise ValueError(
            f"num_replicas_in_sync={replicas} is not a multiple of num_input_pipelines="
            f"{pipelines}; every input pipeline must feed the same number of replicas"
        )
    rows, replica_sizes = [], []
    for s in segments:
        lo, hi = plan.local_bounds(s.first_step, input_context.input_pipeline_id, pipelines)
        rows.append((lo - s.offset, hi - s.offset))
        lo, hi = plan.local_bounds(s.first_step, 0, replicas)
        replica_sizes.append(hi - lo)
    return rows, replica_sizes


def _chunk_rows(ds: tf.data.Dataset) -> int:
    """The samples one chunk aims at: about `_CHUNK_BYTES`, from the samples' spec."""
    sample_bytes = 0
    for leaf in tf.nest.flatten(ds.element_spec):
        if (
            not isinstance(leaf, tf.TensorSpec)
            or not leaf.shape.is_fully_defined()
            or (leaf.dtype == tf.string)
        ):
            return _CHUNK_ROWS
        sample_bytes += leaf.shape.num_elements() * leaf.dtype.size
    return min(_CHUNK_ROWS_MAX, max(1, _CHUNK_BYTES // max(sample_bytes, 1)))


def _step_sizes(plan: Plan, ds: tf.data.Dataset) -> np.ndarray | None:
    """Every step's size over `ds`, or None where `ds` may not end or has too many steps."""
    length = int(ds.cardinality())
    if length < 0:  # endless (-1) or unknown (-2)
        return None
    steps = plan.num_batches(length)
    if not 0 < steps <= _VECTOR_STEPS_MAX:
        return None
    return np.diff(plan.offsets(np.arange(steps + 1, dtype=np.int64)))


def _padded(rows: list[np.ndarray], dtype: Any) -> np.ndarray:
    out = np.zeros((len(rows), max(len(r) for r in rows)), dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class _Chunks(NamedTuple):
    """How `rampup_batch` cuts the stream: see the module docstring.

    Row `j` of each table describes the steps that start in chunk `j`; the
    last row is the one of every later chunk (all of the last segment).

    Attributes:
      rows: the samples in a chunk, a multiple of the last segment's size.
      sizes: the rows before the chunk's first step, then its steps' sizes (zero-padded).
      counts: how many steps start in the chunk.
      pieces: with an `input_context`, each of those steps' pieces: the rows before
        this pipeline's, one piece per replica of this pipeline, the rows after.
      keep: which pieces are this pipeline's replicas' batches.
    """

    rows: int
    sizes: np.ndarray
    counts: np.ndarray
    pieces: np.ndarray
    keep: np.ndarray


def _chunks(
    plan: Plan, rows: list[tuple[int, int]], replica_sizes: list[int], target: int
) -> _Chunks:
    """The chunk tables of a plan whose last segment starts at `plan.segments()[-1].offset`."""
    segments = plan.segments()
    tail = segments[-1]
    chunk = tail.size * -(-max(target, *(s.size for s in segments)) // tail.size)
    last = tail.offset // chunk + 1  # every chunk from here on lies in the last segment
    # Every step that starts before the end of chunk `last` and the next one (whose offset
    # ends the last size): their offsets, sizes and segments.
    steps = np.arange(plan.num_batches((last + 1) * chunk) + 1, dtype=np.int64)
    bounds_of_steps = plan.offsets(steps)
    offset, size = bounds_of_steps[:-1], np.diff(bounds_of_steps)
    first_steps = [s.first_step for s in segments]
    owner = np.searchsorted(first_steps, steps[:-1], side="right") - 1
    replicas = (rows[0][1] - rows[0][0]) // replica_sizes[0]
    per_segment = np.array(
        [
            [lo, *([r] * replicas), s.size - hi]
            for (lo, hi), r, s in zip(rows, replica_sizes, segments, strict=True)
        ],
        np.int64,
    )
    keep = np.array([False, *([True] * replicas), False])
    bounds = np.searchsorted(offset, np.arange(last + 2, dtype=np.int64) * chunk)
    sizes_rows, pieces_rows, keep_rows = [], [], []
    for j in range(last + 1):
        lo, hi = bounds[j], bounds[j + 1]
        sizes_rows.append(np.append(offset[lo] - j * chunk, size[lo:hi]))
        pieces_rows.append(per_segment[owner[lo:hi]].ravel())
        keep_rows.append(np.tile(keep, hi - lo))
    return _Chunks(
        chunk,
        _padded(sizes_rows, np.int64),
        np.diff(bounds[: last + 2]),
        _padded(pieces_rows, np.int64),
        _padded(keep_rows, bool),
    )


def _ramp(
    ds: tf.data.Dataset, chunks: _Chunks, sharded: bool, drop_remainder: bool
) -> tf.data.Dataset:
    """`ds` cut into the plan's steps (or their replicas' pieces): see the module docstring."""
    tables = (chunks.sizes, chunks.counts, chunks.pieces, chunks.keep)
    data = tf.data.Dataset.from_tensor_slices(tuple(t[:-1] for t in tables)).concatenate(
        tf.data.Dataset.from_tensors(tuple(t[-1] for t in tables)).repeat()
    )

    def steps(window: Any, row: Any) -> tf.data.Dataset:
        sizes, count, pieces, keep = row
        if not isinstance(window, tf.data.Dataset):  # a structure: one dataset per component
            window = tf.data.Dataset.zip(window)
        # The steps that start in this chunk; the first batch (the rows before them) is left out.
        out = window.rebatch(sizes, drop_remainder).skip(1).take(count)
        if not sharded:
            return out
        return (
            tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(keep), out.rebatch(pieces)))
            .filter(lambda keep, _: keep)
            .map(lambda _, piece: piece)
        )

    # A step is no longer than a chunk: the steps that start in a chunk end in it or the next.
    windows = ds.batch(chunks.rows).window(2, shift=1)
    return tf.data.Dataset.zip((windows, data)).flat_map(steps)


def rampup_batch(
    ds: tf.data.Dataset,
    schedule: Schedule | Plan,
    *,
    drop_remainder: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    start_step: int = 0,
) -> tf.data.Dataset:
    """Batches a dataset of single samples by a segmented schedule, inside tf.data.

    Batch `k` holds samples `[O(k), O(k) + B(k))` of `ds`, across epoch borders
    when `ds` repeats, exactly as `RampupBatches` builds them. `ds` is read
    once, in order. The iterator checkpoints with `tf.train.Checkpoint(iterator=it)`.

    Args:
      ds: a dataset of unbatched samples (repeat it for several epochs).
      schedule: a segmented `Schedule` (constant, stepwise, piecewise, linear)
        or its `Plan`.
      drop_remainder: leave out a last partial batch of a finite `ds`.
      input_context: from `tf.distribute.Strategy.distribute_datasets_from_function`:
        each step's batch is cut into this input pipeline's replicas' slices,
        one batch per replica in replica order, each `B(k) / num_replicas_in_sync`
        samples. Every pipeline reads all of `ds`. A `ds` that may end (not
        `.repeat()`ed) needs `drop_remainder=True`, so that every replica gets a
        full slice; without it a `ValueError` is raised.
      start_step: the first step to yield; `ds` is read from sample `O(start_step)` on
        (`ds.skip`). Resuming on another replica count: the sizes before it need
        not divide by `num_replicas_in_sync`.

    Returns:
      The batched dataset; its batch dimension is `None`.

    Raises:
      ValueError: a `from_fn` schedule (use `to_tf_dataset`); a size from
        `start_step` on that does not divide by the replica count (naming the
        first step from which it is legal); an `input_context` over a dataset that
        may end without `drop_remainder=True`.
    """
    if not isinstance(ds, tf.data.Dataset):
        raise TypeError(f"rampup_batch needs a tf.data.Dataset of samples, got {type(ds).__name__}")
    drop_remainder = check_flag(drop_remainder, "drop_remainder")
    plan = _segmented_plan(schedule)
    start_step = check_count(start_step, "start_step")
    if input_context is not None:
        plan.check_processes(0, input_context.num_replicas_in_sync, start=start_step)
    if start_step:
        ds = ds.skip(plan.offset(start_step))
        plan = plan.from_step(start_step)
    segments = plan.segments()
    rows, replica_sizes = _replica_split(plan, input_context)
    sliced = any(hi - lo != s.size for (lo, hi), s in zip(rows, segments, strict=True))
    split = replica_sizes != [s.size for s in segments]
    if (
        (split or sliced)
        and not drop_remainder
        and (ds.cardinality() != tf.data.INFINITE_CARDINALITY)
    ):
        # A last partial batch would be cut into full-size replica slices (6 + 4, not 5 + 5),
        # unlike the core's even split: refuse rather than give other rows.
        raise ValueError(
            "rampup_batch with an input_context over a dataset that may end "
            f"(cardinality {int(ds.cardinality())}) needs drop_remainder=True: a last partial "
            "batch cannot be split evenly between the replicas here. Repeat the dataset "
            "(ds.repeat()) or pass drop_remainder=True"
        )
    if len(segments) == 1 and not sliced and not split:
        # One size for ever: `batch` itself.
        return ds.batch(segments[0].size, drop_remainder=drop_remainder)
    if not (sliced or split):
        sizes = _step_sizes(plan, ds)
        if sizes is not None:
            # The vector ends with the step that holds the last sample: `rebatch` never cycles.
            return ds.batch(_chunk_rows(ds)).rebatch(sizes, drop_remainder)

    chunks = _chunks(plan, rows, replica_sizes, _chunk_rows(ds))
    return _ramp(ds, chunks, sliced or split, drop_remainder)


# --- learning rates ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="rampup")
class ScaledLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """`rampup.scaled` as a Keras learning-rate schedule, for `keras.optimizers.*(learning_rate=)`.

    The plan's segments become constants: a step (a tensor, e.g. the
    optimizer's `iterations`) finds its segment with `tf.searchsorted` and its
    factor and `t` in closed form, in graph mode. `get_config` stores the batch
    schedule as its `to_config()` dict, so the optimizer serializes with it.

    Args:
      base: a number, or a Keras `LearningRateSchedule` of `t` (a warmup or decay).
      schedule: a segmented batch schedule, its `Plan`, or its `to_config()` dict.
      rule: "sqrt", "linear", "none", or a callable of the ratio (not serializable).
      reference_size: the batch size `base` was tuned for; default the largest size.
      unit: what `t` counts: "steps", "samples" or "tokens" (see `rampup.scaled`);
        `t` is a float32 tensor for samples and tokens.
      tokens_per_sample: tokens in one sample, with `unit="tokens"`.
    """

    def __init__(
        self,
        base: float | keras.optimizers.schedules.LearningRateSchedule,
        schedule: Schedule | Plan | Mapping[str, Any],
        *,
        rule: str | Callable[[float], float] = "sqrt",
        reference_size: int | None = None,
        unit: str = "steps",
        tokens_per_sample: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(schedule, Mapping):
            schedule = from_config(schedule)
        self.scaling = resolve(
            base,
            schedule,
            rule=rule,
            reference_size=reference_size,
            unit=unit,
            tokens_per_sample=tokens_per_sample,
        )
        table = self.scaling.segment_table()
        self._first_steps = tf.constant(table.first_steps, tf.int64)
        self._t_offsets = tf.constant(table.t_offsets.astype(np.float32))
        self._t_per_step = tf.constant(table.t_per_step.astype(np.float32))
        self._factors = tf.constant(table.factors.astype(np.float32))

    def __call__(self, step: Any) -> tf.Tensor:
        """The learning rate at `step` (a scalar or a tensor of steps)."""
        step = tf.cast(tf.convert_to_tensor(step), tf.int64)
        flat = tf.reshape(step, [-1])
        i = tf.reshape(tf.searchsorted(self._first_steps, flat, side="right") - 1, tf.shape(step))
        factor = tf.gather(self._factors, i)
        base = self.scaling.base
        if not callable(base):
            return tf.constant(base, tf.float32) * factor
        if self.scaling.unit == "steps":
            t = step
        else:
            since = tf.cast(step - tf.gather(self._first_steps, i), tf.float32)
            t = tf.gather(self._t_offsets, i) + since * tf.gather(self._t_per_step, i)
        return tf.cast(base(t), tf.float32) * factor

    def get_config(self) -> dict[str, Any]:
        """The arguments, JSON-able: the batch schedule as its `to_config()` dict."""
        scaling = self.scaling
        if not isinstance(scaling.rule, str):
            raise ValueError(
                f"rule={scaling.rule!r} is a callable, which a Keras config cannot hold; "
                "use a named rule (sqrt, linear, none) to save this schedule"
            )
        base = scaling.base
        if callable(base):
            base = keras.optimizers.schedules.serialize(base)
        return {
            "base": base,
            "schedule": scaling.plan.schedule.to_config(),
            "rule": scaling.rule,
            "reference_size": scaling.reference_size,
            "unit": scaling.unit,
            "tokens_per_sample": scaling.tokens_per_sample,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ScaledLearningRate:
        """The schedule of a `get_config()` dict."""
        config = dict(config)
        if isinstance(config.get("base"), dict):
            config["base"] = keras.optimizers.schedules.deserialize(config["base"])
        return cls(config.pop("base"), config.pop("schedule"), **config)
