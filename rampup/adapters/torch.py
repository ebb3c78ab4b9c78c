"""PyTorch: batch-size ramp-up as an `IterableDataset`, exact with any number of workers.

    loader = DataLoader(RampupIterableDataset(source, schedule), batch_size=None, num_workers=W)

A map-style source is read by random access: an iteration that starts at step
`s` has DataLoader worker `w` of `W` build the steps `k >= s` with
`(k - s) % W == w`, and the DataLoader's round-robin, which starts at worker 0,
puts them back in order, so every `W` yields the `W = 0` sequence. The core
(`rampup.RampupBatches`) does every index, size and shard computation.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset, Sampler, get_worker_info

try:
    from torchdata.nodes import BaseNode as _BaseNode
except ImportError:  # torchdata is optional; RampupNode says how to install it
    _BaseNode = object

from rampup import (
    AdaptiveSchedule,
    BatchIterator,
    Follower,
    Plan,
    RampupBatches,
    Schedule,
    StreamBatcher,
    default_collate,
)
from rampup.protocol import (
    ScheduledIterator,
    WorkerStride,
    as_plan,
    check_collate,
    check_count,
    check_flag,
    check_policy,
    make_state,
    mapping_like,
    read_state,
    resolve,
    stream_fields,
)

__all__ = [
    "GradNoiseNorms",
    "RampupBatchSampler",
    "RampupIterableDataset",
    "RampupIterator",
    "RampupNode",
    "as_tensors",
    "follow",
    "lr_lambda",
    "tensor_collate",
]


def as_tensors(batch: Any) -> Any:
    """NumPy arrays in a pytree become tensors that share their memory (`torch.from_numpy`).

    Dicts (a `defaultdict` with its factory), lists, tuples, namedtuples and
    dataclasses keep their type and structure; arrays of
    a dtype torch has no tensor for (strings, objects) and other leaves stay as
    they are.

    Args:
      batch: a pytree of NumPy arrays, as the default collate builds it.

    Returns:
      The same pytree with `torch.Tensor` leaves.
    """
    if isinstance(batch, np.ndarray):
        try:
            return torch.from_numpy(batch)
        except TypeError:  # a dtype without a tensor type, e.g. strings
            return batch
    if isinstance(batch, Mapping):
        return mapping_like(batch, {k: as_tensors(v) for k, v in batch.items()})
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(
            batch,
            **{
                f.name: as_tensors(getattr(batch, f.name))
                for f in dataclasses.fields(batch)
                if f.init
            },
        )
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(as_tensors(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(as_tensors(v) for v in batch)
    return batch


def _rows(batch: Any, step: int) -> int:
    """The leading axis shared by every array of a batch pytree."""
    shapes = [tuple(leaf.shape) for leaf in _leaves(batch)]
    if any(not shape for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
        raise ValueError(
            f"the leaves of the batch at step {step} do not share a leading "
            f"batch axis, so it cannot be cut into micro-batches: shapes {shapes}"
        )
    return int(shapes[0][0])


def _init_fields(batch: Any) -> list[str]:
    """The fields a dataclass batch is rebuilt from (as the collate stacks them)."""
    return [f.name for f in dataclasses.fields(batch) if f.init]


def _leaves(batch: Any) -> list[Any]:
    if batch is None:  # a None leaf (the collate keeps it) has no rows to cut
        return []
    if isinstance(batch, Mapping):
        return [leaf for v in batch.values() for leaf in _leaves(v)]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return [leaf for name in _init_fields(batch) for leaf in _leaves(getattr(batch, name))]
    if isinstance(batch, (list, tuple)):
        return [leaf for v in batch for leaf in _leaves(v)]
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return [batch]
    raise TypeError(
        f"a {type(batch).__name__} leaf cannot be cut into micro-batches; "
        "microbatch_size needs batches whose leaves are tensors, NumPy arrays "
        "or None"
    )


def _split(batch: Any, count: int) -> list[Any]:
    """`count` pytrees of the batch's consecutive rows, in order (tensor views, no copy)."""
    if isinstance(batch, torch.Tensor):
        return list(batch.chunk(count))
    if isinstance(batch, np.ndarray):
        return np.split(batch, count)
    kind: Any = type(batch)
    if batch is None:
        return [None] * count
    if isinstance(batch, Mapping):
        parts = {k: _split(v, count) for k, v in batch.items()}
        return [mapping_like(batch, {k: p[j] for k, p in parts.items()}) for j in range(count)]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        fields = {name: _split(getattr(batch, name), count) for name in _init_fields(batch)}
        return [
            dataclasses.replace(batch, **{k: p[j] for k, p in fields.items()}) for j in range(count)
        ]
    columns = [_split(v, count) for v in batch]
    if hasattr(batch, "_fields"):
        return [kind(*(c[j] for c in columns)) for j in range(count)]
    return [kind(c[j] for c in columns) for j in range(count)]


def _is_map_style(source: Any) -> bool:
    # torch's IterableDataset inherits a __getitem__ that only raises.
    if isinstance(source, IterableDataset):
        return False
    return hasattr(source, "__len__") and hasattr(source, "__getitem__")


def _world(value: int | None, query: Callable[[], int], fallback: int) -> int:
    if value is not None:
        return value
    if dist.is_available() and dist.is_initialized():
        return query()
    return fallback


def _check_rank(rank: Any, world_size: Any, got_rank: Any, got_world_size: Any) -> None:
    """Refuses a rank outside `[0, world_size)` in torch's words, saying where each came from."""
    if (
        isinstance(got_world_size, bool)
        or not isinstance(got_world_size, int)
        or got_world_size < 1
    ):
        raise ValueError(f"world_size={got_world_size!r} is not valid; it must be an int >= 1")
    if isinstance(got_rank, bool) or not isinstance(got_rank, int):
        raise TypeError(f"rank={got_rank!r} is not an int; valid: 0..{got_world_size - 1}")
    if 0 <= got_rank < got_world_size:
        return
    where = "" if world_size is not None else " (the default: torch.distributed is not initialized)"
    fix = (
        f"pass world_size= with rank={got_rank}" if world_size is None else "fix rank or world_size"
    )
    raise ValueError(
        f"rank={got_rank} is not valid for world_size={got_world_size}{where}; valid ranks: "
        f"0..{got_world_size - 1}; {fix}"
    )


def _stack_tensors(leaves: Sequence[Any]) -> Any:
    """Tensors stacked as tensors, and a row of Python numbers as one tensor row."""
    first = leaves[0]
    if isinstance(first, torch.Tensor):
        try:
            return torch.stack(list(leaves))
        except (RuntimeError, TypeError):
            return NotImplemented  # the core's collate names the mismatching element
    row = _numbers_row(first)
    if row is not None and all(_numbers_row(leaf) == row for leaf in leaves):
        return torch.tensor(list(leaves))
    return NotImplemented


def _numbers_row(value: Any) -> tuple[int, type] | None:
    """`(length, type)` of a non-empty list of Python ints or floats of one type, else None."""
    if type(value) is not list or not value:
        return None
    kinds = {type(v) for v in value}
    kind = kinds.pop()
    return (len(value), kind) if not kinds and kind in (int, float) else None


def tensor_collate(elements: Sequence[Any]) -> Any:
    """`rampup.default_collate` for elements that hold torch tensors, yielding tensors.

    Tensors stack with `torch.stack` (no round trip through NumPy, as
    Hugging Face `datasets` in torch format give them), a list of Python
    numbers of one type becomes one row of a tensor (a vector in `datasets`'
    python format), and NumPy arrays and scalars stack as the core stacks them,
    then become tensors (`as_tensors`). It is also a `DataLoader`'s
    `collate_fn`: `DataLoader(ds, batch_sampler=RampupBatchSampler(...),
    collate_fn=tensor_collate)`.

    Args:
      elements: the batch's elements, all of the same structure.

    Returns:
      One pytree whose leaves have a leading batch axis, tensors where torch has a dtype.
    """
    return as_tensors(default_collate(elements, stack=_stack_tensors))


def _collate_for(source: Any, collate: Callable[[list[Any]], Any] | None) -> tuple[Any, bool]:
    """The collate that batches `source`, and whether its batches still need `as_tensors`.

    A given collate's batches are yielded as they are; an array source takes the core's
    fast path (one fancy index, then `as_tensors`); any other source `tensor_collate`,
    whose batches are tensors already.
    """
    if collate is not None:
        return collate, False
    if isinstance(source, np.ndarray):
        return None, True
    return tensor_collate, False


def _steps_left(batches: RampupBatches, step: int, shift: int, what: str) -> int:
    """How many batches an iteration from `(step, shift)` yields; finite data only."""
    count = batches.steps_left(step, shift)
    if count is None:
        raise TypeError(f"a {what} over endless data (num_epochs=None) has no len()")
    return count


class RampupIterator(ScheduledIterator):
    """The batches one DataLoader worker (or the main process) yields.

    `get_state()` is the core's state of this worker's next step
    (`RampupBatches.state`, or a stream's), and `set_state()`
    continues from it with the worker's stride kept; `state_dict()` and
    `load_state_dict()` are their torch names, which torchdata's
    `StatefulDataLoader` saves and restores per worker.
    """

    def __init__(
        self,
        batches: BatchIterator | StreamBatcher,
        convert: bool,
        microbatch_size: int | None = None,
    ) -> None:
        self.batches = batches
        self.convert = convert
        self.microbatch_size = microbatch_size
        self.plan = batches.plan
        self.process_index, self.process_count = batches.process_index, batches.process_count
        self.end, self.drop_remainder = batches.end, batches.drop_remainder

    @property
    def step(self) -> int:
        """The step of the next batch this iterator yields."""
        return self.batches.step

    @property
    def shift(self) -> int:
        """The data position's distance from the plan's offsets."""
        return self.batches.shift

    def __next__(self) -> Any:
        step = self.batches.step
        batch = next(self.batches)
        batch = as_tensors(batch) if self.convert else batch
        if self.microbatch_size is None:
            return batch
        rows, planned = _rows(batch, step), self._planned_rows(step)
        # A stream's end is not known ahead: its last batch may be short, never long.
        if rows != planned and (not isinstance(self.batches, StreamBatcher) or rows > planned):
            raise ValueError(
                f"the collate gave {rows} rows at step {step}, but this process's share of the "
                f"batch is {planned} rows (the plan's): micro-batches are counted from the "
                "plan, so a collate used with microbatch_size must give one row per element"
            )
        count = self.plan.microbatches(step, self.microbatch_size, self.process_count, rows=rows)
        return _split(batch, count)

    def _planned_rows(self, step: int) -> int:
        """This process's rows at `step` by the plan, the end of the data included."""
        start, stop = self.plan.local_window(
            step,
            self.process_index,
            self.process_count,
            end=self.end,
            drop_remainder=self.drop_remainder,
            shift=self.shift,
        ) or (0, 0)
        return stop - start

    def get_state(self) -> dict[str, Any]:
        """The state of the next batch this iterator builds; JSON-serializable."""
        return self.batches.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a state written by `get_state()`."""
        self.batches.set_state(state)

    state_dict = get_state
    load_state_dict = set_state


class _Restartable:
    """Where the next iteration starts, and the progress of the latest one run in this process.

    `set_step` / `set_state` apply to the next iteration started; `get_state()` is
    the latest iteration's progress (what torchdata's wrappers save), or the next
    start when none ran since. `state_dict` and `load_state_dict` are the torch names.
    """

    plan: Plan
    _start: tuple[int, int] = (0, 0)  # (step, shift) of the next iteration
    _latest: ScheduledIterator | None = None

    @property
    def step(self) -> int:
        """The step the next iteration starts at."""
        return self._start[0]

    def set_step(self, step: int) -> None:
        """Makes the next iteration start at global batch `step` (the training loop's step).

        The data position keeps its distance from the schedule's offsets (the shift of
        a restore that kept its position under a changed schedule).
        """
        self.set_state(self._state_at(check_count(step, "step"), self._start[1]))

    def get_state(self) -> dict[str, Any]:
        """The core state of the latest iteration's next batch, or of the next start; JSON-able."""
        if self._latest is not None:
            return self._latest.get_state()
        return self._state_at(*self._start)

    def _state_at(self, step: int, shift: int) -> dict[str, Any]:
        raise NotImplementedError

    def set_state(self, state: dict[str, Any]) -> None:
        """Makes the next iteration start where `state` (from `get_state()`) says.

        Raises:
          ValueError: the state is not a rampup state, or was written for another data
            order or under another schedule (see `on_data_change`, `on_schedule_change`).
        """
        self._start, self._latest = self._read_state(state), None

    def _read_state(self, state: dict[str, Any]) -> tuple[int, int]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """`get_state()`, by its torch name."""
        return self.get_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """`set_state(state)`, by its torch name."""
        self.set_state(state)


class _Refused(Iterator[Any]):
    """An iteration that raises its error at the first `next()`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __next__(self) -> Any:
        raise self.error


class RampupIterableDataset(_Restartable, IterableDataset):
    """Batches of a growing size for `DataLoader(ds, batch_size=None, num_workers=W)`.

    Each item is one global batch's slice for this rank, as tensors. Any `W`
    yields exactly the `W = 0` sequence for a map-style source; an
    iterable-only source needs `W <= 1`.

    `set_step`, `set_state` and `load_state_dict` apply to the next iteration
    started (`iter(loader)`), in every worker setup: an iteration already
    started is not moved. DataLoader workers take their copy of the dataset
    when they start, so `persistent_workers=True`, whose workers keep that
    copy from one iteration to the next, refuses (a `RuntimeError` at the next
    iteration) a start changed after they started. `state_dict()` is the state
    of the next batch of the latest iteration run in this process (its
    progress, as torchdata's `IterableWrapper` expects), or of the next
    iteration's start when none ran since.

    Args:
      source: a map-style source (`__len__` and `__getitem__`: a torch map-style
        `Dataset`, a NumPy array, a list, a grain `MapDataset`), read by random
        access; or any other iterable, batched as a stream (`num_workers <= 1`,
        already sharded per rank, no shuffle, no seeking).
      schedule: a `rampup.Schedule` or `rampup.Plan`.
      shuffle: shuffle the source anew in every epoch (map-style only).
      seed: the shuffle seed, an int; every rank and worker must use the same one.
      num_epochs: end after this many passes over a map-style source; None is endless.
      drop_remainder: leave out a last partial batch.
      collate: turns a list of elements into a batch. Its output is yielded as
        it is; the default stacks NumPy pytrees and yields tensors.
      rank: this process's index; default `torch.distributed.get_rank()` when
        the process group is initialized, else 0.
      world_size: how many processes split every global batch; default
        `torch.distributed.get_world_size()` when initialized, else 1.
      on_schedule_change: "raise" or "continue" when a restored state's schedule differs.
      on_data_change: "raise" or "continue" when a restored state's data fields (the
        source's length, `shuffle`, `seed`, `num_epochs`, `drop_remainder`; an
        iterable source's type name) differ.
      microbatch_size: yield each step as a list of `B(k) / (microbatch_size *
        world_size)` micro-batches of exactly `microbatch_size` rows, in batch
        order (fixed shapes for `torch.compile` and CUDA graphs; accumulate
        gradients over the list). Every size must split, checked when built.
    """

    def __init__(
        self,
        source: Any,
        schedule: Schedule | Plan,
        *,
        shuffle: bool = False,
        seed: int | None = 0,
        num_epochs: int | None = None,
        drop_remainder: bool = False,
        collate: Callable[[list[Any]], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        on_schedule_change: str = "raise",
        on_data_change: str = "raise",
        microbatch_size: int | None = None,
    ) -> None:
        super().__init__()
        if source is None:
            raise TypeError(
                "RampupIterableDataset needs a source: a map-style dataset (with "
                "__len__ and __getitem__) or an iterable of elements, got None"
            )
        shuffle = check_flag(shuffle, "shuffle")
        if shuffle and seed is None:
            raise TypeError(
                "shuffle=True needs an int seed (the same on every rank and worker), got seed=None"
            )
        self.rank = _world(rank, dist.get_rank, 0)
        self.world_size = _world(world_size, dist.get_world_size, 1)
        _check_rank(rank, world_size, self.rank, self.world_size)
        self.collate = check_collate(collate)
        self._batch_collate, self._convert = _collate_for(source, self.collate)
        self.drop_remainder = check_flag(drop_remainder, "drop_remainder")
        self.on_schedule_change = check_policy(on_schedule_change)
        self.on_data_change = check_policy(on_data_change, "on_data_change")
        # How often the main process moved the start: a persistent worker compares.
        self._moves = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._moves_seen = 0
        self._iterations = 0
        if _is_map_style(source):
            self.source = None
            self.batches: RampupBatches | None = RampupBatches(
                source,
                schedule,
                shuffle_seed=seed if shuffle else None,
                num_epochs=num_epochs,
                drop_remainder=drop_remainder,
                collate=self._batch_collate,
                process_index=self.rank,
                process_count=self.world_size,
                on_schedule_change=on_schedule_change,
                on_data_change=on_data_change,
            )
            self.plan = self.batches.plan
            self.microbatch_size = self._check_microbatches(microbatch_size)
            return
        for name, value in (("shuffle", shuffle), ("num_epochs", num_epochs)):
            if value:
                raise ValueError(
                    f"{name}={value!r} needs a map-style source (with __len__ and __getitem__), "
                    f"but the source ({type(source).__name__}) can only be iterated: shuffle and "
                    "bound the stream itself, or pass a map-style source"
                )
        if not isinstance(source, Iterable):
            raise TypeError(
                f"RampupIterableDataset needs a map-style dataset or an iterable, "
                f"got {type(source).__name__}"
            )
        self.source = source
        self.batches = None
        self.plan = as_plan(schedule)
        self.plan.check_processes(self.rank, self.world_size)
        self.microbatch_size = self._check_microbatches(microbatch_size, start=0)

    def _check_microbatches(
        self, microbatch_size: int | None, start: int | None = None, shift: int = 0
    ) -> int | None:
        """Refuses a size from `start` on that `microbatch_size * world_size` does not divide.

        `start=None` (built, where a restore may follow): some step must be legal.
        `shift` moves the positions as in `RampupBatches.check_end`.
        """
        if microbatch_size is None:
            return None
        end = None if self.batches is None else self.batches.end
        if start is None and self.on_schedule_change == "continue":
            end = None  # a restore may move the positions: the end is checked at the start
        return self.plan.check_microbatches(
            microbatch_size,
            self.world_size,
            start=start,
            end=end,
            drop_remainder=self.drop_remainder,
            shift=shift,
        )

    def _read_state(self, state: dict[str, Any]) -> tuple[int, int]:
        if self.batches is not None:
            step, shift = self.batches.read_state(state)
            self._check_microbatches(self.microbatch_size, start=step, shift=shift)
            return step, shift
        step, shift = read_state(
            state,
            self.plan,
            self.on_schedule_change,
            data_fields=self._stream_fields(),
            on_data_change=self.on_data_change,
        )
        if step or shift:
            self._refuse_seek(step)
        return step, shift

    def _stream_fields(self) -> dict[str, int | str]:
        return stream_fields(type(self.source).__name__, self.drop_remainder)

    def _state_at(self, step: int, shift: int) -> dict[str, Any]:
        if self.batches is not None:
            return self.batches.state(step, shift)
        return make_state(self.plan, step, shift, **self._stream_fields())

    def set_state(self, state: dict[str, Any]) -> None:
        """Makes the next iteration start where `state` (from `get_state()`) says.

        With DataLoader workers the progress of an iteration lives in the
        workers' copies, which torchdata's `StatefulDataLoader` saves; this
        process's `get_state()` then knows the start only.

        Raises:
          ValueError: the state is not a rampup state, or was written under another schedule.
          TypeError: the source can only be iterated and the state is not at step 0.
        """
        super().set_state(state)
        if get_worker_info() is None:
            self._moves += 1
        self._moves_seen = int(self._moves)

    def _refuse_seek(self, step: int) -> None:
        raise TypeError(
            f"cannot start at step {step}: the source ({type(self.source).__name__}) can only be "
            "iterated, and a stream cannot seek. Pass a map-style source (with __len__ and "
            "__getitem__), which starts at any step in O(1), or resume the running iterator "
            "from its own state_dict() under torchdata's StatefulDataLoader"
        )

    def set_epoch(self, epoch: int) -> None:
        """Refuses the call of a wrapper that shards every batch again; else does nothing.

        The dataset reshuffles every epoch of its data by itself. What calls
        `set_epoch` on a dataset is a wrapper: accelerate's prepared DataLoader
        calls it at every iteration, and with more than one process it splits
        the batches over the processes once more, although each rank already
        yields its own slice of every global batch.

        Raises:
          ValueError: more than one process (this dataset's `world_size`, or
            the initialized process group's).
        """
        check_count(epoch, "epoch")
        world = max(self.world_size, _world(None, dist.get_world_size, 1))
        if world > 1:
            raise ValueError(
                f"RampupIterableDataset (rank {self.rank} of {self.world_size}) got set_epoch("
                f"{epoch}) with {world} processes: accelerate's prepared DataLoader calls it, "
                "and it splits every batch over the processes once more, although each rank "
                "already yields its own slice of every global batch, which loses data and "
                "changes the sizes. Do not pass this DataLoader to accelerator.prepare(): "
                "prepare the model and optimizer only, iterate the DataLoader as it is and move "
                "each batch with accelerate.utils.send_to_device(batch, accelerator.device); or "
                "use RampupBatchSampler"
            )

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker_index, worker_count = (0, 1) if info is None else (info.id, info.num_workers)
        if info is not None:
            if self._iterations and int(self._moves) != self._moves_seen:
                # Raised at next(), where the DataLoader passes a worker's error on.
                return _Refused(
                    RuntimeError(
                        "set_step, set_state or load_state_dict moved the start of "
                        "RampupIterableDataset after its DataLoader's persistent workers "
                        "started: each worker keeps the copy of the dataset it started with, "
                        "and which iteration the move was meant for cannot be told apart. "
                        "Build the DataLoader with persistent_workers=False (its workers start "
                        "from the dataset as it is at iter(loader)), or use "
                        "RampupBatchSampler, whose state lives in the main process"
                    )
                )
            self._iterations += 1
        start = self._state_at(*self._start)
        if self.batches is not None:
            self._check_microbatches(self.microbatch_size, *self._start)
            iterator = RampupIterator(
                self.batches.iter_from(start, worker_index=worker_index, worker_count=worker_count),
                self._convert,
                self.microbatch_size,
            )
            self._latest = iterator
            return iterator
        if worker_count > 1:
            raise ValueError(
                f"RampupIterableDataset over an iterable-only source ({type(self.source).__name__})"
                f" cannot run in {worker_count} DataLoader workers: each worker would iterate its "
                "own copy of the stream, so every sample would appear once per worker and the "
                "schedule would be stretched. Use num_workers=0 or 1, or pass a map-style source "
                "(with __len__ and __getitem__), whose batches any number of workers build by "
                "random access"
            )
        source = cast(Iterable[Any], self.source)  # set whenever self.batches is None
        stream = StreamBatcher(
            iter(source),
            self.plan,
            drop_remainder=self.drop_remainder,
            collate=self._batch_collate,
            process_index=self.rank,
            process_count=self.world_size,
            on_schedule_change=self.on_schedule_change,
            on_data_change=self.on_data_change,
            parent_name=type(source).__name__,
        )
        self._latest = RampupIterator(stream, self._convert, self.microbatch_size)
        return self._latest

    def __getstate__(self) -> dict[str, Any]:
        # A worker starts from the start, not from this process's latest iteration.
        return {**self.__dict__, "_latest": None}

    def __len__(self) -> int:
        """How many batches an iteration from the current start step yields (finite only)."""
        if self.batches is None:
            raise TypeError("a RampupIterableDataset over an iterable-only source has no len()")
        return _steps_left(self.batches, *self._start, "RampupIterableDataset")

    def __repr__(self) -> str:
        kind = (
            repr(self.batches)
            if self.batches is not None
            else (f"stream of {type(self.source).__name__}")
        )
        return (
            f"RampupIterableDataset({kind}, rank {self.rank}/{self.world_size}, "
            f"start step {self.step})"
        )


class _IndexLists(BatchIterator):
    """A `RampupBatchSampler` iteration: this process's source indices of each step, as a list.

    Each step's positions and their indices come from the core; a batch
    iterator's fetch and collate, which a list of indices does not need, would
    cost about a third of the sampler's time per list.
    """

    def fetch(self, start: int, stop: int) -> list[int]:
        """The source indices of positions `[start, stop)`, as a list."""
        return self.batches.index_list(start, stop)


class RampupBatchSampler(_Restartable, Sampler[list[int]]):
    """This process's index lists of a growing batch size, for `DataLoader(ds, batch_sampler=...)`.

    Per step it yields this process's list of indices into a map-style dataset
    of `length` items: the batches of `rampup.RampupBatches(np.arange(length),
    schedule)` with the same options. The lists are made in the main process,
    so any `num_workers` and start method, `pin_memory`, a `collate_fn` and a
    dataset's `__getitems__` work as with torch's own samplers.

    `set_step`, `set_state` and `load_state_dict` apply to the next iteration
    started. `state_dict()` is the state of the next list of the latest
    iteration (its progress, as torchdata's samplers keep it), or of the next
    iteration's start when none ran since; through a `DataLoader` with workers
    the sampler runs ahead of the loop by `num_workers * prefetch_factor`
    lists, which `StatefulDataLoader` accounts for and a plain `DataLoader`
    does not: there, resume from the training loop's step with `set_step`.

    Args:
      length: the number of items of the dataset, >= 1.
      schedule: a `rampup.Schedule` or `rampup.Plan`.
      shuffle: shuffle the indices anew in every epoch.
      seed: the shuffle seed, an int, the same on every process; needed with shuffle.
      num_epochs: end after this many passes over the data; None is endless.
      drop_remainder: leave out a last partial batch.
      process_index: this process's index; default `torch.distributed.get_rank()`
        when the process group is initialized, else 0.
      process_count: how many processes split every global batch; default
        `torch.distributed.get_world_size()` when initialized, else 1.
      on_schedule_change: "raise" or "continue" when a restored state's schedule differs.
      on_data_change: "raise" or "continue" when a restored state's data fields
        (`length`, `shuffle`, `seed`, `num_epochs`, `drop_remainder`) differ.
    """

    def __init__(
        self,
        length: int,
        schedule: Schedule | Plan,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        num_epochs: int | None = None,
        drop_remainder: bool = False,
        process_index: int | None = None,
        process_count: int | None = None,
        on_schedule_change: str = "raise",
        on_data_change: str = "raise",
    ) -> None:
        super().__init__()
        shuffle = check_flag(shuffle, "shuffle")
        if shuffle and seed is None:
            raise TypeError(
                "shuffle=True needs an int seed (the same on every process), got seed=None"
            )
        self.batches = RampupBatches(
            range(check_count(length, "length", 1)),  # the items are the indices
            schedule,
            shuffle_seed=seed if shuffle else None,
            num_epochs=num_epochs,
            drop_remainder=drop_remainder,
            process_index=_world(process_index, dist.get_rank, 0),
            process_count=_world(process_count, dist.get_world_size, 1),
            on_schedule_change=on_schedule_change,
            on_data_change=on_data_change,
        )
        self.plan = self.batches.plan
        self.process_index = self.batches.process_index
        self.process_count = self.batches.process_count

    @property
    def batch_size(self) -> NoReturn:
        """Refused: the size follows the schedule, and a wrapper that reads it re-shards.

        accelerate's `prepare(loader)` reads it to deal the sampler's lists out to
        its processes in turn, which with a rampup sampler (each process already
        holds its own slice of every step) loses data and mixes steps.

        Raises:
          TypeError: always, naming the fix.
        """
        raise TypeError(
            f"RampupBatchSampler (process {self.process_index} of {self.process_count}) has no "
            "batch_size: the size follows the schedule, and each process already gets its own "
            "slice of every global batch. A wrapper that reads batch_size to deal the lists out "
            "to its processes again (accelerate's accelerator.prepare(loader), Lightning's "
            "distributed sampler) would lose data and mix steps. With accelerate, prepare the "
            "model and optimizer only and move each batch with "
            "accelerate.utils.send_to_device(batch, accelerator.device); with Lightning, pass "
            "Trainer(use_distributed_sampler=False)"
        )

    def __iter__(self) -> Iterator[list[int]]:
        step, shift = self._start
        self.batches.check_start(step, shift)
        self._latest = _IndexLists(self.batches, WorkerStride(step), shift)
        return self._latest

    def __len__(self) -> int:
        """How many lists an iteration from the current start step yields (finite only)."""
        return _steps_left(self.batches, *self._start, "RampupBatchSampler")

    def _read_state(self, state: dict[str, Any]) -> tuple[int, int]:
        return self.batches.read_state(state)

    def _state_at(self, step: int, shift: int) -> dict[str, Any]:
        return self.batches.state(step, shift)

    def __repr__(self) -> str:
        return (
            f"RampupBatchSampler(length={len(self.batches.source)}, {self.plan.schedule}, "
            f"process {self.process_index}/{self.process_count}, start step {self.step})"
        )


class _NodeCursor:
    """A torchdata node as the iterator a `StreamBatcher` pulls from; its state is the node's."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def __iter__(self) -> _NodeCursor:
        return self

    def __next__(self) -> Any:
        return next(self.node)

    def get_state(self) -> dict[str, Any]:
        return self.node.state_dict()

    def set_state(self, state: dict[str, Any]) -> None:
        self.node.reset(state)


class RampupNode(_BaseNode):  # type: ignore[misc,valid-type]
    """Whole batches of a growing size as a `torchdata.nodes.BaseNode`.

    `reset(initial_state)` starts at step 0 or at a state from `get_state()`
    (in O(1) for a map-style source), so `nodes.Loader(...).state_dict()` and
    `load_state_dict()` resume exactly; downstream nodes (`ParallelMapper`,
    `Prefetcher`, `PinMemory`) see batches as any other node's items.

    Args:
      source: a map-style source (`__len__` and `__getitem__`), read by random
        access; or a `BaseNode` of elements, batched as a stream (this
        process's share of it, restored through the node's own state).
      schedule: a `rampup.Schedule` or `rampup.Plan`.
      shuffle: shuffle a map-style source anew in every epoch.
      seed: the shuffle seed, an int; needed with shuffle.
      num_epochs: end after this many passes over a map-style source; None is endless.
      drop_remainder: leave out a last partial batch.
      collate: turns a list of elements into a batch, yielded as it is; the
        default (`tensor_collate`) yields tensors.
      process_index: this process's index; default from `torch.distributed`, else 0.
      process_count: how many processes split every global batch; default
        from `torch.distributed`, else 1.
      on_schedule_change: "raise" or "continue" when a restored state's schedule differs.
      on_data_change: "raise" or "continue" when a restored state's data fields (a
        map-style source's length, `shuffle`, `seed`, `num_epochs`, `drop_remainder`;
        a node's type name) differ.
    """

    def __init__(
        self,
        source: Any,
        schedule: Schedule | Plan,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        num_epochs: int | None = None,
        drop_remainder: bool = False,
        collate: Callable[[list[Any]], Any] | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        on_schedule_change: str = "raise",
        on_data_change: str = "raise",
    ) -> None:
        if _BaseNode is object:
            raise ImportError(
                "RampupNode is a torchdata node: pip install 'torchdata>=0.10' (or rampup[all])"
            )
        super().__init__()
        shuffle = check_flag(shuffle, "shuffle")
        if shuffle and seed is None:
            raise TypeError("shuffle=True needs an int seed (the same on every process)")
        batch_collate, self.convert = _collate_for(source, check_collate(collate))
        options: dict[str, Any] = dict(
            drop_remainder=drop_remainder,
            process_index=_world(process_index, dist.get_rank, 0),
            process_count=_world(process_count, dist.get_world_size, 1),
            on_schedule_change=on_schedule_change,
            on_data_change=on_data_change,
        )
        self.source = source
        self.batches: RampupBatches | None = None
        if isinstance(source, _BaseNode):
            if shuffle or num_epochs is not None:
                raise ValueError(
                    "shuffle and num_epochs need a map-style source; a node of elements is "
                    "batched as a stream in its own order, to its own end"
                )
            self.plan = as_plan(schedule)
            self.options = {
                **options,
                "collate": batch_collate,
                "parent_name": type(source).__name__,
            }
        elif _is_map_style(source):
            self.batches = RampupBatches(
                source,
                schedule,
                shuffle_seed=seed if shuffle else None,
                num_epochs=num_epochs,
                collate=batch_collate,
                **options,
            )
            self.plan = self.batches.plan
        else:
            raise TypeError(
                f"RampupNode needs a map-style source (with __len__ and __getitem__) or a "
                f"torchdata BaseNode of elements, got {type(source).__name__}"
            )
        self._iterator: ScheduledIterator | None = None

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        """Starts at step 0, or where `initial_state` (from `get_state()`) says."""
        super().reset(initial_state)
        if self.batches is not None:
            self._iterator = self.batches.iter_from(initial_state or 0)
            return
        stream = StreamBatcher(_NodeCursor(self.source), self.plan, **self.options)
        if initial_state is None:
            self.source.reset(None)
        else:
            stream.set_state(initial_state)
        self._iterator = stream

    def next(self) -> Any:
        """The next batch; tensors unless a `collate` was given."""
        batch = next(cast(ScheduledIterator, self._iterator))
        return as_tensors(batch) if self.convert else batch

    def get_state(self) -> dict[str, Any]:
        """The core state of the next batch (with the source node's, for a stream)."""
        return cast(ScheduledIterator, self._iterator).get_state()


# --- learning rates ---------------------------------------------------------------------------


def lr_lambda(
    schedule: Schedule | Plan,
    *,
    base: float | Callable[[int], float] = 1.0,
    rule: str | Callable[[float], float] = "sqrt",
    reference_size: int | None = None,
    unit: str = "steps",
    tokens_per_sample: int | None = None,
) -> Callable[[int], float]:
    """`rampup.scaled` as the factor function of `torch.optim.lr_scheduler.LambdaLR`.

    `LambdaLR` multiplies each group's initial `lr` by the factor at its step
    count, so with `base=1.0` the optimizer's `lr` is the value tuned at
    `reference_size`. Call `scheduler.step()` after each `optimizer.step()`.

    Args:
      schedule: the batch schedule (a `Schedule` or its `Plan`).
      base: a number, or a function of `t` (see `rampup.scaled`); default 1.0.
      rule: "sqrt", "linear", "none" or a callable of the ratio.
      reference_size: the batch size the `lr` was tuned for; default the largest size.
      unit: what `base`'s `t` counts: "steps", "samples" or "tokens".
      tokens_per_sample: tokens in one sample, with `unit="tokens"`.

    Returns:
      A plain function of the step (a pure function: `LambdaLR.state_dict`
      needs nothing of it, and a resumed scheduler gets the same factors).
    """
    scaling = resolve(
        base,
        schedule,
        rule=rule,
        reference_size=reference_size,
        unit=unit,
        tokens_per_sample=tokens_per_sample,
    )

    def factor(step: int) -> float:
        return scaling(step)

    return factor


def follow(loader: DataLoader, step: int | None = None) -> Follower:
    """Iterates a DataLoader over an adaptive schedule, restarting its workers when needed.

    DataLoader workers are other processes: each holds the decisions made
    before it started. This restarts the loader at the training step (an
    O(1) seek) whenever a decision was made since, and before its workers run
    past the steps they know; with `num_workers=0` it never restarts. The
    lag must exceed the loader's run-ahead, `num_workers * prefetch_factor`.

    Args:
      loader: a `DataLoader` over a `RampupIterableDataset` with a map-style
        source and an `AdaptiveSchedule`, without `persistent_workers`.
      step: the first step; default the dataset's (`set_step`, `load_state_dict`).

    Returns:
      A `rampup.Follower`: iterate it for the batches; `get_state()` is the
      data state of the next step.

    Raises:
      ValueError: the lag does not exceed the run-ahead, or the workers persist.
      TypeError: the dataset is not a seekable `RampupIterableDataset` over an
        adaptive schedule.
    """
    dataset = loader.dataset
    if not isinstance(dataset, RampupIterableDataset) or dataset.batches is None:
        raise TypeError(
            f"follow needs a DataLoader over a RampupIterableDataset with a "
            f"map-style source (it restarts by seeking), got {dataset!r}"
        )
    if not isinstance(dataset.plan.schedule, AdaptiveSchedule):
        raise TypeError(
            f"follow is for an AdaptiveSchedule; {dataset.plan.schedule} never "
            "changes, so iterate the DataLoader itself"
        )
    workers = loader.num_workers
    if workers and loader.persistent_workers:
        raise ValueError(
            "follow restarts the DataLoader's workers so that they see new "
            "decisions; persistent_workers=True keeps the old ones: build the "
            "DataLoader with persistent_workers=False"
        )
    run_ahead = workers * (loader.prefetch_factor or 0) if workers else 0

    def start(first: int) -> Iterator[Any]:
        dataset.set_step(first)  # keeps the dataset's shift
        return iter(loader)

    batches, shift = dataset.batches, dataset._start[1]  # noqa: SLF001 -- this module's class
    return Follower(
        start,
        dataset.plan,
        state=lambda at: batches.state(at, shift),
        step=dataset.step if step is None else step,
        run_ahead=run_ahead,
        shares_decisions=workers == 0,
    )


class GradNoiseNorms:
    """The two squared gradient norms of `rampup.NoiseScale`, read from DDP's all-reduce.

    A DDP communication hook sees every gradient bucket twice: before the
    all-reduce (this rank's gradient, over its `B / world_size` samples) and
    after (the average over all ranks, over `B` samples). It sums the squares
    of both on the way, so the norms cost no extra pass over the gradients;
    `read()` averages the local one over the ranks (one scalar all-reduce), so
    that every rank feeds the same numbers to its estimator and every rank's
    `AdaptiveSchedule` makes the same decisions.

    Args:
      model: the `DistributedDataParallel` model; its comm hook is set here (a
        model has at most one).
      process_group: the group DDP reduces over; default the world.
    """

    def __init__(
        self, model: DistributedDataParallel, process_group: dist.ProcessGroup | None = None
    ) -> None:
        if not isinstance(model, DistributedDataParallel):
            raise TypeError(
                f"GradNoiseNorms needs a DistributedDataParallel model, got {type(model).__name__}"
            )
        self.process_group = process_group
        self._lock = threading.Lock()
        self._local = torch.zeros((), dtype=torch.float64)
        self._global = torch.zeros((), dtype=torch.float64)
        self._buckets = 0
        model.register_comm_hook(self, GradNoiseNorms._hook)

    def _add(self, name: str, tensor: torch.Tensor) -> None:
        value = tensor.detach().double().square().sum().cpu()
        with self._lock:
            setattr(self, name, getattr(self, name) + value)

    # No annotations: DDP compares them with the classes, and this module's are strings.
    def _hook(self, bucket):
        self._add("_local", bucket.buffer())
        with self._lock:
            self._buckets += 1

        def averaged(future: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            tensor = future.value()
            self._add("_global", tensor)
            return tensor

        return default_hooks.allreduce_hook(self.process_group, bucket).then(averaged)

    def read(self) -> tuple[float, float]:
        """`(small_sq_norm, big_sq_norm)` of the last backward pass, then starts afresh.

        Call it after `loss.backward()` on every rank (it all-reduces one scalar).

        Raises:
          RuntimeError: no gradient went through the hook since the last read.
        """
        with self._lock:
            if not self._buckets:
                raise RuntimeError(
                    "GradNoiseNorms.read(): no gradient was all-reduced since "
                    "the last read; call it after loss.backward()"
                )
            local, big = self._local.clone(), float(self._global)
            self._local.zero_()
            self._global.zero_()
            self._buckets = 0
        dist.all_reduce(local, group=self.process_group)
        return float(local) / dist.get_world_size(self.process_group), big
