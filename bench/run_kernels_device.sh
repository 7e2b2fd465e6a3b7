#!/usr/bin/env bash
# The one script run on the GPU machine (device tool, carry [".device", ...]):
# correctness (device tests, compute-sanitizer memcheck on a small case), then every
# timing (our kernels, then the Python peers), a short table last. Results go to $OUT.
#   bench/run_kernels_device.sh [quick|full|peers]   (default full)
# full: tests + memcheck + the whole grid of leank-bench-kernels (about 3 minutes on H100);
# peers: the Python peers alone (carry [".whl"] too for FlashInfer; about 5 minutes).
set -uo pipefail
mode=${1:-full}
OUT=${OUT:-/tmp/leank-out}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export LD_LIBRARY_PATH="$here/.device/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
commit=$(cat .device/git_commit 2>/dev/null || echo unknown)
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
status=0
if [[ $mode != peers ]]; then
  echo "== device tests"
  .device/bin/leank_device_tests --gtest_brief=1 >"$OUT/tests.log" 2>&1 || status=1
  grep -E "seed|FAILED|PASSED|Failure|error" "$OUT/tests.log" | head -40
  echo "== compute-sanitizer memcheck (small case)"
  compute-sanitizer --tool memcheck --error-exitcode 9 .device/bin/leank_device_tests \
    --gtest_filter='Kernels/DecodeTest.MatchesReference/random_d128_b16:Kernels/DecodeTest.MatchesReference/manysplits_random:CompactTest.*:Kernels/PrefillTest.*/random_d128_b16' \
    --gtest_brief=1 >"$OUT/memcheck.log" 2>&1 || status=1
  tail -4 "$OUT/memcheck.log"
fi
case $mode in
  quick) .device/bin/leank-bench-kernels --batches 1,64 --contexts 4096,32768 --iters 20 \
           --git-commit "$commit" --json "$OUT/kernels-quick.json" ;;
  full) .device/bin/leank-bench-kernels --git-commit "$commit" --json "$OUT/kernels-leank.json" ;;
esac
if [[ $mode == peers ]]; then
  echo "== peers"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  fi
  PYTHONUNBUFFERED=1 python3 bench/peers/peers.py --git-commit "$commit" --json "$OUT/kernels-peers.json" \
    2>&1 | tee "$OUT/peers.log" | tail -40
fi
exit $status
