#!/usr/bin/env bash
# Runs every msdacore test on this machine: installs the package with its test
# dependencies (torch pinned to 2.13.0), builds and runs the C++ tests under ctest (no
# Python), then runs the Python tests (pytest + hypothesis).
#   bash scripts/test.sh            # from the repository root
# Environment: MSDACORE_HYPOTHESIS_PROFILE=ci|dev (CI=true selects ci: derandomized, bounded).
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet ".[test]" "pybind11>=2.12"

generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S . -B build/cpp-tests "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DMSDACORE_PYTHON=OFF -DMSDACORE_TESTS=ON -DMSDACORE_CUDA=OFF
cmake --build build/cpp-tests --parallel 2
ctest --test-dir build/cpp-tests --output-on-failure

# The installed C++ package: install to a temporary prefix, build the C++ and C examples
# against it with find_package, then through add_subdirectory, and run them; static and
# shared. (The CUDA code is compiled once, by the pip install above.)
bash examples/cpp/run.sh -DMSDACORE_CUDA=OFF
bash examples/cpp/run.sh -DMSDACORE_CUDA=OFF -DBUILD_SHARED_LIBS=ON

# The C++ library and tests under AddressSanitizer + UndefinedBehaviorSanitizer.
cmake -S . -B build/cpp-sanitize "${generator[@]}" -DCMAKE_BUILD_TYPE=Debug \
  -DMSDACORE_PYTHON=OFF -DMSDACORE_TESTS=ON -DMSDACORE_CUDA=OFF -DMSDACORE_SANITIZE=address,undefined
cmake --build build/cpp-sanitize --parallel 2
ctest --test-dir build/cpp-sanitize --output-on-failure

# libFuzzer (ASan+UBSan) on the C++ API for 60 s; installs clang and libFuzzer when missing.
bash fuzz/run.sh 60

# The Python tests (the installed package: python/ is not on the import path).
python -m pytest tests/python

# The Python tests once more, against an ASan+UBSan build of the extension.
bash scripts/sanitize_python.sh
