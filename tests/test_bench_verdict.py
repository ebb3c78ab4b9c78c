"""`rampup bench`'s decisions over result rows: re-measure, exit status, load report."""

from rampup.benchmarks.harness import (
    at_least,
    at_most,
    load_sensitive_misses,
    machine_load,
    remeasured,
    reported,
    verdict,
)

STEADY_MISS = at_most("collate / np.stack", 1.4, 1.2)
STEADY_HIT = at_most("restore far / near", 1.0, 1.5)
LOADED_MISS = at_least("2 workers / 1 worker", 1.1, 1.6, load_sensitive=True)
LOADED_HIT = at_least("prefetch / device_put", 0.97, 0.95, load_sensitive=True)


def test_only_load_sensitive_misses_are_measured_again():
    rows = [STEADY_MISS, STEADY_HIT, LOADED_MISS, LOADED_HIT, reported("info", 3.0)]
    assert load_sensitive_misses(rows) == ["2 workers / 1 worker"]


def test_a_second_measure_replaces_the_miss_and_keeps_the_first_ratio():
    again = [
        at_most("collate / np.stack", 1.0, 1.2),  # a steady row is not replaced
        at_least("2 workers / 1 worker", 1.7, 1.6, load_sensitive=True),
        at_least("prefetch / device_put", 0.5, 0.95, load_sensitive=True),  # it held: kept
    ]
    rows = remeasured([STEADY_MISS, LOADED_MISS, LOADED_HIT], again)
    assert rows[0] == STEADY_MISS
    assert rows[1]["ratio"] == 1.7 and rows[1]["holds"]
    assert rows[1]["first_ratio"] == 1.1 and rows[1]["remeasured"]
    assert rows[2] == LOADED_HIT


def test_a_row_the_second_run_lacks_stays_as_it_was():
    assert remeasured([LOADED_MISS], [{"name": "x", "ratio": 0.0, "holds": False}]) == [LOADED_MISS]


def test_quick_fails_only_on_a_miss_that_does_not_depend_on_load():
    assert verdict([STEADY_HIT, LOADED_MISS, LOADED_HIT], quick=True) == (0, [], [LOADED_MISS])
    assert verdict([STEADY_MISS, LOADED_MISS], quick=True) == (1, [STEADY_MISS], [LOADED_MISS])


def test_a_full_run_counts_every_miss():
    assert verdict([STEADY_HIT, LOADED_MISS], quick=False) == (1, [LOADED_MISS], [])
    assert verdict([STEADY_HIT, LOADED_HIT], quick=False) == (0, [], [])


def test_the_load_line_names_the_load_averages_and_the_cpus():
    import os

    line = machine_load()
    assert line.startswith("load average ")
    assert f"on {os.cpu_count()} CPUs" in line
