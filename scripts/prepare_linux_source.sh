#!/usr/bin/env bash
# The compute-optimal grid's corpus (configs/scaling/compute_optimal.yaml, docs/SCALING.md):
# the Linux kernel's C sources, headers and Documentation/ prose from Debian's linux-source-6.1,
# held out by file, tokenized with an 8192-piece SentencePiece model trained on a sample of the
# training files:
#
#   datasets/linux-source/train-00.h5 .. train-15.h5   the training split, 16 shards
#   datasets/linux-source/val.h5                       the held-out split
#   datasets/linux-source/tokenizer.model              the SentencePiece model
#   datasets/linux-source/MANIFEST                     sha256 of each file, then token counts
#
#   scripts/setup.sh                                   # coil with SentencePiece (build/coil)
#   scripts/prepare_linux_source.sh                    # ~10 CPU-minutes; JOBS=$(nproc) encoders;
#                                                      # installs linux-source-6.1 if missing (or TARBALL=...)
#
# What is kept: every *.c and *.h file, and Documentation's *.rst and *.txt, except the
# generated register maps of drivers/gpu/drm/amd/include/asic_reg/ (373 files, 390 MB, a third
# of all C text) and files over 1 MiB (generated tables: firmware arrays, code pages). Each
# file is one document. The split depends only on a file's content (identical files land on
# the same side): the first 32 bits of its MD5 modulo 100 == 0 go to val (~1%); the next 32
# bits modulo SHARDS pick the training shard. The tokenizer is trained on shard 00 (1/16 of the
# training text, every line of it) and then encodes every shard and val; the shards are
# encoded in parallel (JOBS processes). Files are read in sorted order, so a second run gives
# the same model and the same tokens (MANIFEST's counts; the .h5 files themselves carry write
# times, so their sha256 is only for checking a copy, scripts/stage_dataset.sh).
set -euo pipefail

COIL=${COIL:-build/coil}
WORK=${WORK:-/tmp/linux-source}
OUT=${OUT:-datasets/linux-source}
VOCAB=${VOCAB:-8192}
SHARDS=${SHARDS:-16}
JOBS=${JOBS:-$(nproc)}
say() { echo "prepare_linux_source: $*"; }

if [ -z "${TARBALL:-}" ]; then  # Debian's package, installed when missing
  "$(dirname "$0")/install_packages.sh" linux-source-6.1
  TARBALL=/usr/src/linux-source-6.1.tar.xz
fi
[ -f "$TARBALL" ] || { say "no kernel source tarball at $TARBALL" >&2; exit 1; }
[ -x "$COIL" ] || { say "no coil executable at $COIL (scripts/setup.sh builds it; or set COIL=...)" >&2; exit 1; }
start=$(date +%s)

rm -rf "$WORK"
mkdir -p "$WORK/src" "$WORK/val" "$OUT"
tar -xf "$TARBALL" -C "$WORK/src" --wildcards '*.c' '*.h' '*/Documentation/*'
src=$(find "$WORK/src" -mindepth 1 -maxdepth 1 -type d | head -n 1)
[ -d "$src/Documentation" ] || { say "no kernel tree with Documentation/ in $TARBALL" >&2; exit 1; }
for ((s = 0; s < SHARDS; ++s)); do printf -v shard %02d "$s"; mkdir -p "$WORK/train/$shard"; done

# One flat hard link per document: drivers/a/b.c -> drivers__a__b.c in its split's folder.
(cd "$src" && find . -type f \( -name '*.c' -o -name '*.h' -o -path './Documentation/*' \( -name '*.rst' -o -name '*.txt' \) \) \
   -not -path './drivers/gpu/drm/amd/include/asic_reg/*' -size -1048577c -print0 | LC_ALL=C sort -z | xargs -0 md5sum) |
  while read -r sum path; do
    path=${path#./}
    if (( 16#${sum:0:8} % 100 == 0 )); then
      dest=$WORK/val
    else
      printf -v dest '%s/train/%02d' "$WORK" $(( 16#${sum:8:8} % SHARDS ))
    fi
    ln "$src/$path" "$dest/${path//\//__}"
  done
say "$(find "$WORK/train" -type f | wc -l) training files ($(du -sb "$WORK/train" | cut -f1) bytes)," \
    "$(find "$WORK/val" -type f | wc -l) held out ($(du -sb "$WORK/val" | cut -f1) bytes), after $(( $(date +%s) - start )) s"

"$COIL" prepare --tokenizer sentencepiece --vocab-size "$VOCAB" --out "$WORK/tokenizer-sample.h5" "$WORK/train/00/*"
cp "$WORK/tokenizer-sample.model" "$OUT/tokenizer.model"
say "tokenizer trained after $(( $(date +%s) - start )) s"

rm -f "$OUT"/train-*.h5 "$OUT/val.h5"
{ for d in "$WORK"/train/*/; do echo "$(basename "$d")"; done; echo val; } |
  xargs -P "$JOBS" -I{} sh -c '
    if [ {} = val ]; then in="$1/val/*" out="$2/val.h5"; else in="$1/train/{}/*" out="$2/train-{}.h5"; fi
    "$3" prepare --sp-model "$2/tokenizer.model" --out "$out" "$in" > "$1/{}.log" || { cat "$1/{}.log" >&2; exit 255; }
  ' sh "$WORK" "$OUT" "$COIL"
say "encoded after $(( $(date +%s) - start )) s"

# MANIFEST: sha256sum lines (checked by `sha256sum -c`, comments skipped), then the counts.
{
  (cd "$OUT" && sha256sum tokenizer.model val.h5 train-*.h5)
  total=0
  for f in "$WORK"/*.log; do
    line=$(cat "$f")  # "wrote DIR/train-00.h5: N tokens, D documents from F files (...)"
    name=$(basename "$(echo "$line" | sed -E 's/^wrote ([^:]+):.*/\1/')")
    tokens=$(echo "$line" | sed -E 's/^wrote [^:]+: ([0-9]+) tokens, ([0-9]+) documents.*/\1/')
    docs=$(echo "$line" | sed -E 's/^wrote [^:]+: ([0-9]+) tokens, ([0-9]+) documents.*/\2/')
    echo "# $name $tokens tokens $docs documents"
    [ "$name" = val.h5 ] || total=$(( total + tokens ))
  done
  echo "# training tokens $total"
} > "$OUT/MANIFEST"
cat "$OUT/MANIFEST"
say "done in $(( $(date +%s) - start )) s"
