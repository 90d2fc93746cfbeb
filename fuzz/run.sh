#!/usr/bin/env bash
# Builds the libFuzzer harness (fuzz/fuzz_ops.cpp: msdacore's validation and CPU kernels
# under ASan + UBSan) and runs it for a fixed time: first over the regression inputs in
# fuzz/corpus (inputs that once found a bug), then fuzzing, a third of the time with each
# of the AVX-512, AVX2 and generic kernels (a build the CPU lacks runs the widest it
# has). Any sanitizer report, crash, hang (10 s per input) or failed check in the
# harness fails the script; the input that caused it is written to $build/artifacts/
# (replay it with `$build/fuzz_ops <file>`).
#
#   bash fuzz/run.sh            # 60 s of fuzzing
#   bash fuzz/run.sh 600        # longer
# Environment: MSDACORE_FUZZ_BUILD_DIR (default build/fuzz), MSDACORE_FUZZ_SEED (1),
# CXX (a clang++; default clang++).
#
# Needs Clang and its libFuzzer runtime. When they are missing and this runs as root on
# Debian/Ubuntu, they are installed with apt-get (clang and libclang-rt-<version>-dev,
# where that package exists; older releases ship libFuzzer with clang itself).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
build=${MSDACORE_FUZZ_BUILD_DIR:-build/fuzz}
seed=${MSDACORE_FUZZ_SEED:-1}
cxx=${CXX:-clang++}
case "$cxx" in *clang*) ;; *) cxx=clang++ ;; esac

can_fuzz() {
  command -v "$cxx" >/dev/null 2>&1 || return 1
  local dir
  dir=$(mktemp -d)
  printf '%s\n' '#include <cstdint>' '#include <cstddef>' \
    'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }' >"$dir/t.cpp"
  "$cxx" -fsanitize=fuzzer,address,undefined "$dir/t.cpp" -o "$dir/t" >/dev/null 2>&1
  local rc=$?
  rm -rf "$dir"
  return $rc
}

if ! can_fuzz; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing clang and the libFuzzer runtime" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    command -v clang++ >/dev/null 2>&1 || apt-get install -y -qq --no-install-recommends clang
    cxx=clang++
    major=$(clang++ -dumpversion | cut -d. -f1)
    if ! can_fuzz && apt-cache show "libclang-rt-$major-dev" >/dev/null 2>&1; then
      apt-get install -y -qq --no-install-recommends "libclang-rt-$major-dev"
    fi
  fi
  if ! can_fuzz; then
    echo "fuzz/run.sh: $cxx cannot build libFuzzer targets (-fsanitize=fuzzer); install" \
         "clang with its libFuzzer runtime (Debian/Ubuntu: clang libclang-rt-<version>-dev)" >&2
    exit 2
  fi
fi

generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S fuzz -B "$build" "${generator[@]}" -DCMAKE_CXX_COMPILER="$cxx" >/dev/null
cmake --build "$build" --parallel 2

mkdir -p "$build/corpus" "$build/artifacts"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
common=(-timeout=10 -rss_limit_mb=2048 -max_len=1024 -print_final_stats=1
        -artifact_prefix="$build/artifacts/")

# 1. The regression inputs, each once.
if compgen -G "fuzz/corpus/*" >/dev/null; then
  "$build/fuzz_ops" "${common[@]}" fuzz/corpus/*
fi

# 2. Fuzzing, the corpus growing in $build/corpus (seeded with fuzz/corpus).
third=$(( (seconds + 2) / 3 ))
for isa in avx512 avx2 generic; do
  echo "fuzz/run.sh: ${third}s with MSDACORE_CPU_ISA=$isa" >&2
  MSDACORE_CPU_ISA=$isa "$build/fuzz_ops" "${common[@]}" -seed="$seed" \
    -max_total_time="$third" "$build/corpus" fuzz/corpus
done
