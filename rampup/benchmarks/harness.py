"""Side-by-side timing: ratios measured in one run, pairs interleaved, medians reported."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def seconds(fn: Callable[[], Any]) -> float:
    """Wall time of one call of `fn`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The median wall time of `fn` over `repeats` calls, after one warm-up call."""
    fn()
    return statistics.median(seconds(fn) for _ in range(repeats))


_PROBE = """
import json, resource, sys, time
{setup}
start = time.perf_counter()
{code}
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def probe(setup: str, code: str) -> dict[str, float]:
    """Runs `code` in a fresh interpreter after `setup`: its time and peak memory.

    Returns:
      `seconds` of `code` alone, and `peak_mb`: the interpreter's peak resident
      memory minus that of an idle interpreter that ran `setup` only (the
      imports), so the figure is what `code` added; both peaks as
      `busy_peak_mb` and `idle_peak_mb`.
    """

    def run(body: str) -> dict[str, float]:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE.format(setup=setup, code=body)],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    idle, busy = run("pass"), run(code)
    mb = 1024 * (1024 if sys.platform == "darwin" else 1)  # ru_maxrss is in bytes on macOS
    return {
        "seconds": busy["seconds"],
        "peak_mb": max(0.0, (busy["maxrss_kb"] - idle["maxrss_kb"]) / mb),
        "idle_peak_mb": round(idle["maxrss_kb"] / mb, 1),
        "busy_peak_mb": round(busy["maxrss_kb"] / mb, 1),
    }


def ratio(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> float:
    """The median of time(a) / time(b) over `repeats` back-to-back pairs, order alternating.

    Each pair runs under the same machine load, so the ratio is steadier than
    either time; one warm-up pair runs first.
    """
    a(), b()
    ratios = []
    for i in range(repeats):
        if i % 2:
            tb, ta = seconds(b), seconds(a)
        else:
            ta, tb = seconds(a), seconds(b)
        ratios.append(ta / tb)
    return statistics.median(ratios)


def row(name: str, value: float, target: str, holds: bool, **extra: Any) -> dict[str, Any]:
    """One benchmark result: its ratio, the target, whether it holds.

    `load_sensitive=True` in `extra` marks a result that other work on the
    machine moves (a worker speedup needs idle cores): `rampup bench --quick`
    reports it but does not fail on it.
    """
    return {"name": name, "ratio": round(value, 3), "target": target, "holds": bool(holds), **extra}


def reported(name: str, value: float, **extra: Any) -> dict[str, Any]:
    """A result printed for information: it has no target."""
    return row(name, value, "reported", True, **extra)


def at_most(name: str, value: float, limit: float, **extra: Any) -> dict[str, Any]:
    """A result whose ratio must stay <= limit."""
    return row(name, value, f"<= {limit}", value <= limit, **extra)


def at_least(name: str, value: float, limit: float, **extra: Any) -> dict[str, Any]:
    """A result whose ratio must reach >= limit."""
    return row(name, value, f">= {limit}", value >= limit, **extra)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as an aligned text table."""
    lines = [("benchmark", "value", "target", "holds")]
    lines += [
        (
            r["name"],
            f"{r['ratio']:.3f}",
            r["target"],
            ("-" if r["target"] == "reported" else "yes" if r["holds"] else "NO")
            + (" (load-sensitive)" if r.get("load_sensitive") else ""),
        )
        for r in rows
    ]
    widths = [max(len(line[c]) for line in lines) for c in range(4)]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in lines
    )


def main(run: Callable[[bool], list[dict[str, Any]]], argv: Sequence[str] | None = None) -> None:
    """Runs one benchmark script: `--quick` for a smoke run, `--json PATH` to save the rows."""
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller data")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    rows = run(args.quick)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def machine_load() -> str:
    """The machine's load, for the bench output: load averages and CPU count."""
    cpus = os.cpu_count() or 1
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not on every platform
        return f"load average unknown, {cpus} CPUs"
    busy = " (loaded: more runnable threads than CPUs)" if one > cpus else ""
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {cpus} CPUs{busy}"


def load_sensitive_misses(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The names of the rows that missed their target and depend on the machine's load."""
    return [r["name"] for r in rows if not r["holds"] and r.get("load_sensitive")]


def remeasured(rows: Sequence[dict[str, Any]], again: Sequence[dict[str, Any]]) -> list[dict]:
    """`rows` with each load-sensitive miss replaced by its row from a second run `again`.

    The replaced row keeps its first ratio as `first_ratio` and is marked
    `remeasured`; a row missing from `again` (the second run failed) stays as it was.
    """
    second = {r["name"]: r for r in again}
    misses = set(load_sensitive_misses(rows))
    out = []
    for r in rows:
        if r["name"] in misses and r["name"] in second:
            r = {**second[r["name"]], "first_ratio": r["ratio"], "remeasured": True}
        out.append(r)
    return out


def verdict(rows: Sequence[dict[str, Any]], quick: bool) -> tuple[int, list[dict], list[dict]]:
    """The exit status of a bench run, the misses that count and the misses not counted.

    Every miss counts in a full run. `--quick` is a smoke run on whatever
    machine runs it: a load-sensitive row that still misses (after its one
    re-measure) is reported, not counted; any other miss fails the run.
    """
    failed = [r for r in rows if not r["holds"]]
    ignored = [r for r in failed if quick and r.get("load_sensitive")]
    counted = [r for r in failed if r not in ignored]
    return (1 if counted else 0), counted, ignored
