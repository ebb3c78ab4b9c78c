"""Batch-size ramp-up on JAX devices: sharded global batches, prefetched.

`device_batches` turns host-local NumPy batches (this process's slice, as
`RampupBatches`, the grain adapter or any iterator yields them) into global
`jax.Array`s sharded on the batch axis, built in a background thread ahead of
the training loop. `check_schedule` checks a whole schedule against a mesh at
start-up and `precompile` compiles a step for every batch shape it will see.

Shape policies: exact shapes give one compilation per distinct size
(`Plan.distinct_sizes`); `microbatch_size=m` yields every global batch as
`B(k) / m` arrays of shape `(m, ...)`, so the step compiles once.

All schedule arithmetic is the core's: this module converts types.
"""

from __future__ import annotations

import atexit
import functools
import math
import queue
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rampup import AdaptiveSchedule, Plan, Schedule
from rampup.protocol import (
    ProcessLayout,
    ScheduledIterator,
    as_plan,
    check_count,
    microbatch_count,
    not_divisible,
    resolve,
)

__all__ = [
    "DeviceBatches",
    "UncheckedSourceWarning",
    "batch_sharding",
    "check_schedule",
    "data_axis_size",
    "device_batches",
    "grad_with_noise_norms",
    "optax_schedule",
    "precompile",
    "process_layout",
]

_POLL_SECONDS = 0.05
# How long close() (and the context manager's exit, and interpreter exit) waits for a
# producer inside the source.
_CLOSE_SECONDS = 10.0


def batch_sharding(
    sharding: NamedSharding | Mesh, axis: str | tuple[str, ...] | None = None
) -> NamedSharding:
    """The `NamedSharding` that splits the batch axis (axis 0) of every leaf.

    Args:
      sharding: a `NamedSharding` (returned as it is), or a `Mesh`.
      axis: with a `Mesh`, the mesh axis (or axes) the batch is split over;
        may be left out for a mesh with one axis.

    Returns:
      The sharding of a batch.
    """
    if isinstance(sharding, NamedSharding):
        if axis is not None:
            raise ValueError(
                f"axis={axis!r} is only for a Mesh; the NamedSharding "
                f"{sharding} already names its axes"
            )
        return sharding
    if isinstance(sharding, Mesh):
        if axis is None:
            if len(sharding.axis_names) != 1:
                raise ValueError(
                    f"the mesh has axes {sharding.axis_names}: pass axis=... to say which one "
                    "(or which tuple of them) the batch is split over"
                )
            axis = sharding.axis_names[0]
        names = (axis,) if isinstance(axis, str) else tuple(axis)
        unknown = [a for a in names if a not in sharding.axis_names]
        if unknown:
            raise ValueError(
                f"axis {axis!r} is not in the mesh; its axes are {sharding.axis_names}"
            )
        return NamedSharding(sharding, PartitionSpec(axis))
    raise TypeError(
        f"expected a jax.sharding.NamedSharding or a Mesh plus axis=, got {type(sharding).__name__}"
    )


def _data_axes(sharding: NamedSharding) -> tuple[str, ...]:
    spec = sharding.spec
    first = spec[0] if len(spec) else None
    if first is None:
        return ()
    return (first,) if isinstance(first, str) else tuple(first)


@functools.lru_cache(maxsize=64)
def data_axis_size(sharding: NamedSharding) -> int:
    """How many ways the batch axis is split: the product of its mesh axes' sizes."""
    return math.prod(sharding.mesh.shape[a] for a in _data_axes(sharding))


def _describe(sharding: NamedSharding) -> str:
    axes = _data_axes(sharding)
    name = axes[0] if len(axes) == 1 else axes
    return (
        f"data axis {name!r} of size {data_axis_size(sharding)} "
        f"(mesh shape {dict(sharding.mesh.shape)})"
    )


def _divisor(sharding: NamedSharding, microbatch_size: int | None) -> tuple[int, str]:
    """What every global size must be a multiple of, and that divisor in words."""
    if microbatch_size is not None:
        return microbatch_size, f"microbatch_size={microbatch_size}"
    return data_axis_size(sharding), f"the {_describe(sharding)}"


def _check_size(
    size: int,
    where: str,
    sharding: NamedSharding,
    microbatch_size: int | None,
    fix: str | None = None,
) -> int | None:
    """Raises the core's "not divisible" error when the batch axis cannot split `size`.

    Returns:
      The number of micro-batches of `size`, in micro-batch mode; else None.
    """
    if microbatch_size is not None:
        return microbatch_count(size, where, microbatch_size, fix=fix)
    ways, what = _divisor(sharding, None)
    if size % ways:
        raise not_divisible(
            size,
            ways,
            where,
            what,
            fix or f"build the schedule with multiple_of={ways} to catch this when it is built",
        )
    return None


def _check_microbatch_size(microbatch_size: int | None, sharding: NamedSharding) -> int | None:
    if microbatch_size is None:
        return None
    microbatch_size = check_count(microbatch_size, "microbatch_size", 1)
    ways = data_axis_size(sharding)
    if microbatch_size % ways:
        raise not_divisible(
            microbatch_size,
            ways,
            "(microbatch_size)",
            f"the {_describe(sharding)}",
            "valid micro-batch sizes are multiples of the data axis",
        )
    return microbatch_size


def check_schedule(
    plan: Plan | Schedule,
    sharding: NamedSharding | Mesh,
    axis: str | tuple[str, ...] | None = None,
    *,
    until_step: int | None = None,
    microbatch_size: int | None = None,
    start: int = 0,
) -> tuple[int, ...]:
    """Checks every size a run from `start` meets against the mesh, at start-up.

    Args:
      plan: the schedule or its `Plan`.
      sharding: the batch `NamedSharding`, or a `Mesh` plus `axis`.
      axis: the mesh axis of the batch, with a `Mesh`.
      until_step: check steps `[start, until_step)`; None checks every segment
        from `start` on (a `from_fn` schedule needs it).
      microbatch_size: the micro-batch size, in micro-batch mode.
      start: the step the run starts or resumes at: earlier sizes may be smaller
        than a mesh the run grew into.

    Returns:
      The batch sizes a jitted step sees over those steps: the distinct sizes,
      or `(microbatch_size,)` in micro-batch mode.

    Raises:
      ValueError: naming the first segment from `start` on whose size the data
        axis (or the micro-batch size) does not divide, the mesh shape, the
        nearest valid sizes and the first step from which this mesh is legal.
    """
    plan = as_plan(plan)
    sharding = batch_sharding(sharding, axis)
    microbatch_size = _check_microbatch_size(microbatch_size, sharding)
    start = check_count(start, "start")
    divisor = microbatch_size or data_axis_size(sharding)
    sizes = set()
    for segment in plan.segments(until_step):
        if segment.last_step is not None and segment.last_step < start:
            continue
        sizes.add(segment.size)
        if segment.size % divisor == 0:
            continue
        last = "on" if segment.last_step is None else f"to {segment.last_step}"
        # An online schedule answers for its decided steps only.
        until = until_step if until_step is not None else plan.schedule.decided_until
        first = plan.divisible_from(divisor, until_step=until)
        fix = (
            f"no step from {start} on is legal for this mesh; build the schedule with "
            f"multiple_of={divisor}"
            if first is None
            else f"this mesh is legal from step {first} on (Plan.divisible_from({divisor})): "
            f"start or resume at step {first} or later, or build the schedule with "
            f"multiple_of={divisor}"
        )
        where = f"at steps {max(start, segment.first_step)} {last}"
        _check_size(segment.size, where, sharding, microbatch_size, fix)
    if microbatch_size is not None:
        return (microbatch_size,)
    return tuple(sorted(sizes))


def process_layout(sharding: NamedSharding) -> ProcessLayout:
    """This process's `(process_index, process_count)` along the batch axis of `sharding`.

    Build the host-local batches with these (`RampupBatches(..., process_index=...,
    process_count=...)`): process `i` of `n` holds rows `[i * B / n, (i + 1) * B / n)`.

    Raises:
      ValueError: this process's devices do not hold one slice of the batch axis.
    """
    # A probe shape that every axis of the spec splits evenly: one row per batch shard.
    mesh = sharding.mesh.shape
    probe = tuple(
        math.prod(mesh[a] for a in ((e,) if isinstance(e, str) else e or ())) for e in sharding.spec
    ) or (1,)
    index_map = sharding.addressable_devices_indices_map(probe)
    shards = [cast(tuple, index)[0].start or 0 for index in index_map.values()]
    return ProcessLayout.of_shards(shards, data_axis_size(sharding))


class _Converter:
    """Turns one host-local batch into global arrays, after checking its size."""

    def __init__(self, sharding: NamedSharding, microbatch_size: int | None) -> None:
        self.sharding = sharding
        self.microbatch_size = microbatch_size
        self.layout = process_layout(sharding)
        self.single_process = jax.process_count() == 1

    def place(self, batch: Any) -> Any:
        """The global arrays of this process's share `batch`."""
        if self.single_process:  # what make_array_from_process_local_data does, minus its checks
            return jax.device_put(batch, self.sharding)
        return jax.make_array_from_process_local_data(self.sharding, batch)

    def __call__(self, step: str, batch: Any) -> Any:
        leaves = jax.tree_util.tree_leaves(batch)
        if not leaves:
            raise ValueError(f"the batch at {step} has no arrays: {batch!r}")
        rows = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
        if len(rows) != 1 or None in rows:
            raise ValueError(
                f"the leaves of the batch at {step} do not share a leading batch axis: "
                f"shapes {[np.shape(leaf) for leaf in leaves]}"
            )
        # The local rows are one process's equal share of the global batch (Plan.local_bounds).
        size = cast(int, rows.pop()) * self.layout.process_count
        count = _check_size(size, f"at {step}", self.sharding, self.microbatch_size)
        if count is None:
            return self.place(batch)
        flat, treedef = jax.tree_util.tree_flatten(batch)
        splits = [np.split(np.asarray(leaf), count) for leaf in flat]
        return [
            self.place(jax.tree_util.tree_unflatten(treedef, [s[j] for s in splits]))
            for j in range(count)
        ]


class _Item(NamedTuple):
    arrays: Any
    next_step: int
    state: Any


class _Failure(NamedTuple):
    error: BaseException


_END = object()
_LIVE: weakref.WeakSet[DeviceBatches] = weakref.WeakSet()


class UncheckedSourceWarning(UserWarning):
    """`device_batches` got a foreign iterable: its layout and step cannot be checked."""


def _produce(
    source: Any,
    convert: _Converter,
    slots: threading.Semaphore,
    out: queue.SimpleQueue,
    stop: threading.Event,
    with_state: bool,
    step: int,
    scheduled: bool,
) -> None:
    """The producer thread.

    It pulls from the source only once a slot is free, so it never runs more than
    `prefetch` steps ahead of the consumer.
    """
    try:
        while True:
            while not slots.acquire(timeout=_POLL_SECONDS):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            item = _next_item(source, convert, with_state, step, scheduled)
            out.put(item)
            if item is _END:
                return
            step = item.next_step
    except BaseException as error:  # re-raised in the consumer
        out.put(_Failure(error))


def _where(step: int, scheduled: bool) -> str:
    return (
        f"step {step}"
        if scheduled
        else (f"batch {step} of this iterator (a foreign source does not say its step)")
    )


def _next_item(
    source: Any, convert: _Converter, with_state: bool, step: int, scheduled: bool
) -> Any:
    """Pulls, checks and transfers the next batch; `step` is the source's (or a count)."""
    try:
        batch = next(source)
    except StopIteration:
        return _END
    arrays = convert(_where(step, scheduled), batch)
    next_step = source.step if scheduled else step + 1
    return _Item(arrays, next_step, source.get_state() if with_state else None)


class DeviceBatches(Iterator[Any]):
    """Global sharded batches, built ahead in a background thread; see `device_batches`.

    `get_state()` gives the state of the next step to be consumed (not of the
    producer's run-ahead position), so a checkpoint taken between steps resumes
    exactly. Use it as a context manager, or call `close()`, to stop the thread.
    """

    def __init__(
        self,
        batches: Iterable[Any],
        sharding: NamedSharding,
        *,
        prefetch: int,
        microbatch_size: int | None,
    ) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.source: Any = cast(Any, iter(batches))  # any iterator; ScheduledIterators checked
        self.sharding = sharding
        self.prefetch = check_count(prefetch, "prefetch")
        self.microbatch_size = _check_microbatch_size(microbatch_size, sharding)
        self._convert = _Converter(sharding, self.microbatch_size)
        self._scheduled = isinstance(self.source, ScheduledIterator)
        if self._scheduled:
            self._check_source(self.source)
            schedule = self.source.plan.schedule
            if isinstance(schedule, AdaptiveSchedule):
                # The thread builds up to `prefetch` steps past the one training takes.
                schedule.check_lag(self.prefetch, f"device_batches(prefetch={self.prefetch})")
        else:
            warnings.warn(
                f"device_batches got a {type(self.source).__name__}, not a rampup batch iterator "
                "(RampupBatches, StreamBatcher, the grain or torch adapters' iterators): it cannot "
                "check that the batches were built for this process's place in the sharding "
                f"(process_layout(sharding) = {tuple(self._convert.layout)}), nor the schedule up "
                "front, nor name the step in errors. Each batch's rows are still checked against "
                "the data axis",
                UncheckedSourceWarning,
                stacklevel=3,
            )
        self._with_state = callable(getattr(self.source, "get_state", None))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(self.prefetch)
        self._closed = False
        self._done = False
        self._step = self.source.step if self._scheduled else 0
        self._state = self.source.get_state() if self._with_state else None
        _LIVE.add(self)

    def _check_source(self, source: ScheduledIterator) -> None:
        """The source's layout must be the sharding's; every size it yields must split."""
        layout = tuple(self._convert.layout)
        if (source.process_index, source.process_count) != layout:
            raise ValueError(
                f"the batches are built for process_index={source.process_index}, process_count="
                f"{source.process_count}, but the sharding places this process's rows at "
                f"process_index={layout[0]}, process_count={layout[1]}; build them with those "
                "values (rampup.adapters.jax.process_layout(sharding) gives them)"
            )
        until = source.check_last_batch(*_divisor(self.sharding, self.microbatch_size))
        if until is not None or source.plan.schedule.segmented:
            check_schedule(
                source.plan,
                self.sharding,
                until_step=until,
                microbatch_size=self.microbatch_size,
                start=source.step,
            )

    @property
    def step(self) -> int:
        """The step the next batch belongs to (for a foreign source: batches delivered)."""
        return self._step

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.SimpleQueue()
        self._slots = threading.Semaphore(self.prefetch)
        self._thread = threading.Thread(
            target=_produce,
            name="rampup-device-batches",
            daemon=True,
            args=(
                self.source,
                self._convert,
                self._slots,
                self._queue,
                self._stop,
                self._with_state,
                self._step,
                self._scheduled,
            ),
        )
        self._thread.start()

    def _take(self) -> Any:
        while True:
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if (
                    self._thread is not None
                    and not self._thread.is_alive()
                    and (self._queue.empty())
                ):
                    raise RuntimeError(
                        "the device_batches producer thread stopped without a result"
                    ) from None

    def __next__(self) -> Any:
        if self._closed or self._done:
            raise StopIteration
        if self.prefetch == 0:
            item = _next_item(
                self.source, self._convert, self._with_state, self._step, self._scheduled
            )
        else:
            if self._thread is None:
                self._start()
            item = self._take()
            if isinstance(item, _Item):
                self._slots.release()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            self._stop_thread()
            raise item.error
        self._step, self._state = item.next_step, item.state
        return item.arrays

    def __iter__(self) -> DeviceBatches:
        return self

    def get_state(self) -> Any:
        """The source's state at the next step to be consumed; JSON-able if the source's is."""
        if not self._with_state:
            raise TypeError(
                f"the batch source ({type(self.source).__name__}) has no "
                "get_state(): pass a RampupBatches, a grain iterator or another "
                "iterator with get_state()/set_state()"
            )
        return self._state

    def set_state(self, state: Any) -> None:
        """Drops the batches built ahead and continues the source from `state`.

        Waits for the producer to leave the source first, however slow the
        source is: a producer still inside it would advance it past the
        restored position.
        """
        set_state = getattr(self.source, "set_state", None)
        if set_state is None:
            raise TypeError(f"the batch source ({type(self.source).__name__}) has no set_state()")
        self._stop_thread()
        set_state(state)
        if self._scheduled:
            self._check_source(self.source)
        self._done = False
        self._step = self.source.step if self._scheduled else 0
        self._state = self.source.get_state() if self._with_state else state

    def _stop_thread(self, timeout: float | None = None) -> bool:
        """Stops the producer; True once it has left the source."""
        thread = self._thread
        if thread is None:
            return True
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = None
        return True

    def close(self, timeout: float | None = _CLOSE_SECONDS) -> None:
        """Stops the producer thread and drops the batches built ahead.

        Args:
          timeout: seconds to wait for a producer inside a slow source. Past
            them close returns with a `RuntimeWarning` naming the source: the
            producer may still advance it by one batch, which nothing consumes.
            None waits until it leaves, however long the source blocks.
        """
        self._closed = True
        if not self._stop_thread(timeout):
            warnings.warn(
                f"DeviceBatches.close: the producer thread is still inside the batch source "
                f"{self.source!r} after {timeout} s; close returns without it (the thread is a "
                "daemon and stops once the source returns). Pass close(timeout=None) to wait",
                RuntimeWarning,
                stacklevel=2,
            )

    def __enter__(self) -> DeviceBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()

    def __repr__(self) -> str:
        return (
            f"DeviceBatches(step={self._step}, prefetch={self.prefetch}, "
            f"microbatch_size={self.microbatch_size}, {_describe(self.sharding)})"
        )


@atexit.register
def _close_all() -> None:
    # A producer still inside an XLA call while the interpreter tears down can abort it;
    # one stuck in a source must not hang the exit.
    for batches in list(_LIVE):
        batches.close()


def device_batches(
    batches: Iterable[Any],
    sharding: NamedSharding | Mesh,
    *,
    prefetch: int = 2,
    microbatch_size: int | None = None,
    axis: str | tuple[str, ...] | None = None,
) -> DeviceBatches:
    """Global `jax.Array` batches, sharded on the batch axis and transferred ahead.

    Args:
      batches: host-local NumPy batch pytrees, this process's slice of each
        global batch: a `RampupBatches`, its iterator, a grain iterator, any iterable.
      sharding: a `NamedSharding` whose spec splits axis 0, or a `Mesh` plus `axis`.
      prefetch: how many steps the background thread builds ahead; 0 builds
        each batch when it is asked for, without a thread.
      microbatch_size: yield each global batch as a list of `B(k) / m` global
        arrays of shape `(m, ...)`, in batch order on one process (with several,
        micro-batch `j` holds each process's `j`-th share: every sample once).
      axis: the mesh axis of the batch, when `sharding` is a `Mesh`.

    Returns:
      A `DeviceBatches` iterator; `get_state()`/`set_state()` pass through
      to the source.

    Raises:
      ValueError: before any transfer, when the data axis (or the micro-batch
        size) does not divide a step's global size.
    """
    return DeviceBatches(
        batches, batch_sharding(sharding, axis), prefetch=prefetch, microbatch_size=microbatch_size
    )


def _abstract(example: Any, size: int, sharding: NamedSharding) -> Any:
    def leaf(x: Any) -> jax.ShapeDtypeStruct:
        shape = np.shape(x)
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        return jax.ShapeDtypeStruct((size, *shape[1:]), dtype, sharding=sharding)

    return jax.tree_util.tree_map(leaf, example)


def precompile(
    fn: Callable[..., Any],
    plan: Plan | Schedule,
    example: Any,
    sharding: NamedSharding | Mesh,
    *,
    until_step: int | None = None,
    microbatch_size: int | None = None,
    args: tuple[Any, ...] = (),
    axis: str | tuple[str, ...] | None = None,
) -> dict[int, jax.stages.Compiled]:
    """Compiles `fn(*args, batch)` ahead of time for every batch shape the schedule gives.

    Pass the jitted function the training loop calls: its later calls reuse
    these compilations.

    Args:
      fn: a function of `(*args, batch)`, jitted or not.
      plan: the schedule or its `Plan`.
      example: one batch (host-local is fine): its leaves give the trailing
        shapes and dtypes; the leading axis is replaced by each size.
      sharding: the batch `NamedSharding`, or a `Mesh` plus `axis`.
      until_step: compile for steps `[0, until_step)`; None for every segment.
      microbatch_size: compile the one micro-batch shape `(m, ...)` instead.
      args: the arguments before the batch (arrays or `jax.ShapeDtypeStruct`s).
      axis: the mesh axis of the batch, with a `Mesh`.

    Returns:
      `{size: compiled}`; its length is the number of compilations.
    """
    sharding = batch_sharding(sharding, axis)
    sizes = check_schedule(plan, sharding, until_step=until_step, microbatch_size=microbatch_size)
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return {
        size: jitted.lower(*args, _abstract(example, size, sharding)).compile() for size in sizes
    }


# --- learning rates ---------------------------------------------------------------------------


def optax_schedule(
    base: float | Callable[[Any], Any],
    schedule: Schedule | Plan,
    *,
    rule: str | Callable[[float], float] = "sqrt",
    reference_size: int | None = None,
    unit: str = "steps",
    tokens_per_sample: int | None = None,
) -> Callable[[Any], jax.Array]:
    """`rampup.scaled` as an optax schedule: traceable, for `jit`, `vmap` and `inject_hyperparams`.

    The plan's segments become constants; a step (a traced int) finds its
    segment with `searchsorted` over the segments' first steps, and its factor
    and `t` (the samples or tokens before it) in closed form from that
    segment. No host callback. `t` is a float for `unit="samples"` and
    `"tokens"` (exact below 2**24 in float32), the step itself for "steps".

    Args:
      base: a number, or a function of `t` that takes a jax value (an optax
        schedule such as `optax.warmup_cosine_decay_schedule(...)`).
      schedule: a segmented batch schedule or its `Plan`. A `from_fn` schedule
        has no segments to compile in and is refused.
      rule: "sqrt", "linear", "none" or a callable of the ratio (see `rampup.scaled`).
      reference_size: the batch size `base` was tuned for; default the largest size.
      unit: what `t` counts: "steps", "samples" or "tokens".
      tokens_per_sample: tokens in one sample, with `unit="tokens"`.

    Returns:
      A function of the step that returns a float array, for `learning_rate=`.
    """
    scaling = resolve(
        base,
        schedule,
        rule=rule,
        reference_size=reference_size,
        unit=unit,
        tokens_per_sample=tokens_per_sample,
    )
    table = scaling.segment_table()
    real = jnp.result_type(float)  # float32, or float64 under jax_enable_x64
    first_steps = table.first_steps
    t_offsets, t_per_step = table.t_offsets.astype(real), table.t_per_step.astype(real)
    factors = table.factors.astype(real)

    def value(step: Any) -> jax.Array:
        step = jnp.maximum(jnp.asarray(step), 0)  # a step before 0 is step 0, as optax clamps
        i = jnp.searchsorted(first_steps, step, side="right") - 1
        factor = jnp.asarray(factors)[i]
        if not callable(scaling.base):
            return scaling.base * factor
        if scaling.unit == "steps":
            t = step
        else:
            since = (step - jnp.asarray(first_steps)[i]).astype(real)
            t = jnp.asarray(t_offsets)[i] + since * jnp.asarray(t_per_step)[i]
        return jnp.asarray(scaling.base(t), real) * factor

    return value


def _sq_norm(tree: Any) -> jax.Array:
    return sum(
        (jnp.sum(jnp.square(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(tree)),
        jnp.zeros((), jnp.float32),
    )


def grad_with_noise_norms(
    loss_fn: Callable[[Any, Any], jax.Array], mesh: Mesh, *, axis: str = "data"
) -> Callable[[Any, Any], tuple[jax.Array, Any, jax.Array, jax.Array]]:
    """A data-parallel gradient that also gives the two norms `rampup.NoiseScale` needs.

    Each device takes the gradient of `loss_fn` on its shard of the batch, once;
    the gradients are averaged over `axis` (the all-reduce data parallelism does
    anyway), and on the way the squared norms of the per-device gradients
    (`|G_small|^2`, averaged over devices) and of the averaged one (`|G_big|^2`)
    are summed. Parameters are replicated; the batch is split on `axis`.

    Args:
      loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss over the batch.
      mesh: the device mesh.
      axis: the mesh axis the batch is split over.

    Returns:
      A function `(params, batch) -> (loss, grads, small_sq_norm, big_sq_norm)`
      to call inside `jax.jit`: `loss` and `grads` over the whole batch, and the
      norms for `NoiseScale.update(small, big, B // mesh.shape[axis], B)`.
    """
    if axis not in mesh.shape:
        raise ValueError(f"axis={axis!r} is not an axis of the mesh {dict(mesh.shape)}")

    def per_device(params: Any, batch: Any) -> tuple[jax.Array, Any, jax.Array, jax.Array]:
        # Varying per device, so that the gradient is this device's own: the gradient of
        # replicated parameters would come out summed over the devices already.
        params = jax.lax.pcast(params, axis, to="varying")
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        small = jax.lax.pmean(_sq_norm(grads), axis)
        grads = jax.lax.pmean(grads, axis)
        return jax.lax.pmean(loss, axis), grads, small, _sq_norm(grads)

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(axis)),
        out_specs=PartitionSpec(),
    )
