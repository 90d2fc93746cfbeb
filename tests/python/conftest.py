"""pytest configuration: hypothesis profiles.

- "ci": derandomized, bounded so the whole Python suite runs in a couple of
  minutes on 2 cores; failing examples are printed with their reproduce blob.
- "dev": more (random) examples, for looking for trouble locally.

The profile is MSDACORE_HYPOTHESIS_PROFILE when set, else "ci" when the CI
environment variable is set, else "dev".
"""

from __future__ import annotations

import os
import pathlib
import sys

from hypothesis import HealthCheck, settings

# Let the test modules import the shared helpers (strategies.py) by name.
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

_profile = os.environ.get("MSDACORE_HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
settings.load_profile(_profile)


def pytest_report_header(config):
    return f"hypothesis profile: {_profile}"
