#!/usr/bin/env bash
# The test suite: installs dependencies, builds, prepares the default model, runs
# every test that needs no GPU (GPU tests are labelled `device` and skip cleanly here).
# This is the README's test command and what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
python3 tools/convert_smollm2.py
echo "[test] ctest"
(cd build && ctest --output-on-failure -j "$(nproc)" --timeout 900)
if [ -x train/run_tests.sh ]; then
  echo "[test] train/ (pytest)"
  train/run_tests.sh
fi
if [ -x deploy/check.sh ]; then
  echo "[test] deploy/ manifests"
  deploy/check.sh
fi
echo "[test] all passed"
