#!/usr/bin/env bash
# The README's two commands.
#   scripts/quickstart.sh train   set up, build, and run the default training job
#   scripts/quickstart.sh test    set up, build, and run every test (CUDA ones skip without a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
case "${1:-}" in
  train) exec build/coil train configs/default.yaml "${@:2}" ;;
  test) exec ctest --test-dir build --output-on-failure -j "${COIL_JOBS:-$(nproc)}" ;;
  *) echo "usage: scripts/quickstart.sh train|test" >&2; exit 2 ;;
esac
