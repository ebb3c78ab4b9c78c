"""The xLSTM grain module's API, as a drop-in on the core."""

import inspect
import json

import numpy as np
import pytest

grain = pytest.importorskip("grain")

import rampup  # noqa: E402
from rampup.adapters import grain as adapter  # noqa: E402
from rampup.adapters.grain import (  # noqa: E402
    BatchRampUpIterDataset,
    batch_dataset_with_rampup,
    constant_rampup_schedule,
    create_batch_rampup_schedule,
    stepwise_rampup_schedule,
)

XLSTM_SCALES = {0: 0.25, 1000: 0.5, 2000: 1.0}


@pytest.fixture
def parent(read_options):
    """Makes `grain.MapDataset.range(n)` as an IterDataset."""
    return lambda n=60: grain.MapDataset.range(n).to_iter_dataset(read_options)


def sizes(ds) -> list[int]:
    return [len(b) for b in ds]


def test_signatures_and_defaults_match_the_xlstm_module():
    params = {
        "BatchRampUpIterDataset": [
            ("parent", None),
            ("batch_rampup_schedule", None),
            ("drop_remainder", False),
            ("batch_fn", None),
        ],
        "batch_dataset_with_rampup": [
            ("parent", None),
            ("batch_size", None),
            ("drop_remainder", False),
            ("batch_fn", None),
            ("schedule_type", "stepwise"),
            ("boundaries_and_scales", None),
        ],
        "create_batch_rampup_schedule": [
            ("batch_size", None),
            ("schedule_type", None),
            ("boundaries_and_scales", None),
        ],
        "constant_rampup_schedule": [("batch_size", None)],
        "stepwise_rampup_schedule": [("batch_size", None), ("boundaries_and_scales", None)],
    }
    for name, expected in params.items():
        signature = inspect.signature(getattr(adapter, name))
        got = [
            (p.name, None if p.default is inspect.Parameter.empty else p.default)
            for p in signature.parameters.values()
        ]
        assert got == expected, name


@pytest.mark.parametrize("keys", [int, str])
def test_xlstm_configuration_sizes(keys):
    schedule = stepwise_rampup_schedule(256, {keys(b): f for b, f in XLSTM_SCALES.items()})
    # The module's code: int(256 * f) for the latest boundary <= step.
    hand = {0: 64, 999: 64, 1000: 128, 1999: 128, 2000: 256, 10**6: 256}
    assert {step: schedule(step) for step in hand} == hand


def test_stepwise_before_the_first_boundary_is_the_base_size():
    schedule = stepwise_rampup_schedule(10, {"3": 0.5, "5": 2.0})
    assert [schedule(k) for k in range(7)] == [10, 10, 10, 5, 5, 20, 20]


def test_size_rounding_to_zero_fails_when_built():
    with pytest.raises(ValueError, match="boundary 1000"):
        stepwise_rampup_schedule(2, {0: 1.0, 1000: 0.25})


def test_create_schedule_by_type():
    assert [create_batch_rampup_schedule(4, "constant")(k) for k in (0, 10**9)] == [4, 4]
    assert constant_rampup_schedule(4) == rampup.constant(4)
    assert create_batch_rampup_schedule(8, "stepwise", {"2": 0.5}) == rampup.stepwise(8, {2: 0.5})
    with pytest.raises(ValueError, match="boundaries_and_scales"):
        create_batch_rampup_schedule(8, "stepwise")
    with pytest.raises(ValueError, match="'cosine'"):
        create_batch_rampup_schedule(8, "cosine")


def test_batches_follow_the_xlstm_rule_per_step(parent):
    ds = batch_dataset_with_rampup(
        parent(), 8, boundaries_and_scales={"0": 0.25, "3": 0.5, "5": 1.0}
    )
    assert isinstance(ds, BatchRampUpIterDataset)
    # 2, 2, 2 (steps 0-2), 4, 4 (steps 3-4), then 8 until the 60 elements run out.
    assert sizes(ds) == [2, 2, 2, 4, 4, 8, 8, 8, 8, 8, 6]  # 14 + 5 * 8 + 6 = 60
    assert [int(v) for b in ds for v in b] == list(range(60))


def test_drop_remainder_leaves_out_the_partial_batch(parent):
    ds = batch_dataset_with_rampup(
        parent(), 8, drop_remainder=True, boundaries_and_scales={0: 0.25, 3: 0.5, 5: 1.0}
    )
    assert sizes(ds) == [2, 2, 2, 4, 4, 8, 8, 8, 8, 8]


@pytest.mark.parametrize("kwargs", [{"schedule_type": "constant"}, {"schedule_type": "stepwise"}])
def test_constant_falls_back_to_grain_batch(kwargs, parent):
    ds = batch_dataset_with_rampup(parent(10), 4, **kwargs)
    assert not isinstance(ds, BatchRampUpIterDataset)
    expected = parent(10).batch(4)
    assert [b.tolist() for b in ds] == [b.tolist() for b in expected]


def test_callable_schedule_and_batch_fn_receive_what_grain_gives(parent):
    seen = []

    def batch_fn(values):
        seen.append(type(values))
        return sum(values)

    ds = BatchRampUpIterDataset(parent(10), plus_one, batch_fn=batch_fn)
    assert list(ds) == [0, 1 + 2, 3 + 4 + 5, 6 + 7 + 8 + 9]
    assert set(seen) == {list}


def plus_one(step):
    return step + 1


def test_a_lambda_schedule_is_taken_as_the_xlstm_module_took_it(parent):
    ds = BatchRampUpIterDataset(parent(10), lambda step: 8)
    assert [len(b) for b in ds] == [8, 2]
    named = rampup.from_fn(lambda step: step + 1, name="plus-one")
    assert [len(b) for b in BatchRampUpIterDataset(parent(10), named)] == [1, 2, 3, 4]


def test_a_lambda_schedule_restores_checked_by_position(parent):
    it = iter(BatchRampUpIterDataset(parent(), lambda step: 4))
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    same = iter(BatchRampUpIterDataset(parent(), lambda step: 4))
    same.set_state(state)  # another lambda, the same sizes: the position agrees
    assert next(same).tolist() == next(it).tolist() == [12, 13, 14, 15]
    other = iter(BatchRampUpIterDataset(parent(), lambda step: 5))
    with pytest.raises(ValueError, match="position 12.*consumed 15 samples before step 3"):
        other.set_state(state)


def test_str_names_the_dropin_class(parent):
    ds = BatchRampUpIterDataset(parent(), stepwise_rampup_schedule(8, XLSTM_SCALES))
    assert str(ds).startswith("BatchRampUpIterDataset(")
    assert str(iter(ds)).startswith("BatchRampUpIterDatasetIterator(")


@pytest.mark.parametrize("step", [1, 4, 7])
def test_restores_a_state_the_xlstm_module_wrote(step, parent):
    scales = {0: 0.25, 3: 0.5, 5: 1.0}
    ds = BatchRampUpIterDataset(parent(), stepwise_rampup_schedule(8, scales))
    whole = [b.tolist() for b in ds]
    # The module saved {"batch_step": k, "parent": <parent iterator state after O(k)>}.
    consumed = sum(len(b) for b in whole[:step])
    parent_it = iter(parent())
    for _ in range(consumed):
        next(parent_it)
    legacy = json.loads(json.dumps({"batch_step": step, "parent": parent_it.get_state()}))
    it = iter(ds)
    it.set_state(legacy)
    state = it.get_state()
    assert (state["step"], state["position"]) == (step, consumed)
    assert [b.tolist() for b in it] == whole[step:]


def test_dropin_state_round_trips_through_json(parent):
    ds = BatchRampUpIterDataset(parent(), stepwise_rampup_schedule(8, {0: 0.25, 3: 0.5}))
    it = iter(ds)
    first = [next(it).tolist() for _ in range(4)]
    state = json.loads(json.dumps(it.get_state()))
    again = iter(ds)
    again.set_state(state)
    whole = [b.tolist() for b in ds]
    assert first == whole[:4]
    assert [b.tolist() for b in again] == whole[4:]


def test_dropin_default_collate_stacks_pytrees(read_options):
    elements = (
        grain.MapDataset.range(6)
        .map(lambda x: {"a": np.full((2,), x)})
        .to_iter_dataset(read_options)
    )
    ds = BatchRampUpIterDataset(elements, constant_rampup_schedule(3))
    first = next(iter(ds))
    assert first["a"].shape == (3, 2)
    np.testing.assert_array_equal(first["a"][:, 0], [0, 1, 2])
