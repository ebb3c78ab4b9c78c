"""The `rampup preview` command, run as a user runs it."""

import json
import re
import subprocess
import sys

import pytest

from rampup import Plan, from_config
from rampup.cli import DEFAULT_SCHEDULE, main


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "rampup.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_preview_without_arguments_shows_the_default_ramp():
    out = run("preview")
    assert out.returncode == 0, out.stderr
    steps = Plan(from_config(DEFAULT_SCHEDULE)).steps_for(tokens=10**10, tokens_per_sample=2048)
    assert f"{steps:,} steps" in out.stdout
    assert "16 distinct sizes" in out.stdout


def test_preview_inline_json_with_step_budget(capsys):
    spec = json.dumps({"type": "piecewise", "sizes": {"0": 16, "10": 32, "20": 64}})
    assert main(["preview", "--schedule", spec, "--steps", "30"]) == 0
    out = capsys.readouterr().out
    assert "30 steps, 1,120 samples, 3 distinct sizes" in out


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".json", '{"type": "constant", "size": 8}'),
        (".toml", 'type = "constant"\nsize = 8\n'),
        (".yaml", "type: constant\nsize: 8\n"),
    ],
)
def test_preview_reads_spec_files(tmp_path, capsys, suffix, text):
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    path = tmp_path / f"schedule{suffix}"
    path.write_text(text)
    assert main(["preview", "--schedule", str(path), "--samples", "80"]) == 0
    assert "10 steps, 80 samples, 1 distinct sizes" in capsys.readouterr().out


def test_preview_reports_rule_violation_as_error(capsys):
    spec = '{"type": "constant", "size": 100}'
    assert main(["preview", "--schedule", spec, "--multiple-of", "8"]) == 2
    assert "batch size 100 at step 0 is not divisible by multiple_of=8" in capsys.readouterr().err


def test_preview_tokens_need_tokens_per_sample(capsys):
    assert main(["preview", "--tokens", "1000"]) == 2
    assert "--tokens-per-sample" in capsys.readouterr().err


def test_preview_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "ramp.png"
    assert main(["preview", "--steps", "5000", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_quick_runs_the_chosen_suite_and_prints_one_table(tmp_path):
    # A smoke check of `rampup bench` on the core suite (seconds); the benchmarks
    # themselves are run by `rampup bench`, not by the tests.
    path = tmp_path / "bench.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rampup.cli",
            "bench",
            "--quick",
            "--suite",
            "core",
            "--json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    rows = json.loads(path.read_text())
    counted = [r for r in rows if not r.get("load_sensitive")]  # --quick ignores the others
    assert out.returncode == (0 if all(r["holds"] for r in counted) else 1), out.stderr[-3000:]
    assert rows and {r["suite"] for r in rows} == {"core"}
    assert "[core] running rampup.benchmarks.bench_core --quick" in out.stderr
    for r in rows:
        assert "failed (exit" not in r["name"], r
        assert r["ratio"] >= 0 and isinstance(r["holds"], bool)
        assert r["target"] == "reported" or re.fullmatch(r"(<=|>=) \d+(\.\d+)?", r["target"])
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["benchmark", "value", "target", "holds"]
    for r in rows:
        assert any(line.startswith(r["name"]) and f"{r['ratio']:.3f}" in line for line in lines)


def test_bench_rejects_an_unknown_suite(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--suite", "pytorch"])
    assert exit_.value.code == 2
    assert "invalid choice: 'pytorch'" in capsys.readouterr().err
