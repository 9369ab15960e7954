#!/usr/bin/env bash
# A scaling sweep (configs/scaling/*.yaml, docs/SCALING.md) in calls to a GPU machine, each under
# a wall-clock guard, the finished runs kept in git between sessions:
#
#   OUT=/tmp/out scripts/scaling_sweep.sh SWEEP.yaml           # on the GPU machine, every call
#   scripts/scaling_sweep.sh SWEEP.yaml --collect results.tar.gz   # here, with what came back
#
# On the GPU machine, each call:
#   1. unpacks the corpus pieces it carries (datasets/*/pieces, scripts/stage_dataset.sh);
#   2. builds coil into COIL_BUILD (default /root/build; nothing to do when it is built);
#   3. stops with exit status 2 when a corpus is still incomplete (carry the next piece);
#   4. copies the finished runs kept in git (docs/scaling/NAME/runs/*: config.yaml and
#      metrics.jsonl) into the sweep's out_dir, so that the sweep skips them;
#   5. runs `coil sweep SWEEP` on each GPU (GPUS, default every GPU nvidia-smi lists; the sweeps
#      share the runs out) until GUARD_S seconds (default 450) from the start, less REPORT_S
#      (default 30) for the report: the running runs save a checkpoint and stop, and the next
#      call on the same warm machine resumes them (a machine that went back loses them: those
#      runs start again; finished runs are never lost);
#   6. writes $OUT/report.md, $OUT/sweep.log and $OUT/results.tar.gz (the report's files, and the
#      config.yaml and metrics.jsonl of every finished run). Exit status: the sweep's (0 all
#      finished, 3 stopped by the guard, 1 a run failed).
# --collect puts the finished runs of results.tar.gz into docs/scaling/NAME/runs/ and rewrites
# the report there from all of them (`coil report`, COIL default build/coil). NAME is the sweep
# file's name without .yaml.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
sweep=${1:?usage: scripts/scaling_sweep.sh SWEEP.yaml [--collect results.tar.gz]}
[ -f "$sweep" ] || { echo "scaling_sweep: no sweep file $sweep" >&2; exit 1; }
name=$(basename "$sweep" .yaml)
results=docs/scaling/$name
out_dir=$(sed -n -E 's/^out_dir:[[:space:]]*([^[:space:]#]+).*/\1/p' "$sweep")
[ -n "$out_dir" ] || { echo "scaling_sweep: $sweep has no out_dir" >&2; exit 1; }
elapsed() { echo $(( $(date +%s) - start )); }
# The worse of two exit statuses: a failure (1, or a signal) over a time limit (3) over 0.
worse() { if (( $1 != 0 && $1 != 3 )); then echo "$1"; elif (( $2 != 0 )); then echo "$2"; else echo "$1"; fi; }

if [ "${2:-}" = --collect ]; then
  tarball=${3:?usage: scripts/scaling_sweep.sh SWEEP.yaml --collect results.tar.gz}
  coil=${COIL:-build/coil}
  mkdir -p "$results/runs"
  tar -xzf "$tarball" -C "$results" runs || exit 1
  "$coil" report "$results/runs" --out "$results" || exit 1
  echo "scaling_sweep: $(ls "$results/runs" | wc -l) finished runs in $results/runs; report in $results/report.md"
  exit 0
fi

GUARD_S=${GUARD_S:-450}
GPUS=${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | tr '\n' ' ')}
GPUS=${GPUS:-0}
REPORT_S=${REPORT_S:-30}
OUT=${OUT:-/tmp/coil-out}
build=${COIL_BUILD:-/root/build}
mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; git rev-parse HEAD 2>/dev/null; } \
  | tee "$OUT/env.txt"

incomplete=0
for pieces in datasets/*/pieces; do
  [ -d "$pieces" ] || continue
  DATA=${pieces%/pieces} scripts/stage_dataset.sh unpack
  case $? in 0) ;; 2) incomplete=1 ;; *) exit 1 ;; esac
done

scripts/build_gpu.sh "$OUT" "$build" coil_cli || exit 1
coil=$build/coil
echo "scaling_sweep: built after $(elapsed) s"
(( incomplete == 0 )) || { echo "scaling_sweep: a corpus is incomplete: carry its next piece in the next call"; exit 2; }

for run in "$results"/runs/*/; do
  [ -f "$run/metrics.jsonl" ] || continue
  dest=$out_dir/$(basename "$run")
  [ -e "$dest/metrics.jsonl" ] && continue
  mkdir -p "$dest" && cp "$run/config.yaml" "$run/metrics.jsonl" "$dest/"
done

status=0
left=$(( GUARD_S - REPORT_S - $(elapsed) ))
if (( left > 10 )); then
  # One sweep a GPU, sharing the runs out (each trains the next run no other holds). The sweep's
  # own limit stops it; timeout is a second guard (SIGINT, then SIGKILL).
  pids=()
  for gpu in $GPUS; do
    CUDA_VISIBLE_DEVICES=$gpu timeout -s INT -k 10 $(( left + 10 )) "$coil" sweep "$sweep" --time-limit "$left" \
      > "$OUT/sweep-gpu$gpu.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid"
    status=$(worse "$status" $?)
  done
  cat "$OUT"/sweep-gpu*.log > "$OUT/sweep.log"
  grep -E "^sweep|^error|runs:" "$OUT/sweep.log"
  echo "scaling_sweep: sweeps on GPUs $GPUS exit status $status after $(elapsed) s"
else
  echo "scaling_sweep: no time left for the sweep after $(elapsed) s"
  status=3
fi

rm -rf "$OUT/pack" && mkdir -p "$OUT/pack/report" "$OUT/pack/runs"
"$coil" report "$sweep" --out "$OUT/pack/report" > "$OUT/report.log" 2>&1 || cat "$OUT/report.log"
for run in $(awk -F, 'NR > 1 && $2 == "finished" {print $1}' "$OUT/pack/report/runs.csv"); do
  mkdir -p "$OUT/pack/runs/$run" && cp "$out_dir/$run/config.yaml" "$out_dir/$run/metrics.jsonl" "$OUT/pack/runs/$run/"
done
tar -czf "$OUT/results.tar.gz" -C "$OUT/pack" report runs && cp "$OUT/pack/report/report.md" "$OUT/report.md"
rm -rf "$OUT/pack"
cat "$OUT/report.md"
echo "scaling_sweep: done in $(elapsed) s"
exit "$status"
