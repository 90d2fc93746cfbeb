#!/usr/bin/env bash
# Runs the Python test-suite against a build of the extension (msdacore._core) compiled
# with AddressSanitizer + UndefinedBehaviorSanitizer. The interpreter is not
# instrumented, so the GCC ASan runtime is preloaded; leak detection is off because
# CPython keeps interned objects and arenas alive until exit by design. Any ASan or UBSan
# report aborts the process and fails the run (UBSan is built with
# -fno-sanitize-recover).
#
#   bash scripts/sanitize_python.sh                 # the whole suite (tests/python)
#   bash scripts/sanitize_python.sh -k fuzz         # extra arguments go to pytest
#
# Environment: MSDACORE_SANITIZE_BUILD_DIR (default build/python-sanitize).
# Needs: cmake, GCC (its libasan.so and libstdc++.so are preloaded), pybind11, numpy,
# pytest and hypothesis in the current Python. The installed msdacore (if any) is not
# touched: the sanitized extension is staged next to a copy of python/msdacore and put
# first on the import path.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${MSDACORE_SANITIZE_BUILD_DIR:-build/python-sanitize}
case "$build" in /*) ;; *) build="$root/$build" ;; esac
python=${PYTHON:-python}

generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S . -B "$build/cmake" "${generator[@]}" -DCMAKE_BUILD_TYPE=Debug \
  -DMSDACORE_PYTHON=ON -DMSDACORE_TESTS=OFF -DMSDACORE_CUDA=OFF \
  -DMSDACORE_SANITIZE=address,undefined \
  -DPython_EXECUTABLE="$(command -v "$python")" \
  -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$build/cmake" --parallel 2

# Stage: the package's Python files plus the sanitized extension.
stage="$build/stage"
rm -rf "$stage"
mkdir -p "$stage"
cp -r python/msdacore "$stage/msdacore"
find "$stage/msdacore" -name '_core*.so' -delete
find "$stage/msdacore" -name '__pycache__' -prune -exec rm -rf {} +
cp "$build"/cmake/_core*.so "$stage/msdacore/"
# The C API headers the package ships for plugins built on first use (msdacore.jax).
mkdir -p "$stage/msdacore/include/msdacore"
cp cpp/include/msdacore/msdacore_c.h "$build"/cmake/include/msdacore/version.hpp \
  "$stage/msdacore/include/msdacore/"
# An editable install of msdacore puts an import hook before the path: drop every
# meta-path finder that would resolve msdacore somewhere other than the stage.
cat >"$stage/sitecustomize.py" <<'EOF'
import os
import sys

_stage = os.path.dirname(os.path.abspath(__file__))
for _finder in list(sys.meta_path):
    if isinstance(_finder, type):
        continue  # the standard importers (BuiltinImporter, FrozenImporter, PathFinder)
    try:
        _spec = _finder.find_spec("msdacore", None)
    except Exception:
        continue
    if _spec is not None and not str(_spec.origin or "").startswith(_stage):
        sys.meta_path.remove(_finder)
EOF

compiler_id=$(grep -E '^CMAKE_CXX_COMPILER_ID:|^CMAKE_CXX_COMPILER:' "$build/cmake/CMakeCache.txt" | head -1 || true)
cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build/cmake/CMakeCache.txt")
asan_runtime=$("$cxx" -print-file-name=libasan.so)
# The C++ runtime is preloaded too: ASan intercepts __cxa_throw and must find the real
# one when it starts, and the python executable does not link libstdc++ (without it, the
# first exception the core throws aborts with "real___cxa_throw != 0").
cxx_runtime=$("$cxx" -print-file-name=libstdc++.so)
for lib in "$asan_runtime" "$cxx_runtime"; do
  if [ ! -e "$lib" ]; then
    echo "sanitize_python: cannot find $lib (GCC runtimes of $cxx, $compiler_id)" >&2
    exit 2
  fi
done

export PYTHONPATH="$stage${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$asan_runtime $cxx_runtime"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# Tests that measure the process's memory skip themselves under ASan (its quarantine
# keeps freed memory resident by design); the unsanitized run covers them.
export MSDACORE_SANITIZED=1
# Subprocesses the tests start inherit all of the above.

"$python" -c "
import msdacore, msdacore._core as c, sys
assert c.__file__.startswith('$stage'), c.__file__
print('sanitized extension:', c.__file__)
"
cd tests/python
exec "$python" -m pytest -q -p no:cacheprovider "$@"
