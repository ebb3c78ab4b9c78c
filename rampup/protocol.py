"""The interface an adapter author builds on.

An adapter converts types; it never re-implements schedule, index or state
logic. It imports the public API (`rampup`, e.g. `Plan`, `RampupBatches`,
`StreamBatcher`) and, for everything else it needs from the core, this
module only: the names below are exported on purpose and stay stable for
adapters; anything not listed here is an internal of the core.

- Iterators: `ScheduledIterator`, the protocol every batch iterator exposes
  (`plan`, `step`, `process_index`, `process_count`, `end`, `drop_remainder`,
  `shift`, `get_state`/`set_state`); `WorkerStride`, the steps one loader
  worker builds.
- State: `make_state` and `read_state`, the one checkpoint format, and its keys
  as constants (`VERSION_KEY`, `STEP_KEY`, `POSITION_KEY`, `SCHEDULE_KEY`,
  `PARENT_KEY`; `STATE_VERSION`).
- Layout arithmetic: `ProcessLayout` (the one name of a process's place in a
  global batch), `microbatch_count`, and the errors every layout check raises,
  `not_divisible` and `cut_short`. `Plan` itself answers the rest
  (`local_window`, `microbatches`, `check_processes`, `check_microbatches`,
  `check_last_batch`, `offsets`).
- Arguments: `as_plan`, `check_count`, `check_flag`, `check_policy`,
  `check_collate`, validated as every rampup class validates them.
- Collate: `mapping_like`, `Allocate` (stacking into memory the adapter
  provides) and `spec` (a batch's structure, for error messages).
- Hyperparameters: `resolve`, which checks `rampup.scaled`'s arguments once
  and returns a `Scaling`, whose `segment_table()` a compiled learning-rate
  schedule looks its segments up in (`SegmentTable`).

See docs/concepts/adapters.md for a worked example.
"""

from rampup.batching import (
    DATA_KEYS,
    DROP_REMAINDER_KEY,
    EPOCHS_KEY,
    LENGTH_KEY,
    PARENT_KEY,
    POSITION_KEY,
    SCHEDULE_KEY,
    SEED_KEY,
    SHIFT_KEY,
    SHUFFLE_KEY,
    STATE_VERSION,
    STEP_KEY,
    STREAM_KEY,
    VERSION_KEY,
    as_plan,
    check_collate,
    check_policy,
    make_state,
    read_state,
    stream_fields,
)
from rampup.collate import Allocate, mapping_like, spec
from rampup.iterator import ScheduledIterator
from rampup.plan import ProcessLayout, WorkerStride, cut_short, microbatch_count
from rampup.scaling import Scaling, SegmentTable, resolve
from rampup.schedules import check_count, check_flag, not_divisible

__all__ = [
    "DATA_KEYS",
    "DROP_REMAINDER_KEY",
    "EPOCHS_KEY",
    "LENGTH_KEY",
    "PARENT_KEY",
    "POSITION_KEY",
    "SCHEDULE_KEY",
    "SEED_KEY",
    "SHIFT_KEY",
    "SHUFFLE_KEY",
    "STATE_VERSION",
    "STEP_KEY",
    "STREAM_KEY",
    "VERSION_KEY",
    "Allocate",
    "ProcessLayout",
    "Scaling",
    "ScheduledIterator",
    "SegmentTable",
    "WorkerStride",
    "as_plan",
    "check_collate",
    "check_count",
    "check_flag",
    "check_policy",
    "cut_short",
    "make_state",
    "mapping_like",
    "microbatch_count",
    "not_divisible",
    "read_state",
    "resolve",
    "spec",
    "stream_fields",
]
