#!/usr/bin/env bash
# Installs a built msdacore wheel (or sdist) into a fresh virtual environment (no system
# site-packages) and runs the main job there with no compiler reachable: CC, CXX and
# CUDACXX are `false` and PATH holds only the environment's bin/. A wheel must install
# from binaries alone (--only-binary :all:), so a wheel that needed building would fail
# here instead of compiling quietly.
#
#   bash scripts/check_wheel.sh dist/msdacore-*.whl
#   bash scripts/check_wheel.sh --sdist dist/msdacore-*.tar.gz    # builds: compilers allowed
#
# Checks: `python -m msdacore info` (the build's facts; no CUDA driver needed), that the
# extension needs no shared library outside the wheel and the system's C/C++ runtimes,
# and `python -m msdacore demo` (the SPEC detr-enc configuration checked against the
# float64 reference).
# Environment: PYTHON (default: python), MSDACORE_CHECK_VENV (kept when set; default: a
# temporary folder, removed at exit), and for --sdist PIP_CONFIG_SETTINGS-style options
# through MSDACORE_SDIST_ARGS (default: -C cmake.define.MSDACORE_CUDA=OFF).
set -euo pipefail
sdist=0
if [[ "${1:-}" == --sdist ]]; then
  sdist=1
  shift
fi
if [[ $# -ne 1 || ! -f "$1" ]]; then
  echo "usage: bash scripts/check_wheel.sh [--sdist] PACKAGE_FILE" >&2
  exit 2
fi
package=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
python=${PYTHON:-python}

if [[ -n "${MSDACORE_CHECK_VENV:-}" ]]; then
  venv=$MSDACORE_CHECK_VENV
  rm -rf "$venv"
else
  venv=$(mktemp -d "${TMPDIR:-/tmp}/msdacore-check.XXXXXX")
  trap 'rm -rf "$venv"' EXIT
fi
"$python" -m venv "$venv"
vpy="$venv/bin/python"

start=$(date +%s)
if [[ $sdist == 0 ]]; then
  echo "== check_wheel.sh: installing $(basename "$package") (binaries only) into $venv"
  env CC=false CXX=false CUDACXX=false PATH="$venv/bin" \
    "$vpy" -m pip install --quiet --only-binary :all: "$package"
else
  # shellcheck disable=SC2206
  sdist_args=(${MSDACORE_SDIST_ARGS:--C cmake.define.MSDACORE_CUDA=OFF})
  echo "== check_wheel.sh: building and installing $(basename "$package") ${sdist_args[*]}"
  "$vpy" -m pip install --quiet "${sdist_args[@]}" "$package"
fi
echo "   installed in $(( $(date +%s) - start )) s"

# From here on no compiler can be reached, whatever was installed.
run() { env CC=false CXX=false CUDACXX=false PATH="$venv/bin" "$vpy" "$@"; }
cd "$venv"   # not the source tree: the installed package is imported
run -c "import msdacore, msdacore._core as c; print('msdacore', msdacore.__version__, 'from', c.__file__)"
run -m msdacore info

# Every shared library the extension loads resolves, and none is a CUDA runtime, driver
# or toolkit library (the CUDA runtime is linked in statically; the driver is opened at
# run time only where there is one).
core=$(run -c "import msdacore._core as c; print(c.__file__)")
deps=$(ldd "$core")
echo "$deps"
if grep -q "not found" <<<"$deps"; then
  echo "check_wheel.sh: the extension needs a library that is not there" >&2
  exit 1
fi
if grep -Eq "libcuda|libcudart|libnvrtc|libcublas" <<<"$deps"; then
  echo "check_wheel.sh: the extension links a CUDA library dynamically" >&2
  exit 1
fi

run -m msdacore demo
echo "== check_wheel.sh: $(basename "$package") passed in $(( $(date +%s) - start )) s"
