"""The adapter authors' interface, and the arithmetic the adapters take from the core.

Expected values come from naive step-by-step models of the stream (the sizes
summed one step at a time), never from `Plan` itself.
"""

import ast
import math
import pathlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rampup
import rampup.protocol
from rampup import Plan, RampupBatches, piecewise
from rampup.protocol import ProcessLayout

ROOT = pathlib.Path(rampup.__file__).parent


def _rampup_imports(path):
    """The `rampup...` modules a source file imports, at any depth."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rampup"):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("rampup"))


@pytest.mark.parametrize("adapter", ["grain", "torch", "tf", "jax"])
def test_adapters_import_the_core_only_through_the_public_api_and_protocol(adapter):
    modules = set(_rampup_imports(ROOT / "adapters" / f"{adapter}.py"))
    assert modules
    assert modules <= {"rampup", "rampup.protocol"}


def test_schedules_do_not_import_the_plan():
    # A schedule is data; the plan reads it.
    assert "rampup.plan" not in set(_rampup_imports(ROOT / "schedules.py"))


def test_every_protocol_name_is_exported_and_documented():
    names = rampup.protocol.__all__
    assert len(names) == len(set(names))
    for name in names:
        value = getattr(rampup.protocol, name)
        if name.isupper() or name == "Allocate":  # constants and a type alias
            continue
        assert (value.__doc__ or "").strip(), name


def _sizes(schedule, steps):
    return [schedule(k) for k in range(steps)]


@st.composite
def ramps(draw):
    n = draw(st.integers(1, 4))
    firsts = sorted(draw(st.sets(st.integers(1, 40), min_size=n - 1, max_size=n - 1)))
    sizes = draw(st.lists(st.integers(1, 12), min_size=n, max_size=n))
    return piecewise(dict(zip([0, *firsts], sizes, strict=True)))


@given(ramps(), st.lists(st.integers(0, 60), max_size=20))
def test_offsets_of_many_steps_are_the_sums_of_the_sizes_before_them(schedule, steps):
    sizes = _sizes(schedule, 61)
    expected = [sum(sizes[:k]) for k in steps]
    out = Plan(schedule).offsets(np.array(steps, dtype=np.int64))
    assert out.dtype == np.int64
    assert out.tolist() == expected


def test_offsets_refuse_a_negative_step():
    with pytest.raises(ValueError, match="step"):
        Plan(piecewise({0: 2})).offsets([3, -1])


def _stream(schedule, end, shift=0):
    """The global batches of a stream moved by `shift` that ends at `end`, step by step."""
    batches, position, step = [], shift, 0
    while position < end:
        size = schedule(step)
        batches.append(min(size, end - position))
        position += size
        step += 1
    return batches


@given(
    ramps(),
    st.integers(1, 200),
    st.integers(1, 6),
    st.booleans(),
    st.integers(-20, 20),
)
def test_check_last_batch_counts_the_whole_batches_and_refuses_an_uneven_cut(
    schedule, end, divisor, drop, shift
):
    if end - shift < 0:
        return
    batches = _stream(schedule, end, shift)
    whole = sum(1 for k, b in enumerate(batches) if b == schedule(k))
    cut = batches and batches[-1] != schedule(len(batches) - 1)
    plan = Plan(schedule)
    if cut and not drop and batches[-1] % divisor:
        with pytest.raises(ValueError, match=f"last batch \\(step {len(batches) - 1}, cut short"):
            plan.check_last_batch(end, divisor, "d", drop_remainder=drop, shift=shift)
        return
    assert plan.check_last_batch(end, divisor, "d", drop_remainder=drop, shift=shift) == whole


@given(ramps(), st.integers(1, 120), st.booleans(), st.integers(0, 15), st.integers(-10, 10))
def test_steps_left_counts_the_batches_from_a_step_as_the_stream_gives_them(
    schedule, length, drop, step, shift
):
    if length - shift < 0:
        return
    batches = _stream(schedule, length, shift)
    if drop and batches and batches[-1] != schedule(len(batches) - 1):
        batches = batches[:-1]
    source = RampupBatches(np.arange(length), schedule, num_epochs=1, drop_remainder=drop)
    assert source.steps_left(step, shift) == max(0, len(batches) - step)
    if step == shift == 0:
        assert len(source) == len(batches) == len(list(source))


def test_steps_left_of_endless_data_is_none():
    assert RampupBatches(np.arange(5), piecewise({0: 2})).steps_left(3) is None


def test_microbatches_of_a_short_last_batch_count_its_rows():
    plan = Plan(piecewise({0: 16}))
    assert plan.microbatches(0, 4, 2) == 2  # 16 rows over 2 processes, 4 per micro-batch
    assert plan.microbatches(0, 4, 2, rows=12) == 3
    with pytest.raises(ValueError, match="batch size 20 at step 7 .*microbatch_size=4"):
        plan.microbatches(7, 4, 2, rows=10)


@pytest.mark.parametrize(
    ("shards", "count", "expected"),
    [
        ([0, 1, 2, 3, 4, 5, 6, 7], 8, (0, 1)),
        ([4, 5], 8, (2, 4)),
        ([5, 4], 8, (2, 4)),
        ([3], 8, (3, 8)),
        ([6, 7, 6], 8, (3, 4)),
    ],
)
def test_a_process_layout_from_the_shards_a_process_holds(shards, count, expected):
    assert ProcessLayout.of_shards(shards, count) == expected


@pytest.mark.parametrize(("shards", "count"), [([1, 2], 8), ([0, 2], 8), ([0, 1, 2], 8), ([], 4)])
def test_shards_that_are_not_one_slice_of_the_batch_are_refused(shards, count):
    with pytest.raises(ValueError, match="not one run of consecutive shards"):
        ProcessLayout.of_shards(shards, count)


def test_a_process_layout_is_given_whole_or_defaults():
    assert ProcessLayout.given(1, 4, lambda: (0, 1)) == (1, 4)
    assert ProcessLayout.given(None, None, lambda: (2, 3)) == (2, 3)
    with pytest.raises(ValueError, match="both process_index and process_count or neither"):
        ProcessLayout.given(1, None, lambda: (0, 1), "the default")


@pytest.mark.parametrize(
    ("unit", "tokens_per_sample"), [("steps", None), ("samples", None), ("tokens", 3)]
)
def test_the_segment_table_gives_t_and_the_factor_of_every_step(unit, tokens_per_sample):
    schedule = piecewise({0: 2, 3: 8, 5: 32})
    scaling = rampup.protocol.resolve(
        1.0, schedule, rule="sqrt", unit=unit, tokens_per_sample=tokens_per_sample
    )
    table = scaling.segment_table()
    sizes = _sizes(schedule, 12)
    for k in range(12):
        i = int(np.searchsorted(table.first_steps, k, side="right")) - 1
        samples = sum(sizes[:k])
        naive_t = {"steps": 0, "samples": samples, "tokens": samples * 3}[unit]
        assert table.t_offsets[i] + (k - table.first_steps[i]) * table.t_per_step[i] == naive_t
        assert table.factors[i] == pytest.approx(math.sqrt(sizes[k] / 32))


@given(ramps(), st.integers(0, 50))
def test_a_plan_from_a_step_holds_the_sizes_from_that_step_on(schedule, step):
    later = Plan(schedule).from_step(step)
    assert [later.size(k) for k in range(30)] == [schedule(step + k) for k in range(30)]
