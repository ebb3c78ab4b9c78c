"""default_collate: pytree stacking and its errors."""

import dataclasses
from collections import OrderedDict, defaultdict, namedtuple

import numpy as np
import pytest

from rampup import default_collate

Pair = namedtuple("Pair", "a b")


def test_stacks_arrays_along_a_new_axis():
    out = default_collate([np.arange(3, dtype=np.float32) + i for i in range(4)])
    assert out.shape == (4, 3) and out.dtype == np.float32
    assert out[2].tolist() == [2, 3, 4]


def test_keeps_dict_list_tuple_and_namedtuple_structure():
    elements = [{"p": Pair(np.int32(i), [np.zeros(2), (i, 1.5)])} for i in range(3)]
    out = default_collate(elements)
    assert isinstance(out["p"], Pair)
    assert out["p"].a.tolist() == [0, 1, 2] and out["p"].a.dtype == np.int32
    assert isinstance(out["p"].b, list) and out["p"].b[0].shape == (3, 2)
    assert isinstance(out["p"].b[1], tuple)
    assert out["p"].b[1][0].tolist() == [0, 1, 2] and out["p"].b[1][1].tolist() == [1.5] * 3


def test_shape_mismatch_names_element_and_both_specs():
    elements = [np.zeros(3, np.float32)] * 2 + [np.zeros(4, np.float32)]
    with pytest.raises(ValueError, match=r"element 2 .* float32\[3\].* float32\[4\]"):
        default_collate(elements)


def test_dtype_mismatch_is_an_error_not_a_silent_cast():
    elements = [np.zeros(3, np.float64), np.zeros(3, np.float32)]
    with pytest.raises(ValueError, match=r"element 1 .*float64\[3\].*float32\[3\]"):
        default_collate(elements)


def test_key_mismatch_names_the_element():
    with pytest.raises(ValueError, match="element 1 .*different keys.*'x'.*'y'"):
        default_collate([{"x": 1}, {"y": 1}])


def test_leaf_path_is_named():
    elements = [{"img": np.zeros((2, 2))}, {"img": np.zeros((2, 3))}]
    with pytest.raises(ValueError, match=r"\['img'\]"):
        default_collate(elements)


def test_scalar_type_mismatch():
    with pytest.raises(ValueError, match="element 1 .*scalar type"):
        default_collate([1, 2.0])


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        default_collate([])


def test_unsupported_leaf_type_says_to_pass_collate():
    with pytest.raises(TypeError, match="collate="):
        default_collate([object(), object()])


def test_defaultdict_keeps_its_type_and_default_factory():
    elements = [defaultdict(list, x=np.arange(2) + i) for i in range(3)]
    out = default_collate(elements)
    assert type(out) is defaultdict and out.default_factory is list
    assert out["x"].tolist() == [[0, 1], [1, 2], [2, 3]]
    assert out["missing"] == []


def test_other_mapping_types_are_kept():
    out = default_collate([OrderedDict(b=np.int8(i), a=np.int8(-i)) for i in range(2)])
    assert type(out) is OrderedDict and list(out) == ["b", "a"]


def test_none_leaves_stay_none():
    out = default_collate([{"x": np.int32(i), "mask": None} for i in range(3)])
    assert out["mask"] is None and out["x"].tolist() == [0, 1, 2]
    assert default_collate([None, None]) is None


def test_none_in_some_elements_only_is_a_mismatch():
    with pytest.raises(ValueError, match=r"element 1 .*\['mask'\].*None in element 0 only"):
        default_collate([{"mask": None}, {"mask": np.int32(1)}])


@dataclasses.dataclass
class Example:
    image: np.ndarray
    label: int
    weight: float = 1.0


def test_dataclasses_stack_field_by_field_into_the_same_dataclass():
    out = default_collate([Example(np.zeros((2, 2)) + i, i) for i in range(3)])
    assert type(out) is Example
    assert out.image.shape == (3, 2, 2) and out.image[2, 0, 0] == 2
    assert out.label.tolist() == [0, 1, 2] and out.weight.tolist() == [1.0] * 3


def test_dataclass_mismatch_names_the_field():
    elements = [Example(np.zeros(2), 0), Example(np.zeros(3), 1)]
    with pytest.raises(ValueError, match=r"element 1 .*\['image'\].*Example\(image=float64\[2\]"):
        default_collate(elements)


def test_numpy_strings_of_different_widths_stack_to_the_widest():
    out = default_collate([np.str_("a"), np.str_("abc"), np.str_("ab")])
    assert out.dtype == np.dtype("<U3") and out.tolist() == ["a", "abc", "ab"]
    out = default_collate([np.array([b"xy", b"z"]), np.array([b"x", b"zzzz"])])
    assert out.dtype == np.dtype("S4") and out.shape == (2, 2)


def test_strings_and_bytes_do_not_mix():
    with pytest.raises(ValueError, match="element 1 .*different dtype"):
        default_collate([np.str_("a"), np.bytes_(b"abc")])


def test_shared_memory_is_allocated_once_for_strings_of_varying_width():
    # Under grain's mp_prefetch each allocation is a /dev/shm segment: one allocated for
    # the first string's width, which the batch does not fit, would never be released.
    allocated = []

    def allocate(shape, dtype):
        allocated.append(np.zeros(shape, dtype))
        return allocated[-1]

    elements = [{"word": np.array("a")}, {"word": np.array("abc")}, {"word": np.array("ab")}]
    batch = default_collate(elements, allocate=allocate)
    assert batch["word"].tolist() == ["a", "abc", "ab"] and batch["word"].dtype == "<U3"
    assert len(allocated) == 1 and allocated[0] is batch["word"]
