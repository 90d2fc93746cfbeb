"""pytest configuration: hypothesis profiles, the ``cuda`` marker, shared fixtures.

Hypothesis profiles:
- "ci": derandomized, bounded so the whole Python suite runs in a couple of
  minutes on 2 cores; failing examples are printed with their reproduce blob.
- "dev": more (random) examples, for looking for trouble locally.
The profile is MSDACORE_HYPOTHESIS_PROFILE when set, else "ci" when the CI
environment variable is set, else "dev".

CUDA: tests that need a usable CUDA device carry the ``cuda`` marker (devices.py gives
it to every "cuda" parameter; ``pytest -m cuda`` runs just them). They run where msdacore
has CUDA kernels and sees a device and torch has CUDA. Otherwise they are skipped, with
the reason, where this machine shows no GPU; where it does show one (a /dev/nvidia*
device node, or a GPU in ``nvidia-smi -L``) they FAIL, saying what is missing, so that a
GPU runner with a broken build or driver cannot pass by skipping. Set
MSDACORE_TESTS_NO_CUDA=1 to skip them on such a machine on purpose (a CPU-only build).
"""

from __future__ import annotations

import functools
import glob
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings

# Let the test modules import the shared helpers (strategies.py, devices.py) by name.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=400,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=1000,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

_profile = (os.environ.get("MSDACORE_HYPOTHESIS_PROFILE")
            or ("ci" if os.environ.get("CI") else "dev"))
settings.load_profile(_profile)

NO_CUDA_ENV = "MSDACORE_TESTS_NO_CUDA"


def pytest_report_header(config):
    return f"hypothesis profile: {_profile}"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a usable CUDA device (skipped without a visible GPU, failed "
                   f"with one that msdacore or torch cannot use unless {NO_CUDA_ENV}=1)")


# ----------------------------------------------------------------------------- CUDA

def cuda_device_count():
    """The CUDA devices msdacore can use (starts the CUDA driver: call it lazily)."""
    import msdacore

    return msdacore.cuda_device_count()


def visible_gpu():
    """A description of a GPU this machine shows, whatever msdacore and torch make of it
    (a /dev/nvidia<k> device node, or a GPU line of `nvidia-smi -L`), else None."""
    nodes = sorted(glob.glob("/dev/nvidia[0-9]*"))
    if nodes:
        return nodes[0]
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            listing = subprocess.run([exe, "-L"], capture_output=True, text=True,
                                     timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""
        for line in listing.splitlines():
            if line.startswith("GPU "):
                return f"nvidia-smi -L: {line.strip()}"
    return None


def cuda_unusable():
    """Why the CUDA tests cannot run in this process, or None when they can."""
    import msdacore

    if not msdacore.build_info().get("cuda_kernels"):
        return ("msdacore was built without CUDA kernels (build_info()['cuda_kernels'] is "
                "False): build with a CUDA compiler on the PATH")
    try:
        if cuda_device_count() == 0:
            return "msdacore sees no CUDA device (cuda_device_count() == 0)"
    except RuntimeError as error:  # e.g. a driver older than the build's CUDA
        return f"msdacore cannot use the CUDA driver: {error}"
    try:
        import torch
    except ImportError:
        return "torch is not installed (the CUDA tests use torch CUDA tensors)"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} has no CUDA support or sees no CUDA device "
                "(torch.cuda.is_available() is False)")
    return None


def cuda_verdict(unusable, gpu, opted_out):
    """What to do with a CUDA test: ("run", ""), ("skip", reason) or ("fail", message),
    given cuda_unusable(), visible_gpu() and whether NO_CUDA_ENV is set."""
    if unusable is None:
        return "run", ""
    if gpu is None:
        return "skip", f"{unusable}; no GPU is visible (no /dev/nvidia*, no GPU in nvidia-smi -L)"
    if opted_out:
        return "skip", f"{unusable} ({NO_CUDA_ENV}=1 on a machine with a GPU: {gpu})"
    return "fail", (f"a GPU is visible ({gpu}) but {unusable}. Fix the build, torch or the "
                    f"driver, or set {NO_CUDA_ENV}=1 to skip the CUDA tests on purpose.")


@functools.lru_cache(maxsize=None)
def cuda_state():
    """cuda_verdict for this process; worked out once, at the first CUDA test (not at
    import: asking for devices initialises the CUDA driver)."""
    unusable = cuda_unusable()
    gpu = visible_gpu() if unusable is not None else None
    return cuda_verdict(unusable, gpu, os.environ.get(NO_CUDA_ENV) == "1")


def pytest_runtest_setup(item):
    if item.get_closest_marker("cuda") is not None:
        action, message = cuda_state()
        if action == "skip":
            pytest.skip(message)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    # A failure of the test itself (not an error in its setup).
    if pyfuncitem.get_closest_marker("cuda") is not None:
        action, message = cuda_state()
        if action == "fail":
            pytest.fail(message, pytrace=False)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture
def restore_threads():
    """Puts the kernels' thread count back after the test (and checks that it took)."""
    import msdacore

    before = msdacore.get_num_threads()
    yield
    msdacore.set_num_threads(before)
    assert msdacore.get_num_threads() == before
