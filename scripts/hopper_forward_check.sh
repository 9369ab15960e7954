#!/usr/bin/env bash
# The pipelined Hopper attention forward against the serial one, in one call on an H200
# (docs/ATTENTION.md, "Pipelined variant"): build (Hopper, 16 jobs, outside the tree), the
# [cuda] tests of test_attention_hopper (both forwards against the CPU reference and the
# portable kernels; a broken pipeline traps instead of hanging, and `timeout` bounds the rest),
# the setmaxnreg and wgmma instructions in the SASS of each forward instantiation, and
# bench_attention (rows "hopper" and "hopper pipelined fwd"). Logs go to ${OUT:-/tmp/coil-out}.
# About 4-6 minutes. Training with the pipelined forward: COIL_ATTN_FWD_PIPELINE=1
# scripts/transformer_check.sh.
# Usage: scripts/hopper_forward_check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-/tmp/coil-out}
build=${COIL_BUILD:-/root/build}
mkdir -p "$out"
scripts/build_gpu.sh "$out" "$build" test_attention_hopper bench_attention || exit 1

status=0
echo "== test_attention_hopper [cuda]"
timeout 300 "$build/tests/test_attention_hopper" "[cuda]" --durations yes >"$out/test_attention_hopper.log" 2>&1
rc=$?
tail -3 "$out/test_attention_hopper.log"
[ $rc -eq 0 ] || { echo "FAILED: test_attention_hopper [cuda] (exit $rc; $out/test_attention_hopper.log)"; status=1; }

echo "== SASS of the forward (per instantiation <D, BC, pipelined>: USETMAXREG, HGMMA shapes)"
object=$(find "$build" -name attention_hopper.cu.o | head -1)
cuobjdump=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
if [ -x "$cuobjdump" ] && [ -n "$object" ]; then
  "$cuobjdump" -sass "$object" >"$out/attention_hopper.sass"
  awk '/Function :/ { name = $3 }
       /USETMAXREG|HGMMA/ { match($0, /(USETMAXREG|HGMMA)[^ ;]*/); n[name " " substr($0, RSTART, RLENGTH)]++ }
       END { for (k in n) print n[k], k }' "$out/attention_hopper.sass" |
    sed -E 's/_ZN4coil.*fwd_hopper_kernelILi([0-9]+)ELi([0-9]+)ELb([01])E[^ ]*/<\1, \2, \3>/' | sort -k2
else
  echo "cuobjdump or the object file not found"
fi

echo "== bench_attention 20"
"$build/bench_attention" 20 2>&1 | tee "$out/bench_attention.log"

exit $status
