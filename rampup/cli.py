"""The `rampup` command: preview a schedule, check it against topologies, run the demo, run
the benchmarks."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn, cast

from rampup import __version__
from rampup.demo import BACKENDS, DEFAULT_STEPS, install_hint
from rampup.demo import main as run_demo
from rampup.plan import Plan
from rampup.scaling import RULES, scaled
from rampup.schedules import Schedule, from_config, nearest_multiples

# GPT-3 grew its batch from 32k to 3.2M tokens over the first 4-12B tokens; this
# is the same shape scaled down: 64 -> 1024 samples of 2048 tokens over 1M samples.
DEFAULT_SCHEDULE = {
    "type": "linear",
    "start": 64,
    "increment": 64,
    "rampup_samples": 1_000_000,
    "final": 1024,
}
DEFAULT_TOKENS_PER_SAMPLE = 2048
DEFAULT_TOKENS = 10_000_000_000
SCHEDULE_FORMS = (
    'inline JSON such as \'{"type": "constant", "size": 32}\', or the path of a '
    ".json, .yaml/.yml or .toml file with the same keys (examples/ramp.yaml)"
)
MAX_ROWS = 40


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int >= `minimum`, refused with the value and the valid range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            digits = text.strip().lstrip("+-").replace("_", "")
            if digits.isdigit() and len(digits) > sys.get_int_max_str_digits():
                raise argparse.ArgumentTypeError(
                    f"must be an int >= {minimum} of at most {sys.get_int_max_str_digits():,} "
                    f"digits (Python's limit for reading integers), got one of {len(digits):,} "
                    "digits"
                ) from None
            raise argparse.ArgumentTypeError(
                f"must be an int >= {minimum}, got {text!r:.80}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {value}")
        return value

    return parse


def _too_many_digits(where: str, error: ValueError) -> ValueError | None:
    """The error for an integer past Python's digit limit (its own message names no place)."""
    if "limit" not in str(error) or "digits" not in str(error):
        return None
    return ValueError(
        f"{where}: holds an integer of more than {sys.get_int_max_str_digits():,} digits, "
        "Python's limit for reading integers; sizes, steps and thresholds are far smaller: "
        "check the value"
    )


def _parse_file(path: pathlib.Path) -> Any:
    try:
        return _parse_text(path)
    except ValueError as e:
        too_long = _too_many_digits(str(path), e)
        if too_long is None:
            raise
        raise too_long from None


def _parse_text(path: pathlib.Path) -> Any:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as text: {e}") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:  # its message ends with "(at line L, column C)"
            raise ValueError(f"{path}: not valid TOML: {e}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"reading {path} needs PyYAML, which is not installed: pip install "
                "pyyaml, or write the schedule as JSON or TOML"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            if isinstance(e, yaml.constructor.ConstructorError):
                problem += " (a schedule file holds plain data: no !!python or other tags)"
            raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None


# A schedule config is a few dozen values; YAML aliases can make a small file expand to
# billions (an "alias bomb"), which printing or checking would then walk.
MAX_CONFIG_VALUES = 100_000


def _check_expansion(config: Any, where: str) -> None:
    """Refuses a config that expands to more than `MAX_CONFIG_VALUES` values, in O(that)."""
    pending, seen = [config], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ValueError(
                f"{where}: the schedule expands to more than {MAX_CONFIG_VALUES:,} values "
                "(YAML aliases repeat what they point at); a schedule config is a mapping of "
                "a few keys: write it out without aliases"
            )
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, (list, tuple)):
            pending.extend(value)


def load_spec(spec: str) -> dict[str, Any]:
    """A schedule config from inline JSON or a .json, .yaml/.yml or .toml file.

    Args:
      spec: the text of `--schedule`.

    Returns:
      The config dict, checked to build a schedule.

    Raises:
      ValueError: naming the file (and line) or the inline text, and what would be valid.
    """
    if spec.lstrip().startswith(("{", "[")):
        where = "--schedule"
        try:
            config = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"--schedule is not valid JSON at column {e.colno}: {e.msg}; give {SCHEDULE_FORMS}"
            ) from None
        except ValueError as e:
            raise _too_many_digits(where, e) or e from None
    else:
        path = pathlib.Path(spec)
        if not path.exists():
            missing = "no such file" if path.suffix else "neither inline JSON nor a file"
            raise ValueError(f"--schedule {spec!r}: {missing}; give {SCHEDULE_FORMS}")
        if not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file (a pipe or a device)"
            raise ValueError(
                f"--schedule {spec!r}: {kind}; give the path of a schedule file, or "
                f"{SCHEDULE_FORMS}"
            )
        where = str(path)
        config = _parse_file(path)
    _check_expansion(config, where)
    if not isinstance(config, dict):
        raise ValueError(
            f"{where}: a schedule is a mapping with a 'type' key, got "
            f"{type(config).__name__} {config!r:.60}; give {SCHEDULE_FORMS}"
        )
    try:
        from_config(config)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}: {e}") from None
    return config


def build_schedule(
    spec: str | None,
    multiple_of: int | None,
    megatron: str | None = None,
    seq_length: int | None = None,
) -> Schedule:
    """The schedule of `--schedule` or `--megatron` (the built-in default when neither),
    checked against rules."""
    if seq_length is not None and megatron is None:
        raise ValueError("--seq-length goes with --megatron: it makes its thresholds tokens")
    if megatron is not None:
        config: dict[str, Any] = {"type": "megatron", "schedule": megatron}
        if seq_length is not None:
            config["seq_length"] = seq_length
        try:
            from_config(config)
        except ValueError as e:
            raise ValueError(f"--megatron: {e}") from None
    else:
        config = DEFAULT_SCHEDULE if spec is None else load_spec(spec)
    if multiple_of is not None:
        config = {**config, "multiple_of": multiple_of}
    return from_config(config)


def plot_path(arg: str) -> pathlib.Path:
    """The file `--plot` writes (`.png` added to a name without a suffix); checks matplotlib."""
    path = pathlib.Path(arg)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    # The folder first: a typo in it is the user's to fix whatever is installed.
    if not path.parent.is_dir():
        raise ValueError(f"--plot {arg!r}: the folder {str(path.parent)!r} does not exist")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(
            f"--plot needs matplotlib, which is not installed: {install_hint('plot')}"
        ) from None
    return path


def plot(
    plan: Plan, steps: int, path: pathlib.Path, lr: Callable[[int], float] | None = None
) -> None:
    """Draws batch size and samples consumed (and the lr, if given) against steps into an image.

    PNG by default; another suffix matplotlib knows (.svg, .pdf) picks that format.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, sizes = [], []
    segments = plan.segments(steps)
    for seg in segments:
        xs += [seg.first_step, cast(int, seg.last_step) + 1]  # segments up to a step end
        sizes += [seg.size, seg.size]
    kind = plan.schedule.to_config().get("type", "custom")
    title = (
        f"{kind} schedule: {len(segments)} segments, batch size {min(sizes)} to "
        f"{max(sizes)} over {steps:,} steps"
    )
    fig, axes = plt.subplots(
        2 + (lr is not None), 1, sharex=True, figsize=(8, 6 + 2 * (lr is not None))
    )
    top, bottom = axes[0], axes[-1]
    if lr is not None:
        axes[1].plot(
            xs, [lr(seg.first_step) for seg in segments for _ in (0, 1)], color="tab:green"
        )
        axes[1].set_ylabel("learning rate")
        axes[1].grid(alpha=0.3)
    top.plot(xs, sizes, color="tab:blue")
    top.set_ylabel("global batch size (samples)")
    top.set_title(title, fontsize=10)
    top.grid(alpha=0.3)
    bottom.plot(xs, [plan.offset(x) for x in xs], color="tab:orange")
    bottom.set_ylabel("samples consumed")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def preview(args: argparse.Namespace) -> int:
    """Prints the segments of a schedule up to a budget, and the totals.

    Every argument is checked, the table built and the plot drawn before anything is printed.
    """
    path = plot_path(args.plot) if args.plot else None
    schedule = build_schedule(args.schedule, args.multiple_of, args.megatron, args.seq_length)
    tps = args.tokens_per_sample
    budget = {"steps": args.steps, "samples": args.samples, "tokens": args.tokens}
    if args.tokens is not None and tps is None:
        raise ValueError("--tokens needs --tokens-per-sample")
    if all(v is None for v in budget.values()):
        if args.schedule is None and args.megatron is None:
            budget["tokens"] = DEFAULT_TOKENS
            tps = tps or DEFAULT_TOKENS_PER_SAMPLE
        else:
            last = schedule.starts[-1] if schedule.segmented else 0
            budget["steps"] = max(100, 2 * last)
    plan = Plan(schedule)
    steps = budget["steps"]
    if steps is None:
        steps = plan.steps_for(budget["samples"], budget["tokens"], tps)
    lr = None
    if args.lr is not None:
        lr = scaled(args.lr, schedule, rule=args.lr_rule, reference_size=args.lr_reference_size)
    elif args.lr_reference_size is not None:
        raise ValueError("--lr-reference-size needs --lr, the learning rate tuned at that size")
    table = plan.table(
        steps=steps, tokens_per_sample=tps, lr=lr, max_rows=None if args.all else MAX_ROWS
    )
    if path is not None:
        plot(plan, steps, path, lr)
    print(f"schedule: {json.dumps(schedule.to_config(), sort_keys=True)}")
    print(f"fingerprint: {schedule.fingerprint}")
    print()
    print(table)
    if not args.all and len(plan.segments(steps)) > MAX_ROWS:
        print("(--all prints every segment)")
    if path is not None:
        print(f"plot written to {path}")
    return 0


class Topology(NamedTuple):
    """A layout a run may be resumed on.

    Attributes:
      processes: how many processes (hosts, ranks) split every global batch.
      microbatch: rows of one micro-batch on one data-parallel replica, or None.
      data: the data axis size (data-parallel replicas, a JAX mesh's data axis), or None.
    """

    processes: int
    microbatch: int | None = None
    data: int | None = None

    @property
    def divisor(self) -> int:
        """What every size must be a multiple of."""
        return math.lcm(self.processes, self.data or 1) * (self.microbatch or 1)

    def __str__(self) -> str:
        parts = [f"{self.processes:,} process{'es' * (self.processes != 1)}"]
        if self.data is not None:
            parts.append(f"data axis {self.data:,}")
        if self.microbatch is not None:
            parts.append(f"micro-batch {self.microbatch:,}")
        return ", ".join(parts)


TOPOLOGY_FORM = "PROCESSES[,microbatch=M][,data=D], e.g. 64 or 512,microbatch=2 or 4,data=32"


def topology(text: str) -> Topology:
    """An argparse type: `PROCESSES[,microbatch=M][,data=D]`."""
    values: dict[str, int] = {}
    for i, part in enumerate(text.split(",")):
        key, eq, value = part.strip().rpartition("=")
        key = key.strip() if eq else ("processes" if i == 0 else "")
        if key not in Topology._fields or key in values:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {part.strip()!r} is not valid here; give {TOPOLOGY_FORM}"
            )
        values[key] = count(1)(value.strip())
    return Topology(values.get("processes", 1), values.get("microbatch"), values.get("data"))


MAX_CHECK_ROWS = 8


def check_report(
    plan: Plan, where: Topology, tokens_per_sample: int | None = None
) -> tuple[str, bool]:
    """What `rampup check` prints for one topology, and whether any step is legal for it."""
    divisor = where.divisor
    first = plan.divisible_from(divisor)
    head = f"{where} (every size a multiple of {divisor:,}): "
    if first == 0:
        return head + "legal from step 0, every size divides", True
    if first is None:
        head += "never legal, the last size does not divide"
    else:
        samples = plan.offset(first)
        tokens = f", {samples * tokens_per_sample:,} tokens" if tokens_per_sample else ""
        head += f"legal from step {first:,} ({samples:,} samples{tokens} consumed)"
    bad = [s for s in plan.segments(first) if s.size % divisor]
    lines = [head]
    for s in bad[:MAX_CHECK_ROWS]:
        steps = "on" if s.last_step is None else f"to {s.last_step:,}"
        nearest = " or ".join(f"{v:,}" for v in nearest_multiples(s.size, divisor))
        lines.append(
            f"  size {s.size:,} at steps {s.first_step:,} {steps} does not divide; nearest "
            f"legal: {nearest}"
        )
    if len(bad) > MAX_CHECK_ROWS:
        lines.append(f"  ... and {len(bad) - MAX_CHECK_ROWS:,} more segments")
    return "\n".join(lines), first is not None


def check(args: argparse.Namespace) -> int:
    """Prints, per topology, the first step a run may start or resume at; 2 if one never can."""
    schedule = build_schedule(args.schedule, args.multiple_of, args.megatron, args.seq_length)
    plan = Plan(schedule)
    reports = [check_report(plan, where, args.seq_length) for where in args.topology]
    print(f"schedule: {json.dumps(schedule.to_config(), sort_keys=True)}")
    for text, _ in reports:
        print(text)
    return 0 if all(legal for _, legal in reports) else 2


def demo(args: argparse.Namespace) -> int:
    """Runs the end-to-end demo with its resume check."""
    if args.cbs:
        if args.adaptive or args.schedule or args.backend:
            raise ValueError(
                "--cbs measures the critical batch size on its own problem with NumPy: "
                "it takes no --adaptive, --schedule or --backend"
            )
        from rampup.demo_cbs import main as run_cbs

        return run_cbs()
    if args.adaptive:
        if args.schedule:
            raise ValueError("--adaptive decides the sizes as it trains: it takes no --schedule")
        from rampup.demo_adaptive import main as run_adaptive

        return run_adaptive(args.backend, args.steps)
    spec = load_spec(args.schedule) if args.schedule else None
    return run_demo(args.backend, args.steps, spec)


def _host_devices(count: int) -> dict[str, str]:
    """`XLA_FLAGS` with JAX's CPU platform split into `count` devices (a later flag wins)."""
    flags = os.environ.get("XLA_FLAGS", "")
    return {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={count}".strip()}


# (suite, module that must be importable, benchmark module, simulated CPU devices or None)
BENCH_SUITES: tuple[tuple[str, str, str, int | None], ...] = (
    ("core", "numpy", "rampup.benchmarks.bench_core", None),
    ("grain", "grain", "rampup.benchmarks.bench_grain", None),
    ("torch", "torch", "rampup.benchmarks.bench_torch", None),
    ("tf", "tensorflow", "rampup.benchmarks.bench_tf", None),
    # JAX twice: one CPU device (the rows with targets), then 8 simulated ones (reported).
    ("jax", "jax", "rampup.benchmarks.bench_jax", 1),
    ("jax", "jax", "rampup.benchmarks.bench_jax", 8),
)


def _run_suite(suite: str, module: str, quick: bool, env: dict[str, str]) -> list[dict[str, Any]]:
    """One benchmark suite in its own interpreter: its rows, or one failed row."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "rows.json"
        # One process per suite: frameworks set up devices and threads once per process.
        cmd = [sys.executable, "-m", module, "--json", str(out)]
        done = subprocess.run(
            cmd + (["--quick"] if quick else []),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        if done.returncode != 0:
            print(f"[{suite}] failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return [
                {
                    "name": f"{suite}: failed (exit {done.returncode})",
                    "ratio": 0.0,
                    "target": "runs",
                    "holds": False,
                    "suite": suite,
                }
            ]
        for line in done.stderr.splitlines():  # a row left out says why
            if line.startswith("skipped:"):
                print(f"[{suite}] {line}", file=sys.stderr)
        return [
            {**r, "name": f"{suite}: {r['name']}", "suite": suite}
            for r in json.loads(out.read_text())
        ]


def bench(args: argparse.Namespace) -> int:
    """Runs the benchmark suites the installed extras allow; prints one table of ratios.

    A load-sensitive row that misses is measured once more (its suite runs
    again) before it counts; with `--quick` one that still misses is reported,
    not counted. The machine's load is printed before and after.
    """
    from rampup.benchmarks.harness import (
        load_sensitive_misses,
        machine_load,
        remeasured,
        table,
        verdict,
    )

    if args.json and not pathlib.Path(args.json).parent.is_dir():
        raise ValueError(
            f"--json {args.json!r}: the folder "
            f"{str(pathlib.Path(args.json).parent)!r} does not exist"
        )
    print(f"machine before: {machine_load()}", file=sys.stderr, flush=True)
    rows: list[dict[str, Any]] = []
    for suite, needs, module, devices in BENCH_SUITES:
        if args.suite and suite not in args.suite:
            continue
        if importlib.util.find_spec(needs) is None:
            print(f"[{suite}] skipped: {needs} is not installed", file=sys.stderr)
            continue
        if importlib.util.find_spec(module) is None:
            print(f"[{suite}] skipped: {module} is not installed", file=sys.stderr)
            continue
        env = {} if devices is None else _host_devices(devices)
        print(
            f"[{suite}] running {' '.join(f'{k}={v!r}' for k, v in env.items())}"
            f"{' ' if env else ''}{module}{' --quick' if args.quick else ''} ...",
            file=sys.stderr,
            flush=True,
        )
        found = _run_suite(suite, module, args.quick, env)
        misses = load_sensitive_misses(found)
        if misses:
            print(
                f"[{suite}] re-measuring once, load-sensitive rows that missed: "
                + "; ".join(misses)
                + f" ({machine_load()})",
                file=sys.stderr,
                flush=True,
            )
            found = remeasured(found, _run_suite(suite, module, args.quick, env))
        rows += found
    print(table(rows))
    load = machine_load()
    sensitive = [r["name"] for r in rows if r.get("load_sensitive")]
    print(f"machine after: {load}")
    if sensitive:
        print("load-sensitive rows (other work on the machine moves them): " + "; ".join(sensitive))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
        print(f"results written to {args.json}")
    status, counted, ignored = verdict(rows, args.quick)
    for r in ignored:
        print(
            f"not counted in --quick mode (load-sensitive, missed twice): {r['name']}",
            file=sys.stderr,
        )
    for r in counted:
        print(f"missed: {r['name']} ({r['ratio']}, target {r['target']})", file=sys.stderr)
    return status


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_schedule_options(p: argparse.ArgumentParser) -> None:
    """`--schedule` or `--megatron` (with `--seq-length`), and `--multiple-of`."""
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--schedule",
        metavar="SPEC",
        help='inline JSON, e.g. \'{"type": "piecewise", "sizes": '
        '{"0": 16, "1000": 32}}\', or a .json/.yaml/.toml file with the same '
        "keys (see examples/ramp.yaml); types: constant, stepwise, piecewise, "
        "linear, megatron; default: a GPT-3-like linear ramp, scaled down",
    )
    which.add_argument(
        "--megatron",
        metavar="SCHEDULE",
        help="Megatron-LM's --step-batch-size-schedule string, as it is, e.g. "
        "'0:768 250B:1536' (thresholds in samples, or tokens with --seq-length)",
    )
    p.add_argument(
        "--seq-length",
        type=count(1),
        help="with --megatron: its thresholds are tokens, threshold // seq_length samples",
    )
    p.add_argument("--multiple-of", type=count(1), help="every size must be a multiple of this")


def parser() -> argparse.ArgumentParser:
    """The argument parser of the `rampup` command."""
    p = _Parser(prog="rampup", description="Batch-size ramp-up for ML training.")
    p.add_argument("--version", action="version", version=f"rampup {__version__}")
    sub = p.add_subparsers(dest="command")
    pre = sub.add_parser("preview", help="print a schedule's segments and totals")
    add_schedule_options(pre)
    budget = pre.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=count(1), help="budget in steps")
    budget.add_argument("--samples", type=count(1), help="budget in samples")
    budget.add_argument(
        "--tokens", type=count(1), help="budget in tokens (with --tokens-per-sample)"
    )
    pre.add_argument("--tokens-per-sample", type=count(1), help="tokens in one sample")
    pre.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw the schedule into this image (.png added without a suffix)",
    )
    pre.add_argument(
        "--all",
        action="store_true",
        help=f"print every segment (default: the first and last of at most {MAX_ROWS})",
    )
    pre.add_argument(
        "--lr",
        type=float,
        help="add an lr column: this learning rate, tuned at "
        "--lr-reference-size, scaled by --lr-rule (rampup.scaled)",
    )
    pre.add_argument(
        "--lr-rule",
        choices=tuple(RULES),
        default="sqrt",
        help="how the lr follows the batch size (default sqrt)",
    )
    pre.add_argument(
        "--lr-reference-size",
        type=count(1),
        help="the batch size --lr was tuned for (default: the largest size)",
    )
    pre.set_defaults(run=preview)
    che = sub.add_parser(
        "check",
        help="the first step from which a schedule suits each topology (before asking for "
        "more hosts)",
    )
    add_schedule_options(che)
    che.add_argument(
        "--topology",
        type=topology,
        action="append",
        required=True,
        metavar="TOPOLOGY",
        help=f"repeatable: {TOPOLOGY_FORM}; micro-batch: rows of one micro-batch on one "
        "data-parallel replica; every size must be a multiple of lcm(processes, data) x "
        "microbatch. Exit status 0 when every topology is legal from some step, 2 otherwise",
    )
    che.set_defaults(run=check)
    dem = sub.add_parser("demo", help="an end-to-end run with a resume check halfway")
    dem.add_argument(
        "--backend",
        choices=BACKENDS,
        help="default: jax (grain source, sharded arrays), or the NumPy core "
        "when jax is not installed",
    )
    dem.add_argument(
        "--steps",
        type=count(2),
        default=DEFAULT_STEPS,
        help=f"steps to train (default {DEFAULT_STEPS})",
    )
    dem.add_argument(
        "--schedule", metavar="SPEC", help="inline JSON or a .json/.yaml/.toml file, as for preview"
    )
    dem.add_argument(
        "--adaptive",
        action="store_true",
        help="the batch size follows the "
        "measured gradient noise scale (backend jax or numpy; 80 steps is plenty)",
    )
    dem.add_argument(
        "--cbs",
        action="store_true",
        help="measure the critical batch size by branching at checkpoints, next to the "
        "closed-form noise scale, and turn a fitted curve into a schedule (NumPy)",
    )
    dem.set_defaults(run=demo)
    ben = sub.add_parser("bench", help="run the benchmarks the installed extras allow")
    ben.add_argument(
        "--quick",
        action="store_true",
        help="a fast smoke run, fewer repeats; "
        "a load-sensitive row that misses its target does not fail it",
    )
    ben.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    ben.add_argument(
        "--suite",
        action="append",
        choices=list(dict.fromkeys(s for s, *_ in BENCH_SUITES)),
        help="run only this suite (repeatable); default: every installed one",
    )
    ben.set_defaults(run=bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rampup` console script."""
    args = parser().parse_args(argv)
    if args.command is None:
        args = parser().parse_args(["preview", *(argv or [])])
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"rampup {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
