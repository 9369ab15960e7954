#!/usr/bin/env bash
# Issue 18 (the Transformer baselines) on one GPU, in one call: build (Hopper, 16 jobs, outside
# the tree), run the [cuda] tests of attention (portable and Hopper kernels), the element-wise
# kernels (SwiGLU), the products
# (GELU epilogues) and the models (GPU training against the CPU), time
# attention beside PyTorch SDPA (same call), the fused kernels, and training tokens/s of the
# four training rows (configs/bench: Transformer++ 125M 16 x 2048 and 4 x 8192, Transformer++
# 350M 8 x 2048, GPT-2 124M 16 x 2048; random tokens, bf16, 30 steps, the mean of the intervals
# logged at steps 20 and 30). Logs go to ${OUT:-/tmp/coil-out}. About 6-9 minutes on an H200.
# Usage: scripts/transformer_check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-/tmp/coil-out}
build=${COIL_BUILD:-/root/build}
mkdir -p "$out"
scripts/build_gpu.sh "$out" "$build" coil_cli test_attention test_attention_hopper test_elementwise test_matmul \
  test_models bench_attention bench_fused_kernels || exit 1

status=0
# ---- tests (the test cases' durations are in the logs) ----
for t in test_attention test_attention_hopper test_elementwise test_matmul test_models; do
  echo "== $t [cuda]"
  timeout 300 "$build/tests/$t" "[cuda]" --durations yes >"$out/$t.log" 2>&1
  rc=$?
  tail -3 "$out/$t.log"
  [ $rc -eq 0 ] || { echo "FAILED: $t [cuda] (exit $rc; $out/$t.log)"; status=1; }
done

# ---- kernels ----
echo "== bench_attention 20"
"$build/bench_attention" 20 2>&1 | tee "$out/bench_attention.log"
echo "== python3 bench/attention_torch.py 10"
timeout 300 python3 bench/attention_torch.py 10 2>&1 | tee "$out/attention_torch.log"
echo "== bench_fused_kernels 20"
"$build/bench_fused_kernels" 20 2>&1 | tee "$out/bench_fused_kernels.log"

# ---- training ----
sets=(--set train.steps=30 --set log.every=10 --set log.tensorboard=false)
tokens_per_s() {  # mean tokens/s of the intervals logged at steps 20 and 30 (step 10 holds warm-up)
  grep -E '^\{"step":(20|30),"tokens"' "$1/metrics.jsonl" |
    sed 's/.*"tokens_per_s":\([^,]*\),.*/\1/' | awk '{s += $1; n++} END {if (n) printf "%.0f", s / n; else print "-"}'
}
peak_gib() {  # the largest memory_bytes logged, in GiB
  sed -n 's/.*"memory_bytes":\([0-9]*\).*/\1/p' "$1/metrics.jsonl" |
    awk '$1 > m {m = $1} END {if (m) printf "%.2f", m / 2^30; else print "-"}'
}
table="$out/training.txt"
printf "%-22s %12s %10s\n" config tokens/s "GiB" >"$table"
for name in transformer-125m gpt2-124m transformer-350m transformer-125m-8k; do
  dir="$out/runs/$name"
  rm -rf "$dir"
  echo "== coil train configs/bench/$name.yaml"
  timeout 300 "$build/coil" train "configs/bench/$name.yaml" "${sets[@]}" --set "run.dir=$dir" >"$out/$name.log" 2>&1
  rc=$?
  tail -2 "$out/$name.log"
  [ $rc -eq 0 ] || { echo "FAILED: $name (exit $rc)"; status=1; continue; }
  printf "%-22s %12s %10s\n" "$name" "$(tokens_per_s "$dir")" "$(peak_gib "$dir")" >>"$table"
done
echo "== training tokens/s ($(sed -n 2p "$out/env.txt"))"
cat "$table"
exit $status
