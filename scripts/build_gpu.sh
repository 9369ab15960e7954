#!/usr/bin/env bash
# Builds coil targets on the GPU machine (Hopper, Release, 16 jobs, outside the tree) and
# records the machine, for the scripts that run there in one call:
#   scripts/build_gpu.sh OUT BUILD_DIR TARGET ...
# writes OUT/env.txt (date, GPU, commit; also printed), OUT/configure.log and OUT/build.log;
# exits with 1, the errors printed, when configuring or building fails.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=$1 build=$2
shift 2
mkdir -p "$out"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; git rev-parse HEAD 2>/dev/null; } \
  | tee "$out/env.txt"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build "$build" -j16 --target "$@" >"$out/build.log" 2>&1 \
  || { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }
