"""The shuffle of an epoch: a keyed bijection over `[0, N)` in O(1) memory.

`permute(index, length, seed, epoch)` is item `index` of epoch `epoch`'s
shuffle of `range(length)`, computed from the index alone: nothing of size
`length` is ever built, and a batch of B indices costs O(B) NumPy work.

The bijection is a Feistel network over `[0, a * b)` with modular halves,
`a = ceil(sqrt(length))` and `b = ceil(length / a)`: `x = L * b + R`, and a
round maps `(L, R)`, `L < a`, `R < b`, to `(R, (L + F(R)) mod a)`, so that
the halves swap their ranges every round. It is made a permutation of
`[0, length)` by cycle-walking: an output past the end is sent through the
network again until it lands inside, which a permutation of a finite set
always does. Since `a * b - length < a`, the walk is rare (about one value in
`sqrt(length)` needs it), so a batch of indices costs about one pass.

A Feistel network reaches only part of the N! orders of a set: when both
halves are odd and fill `[0, length)` exactly (81, 121, ...), every round is an
even permutation, so no odd order ever occurs. A keyed transposition after the
walk (values 0 and 1 swap for half of the (seed, epoch) keys) makes odd and
even orders equally likely at every length. For small sets the missing
orders are measurable one by one, so up to `SMALL_LENGTH` items an epoch is
shuffled by sorting instead: item `j` gets the key
`splitmix64(epoch_key + k + (j + 1) * GAMMA)`, the j-th value of a splitmix64
stream, and the shuffle is the stable argsort of the keys, which makes every
order equally likely. Only the epochs a batch touches are sorted,
each in `O(SMALL_LENGTH)`, so a batch of B consecutive positions still costs
O(B) and memory does not grow with the length.

The round keys come from (seed, epoch) through BLAKE2b and splitmix64's
finalizer, in fixed-width unsigned arithmetic: the same on every process,
worker and machine. `ALGORITHM` names this construction in checkpoint states;
any change of the order it gives must change that name.
"""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np

from rampup.schedules import check_count

ALGORITHM = "sort64-modfeistel6-swap-blake2b-splitmix64"
SMALL_LENGTH = 64  # up to here an epoch is shuffled by sorting keys
# Sorted shuffles go this many indices at a time: their temporaries stay in cache, so a
# batch's time per index does not grow with the batch.
SORT_CHUNK = 1 << 15
ROUNDS = 6  # even: the halves end with the ranges they started with
MAX_LENGTH = 2**62  # positions are int64; the halves then stay below 2**32

_U64 = np.uint64
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_S30, _S27, _S31 = _U64(30), _U64(27), _U64(31)
_GAMMA = _U64(0x9E3779B97F4A7C15)  # splitmix64's increment


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, a bijection of uint64 with full avalanche.

    The multiplications wrap modulo 2**64 on purpose; `z` is a fresh array.
    """
    z ^= z >> _S30
    z *= _MIX1
    z ^= z >> _S27
    z *= _MIX2
    z ^= z >> _S31
    return z


@functools.lru_cache(maxsize=64)
def _seed_keys(seed: int) -> np.ndarray:
    """One uint64 key per round plus one for the epoch, from any seed >= 0."""
    data = seed.to_bytes(max(8, (seed.bit_length() + 7) // 8), "little")
    digest = hashlib.blake2b(data, digest_size=8 * (ROUNDS + 1), person=b"rampup.shuffle").digest()
    keys = np.frombuffer(digest, dtype="<u8").astype(_U64)
    keys.flags.writeable = False
    return keys


def _epoch_keys(seed: int, epoch: np.ndarray) -> np.ndarray:
    """A uint64 key per element, from its epoch and the seed."""
    return _mix(epoch.astype(_U64) ^ _seed_keys(seed)[ROUNDS])


def _halves(length: int) -> tuple[int, int]:
    a = math.isqrt(length - 1) + 1
    return a, -(-length // a)


def _round(
    half: np.ndarray, epoch_key: np.ndarray, seed_key: np.uint64, modulus: np.uint64
) -> np.ndarray:
    """The round function: a pseudo-random value in `[0, modulus)` from (half, key)."""
    return _mix(half ^ (epoch_key + seed_key)) % modulus


def _network(
    x: np.ndarray, epoch_key: np.ndarray, seed: int, length: int, inverse: bool
) -> np.ndarray:
    """One pass through the Feistel network (or its inverse) over `[0, a * b)`."""
    keys = _seed_keys(seed)
    a, b = (_U64(h) for h in _halves(length))
    left, right = x // b, x % b
    ml, mr = a, b  # the ranges of the left and right halves
    if not inverse:
        for r in range(ROUNDS):
            left, right = right, (left + _round(right, epoch_key, keys[r], ml)) % ml
            ml, mr = mr, ml
    else:
        # Round r mapped (L, R) -> (R, (L + F(R)) mod a); undo the rounds in reverse.
        for r in reversed(range(ROUNDS)):
            left, right = (right + mr - _round(left, epoch_key, keys[r], mr)) % mr, left
            ml, mr = mr, ml
    return left * b + right


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values and each value's row among them.

    A batch's epochs come in order, which takes O(n); others fall back to
    `np.unique` (a sort).
    """
    change = values[1:] != values[:-1]
    if values.size and np.all(values[1:] >= values[:-1]):
        return values[np.flatnonzero(np.r_[True, change])], np.r_[0, np.cumsum(change)]
    return np.unique(values, return_inverse=True)


def _sorted(
    index: np.ndarray, epoch: np.ndarray, seed: int, length: int, inverse: bool
) -> np.ndarray:
    """The sorting shuffle of a small set: one row of keys per distinct epoch."""
    epochs, row_of = _distinct(epoch)
    counter = (np.arange(length, dtype=_U64) + _U64(1)) * _GAMMA
    keys = _mix(_epoch_keys(seed, epochs)[:, None] + _seed_keys(seed)[0] + counter)
    order = np.argsort(keys, axis=1, kind="stable")  # stable: ties, if any, by item
    if inverse:
        where = np.empty_like(order)
        np.put_along_axis(where, order, np.arange(length)[None, :], axis=1)
        order = where
    return order[row_of.reshape(-1), index.astype(np.int64)]


def _walk(
    index: np.ndarray, length: int, seed: int, epoch: np.ndarray | int, inverse: bool
) -> np.ndarray:
    length = check_count(length, "length", 1)
    if length > MAX_LENGTH:
        raise ValueError(f"length {length} is above the largest supported, 2**62")
    index = np.asarray(index)
    if index.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got dtype {index.dtype}")
    if index.size and (index.min() < 0 or index.max() >= length):
        raise ValueError(
            f"indices must lie in [0, {length}), got values from {index.min()} to {index.max()}"
        )
    epoch = np.broadcast_to(np.asarray(epoch), index.shape)
    if epoch.dtype.kind not in "iu" or (epoch.size and epoch.min() < 0):
        raise ValueError("epochs must be integers >= 0")
    seed = check_count(seed, "seed")
    if length == 1:
        return np.zeros(index.shape, np.int64)
    if length <= SMALL_LENGTH:
        flat_index, flat_epoch = index.reshape(-1), epoch.reshape(-1)
        out = np.empty(flat_index.shape, np.int64)
        for lo in range(0, flat_index.size, SORT_CHUNK):
            chunk = slice(lo, lo + SORT_CHUNK)
            out[chunk] = _sorted(flat_index[chunk], flat_epoch[chunk], seed, length, inverse)
        return out.reshape(index.shape)
    flat_key = _epoch_keys(seed, epoch.reshape(-1))
    flip = _mix(flat_key + _GAMMA) >> _U64(63)  # one key bit per epoch
    x = index.reshape(-1).astype(_U64)
    if inverse:
        x = _transpose(x, flip)
    out = _network(x, flat_key, seed, length, inverse)
    # Cycle-walking: only the values still past the end go round again.
    todo = np.flatnonzero(out >= _U64(length))
    while todo.size:
        again = _network(out[todo], flat_key[todo], seed, length, inverse)
        out[todo] = again
        todo = todo[again >= _U64(length)]
    if not inverse:
        out = _transpose(out, flip)
    return out.astype(np.int64).reshape(index.shape)


def _transpose(x: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Swaps the values 0 and 1 where `flip` is 1: a keyed transposition, its own inverse.

    A network whose halves are both odd and fill `[0, length)` exactly (length 81,
    121, ...) composes even permutations only; this makes odd orders as likely.
    """
    return np.where((flip == _U64(1)) & (x < _U64(2)), x ^ _U64(1), x)


def permute(index: np.ndarray, length: int, seed: int, epoch: np.ndarray | int) -> np.ndarray:
    """Item `index` of the shuffle of `range(length)` for (seed, epoch).

    Args:
      index: integer array, every value in `[0, length)`.
      length: the number of items, `1 <= length <= 2**62`.
      seed: the shuffle seed, any int >= 0.
      epoch: the epoch of each index (an int or an array broadcast to `index`).

    Returns:
      An int64 array of `index`'s shape: a permutation of `[0, length)` for
      each (seed, epoch), the same on every machine.
    """
    return _walk(index, length, seed, epoch, inverse=False)


def unpermute(item: np.ndarray, length: int, seed: int, epoch: np.ndarray | int) -> np.ndarray:
    """The inverse of `permute`: where each item sits in its epoch's shuffle.

    Args:
      item: integer array, every value in `[0, length)`.
      length: the number of items.
      seed: the shuffle seed.
      epoch: the epoch of each item (an int or an array broadcast to `item`).

    Returns:
      The int64 array `i` with `permute(i, length, seed, epoch) == item`.
    """
    return _walk(item, length, seed, epoch, inverse=True)
