#!/usr/bin/env bash
# The CUDA backend on a GPU machine, in one script:
#   build     configure and build the library, C++ tests and Python extension with CUDA
#             (MSDACORE_CUDA=ON), and stage the package (python/msdacore + the extension)
#   ctest     the C++ tests
#   test      the operator tests on every device (tests/python/test_core_ops.py), the CUDA tests
#             (tests/python/test_cuda.py) and the torch operator tests
#   memcheck  compute-sanitizer --tool memcheck over the CUDA tests and a short benchmark
#   racecheck compute-sanitizer --tool racecheck (shared-memory hazards), same runs
#   synccheck compute-sanitizer --tool synccheck (barrier misuse), same runs
#   bench     python -m msdacore bench --device cuda (detr-enc, detr-enc-b8, detr-dec;
#             float32, float16, bfloat16; against grid_sample; bandwidth vs copy bandwidth)
#
# Usage: scripts/cuda_check.sh [OUTDIR] [STEP ...]
#   OUTDIR defaults to $OUT (the device tool's result folder), else ./cuda-check-out.
#   Steps default to all of the above, in that order; later steps reuse the build.
# Environment:
#   CUDA_ARCHS        CMAKE_CUDA_ARCHITECTURES for the build (default: native)
#   BUILD_DIR         build folder (default: build/cuda-check)
#   SANITIZER_EXAMPLES hypothesis examples per GPU property test under the sanitizers (3)
#   PYTHON            the interpreter (default: python3)
# Logs go to OUTDIR/<step>.log; OUTDIR/summary.txt (printed last) has one line per step.
# Exits non-zero when a step fails.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-${OUT:-$PWD/cuda-check-out}}"
[ $# -gt 0 ] && shift
STEPS="${*:-build ctest test memcheck racecheck synccheck bench}"
PYTHON="${PYTHON:-python3}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/cuda-check}"
STAGE="$BUILD_DIR/stage"
CUDA_ARCHS="${CUDA_ARCHS:-native}"
SANITIZER_EXAMPLES="${SANITIZER_EXAMPLES:-3}"
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"
STATUS=0

note() { echo "$*" | tee -a "$SUMMARY"; }

# run STEP COMMAND...: runs the command with its output in OUTDIR/STEP.log (and on the
# console), records pass/fail and the time taken.
run() {
  local step="$1"; shift
  local log="$OUTDIR/$step.log" start end rc
  echo "=== $step: $*" | tee "$log"
  start=$(date +%s)
  ( "$@" ) 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  end=$(date +%s)
  if [ "$rc" -eq 0 ]; then
    note "$(printf '%-10s ok      %5ss  %s' "$step" $((end - start)) "$log")"
  else
    note "$(printf '%-10s FAILED  %5ss  rc=%s  %s' "$step" $((end - start)) "$rc" "$log")"
    STATUS=1
  fi
  return "$rc"
}

# The staged package first on the path, ahead of any installed (or editable) msdacore.
with_stage() {
  PYTHONPATH="$STAGE${PYTHONPATH:+:$PYTHONPATH}" MSDACORE_HYPOTHESIS_PROFILE=ci "$@"
}

{
  echo "date      : $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host      : $(hostname)"
  echo "gpu       : $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | paste -sd ';' -)"
  echo "nvcc      : $(nvcc --version 2>/dev/null | tail -1)"
  echo "python    : $($PYTHON --version 2>&1)"
  echo "torch     : $($PYTHON -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tail -1)"
  echo "steps     : $STEPS"
  echo "archs     : $CUDA_ARCHS"
} | tee -a "$SUMMARY"

step_build() {
  local pybind_dir
  pybind_dir="$($PYTHON -m pybind11 --cmakedir 2>/dev/null)" || {
    echo "pybind11 is not importable by $PYTHON; installing it"
    $PYTHON -m pip install -q pybind11 && pybind_dir="$($PYTHON -m pybind11 --cmakedir)"
  } || return 1
  local gen=()
  command -v ninja > /dev/null && gen=(-G Ninja)
  cmake -S "$ROOT" -B "$BUILD_DIR" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DMSDACORE_CUDA=ON \
    -DMSDACORE_PYTHON=ON -DMSDACORE_TESTS=ON -DMSDACORE_INSTALL=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" -Dpybind11_DIR="$pybind_dir" \
    -DPython_EXECUTABLE="$(command -v "$PYTHON")" || return 1
  cmake --build "$BUILD_DIR" --parallel "$(nproc)" || return 1
  rm -rf "$STAGE" && mkdir -p "$STAGE" || return 1
  cp -r "$ROOT/python/msdacore" "$STAGE/" || return 1
  cp "$BUILD_DIR"/_core*.so "$STAGE/msdacore/" || return 1
  # An editable install's import hook would shadow the staged package: drop it.
  cat > "$STAGE/sitecustomize.py" <<'EOF'
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "_editable" not in type(f).__module__]
EOF
  with_stage "$PYTHON" -c 'import msdacore, sys; print(msdacore.__file__); print(msdacore.build_info())' || return 1
  with_stage "$PYTHON" -c 'import msdacore, sys; i = msdacore.build_info(); sys.exit(0 if i["cuda_kernels"] and msdacore.cuda_device_count() > 0 else "no CUDA kernels or no device")'
}

step_ctest() { ctest --test-dir "$BUILD_DIR" --output-on-failure; }

step_test() {
  cd "$ROOT" && with_stage "$PYTHON" -m pytest -q -p no:cacheprovider -rs \
    tests/python/test_core_ops.py tests/python/test_cuda.py tests/python/test_torch_op.py
}

# Under a sanitizer: the CUDA tests with few hypothesis examples, and one short benchmark
# call per pass. MSDACORE_CUDA_SYNC=1 waits after every kernel, so reports name the op.
sanitized() {
  local tool="$1"
  cd "$ROOT" || return 1
  MSDACORE_CUDA_SYNC=1 MSDACORE_CUDA_TEST_EXAMPLES="$SANITIZER_EXAMPLES" with_stage \
    compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
    "$PYTHON" -m pytest -q -p no:cacheprovider -x -m cuda tests/python/test_core_ops.py \
    tests/python/test_cuda.py || return $?
  MSDACORE_CUDA_SYNC=1 with_stage compute-sanitizer --tool "$tool" --error-exitcode 3 \
    --print-limit 20 "$PYTHON" -m msdacore bench --device cuda --config detr-dec \
    --dtype float32 --dtype bfloat16 --repeats 1 --warmup 1 --no-grid-sample \
    --copy-bytes 16777216
}

step_memcheck() { sanitized memcheck; }
step_racecheck() { sanitized racecheck; }
step_synccheck() { sanitized synccheck; }

step_bench() {
  cd "$ROOT" && with_stage "$PYTHON" -m msdacore bench --device cuda \
    --json "$OUTDIR/bench_cuda.json"
}

for step in $STEPS; do
  case "$step" in
    build|ctest|test|memcheck|racecheck|synccheck|bench) run "$step" "step_$step" ;;
    *) note "unknown step '$step'"; STATUS=1 ;;
  esac
  if [ "$step" = build ] && [ "$STATUS" -ne 0 ]; then
    note "build failed: later steps skipped"
    break
  fi
done

echo
echo "=== summary ($OUTDIR/summary.txt)"
cat "$SUMMARY"
exit "$STATUS"
