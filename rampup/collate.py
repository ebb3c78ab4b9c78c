"""Stacking a list of elements into one batch, with readable errors."""

from __future__ import annotations

import collections
import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

_SCALARS = (bool, numbers.Number, str, bytes)

Allocate = Callable[[tuple[int, ...], np.dtype], np.ndarray]
# Stacks the values at one node of the elements into a batch, or returns NotImplemented.
StackLeaves = Callable[[Sequence[Any]], Any]


def mapping_like(template: Mapping, items: dict) -> Mapping:
    """`items` as a mapping of `template`'s type; a `defaultdict` keeps its default factory.

    Args:
      template: the mapping whose type (dict, OrderedDict, defaultdict...) to keep.
      items: the new keys and values.

    Returns:
      `items` itself for a plain dict, else a new mapping of `template`'s type.
    """
    if type(template) is dict:
        return items
    if isinstance(template, collections.defaultdict):
        out = type(template)(template.default_factory)
        out.update(items)
        return out
    return type(template)(items)  # type: ignore[call-arg]


def _is_dataclass_instance(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


def spec(x: Any) -> str:
    """A short description of a pytree's structure, dtypes and shapes."""
    if _is_dataclass_instance(x):
        inner = ", ".join(f"{f.name}={spec(getattr(x, f.name))}" for f in dataclasses.fields(x))
        return f"{type(x).__name__}({inner})"
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


def _uniform(leaves: Sequence[Any]) -> bool:
    """All leaves are NumPy arrays or scalars of leaf 0's dtype and shape."""
    first = leaves[0]
    return all(
        isinstance(leaf, (np.ndarray, np.generic))
        and leaf.dtype == first.dtype
        and leaf.shape == first.shape
        for leaf in leaves
    )


def _same_text_kind(leaves: Sequence[Any]) -> bool:
    """All leaves are NumPy strings (or all bytes) of one shape, whatever their widths."""
    first = leaves[0]
    return all(
        isinstance(leaf, (np.ndarray, np.generic))
        and leaf.dtype.kind == first.dtype.kind
        and leaf.shape == first.shape
        for leaf in leaves
    )


def _stack(
    leaves: Sequence[Any],
    elements: Sequence[Any],
    path: tuple,
    allocate: Allocate | None = None,
    stack: StackLeaves | None = None,
) -> Any:
    if stack is not None:
        stacked = stack(leaves)
        if stacked is not NotImplemented:
            return stacked
    first = leaves[0]
    if isinstance(first, Mapping):
        keys = first.keys()
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, Mapping) or leaf.keys() != keys:
                raise _mismatch(elements, i, path, "different keys")
        out = {
            k: _stack([leaf[k] for leaf in leaves], elements, (*path, k), allocate, stack)
            for k in keys
        }
        return mapping_like(first, out)
    if isinstance(first, (list, tuple)):
        kind, n = type(first), len(first)
        for i, leaf in enumerate(leaves):
            if type(leaf) is not kind or len(leaf) != n:
                raise _mismatch(elements, i, path, "different structure")
        parts = [
            _stack([leaf[j] for leaf in leaves], elements, (*path, j), allocate, stack)
            for j in range(n)
        ]
        return kind(*parts) if hasattr(first, "_fields") else kind(parts)
    if isinstance(first, (np.ndarray, np.generic)):
        if allocate is not None and not first.dtype.hasobject and _uniform(leaves):
            buffer = allocate((len(leaves), *first.shape), first.dtype)
            return np.stack(leaves, out=buffer, casting="no")
        try:
            stacked = np.stack(leaves, dtype=first.dtype, casting="no")
        except (ValueError, TypeError) as e:
            if not (first.dtype.kind in "US" and _same_text_kind(leaves)):
                i = _leaf_mismatch(leaves)
                raise _mismatch(elements, i, path, "different dtype or shape") from e
            stacked = np.stack(leaves)  # the widest string's width, as grain's batch gives
        if allocate is None or stacked.dtype.hasobject:
            return stacked
        # Strings of several widths: the buffer is allocated once the widest is known,
        # as grain's batch does. One allocated for the first width would fail to take
        # the batch and stay behind: shared memory nothing releases, a segment a batch.
        buffer = allocate(stacked.shape, stacked.dtype)
        buffer[...] = stacked
        return buffer
    if first is None:
        for i, leaf in enumerate(leaves):
            if leaf is not None:
                raise _mismatch(elements, i, path, "None in element 0 only")
        return None
    if _is_dataclass_instance(first):
        kind = type(first)
        for i, leaf in enumerate(leaves):
            if type(leaf) is not kind:
                raise _mismatch(elements, i, path, "different dataclass")
        fields = [f.name for f in dataclasses.fields(first) if f.init]
        return dataclasses.replace(
            first,
            **{
                name: _stack(
                    [getattr(leaf, name) for leaf in leaves],
                    elements,
                    (*path, name),
                    allocate,
                    stack,
                )
                for name in fields
            },
        )
    if isinstance(first, _SCALARS):
        scalar_type = type(first)
        for i, leaf in enumerate(leaves):
            if type(leaf) is not scalar_type:
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


def default_collate(
    elements: Sequence[Any], *, allocate: Allocate | None = None, stack: StackLeaves | None = None
) -> Any:
    """Stacks elements (pytrees of arrays and scalars) along a new leading axis.

    Dicts (any mapping type, a `defaultdict` with its factory), lists, tuples,
    namedtuples and dataclasses (field by field, into the same dataclass) keep their
    type; `None` stays `None` when every element has it; NumPy strings of
    different widths stack to the widest, as grain's `make_batch` does.

    Args:
      elements: the batch's elements, all of the same structure, dtypes and shapes.
      allocate: `(shape, dtype) -> array` that each NumPy leaf's batch is stacked
        into (grain's shared memory in `mp_prefetch` workers); None allocates as
        `np.stack` does. Not called for object dtypes.
      stack: `leaves -> batch` tried first at every node of the structure, with
        the elements' values there; it returns `NotImplemented` to leave a node to
        this function (a framework's tensors stacked as tensors, for instance).

    Returns:
      One pytree of the elements' structure whose leaves have a leading batch axis.
    """
    if len(elements) == 0:
        raise ValueError("cannot collate an empty list of elements")
    return _stack(elements, elements, (), allocate, stack)
