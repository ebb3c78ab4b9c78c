"""The `rampup preview` command, run as a user runs it."""

import json
import re
import subprocess
import sys

import pytest

from rampup import Plan, from_config
from rampup.cli import DEFAULT_SCHEDULE, main


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "rampup", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def refused(out, *fragments):
    """Exit 2, nothing on stdout, one line on stderr that holds every fragment."""
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, (fragment, out.stderr)


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
    assert "10 steps, 80 samples, 1 distinct size\n" in capsys.readouterr().out


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


def test_version_and_python_dash_m():
    from rampup import __version__

    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"rampup {__version__}"
    out = run("preview", "--steps", "3", "--schedule", '{"type": "constant", "size": 4}')
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("3 steps, 12 samples, 1 distinct size")


def test_plot_without_a_suffix_writes_png_and_prints_that_path(tmp_path):
    pytest.importorskip("matplotlib")
    out = run("preview", "--steps", "50", "--plot", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "plot written to out.png"
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out").exists()


def test_plot_into_a_missing_folder_is_refused_before_printing(tmp_path):
    refused(
        run("preview", "--plot", str(tmp_path / "nowhere" / "ramp.png")),
        "--plot",
        "the folder",
        "nowhere",
        "does not exist",
    )


def test_plot_without_matplotlib_is_refused_before_printing():
    # matplotlib made unimportable in the child, as in an install without the plot extra.
    code = (
        "import sys; sys.modules['matplotlib'] = None; from rampup.cli import main; "
        "sys.exit(main(['preview', '--plot', 'ramp.png']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    refused(out, "--plot needs matplotlib", 'pip install -e ".[plot]"')


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--steps", "-5"], "argument --steps: must be an int >= 1, got -5"),
        (["--samples", "0"], "argument --samples: must be an int >= 1, got 0"),
        (["--steps", "ten"], "argument --steps: must be an int >= 1, got 'ten'"),
        (["--multiple-of", "0"], "argument --multiple-of: must be an int >= 1, got 0"),
        (
            ["--tokens", "100", "--tokens-per-sample", "-2"],
            "argument --tokens-per-sample: must be an int >= 1, got -2",
        ),
        (
            ["--tokens-per-sample", "2.5"],
            "argument --tokens-per-sample: must be an int >= 1, got '2.5'",
        ),
    ],
)
def test_bad_numbers_are_refused_before_printing(args, fragment):
    refused(run("preview", *args), fragment)


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        (
            "bad.json",
            '{"type": "constant",\n "size": }\n',
            ["bad.json: not valid JSON at line 2, column 10"],
        ),
        ("bad.toml", 'type = "constant"\nsize = \n', ["bad.toml: not valid TOML", "line 2"]),
        ("bad.yaml", "type: constant\nsize: [1\n", ["bad.yaml: not valid YAML at line"]),
        (
            "evil.yaml",
            'type: !!python/object/apply:os.system ["echo hacked"]\nsize: 3\n',
            ["evil.yaml: not valid YAML at line 1", "python/object/apply", "no !!python"],
        ),
        ("list.yaml", "- 1\n- 2\n", ["list.yaml: a schedule is a mapping with a 'type' key"]),
        (
            "partial.toml",
            'type = "linear"\nstart = 8\n',
            ["partial.toml: linear schedule: missing keys 'increment', 'rampup_samples', 'final'"],
        ),
    ],
)
def test_malformed_schedule_files_name_the_file_and_line(tmp_path, name, text, fragments):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    (tmp_path / name).write_text(text)
    out = run("preview", "--schedule", name, cwd=tmp_path)
    refused(out, *fragments)
    assert "hacked" not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        (
            '{"size": 32}',
            [
                "needs a 'type' key, one of constant, stepwise, piecewise, linear",
                "got the keys ['size']",
                '{"type": "constant", "size": 32}',
            ],
        ),
        ('{"type": "constant"}', ["constant schedule: missing key 'size'"]),
        (
            '{"type": "stepwise", "batch_size": 64}',
            ["stepwise schedule: missing key 'boundaries_and_scales'"],
        ),
        (
            "32",
            [
                "--schedule '32': neither inline JSON nor a file",
                """inline JSON such as '{"type": "constant", "size": 32}'""",
                ".yaml/.yml or .toml",
            ],
        ),
        ("ramp.yaml", ["--schedule 'ramp.yaml': no such file"]),
        ('{"type": "constant", size}', ["--schedule is not valid JSON at column 22"]),
    ],
)
def test_bad_schedule_specs_say_what_is_missing_and_what_is_accepted(tmp_path, spec, fragments):
    refused(run("preview", "--schedule", spec, cwd=tmp_path), *fragments)


def test_bench_json_into_a_missing_folder_is_refused_before_running(tmp_path):
    refused(
        run("bench", "--json", str(tmp_path / "nowhere" / "bench.json")),
        "--json",
        "the folder",
        "does not exist",
    )


def test_demo_adaptive_refuses_a_schedule_it_would_ignore():
    refused(
        run("demo", "--adaptive", "--schedule", '{"type": "constant", "size": 8}'),
        "--adaptive decides the sizes as it trains: it takes no --schedule",
    )


def test_lr_options_are_checked_before_printing():
    refused(
        run("preview", "--lr", "3e-4", "--lr-reference-size", "0"),
        "argument --lr-reference-size: must be an int >= 1, got 0",
    )
    refused(run("preview", "--lr-reference-size", "256"), "--lr-reference-size needs --lr")


def test_schedule_help_shows_the_format_with_an_example():
    out = run("preview", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert """--schedule SPEC inline JSON, e.g. '{"type": "piecewise", "sizes":""" in text
    assert ".json/.yaml/.toml file" in text and "examples/ramp.yaml" in text


FINE_RAMP = (
    '{"type": "linear", "start": 1, "increment": 1, "rampup_samples": 2000000, "final": 4096}'
)


def test_a_long_preview_is_cut_and_says_what_was_left_out():
    plan = Plan(from_config(json.loads(FINE_RAMP)))
    segments = len(plan.segments(20_000))
    assert segments > 1000
    out = run("preview", "--schedule", FINE_RAMP, "--steps", "20000")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) < 60
    assert sum(line.split()[:1] == ["..."] for line in lines) == 1
    shown = 40
    assert f"{segments - shown:,} segments not shown (steps " in out.stdout
    assert lines[-1] == "(--all prints every segment)"
    full = run("preview", "--schedule", FINE_RAMP, "--steps", "20000", "--all")
    assert full.returncode == 0
    assert len(full.stdout.splitlines()) == segments + 7  # 3 header lines, 2 table, 2 totals
    assert "not shown" not in full.stdout


def test_plural_and_singular_in_the_summary():
    out = run("preview", "--schedule", '{"type": "constant", "size": 1}', "--steps", "1")
    assert out.stdout.rstrip().endswith("1 step, 1 sample, 1 distinct size")


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


@pytest.mark.slow
def test_bench_runs_jax_on_one_device_with_targets_then_on_eight_reported(tmp_path):
    pytest.importorskip("jax")
    path = tmp_path / "bench.json"
    out = subprocess.run(
        [sys.executable, "-m", "rampup.cli", "bench", "--quick", "--suite", "jax"]
        + ["--json", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]  # every JAX row is load-sensitive
    rows = json.loads(path.read_text())
    one = [r for r in rows if r["name"].endswith(", 1 devices")]
    eight = [r for r in rows if r["name"].endswith(", 8 devices")]
    assert len(one) == len(eight) == 4 and len(rows) == 8
    assert all(r["target"] != "reported" for r in one)
    assert all(r["target"] == "reported" for r in eight)
    assert "--xla_force_host_platform_device_count=8' rampup.benchmarks.bench_jax" in out.stderr


def test_bench_rejects_an_unknown_suite(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--suite", "pytorch"])
    assert exit_.value.code == 2
    assert "invalid choice: 'pytorch'" in capsys.readouterr().err


def test_a_yaml_alias_bomb_is_refused_at_once_and_in_one_line(tmp_path):
    pytest.importorskip("yaml")
    levels = ['&a0 ["x","x","x","x","x","x","x","x","x"]']
    levels += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"type: piecewise\nsizes: [{', '.join(levels)}]\n")  # 9**9 values, < 1 kB
    assert bomb.stat().st_size < 1000
    out = run("preview", "--schedule", str(bomb))  # before: a message of 387 million 'x'
    refused(out, "bomb.yaml", "expands to more than 100,000 values")


# Issue 20, item 16: each message names the argument and the fix.
def test_inline_json_of_a_list_is_named_as_json_not_as_a_missing_file():
    refused(run("preview", "--schedule", "[1,2]"), "--schedule:", "a mapping with a 'type' key")


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_not_called_a_missing_file(tmp_path):
    import os

    fifo = tmp_path / "ramp.json"
    os.mkfifo(fifo)
    out = run("preview", "--schedule", str(fifo))
    refused(out, f"--schedule {str(fifo)!r}: not a regular file", '{"type": "constant"')
    assert "no such file" not in out.stderr


def test_an_integer_of_5000_digits_is_named_by_its_length():
    digits = "9" * 5000
    out = run("preview", "--steps", digits)
    refused(out, "argument --steps:", "at most 4,300 digits", "got one of 5,000 digits")
    assert digits not in out.stderr


@pytest.mark.parametrize("suffix", ["inline", ".json", ".yaml", ".toml"])
def test_an_integer_of_5000_digits_in_a_schedule_names_where_it_is(tmp_path, suffix):
    digits = "9" * 5000
    if suffix == "inline":
        spec, where = '{"type": "constant", "size": ' + digits + "}", "--schedule:"
    else:
        path = tmp_path / f"ramp{suffix}"
        text = {
            ".json": '{"type": "constant", "size": ' + digits + "}",
            ".yaml": "type: constant\nsize: " + digits + "\n",
            ".toml": 'type = "constant"\nsize = ' + digits + "\n",
        }[suffix]
        path.write_text(text)
        spec, where = str(path), f"{path}:"
    refused(run("preview", "--schedule", spec), where, "more than 4,300 digits")
