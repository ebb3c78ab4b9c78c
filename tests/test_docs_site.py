"""The documentation site builds without a warning and its reference holds every public name.

`mkdocs build --strict` (mkdocs.yml: strict, links and anchors validated) into a temporary
folder, or the site in $RAMPUP_SITE that the `docs` tox environment has just built. Skipped
where mkdocs is not installed (the `docs` extra).
"""

from __future__ import annotations

import ast
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rampup

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ("grain", "torch", "tf", "jax")


def exported(module_file: Path) -> list[str]:
    """The names in a module's `__all__`, read from its source (no framework import)."""
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{module_file} has no __all__")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    built = os.environ.get("RAMPUP_SITE")
    if built:
        return Path(built)
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WARNING" not in run.stderr, run.stderr[-3000:]
    return out


def ids(page: Path) -> set[str]:
    return {html.unescape(i) for i in re.findall(r'id="([^"]+)"', page.read_text())}


@pytest.mark.slow
def test_the_core_reference_documents_every_name_of_rampup_all(site):
    found = ids(site / "reference" / "rampup.html")
    assert [n for n in rampup.__all__ if f"rampup.{n}" not in found] == []


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_each_adapter_reference_documents_every_name_of_its_all(site, adapter):
    names = exported(ROOT / "rampup" / "adapters" / f"{adapter}.py")
    found = ids(site / "reference" / f"{adapter}.html")
    assert names and [n for n in names if f"rampup.adapters.{adapter}.{n}" not in found] == []


@pytest.mark.slow
def test_every_page_is_in_the_site(site):
    pages = sorted(
        p.relative_to(ROOT / "docs").with_suffix(".html") for p in (ROOT / "docs").rglob("*.md")
    )
    assert [p for p in pages if not (site / p).is_file()] == []
