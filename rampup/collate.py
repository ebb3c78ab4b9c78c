"""Stacking a list of elements into one batch, with readable errors."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_SCALARS = (bool, numbers.Number, str, bytes)


def spec(x: Any) -> str:
    """A short description of a pytree's structure, dtypes and shapes."""
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {spec(v)}" for k, v in x.items()) + "}"
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        inner = ", ".join(f"{f}={spec(v)}" for f, v in zip(x._fields, x, strict=True))
        return f"{type(x).__name__}({inner})"
    if isinstance(x, (list, tuple)):
        inner = ", ".join(spec(v) for v in x)
        return f"[{inner}]" if isinstance(x, list) else f"({inner})"
    if isinstance(x, (np.ndarray, np.generic)):
        return f"{x.dtype}{list(x.shape)}"
    return type(x).__name__


def _path(path: tuple) -> str:
    return "".join(f"[{p!r}]" for p in path) or "the element itself"


def _mismatch(elements: Sequence[Any], index: int, path: tuple, why: str) -> ValueError:
    return ValueError(
        f"cannot collate: element {index} of the batch does not match element 0 at "
        f"{_path(path)} ({why}): element 0 is {spec(elements[0])}, element {index} is "
        f"{spec(elements[index])}"
    )


def _leaf_mismatch(leaves: Sequence[Any]) -> int:
    """The index of the first leaf whose type, dtype or shape differs from leaf 0."""
    first = np.asarray(leaves[0])
    for i, leaf in enumerate(leaves):
        if type(leaf) is not type(leaves[0]):
            return i
        a = np.asarray(leaf)
        if a.dtype != first.dtype or a.shape != first.shape:
            return i
    return 0


def _stack(leaves: Sequence[Any], elements: Sequence[Any], path: tuple) -> Any:
    first = leaves[0]
    if isinstance(first, Mapping):
        keys = first.keys()
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, Mapping) or leaf.keys() != keys:
                raise _mismatch(elements, i, path, "different keys")
        out = {k: _stack([leaf[k] for leaf in leaves], elements, (*path, k)) for k in keys}
        return out if type(first) is dict else type(first)(out)
    if isinstance(first, (list, tuple)):
        kind, n = type(first), len(first)
        for i, leaf in enumerate(leaves):
            if type(leaf) is not kind or len(leaf) != n:
                raise _mismatch(elements, i, path, "different structure")
        parts = [_stack([leaf[j] for leaf in leaves], elements, (*path, j)) for j in range(n)]
        return kind(*parts) if hasattr(first, "_fields") else kind(parts)
    if isinstance(first, (np.ndarray, np.generic)):
        try:
            return np.stack(leaves, dtype=first.dtype, casting="no")
        except (ValueError, TypeError) as e:
            i = _leaf_mismatch(leaves)
            raise _mismatch(elements, i, path, "different dtype or shape") from e
    if isinstance(first, _SCALARS):
        kind = type(first)
        for i, leaf in enumerate(leaves):
            if type(leaf) is not kind:
                raise _mismatch(elements, i, path, "different scalar type")
        return np.asarray(leaves)
    if hasattr(first, "__array__"):
        try:
            return np.stack([np.asarray(leaf) for leaf in leaves])
        except ValueError as e:
            i = _leaf_mismatch(leaves)
            raise _mismatch(elements, i, path, "different dtype or shape") from e
    raise TypeError(
        f"cannot collate a leaf of type {type(first).__name__} at {_path(path)}; the default "
        "collate stacks dicts, lists, tuples and namedtuples of NumPy arrays and scalars. "
        "Pass collate=... for other types."
    )


def default_collate(elements: Sequence[Any]) -> Any:
    """Stacks elements (pytrees of arrays and scalars) along a new leading axis.

    Args:
      elements: the batch's elements, all of the same structure, dtypes and shapes.

    Returns:
      One pytree of the elements' structure whose leaves have a leading batch axis.
    """
    if len(elements) == 0:
        raise ValueError("cannot collate an empty list of elements")
    return _stack(elements, elements, ())
