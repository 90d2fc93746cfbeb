#!/usr/bin/env bash
# The test suites: installs the package with its test dependencies (torch pinned to
# 2.13.0), builds and runs the C++ tests under ctest (no Python, CPU-only), then runs the
# Python tests (pytest + hypothesis). About 5 minutes on 2 cores once `pip install .` has
# built the extension (the install here then only reuses the build: seconds).
#   bash scripts/test.sh            # from the repository root
# Everything else CI runs (the wheel, the sdist, the C++ examples, sanitizers, fuzzing)
# is in .ci/run.
# Environment: MSDACORE_HYPOTHESIS_PROFILE=ci|dev (CI=true selects ci: derandomized, bounded);
#              MSDACORE_TEST_INSTALLED=1: test the msdacore already installed (CI installs
#              its wheel) instead of installing the source tree;
#              MSDACORE_TEST_BUILD_DIR: the C++ tests' build folder (default build/cpp-tests).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${MSDACORE_TEST_INSTALLED:-0}" != 1 ]]; then
  # Same options as the README's `pip install .`, so its build is reused.
  python -m pip install --quiet ".[test]"
fi

build=${MSDACORE_TEST_BUILD_DIR:-build/cpp-tests}
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DMSDACORE_PYTHON=OFF -DMSDACORE_TESTS=ON -DMSDACORE_CUDA=OFF >/dev/null
cmake --build "$build" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
ctest --test-dir "$build" --output-on-failure

# The Python tests (the installed package: python/ is not on the import path).
python -m pytest tests/python -p no:cacheprovider
