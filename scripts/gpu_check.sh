#!/usr/bin/env bash
# One call's work on a GPU machine: build (Hopper, 16 jobs, outside the tree), run every test
# (the [cuda] ones included) and the benchmarks named as arguments (bench_<name>), logging to
# ${OUT:-/tmp/coil-out}. Usage: scripts/gpu_check.sh [bench names...]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/coil-out}
build=${COIL_BUILD:-/root/build}
mkdir -p "$out"
scripts/build_gpu.sh "$out" "$build" all || exit 1
(cd "$build" && ctest --output-on-failure -j4 --timeout 600 >"$out/ctest.log" 2>&1)
grep -E "tests passed|tests failed|Failed|\*\*\*|Not Run|Skipped" "$out/ctest.log" | tail -40
for name in "$@"; do
  echo "== bench_$name"
  "$build/bench_$name" 2>&1 | tee "$out/bench_$name.log" | tail -40
done
