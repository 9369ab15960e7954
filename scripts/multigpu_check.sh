#!/usr/bin/env bash
# Data parallelism on a machine with 2 GPUs, in one call: build (Hopper, 32 jobs, outside the
# tree), run the [multigpu] tests and the distributed CPU tests, then measure training tokens/s
# of configs/mamba-130m.yaml and configs/transformer++-125m.yaml on 1 and 2 GPUs with the same
# micro-batch per GPU (random tokens, bf16, 30 steps, the first 10 left out as warm-up), and
# print a table. Logs go to ${OUT:-/tmp/coil-out}. About 5-8 minutes on 2 H200.
# Usage: NCCL_NVLS_ENABLE=0 scripts/multigpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-/tmp/coil-out}
build=${COIL_BUILD:-/root/build}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
[ "$gpus" -ge 2 ] || echo "warning: $gpus GPU(s); the [multigpu] tests skip and the 2-GPU runs fail"

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
targets=(coil_cli test_communicator test_data_parallel test_distributed)
if ! cmake --build "$build" -j32 --target "${targets[@]}" >"$out/build.log" 2>&1; then
  grep -E "error|FAILED" "$out/build.log" | head -40
  exit 1
fi

# ---- tests ----
status=0
run_test() {  # name, filter
  echo "== $1 $2"
  timeout 400 "$build/tests/$1" "$2" >"$out/$1.log" 2>&1
  local rc=$?
  tail -4 "$out/$1.log"
  [ $rc -eq 0 ] || { echo "FAILED: $1 $2 (exit $rc; $out/$1.log)"; status=1; }
}
run_test test_distributed "~[cuda]"
run_test test_communicator "[multigpu]"
run_test test_data_parallel "[multigpu]"

# ---- scaling: tokens/s at 1 and 2 GPUs ----
coil="$build/coil"
sets=(--set data.kind=synthetic --set data.task=random --set train.tokens_per_step=0 --set train.steps=30
      --set optim.warmup=10 --set eval.every=0 --set eval.batches=0 --set checkpoint.every=0
      --set checkpoint.at_end=false --set log.every=10 --set log.tensorboard=false)
# tokens/s of a run: the mean of the intervals logged at steps 20 and 30 (step 10 holds warm-up).
tokens_per_s() {
  grep -E '^\{"step":(20|30),"tokens"' "$1/metrics.jsonl" |
    sed 's/.*"tokens_per_s":\([^,]*\),.*/\1/' | awk '{s += $1; n++} END {if (n) printf "%.0f", s / n; else print "-"}'
}
table="$out/scaling.txt"
printf "%-20s %4s %11s %12s %8s\n" config gpus micro_batch tokens/s speedup >"$table"
for config in configs/mamba-130m.yaml configs/transformer++-125m.yaml; do
  name=$(basename "$config" .yaml)
  mb=$(grep -E '^\s*micro_batch:' "$config" | head -1 | sed 's/[^0-9]*\([0-9]*\).*/\1/')
  one=-
  for n in 1 2; do
    dir="$out/runs/$name-${n}gpu"
    rm -rf "$dir"
    echo "== $name on $n GPU(s)"
    if [ "$n" = 1 ]; then
      timeout 300 "$coil" train "$config" "${sets[@]}" --set "run.dir=$dir" >"$out/$name-${n}gpu.log" 2>&1
    else
      timeout 300 "$coil" launch --nproc "$n" --port 29560 -- train "$config" "${sets[@]}" --set "run.dir=$dir" \
        >"$out/$name-${n}gpu.log" 2>&1
    fi
    rc=$?
    tail -3 "$out/$name-${n}gpu.log"
    [ $rc -eq 0 ] || { echo "FAILED: $name on $n GPU(s) (exit $rc)"; status=1; continue; }
    tps=$(tokens_per_s "$dir")
    [ "$n" = 1 ] && one=$tps
    speedup=$(awk -v a="$tps" -v b="$one" 'BEGIN {if (a + 0 > 0 && b + 0 > 0) printf "%.2fx", a / b; else print "-"}')
    printf "%-20s %4s %11s %12s %8s\n" "$name" "$n" "$mb" "$tps" "$speedup" >>"$table"
  done
done
echo "== tokens/s (same micro-batch per GPU, seq_len 2048, bf16; $(head -1 "$out/gpu.txt"))"
cat "$table"
exit $status
