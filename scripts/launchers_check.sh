#!/usr/bin/env bash
# Every launcher on a machine with 2 GPUs, in one call (issue 17): build (Hopper, outside the
# tree), run the distributed CPU tests and the [multigpu] tests, then train 30 steps of
# Mamba-130M (configs/mamba-130m.yaml, random tokens, bf16, train.deterministic, the loss logged
# every step) on 2 GPUs with each launcher:
#   coil launch --nproc 2                          (the reference)
#   torchrun --standalone --nproc_per_node 2       (its agent's TCPStore holds MASTER_PORT)
#   torchrun --nnodes 2 --rdzv-backend c10d        (two agents on this host, one GPU each)
#   mpirun -np 2                                   (OpenMPI)
#   srun, emulated                                 (no Slurm here: Slurm's variables set by hand)
# and compares each one's losses with coil launch's (PASS: within 1e-6 relative, "identical"
# when bit for bit); then ZeRO-1 against the unsharded run: losses, final weights and moments
# (PASS within 1e-6 relative) and the memory of a rank. About 5 minutes on 2 H200.
# Logs go to ${OUT:-/tmp/coil-out}/launchers.
# Usage: scripts/launchers_check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-/tmp/coil-out}/launchers
build=${COIL_BUILD:-/root/build}
export NCCL_NVLS_ENABLE=0
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
[ "$(wc -l <"$out/gpu.txt")" -ge 2 ] || echo "warning: fewer than 2 GPUs; the 2-GPU runs fail"

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
targets=(coil_cli test_communicator test_data_parallel test_distributed test_rendezvous test_zero)
if ! cmake --build "$build" -j32 --target "${targets[@]}" >"$out/build.log" 2>&1; then
  grep -E "error|FAILED" "$out/build.log" | head -40
  exit 1
fi
coil="$build/coil"

status=0
summary="$out/summary.txt"
: >"$summary"
report() {  # name, PASS|FAIL, detail
  printf "%-28s %s  %s\n" "$1" "$2" "$3" | tee -a "$summary"
  [ "$2" = PASS ] || status=1
}

# ---- tests ----
run_test() {  # executable, Catch2 filter
  local log="$out/$1.log"
  timeout 300 "$build/tests/$1" "$2" >"$log" 2>&1
  local rc=$? counts
  counts=$(grep -E "^(All tests passed|test cases:)" "$log" | tail -1)
  [ $rc -eq 0 ] && report "$1 $2" PASS "$counts" || report "$1 $2" FAIL "exit $rc: $counts ($log)"
}
run_test test_distributed "~[cuda]"
run_test test_rendezvous "*"
run_test test_zero "*"
run_test test_communicator "[multigpu]"
run_test test_data_parallel "[multigpu]"

# ---- 30 steps of Mamba-130M with each launcher ----
config=configs/mamba-130m.yaml
sets=(--set data.kind=synthetic --set data.task=random --set train.tokens_per_step=0 --set train.steps=30
      --set train.deterministic=true --set train.dist_timeout_s=120 --set optim.warmup=10 --set eval.every=0
      --set eval.batches=0 --set checkpoint.every=0 --set checkpoint.at_end=false --set log.every=1
      --set log.tensorboard=false)
train_args() { echo train "$config" "${sets[@]}" --set "run.dir=$out/runs/$1" "${@:2}"; }

run() {  # name, command ...: runs it with a time limit, logs to $out/<name>.log
  local name=$1
  shift
  rm -rf "$out/runs/$name"
  echo "== $name: $*" >"$out/$name.log"
  timeout 240 "$@" >>"$out/$name.log" 2>&1
}

# The losses metrics.jsonl logged, one "step loss" line per step.
losses() { grep -E '^\{"step":[0-9]+,"tokens"' "$1/metrics.jsonl" | sed 's/^{"step":\([0-9]*\),.*"loss":\([^,]*\),.*/\1 \2/'; }

compare_losses() {  # name, reference name
  local a="$out/runs/$1" b="$out/runs/$2"
  if [ ! -s "$a/metrics.jsonl" ]; then
    report "$1" FAIL "no metrics ($out/$1.log: $(grep -m1 -i error "$out/$1.log"))"
    return
  fi
  local verdict
  verdict=$(paste -d' ' <(losses "$a") <(losses "$b") | awk '
    { n++; d = $2 - $4; if (d < 0) d = -d; r = d / ($4 > 1 ? $4 : 1); if (r > worst) worst = r; if ($2 != $4) differ++ }
    END { if (n != 30) { printf "FAIL %d of 30 steps logged", n; exit }
          printf "%s 30 steps, %s, largest relative difference %.2g", (worst <= 1e-6 ? "PASS" : "FAIL"),
                 (differ ? differ " differ" : "identical"), worst }')
  report "$1" "${verdict%% *}" "${verdict#* } (vs $2)"
}

port=29710
run launch "$coil" launch --nproc 2 --port $((port++)) -- $(train_args launch)
[ -s "$out/runs/launch/metrics.jsonl" ] && report "coil launch" PASS "$(losses "$out/runs/launch" | tail -1)" ||
  report "coil launch" FAIL "$out/launch.log"

run torchrun-standalone torchrun --standalone --nproc_per_node 2 --no-python "$coil" $(train_args torchrun-standalone)
compare_losses torchrun-standalone launch

rdzv=$((port++))
rm -rf "$out/runs/torchrun-nnodes2"
for node in 0 1; do
  CUDA_VISIBLE_DEVICES=$node timeout 240 torchrun --nnodes 2 --node-rank $node --nproc_per_node 1 \
    --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:$rdzv --rdzv-id coil-check --no-python \
    "$coil" $(train_args torchrun-nnodes2) >"$out/torchrun-nnodes2-node$node.log" 2>&1 &
done
wait
cat "$out"/torchrun-nnodes2-node*.log >"$out/torchrun-nnodes2.log"
compare_losses torchrun-nnodes2 launch

run mpirun mpirun -np 2 --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -x MASTER_PORT=$((port++)) \
  "$coil" $(train_args mpirun)
compare_losses mpirun launch

# srun, emulated: the variables srun sets for a 2-task step on one node.
rm -rf "$out/runs/srun-emulated"
for rank in 0 1; do
  env SLURM_JOB_ID=4242 SLURM_PROCID=$rank SLURM_LOCALID=$rank SLURM_NODEID=0 SLURM_NTASKS=2 \
    SLURM_STEP_NUM_TASKS=2 SLURM_STEP_NODELIST=localhost SLURM_JOB_NODELIST=localhost \
    SLURM_STEP_TASKS_PER_NODE=2 timeout 240 "$coil" $(train_args srun-emulated) \
    >"$out/srun-emulated-rank$rank.log" 2>&1 &
done
wait
cat "$out"/srun-emulated-rank*.log >"$out/srun-emulated.log"
compare_losses srun-emulated launch

# ---- ZeRO-1 against the unsharded run (final checkpoints kept for the weights) ----
run zero0 "$coil" launch --nproc 2 --port $((port++)) -- $(train_args zero0 --set checkpoint.at_end=true)
run zero1 "$coil" launch --nproc 2 --port $((port++)) -- $(train_args zero1 --set checkpoint.at_end=true --set train.zero=1)
compare_losses zero1 zero0
weights=$(python3 - "$out/runs/zero0" "$out/runs/zero1" <<'EOF' 2>&1
import glob, sys
import h5py, numpy as np
def last(run):
    return h5py.File(sorted(glob.glob(run + "/checkpoints/step_*.h5"))[-1], "r")
a, b = last(sys.argv[1]), last(sys.argv[2])
worst = {}
for group in ("params", "optim"):
    for name in a[group]:
        x, y = np.asarray(a[group][name], np.float64), np.asarray(b[group][name], np.float64)
        d = np.abs(x - y) / np.maximum(np.abs(x), 1e-3)
        worst[group] = max(worst.get(group, 0.0), float(d.max()) if d.size else 0.0)
ok = all(v <= 1e-6 for v in worst.values())
print(("PASS" if ok else "FAIL") + " final weights %.2g, moments %.2g (largest relative difference)" %
      (worst["params"], worst["optim"]))
EOF
)
report "zero1 checkpoint" "${weights%% *}" "${weights#* }"
mem() { grep -E '^\{"step":30,' "$1/metrics.jsonl" | sed 's/.*"memory_bytes":\([^,]*\),.*/\1/' |
  awk '{printf "%.2f GiB", $1 / 2^30}'; }
echo "memory of rank 0 (peak in use): unsharded $(mem "$out/runs/zero0"), ZeRO-1 $(mem "$out/runs/zero1")" |
  tee -a "$summary"
grep -h "ZeRO-1:" "$out/zero1.log" | head -1 | tee -a "$summary"
"$coil" info "$config" --world 2 --set train.zero=1 | grep memory | tee -a "$summary"
"$coil" info "$config" --world 2 | grep memory | tee -a "$summary"

echo "== summary ($(head -1 "$out/gpu.txt"))"
cat "$summary"
exit $status
