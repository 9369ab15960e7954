#!/usr/bin/env bash
# Moves a prepared token corpus (a folder with a MANIFEST of sha256 lines, as
# scripts/prepare_linux_source.sh writes) to a GPU machine that reaches no network and takes at
# most 64 MiB of working tree a call: the files are compressed (xz -9: the linux-source corpus's
# 720 MB of tokens become about 130 MB) and grouped into pieces of at most 60 MiB, one folder
# each, that consecutive calls carry; each call unpacks what it carries.
#
#   scripts/stage_dataset.sh pack      # here: DATA/pieces/1, 2, ... and the `carry` of each call
#   scripts/stage_dataset.sh unpack    # there: unpacks every carried piece, then checks the
#                                      # corpus against MANIFEST (sha256); exit 0 when complete,
#                                      # 2 while pieces are missing
#
# The machine keeps what was carried only while it stays warm (30 s after a call): carry the
# pieces in consecutive calls (scripts/scaling_sweep.sh unpacks them itself). DATA (default
# datasets/linux-source) is the corpus folder, PIECE_MB (default 60) the limit of a piece in MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-datasets/linux-source}
PIECE_MB=${PIECE_MB:-60}
say() { echo "stage_dataset: $*"; }

pack() {
  [ -f "$DATA/MANIFEST" ] || { say "no $DATA/MANIFEST: run scripts/prepare_linux_source.sh first" >&2; exit 1; }
  rm -rf "$DATA/pieces" "$DATA/xz"
  mkdir -p "$DATA/xz"
  # Compress every file the MANIFEST names (xz runs one file a process, JOBS at a time).
  awk '!/^#/ {print $2}' "$DATA/MANIFEST" |
    xargs -P "${JOBS:-$(nproc)}" -I{} sh -c 'xz -9 -T1 -c "$1/{}" > "$1/xz/{}.xz"' sh "$DATA"
  cp "$DATA/MANIFEST" "$DATA/xz/MANIFEST"
  # Greedy in MANIFEST order (the tokenizer and val first): a new piece when the next file would
  # pass the limit.
  local piece=1 used=0 limit=$((PIECE_MB * 1024 * 1024))
  mkdir -p "$DATA/pieces/$piece"
  for f in MANIFEST $(awk '!/^#/ {print $2 ".xz"}' "$DATA/MANIFEST"); do
    size=$(stat -c %s "$DATA/xz/$f")
    (( size <= limit )) || { say "$f.xz is $size bytes, over the $PIECE_MB MiB of a piece" >&2; exit 1; }
    if (( used + size > limit )); then piece=$((piece + 1)) used=0; mkdir -p "$DATA/pieces/$piece"; fi
    mv "$DATA/xz/$f" "$DATA/pieces/$piece/"
    used=$((used + size))
  done
  rmdir "$DATA/xz"
  say "$piece pieces; one call each, consecutive (the machine keeps them only while warm):"
  for d in "$DATA"/pieces/*/; do
    echo "  carry: [\"${d%/}\"]   # $(du -sb "$d" | cut -f1) bytes: $(ls "$d" | tr '\n' ' ')"
  done
}

unpack() {
  mkdir -p "$DATA"
  for f in "$DATA"/pieces/*/*; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    if [ "$name" = MANIFEST ]; then cp "$f" "$DATA/MANIFEST"; continue; fi
    target=$DATA/${name%.xz}
    [ -f "$target" ] && [ "$target" -nt "$f" ] && continue  # unpacked by an earlier call
    echo "$f $target"
  done | xargs -r -P "${JOBS:-$(nproc)}" -n 2 sh -c 'xz -d -c "$1" > "$2.tmp" && mv "$2.tmp" "$2"' sh
  [ -f "$DATA/MANIFEST" ] || { say "no MANIFEST yet: carry $DATA/pieces/1 (scripts/stage_dataset.sh pack)" >&2; exit 2; }
  local missing=()
  for name in $(awk '!/^#/ {print $2}' "$DATA/MANIFEST"); do [ -f "$DATA/$name" ] || missing+=("$name"); done
  if ((${#missing[@]})); then
    say "${#missing[@]} files still missing (${missing[*]}): carry the next piece" >&2
    exit 2
  fi
  (cd "$DATA" && grep -v "^#" MANIFEST | sha256sum -c --quiet) \
    || { say "a file differs from MANIFEST: carry its piece again (a carried piece is unpacked again)" >&2; exit 1; }
  say "complete: $(grep '^# training tokens' "$DATA/MANIFEST" | cut -d' ' -f4) training tokens, checked against MANIFEST"
}

case "${1:-}" in
  pack) pack ;;
  unpack) unpack ;;
  *) echo "usage: scripts/stage_dataset.sh pack|unpack" >&2; exit 1 ;;
esac
