#!/usr/bin/env bash
# Builds msdacore as a C++ library (no Python), installs it to a temporary prefix, checks
# the installed files and the package version rules, builds the examples in examples/cpp
# against the prefix with find_package and runs them; then builds and runs the same
# examples with msdacore taken through add_subdirectory.
#
#   bash examples/cpp/run.sh [CMAKE ARGS...]
#
# CMAKE ARGS go to both msdacore builds, e.g. -DMSDACORE_CUDA=OFF or -DBUILD_SHARED_LIBS=ON.
# Environment: MSDACORE_EXAMPLES_DIR  work folder to keep (default: a temporary one,
#              removed at exit); CMAKE_BUILD_PARALLEL_LEVEL (default: the number of cores).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"

if [[ -n "${MSDACORE_EXAMPLES_DIR:-}" ]]; then
  work="$MSDACORE_EXAMPLES_DIR"
  rm -rf "$work"
  mkdir -p "$work"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/msdacore-examples.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
fi
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
prefix="$work/prefix"
step() { echo "== examples/cpp/run.sh: $*"; }

step "build and install msdacore to $prefix"
cmake -S "$root" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DMSDACORE_PYTHON=OFF -DMSDACORE_TESTS=OFF "$@"
cmake --build "$work/build"
cmake --install "$work/build" --prefix "$prefix"

step "check the installed files"
for f in msdacore.hpp msdacore_c.h tensor.hpp errors.hpp ops.hpp runtime.hpp version.hpp \
         detail/bilinear.hpp; do
  test -f "$prefix/include/msdacore/$f" || { echo "missing include/msdacore/$f"; exit 1; }
done
config_dir="$(dirname "$(find "$prefix" -name msdacoreConfig.cmake | head -n 1)")"
for f in msdacoreConfig.cmake msdacoreConfigVersion.cmake msdacoreTargets.cmake; do
  test -f "$config_dir/$f" || { echo "missing $f"; exit 1; }
done
find "$prefix" -type f | sed "s|^$prefix/|  |" | sort

step "check the version rules: 0.1 and 0.1.0 are found, 0.2 and 1.0 are not"
mkdir -p "$work/version-check"
cat > "$work/version-check/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.24)
project(version_check LANGUAGES CXX)
foreach(request 0.1 0.1.0 0.1...<0.2)
  find_package(msdacore ${request} CONFIG QUIET)
  if(NOT msdacore_FOUND)
    message(FATAL_ERROR "find_package(msdacore ${request}) failed")
  endif()
endforeach()
foreach(request 0.2 1.0)
  unset(msdacore_DIR CACHE)
  find_package(msdacore ${request} CONFIG QUIET)
  if(msdacore_FOUND)
    message(FATAL_ERROR "find_package(msdacore ${request}) accepted ${msdacore_VERSION}")
  endif()
endforeach()
EOF
cmake -S "$work/version-check" -B "$work/version-check/build" "${generator[@]}" \
  -DCMAKE_PREFIX_PATH="$prefix" >/dev/null

step "examples against the installed package (find_package)"
cmake -S "$root/examples/cpp" -B "$work/examples" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix"
cmake --build "$work/examples"
"$work/examples/forward_backward"
"$work/examples/c_api_example"

step "examples with msdacore through add_subdirectory"
cmake -S "$root/examples/cpp" -B "$work/examples-subdir" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DMSDACORE_SOURCE_DIR="$root" "$@"
cmake --build "$work/examples-subdir"
"$work/examples-subdir/forward_backward"
"$work/examples-subdir/c_api_example"

step "all examples passed"
