"""`ScheduledIterator`: the protocol of every rampup batch iterator.

Consumers of batches (JAX placement, tf.data) check a source's layout and step
through this protocol instead of guessing at its attributes. Every batch
iterator of this library implements it: the core's `BatchIterator` and
`StreamBatcher`, the grain iterators and the PyTorch iterators. Anything else
is a foreign iterable, whose layout and step a consumer cannot check. Adapter
authors import it from `rampup.protocol`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from rampup.plan import Plan, ProcessLayout

if TYPE_CHECKING:
    from rampup.batching import RampupBatches


class ScheduledIterator(Iterator[Any], abc.ABC):
    """An iterator of this process's slices of scheduled global batches.

    Attributes:
      plan: the step <-> position arithmetic of its schedule.
      process_index: this process's index among `process_count`.
      process_count: how many processes split every global batch.
      end: the stream position where the data ends; None when endless or unknown.
      drop_remainder: whether a last batch cut short by `end` is left out.
    """

    plan: Plan
    process_index: int
    process_count: int
    end: int | None = None
    drop_remainder: bool = False
    _shift: int = 0

    def describe(self, batches: RampupBatches) -> None:
        """Takes the plan, layout and end of the random-access batches it iterates."""
        self.plan = batches.plan
        self.process_index, self.process_count = batches.process_index, batches.process_count
        self.end, self.drop_remainder = batches.end, batches.drop_remainder

    @property
    @abc.abstractmethod
    def step(self) -> int:
        """The step of the next batch this iterator yields."""

    @abc.abstractmethod
    def get_state(self) -> dict[str, Any]:
        """The checkpoint state of the next step: a JSON-serializable dict."""

    @abc.abstractmethod
    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a state written by `get_state`."""

    @property
    def layout(self) -> ProcessLayout:
        """Deprecated alias of `(process_index, process_count)`, as a `ProcessLayout`.

        Kept for code that read it; the protocol's names are the two fields.
        """
        return ProcessLayout(self.process_index, self.process_count)

    @property
    def shift(self) -> int:
        """How far the stream is moved from the plan's offsets (a restore that kept its data
        position under a changed schedule); 0 otherwise."""
        return self._shift

    def last_batch(self) -> tuple[int, int] | None:
        """The `(step, global size)` of the last batch.

        None when the stream never ends (or its end is unknown) or holds no batch.
        """
        if self.end is None:
            return None
        return self.plan.last_batch(self.end, self.drop_remainder, self.shift)

    def check_last_batch(self, divisor: int, what: str) -> int | None:
        """Checks that a last batch cut short by the end of the data splits `divisor` ways.

        A consumer that splits every global batch (a data axis, micro-batches)
        calls it before the first batch; see `Plan.check_last_batch`.

        Args:
          divisor: what every global size must be a multiple of.
          what: the divisor in words, for the error.

        Returns:
          How many steps hold a whole batch (what the consumer's own check of
          the schedule covers); None when the stream never ends or its end is unknown.
        """
        if self.end is None:
            return None
        return self.plan.check_last_batch(
            self.end,
            divisor,
            what,
            drop_remainder=self.drop_remainder,
            shift=self.shift,
            start=self.step,
        )
