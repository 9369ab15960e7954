#!/usr/bin/env bash
# The small scaling grid's corpus (configs/scaling/small.yaml, docs/SCALING.md): the prose of
# the Linux kernel's Documentation/ tree (Debian package linux-source-6.1: its .rst and .txt
# files), split by file into train (~98%) and val (~2%), tokenized with an 8192-piece
# SentencePiece model trained on the train split:
#   datasets/linux-docs/train.h5, val.h5, train.model
#
#   scripts/setup.sh                       # coil with SentencePiece (build/coil)
#   scripts/prepare_linux_docs.sh          # installs linux-source-6.1 if missing (or TARBALL=...)
#
# Reproducible: the split depends only on each file's content (the first 32 bits of its MD5,
# modulo 50: 0 goes to val), so identical files land on the same side; files are read in
# sorted order. Needs coil built with SentencePiece (libsentencepiece-dev).
set -euo pipefail

COIL=${COIL:-build/coil}
WORK=${WORK:-/tmp/linux-docs}
OUT=${OUT:-datasets/linux-docs}
VOCAB=${VOCAB:-8192}

if [ -z "${TARBALL:-}" ]; then  # Debian's package, installed when missing
  "$(dirname "$0")/install_packages.sh" linux-source-6.1
  TARBALL=/usr/src/linux-source-6.1.tar.xz
fi
[ -f "$TARBALL" ] || { echo "prepare_linux_docs: no kernel source tarball at $TARBALL" >&2; exit 1; }
[ -x "$COIL" ] || { echo "prepare_linux_docs: no coil executable at $COIL (build it, or set COIL=...)" >&2; exit 1; }

rm -rf "$WORK"
mkdir -p "$WORK/train" "$WORK/val" "$OUT"
tar -xf "$TARBALL" -C "$WORK" --wildcards '*/Documentation/*'
src=$(find "$WORK" -mindepth 2 -maxdepth 2 -type d -name Documentation | head -n 1)
[ -n "$src" ] || { echo "prepare_linux_docs: no Documentation/ in $TARBALL" >&2; exit 1; }

# One flat file per document: Documentation/a/b.rst -> a__b.rst.
(cd "$src" && find . -type f \( -name '*.rst' -o -name '*.txt' \) -print0 | LC_ALL=C sort -z | xargs -0 md5sum) |
  while read -r sum path; do
    path=${path#./}
    if (( 16#${sum:0:8} % 50 == 0 )); then split=val; else split=train; fi
    cp "$src/$path" "$WORK/$split/${path//\//__}"
  done
echo "prepare_linux_docs: $(ls "$WORK/train" | wc -l) train files ($(du -sb "$WORK/train" | cut -f1) bytes)," \
     "$(ls "$WORK/val" | wc -l) val files ($(du -sb "$WORK/val" | cut -f1) bytes)"

"$COIL" prepare --tokenizer sentencepiece --vocab-size "$VOCAB" --out "$OUT/train.h5" "$WORK/train/*"
"$COIL" prepare --sp-model "$OUT/train.model" --out "$OUT/val.h5" "$WORK/val/*"
ls -l "$OUT"
