#!/usr/bin/env bash
# One call's work on a GPU machine: build (Hopper, 16 jobs, outside the tree), run every test
# (the [cuda] ones included) and the benchmarks named as arguments (bench_<name>), logging to
# ${OUT:-/tmp/coil-out}. Usage: scripts/gpu_check.sh [bench names...]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/coil-out}
build=${COIL_BUILD:-/root/build}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
if ! cmake --build "$build" -j16 >"$out/build.log" 2>&1; then
  grep -E "error|FAILED" "$out/build.log" | head -40
  cmake --build "$build" -j16 -- -k 0 >>"$out/build.log" 2>&1
fi
(cd "$build" && ctest --output-on-failure -j4 --timeout 600 >"$out/ctest.log" 2>&1)
grep -E "tests passed|tests failed|Failed|\*\*\*|Not Run|Skipped" "$out/ctest.log" | tail -40
for name in "$@"; do
  echo "== bench_$name"
  "$build/bench_$name" 2>&1 | tee "$out/bench_$name.log" | tail -40
done
