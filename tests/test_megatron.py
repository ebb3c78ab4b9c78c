"""`from_megatron`: Megatron-LM's --step-batch-size-schedule, step by step."""

import json

import pytest

from rampup import Plan, from_config, from_megatron

SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def megatron_sizes(schedule: str, seq_length: int | None, steps: int) -> list[int]:
    """Megatron-LM's rule, simulated one training step at a time.

    Before each step the trainer asks for the batch size at the samples consumed
    so far: the size of the last entry (by threshold) whose threshold is at most
    them; a token threshold counts `threshold // seq_length` samples.
    """
    entries = []
    for entry in schedule.replace(",", " ").split():
        threshold, size = entry.split(":")
        scale = SUFFIX.get(threshold[-1].lower(), 1)
        number = threshold[:-1] if scale > 1 else threshold
        samples = round(float(number) * scale)
        entries.append((samples if seq_length is None else samples // seq_length, int(size)))
    entries.sort()
    consumed, sizes = 0, []
    for _ in range(steps):
        size = entries[0][1]
        for threshold, candidate in entries:
            if consumed >= threshold:
                size = candidate
        sizes.append(size)
        consumed += size
    return sizes


CASES = [
    ("0:16 100:32, 1K:64", None, 200),
    ("0:1 1000:2 1200:3", 300, 60),  # token thresholds between samples: floor, not ceil
    ("0:16 2.4K:320 4.8K:624 7.2K:928 9.6K:1232 12K:1536", None, 40),
    ("0:768 250M:1536 500M:3072 750M:6144", 4096, 400),
    ("0:3 7:5 8:2 9:11 64:4", None, 50),  # thresholds inside a batch, sizes that shrink
    ("0:8,10:16,10k:32", None, 700),
    ("1M:16 0:8", 2048, 100),  # Megatron-LM sorts the entries
    ("0:4 0.00002t:8", 1000, 5100),
]


@pytest.mark.parametrize(("schedule", "seq_length", "steps"), CASES)
def test_from_megatron_matches_megatrons_rule_at_every_step(schedule, seq_length, steps):
    plan = Plan(from_megatron(schedule, seq_length=seq_length))
    expected = megatron_sizes(schedule, seq_length, steps)
    assert [plan.size(k) for k in range(steps)] == expected
    assert plan.offset(steps) == sum(expected)


def test_the_gpt3_175b_example_of_megatron_lm_reads_as_written():
    # megatron's examples/gpt3/train_gpt3_175b_distributed.sh, with --seq-length 2048
    schedule = "0:16 2.4B:320 4.8B:624 7.2B:928 9.6B:1232 12B:1536"
    plan = Plan(from_megatron(schedule, seq_length=2048))
    first = plan.divisible_from(1536)
    assert plan.size(first) == 1536 and plan.size(first - 1) == 1232
    assert plan.offset(first) >= 12 * 10**9 // 2048 > plan.offset(first - 1)


def test_a_megatron_schedule_is_a_config_that_round_trips():
    config = {"type": "megatron", "schedule": "0:768 250b:1536", "seq_length": 4096}
    schedule = from_config(config)
    assert schedule == from_megatron("0:768 250B:1536", seq_length=4096)
    again = from_config(json.loads(json.dumps(schedule.to_config())))
    assert again == schedule and again.fingerprint == schedule.fingerprint
    assert schedule.to_config()["schedule"] == "0:768 250B:1536"
    assert from_config({"type": "megatron", "schedule": "0:8 16:32"})(2) == 32


@pytest.mark.parametrize(
    ("schedule", "seq_length", "message"),
    [
        ("", None, "the schedule is empty"),
        ("0:16 100", None, "entry '100' is not THRESHOLD:BATCH_SIZE"),
        ("0:16 :32", None, "entry ':32' is not THRESHOLD:BATCH_SIZE"),
        ("10:16 100:32", None, "first threshold is 10 samples; it must be 0"),
        ("4096:16", 2048, "first threshold is 4,096 tokens // seq_length=2048 = 2 samples"),
        ("0:16 100:32 100:64", None, "100 samples and 100 samples; .* strictly increasing"),
        ("0:1 1000:2 1100:3", 300, "1,000 tokens // seq_length=300 = 3 samples and 1,100"),
        ("0:16 100:0", None, "batch size '0' in entry '100:0' is not valid"),
        ("0:16 1.5:32", None, "threshold '1.5' in entry '1.5:32' is not a whole number"),
        ("0:16 100:2.5", None, "batch size '2.5' in entry '100:2.5' is not a whole number"),
        ("0:16 -5:32", None, "threshold '-5' .* not a whole number >= 0"),
        ("0:16 10X:32", None, "threshold '10X' .* K, M, B or T suffix"),
        ("0:16 infB:32", None, "threshold 'infB' .* not a whole number"),
        ("0:16 1e40:32", None, "threshold '1e40' .* below 10\\^31"),
    ],
)
def test_a_malformed_megatron_schedule_is_refused_with_the_reason(schedule, seq_length, message):
    with pytest.raises(ValueError, match=message):
        from_megatron(schedule, seq_length=seq_length)


def test_from_megatron_argument_types():
    with pytest.raises(TypeError, match="--step-batch-size-schedule string"):
        from_megatron({0: 16})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seq_length must be an int >= 1, got 0"):
        from_megatron("0:16", seq_length=0)
    with pytest.raises(ValueError, match="tokens_per_sample are not options"):
        from_megatron("0:16", unit="tokens")
    assert from_megatron("0:16 64:32", multiple_of=16)(5) == 32
