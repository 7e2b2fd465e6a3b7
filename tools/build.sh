#!/usr/bin/env bash
# Configures and builds leank-serve into build/ (binaries in build/bin/).
# CUDA code is compiled for one arch (90a) when nvcc is present; no GPU is needed to build.
#   tools/build.sh [extra cmake args...]      e.g. -DLEANK_CUDA=OFF
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
export PATH=$PATH:/usr/local/cuda/bin
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} "$@" >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
echo "[build] done: $BUILD_DIR/bin"
