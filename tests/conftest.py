"""Test setup shared by every environment.

JAX reads XLA_FLAGS once, at import: 8 simulated CPU devices must be asked for
before any test module imports jax.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
