#!/usr/bin/env bash
# The Mamba paper's synthetic results (docs/SYNTHETIC.md) on one GPU, in calls of at most
# GUARD_S seconds: build coil, train the runs one after another, each continuing from its
# latest checkpoint (`coil train --time-limit`), then evaluate every trained run over the
# lengths (`coil eval --lengths`) and copy the tables, CSVs, plots, logs and checkpoints to $OUT.
# Run the same command again (on the same machine, or with the run directories carried back)
# until it prints "all runs trained and evaluated".
#
#   OUT=/tmp/out scripts/synthetic_paper.sh                         # the full protocol
#   STEPS=20000 SC_STEPS=4000 OUT=/tmp/out scripts/synthetic_paper.sh   # a shortened one
#
# Environment (defaults in brackets):
#   GUARD_S       seconds this call may take, build included [480]
#   EVAL_S        seconds kept for the evaluations after the training [100]
#   STEPS         training steps of each induction-heads run [the protocol's: 204800, RoPE 409600]
#   SC_STEPS      training steps of each selective-copying run [the protocol's: 400000]
#   RUNS          the runs to work on, in order [ih-mamba ih-mha-abs ih-mha-sin ih-mha-rope sc-mamba sc-s4]
#   RUNS_DIR      where the run directories are [runs/synthetic-paper]
#   MAMBA_MAX_LEN the longest evaluation length of ih-mamba [1048576]
#   ATTN_MAX_LEN  the longest evaluation length of the attention runs [65536]
#   EXAMPLES      validation examples per length [256]
#   COIL_BUILD    the build directory [/root/build]
# A changed STEPS continues a run (train.steps is bookkeeping: the schedule is constant).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
GUARD_S=${GUARD_S:-480}
EVAL_S=${EVAL_S:-100}
RUNS=${RUNS:-"ih-mamba ih-mha-abs ih-mha-sin ih-mha-rope sc-mamba sc-s4"}
RUNS_DIR=${RUNS_DIR:-runs/synthetic-paper}
MAMBA_MAX_LEN=${MAMBA_MAX_LEN:-1048576}
ATTN_MAX_LEN=${ATTN_MAX_LEN:-65536}
EXAMPLES=${EXAMPLES:-256}
OUT=${OUT:-/tmp/coil-out}
build=${COIL_BUILD:-/root/build}
mkdir -p "$OUT" "$RUNS_DIR"
elapsed() { echo $(( $(date +%s) - start )); }

# name -> config file, steps, evaluation lengths
config_of() { case $1 in
  ih-mamba) echo configs/synthetic/paper/induction_heads_mamba.yaml ;;
  ih-mha-abs) echo configs/synthetic/paper/induction_heads_mha_abs.yaml ;;
  ih-mha-sin) echo configs/synthetic/paper/induction_heads_mha_sin.yaml ;;
  ih-mha-rope) echo configs/synthetic/paper/induction_heads_mha_rope.yaml ;;
  sc-mamba) echo configs/synthetic/paper/selective_copying_mamba.yaml ;;
  sc-s4) echo configs/synthetic/paper/selective_copying_s4.yaml ;;
  *) echo "synthetic_paper: unknown run '$1'" >&2; exit 1 ;;
esac; }
steps_of() { case $1 in
  ih-mha-rope) echo "${STEPS:-409600}" ;;
  ih-*) echo "${STEPS:-204800}" ;;
  sc-*) echo "${SC_STEPS:-400000}" ;;
esac; }
lengths_of() { case $1 in
  ih-mamba) echo "64..$MAMBA_MAX_LEN" ;;
  ih-*) echo "64..$ATTN_MAX_LEN" ;;
  sc-*) echo 4096 ;;
esac; }
# The step of a run's newest checkpoint (0 when none).
trained_steps() {
  local newest
  newest=$(ls "$RUNS_DIR/$1/checkpoints"/step_*.h5 2>/dev/null | sort | tail -1)
  [ -n "$newest" ] || { echo 0; return; }
  newest=${newest##*/step_}
  echo $(( 10#${newest%.h5} ))
}

scripts/build_gpu.sh "$OUT" "$build" coil_cli || exit 1
coil=$build/coil
echo "synthetic_paper: built in $(elapsed) s"

# ---- training: each run until its steps are done or the time is up ----
for name in $RUNS; do
  steps=$(steps_of "$name")
  (( $(trained_steps "$name") >= steps )) && continue
  left=$(( GUARD_S - EVAL_S - $(elapsed) ))
  (( left > 20 )) || { echo "synthetic_paper: no time left to train $name"; break; }
  echo "== train $name ($steps steps, at most $left s)"
  # --time-limit stops at a step boundary with a checkpoint (status 3); timeout is a second guard.
  timeout -s INT -k 20 $(( left + 30 )) "$coil" train "$(config_of "$name")" --set "run.dir=$RUNS_DIR/$name" \
    --set "train.steps=$steps" --time-limit "$left" >>"$OUT/train_$name.log" 2>&1
  status=$?
  grep -E "^step|^eval" "$OUT/train_$name.log" | tail -3
  echo "synthetic_paper: $name: exit status $status at step $(trained_steps "$name") of $steps after $(elapsed) s"
  (( status == 0 || status == 3 )) || { tail -20 "$OUT/train_$name.log"; break; }
  (( status == 0 )) || break  # out of time
done

# ---- evaluation over the lengths: each run whose training is done, once per checkpoint ----
pending=0
for name in $RUNS; do
  dir=$RUNS_DIR/$name
  if (( $(trained_steps "$name") < $(steps_of "$name") )); then pending=1; continue; fi
  newest=$(ls "$dir/checkpoints"/step_*.h5 | sort | tail -1)
  [ "$dir/length_eval.done" -nt "$newest" ] && continue  # evaluated since its last checkpoint
  left=$(( GUARD_S - $(elapsed) - 10 ))
  (( left > 30 )) || { echo "synthetic_paper: no time left to evaluate $name"; pending=1; continue; }
  echo "== eval $name over $(lengths_of "$name")"
  if timeout -s INT -k 10 "$left" "$coil" eval "$dir" --lengths "$(lengths_of "$name")" --examples "$EXAMPLES" \
    >"$OUT/eval_$name.log" 2>&1; then
    touch "$dir/length_eval.done"
  else
    pending=1
  fi
  cat "$OUT/eval_$name.log"
done

# ---- what comes back: tables, CSVs, plots, metrics, configs, checkpoints (to carry back) ----
ih_csvs=()
for name in $RUNS; do
  dir=$RUNS_DIR/$name
  [ -d "$dir" ] || continue
  mkdir -p "$OUT/$RUNS_DIR/$name"
  cp -r "$dir"/. "$OUT/$RUNS_DIR/$name/"
  [[ $name == ih-* && -f $dir/length_eval.csv ]] && ih_csvs+=("$dir/length_eval.csv")
done
if (( ${#ih_csvs[@]} > 0 )); then
  "$coil" plot lengths "${ih_csvs[@]}" -o "$OUT/induction_heads_lengths.png" --title "induction heads (Table 11)"
fi
if (( pending )); then
  echo "synthetic_paper: not finished after $(elapsed) s: run the same command again"
else
  echo "synthetic_paper: all runs trained and evaluated in this call's $(elapsed) s"
fi
