#!/usr/bin/env bash
# Installs what coil needs to build and test (Debian 12 / Ubuntu 22.04+), skipping what is
# already there: with everything present it touches no network. Then configures and builds
# into build/ (CUDA backend on when nvcc is found, at /usr/local/cuda/bin included).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install_packages.sh g++ cmake ninja-build pkg-config libhdf5-dev libyaml-cpp-dev libfmt-dev \
  nlohmann-json3-dev catch2 libsentencepiece-dev libopenblas-dev python3 python3-numpy python3-matplotlib

jobs=${COIL_JOBS:-$(nproc)}
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${COIL_CMAKE_ARGS:-} >/dev/null
cmake --build build -j "$jobs"
