"""PyTorch: LambdaLR driven by the plan, and fixed-shape micro-batches (real torch, CPU)."""

import collections
import dataclasses
import io
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader, Dataset, IterableDataset  # noqa: E402

import rampup  # noqa: E402
from rampup.adapters.torch import RampupIterableDataset, lr_lambda  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:This DataLoader will create")]

RAMP = rampup.linear(8, 8, 400, 64)
SCHEDULE = rampup.piecewise({0: 8, 3: 16, 5: 32})
N = 50


class Rows(Dataset):
    """Sample i: a dict with a 3-vector and its index, and a nested tuple."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"x": np.arange(3, dtype=np.float32) + 3 * i, "pair": (np.int64(i), np.int64(-i))}


class Stream(IterableDataset):
    def __iter__(self):
        return iter(np.arange(N, dtype=np.int64))


def sgd_lrs(scheduler_factor, steps, lr=0.1):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, scheduler_factor)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out, optimizer, scheduler


@pytest.mark.parametrize("rule", ["sqrt", "linear", "none"])
def test_lambdalr_lrs_equal_scaled(rule):
    steps = rampup.Plan(RAMP).steps_for(samples=400) + 5
    lrs, _, _ = sgd_lrs(lr_lambda(RAMP, rule=rule), steps)
    expected = rampup.scaled(0.1, RAMP, rule=rule)
    assert lrs == pytest.approx([expected(k) for k in range(steps)], rel=1e-12)
    assert len(set(lrs)) == (1 if rule == "none" else 8)


def test_lambdalr_with_a_warmup_in_samples():
    def warmup(samples):
        return min(1.0, samples / 200)

    lrs, _, _ = sgd_lrs(lr_lambda(RAMP, base=warmup, unit="samples"), 30, lr=3e-4)
    expected = rampup.scaled(lambda t: 3e-4 * warmup(t), RAMP, unit="samples")
    assert lrs == pytest.approx([expected(k) for k in range(30)], rel=1e-12)


def test_a_resumed_lambdalr_continues_with_the_same_rates():
    lrs, optimizer, scheduler = sgd_lrs(lr_lambda(RAMP), 12)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    resumed = torch.optim.lr_scheduler.LambdaLR(resumed_optimizer, lr_lambda(RAMP))
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    expected = rampup.scaled(0.1, RAMP)
    for step in range(12, 30):
        assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(expected(step), rel=1e-12)
        resumed_optimizer.step()
        resumed.step()


def rows_of(batch):
    return batch["pair"][0]


def collect(ds, steps, num_workers=0):
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    return [b for _, b in zip(range(steps), loader, strict=False)]


def test_microbatches_hold_m_rows_and_concatenate_to_the_plain_batch_any_workers():
    plain = collect(RampupIterableDataset(Rows(), SCHEDULE, shuffle=True), 8)
    for workers in (0, 2):
        ds = RampupIterableDataset(Rows(), SCHEDULE, shuffle=True, microbatch_size=4)
        got = collect(ds, 8, workers)
        assert [len(step) for step in got] == [SCHEDULE(k) // 4 for k in range(8)]
        for step, (micro, batch) in enumerate(zip(got, plain, strict=True)):
            assert all(m["x"].shape == (4, 3) and rows_of(m).shape == (4,) for m in micro), step
            assert torch.equal(torch.cat([m["x"] for m in micro]), batch["x"])
            assert torch.equal(torch.cat([rows_of(m) for m in micro]), rows_of(batch))
            assert torch.equal(torch.cat([m["pair"][1] for m in micro]), batch["pair"][1])


def test_two_ranks_microbatches_concatenate_to_the_global_batch():
    plain = collect(RampupIterableDataset(Rows(), SCHEDULE, shuffle=True, seed=3), 8)
    ranks = [
        collect(
            RampupIterableDataset(
                Rows(), SCHEDULE, shuffle=True, seed=3, rank=r, world_size=2, microbatch_size=2
            ),
            8,
            workers,
        )
        for r, workers in ((0, 2), (1, 0))
    ]
    for step, batch in enumerate(plain):
        counts = [len(rank[step]) for rank in ranks]
        assert counts == [SCHEDULE(step) // (2 * 2)] * 2
        order = [rows_of(m) for rank in ranks for m in rank[step]]
        assert all(len(m) == 2 for m in order)
        assert torch.equal(torch.cat(order), rows_of(batch))


def test_every_sample_once_per_epoch_in_microbatches_with_a_partial_last_batch():
    # 50 samples: steps of 8, 8, 8, 16, then 10 left, which splits into 5 micro-batches of 2.
    ds = RampupIterableDataset(Rows(), SCHEDULE, num_epochs=1, microbatch_size=2)
    got = collect(ds, 100, 2)
    assert [len(step) for step in got] == [4, 4, 4, 8, 5]
    assert torch.equal(torch.cat([rows_of(m) for step in got for m in step]), torch.arange(N))


def test_a_size_that_does_not_split_is_refused_when_built():
    with pytest.raises(ValueError, match=r"batch size 32 at step 5 .*microbatch_size=3.*30, 33"):
        RampupIterableDataset(Rows(), SCHEDULE, microbatch_size=3)
    # Legal from step 3 on: refused where an iteration starts earlier.
    ds = RampupIterableDataset(Rows(), SCHEDULE, microbatch_size=8, rank=0, world_size=2)
    with pytest.raises(
        ValueError,
        match=r"batch size 8 at step 0 .*microbatch_size=8 x "
        r"process_count=2.*16.*legal from step 3 on",
    ):
        iter(ds)
    with pytest.raises(ValueError, match=r"batch size 8 at step 2 .*legal from step 3 on"):
        ds.set_step(2)
    ds.set_step(3)
    assert [len(step) for step in itertools.islice(iter(ds), 3)] == [1, 1, 2]
    # The last batch holds 50 - 40 = 10 samples: micro-batches of 4 cannot hold them.
    with pytest.raises(
        ValueError,
        match=r"batch size 10 in the last batch \(step 4.*"
        r"microbatch_size=4.*8, 12.*drop_remainder=True",
    ):
        RampupIterableDataset(Rows(), SCHEDULE, num_epochs=1, microbatch_size=4)
    assert (
        len(
            RampupIterableDataset(
                Rows(), SCHEDULE, num_epochs=1, microbatch_size=4, drop_remainder=True
            )
        )
        == 4
    )
    with pytest.raises(ValueError, match="batch size 8 at step 0"):
        RampupIterableDataset(Stream(), SCHEDULE, microbatch_size=16)
    with pytest.raises(TypeError, match="microbatch_size"):
        RampupIterableDataset(Rows(), SCHEDULE, microbatch_size="4")


def test_a_stream_source_yields_microbatches_too():
    got = collect(
        RampupIterableDataset(Stream(), SCHEDULE, microbatch_size=4, drop_remainder=True), 100
    )
    assert [len(step) for step in got] == [2, 2, 2, 4]
    assert torch.equal(torch.cat([m for step in got for m in step]), torch.arange(40))
    # A stream's end is known only when reached: 10 left at step 4 do not split into 4s.
    with pytest.raises(ValueError, match=r"batch size 10 at step 4 .*8, 12"):
        collect(RampupIterableDataset(Stream(), SCHEDULE, microbatch_size=4), 100)


@dataclasses.dataclass
class Sample:
    x: np.ndarray
    index: np.int64
    note: None = None


class Samples(Dataset):
    def __len__(self):
        return N

    def __getitem__(self, i):
        return Sample(np.full(2, i, dtype=np.float32), np.int64(i))


class Counts(Dataset):
    def __len__(self):
        return N

    def __getitem__(self, i):
        return collections.defaultdict(int, {"index": np.int64(i)})


def test_dataclass_defaultdict_and_none_leaves_keep_their_types_in_microbatches():
    got = collect(RampupIterableDataset(Samples(), SCHEDULE, microbatch_size=4), 4)
    for step, micro in enumerate(got):
        assert all(type(m) is Sample and m.x.shape == (4, 2) and m.note is None for m in micro)
        start = rampup.Plan(SCHEDULE).offset(step)
        indices = torch.cat([m.index for m in micro])
        assert torch.equal(indices, torch.arange(start, start + SCHEDULE(step)))
    counts = collect(RampupIterableDataset(Counts(), SCHEDULE, microbatch_size=4), 1)[0]
    assert [type(m) for m in counts] == [collections.defaultdict] * 2
    assert counts[0]["missing"] == 0  # the factory came along


@pytest.mark.parametrize("change", ["drop", "double"])
def test_microbatches_are_counted_from_the_plan_and_a_collate_that_changes_rows_is_refused(change):
    def collate(elements):
        rows = np.stack([np.asarray(e) for e in elements])
        return torch.from_numpy(rows[:-2] if change == "drop" else np.concatenate([rows, rows]))

    ds = RampupIterableDataset(np.arange(64), SCHEDULE, collate=collate, microbatch_size=2)
    with pytest.raises(ValueError, match=r"collate gave \d+ rows at step 0.*the plan's"):
        next(iter(ds))
