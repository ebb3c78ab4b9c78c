"""The epoch shuffle: a keyed bijection over [0, N), exact at 10^12 and for 64-bit seeds."""

import hashlib
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rampup import RampupBatches, constant, piecewise
from rampup.permutation import ALGORITHM, SORT_CHUNK, permute, unpermute

SEEDS = st.integers(0, 2**64 - 1)
MASK = 2**64 - 1


def reference_permute(index: int, length: int, seed: int, epoch: int) -> int:
    """The construction the module documents, one index at a time in Python ints."""

    def mix(z: int) -> int:
        z &= MASK
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & MASK
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    gamma = 0x9E3779B97F4A7C15
    data = seed.to_bytes(max(8, (seed.bit_length() + 7) // 8), "little")
    digest = hashlib.blake2b(data, digest_size=56, person=b"rampup.shuffle").digest()
    keys = [int.from_bytes(digest[8 * i : 8 * i + 8], "little") for i in range(7)]
    epoch_key = mix(epoch ^ keys[6])
    if length <= 64:  # sorting: item j's key is the j-th value of a splitmix64 stream
        sort_keys = [mix(epoch_key + keys[0] + (j + 1) * gamma) for j in range(length)]
        return sorted(range(length), key=lambda j: (sort_keys[j], j))[index]
    a = math.isqrt(length - 1) + 1
    b = -(-length // a)
    x = index
    while True:
        left, right, ml, mr = x // b, x % b, a, b
        for r in range(6):
            f = mix(right ^ ((epoch_key + keys[r]) & MASK)) % ml
            left, right, ml, mr = right, (left + f) % ml, mr, ml
        x = left * b + right
        if x < length:
            break
    flip = mix(epoch_key + gamma) >> 63
    return x ^ 1 if flip and x < 2 else x


class Positions:
    """A source of any length whose item i is i: the batches show the shuffled indices."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> np.int64:
        return np.int64(index)


@given(st.integers(1, 300), SEEDS, st.integers(0, 10**6))
def test_every_index_once_per_epoch(length, seed, epoch):
    out = permute(np.arange(length), length, seed, epoch)
    assert sorted(out.tolist()) == list(range(length))
    assert unpermute(out, length, seed, epoch).tolist() == list(range(length))


@given(
    st.sampled_from([2, 3, 17, 64, 65, 81, 1000, 10**9, 10**12, 2**40 + 1, 2**62]),
    SEEDS,
    st.integers(0, 2**40),
    st.data(),
)
def test_numpy_arithmetic_equals_python_integers(length, seed, epoch, data):
    index = data.draw(st.lists(st.integers(0, length - 1), min_size=1, max_size=5))
    got = permute(np.array(index, dtype=np.int64), length, seed, epoch).tolist()
    assert got == [reference_permute(i, length, seed, epoch) for i in index]


@given(st.sampled_from([2, 3, 5, 17, 64, 65, 81]), SEEDS, st.data())
def test_a_run_of_positions_over_many_epochs_equals_the_reference(length, seed, data):
    # A batch's positions p give epochs p // length in order (the fast path); the same
    # positions drawn out of order take the general one. Both equal the reference per item.
    first = data.draw(st.integers(0, 10**6))
    count = data.draw(st.integers(1, 6 * length))
    position = np.arange(first, first + count)
    if data.draw(st.booleans()):
        position = np.random.default_rng(first).permutation(position)
    index, epoch = position % length, position // length
    expected = [
        reference_permute(int(i), length, seed, int(e)) for i, e in zip(index, epoch, strict=True)
    ]
    assert permute(index, length, seed, epoch).tolist() == expected
    assert unpermute(np.array(expected), length, seed, epoch).tolist() == index.tolist()


def test_a_batch_of_several_sort_chunks_equals_the_reference_across_their_borders():
    length, seed, first = 5, 11, 123
    position = np.arange(first, first + 3 * SORT_CHUNK + 7)
    out = permute(position % length, length, seed, position // length)
    borders = [k * SORT_CHUNK + d for k in (1, 2, 3) for d in (-2, -1, 0, 1)]
    where = [*borders, *np.random.default_rng(0).integers(0, position.size, 200).tolist()]
    expected = [
        reference_permute(int(position[j] % length), length, seed, int(position[j] // length))
        for j in where
    ]
    assert out[where].tolist() == expected


@pytest.mark.parametrize("length", [10**9, 10**12])
def test_inverse_undoes_the_shuffle_at_scale(length):
    index = np.random.default_rng(0).integers(0, length, 100_000)
    out = permute(index, length, 2**64 - 1, 7)
    assert out.min() >= 0 and out.max() < length
    assert (unpermute(out, length, 2**64 - 1, 7) == index).all()


def test_epochs_and_seeds_give_different_orders():
    base = permute(np.arange(1000), 1000, 1, 0)
    assert base.tolist() != permute(np.arange(1000), 1000, 1, 1).tolist()
    assert base.tolist() != permute(np.arange(1000), 1000, 2, 0).tolist()
    assert base.tolist() != list(range(1000))


def test_out_of_range_index_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        permute(np.array([10]), 10, 0, 0)


def test_shuffled_batches_over_a_billion_elements():
    n = 10**9
    schedule = piecewise({0: 256, 10: 512})
    b = RampupBatches(Positions(n), schedule, shuffle_seed=11)
    step = 3_000_000  # positions around 1.5e9: the batch crosses into epoch 1
    start, stop = b.plan.bounds(step)
    batch = b[step]
    positions = np.arange(start, stop)
    assert batch.tolist() == permute(positions % n, n, 11, positions // n).tolist()
    # The items sit where the inverse says: each position got its own item.
    assert (unpermute(batch, n, 11, positions // n) == positions % n).all()
    parts = [
        RampupBatches(Positions(n), schedule, shuffle_seed=11, process_index=i, process_count=4)[
            step
        ]
        for i in range(4)
    ]
    assert np.concatenate(parts).tolist() == batch.tolist()


def test_resume_at_scale_continues_identically():
    n = 10**12
    b = RampupBatches(Positions(n), constant(64), shuffle_seed=2**64 - 1)
    it = b.iter_from(10**10)
    next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it).tolist() for _ in range(3)]
    other = RampupBatches(Positions(n), constant(64), shuffle_seed=2**64 - 1).iter_from(0)
    other.set_state(state)
    assert [next(other).tolist() for _ in range(3)] == expected


def test_a_batch_larger_than_the_data_holds_each_epoch_once():
    b = RampupBatches(np.arange(3), constant(99_999), shuffle_seed=5)
    epochs = b[0].reshape(-1, 3)  # 33,333 epochs, each of them whole
    assert (np.sort(epochs, axis=1) == np.arange(3)).all()
    assert len({tuple(e) for e in epochs.tolist()}) == 6  # every order of 3 items occurs


def test_version_1_state_is_refused_with_the_reason():
    it = RampupBatches(np.arange(10), constant(2), shuffle_seed=0).iter_from(0)
    state = dict(it.get_state(), version=1)
    with pytest.raises(ValueError, match=f"version 1.*materialized NumPy permutation.*{ALGORITHM}"):
        it.set_state(state)


def test_version_2_state_is_refused_with_the_reason():
    it = RampupBatches(np.arange(10), constant(2), shuffle_seed=0).iter_from(0)
    state = dict(it.get_state(), version=2)
    with pytest.raises(ValueError, match=f"version 2.*modfeistel6-blake2b-splitmix64.*{ALGORITHM}"):
        it.set_state(state)


# Uniformity: the statistics of our shuffle over a fixed grid of (seed, epoch) keys, next to
# the same statistics of NumPy's permutation (the independent reference) over as many draws.
# The bounds are about 8 standard deviations out: a uniform shuffle passes with a wide margin.
GRID_SEEDS, GRID_EPOCHS = 60, 200


def shuffles(length: int) -> np.ndarray:
    """One row per (seed, epoch) of the grid: that epoch's order of `range(length)`."""
    epochs = np.repeat(np.arange(GRID_EPOCHS), length)
    index = np.tile(np.arange(length), GRID_EPOCHS)
    rows = [permute(index, length, seed, epochs) for seed in range(GRID_SEEDS)]
    return np.concatenate(rows).reshape(-1, length)


def numpy_shuffles(length: int) -> np.ndarray:
    rng = np.random.default_rng(20)
    return rng.permuted(np.tile(np.arange(length), (GRID_SEEDS * GRID_EPOCHS, 1)), axis=1)


def chi_square(counts: np.ndarray) -> tuple[float, int]:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum()), counts.size - 1


def order_counts(orders: np.ndarray) -> np.ndarray:
    """How often each of the N! orders occurs (orders ranked by their Lehmer code)."""
    n = orders.shape[1]
    rank = np.zeros(len(orders), np.int64)
    for i in range(n):
        smaller_later = (orders[:, i + 1 :] < orders[:, i : i + 1]).sum(axis=1)
        rank = rank * (n - i) + smaller_later
    return np.bincount(rank, minlength=math.factorial(n))


def position_counts(orders: np.ndarray) -> np.ndarray:
    """How often item j lands at position i, for every (i, j)."""
    n = orders.shape[1]
    flat = np.arange(n) * n + orders
    return np.bincount(flat.reshape(-1), minlength=n * n)


def odd_orders(orders: np.ndarray) -> int:
    """How many orders are odd permutations (by the parity of their inversions)."""
    upper = np.triu(np.ones((orders.shape[1],) * 2, bool), 1)
    inversions = [((o[:, None] > o[None, :]) & upper).sum() for o in orders]
    return int(np.sum(np.array(inversions) % 2))


def within_bound(stat: float, df: int) -> bool:
    return stat < df + 8 * math.sqrt(2 * df)


@pytest.mark.parametrize("length", [2, 3, 4, 5, 6])
def test_every_order_of_a_small_set_is_equally_likely(length):
    ours = chi_square(order_counts(shuffles(length)))
    numpy = chi_square(order_counts(numpy_shuffles(length)))
    assert within_bound(*numpy), numpy
    assert within_bound(*ours), (ours, numpy)


@pytest.mark.parametrize("length", [7, 8, 10, 11, 13, 15, 16, 64, 65, 81])
def test_every_item_is_equally_likely_at_every_position(length):
    ours = chi_square(position_counts(shuffles(length)))
    numpy = chi_square(position_counts(numpy_shuffles(length)))
    assert within_bound(*numpy), numpy
    assert within_bound(*ours), (ours, numpy)


@pytest.mark.parametrize("length", [7, 8, 9, 64, 65, 81, 121])
def test_odd_and_even_orders_are_equally_likely(length):
    draws = GRID_SEEDS * GRID_EPOCHS
    bound = 8 * math.sqrt(draws) / 2
    assert abs(odd_orders(numpy_shuffles(length)) - draws / 2) < bound
    assert abs(odd_orders(shuffles(length)) - draws / 2) < bound
