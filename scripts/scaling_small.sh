#!/usr/bin/env bash
# The small scaling grid (configs/scaling/small.yaml, docs/SCALING.md) in one call on one
# H100: build coil, run the sweep under a wall-clock guard, write the report, and copy each
# run's config.yaml and metrics.jsonl (not its checkpoints) and the logs into $OUT.
#
#   scripts/prepare_linux_docs.sh        # first, anywhere: datasets/linux-docs/{train,val}.h5
#   OUT=/tmp/out scripts/scaling_small.sh
#
# The guard: everything stops cleanly before GUARD_S seconds (default 540) from the script's
# start: the sweep gets what is left after the build minus REPORT_S (default 25) for the
# report, so the running run saves a checkpoint and no further run starts. Running the script
# again on the same machine continues the sweep (finished runs are skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
GUARD_S=${GUARD_S:-540}
REPORT_S=${REPORT_S:-25}
OUT=${OUT:-/tmp/coil-out}
build=${COIL_BUILD:-/root/build}
sweep=configs/scaling/small.yaml
runs=runs/scaling-small
mkdir -p "$OUT"
elapsed() { echo $(( $(date +%s) - start )); }

for f in datasets/linux-docs/train.h5 datasets/linux-docs/val.h5; do
  [ -f "$f" ] || { echo "scaling_small: $f is missing: run scripts/prepare_linux_docs.sh first" >&2; exit 1; }
done
scripts/build_gpu.sh "$OUT" "$build" coil_cli || exit 1
coil=$build/coil
echo "scaling_small: built in $(elapsed) s"

left=$(( GUARD_S - REPORT_S - $(elapsed) ))
if (( left > 10 )); then
  # The sweep's own limit stops it; timeout is a second guard (SIGINT, then SIGKILL).
  timeout -s INT -k 10 $(( left + 10 )) "$coil" sweep "$sweep" --time-limit "$left" 2>&1 | tee "$OUT/sweep.log" \
    | grep -E "^sweep|^eval|^done|^error|runs:|^  " 
  echo "scaling_small: sweep exit status ${PIPESTATUS[0]} after $(elapsed) s"
else
  echo "scaling_small: no time left for the sweep after the build ($(elapsed) s)"
fi

"$coil" report "$sweep" --out "$OUT/report" 2>&1 | tee "$OUT/report.log"
for dir in "$runs"/*/; do
  name=$(basename "$dir")
  mkdir -p "$OUT/runs/$name"
  cp "$dir"/config.yaml "$dir"/metrics.jsonl "$OUT/runs/$name/" 2>/dev/null || true
done
cat "$OUT/report/report.md"
echo "scaling_small: done in $(elapsed) s"
