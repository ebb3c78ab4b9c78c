"""An independent model of the batch stream, for the tests' expected values.

DESIGN.md's definitions written out one step at a time, with no closed form and
no import of rampup, so a test that checks the library against them never checks
the library against itself (Plan is not its own oracle). Test modules import it
as `model` (tests/ is on sys.path, see conftest.py); a script that a test starts
in a subprocess does not.
"""

from __future__ import annotations


def sizes(table: dict[int, int], steps: int, unit: str = "steps", per_sample: int = 1) -> list[int]:
    """B(0..steps-1) of a piecewise table `{threshold: size}` (threshold 0 present).

    unit "steps": step k takes the size of the largest threshold <= k. unit "samples"
    or "tokens": of the largest threshold reached by the samples (times
    `per_sample` tokens) consumed before step k.
    """
    out: list[int] = []
    consumed = 0
    for k in range(steps):
        reached = k if unit == "steps" else consumed * per_sample
        out.append(table[max(t for t in table if t <= reached)])
        consumed += out[-1]
    return out


def linear_sizes(start: int, increment: int, rampup_samples: int, final: int, steps: int):
    """B(0..steps-1) of Megatron-LM's linear ramp, in exact integer arithmetic."""
    n = (final - start) // increment
    out: list[int] = []
    consumed = 0
    for _ in range(steps):
        if consumed > rampup_samples or n == 0 or rampup_samples == 0:
            out.append(final)
        else:
            out.append(start + increment * (consumed * n // rampup_samples))
        consumed += out[-1]
    return out


def running_sum(sizes: list[int]) -> list[int]:
    """Offsets O(0..len(sizes)): the samples consumed before each step."""
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    return offsets


def windows(
    sizes: list[int], end: int | None = None, drop_remainder: bool = False, first: int = 0
) -> list[tuple[int, int]]:
    """The global positions `[start, stop)` of each batch of a stream that may end.

    Batch k takes the next `sizes[k]` positions from `first` on; a batch cut
    short by `end` is kept (or left out with `drop_remainder`); the stream
    stops at the first batch that starts at or past `end`.
    """
    out: list[tuple[int, int]] = []
    position = first
    for size in sizes:
        if end is not None and position >= end:
            break
        stop = position + size if end is None else min(position + size, end)
        if drop_remainder and stop - position < size:
            break
        out.append((position, stop))
        position += size
    return out


def share(window: tuple[int, int], index: int, count: int) -> tuple[int, int]:
    """Process `index` of `count`'s equal part of a window (it must split evenly)."""
    start, stop = window
    assert (stop - start) % count == 0, f"the model's window {window} does not split {count} ways"
    part = (stop - start) // count
    return start + index * part, start + (index + 1) * part


def worker_steps(start: int, index: int, count: int, stop: int) -> list[int]:
    """The steps in `[start, stop)` that worker `index` of `count` builds, in order."""
    return [k for k in range(start, stop) if (k - start) % count == index]


class Counter:
    """A stream source: range(n) with get_state/set_state, as grain's iterators have."""

    def __init__(self, n: int) -> None:
        self.n, self.i = n, 0

    def __iter__(self) -> Counter:
        return self

    def __next__(self) -> int:
        if self.i >= self.n:
            raise StopIteration
        self.i += 1
        return self.i - 1

    def get_state(self) -> dict[str, int]:
        return {"i": self.i}

    def set_state(self, state: dict[str, int]) -> None:
        self.i = state["i"]
