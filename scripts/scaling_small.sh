#!/usr/bin/env bash
# The small scaling grid (configs/scaling/small.yaml, docs/SCALING.md) in one call on one GPU:
# scripts/scaling_sweep.sh with a 540 s guard (build, sweep, report; $OUT/results.tar.gz holds
# the report and the finished runs' config.yaml and metrics.jsonl). Running it again on the same
# warm machine continues the sweep (finished runs are skipped).
#
#   scripts/prepare_linux_docs.sh        # first, anywhere: datasets/linux-docs/{train,val}.h5
#   OUT=/tmp/out scripts/scaling_small.sh
cd "$(dirname "$0")/.."
for f in datasets/linux-docs/train.h5 datasets/linux-docs/val.h5; do
  [ -f "$f" ] || { echo "scaling_small: $f is missing: run scripts/prepare_linux_docs.sh first" >&2; exit 1; }
done
GUARD_S=${GUARD_S:-540} REPORT_S=${REPORT_S:-25} exec scripts/scaling_sweep.sh configs/scaling/small.yaml
