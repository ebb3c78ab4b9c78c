"""One real path per module: no symlinks in the tree, no module under a second name."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rampup
import rampup.adapters
import rampup.benchmarks

ROOT = Path(__file__).resolve().parent.parent
SYMLINK_MODE = "120000"


def git_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist has no index to read)")
    out = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_the_repository_tracks_no_symlink():
    links = [line for line in git_files() if line.split()[0] == SYMLINK_MODE]
    assert links == []


def test_no_file_in_the_checkout_is_a_symlink():
    links = [p for p in (ROOT / "rampup").rglob("*") if p.is_symlink()]
    links += [p for p in (ROOT / "tests").rglob("*") if p.is_symlink()]
    assert links == []


@pytest.mark.parametrize("name", ["adapters", "benchmarks", "src"])
def test_a_subpackage_is_not_importable_by_a_top_level_name(name):
    # `python -c` from the repository root puts the root first on sys.path, as a user's
    # script there would.
    out = subprocess.run(
        [sys.executable, "-c", f"import {name}.torch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr


def test_the_adapters_and_benchmarks_are_inside_the_package():
    package = Path(rampup.__file__).resolve().parent
    assert Path(rampup.adapters.__file__).resolve().parent == package / "adapters"
    assert Path(rampup.benchmarks.__file__).resolve().parent == package / "benchmarks"
    assert (package / "benchmarks" / "results.json").is_file()
