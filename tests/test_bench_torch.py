"""The PyTorch benchmark rows run in quick mode; `rampup bench` checks their ratios."""

import re
import sys

import pytest

pytest.importorskip("torch")

from rampup.benchmarks import bench_torch  # noqa: E402


def assert_row(row, target):
    assert row["target"] == target and row["ratio"] > 0 and isinstance(row["holds"], bool)
    assert re.search(r"\b0 workers$", row["name"]), row["name"]


def test_batch_sampler_row_runs_in_quick_mode():
    assert_row(bench_torch.sampler_vs_batch_size(quick=True), "<= 1.05")


def test_hugging_face_datasets_row_runs_in_quick_mode():
    pytest.importorskip("datasets")
    [row] = bench_torch.hugging_face_vs_batch_size(quick=True)
    assert_row(row, "<= 1.1")
    assert "Hugging Face datasets" in row["name"]


def test_hugging_face_datasets_row_is_left_out_saying_why_without_datasets(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    assert bench_torch.hugging_face_vs_batch_size(quick=True) == []
    err = capsys.readouterr().err
    assert err.startswith("skipped:") and "datasets is not installed" in err
