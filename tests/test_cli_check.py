"""`rampup check` and Megatron-LM schedules on the command line, run as a user runs them."""

import subprocess
import sys

from test_cli import refused  # the command line's one refusal format

from rampup import Plan, from_megatron

GPT3 = "0:16 2.4B:320 4.8B:624 7.2B:928 9.6B:1232 12B:1536"  # Megatron-LM's GPT-3 175B example


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "rampup", *args], capture_output=True, text=True, timeout=120
    )


def test_check_prints_the_first_legal_step_of_each_topology():
    out = run(
        "check",
        "--schedule",
        '{"type": "piecewise", "sizes": {"0": 4, "10": 16, "20": 48}}',
        "--topology",
        "4",
        "--topology",
        "8",
        "--topology",
        "2,microbatch=4",
        "--topology",
        "1,data=16",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert (
        lines[1]
        == "4 processes (every size a multiple of 4): legal from step 0, every size divides"
    )
    assert lines[2:4] == [
        "8 processes (every size a multiple of 8): legal from step 10 (40 samples consumed)",
        "  size 4 at steps 0 to 9 does not divide; nearest legal: 8",
    ]
    assert lines[4] == (
        "2 processes, micro-batch 4 (every size a multiple of 8): legal from step 10 "
        "(40 samples consumed)"
    )
    assert lines[6:] == [
        "1 process, data axis 16 (every size a multiple of 16): legal from step 10 "
        "(40 samples consumed)",
        "  size 4 at steps 0 to 9 does not divide; nearest legal: 16",
    ]


def test_check_exits_2_when_a_topology_is_never_legal():
    out = run("check", "--megatron", GPT3, "--seq-length", "2048", "--topology", "1024")
    assert out.returncode == 2
    assert "1,024 processes (every size a multiple of 1,024): never legal" in out.stdout
    assert "  size 1,536 at steps 80,998 on does not divide; nearest legal: 1,024 or 2,048" in (
        out.stdout
    )


def test_check_reads_a_megatron_schedule_with_token_thresholds():
    out = run("check", "--megatron", GPT3, "--seq-length", "2048", "--topology", "64,microbatch=2")
    assert out.returncode == 0, out.stderr
    plan = Plan(from_megatron(GPT3, seq_length=2048))
    first = plan.divisible_from(128)
    samples = plan.offset(first)
    assert (
        f"legal from step {first:,} ({samples:,} samples, {samples * 2048:,} tokens consumed)"
        in out.stdout
    )
    assert (
        "size 1,232 at steps 80,047 to 80,997 does not divide; nearest legal: 1,152 or 1,280"
        in (out.stdout)
    )


def test_check_refuses_a_malformed_topology_or_schedule():
    refused(run("check", "--megatron", "0:16", "--topology", "8,micro=2"), "'micro=2'", "e.g. 64")
    refused(run("check", "--megatron", "0:16", "--topology", "0"), "must be an int >= 1")
    refused(run("check", "--megatron", "0:16"), "--topology")
    refused(run("check", "--megatron", "5:16", "--topology", "8"), "first threshold is 5 samples")
    refused(
        run(
            "check",
            "--schedule",
            '{"type": "constant", "size": 8}',
            "--seq-length",
            "4",
            "--topology",
            "8",
        ),
        "--seq-length goes with --megatron",
    )


def test_preview_shows_a_megatron_schedule_as_written():
    out = run("preview", "--megatron", "0:8 100:16, 1k:32", "--steps", "100")
    assert out.returncode == 0, out.stderr
    assert 'schedule: {"schedule": "0:8 100:16 1K:32", "type": "megatron"' in out.stdout
    plan = Plan(from_megatron("0:8 100:16 1k:32"))
    assert plan.size(12) == 8 and plan.size(13) == 16
    rows = [line.split() for line in out.stdout.splitlines()]
    assert ["0", "12", "8", "104", "5.22%"] in rows
    assert ["13", "68", "16", "896", "44.98%"] in rows
