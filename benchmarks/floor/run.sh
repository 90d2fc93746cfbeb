#!/usr/bin/env bash
# Measures the floor of msdacore's CPU kernels on this machine: the lean floor (the
# least work of a kernel computing the op from its inputs) and two data-movement-only
# variants (see floor.cpp for exactly what is timed). Builds into a scratch folder, never into the source tree.
#
#   bash benchmarks/floor/run.sh [--config detr-enc] [--threads "1 2"] [--repeats 20]
#                                [--json floor.json] [--build-dir /tmp/msdacore-floor]
#
# --json writes the results of the largest thread count (the one the docs compare
# with) as JSON for scripts/plot_benchmarks.py --floor. Needs g++ with OpenMP and
# the msdacore Python package (for the inputs).
# The build command, for reference:
#   g++ -std=c++17 -O3 -march=native -fopenmp benchmarks/floor/floor.cpp -o floor
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

config=detr-enc
threads="1 2"
repeats=20
json=""
build_dir="${TMPDIR:-/tmp}/msdacore-floor"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --json) json="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

mkdir -p "$build_dir"
flags="-std=c++17 -O3 -march=native -fopenmp"
# shellcheck disable=SC2086
"${CXX:-g++}" $flags -DFLOOR_FLAGS="\"$flags\"" "$here/floor.cpp" -o "$build_dir/floor"

input="$build_dir/$config.bin"
python "$here/dump_inputs.py" "$input" --config "$config"

last=""
for t in $threads; do last="$t"; done
for t in $threads; do
  out_json="$build_dir/$config-t$t.json"
  OMP_PROC_BIND="${OMP_PROC_BIND:-close}" "$build_dir/floor" "$input" --threads "$t" \
    --repeats "$repeats" --json "$out_json"
  if [[ -n "$json" && "$t" == "$last" ]]; then
    python - "$out_json" "$json" "$config" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
data["config"] = sys.argv[3]
data["command_line"] = "bash benchmarks/floor/run.sh --config %s" % sys.argv[3]
with open(sys.argv[2], "w") as f:
    json.dump(data, f, indent=2)
    f.write("\n")
print("floor results written to", sys.argv[2])
PY
  fi
done
