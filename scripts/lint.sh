#!/usr/bin/env bash
# Lint and format checks, the first step of CI: ruff over the Python sources (pycodestyle,
# pyflakes, import order, bugbear) and clang-format over the C, C++ and CUDA sources, with
# the checked-in configurations (pyproject.toml [tool.ruff], .clang-format). Needs the `lint` extra's
# pinned tools:  pip install ruff==0.17.6 clang-format==23.1.5  (or ".[lint]").
#   bash scripts/lint.sh          # check: exits non-zero on any violation, changes nothing
#   bash scripts/lint.sh --fix    # apply ruff's safe fixes (import order, ...) and clang-format
set -euo pipefail
cd "$(dirname "$0")/.."

fix=0
if [[ "${1:-}" == --fix ]]; then fix=1; elif [[ $# -gt 0 ]]; then
  echo "usage: bash scripts/lint.sh [--fix]" >&2
  exit 2
fi

mapfile -t c_sources < <(git ls-files '*.c' '*.cc' '*.cpp' '*.h' '*.hpp' '*.cu' '*.cuh')
if [[ $fix == 1 ]]; then
  ruff check --fix .
  clang-format -i "${c_sources[@]}"
else
  ruff check .
  clang-format --dry-run -Werror "${c_sources[@]}"
fi
echo "lint: ruff and clang-format clean (${#c_sources[@]} C/C++/CUDA files)"
