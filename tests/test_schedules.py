"""Schedule builders: sizes per step, configs, options and bad input."""

import json
import math

import numpy as np
import pytest

import rampup
from rampup import constant, from_config, from_fn, linear, piecewise, stepwise


def sizes(schedule, n):
    return [schedule(k) for k in range(n)]


def test_constant_is_the_same_size_at_every_step():
    assert sizes(constant(8), 5) == [8] * 5
    assert constant(8)(10**12) == 8


def test_stepwise_xlstm_config_applies_latest_factor_at_step_ge_boundary():
    s = stepwise(256, {0: 0.25, 1000: 0.5, 2000: 1.0})
    assert [s(0), s(999), s(1000), s(1999), s(2000), s(10**9)] == [64, 64, 128, 128, 256, 256]


def test_stepwise_string_keys_equal_int_keys():
    s = stepwise(256, {"0": 0.25, "100": 0.5, "500": 1})
    assert [s(0), s(99), s(100), s(499), s(500)] == [64, 64, 128, 128, 256]
    assert s == stepwise(256, {0: 0.25, 100: 0.5, 500: 1.0})


def test_stepwise_uses_base_size_before_first_boundary():
    s = stepwise(100, {10: 2.0})
    assert [s(0), s(9), s(10)] == [100, 100, 200]


def test_stepwise_truncates_like_int():
    assert stepwise(10, {0: 0.35})(0) == 3  # int(3.5)


def test_stepwise_cumulative_multiplies_all_reached_scales():
    s = stepwise(64, {0: 0.25, 10: 2, 20: 2}, cumulative=True)
    assert [s(0), s(10), s(20)] == [16, 32, 64]


def test_piecewise_absolute_sizes():
    s = piecewise({0: 16, 10: 32, 20: 64})
    assert [s(0), s(9), s(10), s(19), s(20)] == [16, 16, 32, 32, 64]


def test_linear_megatron_example():
    # start 32, increment 32, 1000 ramp-up samples, final 256: n = 7 increments.
    s = linear(32, 32, 1000, 256)
    plan = rampup.Plan(s)
    for k in range(40):
        consumed = plan.offset(k)
        expected = 256 if consumed > 1000 else 32 + 32 * (consumed * 7 // 1000)
        assert s(k) == expected, k
    # hand-computed: offsets 0,32,..,128 -> 32; 160 -> floor(1120/1000)=1 -> 64
    assert sizes(s, 15) == [32, 32, 32, 32, 32, 64, 64, 96, 96, 128, 160, 192, 224, 256, 256]


def test_linear_is_exact_where_megatron_float_division_is_one_short():
    # offsets 0,3,6,12,21,36: at O == rampup_samples the size is final (24), not 21.
    s = linear(3, 3, 36, 24)
    assert sizes(s, 7) == [3, 3, 6, 9, 15, 24, 24]


def test_linear_zero_ramp_or_equal_ends_is_constant():
    assert sizes(linear(8, 4, 0, 32), 3) == [32, 32, 32]
    assert sizes(linear(32, 4, 1000, 32), 3) == [32, 32, 32]


def test_sample_thresholds_take_effect_at_first_step_whose_offset_reaches_them():
    s = piecewise({0: 4, 10: 8}, unit="samples")
    # offsets 0,4,8,12: step 3 is the first with O >= 10.
    assert sizes(s, 5) == [4, 4, 4, 8, 8]


def test_token_thresholds_convert_with_tokens_per_sample():
    s = piecewise({0: 4, 40: 8}, unit="tokens", tokens_per_sample=4)  # 40 tokens = 10 samples
    # offsets 0,4,8,12 samples = 0,16,32,48 tokens: step 3 is the first with 4*O >= 40.
    assert sizes(s, 5) == [4, 4, 4, 8, 8]
    shorter = piecewise({0: 4, 40: 8}, unit="tokens", tokens_per_sample=2)  # = 20 samples
    assert sizes(shorter, 7) == [4, 4, 4, 4, 4, 8, 8]
    assert s == piecewise({0: 4, 40: 8}, unit="tokens", tokens_per_sample=4)
    assert hash(s) == hash(piecewise({0: 4, 40: 8}, unit="tokens", tokens_per_sample=4))
    assert s != shorter


def test_tokens_need_tokens_per_sample():
    with pytest.raises(ValueError, match="tokens_per_sample"):
        piecewise({0: 4, 40: 8}, unit="tokens")


def test_unknown_unit_is_rejected():
    with pytest.raises(ValueError, match="unit='epochs'"):
        piecewise({0: 4}, unit="epochs")


def test_from_fn_checks_sizes_at_the_step():
    s = from_fn(lambda k: 0 if k == 3 else 4, name="zero-at-3")
    assert s(2) == 4
    with pytest.raises(ValueError, match="step 3"):
        s(3)


def test_from_fn_rejects_float_size_at_the_step():
    with pytest.raises(TypeError, match="step 5"):
        from_fn(lambda k: 4.0, name="float")(5)


@pytest.mark.parametrize(
    "schedule",
    [
        constant(8),
        stepwise(256, {0: 0.25, 1000: 0.5, 2000: 1.0}),
        stepwise(64, {0: 0.25, 10: 2}, cumulative=True, multiple_of=4),
        piecewise({0: 16, 10: 32}, unit="samples", max_size=64),
        piecewise({0: 16, 4096: 32}, unit="tokens", tokens_per_sample=128),
        linear(32, 32, 1000, 256),
    ],
)
def test_config_round_trips_through_json(schedule):
    config = json.loads(json.dumps(schedule.to_config()))
    again = from_config(config)
    assert again == schedule
    assert hash(again) == hash(schedule)
    assert again.fingerprint == schedule.fingerprint
    assert sizes(again, 50) == sizes(schedule, 50)


def test_fingerprint_differs_between_schedules():
    assert constant(8).fingerprint != constant(16).fingerprint
    assert stepwise(8, {0: 1.0}).fingerprint != constant(8).fingerprint


def test_from_fn_has_no_config():
    with pytest.raises(ValueError, match="from_fn"):
        from_fn(lambda k: 1, name="one").to_config()


def test_unknown_schedule_type_names_valid_types():
    with pytest.raises(ValueError, match="cosine.*constant, stepwise, piecewise, linear"):
        from_config({"type": "cosine"})


def test_config_without_a_type_names_the_valid_types():
    with pytest.raises(
        ValueError,
        match=r"needs a 'type' key, one of constant, stepwise, "
        r"piecewise, linear, megatron; got the keys \['size'\]",
    ):
        from_config({"size": 32})
    with pytest.raises(ValueError, match=r"schedule type \['constant'\] is not known"):
        from_config({"type": ["constant"], "size": 32})


@pytest.mark.parametrize(
    ("config", "missing"),
    [
        ({"type": "constant"}, "missing key 'size'"),
        ({"type": "piecewise", "unit": "samples"}, "missing key 'sizes'"),
        ({"type": "linear", "start": 8, "final": 64}, "missing keys 'increment', 'rampup_samples'"),
        ({"type": "stepwise", "batch_size": 8}, "missing key 'boundaries_and_scales'"),
    ],
)
def test_config_missing_a_key_names_it_with_an_example(config, missing):
    with pytest.raises(ValueError, match=f"{config['type']} schedule: {missing}; e.g. "):
        from_config(config)


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="sise"):
        from_config({"type": "constant", "sise": 8})


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (0, ValueError),
        (-4, ValueError),
        (8.0, TypeError),
        (math.nan, TypeError),
        (True, TypeError),
        (None, TypeError),
        ("8", TypeError),
    ],
)
def test_bad_sizes_are_errors(bad, error):
    with pytest.raises(error, match=repr(bad) if error is TypeError else str(bad)):
        constant(bad)
    with pytest.raises(error):
        piecewise({0: bad})


def test_numpy_int_sizes_are_accepted():
    assert constant(np.int64(8))(0) == 8


@pytest.mark.parametrize("key", [-1, 2.5, 100.0, "1e3", "ten", None, True])
def test_bad_boundaries_are_errors(key):
    with pytest.raises(ValueError, match="boundar"):
        stepwise(256, {0: 0.5, key: 1.0})


def test_scale_rounding_to_zero_fails_when_built_naming_boundary():
    with pytest.raises(ValueError, match=r"boundary 100 .* = 0.*>= 0.00390625"):
        stepwise(256, {0: 1.0, 100: 0.001})


@pytest.mark.parametrize(
    ("scale", "error"),
    [(-0.5, ValueError), (math.inf, ValueError), ("0.5", TypeError), (None, TypeError)],
)
def test_bad_scales_are_errors(scale, error):
    with pytest.raises(error, match="scale"):
        stepwise(256, {0: scale})


def test_piecewise_needs_step_zero():
    with pytest.raises(ValueError, match="threshold 0 is missing"):
        piecewise({10: 32})


def test_multiple_of_violation_names_step_size_and_nearest_valid():
    with pytest.raises(ValueError, match="batch size 100 at step 5 .* multiple_of=8.* 96, 104"):
        piecewise({0: 64, 5: 100}, multiple_of=8)


def test_min_and_max_size():
    with pytest.raises(ValueError, match="batch size 8 at step 0 is below min_size=16"):
        constant(8, min_size=16)
    with pytest.raises(ValueError, match="batch size 64 at step 10 is above max_size=32"):
        piecewise({0: 16, 10: 64}, max_size=32)


def test_linear_rejects_increment_that_does_not_divide():
    with pytest.raises(ValueError, match="not divisible by increment=5"):
        linear(32, 5, 1000, 256)


def test_linear_rejects_shrinking_ramp():
    with pytest.raises(ValueError, match="below start"):
        linear(64, 8, 100, 32)


def test_schedule_rejects_negative_step():
    with pytest.raises(ValueError, match="step"):
        constant(8)(-1)


def test_schedules_pickle():
    import pickle

    s = linear(32, 32, 1000, 256)
    assert pickle.loads(pickle.dumps(s)) == s
