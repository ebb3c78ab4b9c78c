"""An adaptive schedule through grain's RampupMapDataset."""

import json

import numpy as np
import pytest

grain = pytest.importorskip("grain")

from rampup import AdaptiveSchedule, GrowthPolicy, RampupBatches  # noqa: E402
from rampup.adapters.grain import RampupMapDataset  # noqa: E402

NO_THREADS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def make_schedule():
    return AdaptiveSchedule(4, lag=4, max_size=64, policy=GrowthPolicy(patience=2))


def train(schedule, iterator, first, last):
    record = []
    for step in range(first, last):
        batch = np.asarray(next(iterator))
        record.append(batch.tolist())
        schedule.propose(step, 2.0 * 1.25**step * (1 + int(batch.sum()) % 3))
    return record


def test_grain_batches_follow_the_decisions_and_resume_through_json():
    schedule = make_schedule()
    expected = train(schedule, iter(RampupBatches(np.arange(5000), schedule)), 0, 30)
    schedule = make_schedule()
    iterator = iter(
        RampupMapDataset(grain.MapDataset.range(5000), schedule).to_iter_dataset(NO_THREADS)
    )
    first = train(schedule, iterator, 0, 13)
    saved = json.loads(json.dumps({"data": iterator.get_state(), "schedule": schedule.get_state()}))
    restored = make_schedule()
    restored.set_state(saved["schedule"])
    iterator = iter(
        RampupMapDataset(grain.MapDataset.range(5000), restored).to_iter_dataset(NO_THREADS)
    )
    iterator.set_state(saved["data"])
    assert first + train(restored, iterator, 13, 30) == expected
    assert len(restored.decisions) >= 3


def test_grain_thread_prefetch_past_the_lag_is_refused():
    dataset = RampupMapDataset(grain.MapDataset.range(5000), make_schedule())
    options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)
    with pytest.raises(ValueError, match="builds batches up to 8 steps ahead.*lag >= 9"):
        iter(dataset.to_iter_dataset(options))
