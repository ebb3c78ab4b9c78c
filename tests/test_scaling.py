"""rampup.scaled: learning rates derived from the plan, checked against values by hand."""

import json
import math
import pickle

import model
import numpy as np
import pytest

import rampup

# Sizes 16 (steps 0-3), 32 (steps 4-7), 64 (from step 8); the largest, 64, is the reference.
SCHEDULE = rampup.piecewise({0: 16, 4: 32, 8: 64})
# O(k) by hand: 16 per step to step 4 (64), then 32 per step to step 8 (192), then 64.
OFFSETS = {0: 0, 3: 48, 4: 64, 5: 96, 8: 192, 9: 256}


@pytest.mark.parametrize(
    ("rule", "factors"),
    [
        ("sqrt", {0: 0.5, 3: 0.5, 4: math.sqrt(0.5), 7: math.sqrt(0.5), 8: 1.0, 100: 1.0}),
        ("linear", {0: 0.25, 3: 0.25, 4: 0.5, 7: 0.5, 8: 1.0, 100: 1.0}),
        ("none", {0: 1.0, 4: 1.0, 8: 1.0}),
        (lambda ratio: ratio**2, {0: 1 / 16, 4: 1 / 4, 8: 1.0}),
    ],
)
def test_each_rule_scales_a_constant_base_by_the_batch_ratio(rule, factors):
    lr = rampup.scaled(3e-4, SCHEDULE, rule=rule)
    for step, factor in factors.items():
        assert lr(step) == pytest.approx(3e-4 * factor, rel=1e-15)


@pytest.mark.parametrize(
    ("schedule", "table"),
    [
        (rampup.piecewise({0: 64, 4: 32, 8: 16}), {0: 64, 4: 32, 8: 16}),  # shrinks
        (rampup.piecewise({0: 16, 4: 64, 8: 32}), {0: 16, 4: 64, 8: 32}),  # grows, then shrinks
        (rampup.stepwise(32, {0: 2.0, 5: 0.5}), {0: 64, 5: 16}),
    ],
)
def test_the_default_reference_size_is_the_largest_size_wherever_it_comes(schedule, table):
    lr = rampup.scaled(0.1, schedule, rule="linear")
    sizes = model.sizes(table, 12)
    assert [lr(k) for k in range(12)] == pytest.approx(
        [0.1 * size / max(table.values()) for size in sizes], rel=1e-15
    )


def test_reference_size_is_the_size_the_base_was_tuned_for():
    lr = rampup.scaled(0.1, SCHEDULE, rule="linear", reference_size=32)
    assert [lr(0), lr(4), lr(8)] == pytest.approx([0.05, 0.1, 0.2], rel=1e-15)


@pytest.mark.parametrize(
    ("unit", "tokens_per_sample", "scale"),
    [("steps", None, None), ("samples", None, 1), ("tokens", 2048, 2048)],
)
def test_the_base_is_a_function_of_steps_samples_or_tokens(unit, tokens_per_sample, scale):
    lr = rampup.scaled(
        lambda t: t, SCHEDULE, rule="none", unit=unit, tokens_per_sample=tokens_per_sample
    )
    for step, offset in OFFSETS.items():
        assert lr(step) == (step if scale is None else offset * scale)


def test_a_warmup_in_tokens_stays_in_tokens_under_the_ramp():
    # 1e-3 reached after 100,000 tokens of 1,000-token samples: 100 samples, which the
    # ramp consumes by step 6 (O(6) = 128); at step 2, O = 32 samples = 32,000 tokens.
    def warmup(tokens):
        return 1e-3 * min(1.0, tokens / 100_000)

    lr = rampup.scaled(warmup, SCHEDULE, unit="tokens", tokens_per_sample=1000)
    assert lr(2) == pytest.approx(1e-3 * 0.32 * 0.5, rel=1e-15)
    assert lr(5) == pytest.approx(1e-3 * 0.96 * math.sqrt(0.5), rel=1e-15)
    assert lr(6) == pytest.approx(1e-3 * math.sqrt(0.5), rel=1e-15)
    assert lr(9) == pytest.approx(1e-3, rel=1e-15)


def test_a_linear_ramp_scales_by_its_final_size():
    # Megatron's rule: 8, 16, 24, 32 over 96 samples; B = 8 at steps 0-2 (O = 0, 8, 16 < 24).
    lr = rampup.scaled(1.0, rampup.linear(8, 8, 96, 32), rule="linear")
    assert lr(0) == 0.25
    assert lr(100) == 1.0


def test_the_value_is_a_pure_function_of_the_step():
    lr = rampup.scaled(3e-4, SCHEDULE)
    forward = [lr(k) for k in range(20)]
    fresh = rampup.scaled(3e-4, SCHEDULE)
    assert [fresh(k) for k in reversed(range(20))] == forward[::-1]
    assert [pickle.loads(pickle.dumps(lr))(k) for k in range(20)] == forward


def test_a_from_fn_schedule_needs_a_reference_size():
    schedule = rampup.from_fn(lambda k: 8 if k < 10 else 16, name="ten at 8")
    with pytest.raises(ValueError, match="reference_size"):
        rampup.scaled(1.0, schedule)
    lr = rampup.scaled(1.0, schedule, rule="linear", reference_size=16)
    assert (lr(0), lr(10)) == (0.5, 1.0)


def test_an_unknown_rule_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'cubic'.*sqrt, linear, none"):
        rampup.scaled(1.0, SCHEDULE, rule="cubic")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"base": "3e-4"}, TypeError, "base='3e-4'"),
        ({"base": True}, TypeError, "base=True"),
        ({"base": float("nan")}, ValueError, "finite"),
        ({"rule": 2}, TypeError, "rule=2"),
        ({"unit": "epochs"}, ValueError, "unit='epochs'.*steps, samples, tokens"),
        ({"unit": None}, TypeError, "unit=None"),
        ({"unit": "tokens"}, ValueError, "tokens_per_sample"),
        ({"unit": "tokens", "tokens_per_sample": "2048"}, TypeError, "2048"),
        ({"unit": "tokens", "tokens_per_sample": 0}, ValueError, "tokens_per_sample"),
        (
            {"unit": "samples", "tokens_per_sample": 2048},
            ValueError,
            "only used with unit='tokens'",
        ),
        ({"reference_size": "64"}, TypeError, "reference_size"),
        ({"reference_size": 0}, ValueError, "reference_size"),
        ({"reference_size": 64.0}, TypeError, "reference_size"),
    ],
)
def test_bad_arguments_are_refused_up_front(kwargs, error, match):
    kwargs = {"base": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        rampup.scaled(kwargs.pop("base"), SCHEDULE, **kwargs)


def test_a_rule_that_gives_no_number_is_refused_naming_the_step():
    with pytest.raises(ValueError, match="batch size 32 at step 4"):
        rampup.scaled(1.0, SCHEDULE, rule=lambda r: float("nan") if r == 0.5 else r)


@pytest.mark.parametrize(("step", "error"), [("3", TypeError), (1.0, TypeError), (-1, ValueError)])
def test_a_step_that_is_not_an_int_at_least_0_is_refused(step, error):
    with pytest.raises(error, match="step"):
        rampup.scaled(1.0, SCHEDULE)(step)


def test_plan_counts_microbatches_per_process():
    plan = rampup.Plan(SCHEDULE)
    assert [plan.microbatches(k, 4, 2) for k in (0, 4, 8)] == [2, 4, 8]
    assert plan.check_microbatches(8, 2) == 8
    with pytest.raises(
        ValueError,
        match=r"batch size 16 at step 0 .*microbatch_size=8 x "
        r"process_count=4.*multiple of 32.*sizes: 32",
    ):
        plan.check_microbatches(8, 4)
    with pytest.raises(ValueError, match="batch size 32 at step 5 .*nearest valid sizes: 24, 48"):
        plan.microbatches(5, 24)


def test_the_preview_table_shows_the_lr_of_each_segment():
    table = rampup.Plan(SCHEDULE).table(steps=12, lr=rampup.scaled(3e-4, SCHEDULE))
    lines = table.splitlines()
    assert lines[0].split()[-1] == "lr"
    assert [line.split()[-1] for line in lines[2:5]] == ["0.00015", "0.0002121", "0.0003"]


def test_rampup_preview_shows_the_lr_column(capsys, tmp_path):
    from rampup.cli import main

    spec = json.dumps(SCHEDULE.to_config())
    assert (
        main(
            [
                "preview",
                "--schedule",
                spec,
                "--steps",
                "12",
                "--lr",
                "3e-4",
                "--lr-rule",
                "linear",
                "--lr-reference-size",
                "32",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("first step"))
    assert lines[head].split()[-1] == "lr"
    assert [line.split()[-1] for line in lines[head + 2 : head + 5]] == [
        "0.00015",
        "0.0003",
        "0.0006",
    ]
    assert main(["preview", "--schedule", spec, "--lr-reference-size", "32"]) == 2
    assert "--lr-reference-size needs --lr" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    png = tmp_path / "ramp.png"
    assert (
        main(["preview", "--schedule", spec, "--steps", "12", "--lr", "3e-4", "--plot", str(png)])
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1e-3])
def test_a_base_that_gives_no_finite_number_at_least_0_is_refused_naming_the_step(bad):
    lr = rampup.scaled(lambda t: 1e-3 if t < 5 else bad, SCHEDULE)
    assert lr(4) == 1e-3 * math.sqrt(32 / 64)
    with pytest.raises(ValueError, match=r"base gives .* at step 5 \(t=5"):
        lr(5)


# Issue 20, item 16: a base of the wrong type, a rule of the wrong arity.
@pytest.mark.parametrize(
    ("value", "what"),
    [("3e-4", "(str)"), (None, "(NoneType)"), (np.array([1e-3, 2e-3]), "array of shape (2,)")],
)
def test_a_base_returning_something_else_than_one_number_is_a_type_error(value, what):
    lr = rampup.scaled(lambda t: value, rampup.constant(8))
    with pytest.raises(TypeError, match=r"base returned .* at step 3 .*one number") as e:
        lr(3)
    assert what in str(e.value)


@pytest.mark.parametrize("rule", [lambda ratio, base: ratio, lambda: 1.0])
def test_a_rule_that_does_not_take_the_ratio_alone_is_refused_when_built(rule):
    with pytest.raises(TypeError, match=r"rule=.*cannot be called with one argument.*ratio"):
        rampup.scaled(1e-3, rampup.constant(8), rule=rule)
