"""Test setup shared by every environment, and the fixtures several test modules use.

JAX reads XLA_FLAGS once, at import: 8 simulated CPU devices must be asked for
before any test module imports jax.
"""

import importlib.util
import multiprocessing
import os
import pathlib
import socket
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Hypothesis keeps its example database (and caches) in ./.hypothesis by default: in the
# source tree. A directory of the user's temp dir instead keeps the tree clean and still
# replays a failing example on the next run; HYPOTHESIS_STORAGE_DIRECTORY set by the user wins.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY",
    os.path.join(tempfile.gettempdir(), f"rampup-hypothesis-{getattr(os, 'getuid', lambda: 0)()}"),
)
# tests/model.py, the independent model the tests take expected values from, imports as
# `model` in every pytest import mode.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

import rampup  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The properties draw schedules, lengths and process counts; their examples run whole
# pipelines, so hypothesis's 200 ms deadline would flag a slow machine, not a bug.
settings.register_profile("rampup", max_examples=60, deadline=None)
settings.load_profile("rampup")


def pytest_configure(config: pytest.Config) -> None:
    """Starts every worker process of the test process from a fork server.

    Forking a process that runs JAX's (or TensorFlow's) threads can deadlock the child,
    and JAX warns at every fork; the whole suite runs in one process that imports both.
    The fork server is a fresh interpreter that has imported torch and nothing else, so a
    `DataLoader` (or any other multiprocessing user) that names no start method gets
    workers from a single-threaded process, and as fast as a fork.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_forkserver_preload(["torch", "rampup.adapters.torch"])
        multiprocessing.set_start_method("forkserver", force=True)


def pytest_report_header() -> str:
    """Says which `rampup` the tests import: the source tree, an editable or a wheel install."""
    return f"rampup {rampup.__version__} from {pathlib.Path(rampup.__file__).parent}"


@pytest.fixture(scope="session")
def read_options():
    """grain `ReadOptions` without reader threads: cheap elements, no threads to leak."""
    grain = pytest.importorskip("grain")
    return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


# How a process reports a port that another process took between free_port() and bind:
# JAX's coordinator (gRPC) and torch's TCPStore.
PORT_TAKEN = ("address already in use", "failed to add port", "failed to bind", "eaddrinuse")


def free_port() -> int:
    """A loopback port that was free a moment ago (another process may take it meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def run_on_free_port():
    """Runs a group of processes that meet on a TCP port picked ahead, robust to races.

    `run(launch, timeout)` calls `launch(port)` for a list of started `Popen`s (process 0
    first: it binds the port) and waits for each. When one reports that the port was
    taken in between, the rest are killed and the group runs again on a fresh port
    (3 tries). Returns the processes and their outputs as text.
    """

    def run(launch, timeout):
        for _ in range(3):
            processes = launch(free_port())
            outputs: list[str] = []
            try:
                for process in processes:
                    out = process.communicate(timeout=timeout)[0]
                    outputs.append(out.decode(errors="replace") if isinstance(out, bytes) else out)
                    if any(taken in outputs[-1].lower() for taken in PORT_TAKEN):
                        break
            finally:
                for process in processes:
                    if process.poll() is None:
                        process.kill()
                        process.wait(timeout=10)
            if len(outputs) == len(processes):
                break
        return processes, outputs

    return run


@pytest.fixture(scope="session")
def multiprocessing_context():
    """The start method for DataLoader workers in the tests, named: the fork server."""
    return multiprocessing.get_context("forkserver")


@pytest.fixture(scope="session")
def batch_size_metric():
    """The Keras metric of examples/keras_fit.py: the size of the batch the model trained on."""
    pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    path = ROOT / "examples" / "keras_fit.py"
    spec = importlib.util.spec_from_file_location("keras_fit_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BatchSize
