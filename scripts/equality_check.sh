#!/usr/bin/env bash
# Same configs, same losses: trains the tiny Mamba and the tiny Transformer++ (configs/tiny) for
# 30 steps with a log line and an evaluation every step or ten, and keeps from each metrics.jsonl
# only what the computation decides (step, tokens, loss, lr, grad_norm, val_loss, val_ppl,
# val_accuracy): not the timings, MFU or memory. Run it with two coil binaries (before and after
# a change) and compare the two output folders: the files must be equal byte for byte.
#
#   scripts/equality_check.sh COIL OUT_DIR [cpu|cuda]
#   scripts/equality_check.sh compare OUT_DIR_A OUT_DIR_B
#
# cuda runs with train.deterministic true (the deterministic kernels where there is a choice).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == compare ]]; then
  [[ $# -eq 3 ]] || { echo "usage: $0 compare OUT_DIR_A OUT_DIR_B" >&2; exit 2; }
  status=0
  for name in mamba transformer; do
    if cmp -s "$2/$name.losses" "$3/$name.losses"; then
      echo "$name: equal ($(wc -l <"$2/$name.losses") lines)"
    else
      echo "$name: DIFFERENT"; diff "$2/$name.losses" "$3/$name.losses" | head -20; status=1
    fi
  done
  exit $status
fi

[[ $# -ge 2 && $# -le 3 ]] || { echo "usage: $0 COIL OUT_DIR [cpu|cuda] | $0 compare A B" >&2; exit 2; }
coil=$(realpath "$1")
out=$2
device=${3:-cpu}
mkdir -p "$out"
out=$(realpath "$out")
extra=(--set train.device="$device")
[[ "$device" == cuda ]] && extra+=(--set train.deterministic=true)

for name in mamba transformer; do
  rm -rf "$out/run-$name"
  "$coil" train "configs/tiny/$name.yaml" --set run.dir="$out/run-$name" --set train.steps=30 \
    --set log.every=1 --set eval.every=10 --set checkpoint.every=0 "${extra[@]}" >"$out/$name.log" 2>&1 ||
    { tail -20 "$out/$name.log"; exit 1; }
  python3 -c '
import json, sys
keys = ["step", "tokens", "loss", "lr", "grad_norm", "val_loss", "val_ppl", "val_accuracy"]
for line in open(sys.argv[1]):
    record = json.loads(line)
    print(json.dumps({k: record[k] for k in keys if k in record}))
' "$out/run-$name/metrics.jsonl" >"$out/$name.losses"
  echo "$name: $(wc -l <"$out/$name.losses") lines -> $out/$name.losses (last: $(tail -1 "$out/$name.losses"))"
done
