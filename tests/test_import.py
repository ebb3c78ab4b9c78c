"""`import rampup` stays NumPy-only."""

import subprocess
import sys

FRAMEWORKS = ("grain", "torch", "tensorflow", "jax")


def test_import_rampup_imports_no_framework():
    code = (
        "import sys, rampup, rampup.adapters\n"
        f"print(','.join(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
