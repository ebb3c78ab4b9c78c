"""The `>>>` examples in the core's docstrings run and print what they show.

doctest runs over the imported modules (not the files), so the `all` environment checks
the installed wheel's docstrings. Each module must keep its examples: the test names the
docstrings that carry them and a floor on the examples run, so deleting one fails.
"""

import doctest
import importlib
import io

import pytest

# module -> (docstrings that carry examples, the fewest `>>>` examples run in the module)
EXAMPLES = {
    "rampup.schedules": (
        {
            "Schedule",
            "Schedule.to_config",
            "constant",
            "from_config",
            "from_curve",
            "from_fn",
            "from_megatron",
            "linear",
            "piecewise",
            "stepwise",
        },
        32,
    ),
    "rampup.plan": (
        {
            "Plan",
            "Plan.divisible_from",
            "Plan.local_bounds",
            "Plan.microbatches",
            "Plan.num_batches",
            "Plan.segments",
            "Plan.steps_for",
            "Plan.table",
        },
        27,
    ),
    "rampup.batching": ({"RampupBatches", "RampupBatches.iter_from", "StreamBatcher"}, 19),
    "rampup.scaling": ({"scaled"}, 7),
    "rampup.noise": ({"NoiseScale"}, 7),
    "rampup.adaptive": (
        {"AdaptiveSchedule", "AdaptiveSchedule.check_lag", "GrowthPolicy", "follow"},
        18,
    ),
    "rampup.branching": ({"branches", "critical_batch_size"}, 7),
}

# An error's message is long; an example shows its start and the part that matters.
OPTIONS = doctest.ELLIPSIS


def run_doctests(name: str) -> tuple[set[str], doctest.TestResults, str]:
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in tests:
        runner.run(test, out=out.write)
    names = {t.name.removeprefix(f"{name}.") for t in tests}
    return names, runner.summarize(verbose=False), out.getvalue()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_examples_of_a_core_module_print_what_they_show(name):
    names, results, report = run_doctests(name)
    assert results.failed == 0, report


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_core_module_keeps_its_examples(name):
    expected, minimum = EXAMPLES[name]
    names, results, _ = run_doctests(name)
    assert expected - names == set()
    assert results.attempted >= minimum
